"""Worker launched by test_distributed.py under `torchrun --nproc_per_node 2`: rank 0 works alone for longer than
the process group's timeout while the other rank waits for it, as between fine-tuning runs or search candidates.

Usage: python distributed_wait_worker.py MODE TIMEOUT_SECONDS WAIT_SECONDS
- ``message``: the other rank waits in ``gather_object``, then in ``barrier``, each time for WAIT_SECONDS; then both
  sum a tensor (a training collective). Prints ``rank R: <the gathered list> <the sum>``.
- ``sum``: the other rank waits in ``sum`` itself, which must fail once TIMEOUT_SECONDS have passed.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

import torch

from bort.distributed import init_engine


def main(mode: str, timeout: float, wait: float) -> None:
    eng = init_engine("torchrun", timeout=timedelta(seconds=timeout))
    gathered = None
    if mode == "message":
        if eng.is_main:
            time.sleep(wait)
        gathered = eng.gather_object(f"from {eng.rank}")
        if eng.is_main:
            time.sleep(wait)
        eng.barrier()
    elif eng.is_main:
        time.sleep(wait)
    total = eng.sum(torch.ones(1, dtype=torch.float64))
    print(f"rank {eng.rank}: {gathered} {total.item()}", flush=True)
    eng.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
