"""Rank 0's last step: records and votes -> the results.h5 tree (docs/results-schema.md), provenance, summary.

The tree builder only serialises: the vote is randopt_hpc.vote.vote_ensemble, called by run().
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path

import numpy as np

from randopt_hpc import vote
from randopt_hpc.records import spread
from randopt_hpc.sampling import FINISH
from randopt_hpc.summary import GROUPS
from randopt_hpc.version import SCHEMA_VERSION, __version__


def _keys(rows) -> np.ndarray:
    """Voting keys as strings; '' means abstain (no valid answer)."""
    return np.array([[k if k is not None else "" for k in row] for row in rows], dtype=object)


def _texts(rows) -> np.ndarray:
    return np.array([[t if t is not None else "" for t in row] for row in rows], dtype=object)


def _gen_tokens(rows) -> np.ndarray:
    """Generated tokens per model and example; -1 where a record predates token accounting."""
    return np.array([a.gen_tokens if a.gen_tokens is not None else [-1] * len(a.rewards) for a in rows],
                    dtype=np.int32)


def _finish(rows) -> np.ndarray:
    """Finish reasons as codes into FINISH (data/finish_reasons); -1 where a record predates them."""
    code = {f: i for i, f in enumerate(FINISH)}
    return np.array([[code.get(f, -1) for f in a.finish] if a.finish is not None else [-1] * len(a.rewards)
                     for a in rows],
                    dtype=np.int8)


def settings_of(a) -> str:
    """The settings an answer set was produced under, as one string ('' for a record from before they were
    recorded); data/settings lists the distinct ones and each `settings` dataset points into it."""
    return "" if a.settings is None else " ".join(f"{k}={v}" for k, v in a.settings)


def _settings(rows, table: dict) -> np.ndarray:
    return np.array([table.setdefault(settings_of(a), len(table)) for a in rows], dtype=np.int16)


def _ensemble(v: vote.EnsembleVote, answers: dict) -> dict:
    """One ensemble group: its members' test answers and its vote for every K."""
    rows = [answers[m] for m in v.members]
    group = {
        "members": np.array(v.members, dtype=np.int64),
        "test_key": _keys([a.keys for a in rows]),
        "test_correct": np.array([a.correct for a in rows], dtype=bool),
        "test_key_correct": np.array(v.key_correct, dtype=bool),
        "test_reward": np.array([a.rewards for a in rows], dtype=np.float32),
        "test_answer": _texts([a.answers for a in rows]),
        "test_gen_tokens": _gen_tokens(rows),
        "test_finish": _finish(rows),
        "k": np.array(v.ks, dtype=np.int64),
        "voted_key": _keys(v.voted_keys),
        "voted_correct": np.array(v.voted_correct, dtype=bool),
        "accuracy": np.array(v.accuracy),
        "train_accuracy": np.array(v.train_accuracy),
    }
    if all(a.texts is not None for a in rows):
        group["test_text"] = _texts([a.texts for a in rows])
    return group


def _by_task(flags, examples, names) -> list[float]:
    """Accuracy of per-example flags on each task's examples (one task: all of them)."""
    return [vote.accuracy([f for f, ex in zip(flags, examples) if len(names) == 1 or ex.task == n]) for n in names]


def build_tree(cfg, train, test, base: dict, population: list, order: list, votes: dict, member_answers: dict,
               samples: list, timings: list, objective, judge=None, jobs: list = ()) -> dict:
    """The results.h5 tree (docs/results-schema.md): base = {split: Answers}, population = every
    CandidateRecord, votes = {group name: EnsembleVote} (randopt_hpc.run.ensembles), samples = the base
    model's sampled test Answers in sample order, objective = the ranking's score
    (randopt_hpc.tasks.multi.Objective), judge = the task's verdict on a test key (vote.judge_with), jobs = the
    base, member and sample records in the order they were added (randopt_hpc.records.Done.jobs)."""
    if [r.index for r in population] != list(range(cfg.population.size)):
        raise ValueError(f"population incomplete: {len(population)} of {cfg.population.size} candidates")
    # A candidate a halving schedule dropped answered part of the split: the rest is marked, its score its own.
    laid = [spread(r.answers, [ex.id for ex in train]) for r in population]
    answers = [a for a, _ in laid]
    seen = [[p for p, flag in enumerate(flags) if flag] for _, flags in laid]
    on = [objective if len(p) == len(train) else objective.on(p) for p in seen]
    names = list(objective.names)
    pop = {
        "index": np.arange(len(population), dtype=np.int64),
        "seed": np.array([r.seed for r in population], dtype=np.int64),
        "sigma": np.array([r.sigma for r in population]),
        "train_score": np.array([o(a.rewards) for o, a in zip(on, answers)]),
        "train_score_by_task": np.array([o.by_task(a.rewards) for o, a in zip(on, answers)], dtype=np.float64),
        "train_accuracy": np.array([r.answers.accuracy for r in population]),
        "train_examples": np.array([len(p) for p in seen], dtype=np.int32),
        "train_reward": np.array([a.rewards for a in answers], dtype=np.float32),
        "train_correct": np.array([a.correct for a in answers], dtype=bool),
        "train_key": _keys([a.keys for a in answers]),
        "train_gen_tokens": _gen_tokens(answers),
        "train_finish": _finish(answers),
        "rank": np.array([r.rank for r in population], dtype=np.int32),
        "seconds": np.array([r.seconds for r in population]),
    }
    if all(a.texts is not None for a in answers):
        pop["train_text"] = _texts([a.texts for a in answers])
    table: dict = {}   # settings string -> code, in first-seen order
    pop["settings"] = _settings(answers, table)
    base_group = {"settings": _settings([base["train"], base["test"]], table)}
    for split in ("train", "test"):
        b = base[split]
        base_group[f"{split}_accuracy_by_task"] = np.array(_by_task(b.correct, train if split == "train" else test,
                                                                    names))
        base_group.update({f"{split}_reward": np.array(b.rewards, dtype=np.float32),
                           f"{split}_correct": np.array(b.correct, dtype=bool),
                           f"{split}_key": _keys([b.keys])[0], f"{split}_answer": _texts([b.answers])[0],
                           f"{split}_text": _texts([b.texts])[0], f"{split}_gen_tokens": _gen_tokens([b])[0],
                           f"{split}_finish": _finish([b])[0]})
    if samples:
        keys = [a.keys for a in samples]
        base_group.update({"test_samples_key": _keys(keys),
                           "test_samples_correct": np.array([a.correct for a in samples], dtype=bool),
                           "test_samples_key_correct": np.array(vote.key_verdicts(keys, [a.correct for a in samples],
                                                                                  judge), dtype=bool),
                           "test_samples_reward": np.array([a.rewards for a in samples], dtype=np.float32),
                           "test_samples_gen_tokens": _gen_tokens(samples), "test_samples_finish": _finish(samples),
                           "test_samples_settings": _settings(samples, table)})
    ensemble = {name: {**_ensemble(v, member_answers), "settings": _settings([member_answers[m] for m in v.members],
                                                                             table),
                       "accuracy_by_task": np.array([_by_task(c, test, names) for c in v.voted_correct])}
                for name, v in votes.items()}
    return {
        "population": pop,
        "base": base_group,
        "selection": {"ranking": np.array(order, dtype=np.int64),
                      "top_k": np.array(sorted(cfg.selection.top_k), dtype=np.int64)},
        "ensemble": ensemble,
        "data": {"task": np.array(cfg.task.name if len(names) == 1 else "+".join(names), dtype=object),
                 "task_names": np.array(names, dtype=object),
                 "train_task": np.array([ex.task or names[0] for ex in train], dtype=object),
                 "test_task": np.array([ex.task or names[0] for ex in test], dtype=object),
                 "train_truth": np.array([json.dumps(ex.truth, default=str) for ex in train], dtype=object),
                 "test_truth": np.array([json.dumps(ex.truth, default=str) for ex in test], dtype=object),
                 "train_ids": np.array([ex.id for ex in train], dtype=object),
                 "test_ids": np.array([ex.id for ex in test], dtype=object),
                 "train_prompt": np.array([ex.prompt for ex in train], dtype=object),
                 "test_prompt": np.array([ex.prompt for ex in test], dtype=object),
                 "train_prompt_tokens": _prompt_tokens(base["train"]),
                 "test_prompt_tokens": _prompt_tokens(base["test"]),
                 "finish_reasons": np.array(FINISH, dtype=object),
                 "settings": np.array(list(table), dtype=object),
                 "train_target": np.array([ex.target for ex in train], dtype=np.float64),
                 "test_target": np.array([ex.target for ex in test], dtype=np.float64)},
        "timing": {name: np.array([t[name] for t in timings], dtype=object if name == "hostname" else None)
                   for name in timings[0]},
        "jobs": job_table(jobs),
    }


def job_table(jobs: list) -> dict:
    """One row per answered base, member or sample record (a member's test split may be answered in parts, by
    several ranks): what a replay of the run's schedule needs (tools.analyze scale)."""
    def tokens(a):
        return -1 if a.gen_tokens is None else int(sum(a.gen_tokens))

    return {"kind": np.array([r.kind for r in jobs], dtype=object),
            "key": np.array([str(r.key) for r in jobs], dtype=object),
            "prompts": np.array([len(r.answers.rewards) for r in jobs], dtype=np.int32),
            "rank": np.array([r.rank for r in jobs], dtype=np.int32),
            "seconds": np.array([r.seconds for r in jobs], dtype=np.float64),
            "gen_tokens": np.array([tokens(r.answers) for r in jobs], dtype=np.int64),
            "length_cut": np.array([-1 if r.answers.finish is None else r.answers.finish.count("length")
                                    for r in jobs], dtype=np.int32)}


def _prompt_tokens(answers) -> np.ndarray:
    """Prompt tokens per example: the same for every model of a run (one tokenizer, one prompt)."""
    return np.array(answers.prompt_tokens if answers.prompt_tokens is not None else [-1] * len(answers.rewards),
                    dtype=np.int32)


def task_table(names: list, base_by_task: list, votes: dict, test) -> str:
    """Several tasks: test accuracy on each task, for the base model and every vote."""
    rows = [("base", base_by_task)]
    for name, v in votes.items():
        rows += [(GROUPS[name].format(k=k) + " vote", _by_task(c, test, names)) for k, c in zip(v.ks, v.voted_correct)]
    width = max(len(r[0]) for r in rows)
    cols = [max(len(n), 5) for n in names]
    lines = [f"{'test accuracy':<{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cols)),
             "-" * (width + 2 + sum(cols) + 2 * (len(cols) - 1))]
    lines += [f"{label:<{width}}  " + "  ".join(f"{a:>{w}.3f}" for a, w in zip(accs, cols)) for label, accs in rows]
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions(comm) -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "mpi": comm.mpi_version}
    for pkg in ("torch", "transformers", "numpy", "h5py", "mpi4py", "numba", "vllm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def provenance(cfg, comm, hostnames: list, parameters: int) -> dict:
    from randopt_hpc.config import to_yaml
    from randopt_hpc.fingerprint import fingerprint_hash

    return {"schema_version": SCHEMA_VERSION, "package_version": __version__, "git_commit": _git_commit(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": to_yaml(cfg), "config_fingerprint": fingerprint_hash(cfg), "world_size": comm.size,
            "hostnames": json.dumps(hostnames), "versions": json.dumps(_versions(comm)),
            "task": cfg.task.name, "population_size": cfg.population.size, "model_parameters": int(parameters)}
