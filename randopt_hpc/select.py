"""One global ranking of the population (every top-K is a prefix of it), and the unselected controls. Pure."""
from __future__ import annotations

from collections.abc import Sequence

from randopt_hpc.population import splitmix64


def ranking(indices: Sequence[int], scores: Sequence) -> list[int]:
    """Candidate indices by score descending, ties by index ascending (NaN scores rank last). Scores should
    be exact (the Fractions of tasks.multi.Objective.exact): float sums of the same rewards in another
    order differ in the last bit, and would break ties that are not ties."""
    if len(indices) != len(scores):
        raise ValueError(f"{len(indices)} indices but {len(scores)} scores")
    if len(set(indices)) != len(indices):
        raise ValueError("duplicate candidate index in the population scores")
    key = lambda p: (0 if p[1] == p[1] else 1, -p[1] if p[1] == p[1] else 0.0, p[0])  # noqa: E731
    return [i for i, _ in sorted(zip(indices, scores), key=key)]


CONTROL_STREAM = 0xC0117201   # the control's permutation: a stream apart from the seeds' and the σ draw's


def control_order(n: int, seed: int) -> list[int]:
    """All N candidates in a seeded random order, independent of how σ was laid out over the indices (under
    sigma_assignment=blocked the first indices all share one σ, so 'the first K' would be a one-σ ensemble).
    The unselected control is a prefix of it."""
    return sorted(range(n), key=lambda i: (splitmix64(splitmix64(seed ^ CONTROL_STREAM) ^ splitmix64(i + 1)), i))


def sigma_matched(selected: Sequence[int], sigma_of: Sequence[float], order: Sequence[int]) -> list[int]:
    """A control with the σ histogram of the selected members at every prefix: for each selected member in
    rank order, the next candidate of its σ in `order` (control_order). It tells selection from a σ choice."""
    queues: dict[float, list[int]] = {}
    for i in order:
        queues.setdefault(sigma_of[i], []).append(i)
    taken = {s: 0 for s in queues}
    out = []
    for m in selected:
        s = sigma_of[m]
        out.append(queues[s][taken[s]])
        taken[s] += 1
    return out
