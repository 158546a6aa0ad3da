"""Candidates: index i -> (seed_i, sigma_i), and which rank owns i. Pure functions of plain integers.

A candidate is its index (docs/design.md, invariant 1): nothing here depends on the rank count except
`owned`, and owning only decides who computes a result, never what it is.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_MASK64 = (1 << 64) - 1
# How a seed becomes normals (randopt_hpc.noise): part of what a candidate is, so a result-defining choice.
NOISE_VERSIONS = ("boxmuller", "table16", "window")
# runtime.schedule: how candidates are dealt to ranks (`owned`, or a shared counter: randopt_hpc.deal).
DEALS = ("strided", "dynamic")


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@dataclass(frozen=True)
class Candidate:
    index: int
    seed: int     # in [0, 2**63): fits int64 columns
    sigma: float


def candidate_seed(global_seed: int, index: int) -> int:
    return splitmix64(splitmix64(global_seed) ^ splitmix64(index + 1)) >> 1


def sigma_index(global_seed: int, index: int, n: int, n_sigmas: int, assignment: str) -> int:
    if assignment == "blocked":
        # equal contiguous blocks, as the paper's pseudocode (sizes differ by at most one)
        return index * n_sigmas // n
    if assignment == "random":
        # uniform with replacement, as the reference code; a stream separate from the seed's
        return splitmix64(candidate_seed(global_seed, index) ^ 0x5EED5166A5) % n_sigmas
    raise ValueError(f"population.sigma_assignment: unknown {assignment!r}")


def candidate(global_seed: int, index: int, n: int, sigmas: tuple[float, ...], assignment: str) -> Candidate:
    if not 0 <= index < n:
        raise IndexError(f"candidate {index} outside population of {n}")
    s = sigmas[sigma_index(global_seed, index, n, len(sigmas), assignment)]
    return Candidate(index, candidate_seed(global_seed, index), float(s))


def population(global_seed: int, n: int, sigmas: tuple[float, ...], assignment: str) -> list[Candidate]:
    return [candidate(global_seed, i, n, sigmas, assignment) for i in range(n)]


class Population:
    """population() without building it: candidate i is computed when asked for, so a rank touches only
    its own slice and the ensemble members."""

    def __init__(self, global_seed: int, n: int, sigmas: tuple[float, ...], assignment: str):
        self.global_seed, self.n, self.sigmas, self.assignment = global_seed, n, tuple(sigmas), assignment

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Candidate:
        return candidate(self.global_seed, index, self.n, self.sigmas, self.assignment)


def owned(indices, rank: int = 0, size: int = 1) -> list[int]:
    """The strided slice rank `rank` of `size` evaluates: every size-th of `indices` from position `rank` (of
    range(N): every i with i mod size == rank; of a halving rung's survivors, an equal share however they
    fall)."""
    return list(indices)[rank::size]


def select_names(names: list[str], include: list[str], exclude: list[str]) -> list[str]:
    """The checkpoint tensors a perturbation touches (population.include / exclude): names matching any include
    regex (re.search; none given = all) and no exclude regex, in order."""
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in exclude]
    return [n for n in names
            if (not inc or any(p.search(n) for p in inc)) and not any(p.search(n) for p in exc)]
