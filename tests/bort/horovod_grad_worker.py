"""Worker launched by test_horovod.py under `horovodrun -np 2 --gloo`: averages a tiny BERT's gradients with Horovod.

Each rank takes its equal share of one fixed global batch, runs forward/backward through `hvd.DistributedOptimizer`
(whose backward hooks all-reduce every gradient with `op=hvd.Average`), and saves the synchronised gradients to
`<out_dir>/rank<r>.pt`. The test compares them with one process's gradients on the whole batch.

Usage: python horovod_grad_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

GLOBAL_BATCH = 4  # sequences; split evenly over the ranks
SEQ_LEN = 12  # tokens per sequence
VOCAB = 97


def build_model(seed: int = 0) -> BertModel:
    """A 2-layer, width-32 BERT without dropout, so its gradients are deterministic."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=SEQ_LEN, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertModel(config).eval()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, both (GLOBAL_BATCH, SEQ_LEN); the last rows are padded."""
    gen = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(1, VOCAB, (GLOBAL_BATCH, SEQ_LEN), generator=gen)
    mask = torch.ones_like(input_ids)
    mask[-1, SEQ_LEN - 4:] = 0
    mask[-2, SEQ_LEN - 2:] = 0
    return input_ids, mask


def loss_fn(model: BertModel, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of a per-sequence scalar, so equal shards' mean gradient equals the full batch's."""
    out = model(input_ids=input_ids, attention_mask=mask)
    per_token = out.last_hidden_state.pow(2).mean(-1) + out.pooler_output.sum(-1, keepdim=True)
    per_sequence = (per_token * mask).sum(-1) / mask.sum(-1)
    return per_sequence.mean()


def main(out_dir: Path) -> None:
    import horovod.torch as hvd

    hvd.init()
    torch.set_num_threads(1)
    if GLOBAL_BATCH % hvd.size():
        raise SystemExit(f"global batch {GLOBAL_BATCH} does not split over {hvd.size()} ranks")
    model = build_model(seed=hvd.rank())  # different weights per rank: the broadcast below must fix that
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                         named_parameters=model.named_parameters(), op=hvd.Average)
    input_ids, mask = global_batch()
    share = GLOBAL_BATCH // hvd.size()
    rows = slice(hvd.rank() * share, (hvd.rank() + 1) * share)
    optimizer.zero_grad()
    loss_fn(model, input_ids[rows], mask[rows]).backward()
    optimizer.synchronize()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    torch.save({"rank": hvd.rank(), "size": hvd.size(), "grads": grads}, out_dir / f"rank{hvd.rank()}.pt")
    hvd.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
