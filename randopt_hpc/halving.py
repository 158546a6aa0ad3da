"""Successive halving over the train split: which candidates answer which train examples, rung by rung. Pure.

Rung r: n_r candidates answer the first m_r train examples (m_0 = `first`, m_{r+1} = min(η·m_r, train size);
with several tasks, the first m_r/train size of each task's examples). The best n_{r+1} = max(⌈n_r/η⌉,
⌈keep·max K⌉) by score on those examples go on (ties: the lower index), until the survivors have the whole
split. The final ranking: the last rung's candidates by full score, then those out at each earlier rung by
their score there. `full` is one rung: every candidate on every example.

A candidate's answers on an example do not depend on the schedule, so the run records them per (candidate,
example) and a schedule is only which of them it asks for: a full run's rewards replay any schedule exactly
(`walk` without evaluation: tools.analyze halving), and a run folder may change schedule and grow.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from randopt_hpc import select
from randopt_hpc.configrules import require, within

SCHEDULES = ("full", "halving")


@dataclass(frozen=True)
class HalvingConfig:
    first: int = 25        # m_0: train examples every candidate answers
    eta: int = 3           # η: a rung keeps 1/η of its candidates and gives them η times the examples
    keep: float = 1.0      # never fewer survivors than keep × the largest K

    def validate(self) -> None:
        within("selection.halving.first", self.first, 1, 1_000_000)
        within("selection.halving.eta", self.eta, 2, 1000)
        require(1 <= self.keep <= 1000 and self.keep == self.keep, "selection.halving.keep",
                f"must be in [1, 1000] (survivors per selected member), got {self.keep}")


@dataclass(frozen=True)
class Rung:
    examples: int      # m_r: how much of the train split (per task, in proportion) the rung's candidates answer
    candidates: int    # n_r


def rungs(schedule: str, n: int, n_train: int, k_max: int, hc: HalvingConfig | None = None) -> list[Rung]:
    """The rungs of `schedule` for N candidates and a train split of n_train examples."""
    if schedule == "full":
        return [Rung(n_train, n)]
    if schedule != "halving":
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    hc = hc or HalvingConfig()
    floor = min(n, math.ceil(hc.keep * k_max))
    out, m, c = [], min(hc.first, n_train), n
    while True:
        out.append(Rung(m, c))
        if m >= n_train:
            return out
        c, m = max(min(c, floor), -(-c // hc.eta)), min(m * hc.eta, n_train)


def positions(columns: Sequence[Sequence[int]], m: int, n_train: int) -> list[int]:
    """The train positions a rung of m examples asks for: each task's first share m/n_train of its own
    examples (at least one), in split order; one task: the first m."""
    return sorted(p for col in columns for p in col[:max(1, len(col) * m // n_train)])


Score = Callable[[int, list[int]], object]    # (candidate, positions) -> its score on them (exact, comparable)


def asked(plan: Sequence[Rung], columns: Sequence[Sequence[int]], n_train: int) -> list[list[int]]:
    """Each rung's train positions (a prefix of the next rung's)."""
    return [positions(columns, rung.examples, n_train) for rung in plan]


def planned_answers(plan: Sequence[Rung], rung_positions: Sequence[Sequence[int]]) -> int:
    """How many train answers the schedule asks for: each rung's candidates on the examples new to it."""
    counts = [len(p) for p in rung_positions]
    return sum(r.candidates * (c - prev) for r, c, prev in zip(plan, counts, [0, *counts]))


def walk(plan: Sequence[Rung], rung_positions: Sequence[list[int]], score: Score,
         before: Callable[[int, list[int], list[int]], None] | None = None) -> list[list[int]]:
    """Run the schedule: per rung, `before(r, candidates, positions)` (the live run answers what is missing
    there and shares the rewards), then the rung's candidates ranked by `score` on the rung's positions
    (`asked`). Returns each rung's ranking."""
    current, history = list(range(plan[0].candidates)), []
    for r, pos in enumerate(rung_positions):
        if before:
            before(r, current, pos)
        ranked = select.ranking(current, [score(i, pos) for i in current])
        history.append(ranked)
        if r + 1 < len(plan):
            current = sorted(ranked[:plan[r + 1].candidates])
    return history


def final_order(history: Sequence[Sequence[int]]) -> list[int]:
    """Every candidate once: the last rung's ranking, then each earlier rung's eliminated, rung by rung back."""
    order, seen = [], set()
    for ranked in reversed(history):
        order += [i for i in ranked if i not in seen]
        seen.update(ranked)
    return order


def last_rungs(plan: Sequence[Rung], history: Sequence[Sequence[int]]) -> list[int]:
    """The last rung each candidate (by index) reached under the schedule: it answered that rung's examples."""
    last = [0] * plan[0].candidates
    for r, ranked in enumerate(history):
        for i in ranked:
            last[i] = r
    return last
