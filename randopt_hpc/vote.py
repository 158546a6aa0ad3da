"""Majority vote of ensemble members' answers. Pure.

Per item: the most common non-empty voting key among the members; a tie goes to the key reached
first in member order (ranking order); an item with no valid key counts as wrong. The voted
answer's correctness is that of the first member holding the winning key, so the task decides
what "correct" means once, in its scorer.
"""
from __future__ import annotations

from collections.abc import Sequence
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


def vote(keys: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], k: int
         ) -> tuple[list[str | None], list[bool]]:
    """Vote the first k members (rows) on every item (column) -> (voted keys, voted correctness)."""
    if not 1 <= k <= len(keys):
        raise ValueError(f"K={k} but {len(keys)} members")
    n_items = len(keys[0])
    voted, ok = [], []
    for t in range(n_items):
        key, pos = vote_item([keys[m][t] for m in range(k)])
        voted.append(key)
        ok.append(bool(correct[pos][t]) if pos >= 0 else False)
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


def vote_ensemble(members: Sequence[int], ks: Sequence[int], test: dict, train: dict) -> EnsembleVote:
    """Vote `members` for every K in ks; `test` and `train` map a member to its answers on that split
    (anything with .keys and .correct per item, e.g. randopt_hpc.records.Answers)."""
    test_keys, test_ok = [test[m].keys for m in members], [test[m].correct for m in members]
    train_keys, train_ok = [train[m].keys for m in members], [train[m].correct for m in members]
    voted = [vote(test_keys, test_ok, k) for k in ks]
    return EnsembleVote(members=list(members), ks=list(ks), voted_keys=[v[0] for v in voted],
                        voted_correct=[v[1] for v in voted], accuracy=[accuracy(v[1]) for v in voted],
                        train_accuracy=[accuracy(vote(train_keys, train_ok, k)[1]) for k in ks])
