"""One builder per analyze command: an open results file in, a plain dict out (what --json prints).

Builders read through tools.runfile and compute through tools.metrics; printing is the CLI's job.
"""
from __future__ import annotations

import numpy as np

from tools import metrics, runfile
from tools.runfile import ResultsError

CONFIG_KEYS = ("model.path", "backend", "task.name", "task.template", "task.seed", "population.size", "population.seed",
               "population.sigmas", "population.sigma_assignment", "selection.top_k", "selection.control",
               "generation.max_new_tokens", "output.dir")


def sizes(f) -> dict:
    n, m = f["population/train_reward"].shape
    return {"N": int(n), "M_train": int(m), "T_test": int(f["base/test_correct"].shape[0]),
            "world_size": int(f.attrs.get("world_size", f["timing/busy"].shape[0] if "timing/busy" in f else 0)),
            "K": [int(k) for k in f["selection/top_k"][()]]}


def summary(f, path: str) -> dict:
    flat = runfile.flatten(runfile.config(f))
    scores, base_score = runfile.train_scores(f)
    core = summary_core(f)
    best = core["best"]
    rows = [{"model": "base", "k": None, "train_score": base_score,
             "train_acc": float(f["base/train_correct"][()].mean()), "test_acc": core["base_test"]},
            {"model": f"best single (#{best})", "k": 1, "train_score": float(scores[best]),
             "train_acc": float(f["population/train_accuracy"][best]), "test_acc": core["best_single_test"]}]
    for which, label in (("selected", "top-{k} vote"), ("control", "control-{k} vote")):
        g = f"ensemble/{which}"
        if g in f:
            for k, tr, te in zip(f[f"{g}/k"][()], f[f"{g}/train_accuracy"][()], f[f"{g}/accuracy"][()]):
                rows.append({"model": label.format(k=int(k)), "k": int(k), "train_score": None,
                             "train_acc": float(tr), "test_acc": float(te)})
    timing = []
    stats = {"imbalance": None}
    if "timing/busy" in f:
        t = {name: f[f"timing/{name}"][()] for name in f["timing"]}
        hosts = runfile.strings(f, "timing/hostname") if "hostname" in t else [""] * len(t["busy"])
        wall = t.get("wall", t["busy"] + t.get("wait", 0))
        stats = metrics.timing_stats(t["busy"], wall)
        for r in range(len(t["busy"])):
            timing.append({"rank": int(t["rank"][r]) if "rank" in t else r, "host": str(hosts[r]),
                           "candidates": int(t["candidates"][r]) if "candidates" in t else None,
                           "wall": float(wall[r]), "busy": float(t["busy"][r]), "idle": float(stats["idle"][r]),
                           "wait": float(t["wait"][r]) if "wait" in t else None,
                           "load": float(t["load"][r]) if "load" in t else None})
    return {"path": path, "run": runfile.run_name(f, path), "task": runfile.task(f),
            "created": str(f.attrs.get("created", "")), "git_commit": str(f.attrs.get("git_commit", "")),
            "config": {k: flat[k] for k in CONFIG_KEYS if k in flat}, "sizes": sizes(f), "models": rows,
            "timing": timing, "imbalance": stats["imbalance"]}


def kcurve(f, path: str) -> dict:
    """Vote accuracy and coverage of the first k members for every k, re-voted from the stored answers."""
    out = {"path": path, "title": runfile.title(f, path), "base_test_acc": float(f["base/test_correct"][()].mean())}
    for which in ("selected", "control"):
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
    scores, base = runfile.train_scores(f)
    return {"path": path, "title": runfile.title(f, path), "base_train_score": base,
            "rows": metrics.sigma_table(scores, f["population/sigma"][()], base)}


def density(f, path: str, margins: list[float] | None, steps: int = 11) -> dict:
    scores, base = runfile.train_scores(f)
    grid = np.asarray(margins, dtype=np.float64) if margins else metrics.auto_margins(scores, base, steps)
    d = metrics.density(scores, base, grid)
    return {"path": path, "title": runfile.title(f, path), "base_train_score": base, "N": d["n"],
            "interval": "Wilson score, 95%",
            "rows": [{"margin": float(m), "threshold": base + float(m), "count": int(c), "density": float(p),
                      "low": float(lo), "high": float(hi)}
                     for m, c, p, lo, hi in zip(d["margin"], d["count"], d["density"], d["low"], d["high"])]}


def passk(f, path: str) -> dict:
    """pass@k on base samples when the file has them, else on the ensemble members (not i.i.d.; see the CLI help)."""
    out = {"path": path, "title": runfile.title(f, path)}
    if "base/test_samples_correct" in f:
        ok = f["base/test_samples_correct"][()].astype(bool)
        out["source"] = "base/test_samples_correct"
        out["note"] = "samples of the base model (treated as i.i.d.)"
        groups = {"samples": ok}
    else:
        out["source"] = "ensemble members' test_correct"
        out["note"] = ("members are distinct models, not i.i.d. samples: selected members are the top of one "
                       "ranking; control members are i.i.d. draws of perturbations")
        groups = {w: m[2] for w in ("selected", "control") if (m := runfile.members(f, w)) is not None}
    for name, ok in groups.items():
        out[name] = {"n": int(ok.shape[0]), "k": list(range(1, ok.shape[0] + 1)),
                     "pass_at_k": metrics.pass_at_k_curve(ok), "coverage_in_order": metrics.coverage_curve(ok)}
    return out


def discordance(files: list[tuple[str, object]], splits: int | None) -> dict:
    """𝒟 across several files (one task each, the same population) or across `splits` blocks of one file's train set."""
    if splits is not None:
        if len(files) != 1:
            raise ResultsError("--splits takes exactly one file (several files are the tasks themselves)")
        path, f = files[0]
        cols = metrics.split_scores(f["population/train_reward"][()], splits)
        names = [f"train block {j + 1}/{splits}" for j in range(splits)]
        m = f["population/train_reward"].shape[1]
        source = f"{path}: {splits} disjoint contiguous blocks of the {m} train examples"
    elif len(files) == 1 and len(runfile.task_names(files[0][1])) > 1:   # one run scored on several tasks
        path, f = files[0]
        cols = f["population/train_score_by_task"][()]
        names = [f"{name} (train score)" for name in runfile.task_names(f)]
        source = f"{path}: the train score on each of its {len(names)} tasks"
    else:
        if len(files) < 2:
            raise ResultsError("discordance needs 2 or more results files of the same population, one file of a "
                               "run on several tasks, or one file with --splits M")
        pops = [{"seed": f["population/seed"][()], "sigma": f["population/sigma"][()]} for _, f in files]
        for (path, _), pop in zip(files[1:], pops[1:]):
            why = runfile.same_population(pops[0], pop)
            if why:
                raise ResultsError(f"{path} is not the same population as {files[0][0]}: {why}")
        cols = np.column_stack([runfile.train_scores(f)[0] for _, f in files])
        names = [f"{p} ({runfile.task(f)})" for p, f in files]
        source = "train score of each file"
    try:
        d = metrics.discordance(cols)
    except metrics.ConstantColumn as e:
        which = ", ".join(names[j] for j in e.columns)
        raise ResultsError(f"every candidate has the same score in {which}: its rank correlation is undefined, "
                           "so 𝒟 is too (use more candidates, another split, or drop that task)") from None
    return {"D": d["D"], "M": d["M"], "bound": d["bound"], "N": d["N"], "source": source, "columns": names,
            "correlation": d["correlation"]}


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
