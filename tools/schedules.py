"""`analyze halving`: replay a selection schedule on a run's stored per-example train rewards.

A candidate's reward on a train example does not depend on the schedule that asked for it, so a full run's
rewards replay any schedule exactly as a live run would rank it (randopt_hpc.halving.walk, the code the run
uses): the survivors, the final top K, and the train examples and generated tokens it would have cost.
"""
from __future__ import annotations

import numpy as np

from randopt_hpc import halving, vote
from randopt_hpc.summary import GROUPS
from randopt_hpc.tasks.multi import Objective
from tools import runfile
from tools.runfile import ResultsError


def _objective(f) -> Objective:
    names = runfile.task_names(f)
    tags = runfile.strings(f, "data/train_task") if "data/train_task" in f else None
    n_train = f["population/train_reward"].shape[1]
    cols = (tuple(range(n_train)),) if len(names) == 1 else \
        tuple(tuple(i for i in range(n_train) if tags[i] == name) for name in names)
    return Objective(tuple(names), cols, (runfile.config(f).get("selection") or {}).get("task"))


def halving_config(stored: dict, **given) -> halving.HalvingConfig:
    """The schedule's parameters: those given, else the run's own (selection.halving), else the defaults."""
    fields = {k: v for k, v in stored.items() if k in ("first", "eta", "keep")}
    fields.update({k: v for k, v in given.items() if v is not None})
    hc = halving.HalvingConfig(**fields)
    try:
        hc.validate()
    except ValueError as e:
        raise ResultsError(str(e)) from None
    return hc


def replay(f, path: str, schedule: str, hc: halving.HalvingConfig, ks: list[int] | None) -> dict:
    rewards = f["population/train_reward"][()]
    stored = {k: a for k, (a, _) in runfile.stored_votes(f, "selected").items()}
    n, n_train = rewards.shape
    stored_order = [int(i) for i in f["selection/ranking"][()]]
    ks = ks or [int(k) for k in f["selection/top_k"][()]]
    if max(ks) > n:
        raise ResultsError(f"{path}: K={max(ks)} but the file holds {n} candidates")
    objective = _objective(f)
    seen = ~np.isnan(rewards)
    plan = halving.rungs(schedule, n, n_train, max(ks), hc)
    on = {}

    def score(i: int, pos: list[int]):
        if not seen[i, pos].all():
            j = pos[int(np.argmin(seen[i, pos]))]
            raise ResultsError(f"{path}: candidate {i} never answered train example {j} (a halving run): this "
                               "schedule asks for more than the run computed")
        if len(pos) not in on:
            on[len(pos)] = objective.on(pos)
        return on[len(pos)].exact(rewards[i].tolist())

    asked = halving.asked(plan, objective.columns, n_train)
    history = halving.walk(plan, asked, score)
    order = halving.final_order(history)
    last = halving.last_rungs(plan, history)
    count = [len(asked[r]) for r in last]
    tokens = f["population/train_gen_tokens"][()] if "population/train_gen_tokens" in f else None
    out = {"path": path, "title": runfile.title(f, path), "schedule": schedule,
           "halving": {"first": hc.first, "eta": hc.eta, "keep": hc.keep} if schedule == "halving" else None,
           "rungs": [{"examples": len(pos), "candidates": r.candidates} for r, pos in zip(plan, asked)],
           "examples": int(sum(count)), "examples_full": n * n_train,
           "top": [{"k": k, "overlap": len(set(order[:k]) & set(stored_order[:k])), "members": order[:k]}
                   for k in sorted(ks)]}
    out["examples_saved"] = out["examples_full"] / out["examples"]
    answers = _test_answers(f)
    for t in out["top"]:   # the replayed top K's vote, where the file holds its members' test answers (a scan)
        members = t["members"]
        if all(m in answers for m in members):
            keys, ok = [answers[m][0] for m in members], [answers[m][1] for m in members]
            t["vote"] = vote.accuracy(vote.vote(keys, ok, len(members))[1])
            t["file_vote"] = stored.get(t["k"])
    if tokens is not None and (tokens >= 0).all():
        mask = np.zeros_like(seen)
        for i, r in enumerate(last):
            mask[i, asked[r]] = True
        out["tokens"], out["tokens_full"] = int(tokens[mask].sum()), int(tokens[seen].sum())
    return out


def _test_answers(f) -> dict:
    """Every stored member's (test keys, verdicts on them), by candidate index."""
    out = {}
    for group in GROUPS:
        m = runfile.members(f, group)
        if m is not None:
            for i, keys, ok in zip(m[0].tolist(), m[1], runfile.key_verdicts(f, group)):
                out.setdefault(i, (keys, ok.tolist()))
    return out


def render(d: dict) -> str:
    hc = d["halving"]
    head = f"schedule {d['schedule']}" + (f" (first {hc['first']}, eta {hc['eta']}, keep {hc['keep']:g})" if hc else "")
    lines = [d["title"], head,
             "rungs: " + " -> ".join(f"{r['candidates']} on {r['examples']}" for r in d["rungs"]),
             f"train examples answered: {d['examples']:,} of {d['examples_full']:,} "
             f"({d['examples_saved']:.2f}x fewer)"]
    if "tokens" in d:
        lines.append(f"generated train tokens: {d['tokens']:,} of the file's {d['tokens_full']:,} "
                     f"({d['tokens_full'] / max(d['tokens'], 1):.2f}x fewer)")
    for t in d["top"]:
        line = f"top-{t['k']}: {t['overlap']} of {t['k']} also in the file's top-{t['k']}"
        if "vote" in t:
            line += f"; test accuracy of its vote {t['vote']:.3f}" + \
                (f" (the file's top-{t['k']}: {t['file_vote']:.3f})" if t["file_vote"] is not None else "")
        if "live_equal" in t:
            line += "; the live run's top-{}: {}".format(t["k"], "the same" if t["live_equal"] else "DIFFERENT")
        lines.append(line + "; members " + " ".join(map(str, t["members"])))
    return "\n".join(lines)
