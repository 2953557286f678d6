"""The search space Ξ: a grid (or list) of architectures, declared in one place per teacher.

A space file is YAML or JSON in one of two forms::

    # a grid: every combination with hidden_size % num_attention_heads == 0
    num_hidden_layers: [2, 4, 6]
    num_attention_heads: [4, 8]
    hidden_size: [256, 384]
    intermediate_size: [512, 1024]

    # or an explicit list
    architectures:
      - {num_hidden_layers: 4, num_attention_heads: 8, hidden_size: 1024, intermediate_size: 768}

Without a file the grid is the Bort paper's, scaled to the teacher (de Wynter & Perry 2020, arXiv 2010.10499, §3:
D ∈ {2,4,…,12}, A ∈ {4,8,12,16}, H ∈ {512,768,1024}, I ∈ {256,512,768,1024,3072} for a RoBERTa-large teacher of
⟨24, 16, 1024, 4096⟩), see :func:`default_space`.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import yaml
from transformers import PretrainedConfig

from bort.architecture import Architecture, ArchitectureError

DIMENSIONS = tuple(f.name for f in fields(Architecture))


class SpaceError(ValueError):
    """An unreadable or invalid search space."""


@dataclass(frozen=True)
class SearchSpace:
    """Either a grid (one tuple of values per dimension) or an explicit tuple of architectures."""

    grid: dict[str, tuple[int, ...]] | None = None
    explicit: tuple[Architecture, ...] | None = None
    source: str = "default"

    def architectures(self) -> list[Architecture]:
        """The valid architectures of the space, sorted; grid points with hidden_size % heads != 0 are left out."""
        if self.explicit is not None:
            return sorted(set(self.explicit))
        out = []
        for values in itertools.product(*(self.grid[d] for d in DIMENSIONS)):
            point = dict(zip(DIMENSIONS, values))
            if point["hidden_size"] % point["num_attention_heads"] == 0:
                out.append(Architecture(**point))
        return sorted(out)

    def validate(self, teacher_config: PretrainedConfig) -> list[Architecture]:
        """The architectures, after checking each is a sub-architecture of the teacher and the space is not empty.

        Raises:
            SpaceError: naming the source, the field and the value at fault.
        """
        try:
            archs = self.architectures()
            for arch in archs:
                arch.check_subarchitecture_of(teacher_config)
        except ArchitectureError as exc:
            raise SpaceError(f"space {self.source}: {exc}") from None
        if not archs:
            raise SpaceError(f"space {self.source} has no valid architecture (hidden_size must be divisible by "
                             f"num_attention_heads for at least one combination)")
        return archs

    def to_dict(self) -> dict:
        if self.explicit is not None:
            return {"architectures": [a.to_dict() for a in sorted(set(self.explicit))]}
        return {d: list(self.grid[d]) for d in DIMENSIONS}


def default_space(teacher_config: PretrainedConfig) -> SearchSpace:
    """The paper's grid scaled to the teacher ⟨D_T, A_T, H_T, I_T⟩.

    D: six evenly spaced depths up to D_T; A: {1/4, 1/2, 3/4, 1}·A_T; H: {1/2, 3/4, 1}·H_T;
    I: {1/16, 1/8, 3/16, 1/4, 3/4}·I_T (the paper's fractions of RoBERTa-large). Values are rounded and de-duplicated.
    For all-MiniLM-L6-v2 ⟨6, 12, 384, 1536⟩ this gives 360 grid points of which 300 are valid, as in the paper.
    """
    t = Architecture.from_config(teacher_config)

    def scaled(total: int, fractions) -> tuple[int, ...]:
        return tuple(sorted({max(1, round(total * f)) for f in fractions}))

    grid = {
        "num_hidden_layers": tuple(sorted({max(1, math.ceil(k * t.num_hidden_layers / 6)) for k in range(1, 7)})),
        "num_attention_heads": scaled(t.num_attention_heads, (1 / 4, 1 / 2, 3 / 4, 1)),
        "hidden_size": scaled(t.hidden_size, (1 / 2, 3 / 4, 1)),
        "intermediate_size": scaled(t.intermediate_size, (1 / 16, 1 / 8, 3 / 16, 1 / 4, 3 / 4)),
    }
    return SearchSpace(grid=grid, source="default (scaled to the teacher)")


def load_space(path: str | Path) -> SearchSpace:
    """Read a space file (YAML or JSON, see the module docstring).

    Raises:
        SpaceError: if the file is missing, unparsable (with the line), or malformed (naming the key).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"cannot read space file {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpaceError(f"space file {path}, line {exc.lineno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise SpaceError(f"space file {path}{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"space file {path}: expected a mapping of {DIMENSIONS} or 'architectures'")
    if "architectures" in data:
        if set(data) != {"architectures"} or not isinstance(data["architectures"], list) or not data["architectures"]:
            raise SpaceError(f"space file {path}: 'architectures' must be the only key and a non-empty list")
        try:
            archs = tuple(Architecture.from_dict(a) if isinstance(a, dict) else _not_a_mapping(a)
                          for a in data["architectures"])
        except ArchitectureError as exc:
            raise SpaceError(f"space file {path}: {exc}") from None
        return SearchSpace(explicit=archs, source=str(path))
    missing, unknown = set(DIMENSIONS) - set(data), set(data) - set(DIMENSIONS)
    if missing or unknown:
        raise SpaceError(f"space file {path}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    grid = {}
    for d in DIMENSIONS:
        values = data[d] if isinstance(data[d], list) else [data[d]]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
            raise SpaceError(f"space file {path}: {d} must be a non-empty list of positive integers, got {data[d]!r}")
        grid[d] = tuple(sorted(set(values)))
    return SearchSpace(grid=grid, source=str(path))


def _not_a_mapping(value):
    raise ArchitectureError(f"each architecture must be a mapping of {DIMENSIONS}, got {value!r}")
