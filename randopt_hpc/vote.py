"""Majority vote of ensemble members' answers. Pure.

Per item: the most common non-empty voting key among the members; a tie goes to the key reached
first in member order (ranking order); an item with no valid key counts as wrong. The voted
answer's correctness is the task's verdict on the key when it judges keys (key_correct: the reference
judges a voted answer by its value, not by the first answer that gave it), else that of the first
member holding the winning key, so the task decides what "correct" means once, in its scorer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


def vote_item(keys: Sequence[str | None]) -> tuple[str | None, int]:
    """(winning key, position of the first member that gave it); (None, -1) when all abstain."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for pos, k in enumerate(keys):
        if k is None or k == "":
            continue
        counts[k] = counts.get(k, 0) + 1
        first.setdefault(k, pos)
    if not counts:
        return None, -1
    best = max(counts, key=lambda k: (counts[k], -first[k]))
    return best, first[best]


Judge = Callable[[int, str], "bool | None"]   # (item, voted key) -> its correctness; None: the first holder's


def vote(keys: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], k: int, judge: Judge | None = None
         ) -> tuple[list[str | None], list[bool]]:
    """Vote the first k members (rows) on every item (column) -> (voted keys, voted correctness). A task
    that judges a voted key by itself (the reference's is_voted_answer_correct) passes `judge`."""
    if not 1 <= k <= len(keys):
        raise ValueError(f"K={k} but {len(keys)} members")
    n_items = len(keys[0])
    voted, ok = [], []
    for t in range(n_items):
        key, pos = vote_item([keys[m][t] for m in range(k)])
        voted.append(key)
        verdict = judge(t, key) if judge is not None and pos >= 0 else None
        ok.append(bool(verdict) if verdict is not None else bool(correct[pos][t]) if pos >= 0 else False)
    return voted, ok


def accuracy(flags: Sequence[bool]) -> float:
    return float(sum(bool(f) for f in flags)) / len(flags) if len(flags) else float("nan")


@dataclass(frozen=True)
class EnsembleVote:
    """An ensemble's vote for every K: each K votes the first K members (a prefix of `members`)."""
    members: list[int]                      # candidate indices, in vote order
    ks: list[int]
    voted_keys: list[list[str | None]]      # per K, per test item
    voted_correct: list[list[bool]]
    accuracy: list[float]                   # per K: test accuracy of the vote
    train_accuracy: list[float]             # per K: the same members voted on the train split


def vote_ensemble(members: Sequence[int], ks: Sequence[int], test: dict, train: dict,
                  judges: tuple[Judge | None, Judge | None] = (None, None)) -> EnsembleVote:
    """Vote `members` for every K in ks; `test` and `train` map a member to its answers on that split
    (anything with .keys and .correct per item, e.g. randopt_hpc.records.Answers); `judges` judge a voted
    key on the test and on the train split."""
    test_keys, test_ok = [test[m].keys for m in members], [test[m].correct for m in members]
    train_keys, train_ok = [train[m].keys for m in members], [train[m].correct for m in members]
    voted = [vote(test_keys, test_ok, k, judges[0]) for k in ks]
    return EnsembleVote(members=list(members), ks=list(ks), voted_keys=[v[0] for v in voted],
                        voted_correct=[v[1] for v in voted], accuracy=[accuracy(v[1]) for v in voted],
                        train_accuracy=[accuracy(vote(train_keys, train_ok, k, judges[1])[1]) for k in ks])


def judge_with(task, examples) -> Judge | None:
    """The task's own verdict on a voted key for these examples, when it has one (key_correct)."""
    key_correct = getattr(task, "key_correct", None)
    if key_correct is None:
        return None
    return lambda t, key: key_correct(key, examples[t])
