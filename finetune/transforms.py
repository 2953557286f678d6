"""Transformation functions for Agora: make a text similar to, but not identical with, a given one.

The Agora paper (arXiv 2010.07990) leaves the transformation unpublished (SPEC §5). Two are offered:

- ``perturb`` (default, needs no model): one of three word-level edits chosen at random: drop ~10% of the words
  (at least one), swap two adjacent words, or replace words that have an entry in a small built-in list of
  common English synonyms (:data:`SYNONYMS`). Edits that leave the text unchanged are retried with another edit.
- ``mlm``: mask ~15% of the word pieces (at least one) and replace each with a token sampled from the masked
  language model's top-k predictions other than the original (a BERT-style substitution augmenter). It needs a
  model *with a trained MLM head*; the default teacher (all-MiniLM-L6-v2) has none, so it is refused for it.
"""

from __future__ import annotations

import random
from typing import Callable, Protocol

import torch

from finetune.tasks import DataError

#: A small symmetric list of common synonyms (hand-written for this project).
_SYNONYM_GROUPS = [
    ("good", "fine", "nice"), ("bad", "poor", "awful"), ("big", "large", "huge"), ("small", "little", "tiny"),
    ("fast", "quick", "rapid"), ("slow", "sluggish"), ("happy", "glad", "pleased"), ("sad", "unhappy", "gloomy"),
    ("begin", "start"), ("end", "finish"), ("buy", "purchase"), ("say", "state"), ("said", "stated"),
    ("help", "assist"), ("show", "display"), ("movie", "film"), ("funny", "amusing"), ("boring", "dull"),
    ("smart", "clever", "bright"), ("hard", "difficult"), ("easy", "simple"), ("often", "frequently"),
    ("maybe", "perhaps"), ("very", "really", "quite"), ("man", "guy"), ("woman", "lady"), ("children", "kids"),
    ("car", "automobile"), ("house", "home"), ("job", "work"), ("people", "persons"), ("company", "firm"),
    ("rich", "wealthy"), ("strong", "powerful"), ("old", "aged"), ("new", "novel"), ("wrong", "incorrect"),
    ("right", "correct"), ("shut", "close"), ("near", "close by"), ("great", "excellent", "terrific"),
    ("beautiful", "lovely", "pretty"), ("ugly", "unattractive"), ("angry", "mad"), ("scared", "afraid"),
    ("story", "tale"), ("however", "but"), ("also", "too"), ("almost", "nearly"), ("enough", "sufficient"),
]
SYNONYMS: dict[str, tuple[str, ...]] = {
    w: tuple(x for x in group if x != w) for group in _SYNONYM_GROUPS for w in group
}


class Transform(Protocol):
    def __call__(self, text: str, rng: random.Random) -> str: ...


def word_dropout(text: str, rng: random.Random, rate: float = 0.1) -> str:
    words = text.split()
    if len(words) < 3:
        return text
    n = max(1, round(rate * len(words)))
    drop = set(rng.sample(range(len(words)), n))
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def word_swap(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def synonym_substitution(text: str, rng: random.Random, rate: float = 0.5) -> str:
    words = text.split()
    spots = [i for i, w in enumerate(words) if w.lower() in SYNONYMS]
    if not spots:
        return text
    for i in rng.sample(spots, max(1, round(rate * len(spots)))):
        new = rng.choice(SYNONYMS[words[i].lower()])
        words[i] = new.capitalize() if words[i][0].isupper() else new
    return " ".join(words)


def perturb(text: str, rng: random.Random, attempts: int = 6) -> str:
    """A random word-level edit (dropout, swap, synonym) that changes ``text``; ``text`` itself if none can."""
    edits: list[Callable[[str, random.Random], str]] = [word_dropout, word_swap, synonym_substitution]
    for _ in range(attempts):
        out = rng.choice(edits)(text, rng)
        if out != text:
            return out
    return text


class MaskedLMSubstitution:
    """Replace ~``rate`` of the word pieces with samples from a masked LM's ``top_k`` predictions.

    Raises:
        DataError: the model folder has no trained masked-LM head.
    """

    def __init__(self, model_path: str, rate: float = 0.15, top_k: int = 10, max_length: int = 256):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.model, info = AutoModelForMaskedLM.from_pretrained(model_path, output_loading_info=True)
        head_missing = [k for k in info["missing_keys"] if "predictions" in k or "lm_head" in k]
        if head_missing:
            raise DataError(f"{model_path}: no trained masked-LM head (missing {head_missing[0]}); "
                            "use --transform perturb or pass --mlm-model with an MLM head")
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.rate, self.top_k, self.max_length = rate, top_k, max_length

    @torch.no_grad()
    def __call__(self, text: str, rng: random.Random) -> str:
        """``text`` with substitutions in its first ``max_length`` tokens; the rest of a longer text (a RACE article,
        a ReCoRD passage) follows unchanged rather than being cut off."""
        enc = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt",
                             return_offsets_mapping=True)
        rest = text[int(enc.pop("offset_mapping")[0, :, 1].max()):]
        ids = enc["input_ids"][0]
        special = set(self.tokenizer.all_special_ids)
        spots = [i for i, t in enumerate(ids.tolist()) if t not in special]
        if not spots:
            return text
        chosen = rng.sample(spots, max(1, round(self.rate * len(spots))))
        masked = ids.clone()
        masked[chosen] = self.tokenizer.mask_token_id
        logits = self.model(input_ids=masked[None], attention_mask=enc["attention_mask"]).logits[0]
        for i in chosen:
            top = [t for t in logits[i].topk(self.top_k + 1).indices.tolist() if t != ids[i] and t not in special]
            masked[i] = rng.choice(top[: self.top_k]) if top else ids[i]
        return self.tokenizer.decode(masked[1:-1] if masked[0] in special else masked, skip_special_tokens=True) + rest


TRANSFORMS = ("perturb", "mlm")


def check_transform(name: str, mlm_model: str = "") -> None:
    """Raises ValueError: ``name`` is not one of :data:`TRANSFORMS`, or is ``mlm`` without ``mlm_model``."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; valid: {', '.join(TRANSFORMS)}")
    if name == "mlm" and not mlm_model:
        raise ValueError("--transform mlm needs --mlm-model (a model folder with a masked-LM head)")


def make_transform(name: str, mlm_model: str = "") -> Transform:
    """``perturb`` or ``mlm`` (with ``mlm_model``, loaded here).

    Raises:
        ValueError: unknown name, or ``mlm`` without a model.
    """
    check_transform(name, mlm_model)
    return perturb if name == "perturb" else MaskedLMSubstitution(mlm_model)
