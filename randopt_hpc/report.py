"""Rank 0's last step: records -> the results.h5 tree (docs/results-schema.md), provenance, summary table."""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path

import numpy as np

from randopt_hpc import vote
from randopt_hpc.version import SCHEMA_VERSION, __version__


def _keys(rows) -> np.ndarray:
    """Voting keys as strings; '' means abstain (no valid answer)."""
    return np.array([[k if k is not None else "" for k in row] for row in rows], dtype=object)


def _texts(rows) -> np.ndarray:
    return np.array([[t if t is not None else "" for t in row] for row in rows], dtype=object)


def _ensemble(members: list[int], ks: list[int], test_recs: dict, pop_by_index: dict) -> tuple[dict, list]:
    """Members' answers and the vote for every K (a prefix of `members`), on test and on train."""
    test_keys = [test_recs[m]["keys"] for m in members]
    test_ok = [test_recs[m]["correct"] for m in members]
    train_keys = [pop_by_index[m]["keys"] for m in members]
    train_ok = [pop_by_index[m]["correct"] for m in members]
    voted_keys, voted_ok, acc, train_acc = [], [], [], []
    for k in ks:
        vk, vo = vote.vote(test_keys, test_ok, k)
        voted_keys.append(vk)
        voted_ok.append(vo)
        acc.append(vote.accuracy(vo))
        train_acc.append(vote.accuracy(vote.vote(train_keys, train_ok, k)[1]))
    group = {
        "members": np.array(members, dtype=np.int64),
        "test_key": _keys(test_keys),
        "test_correct": np.array(test_ok, dtype=bool),
        "test_reward": np.array([test_recs[m]["rewards"] for m in members], dtype=np.float32),
        "test_answer": _texts([test_recs[m]["answers"] for m in members]),
        "k": np.array(ks, dtype=np.int64),
        "voted_key": _keys(voted_keys),
        "voted_correct": np.array(voted_ok, dtype=bool),
        "accuracy": np.array(acc),
        "train_accuracy": np.array(train_acc),
    }
    if all(test_recs[m].get("texts") is not None for m in members):
        group["test_text"] = _texts([test_recs[m]["texts"] for m in members])
    return group, list(zip(ks, train_acc, acc))


def build_tree(cfg, train, test, base, population, order, selected, control, member_recs, timings):
    ks = sorted(cfg.selection.top_k)
    by_index = {r["index"]: r for r in population}
    assert [r["index"] for r in population] == list(range(cfg.population.size)), "population incomplete"
    pop = {
        "index": np.arange(len(population), dtype=np.int64),
        "seed": np.array([r["seed"] for r in population], dtype=np.int64),
        "sigma": np.array([r["sigma"] for r in population]),
        "train_score": np.array([r["score"] for r in population]),
        "train_accuracy": np.array([r["accuracy"] for r in population]),
        "train_reward": np.array([r["rewards"] for r in population], dtype=np.float32),
        "train_correct": np.array([r["correct"] for r in population], dtype=bool),
        "train_key": _keys([r["keys"] for r in population]),
        "rank": np.array([r["rank"] for r in population], dtype=np.int32),
        "seconds": np.array([r["seconds"] for r in population]),
    }
    if all(r.get("texts") is not None for r in population):
        pop["train_text"] = _texts([r["texts"] for r in population])
    base_group = {}
    for split in ("train", "test"):
        b = base[split]
        base_group.update({f"{split}_reward": np.array(b["rewards"], dtype=np.float32),
                           f"{split}_correct": np.array(b["correct"], dtype=bool),
                           f"{split}_key": _keys([b["keys"]])[0], f"{split}_answer": _texts([b["answers"]])[0],
                           f"{split}_text": _texts([b["texts"]])[0]})
    sel_group, sel_rows = _ensemble(selected, ks, member_recs, by_index)
    ensemble = {"selected": sel_group}
    ctrl_rows = []
    if control:
        ensemble["control"], ctrl_rows = _ensemble(control, ks, member_recs, by_index)
    tree = {
        "population": pop,
        "base": base_group,
        "selection": {"ranking": np.array(order, dtype=np.int64), "top_k": np.array(ks, dtype=np.int64)},
        "ensemble": ensemble,
        "data": {"task": np.array(cfg.task.name, dtype=object),
                 "train_ids": np.array([ex.id for ex in train], dtype=object),
                 "test_ids": np.array([ex.id for ex in test], dtype=object),
                 "train_prompt": np.array([ex.prompt for ex in train], dtype=object),
                 "test_prompt": np.array([ex.prompt for ex in test], dtype=object),
                 "train_target": np.array([ex.target for ex in train], dtype=np.float64),
                 "test_target": np.array([ex.target for ex in test], dtype=np.float64)},
        "timing": {name: np.array([t[name] for t in timings], dtype=object if name == "hostname" else None)
                   for name in timings[0]},
    }
    best = order[0]
    summary = [("base", None, float(np.mean(base["train"]["correct"])), float(np.mean(base["test"]["correct"]))),
               (f"best single (#{best})", None, float(by_index[best]["accuracy"]),
                float(np.mean(member_recs[best]["correct"])))]
    ctrl = dict((k, (tr, te)) for k, tr, te in ctrl_rows)
    for k, tr, te in sel_rows:
        summary.append((f"top-{k} vote", k, tr, te))
        if k in ctrl:
            summary.append((f"control-{k} vote (first {k} by index)", k, *ctrl[k]))
    return tree, summary


def summary_table(rows) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'model':<{width}}  {'train acc':>9}  {'test acc':>8}", "-" * (width + 21)]
    lines += [f"{name:<{width}}  {tr:>9.3f}  {te:>8.3f}" for name, _, tr, te in rows]
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


def provenance(cfg, comm, hostnames, config_yaml: str, fingerprint: str) -> dict:
    return {"schema_version": SCHEMA_VERSION, "package_version": __version__, "git_commit": _git_commit(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": config_yaml, "config_fingerprint": fingerprint, "world_size": comm.size,
            "hostnames": json.dumps(hostnames), "versions": json.dumps(_versions(comm)),
            "task": cfg.task.name, "population_size": cfg.population.size}
