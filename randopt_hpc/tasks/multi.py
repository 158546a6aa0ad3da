"""Several tasks scored on one population: their splits concatenated, each example tagged with its task.

Every candidate answers every task's train examples in one generation call (one batch, one perturbation),
and the scores per task come from slicing its rewards. Selection ranks by one named task's mean reward,
or by the mean over tasks of each task's mean reward (each task weighs the same, whatever its size).
Pure: the tasks do their own scoring; this module only routes and averages.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from fractions import Fraction

from randopt_hpc.records import mean
from randopt_hpc.tasks.base import Example, Scored, score_all


def tagged(examples: Sequence[Example], task: str) -> list[Example]:
    """The examples of one task among several: tagged, and their ids prefixed so they stay unique."""
    return [dataclasses.replace(ex, task=task, id=f"{task}/{ex.id}") for ex in examples]


class MultiTask:
    """A Task over several tasks: each example is scored by the task it is tagged with."""
    name = "multi"

    def __init__(self, tasks: dict):
        self.tasks = dict(tasks)

    def score(self, completion: str, example: Example) -> Scored:
        return self.tasks[example.task].score(completion, example)

    def score_many(self, completions: Sequence[str], examples: Sequence[Example]) -> list[Scored]:
        """Each task scores its own examples in one call (a code task's pool takes all of them at once)."""
        out: list = [None] * len(examples)
        for name, task in self.tasks.items():
            at = [i for i, ex in enumerate(examples) if ex.task == name]
            for i, s in zip(at, score_all(task, [completions[i] for i in at], [examples[i] for i in at])):
                out[i] = s
        return out

    def key_correct(self, key: str, example: Example) -> bool | None:
        judge = getattr(self.tasks[example.task], "key_correct", None)
        return None if judge is None else judge(key, example)


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a candidate is ranked by, from its per-example train rewards."""
    names: tuple[str, ...]                  # the tasks, in config order
    columns: tuple[tuple[int, ...], ...]    # each task's positions in the train split
    task: str | None = None                 # rank by this task; None: the mean over tasks

    @staticmethod
    def of(train: Sequence[Example], names: Sequence[str], task: str | None = None) -> Objective:
        if len(names) == 1:   # one task: its examples need no tag
            return Objective(tuple(names), (tuple(range(len(train))),), task)
        cols = tuple(tuple(i for i, ex in enumerate(train) if ex.task == n) for n in names)
        return Objective(tuple(names), cols, task)

    def on(self, positions: Sequence[int]) -> Objective:
        """The same objective on a subset of the train positions (a halving rung's)."""
        keep = set(positions)
        return Objective(self.names, tuple(tuple(p for p in col if p in keep) for col in self.columns), self.task)

    def by_task(self, rewards: Sequence[float]) -> list[float]:
        """The mean reward on each task's train examples."""
        return [mean([rewards[i] for i in col]) for col in self.columns]

    def __call__(self, rewards: Sequence[float]) -> float:
        return float(self.exact(rewards))

    def exact(self, rewards: Sequence[float]) -> Fraction:
        """The score as an exact rational: each reward is a decimal with at most REWARD_DIGITS digits (0.1 for
        a format bonus, 0.12 for a ROCStories position), so it is read back as an integer count of
        10^-REWARD_DIGITS, and sums of integers do not depend on their order as float sums do."""
        per_task = [Fraction(sum(units(rewards[i]) for i in col), len(col) * UNIT) for col in self.columns]
        if self.task is not None:
            return per_task[self.names.index(self.task)]
        return per_task[0] if len(per_task) == 1 else sum(per_task) / len(per_task)


REWARD_DIGITS = 6
UNIT = 10 ** REWARD_DIGITS


def units(reward: float) -> int:
    """A reward as an integer count of 10^-6 (rewards are short decimals held as floats)."""
    return round(reward * UNIT)
