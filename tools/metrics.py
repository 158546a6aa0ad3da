"""The math behind `python -m tools.analyze`: plain numpy arrays in, numbers out; no files, no printing.

The vote itself is not here: it is randopt_hpc.vote (pure), so an offline re-vote can never drift from
the one the run did.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from randopt_hpc import vote
from randopt_hpc.stats import coverage_curve, pass_at_k, pass_at_k_curve  # noqa: F401 (the tools' names)

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


def density(scores: np.ndarray, base: float, margins: Sequence[float], tol: float = TOL) -> dict[str, np.ndarray]:
    """Solution density δ(m) = share of candidates with score ≥ base + m, with a 95% Wilson interval."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(margins, dtype=np.float64)
    count = (s[None, :] >= base + m[:, None] - tol).sum(axis=1)
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
    """N×E per-example rewards (or correctness) -> N×splits means on contiguous disjoint blocks of examples."""
    r = np.asarray(rewards, dtype=np.float64)
    if not 2 <= splits <= r.shape[1]:
        raise ValueError(f"--splits must be between 2 and the number of train examples ({r.shape[1]}), got {splits}")
    return np.column_stack([r[:, block].mean(axis=1) for block in np.array_split(np.arange(r.shape[1]), splits)])


# ----------------------------------------------------------------- the paper's δ(m) and 𝒟, on accuracy and per σ

# Accuracies are hits/E of one example set: 1/E is far coarser than this, which only absorbs base + m rounding.
ACC_TOL = 1e-12
# At small σ near-copies of the base tie it, so δ(0) alone says little: margins above it show how far above.
ACCURACY_MARGINS = (0.0, 0.01, 0.02, 0.05, 0.10)


def sigma_groups(sigmas: np.ndarray) -> list[tuple[float | str, np.ndarray]]:
    """(σ, mask of its candidates) for each σ value, then ('all', everyone)."""
    sig = np.asarray(sigmas, dtype=np.float64)
    return [*((float(v), sig == v) for v in np.unique(sig)), ("all", np.ones(len(sig), dtype=bool))]


def step_grid(values: np.ndarray, base: float) -> np.ndarray:
    """Every candidate's margin over the base plus one point beyond each end: δ(m) changes only at those
    margins, so a step curve through them is exact."""
    jumps = np.unique(np.round(np.asarray(values, dtype=np.float64) - base, 12))
    pad = max(0.05 * (jumps[-1] - jumps[0]), 1e-3)
    return np.array([jumps[0] - pad, *jumps, jumps[-1] + pad])


def accuracy_density(correct: np.ndarray, base_correct: np.ndarray, sigmas: np.ndarray,
                     margins: Sequence[float] | None = None) -> dict:
    """δ(m) = share of candidates with accuracy ≥ base accuracy + m, per σ and over all, with Wilson intervals.

    N×E candidate and E base correctness on the same examples: a candidate with as many right answers as
    the base ties it exactly. margins=None: step_grid, every candidate's own margin.
    """
    ok, base_ok = np.asarray(correct, dtype=bool), np.asarray(base_correct, dtype=bool)
    e = ok.shape[1]
    if e == 0 or base_ok.shape != (e,):
        raise ValueError(f"candidates answered {e} examples and the base {len(base_ok)}: no common accuracy")
    acc = ok.sum(axis=1) / e
    base_hits = int(base_ok.sum())
    base = base_hits / e
    grid = step_grid(acc, base) if margins is None else np.asarray(margins, dtype=np.float64)
    return {"base": base, "base_hits": base_hits, "examples": e, "margin": grid,
            "rows": [{"sigma": s, **density(acc[mask], base, grid, tol=ACC_TOL)} for s, mask in sigma_groups(sigmas)]}


def spearman_brown(r: float, k: float = 2) -> float:
    """Reliability of a score k times as long as one whose k parts correlate r on average: k·r / (1 + (k−1)·r).
    NaN where the denominator is not positive (r at its floor −1/(k−1))."""
    den = 1 + (k - 1) * r
    return float(k * r / den) if den > 0 else float("nan")


def split_half_correlation(correct: np.ndarray) -> float:
    """Rank correlation r of candidates' accuracy on a column's even- and odd-position examples; ValueError
    saying why when undefined."""
    ok = np.asarray(correct, dtype=np.float64)
    if ok.shape[1] < 2:
        raise ValueError(f"{ok.shape[1]} example(s): no two halves")
    try:
        return 1.0 - discordance(np.column_stack([ok[:, 0::2].mean(axis=1), ok[:, 1::2].mean(axis=1)]))["D"]
    except ConstantColumn:
        raise ValueError("every candidate has the same accuracy on one half (even or odd examples)") from None


def split_half_reliability(correct: np.ndarray) -> float:
    """A column's reliability: its split-half r stepped up to the full length, 2r/(1+r)."""
    return spearman_brown(split_half_correlation(correct))


def corrected_correlation(corr: np.ndarray, reliability: Sequence[float]) -> np.ndarray:
    """Correlations with measurement noise divided out (Spearman's attenuation correction): r_ij / sqrt(ρ_i ρ_j),
    clipped to [−1, 1] since noisy estimates can overshoot. Needs every ρ > 0."""
    rho = np.asarray(reliability, dtype=np.float64)
    if not np.all(rho > 0):
        raise ValueError("a reliability is ≤ 0 or undefined")
    c = np.clip(np.asarray(corr, dtype=np.float64) / np.sqrt(np.outer(rho, rho)), -1.0, 1.0)
    np.fill_diagonal(c, 1.0)
    return c


def thicket_discordance(columns: Sequence[np.ndarray], names: Sequence[str]) -> dict:
    """𝒟 of per-column accuracy (columns: N×E_j correctness, one per task, the same N candidates), each
    column's split-half reliability ρ_j, and the noise-corrected 𝒟 = 1 − mean off-diagonal r_ij / sqrt(ρ_i ρ_j).

    Never raises for data reasons: what is undefined is None (NaN for a ρ) with a one-line `why`, so that
    one σ with a single candidate or a constant column does not hide the others.
    """
    n, m = len(columns[0]), len(columns)
    out = {"N": n, "D": None, "correlation": None, "why": None, "half_correlation": [float("nan")] * m,
           "reliability": [float("nan")] * m, "reliability_why": [None] * m, "D_corrected": None,
           "corrected_correlation": None, "why_corrected": None}
    if n < 2:
        out["why"] = out["why_corrected"] = f"{n} candidate{'' if n == 1 else 's'}: rank correlation needs 2 or more"
        return out
    try:
        d = discordance(np.column_stack([np.asarray(c, dtype=np.float64).mean(axis=1) for c in columns]))
        out["D"], out["correlation"] = d["D"], d["correlation"]
    except ConstantColumn as e:
        out["why"] = f"every candidate has the same accuracy on {', '.join(names[j] for j in e.columns)}"
    r, rho, rho_why = out["half_correlation"], out["reliability"], out["reliability_why"]
    for j, c in enumerate(columns):
        try:
            r[j] = split_half_correlation(c)
            rho[j] = spearman_brown(r[j])
        except ValueError as e:
            rho_why[j] = str(e)
        if rho_why[j] is None and not rho[j] > 0:
            # Halves that rank candidates oppositely (r ≤ 0) leave no signal to correct towards.
            rho_why[j] = f"its halves' rank correlation r = {r[j]:.3f} ≤ 0, so ρ ≤ 0"
    bad = [f"{names[j]}: {rho_why[j]}" for j in range(m) if rho_why[j]]
    if out["D"] is None:
        out["why_corrected"] = "D is undefined"
    elif bad:
        out["why_corrected"] = "; ".join(bad)
    else:
        c = corrected_correlation(out["correlation"], out["reliability"])
        out["D_corrected"], out["corrected_correlation"] = float(1.0 - c[~np.eye(m, dtype=bool)].mean()), c
    return out


def block_reliability(correct: np.ndarray, splits: int) -> dict:
    """One task's examples cut into `splits` contiguous blocks: mean inter-block rank correlation r̄ of the
    candidates' block accuracies and the full score's Spearman–Brown reliability M·r̄/(1 + (M−1)·r̄).

    A noise diagnostic, not a discordance: the blocks are the same task, so 1 − r̄ measures sampling noise,
    not specialisation.
    """
    d = discordance(split_scores(correct, splits))
    r = 1.0 - d["D"]
    return {"M": splits, "N": d["N"], "r_mean": r, "one_minus_r": d["D"], "reliability": spearman_brown(r, splits),
            "correlation": d["correlation"]}


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


# ----------------------------------------------------------------- across runs: population seeds, correlations

def t_two_sided(t: float, df: int) -> float:
    """P(|T| ≤ t) for Student's t with integer df ≥ 1, in closed form (Abramowitz & Stegun 26.7.3–4)."""
    if t <= 0:
        return 0.0
    theta = np.arctan(t / np.sqrt(df))
    c2, s = np.cos(theta) ** 2, np.sin(theta)
    if df % 2:      # odd: 2/π (θ + sin θ cos θ (1 + 2/3 cos²θ + (2·4)/(3·5) cos⁴θ + ...)), df − 1 terms in all
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for j in range(1, (df - 1) // 2):
            term *= 2 * j / (2 * j + 1) * c2
            total += term
        return float(2 / np.pi * (theta + s * np.cos(theta) * total))
    term, total = 1.0, 1.0          # even: sin θ (1 + 1/2 cos²θ + (1·3)/(2·4) cos⁴θ + ...)
    for j in range(1, df // 2):
        term *= (2 * j - 1) / (2 * j) * c2
        total += term
    return float(s * total)


def t_quantile(level: float, df: int) -> float:
    """t such that P(|T| ≤ t) = level (level 0.95: the 0.975 quantile), by bisection on t_two_sided."""
    if df < 1:
        raise ValueError(f"df must be ≥ 1, got {df}")
    lo, hi = 0.0, 1.0
    while t_two_sided(hi, df) < level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided(mid, df) < level else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


def seed_stats(values: Sequence[float | None], level: float = 0.95) -> dict:
    """Mean, sample std (ddof 1), min, max and the t-interval mean ± t_{(1+level)/2, n−1}·s/√n of one quantity
    over runs (population seeds). None values (the run has no such quantity) are left out; n = 1: no std,
    no interval."""
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    n = len(x)
    out = {"n": n, "mean": None, "std": None, "min": None, "max": None, "low": None, "high": None}
    if n == 0:
        return out
    out.update(mean=float(x.mean()), min=float(x.min()), max=float(x.max()))
    if n >= 2:
        s = float(x.std(ddof=1))
        half = t_quantile(level, n - 1) * s / np.sqrt(n)
        out.update(std=s, low=out["mean"] - half, high=out["mean"] + half)
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None when fewer than 3 points or either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation: Pearson on average ranks (ties share their mean rank)."""
    return pearson(average_ranks(np.asarray(x)), average_ranks(np.asarray(y)))


def fisher_interval(r: float | None, n: int, z: float = 1.959963984540054) -> tuple[float | None, float | None]:
    """95% interval of a Pearson r by Fisher's z = atanh r ± z/√(n−3); None for n ≤ 3 or |r| = 1."""
    if r is None or n <= 3 or abs(r) >= 1:
        return None, None
    c, half = np.arctanh(r), z / np.sqrt(n - 3)
    return float(np.tanh(c - half)), float(np.tanh(c + half))
