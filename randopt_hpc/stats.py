"""The statistics a run and tools/analyze report: pass@k, test-time majority vote (TT-MV), coverage, and
paired bootstrap intervals over test items. Pure numpy: no files, no MPI.

Conventions: a correctness matrix is rows = samples or members, columns = test items.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from randopt_hpc import vote

Z95 = 1.959963984540054


def pass_at_k(n: int, c: np.ndarray | int, k: int) -> np.ndarray:
    """Unbiased pass@k = 1 − C(n−c, k)/C(n, k) per item (Chen et al. 2021), as the stable product
    1 − Π_{i=n−c+1..n} (1 − k/i)."""
    c = np.atleast_1d(np.asarray(c, dtype=np.int64))
    if not 1 <= k <= n:
        raise ValueError(f"k={k} outside 1..n={n}")
    out = np.empty(len(c), dtype=np.float64)
    for t, ct in enumerate(c):
        out[t] = 1.0 if n - ct < k else 1.0 - np.prod(1.0 - k / np.arange(n - ct + 1, n + 1))
    return out


def pass_at_k_items(correct: np.ndarray, k: int) -> np.ndarray:
    """n×T correctness of n i.i.d. samples per item -> per-item pass@k (the mean is the estimate)."""
    ok = np.asarray(correct, dtype=bool)
    return pass_at_k(ok.shape[0], ok.sum(axis=0), k)


def pass_at_k_curve(correct: np.ndarray) -> np.ndarray:
    """n×T correctness -> mean pass@k over items for k = 1..n."""
    ok = np.asarray(correct, dtype=bool)
    return np.array([pass_at_k_items(ok, k).mean() for k in range(1, ok.shape[0] + 1)])


def coverage_curve(correct: np.ndarray) -> np.ndarray:
    """K×T member correctness -> share of items that at least one of the first k members gets right, k = 1..K."""
    ok = np.asarray(correct, dtype=bool)
    return np.logical_or.accumulate(ok, axis=0).mean(axis=1)


def tt_mv_items(keys: Sequence[Sequence[str | None]], key_correct: np.ndarray, k: int) -> np.ndarray:
    """Test-time majority vote of k samples, per item: the mean over the ⌊n/k⌋ disjoint blocks of k samples
    (samples 0..k−1, k..2k−1, ...) of whether the block's vote is right. Each block is k i.i.d. samples, so
    every block is an unbiased draw of TT-MV@k and their mean has less variance than one block's.
    `key_correct` is the verdict on each sample's key (randopt_hpc.vote.key_verdicts): a vote is judged by
    its key, as the ensembles' votes are."""
    n = len(keys)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} outside 1..n={n}")
    ok = np.asarray(key_correct, dtype=bool)
    blocks = [vote.vote(keys[b * k:(b + 1) * k], ok[b * k:(b + 1) * k], k)[1] for b in range(n // k)]
    return np.mean(np.array(blocks, dtype=np.float64), axis=0)


def tt_mv_curve(keys, key_correct, ks: Sequence[int]) -> np.ndarray:
    return np.array([tt_mv_items(keys, key_correct, k).mean() for k in ks])


def bootstrap_indices(n_items: int, draws: int = 2000, seed: int = 0) -> np.ndarray:
    """draws × n_items resampled item positions (with replacement), from a fixed seed: every interval of one
    report resamples the same items, which is what makes differences paired."""
    return np.random.default_rng(seed).integers(0, n_items, size=(draws, n_items))


def interval(values: np.ndarray, idx: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item `values` over the resamples `idx`."""
    means = np.asarray(values, dtype=np.float64)[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired(a: np.ndarray, b: np.ndarray, idx: np.ndarray, level: float = 0.95) -> dict:
    """Mean of a − b over items with its paired bootstrap interval (both resampled on the same items)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    lo, hi = interval(d, idx, level)
    return {"diff": float(d.mean()), "low": lo, "high": hi}
