"""One global ranking of the population; every top-K is a prefix of it. Pure."""
from __future__ import annotations

from collections.abc import Sequence


def ranking(indices: Sequence[int], scores: Sequence[float]) -> list[int]:
    """Candidate indices by score descending, ties by index ascending (NaN scores rank last)."""
    if len(indices) != len(scores):
        raise ValueError(f"{len(indices)} indices but {len(scores)} scores")
    if len(set(indices)) != len(indices):
        raise ValueError("duplicate candidate index in the population scores")
    key = lambda p: (0 if p[1] == p[1] else 1, -p[1] if p[1] == p[1] else 0.0, p[0])  # noqa: E731
    return [i for i, _ in sorted(zip(indices, scores), key=key)]


def control_members(n: int, k: int) -> list[int]:
    """The unselected control: the first K candidates by index (they were drawn, never chosen)."""
    return list(range(min(k, n)))
