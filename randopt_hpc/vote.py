"""Majority vote of ensemble members' answers. Pure.

Per item: the most common non-empty voting key among the members; a tie goes to the key reached
first in member order (ranking order); an item with no valid key counts as wrong. The voted
answer's correctness is the task's verdict on the key when it judges keys (key_correct: the reference
judges a voted answer by its value, not by the first answer that gave it), else that of the first
member holding the winning key, so the task decides what "correct" means once, in its scorer.

A task whose answers are numbers to average rather than choices to count (the 1-D toy's rollouts) has
`combine(keys) -> key`: the ensemble's answer is then that combination of the members' keys (the paper's
regression vote: the mean), judged by the task's key_correct.
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


Judge = Callable[[int, str], "bool | None"]   # (item, key) -> the task's verdict on the key; None: no verdict


Combine = Callable[[list], "str | None"]   # a task's combination of the members' keys on one item


def vote(keys: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], k: int,
         combine: Combine | None = None, judge: Judge | None = None) -> tuple[list[str | None], list[bool]]:
    """Vote the first k members (rows) on every item (column) -> (voted keys, voted correctness); with
    `combine`, the item's answer is combine(its k keys), correct when `judge` says so."""
    if not 1 <= k <= len(keys):
        raise ValueError(f"K={k} but {len(keys)} members")
    n_items = len(keys[0])
    voted, ok = [], []
    for t in range(n_items):
        column = [keys[m][t] for m in range(k)]
        if combine is not None:
            key = combine(column)
            voted.append(key)
            ok.append(bool(judge(t, key)) if key is not None and judge is not None else False)
            continue
        key, pos = vote_item(column)
        voted.append(key)
        ok.append(bool(correct[pos][t]) if pos >= 0 else False)
    return voted, ok


def key_verdicts(keys: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], judge: Judge | None
                 ) -> list[list[bool]]:
    """Per member and item, whether its key is right: the task's verdict on the key where it gives one (the
    reference judges a voted answer by itself, e.g. Countdown by its value), else the answer's own
    correctness. One key on one item gets one verdict, so a vote's correctness is its key's."""
    if judge is None:
        return [[bool(c) for c in row] for row in correct]
    out = []
    for row_keys, row_ok in zip(keys, correct):
        row = []
        for t, (key, ok) in enumerate(zip(row_keys, row_ok)):
            verdict = judge(t, key) if key else None
            row.append(bool(ok) if verdict is None else bool(verdict))
        out.append(row)
    return out


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
    key_correct: list[list[bool]]           # per member, per test item: the verdict on its key (key_verdicts)


def vote_ensemble(members: Sequence[int], ks: Sequence[int], test: dict, train: dict,
                  judges: tuple[Judge | None, Judge | None] = (None, None), train_seen: dict | None = None,
                  combine: Combine | None = None) -> EnsembleVote:
    """Vote `members` for every K in ks; `test` and `train` map a member to its answers on that split
    (anything with .keys and .correct per item, e.g. randopt_hpc.records.Answers); `judges` give the task's
    verdict on a key on the test and on the train split; `train_seen` (member -> a flag per train item) the
    train items a member answered, when a halving schedule dropped some: a K's train accuracy is then on the
    items all its members answered (NaN if none); `combine` the task's combination of keys, if it has one."""
    test_keys, train_keys = [test[m].keys for m in members], [train[m].keys for m in members]
    test_ok = key_verdicts(test_keys, [test[m].correct for m in members], judges[0])
    train_ok = key_verdicts(train_keys, [train[m].correct for m in members], judges[1])
    voted = [vote(test_keys, test_ok, k, combine, judges[0]) for k in ks]

    def on_train(k: int) -> float:
        cols = range(len(train_keys[0]))
        if train_seen is not None:
            cols = [t for t in cols if all(train_seen[m][t] for m in members[:k])]
        pick = lambda rows: [[row[t] for t in cols] for row in rows[:k]]  # noqa: E731
        judge = judges[1] if train_seen is None or judges[1] is None else (lambda i, key: judges[1](cols[i], key))
        return accuracy(vote(pick(train_keys), pick(train_ok), k, combine, judge)[1]) if cols else float("nan")
    return EnsembleVote(members=list(members), ks=list(ks), voted_keys=[v[0] for v in voted],
                        voted_correct=[v[1] for v in voted], accuracy=[accuracy(v[1]) for v in voted],
                        train_accuracy=[on_train(k) for k in ks], key_correct=test_ok)


def judge_with(task, examples) -> Judge | None:
    """The task's own verdict on a voted key for these examples, when it has one (key_correct)."""
    key_correct = getattr(task, "key_correct", None)
    if key_correct is None:
        return None
    return lambda t, key: key_correct(key, examples[t])
