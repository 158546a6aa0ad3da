"""Evolution strategies on RandOpt's parts (`algorithm: es`): which candidates an iteration scores and how their
scores move the weights. Pure: no MPI, no I/O, no torch.

OpenAI-style ES (Salimans et al. 2017) with rank-shaped fitness. Iteration t scores N candidates around θ_t:

  pair j = i // 2 (antithetic) or j = i,   seed_(t, j) = candidate_seed(iteration_seed(population.seed, t), j)
  candidate i = θ_t + s_i · σ_t · ε(seed_(t, j)),   s_i = +1, or -1 for the odd i of an antithetic pair
  σ_t = σ_0 · es.sigma_decay ** t   (σ_0 = the one value of population.sigmas)
  F = centered ranks of the N train scores (ties share their mean rank; in [-0.5, 0.5])
  θ_(t+1) = cast(θ_t + Σ_j c_j ε(seed_(t, j))),   c_j = float32(α / (N σ_t) · Σ_(i in pair j) s_i F_i)

The sum runs over j in order, in float32, on every rank alike (randopt_hpc.noise_table.FlatParams.shift): every
rank computes the whole update from the allgathered scores, so θ is bitwise the same on every rank and at every
rank count. That costs each rank N noise draws per iteration, a small part of one candidate's generation.

Candidate i of iteration t is run candidate t·N + i: its record is an ordinary candidate record whose sigma
carries the sign, so resume, shards and token accounting are RandOpt's.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from randopt_hpc.configrules import require, within
from randopt_hpc.population import Candidate, candidate_seed, splitmix64

ALGORITHMS = ("randopt", "es")
MIN_SIGMA = 1e-12   # the update's scale α/(Nσ_t) stays far inside float32


@dataclass(frozen=True)
class EsConfig:
    iterations: int = 8        # T: θ_0 .. θ_T
    lr: float = 0.01           # α
    sigma_decay: float = 1.0   # σ_t = σ_0 · sigma_decay ** t
    antithetic: bool = True    # candidates 2j and 2j+1 are θ_t ± σ_t ε_j
    eval_every: int = 1        # θ_t answers the test split at every eval_every-th iteration (and θ_0, θ_T)
    checkpoint_every: int = 2  # rank 0 saves θ_t every so many iterations (resume replays from the last one)

    def validate(self, cfg) -> None:
        within("es.iterations", self.iterations, 1, 100_000)
        require(0 < self.lr < 1e6, "es.lr", f"must be in (0, 1e6), got {self.lr}")
        require(0 < self.sigma_decay <= 1, "es.sigma_decay", f"must be in (0, 1], got {self.sigma_decay}")
        within("es.eval_every", self.eval_every, 1, 100_000)
        within("es.checkpoint_every", self.checkpoint_every, 1, 100_000)
        if cfg.algorithm != "es":   # the section's own values are checked whatever the algorithm
            return
        n, sigmas = cfg.population.size, cfg.population.sigmas
        require(not self.antithetic or n % 2 == 0, "population.size",
                f"es.antithetic pairs the candidates: needs an even size, got {n}")
        require(n >= 2, "population.size", f"algorithm es ranks candidates against each other: needs >= 2, got {n}")
        require(len(sigmas) == 1, "population.sigmas", f"algorithm es takes one σ_0, got {list(sigmas)}")
        require(sigmas[0] >= MIN_SIGMA, "population.sigmas",
                f"algorithm es divides by σ: needs σ_0 >= {MIN_SIGMA:g}, got {sigmas[0]:g}")
        last = sigma_at(sigmas[0], self.sigma_decay, self.iterations - 1)
        require(last >= MIN_SIGMA, "es.sigma_decay",
                f"the update divides by σ_t: σ at the last iteration is {last:.3g}, below {MIN_SIGMA:g}")
        require(cfg.selection.schedule == "full", "selection.schedule", "algorithm es scores every candidate on "
                "the whole train split; set full")
        require(len(cfg.all_tasks) == 1, "task", "algorithm es scores one task; list one")
        require(cfg.generation.samples == 0, "generation.samples", "algorithm es draws no base samples; set 0")


def iteration_seed(seed: int, t: int) -> int:
    """The population seed of iteration t (its candidates' seeds follow as in RandOpt)."""
    return splitmix64(splitmix64(seed) ^ splitmix64(0x4553 << 32 | t)) >> 1


def sigma_at(sigma0: float, decay: float, t: int) -> float:
    return float(sigma0 * decay ** t)


def candidates(es: EsConfig, seed: int, sigma0: float, n: int, t: int) -> list[Candidate]:
    """Iteration t's N candidates, as run candidates t·N .. t·N + N - 1 (sigma signed)."""
    s, base = sigma_at(sigma0, es.sigma_decay, t), iteration_seed(seed, t)
    out = []
    for i in range(n):
        j, sign = (i // 2, -1.0 if i % 2 else 1.0) if es.antithetic else (i, 1.0)
        out.append(Candidate(t * n + i, candidate_seed(base, j), sign * s))
    return out


def centered_ranks(scores: Sequence[Fraction | float]) -> list[Fraction]:
    """Ranks 0..N-1 scaled to [-1/2, 1/2], tied scores sharing the mean of their ranks; exact."""
    n = len(scores)
    if n < 2:
        return [Fraction(0)] * n
    order = sorted(range(n), key=lambda i: scores[i])
    rank = [Fraction(0)] * n
    a = 0
    while a < n:
        b = a
        while b + 1 < n and scores[order[b + 1]] == scores[order[a]]:
            b += 1
        for p in range(a, b + 1):
            rank[order[p]] = Fraction(a + b, 2)
        a = b + 1
    return [r / (n - 1) - Fraction(1, 2) for r in rank]


def update_terms(es: EsConfig, cands: Sequence[Candidate], scores: Sequence[Fraction | float],
                 sigma: float) -> list[tuple[int, float]]:
    """[(seed_j, c_j)] in j order: θ_(t+1) = θ_t + Σ c_j ε(seed_j). Pairs with equal fitness drop out."""
    f, n = centered_ranks(scores), len(cands)
    weight: dict[int, Fraction] = {}
    for c, fi in zip(cands, f):
        weight[c.seed] = weight.get(c.seed, Fraction(0)) + (fi if c.sigma > 0 else -fi)
    scale = Fraction(es.lr) / (n * Fraction(sigma))
    return [(seed, _float32(float(w * scale))) for seed, w in weight.items() if w != 0]


def _float32(x: float) -> float:
    """x rounded to float32 (to nearest even, as numpy): the coefficient every rank uses."""
    return struct.unpack("f", struct.pack("f", x))[0]
