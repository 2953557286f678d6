"""Hardware-aware latency for the search: named profiles, a per-profile cache shared by searches, a fitted predictor.

A *latency profile* is everything a measured latency depends on: the device (``cpu`` or ``cuda[:k]``, with the CPU or
GPU model), torch's thread count, the dtype, the input shape (batch, sequence length), warm-up and repeats, the
teacher family (model type, activation) and the torch version. Measurements are cached per profile in the user
cache folder (``$BORT_CACHE_DIR`` or ``~/.cache/bort``, ``latency/<profile name>-<digest>.json``), so a second search
on the same device — any output folder, any space — measures only the architectures it has not seen.

For spaces too large to measure, ``--latency predicted`` measures a sample spread over the FLOPs range and fits a
ridge regression (scikit-learn) of milliseconds on FLOPs-like features of ⟨D, A, H, I⟩; its cross-validated error is
reported in ``latency_model.json``. The features follow the cost of an encoder layer: dense products grow with
D·H² and D·H·I, attention with D·H (per token pair) and per-head kernel launches with D·A; D alone counts per-layer
overheads (LayerNorm, residuals).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PretrainedConfig

from bort.architecture import Architecture
from bort.latency import LatencyProfile, describe_device, measure_latency
from bort.modeling import build_student
from data.files import atomic_write_json
from data.sources import default_cache_dir
from search.report import file_lock

LATENCY_VOCAB_SIZE = 1024
"""Latency models get a small vocabulary: an embedding lookup costs the same whatever the table's size, and
building hundreds of models then takes seconds instead of minutes of initialising 30k-row tables."""


@dataclass
class LatencyCache:
    """The measured milliseconds per batch of every architecture seen under one profile, in one JSON file."""

    path: Path
    key: dict
    ms: dict[str, float]

    @classmethod
    def open(cls, profile: LatencyProfile, teacher_config: PretrainedConfig, *, name: str | None = None,
             cache_dir: str | os.PathLike | None = None) -> LatencyCache:
        key = {"profile": profile.to_dict(), "device_model": describe_device(profile.device),
               "torch": torch.__version__, "model_type": teacher_config.model_type,
               "hidden_act": str(getattr(teacher_config, "hidden_act", "")),
               "latency_vocab_size": LATENCY_VOCAB_SIZE}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = root / "latency" / f"{name or default_profile_name(profile)}-{digest}.json"
        cache = cls(path, key, {})
        cache.ms = cache._read()
        return cache

    def _read(self) -> dict[str, float]:
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return stored.get("ms", {}) if stored.get("key") == self.key else {}

    def lock(self):
        """The cache's lock (``<cache file>.lock``), held by one process of the machine at a time."""
        return file_lock(self.path.with_suffix(".lock"))

    def save(self) -> None:
        """Merge with what other searches wrote meanwhile, then replace the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ms = {**self._read(), **self.ms}
        atomic_write_json(self.path, {"key": self.key, "ms": self.ms})


def default_profile_name(profile: LatencyProfile) -> str:
    """For example ``cpu-float32-t2-b1-s128``."""
    device = profile.device.replace(":", "")
    return f"{device}-{profile.dtype}-t{profile.threads}-b{profile.batch_size}-s{profile.seq_len}"


def measure_architectures(archs: list[Architecture], teacher_config: PretrainedConfig, profile: LatencyProfile,
                          cache: LatencyCache, *, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Milliseconds per batch of each architecture (by name), measuring only those missing from ``cache``.

    Measurements run under an exclusive lock beside the cache file, so the workers of one machine measure one at a
    time: a worker that waited finds what the first measured in the cache instead of measuring it again, and no
    measurement runs beside another (which would distort both)."""
    config = copy.deepcopy(teacher_config)
    config.vocab_size = min(config.vocab_size, LATENCY_VOCAB_SIZE)
    with cache.lock():
        cache.ms = {**cache._read(), **cache.ms}
        todo = [a for a in dict.fromkeys(archs) if a.name not in cache.ms]
        for arch in tqdm(todo, desc="latency", unit="arch", disable=not progress or not todo):
            model = build_student(arch, config, seed=seed)
            cache.ms[arch.name] = measure_latency(model, profile, vocab_size=config.vocab_size).mean_ms
            del model
        if todo:
            cache.save()
    return {a.name: cache.ms[a.name] for a in archs}


def latency_features(arch: Architecture, seq_len: int) -> list[float]:
    """FLOPs-like features of ⟨D, A, H, I⟩ for one sequence of ``seq_len`` tokens (see the module docstring)."""
    d, a, h, i = arch.num_hidden_layers, arch.num_attention_heads, arch.hidden_size, arch.intermediate_size
    return [d * h * h * seq_len, d * h * i * seq_len, d * h * seq_len * seq_len, d * a, d, h]


def sample_for_fit(archs: list[Architecture], flops: list[float], n: int) -> list[Architecture]:
    """``n`` architectures evenly spread over the FLOPs order (deterministic; all of them if n >= len(archs))."""
    order = sorted(range(len(archs)), key=lambda k: (flops[k], archs[k].name))
    if n >= len(archs):
        return [archs[k] for k in order]
    picks = sorted({round(x) for x in np.linspace(0, len(archs) - 1, n)})
    return [archs[order[k]] for k in picks]


def fit_predictor(archs: list[Architecture], ms: list[float], seq_len: int) -> tuple[object, dict]:
    """Fit milliseconds ~ features (standardised, ridge with its penalty chosen by efficient leave-one-out).

    Returns the fitted scikit-learn pipeline and its report: cross-validated (5-fold) mean absolute percentage error
    and R², the number of points, and the training-set MAPE.

    Raises:
        ValueError: with fewer than 6 measured points (too few to fit six features and check the error).
    """
    if len(archs) < 6:
        raise ValueError(f"the latency predictor needs at least 6 measured architectures, got {len(archs)}")
    # imported here: scikit-learn takes seconds to import and only --latency predicted needs it
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import mean_absolute_percentage_error, r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.array([latency_features(a, seq_len) for a in archs], dtype=float)
    y = np.array(ms, dtype=float)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-4, 3, 30)))
    folds = KFold(n_splits=min(5, len(archs)), shuffle=True, random_state=0)
    cv = cross_val_predict(model, x, y, cv=folds)
    model.fit(x, y)
    report = {"points": len(archs), "features": ["D*H^2*L", "D*H*I*L", "D*H*L^2", "D*A", "D", "H"],
              "cv_mape": float(mean_absolute_percentage_error(y, cv)), "cv_r2": float(r2_score(y, cv)),
              "train_mape": float(mean_absolute_percentage_error(y, model.predict(x))),
              "alpha": float(model[-1].alpha_),
              "measured": {a.name: float(v) for a, v in zip(archs, y)},
              "cv_predicted": {a.name: float(v) for a, v in zip(archs, cv)}}
    return model, report


def predict(model, archs: list[Architecture], seq_len: int) -> dict[str, float]:
    """Predicted milliseconds per batch by architecture name (floored at 1 µs: a latency is positive)."""
    x = np.array([latency_features(a, seq_len) for a in archs], dtype=float)
    return {a.name: max(float(v), 1e-3) for a, v in zip(archs, model.predict(x))}
