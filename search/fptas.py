"""The pieces of the FPTAS of de Wynter (2020), as used by Bort: the W-coefficient and interval selection.

The Pareto front over (p, i, e) comes from the Optuna study itself (``study.best_trials``).

References: A. de Wynter, "An Approximation Algorithm for Optimal Subarchitecture Extraction", arXiv 2010.08512
(the algorithm and its W-coefficient), and de Wynter & Perry, arXiv 2010.10499, §3 (its use for BERT).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def w_coefficient(p: float, i: float, e: float, p_max: float, i_max: float) -> float:
    """W(b) = [(p(T) − p(b)) / p(T)] · [(i(T) − i(b)) / i(T)] · [1 / e(b)]; larger is better.

    p: parameters of b; i: inference cost of b (FLOPs or milliseconds, the same unit as i_max); e: error surrogate of
    b (> 0); p_max, i_max: the maximum point T's parameters and cost. The form is the one quoted from arXiv 2010.08512
    by third-party reimplementations; this is the only place it is written.

    Raises:
        ValueError: if e <= 0 or is not finite, or p_max, i_max <= 0.
    """
    if not (e > 0 and math.isfinite(e)):
        raise ValueError(f"the error surrogate e must be positive and finite, got {e}")
    if p_max <= 0 or i_max <= 0:
        raise ValueError(f"the maximum point must have positive size and cost, got p={p_max}, i={i_max}")
    return (p_max - p) / p_max * ((i_max - i) / i_max) / e


def interval_candidates(sizes: Sequence[float], costs: Sequence[float], epsilon: int, p_max: float,
                        i_max: float, tie_break: Sequence[float] | None = None) -> list[int]:
    """Steps (2)–(3): sort by size, cut into intervals of ``epsilon`` consecutive architectures, one candidate each.

    Within an interval the candidate is the architecture with the largest known part of W,
    (1 − p/p(T))·(1 − i/i(T)), since e is unknown before training (arXiv 2010.08512 leaves the choice open). Ties
    (e.g. architectures that differ only in their number of heads, which changes neither parameters nor FLOPs) go to
    the smallest ``tie_break`` value, then to the smaller architecture. Returns indices into ``sizes``, in increasing
    size.

    Raises:
        ValueError: if epsilon is not in 1..len(sizes) or the sequences differ in length.
    """
    n = len(sizes)
    if len(costs) != n:
        raise ValueError(f"sizes and costs differ in length ({n} vs {len(costs)})")
    if not 1 <= epsilon <= n:
        raise ValueError(f"epsilon must be between 1 and |Ξ| = {n}, got {epsilon}")
    ties = tie_break if tie_break is not None else [0.0] * n
    order = sorted(range(n), key=lambda k: (sizes[k], costs[k], k))
    chosen = []
    for start in range(0, n, epsilon):
        interval = order[start:start + epsilon]
        chosen.append(max(interval, key=lambda k: ((1 - sizes[k] / p_max) * (1 - costs[k] / i_max), -ties[k],
                                                   -sizes[k], -k)))
    return chosen

