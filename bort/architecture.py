"""Architectures ⟨D, A, H, I⟩ in Hugging Face names, and student configs derived from a teacher's config.

An architecture fixes the four numbers the Bort search varies (de Wynter & Perry 2020, arXiv 2010.10499, §3):
depth ``num_hidden_layers`` (D), heads ``num_attention_heads`` (A), model width ``hidden_size`` (H) and
feed-forward width ``intermediate_size`` (I). Everything else (vocabulary, positions, activation, layer-norm eps,
token types) comes from the teacher's config.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields

from transformers import PretrainedConfig

# Model families whose encoder layout the counts, FLOPs and extraction in this package describe.
SUPPORTED_MODEL_TYPES = ("bert", "roberta")


class ArchitectureError(ValueError):
    """An architecture that is invalid on its own or not a sub-architecture of the teacher."""


@dataclass(frozen=True, order=True)
class Architecture:
    """⟨D, A, H, I⟩ with Hugging Face names.

    Raises:
        ArchitectureError: if a field is not a positive integer, or ``hidden_size % num_attention_heads != 0``.
    """

    num_hidden_layers: int
    num_attention_heads: int
    hidden_size: int
    intermediate_size: int

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ArchitectureError(f"{f.name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ArchitectureError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head: hidden_size / num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    @property
    def name(self) -> str:
        """A short, file-name-safe label such as ``D4-A8-H1024-I768``."""
        return f"D{self.num_hidden_layers}-A{self.num_attention_heads}-H{self.hidden_size}-I{self.intermediate_size}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> Architecture:
        """The architecture of an existing Hugging Face config."""
        return cls(
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
        )

    @classmethod
    def from_dict(cls, values: dict) -> Architecture:
        """Build from a mapping with exactly the four Hugging Face names.

        Raises:
            ArchitectureError: on a missing or unknown key.
        """
        names = {f.name for f in fields(cls)}
        missing, unknown = names - set(values), set(values) - names
        if missing or unknown:
            raise ArchitectureError(
                f"an architecture needs exactly {sorted(names)}; missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        return cls(**{k: values[k] for k in names})

    def check_subarchitecture_of(self, teacher_config: PretrainedConfig) -> None:
        """Require every dimension to be at most the teacher's, in a supported model family.

        Raises:
            ArchitectureError: naming the first field that exceeds the teacher, or an unsupported model type.
        """
        if teacher_config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ArchitectureError(
                f"teacher model_type {teacher_config.model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})"
            )
        teacher = Architecture.from_config(teacher_config)
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(teacher, f.name)
            if mine > theirs:
                raise ArchitectureError(
                    f"{f.name}={mine} exceeds the teacher's {theirs} ({self.name} is not a sub-architecture of {teacher.name})"
                )

    def to_config(self, teacher_config: PretrainedConfig) -> PretrainedConfig:
        """A copy of the teacher's config with the four dimensions replaced (same class, e.g. BertConfig)."""
        config = copy.deepcopy(teacher_config)
        for key, value in self.to_dict().items():
            setattr(config, key, value)
        config.architectures = None
        return config
