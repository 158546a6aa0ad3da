"""One builder per analyze command: an open results file in, a plain dict out (what --json prints).

Builders read through tools.runfile and compute through tools.metrics; printing is the CLI's job.
"""
from __future__ import annotations

import numpy as np

from randopt_hpc import stats
from randopt_hpc.summary import GROUPS
from tools import metrics, runfile
from tools.runfile import ResultsError

CONFIG_KEYS = ("model.path", "backend", "task.name", "task.template", "task.seed", "population.size", "population.seed",
               "population.sigmas", "population.sigma_assignment", "selection.top_k", "selection.control",
               "selection.control_size", "generation.max_new_tokens", "generation.samples", "generation.temperature",
               "generation.top_p", "output.dir")


def sizes(f) -> dict:
    n, m = f["population/train_reward"].shape
    return {"N": int(n), "M_train": int(m), "T_test": int(f["base/test_correct"].shape[0]),
            "world_size": int(f.attrs.get("world_size", f["timing/busy"].shape[0] if "timing/busy" in f else 0)),
            "K": [int(k) for k in f["selection/top_k"][()]]}


def summary(f, path: str) -> dict:
    """What the run's log ends with (randopt_hpc.summary, the same code on the file), plus config and timing."""
    from randopt_hpc.summary import summarize

    flat = runfile.flatten(runfile.config(f))
    core = summarize(f, dict(f.attrs))
    rows = [{k: v for k, v in r.items() if k != "values"} for r in core["rows"]]   # per-item values stay out
    timing = []
    balance = {"imbalance": None}
    if "timing/busy" in f:
        t = {name: f[f"timing/{name}"][()] for name in f["timing"]}
        hosts = runfile.strings(f, "timing/hostname") if "hostname" in t else [""] * len(t["busy"])
        wall = t.get("wall", t["busy"] + t.get("wait", 0))
        balance = metrics.timing_stats(t["busy"], wall)
        for r in range(len(t["busy"])):
            timing.append({"rank": int(t["rank"][r]) if "rank" in t else r, "host": str(hosts[r]),
                           "candidates": int(t["candidates"][r]) if "candidates" in t else None,
                           "wall": float(wall[r]), "busy": float(t["busy"][r]), "idle": float(balance["idle"][r]),
                           "wait": float(t["wait"][r]) if "wait" in t else None,
                           "load": float(t["load"][r]) if "load" in t else None})
    return {"path": path, "run": runfile.run_name(f, path), "task": runfile.task(f),
            "created": str(f.attrs.get("created", "")), "git_commit": str(f.attrs.get("git_commit", "")),
            "config": {k: flat[k] for k in CONFIG_KEYS if k in flat}, "sizes": sizes(f), "models": rows,
            "differences": core["differences"], "interval": core["interval"], "tokens": core["tokens"],
            "timing": timing, "imbalance": balance["imbalance"]}


def kcurve(f, path: str) -> dict:
    """Vote accuracy and coverage of the first k members for every k, re-voted from the stored answers."""
    out = {"path": path, "title": runfile.title(f, path), "base_test_acc": float(f["base/test_correct"][()].mean())}
    for which in GROUPS:
        m = runfile.members(f, which)
        if m is None:
            continue
        _, keys, ok = m
        acc, per_k = metrics.vote_curve(keys, runfile.key_verdicts(f, which))
        stored = runfile.stored_votes(f, which)
        mismatched = [k for k, (_, v) in stored.items() if k > len(per_k) or list(v) != per_k[k - 1]]
        out[which] = {"k": list(range(1, len(keys) + 1)), "accuracy": acc, "coverage": metrics.coverage_curve(ok),
                      "stored_k": sorted(stored), "stored_accuracy": [stored[k][0] for k in sorted(stored)],
                      "matches_stored": not mismatched, "mismatched_k": mismatched}
    return out


def sigma(f, path: str) -> dict:
    scores, base = runfile.train_scores(f, path)
    return {"path": path, "title": runfile.title(f, path), "base_train_score": base,
            "rows": metrics.sigma_table(scores, f["population/sigma"][()], base)}


def density(f, path: str, margins: list[float] | None, steps: int = 11, on: str = "accuracy", split: str = "train",
            exact: bool = False) -> dict:
    """δ(m) per σ on accuracy from stored correctness (the paper's); on="score": the pooled train-score δ of old.
    exact: every candidate's own margin instead of `margins` (a step plot through them is exact)."""
    if on == "score":
        if split != "train":
            raise ResultsError("--on score has the train split only (no per-candidate test scores are stored)")
        scores, base = runfile.train_scores(f, path)
        grid = np.asarray(margins, dtype=np.float64) if margins else metrics.auto_margins(scores, base, steps)
        d = metrics.density(scores, base, grid)
        return {"path": path, "title": runfile.title(f, path), "on": "score", "split": "train",
                "base_train_score": base, "N": d["n"], "interval": "Wilson score, 95%",
                "rows": [{"margin": float(m), "threshold": base + float(m), "count": int(c), "density": float(p),
                          "low": float(lo), "high": float(hi)}
                         for m, c, p, lo, hi in zip(d["margin"], d["count"], d["density"], d["low"], d["high"])]}
    sigmas = f["population/sigma"][()]
    n_pop = len(sigmas)
    if split == "train":
        runfile.require_full_train(f, path, "the train split's density")
        ok, base_ok = f["population/train_correct"][()], f["base/train_correct"][()]
        source = f"population/train_correct vs base/train_correct: all {n_pop} candidates"
    else:
        if "ensemble/control" not in f:
            raise ResultsError(f"{path}: no ensemble/control (selection.control was off): the test split's δ needs "
                               "the control members' test answers")
        idx = f["ensemble/control/members"][()]
        ok, base_ok, sigmas = f["ensemble/control/test_correct"][()], f["base/test_correct"][()], sigmas[idx]
        who = ("every candidate (a scan run)" if len(set(idx.tolist())) == n_pop
               else f"only the {len(idx)} control members of {n_pop} candidates")
        source = f"ensemble/control/test_correct vs base/test_correct: {who}"
    d = metrics.accuracy_density(ok, base_ok, sigmas, None if exact else margins or metrics.ACCURACY_MARGINS)
    return {"path": path, "title": runfile.title(f, path), "on": "accuracy", "split": split, "source": source,
            "N": len(ok), "examples": d["examples"], "base_accuracy": d["base"], "base_hits": d["base_hits"],
            "margins": d["margin"], "interval": "Wilson score, 95%",
            "rows": [{"sigma": r["sigma"], "n": r["n"],
                      "cells": [{"margin": float(m), "threshold": d["base"] + float(m), "count": int(c), "n": r["n"],
                                 "density": float(p), "low": float(lo), "high": float(hi)}
                                for m, c, p, lo, hi in zip(r["margin"], r["count"], r["density"], r["low"], r["high"])]}
                     for r in d["rows"]]}


def thicket(f, path: str) -> dict:
    """Per σ over the candidates with test answers (a scan: all): share ≥ base and > base on test (Wilson), the
    best test accuracy, and Pearson / Spearman correlation of train score and test accuracy."""
    if "ensemble/control" not in f:
        raise ResultsError(f"{path}: no ensemble/control (selection.control was off): the thicket needs candidates' "
                           "test answers (a scan: selection.control_size = population.size)")
    runfile.require_full_train(f, path, "the train score's correlation with test accuracy")
    idx = f["ensemble/control/members"][()]
    n_pop = int(f["population/train_score"].shape[0])
    hits = f["ensemble/control/test_correct"][()].sum(axis=1)
    base_ok = f["base/test_correct"][()]
    t, base_hits = len(base_ok), int(base_ok.sum())
    score, sig = f["population/train_score"][()][idx], f["population/sigma"][()][idx]
    scan = len(set(idx.tolist())) == n_pop
    rows = []
    for s, mask in metrics.sigma_groups(sig):
        n, h, sc = int(mask.sum()), hits[mask], score[mask]
        at_least, above = int(np.sum(h >= base_hits)), int(np.sum(h > base_hits))
        lo, hi = metrics.wilson(at_least, n)
        r = metrics.pearson(sc, h / t)
        r_lo, r_hi = metrics.fisher_interval(r, n)
        rows.append({"sigma": s, "n": n, "at_least_base": at_least / n, "at_least_count": at_least,
                     "at_least_low": float(lo), "at_least_high": float(hi), "above_base": above / n,
                     "above_count": above, "best_test": float(h.max() / t),
                     "best_minus_base": float((h.max() - base_hits) / t),
                     "pearson": r, "pearson_low": r_lo, "pearson_high": r_hi, "spearman": metrics.spearman(sc, h / t)})
    return {"path": path, "title": runfile.title(f, path), "scan": scan, "N": n_pop, "candidates": len(idx),
            "source": "ensemble/control/test_correct: " + ("every candidate (a scan run)" if scan else
                                                          f"only the {len(idx)} control members of {n_pop} candidates"),
            "base_test_acc": base_hits / t, "base_hits": base_hits, "T_test": t,
            "score": "population/train_score (the mean train reward the ranking sorts by)",
            "intervals": "share ≥ base: 95% Wilson; Pearson r: 95% Fisher z", "rows": rows}


def passk(f, path: str, max_tt_mv: int = 64) -> dict:
    """The limit-of-RLVR comparison: the base model's pass@k over its samples (unbiased estimator) and TT-MV
    at k, against each ensemble's coverage and vote of its first k members."""
    out = {"path": path, "title": runfile.title(f, path), "base_test_acc": float(f["base/test_correct"][()].mean())}
    if "base/test_samples_correct" in f:
        ok = f["base/test_samples_correct"][()].astype(bool)
        keys = [[k or None for k in row] for row in runfile.strings(f, "base/test_samples_key")]
        key_ok = f["base/test_samples_key_correct"][()].astype(bool)
        tt = list(range(1, min(len(ok), max_tt_mv) + 1))
        cfg = runfile.config(f).get("generation") or {}
        out["samples"] = {"n": int(ok.shape[0]), "k": list(range(1, ok.shape[0] + 1)),
                          "temperature": cfg.get("temperature"), "top_p": cfg.get("top_p"),
                          "pass_at_k": stats.pass_at_k_curve(ok), "tt_mv_k": tt,
                          "tt_mv": stats.tt_mv_curve(keys, key_ok, tt)}
    for which in GROUPS:
        m = runfile.members(f, which)
        if m is not None:
            acc, _ = metrics.vote_curve(m[1], runfile.key_verdicts(f, which))
            out[which] = {"n": int(m[2].shape[0]), "k": list(range(1, m[2].shape[0] + 1)),
                          "coverage": stats.coverage_curve(m[2]), "vote": acc}
    return out


def discordance(files: list[tuple[str, object]], splits: int | None) -> dict:
    """𝒟 on per-task train accuracy (one multi-task file, or several files of one population), over all
    candidates and per σ, raw and noise-corrected; with `splits`, one task's block reliability instead."""
    for path, f in files:
        runfile.require_full_train(f, path, "comparing candidates' train accuracy")
    if splits is not None:
        if len(files) != 1:
            raise ResultsError("--splits takes exactly one file (several files are the tasks themselves)")
        path, f = files[0]
        ok = f["population/train_correct"][()]
        try:
            r = metrics.block_reliability(ok, splits)
        except metrics.ConstantColumn as e:
            which = ", ".join(f"train block {j + 1}/{splits}" for j in e.columns)
            raise ResultsError(f"every candidate has the same accuracy in {which}: its rank correlation is "
                               "undefined (use fewer blocks)") from None
        return {"kind": "reliability",
                "label": "reliability diagnostic (one task cut into M blocks: not a discordance)", **r,
                "source": f"{path}: train accuracy on {splits} disjoint contiguous blocks of its {ok.shape[1]} "
                          "train examples",
                "columns": [f"train block {j + 1}/{splits}" for j in range(splits)]}
    if len(files) == 1 and len(runfile.task_names(files[0][1])) > 1:   # one run scored on several tasks
        path, f = files[0]
        ok, where = f["population/train_correct"][()], runfile.strings(f, "data/train_task")
        cols = [ok[:, where == t] for t in runfile.task_names(f)]
        empty = [t for t, c in zip(runfile.task_names(f), cols) if c.shape[1] == 0]
        if empty:
            raise ResultsError(f"{path}: no train examples of task {', '.join(empty)} in data/train_task")
        names = [f"{t} ({c.shape[1]} ex.)" for t, c in zip(runfile.task_names(f), cols)]
        source = f"{path}: train accuracy on each of its {len(names)} tasks (data/train_task)"
    else:
        if len(files) < 2:
            raise ResultsError("discordance needs 2 or more results files of the same population, one file of a "
                               "run on several tasks, or (a reliability diagnostic) one file with --splits M")
        pops = [{"seed": f["population/seed"][()], "sigma": f["population/sigma"][()]} for _, f in files]
        for (path, _), pop in zip(files[1:], pops[1:]):
            why = runfile.same_population(pops[0], pop)
            if why:
                raise ResultsError(f"{path} is not the same population as {files[0][0]}: {why}")
        cols = [f["population/train_correct"][()] for _, f in files]
        names = [f"{p} ({runfile.task(f)})" for p, f in files]
        source = "train accuracy of each file (population/train_correct)"
    f = files[0][1]
    rows = [{"sigma": s, **metrics.thicket_discordance([c[mask] for c in cols], names)}
            for s, mask in metrics.sigma_groups(f["population/sigma"][()])]
    every = rows[-1]
    m = len(cols)
    return {"kind": "discordance", "M": m, "bound": m / (m - 1), "N": every["N"], "source": source, "columns": names,
            "D": every["D"], "D_corrected": every["D_corrected"], "correlation": every["correlation"], "rows": rows}


def merge_row(f, path: str) -> dict:
    sel = runfile.stored_votes(f, "selected")
    ctrl = runfile.stored_votes(f, "control")
    s = summary_core(f)
    return {"path": path, "config": runfile.flatten(runfile.config(f)), "N": s["N"], "base_test": s["base_test"],
            "best_single_test": s["best_single_test"],
            "top": {k: a for k, (a, _) in sel.items()}, "control": {k: a for k, (a, _) in ctrl.items()}}


def summary_core(f) -> dict:
    best = int(f["selection/ranking"][0])
    sel = runfile.members(f, "selected")
    best_test = float(sel[2][list(sel[0]).index(best)].mean()) if sel is not None and best in sel[0] else None
    return {"best": best, "N": int(f["population/train_reward"].shape[0]),
            "base_test": float(f["base/test_correct"][()].mean()), "best_single_test": best_test}


def merge(rows: list[dict], ignore: tuple[str, ...] = ("output.dir", "output.overwrite")) -> dict:
    """One row per run; the config keys shown are those whose values differ between the runs.

    A key missing from some files was added by a newer version of the package (its default), not
    chosen by the user: it is listed apart rather than shown as a difference. `ignore` holds keys that
    never change results (where the run wrote, whether it cleared the folder first).
    """
    present = [set(r["config"]) - set(ignore) for r in rows]
    common = set.intersection(*present) if present else set()
    partial = sorted(set.union(*present) - common) if present else []
    differing = sorted(k for k in common if len({r["config"][k] for r in rows}) > 1)
    ks = sorted({k for r in rows for k in r["top"]})
    cks = sorted({k for r in rows for k in r["control"]})
    headers = ["path", *differing, "N", "base test", "best single test", *(f"top-{k} test" for k in ks),
               *(f"control-{k} test" for k in cks)]
    table = [[r["path"], *(r["config"][k] for k in differing), r["N"], r["base_test"], r["best_single_test"],
              *(r["top"].get(k) for k in ks), *(r["control"].get(k) for k in cks)] for r in rows]
    return {"differing_keys": differing, "keys_not_in_every_file": partial, "headers": headers, "rows": table,
            "runs": [{"path": r["path"], "overrides": {k: r["config"][k] for k in differing}, "N": r["N"],
                      "base_test": r["base_test"], "best_single_test": r["best_single_test"],
                      "top": r["top"], "control": r["control"]} for r in rows]}


def compare(a: str, b: str, show: int = 3) -> dict:
    """What differs between the results of two files (every dataset but timing and provenance, as
    randopt_hpc.results.comparable reads them): per differing dataset the count and the first elements."""
    from randopt_hpc.results import comparable

    ra, rb = comparable(a), comparable(b)
    rows = []
    for name in sorted(set(ra) & set(rb)):
        x, y = np.asarray(ra[name]), np.asarray(rb[name])
        if x.shape != y.shape:
            rows.append({"dataset": name, "shapes": [list(x.shape), list(y.shape)], "differ": None, "first": []})
            continue
        unequal = x != y
        if x.dtype.kind in "fc":   # NaN (an accuracy of nothing) equals NaN here
            unequal &= ~(np.isnan(x) & np.isnan(y))
        where = np.argwhere(np.atleast_1d(unequal))
        if len(where):
            rows.append({"dataset": name, "shapes": [list(x.shape)] * 2, "differ": int(len(where)), "size": int(x.size),
                         "first": [{"at": [int(i) for i in w], "a": x.reshape(-1)[0] if not x.ndim else x[tuple(w)],
                                    "b": y.reshape(-1)[0] if not y.ndim else y[tuple(w)]} for w in where[:show]]})
    return {"a": a, "b": b, "datasets": len(set(ra) | set(rb)), "only_in_one": sorted(set(ra) ^ set(rb)),
            "differing": rows}
