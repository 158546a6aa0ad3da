"""The math behind `python -m tools.analyze`: plain numpy arrays in, numbers out; no files, no printing.

The vote itself is not here: it is randopt_hpc.vote (pure), so an offline re-vote can never drift from
the one the run did.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from randopt_hpc import vote

# Scores are means of rewards such as 0.1 and 1.1; base + margin is computed in floating point, so a
# candidate exactly `margin` above the base must not fall out on the last bit.
TOL = 1e-9


def mean_scores(rewards: np.ndarray) -> np.ndarray:
    """Row means of a reward matrix in float64.

    Base and candidates go through this one function on the same stored float32 rewards: the stored
    population/train_score is a float64 mean of unrounded rewards, so comparing it with a base score
    recomputed from float32 rewards would put a candidate identical to the base a few 1e-9 below it.
    """
    return np.asarray(rewards, dtype=np.float64).mean(axis=-1)


def wilson(successes: np.ndarray | int, n: int, z: float = 1.959963984540054) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial share (95% for the default z); stays inside [0, 1] even at 0 or n."""
    k = np.asarray(successes, dtype=np.float64)
    if n <= 0:
        nan = np.full(k.shape, np.nan)
        return nan, nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact ends at 0 and n (rounding would leave the estimate a hair outside its own interval).
    return np.where(k == 0, 0.0, np.clip(centre - half, 0, 1)), np.where(k == n, 1.0, np.clip(centre + half, 0, 1))


def density(scores: np.ndarray, base: float, margins: Sequence[float]) -> dict[str, np.ndarray]:
    """Solution density δ(m) = share of candidates with score ≥ base + m, with a 95% Wilson interval."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(margins, dtype=np.float64)
    count = (s[None, :] >= base + m[:, None] - TOL).sum(axis=1)
    lo, hi = wilson(count, len(s))
    return {"margin": m, "count": count, "n": len(s), "density": count / len(s) if len(s) else count * np.nan,
            "low": lo, "high": hi}


def auto_margins(scores: np.ndarray, base: float, steps: int = 11) -> np.ndarray:
    """A grid of round margins (step 1, 2, 2.5 or 5 × 10^e, about `steps` points) from the worst to the best
    candidate's margin over the base; 0 is always on it, so δ(0) = 'at least as good as the base' is a row."""
    d = np.asarray(scores, dtype=np.float64) - base
    lo, hi = min(d.min(), 0.0), max(d.max(), 0.0)
    if hi - lo <= 0:
        return np.array([0.0])
    raw = (hi - lo) / max(steps - 1, 1)
    e = 10.0 ** np.floor(np.log10(raw))
    step = next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= raw * (1 - 1e-9))
    return np.round(step * np.arange(np.floor(lo / step + 1e-9), np.ceil(hi / step - 1e-9) + 1), 12)


def sigma_table(scores: np.ndarray, sigmas: np.ndarray, base: float) -> list[dict]:
    """Score distribution per σ and over everyone: count, mean, std, quantiles, shares above the base."""
    s = np.asarray(scores, dtype=np.float64)
    sig = np.asarray(sigmas, dtype=np.float64)
    rows = []
    for label, mask in [*((float(v), sig == v) for v in np.unique(sig)), ("all", np.ones(len(s), bool))]:
        x = s[mask]
        q = np.quantile(x, [0, 0.25, 0.5, 0.75, 1.0]) if len(x) else [np.nan] * 5
        rows.append({"sigma": label, "count": int(len(x)), "mean": float(x.mean()) if len(x) else np.nan,
                     "std": float(x.std()) if len(x) else np.nan,
                     "q0": float(q[0]), "q25": float(q[1]), "q50": float(q[2]), "q75": float(q[3]), "q100": float(q[4]),
                     "above_base": float(np.mean(x > base + TOL)) if len(x) else np.nan,
                     "at_least_base": float(np.mean(x >= base - TOL)) if len(x) else np.nan})
    return rows


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties sharing their mean rank (what a percentile rank of tied scores must be)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sx = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sx[1:] != sx[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    return ranks


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
    """N×M scores -> N×M percentile ranks in (0, 1], each column ranked on its own."""
    s = np.asarray(scores, dtype=np.float64)
    return np.column_stack([average_ranks(s[:, j]) / len(s) for j in range(s.shape[1])])


class ConstantColumn(ValueError):
    """A column whose scores are all equal: its correlation with anything is undefined."""

    def __init__(self, columns: list[int]):
        super().__init__(f"constant columns {columns}")
        self.columns = columns


def discordance(scores: np.ndarray) -> dict:
    """Spectral discordance 𝒟 = 1 − mean off-diagonal Pearson correlation of the percentile-rank columns.

    0 when every task ranks the candidates alike (generalists), about 1 when rankings are unrelated
    (specialists), at most M/(M−1) because a correlation matrix's off-diagonal mean is ≥ −1/(M−1).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError("discordance needs an N×M score matrix with M ≥ 2")
    if s.shape[0] < 2:
        raise ValueError("discordance needs at least 2 candidates")
    flat = [j for j in range(s.shape[1]) if np.all(s[:, j] == s[0, j])]
    if flat:
        raise ConstantColumn(flat)
    c = np.corrcoef(percentile_ranks(s), rowvar=False)
    m = s.shape[1]
    off = c[~np.eye(m, dtype=bool)]
    return {"D": float(1.0 - off.mean()), "M": m, "bound": m / (m - 1), "N": int(s.shape[0]), "correlation": c}


def split_scores(rewards: np.ndarray, splits: int) -> np.ndarray:
    """N×E per-example rewards -> N×splits mean rewards on contiguous disjoint blocks of examples."""
    r = np.asarray(rewards, dtype=np.float64)
    if not 2 <= splits <= r.shape[1]:
        raise ValueError(f"--splits must be between 2 and the number of train examples ({r.shape[1]}), got {splits}")
    return np.column_stack([r[:, block].mean(axis=1) for block in np.array_split(np.arange(r.shape[1]), splits)])


def pass_at_k(n: int, c: np.ndarray | int, k: int) -> np.ndarray:
    """Unbiased pass@k = 1 − C(n−c, k)/C(n, k) per item, as the stable product 1 − Π_{i=n−c+1..n} (1 − k/i)."""
    c = np.atleast_1d(np.asarray(c, dtype=np.int64))
    if not 1 <= k <= n:
        raise ValueError(f"k={k} outside 1..n={n}")
    out = np.empty(len(c), dtype=np.float64)
    for t, ct in enumerate(c):
        out[t] = 1.0 if n - ct < k else 1.0 - np.prod(1.0 - k / np.arange(n - ct + 1, n + 1))
    return out


def pass_at_k_curve(correct: np.ndarray) -> np.ndarray:
    """n×T correctness (n samples per item) -> mean pass@k over items for k = 1..n."""
    ok = np.asarray(correct, dtype=bool)
    n, c = ok.shape[0], ok.sum(axis=0)
    return np.array([pass_at_k(n, c, k).mean() for k in range(1, n + 1)])


def coverage_curve(correct: np.ndarray) -> np.ndarray:
    """K×T member correctness -> share of items that at least one of the first k members gets right, k = 1..K."""
    ok = np.asarray(correct, dtype=bool)
    return np.logical_or.accumulate(ok, axis=0).mean(axis=1)


def vote_curve(keys: Sequence[Sequence[str]], correct: np.ndarray) -> tuple[np.ndarray, list[list[bool]]]:
    """Vote accuracy of the first k members for k = 1..K (randopt_hpc.vote; '' abstains) and each k's voted
    correctness."""
    per_k = [vote.vote(keys, correct, k)[1] for k in range(1, len(keys) + 1)]
    return np.array([vote.accuracy(v) for v in per_k]), per_k


def timing_stats(busy: np.ndarray, wall: np.ndarray) -> dict:
    """Idle = wall − busy per rank; imbalance = max busy / mean busy (1.0 = perfectly even)."""
    b, w = np.asarray(busy, dtype=np.float64), np.asarray(wall, dtype=np.float64)
    mean = b.mean() if len(b) else np.nan
    return {"idle": w - b, "imbalance": float(b.max() / mean) if len(b) and mean > 0 else float("nan")}
