"""Reading results.h5 for the offline tools: open-and-check, and the few derived arrays every command needs.

Layout: docs/results-schema.md. The schema check is randopt_hpc.results.check_schema, so the tools
accept exactly the versions the package writes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from randopt_hpc import results
from tools import metrics

# What every command may read without asking; ensemble/control is optional (selection.control: false).
REQUIRED = ("population/seed", "population/sigma", "population/train_score", "population/train_accuracy",
            "population/train_reward", "base/train_reward", "base/train_correct", "base/test_correct",
            "selection/ranking", "selection/top_k", "ensemble/selected/members", "ensemble/selected/test_key",
            "ensemble/selected/test_correct", "ensemble/selected/k", "ensemble/selected/voted_correct",
            "ensemble/selected/accuracy")


class ResultsError(Exception):
    """A file the tools cannot read: missing, not HDF5, not a results file, or an unknown schema."""


# What every command may read of an ES run's file (algorithm: es; randopt_hpc.es_results).
ES_REQUIRED = ("population/seed", "population/train_gen_tokens", "es/train_tokens", "es/eval_iteration",
               "es/test_accuracy", "es/theta_sha256")


@contextmanager
def open_results(path: str, algorithms: tuple[str, ...] = ("randopt",)) -> Iterator[Any]:
    """The open file, checked: schema, the algorithm the command reads (ES runs: only `analyze es`), and the
    datasets every command may read."""
    import h5py

    if not os.path.exists(path):
        raise ResultsError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ResultsError(f"{path}: is a directory (give the results.h5 inside it)")
    if not h5py.is_hdf5(path):
        raise ResultsError(f"{path}: not an HDF5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ResultsError(f"{path}: cannot open: {e}") from None
    with f:
        if "schema_version" not in f.attrs:
            raise ResultsError(f"{path}: not a RandOpt results file (no schema_version attribute)")
        try:
            results.check_schema(f, path)
        except ValueError as e:
            raise ResultsError(str(e)) from None
        algorithm = str(f.attrs.get("algorithm", "randopt"))
        if algorithm not in algorithms:
            raise ResultsError(f"{path}: a run of algorithm {algorithm}; " + (
                "`python -m tools.analyze es` compares it with RandOpt runs" if algorithm == "es" else
                f"this command reads {', '.join(algorithms)} runs"))
        missing = [name for name in (ES_REQUIRED if algorithm == "es" else REQUIRED) if name not in f]
        if missing:
            raise ResultsError(f"{path}: incomplete results file, missing {', '.join(missing[:3])}"
                               + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        try:
            yield f
        except KeyError as e:
            # h5py's KeyError text names the object; a file without it is truncated or hand-made wrong.
            raise ResultsError(f"{path}: missing in the file: {e.args[0] if e.args else e}") from None


def strings(f, name: str) -> np.ndarray:
    """A string dataset as an array of str (h5py hands back bytes)."""
    ds = f[name]
    data = ds.asstr()[()] if ds.dtype.kind in "OS" else ds[()]
    return np.asarray(data, dtype=object) if isinstance(data, np.ndarray) else data


def config(f) -> dict:
    import yaml

    return yaml.safe_load(f.attrs.get("config", "")) or {}


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {'population.size': '128', ...}; lists as JSON so that they compare as values."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(tree) if isinstance(tree, (list, type(None), bool)) else str(tree)}


def task(f) -> str:
    if "data/task" in f:
        t = strings(f, "data/task")
        return t.decode() if isinstance(t, bytes) else str(t)
    return str(f.attrs.get("task", "?"))


def task_names(f) -> list[str]:
    """The tasks a run scored its population on, in config order (files before multi-task runs: one)."""
    if "data/task_names" in f:
        return [t.decode() if isinstance(t, bytes) else str(t) for t in strings(f, "data/task_names")]
    return [task(f)]


def run_name(f, path: str) -> str:
    """The run's output folder name (from its config), else the folder holding the file."""
    out = (config(f).get("output") or {}).get("dir")
    return os.path.basename(os.path.normpath(out)) if out else os.path.basename(os.path.dirname(os.path.abspath(path)))


def model_name(f) -> str:
    """The model folder's name (model.path's last part), '?' when the config does not say."""
    path = (config(f).get("model") or {}).get("path")
    return os.path.basename(os.path.normpath(str(path))) if path else "?"


def sigmas(f) -> list[float]:
    """The run's σ values: population.sigmas as configured, else the distinct values in population/sigma."""
    configured = (config(f).get("population") or {}).get("sigmas")
    if isinstance(configured, list) and configured:
        return [float(s) for s in configured]
    return sorted(float(s) for s in np.unique(f["population/sigma"][()]))


def sigma_text(values) -> str:
    return ", ".join(f"{float(s):g}" for s in values)


def population_seed(f):
    return (config(f).get("population") or {}).get("seed")


def title(f, path: str) -> str:
    """Model, task, N, σ, population seed and the run's folder: what a figure or table is of."""
    seed = population_seed(f)
    return (f"model {model_name(f)} · {task(f)} · N={f['population/train_score'].shape[0]} · σ {sigma_text(sigmas(f))}"
            + (f" · seed {seed}" if seed is not None else "") + f" · run {run_name(f, path)}")


def require_full_train(f, path: str, what: str) -> None:
    """One line for a run whose candidates answered different train examples (selection.schedule: halving):
    `what` compares candidates on the train split, which only a full run's candidates all answered."""
    if "population/train_examples" in f:
        seen, m = f["population/train_examples"][()], f["population/train_reward"].shape[1]
        if (seen < m).any():
            raise ResultsError(f"{path}: a halving run ({int((seen < m).sum())} of {len(seen)} candidates answered "
                               f"only part of the {m} train examples): {what} needs a run with "
                               "selection.schedule: full")


def train_scores(f, path: str = "") -> tuple[np.ndarray, float]:
    """(candidate scores, base score), both the mean train reward computed the same way (metrics.mean_scores)."""
    require_full_train(f, path or "results file", "comparing candidates' train scores")
    pop = metrics.mean_scores(f["population/train_reward"][()])
    base = float(metrics.mean_scores(f["base/train_reward"][()]))
    return pop, base


def members(f, which: str) -> tuple[np.ndarray, list[list[str]], np.ndarray] | None:
    """(member indices, K×T voting keys, K×T correctness) of ensemble/<which>, or None when not stored."""
    g = f"ensemble/{which}"
    if g not in f:
        return None
    keys = [list(row) for row in strings(f, f"{g}/test_key")]
    return f[f"{g}/members"][()], keys, f[f"{g}/test_correct"][()].astype(bool)


def key_verdicts(f, which: str) -> np.ndarray | None:
    """K×T: whether each member's key on each test item is right, as the vote judged it (test_key_correct;
    files written before it existed: the members' own correctness, which the vote then used)."""
    g = f"ensemble/{which}"
    if g not in f:
        return None
    name = f"{g}/test_key_correct" if f"{g}/test_key_correct" in f else f"{g}/test_correct"
    return f[name][()].astype(bool)


def stored_votes(f, which: str) -> dict[int, tuple[float, np.ndarray]]:
    """{k: (stored test accuracy, stored voted correctness)} of ensemble/<which>."""
    g = f"ensemble/{which}"
    if g not in f:
        return {}
    ks, acc, ok = f[f"{g}/k"][()], f[f"{g}/accuracy"][()], f[f"{g}/voted_correct"][()]
    return {int(k): (float(a), o.astype(bool)) for k, a, o in zip(ks, acc, ok)}


def same_population(a: dict, b: dict) -> str | None:
    """Why two files' populations differ (seeds, sigmas, size), or None when they are the same candidates."""
    if len(a["seed"]) != len(b["seed"]):
        return f"population size {len(a['seed'])} vs {len(b['seed'])}"
    for name in ("seed", "sigma"):
        diff = np.flatnonzero(a[name] != b[name])
        if len(diff):
            return f"population/{name} differs at {len(diff)} candidates (first: index {int(diff[0])})"
    return None
