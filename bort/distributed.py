"""Data parallelism on existing engines, behind one small interface: none, ``torchrun`` (DDP) or ``horovodrun``.

The engine is chosen at launch from the environment the launcher sets (``torchrun`` exports ``TORCHELASTIC_RUN_ID``,
``horovodrun`` exports ``HOROVOD_RANK``), or forced by name. Both data-parallel engines give the same semantics:
each rank computes the gradient of the mean loss over its own micro-batches, and the engine averages gradients over
ranks before the optimizer step (DDP during the last backward pass, Horovod with one grouped all-reduce), so every
rank applies the same update from the same starting weights (rank 0's, broadcast at start).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from datetime import timedelta

import torch
from torch import nn

ENGINES = ("auto", "none", "torchrun", "horovod")
# How long the other ranks wait for rank 0's next message (see TorchRun.gather_object): rank 0 alone may work for
# hours between training runs, while its collectives within a run should fail fast
MESSAGE_TIMEOUT = timedelta(days=7)


class DistributedError(RuntimeError):
    """An engine that cannot start (e.g. Horovod not installed, or launched without its launcher)."""


def check_one_gpu_per_process(launcher: str, local_world_size: int, gpu_count: int) -> None:
    """Refuse more processes on a node than it has visible CUDA GPUs: NCCL (and Horovod on GPUs) needs a GPU of its
    own per process, and the process whose local rank has no GPU would otherwise stop on CUDA's bare "invalid device
    ordinal" (seen with ``torchrun --nproc_per_node 2`` on a one-GPU machine).

    Args:
        launcher: the launcher's name, for the message (``torchrun`` or ``horovodrun``).
        local_world_size: processes started on this node.
        gpu_count: CUDA GPUs this process sees (``torch.cuda.device_count()``).

    Raises:
        DistributedError: ``local_world_size > gpu_count``, naming both and the two ways out.
    """
    if local_world_size > gpu_count:
        raise DistributedError(
            f"{launcher} started {local_world_size} processes on this node, which has {gpu_count} visible CUDA "
            f"GPU(s): on GPUs each process needs its own. Start at most {gpu_count} per node, or hide the GPUs "
            "(CUDA_VISIBLE_DEVICES=) to train on the CPU with gloo")


class SingleProcess:
    """One process, no communication."""

    name = "none"
    rank, world_size, local_rank = 0, 1, 0

    def device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")

    def wrap(self, module: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """The module to call for training steps (DDP wraps it; the others return it)."""
        return module

    def no_sync(self, wrapped: nn.Module):
        """A context in which backward passes do not synchronise gradients (None: nothing to skip)."""
        return None

    def reduce_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Average ``.grad`` over ranks where the engine has not done so during backward."""

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of ``tensor`` over ranks (float64 on CPU in, same out)."""
        return tensor

    def gather_object(self, obj):
        """Every rank's ``obj`` (any picklable object), as a list indexed by rank (on every rank). Ranks may wait here
        for rank 0 far longer than a training collective may take (torchrun: up to ``MESSAGE_TIMEOUT``; Horovod: no
        timeout)."""
        return [obj]

    def barrier(self) -> None:
        """Wait until every rank is here (as long as :meth:`gather_object` may wait)."""

    def shutdown(self) -> None:
        pass

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class TorchRun(SingleProcess):
    """``torch.distributed`` under ``torchrun``: NCCL on GPUs, gloo on CPU; ``DistributedDataParallel``.

    Args:
        timeout: how long a collective of the training steps (gradients, sums) may wait before it fails; None: torch's
            default (10 min for NCCL, 30 min for gloo). Messages (:meth:`gather_object`, :meth:`barrier`) go over a
            separate gloo group that waits up to ``MESSAGE_TIMEOUT``: between runs the other ranks wait there while
            rank 0 works alone (a sync-halving rung waiting for other workers, test predictions, Agora's new
            examples, the search's latency measurements), which may take longer than a training collective should.
    """

    name = "torchrun"

    def __init__(self, timeout: timedelta | None = None) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            check_one_gpu_per_process("torchrun", int(os.environ.get("LOCAL_WORLD_SIZE", 1)), torch.cuda.device_count())
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend=backend, timeout=timeout)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._messages = dist.new_group(backend="gloo", timeout=MESSAGE_TIMEOUT)

    def wrap(self, module: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if torch.cuda.is_available() else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)

    def no_sync(self, wrapped: nn.Module):
        return wrapped.no_sync

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        # gloo reduces CPU tensors, NCCL device tensors
        device = torch.device("cuda", self.local_rank) if self.dist.get_backend() == "nccl" else torch.device("cpu")
        buffer = tensor.to(device).clone()
        self.dist.all_reduce(buffer, op=self.dist.ReduceOp.SUM)
        return buffer.to(tensor.device)

    def gather_object(self, obj):
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj, group=self._messages)
        return out

    def barrier(self) -> None:
        self.dist.barrier(group=self._messages)

    def shutdown(self) -> None:
        self.dist.destroy_process_group()


class Horovod(SingleProcess):
    """``horovod.torch`` under ``horovodrun``; gradients averaged with one grouped all-reduce per step. Horovod's
    collectives have no timeout: a rank waiting more than ``HOROVOD_STALL_CHECK_TIME_SECONDS`` (60 s) for the others
    logs a stall warning and goes on waiting, unless ``HOROVOD_STALL_SHUTDOWN_TIME_SECONDS`` is set."""

    name = "horovod"

    def __init__(self) -> None:
        try:
            import horovod.torch as hvd
        except ImportError as exc:
            raise DistributedError(f"--engine horovod needs horovod.torch ({exc}); build it with "
                                   "scripts/build_horovod.sh") from exc
        self.hvd = hvd
        hvd.init()
        self.rank, self.world_size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        if torch.cuda.is_available():
            check_one_gpu_per_process("horovodrun", hvd.local_size(), torch.cuda.device_count())
            torch.cuda.set_device(self.local_rank)

    def wrap(self, module: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        self.hvd.broadcast_parameters(module.state_dict(), root_rank=0)
        return module

    def reduce_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        params = [p for p in parameters if p.requires_grad]
        for p in params:  # a parameter the loss did not reach still takes part, with a zero gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        reduced = self.hvd.grouped_allreduce([p.grad for p in params], op=self.hvd.Average)
        for p, g in zip(params, reduced):
            p.grad.copy_(g)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.hvd.allreduce(tensor, op=self.hvd.Sum)

    def gather_object(self, obj):
        # Horovod names the collective after type(obj) by default: ranks passing objects of different types
        # (a command and None) would wait for each other forever
        return self.hvd.allgather_object(obj, name="gather_object")

    def barrier(self) -> None:
        self.hvd.allreduce(torch.zeros(1), op=self.hvd.Sum)  # a collective every rank must reach

    def shutdown(self) -> None:
        self.hvd.shutdown()


def launched_by() -> str:
    """The engine the environment was set up for: ``torchrun``, ``horovod`` or ``none``."""
    if "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ
                                               and "MASTER_ADDR" in os.environ):
        return "torchrun"
    if "HOROVOD_RANK" in os.environ or "HOROVOD_SIZE" in os.environ:
        return "horovod"
    return "none"


def init_engine(name: str = "auto", timeout: timedelta | None = None) -> SingleProcess:
    """Start the engine ``name`` (one of ENGINES; ``auto``: the launcher's, see :func:`launched_by`); ``timeout``: of
    ``torchrun``'s training collectives (see :class:`TorchRun`).

    Raises:
        DistributedError: an unknown name, Horovod not importable, ``torchrun`` asked for outside its launcher, or more
            processes on a node than it has CUDA GPUs (:func:`check_one_gpu_per_process`).
    """
    if name not in ENGINES:
        raise DistributedError(f"--engine must be one of {ENGINES}, got {name!r}")
    chosen = launched_by() if name == "auto" else name
    if chosen == "torchrun":
        if "MASTER_ADDR" not in os.environ:
            raise DistributedError("--engine torchrun: launch with `torchrun --nproc_per_node N ...`")
        return TorchRun(timeout)
    if chosen == "horovod":
        return Horovod()
    return SingleProcess()


@contextlib.contextmanager
def engine(name: str = "auto"):
    """:func:`init_engine` as a context that shuts the engine down on exit."""
    started = init_engine(name)
    try:
        yield started
    finally:
        started.shutdown()
