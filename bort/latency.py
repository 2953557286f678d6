"""Measured inference latency: the wall-time flavour of the Bort search's i(b).

Bort reports CPU wall time (de Wynter & Perry 2020, arXiv 2010.10499, §5); this module measures it the same way for
any model: warm-up runs, then repeated timed forward passes on random token ids, summarised by a trimmed mean
(``scipy.stats.trim_mean``) so that a stray slow run does not move the result.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import trim_mean


@dataclass(frozen=True)
class LatencyProfile:
    """Settings under which a latency is measured; two measurements compare only under equal profiles.

    batch_size and seq_len give the input shape (batch, seq_len); threads is torch's intra-op thread count
    (None: torch's count when the profile is made, stored in its place so that every record of the profile names
    it); warmup and repeats count forward passes; trim is the fraction cut from each end before averaging.
    """

    batch_size: int = 1
    seq_len: int = 128
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    warmup: int = 3
    repeats: int = 10
    trim: float = 0.1

    def __post_init__(self) -> None:
        if self.threads is None:
            object.__setattr__(self, "threads", torch.get_num_threads())  # the dataclass is frozen
        if self.batch_size <= 0 or self.seq_len <= 0 or self.repeats <= 0 or self.warmup < 0:
            raise ValueError(f"invalid latency profile {self}: sizes and repeats must be positive")
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Latency:
    """A measurement: trimmed mean and standard deviation in milliseconds per batch, with its profile."""

    mean_ms: float
    std_ms: float
    profile: LatencyProfile
    host: str

    def to_dict(self) -> dict:
        return {"mean_ms": self.mean_ms, "std_ms": self.std_ms, "host": self.host, **self.profile.to_dict()}


def describe_device(device: str) -> str:
    """A human-readable name of the device that runs the measurement (CPU model or CUDA device name)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, profile: LatencyProfile, *, vocab_size: int, seed: int = 0) -> Latency:
    """Time ``model(input_ids)`` on random ids of shape (batch_size, seq_len) under ``profile``.

    The model is moved to the profile's device and dtype and put in eval mode. Returns milliseconds per batch.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(profile.threads)
    try:
        device = torch.device(profile.device)
        model = model.to(device=device, dtype=getattr(torch, profile.dtype)).eval()
        generator = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(0, vocab_size, (profile.batch_size, profile.seq_len), generator=generator).to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for _ in range(profile.warmup):
            model(input_ids=input_ids)
        sync()
        times = np.empty(profile.repeats)
        for k in range(profile.repeats):
            start = time.perf_counter()
            model(input_ids=input_ids)
            sync()
            times[k] = (time.perf_counter() - start) * 1e3
    finally:
        torch.set_num_threads(previous_threads)
    return Latency(
        mean_ms=float(trim_mean(times, profile.trim)),
        std_ms=float(times.std()),
        profile=profile,
        host=describe_device(profile.device),
    )
