"""Across runs: one record per results file, runs grouped over population seeds (`merge`), and the series the
figures of `plot FILES...` draw (N-scaling, σ sweep, K-curves overlaid).

A group is the runs whose configs are equal except for population.seed, the fields that cannot change a
result (randopt_hpc.fingerprint.NON_RESULT_FIELDS: where a run writes, how it reports) and the settings
(fingerprint.SETTINGS: batch size, threads). Each reported test
accuracy is averaged over the group's runs with its sample std, min–max and a 95% t-interval over seeds:
mean ± t_{0.975, n−1}·s/√n (tools.metrics.seed_stats).
"""
from __future__ import annotations

import json

from randopt_hpc.fingerprint import NON_RESULT_FIELDS, SETTINGS
from randopt_hpc.summary import GROUPS
from tools import metrics, reports, runfile
from tools.runfile import ResultsError

SEED = "population.seed"
SIZE = "population.size"
SIGMAS = "population.sigmas"
INTERVAL = "95% t-interval over population seeds: mean ± t(0.975, n−1)·s/√n, s the sample std (n − 1)"
LABELS = {"selected": "top-{k}", "control": "control-{k}", "control_sigma": "σ-matched control-{k}"}


def ignored(key: str) -> bool:
    """population.seed, fields that change no result (a section name there stands for all its fields) and the
    settings a run may change on the way (batch size, threads)."""
    return key == SEED or key in SETTINGS or key in NON_RESULT_FIELDS or key.split(".")[0] in NON_RESULT_FIELDS


def quantities(f) -> list[dict]:
    """The test accuracies a run reports, in table order: base, best single, then per K the top-K vote, the
    random and σ-matched control votes, and top-K minus each control (kind, k, quantity label, value)."""
    core = reports.summary_core(f)
    votes = {g: {k: a for k, (a, _) in runfile.stored_votes(f, g).items()} for g in GROUPS}
    out = [{"kind": "base", "k": None, "quantity": "base (greedy)", "value": core["base_test"]},
           {"kind": "best", "k": None, "quantity": "best single", "value": core["best_single_test"]}]
    for k in sorted(votes["selected"]):
        top = votes["selected"][k]
        out += [{"kind": g, "k": k, "quantity": f"{LABELS[g].format(k=k)} vote", "value": votes[g][k]}
                for g in GROUPS if k in votes[g]]
        out += [{"kind": f"selected-{g}", "k": k, "quantity": f"top-{k} − {LABELS[g].format(k=k)}",
                 "value": top - votes[g][k]} for g in ("control", "control_sigma") if k in votes[g]]
    return out


def curves(f) -> dict:
    """Vote accuracy of the first k members, k = 1..K, of the selected and the random control (the control cut
    at the selected K: a scan's control has N members and re-voting all of them costs O(N²))."""
    out = {}
    for g in ("selected", "control"):
        m = runfile.members(f, g)
        if m is None:
            continue
        n = min(len(m[1]), out["selected"]["n"]) if "selected" in out else len(m[1])
        acc, _ = metrics.vote_curve(m[1][:n], runfile.key_verdicts(f, g)[:n])
        out[g] = {"n": n, "accuracy": acc.tolist()}
    return out


def record(f, path: str, with_curves: bool = False) -> dict:
    """What every across-runs view needs from one file."""
    seed = runfile.population_seed(f)
    return {"path": path, "run": runfile.run_name(f, path), "config": runfile.flatten(runfile.config(f)),
            "model": runfile.model_name(f), "task": runfile.task(f), "N": int(f["population/train_score"].shape[0]),
            "sigmas": runfile.sigmas(f), "seed": seed, "quantities": quantities(f),
            "curves": curves(f) if with_curves else None}


# ----------------------------------------------------------------------------------------- groups

def group(records: list[dict]) -> dict:
    """Runs grouped over population seeds: {"keys": config keys that tell the groups apart, "not_compared": keys
    missing from some files, "groups": [{"overrides", "runs", "seeds", "N", "rows"}]}, groups ordered by the values
    of those keys (numbers as numbers; runs/x-N16 before runs/x-N128 whatever the shell's order)."""
    present = [{k for k in r["config"] if not ignored(k)} for r in records]
    common = set.intersection(*present) if present else set()
    partial = sorted(set.union(*present) - common) if present else []
    keys = sorted(k for k in common if len({r["config"][k] for r in records}) > 1)
    by: dict[tuple, list[dict]] = {}
    for r in records:
        by.setdefault(tuple(r["config"][k] for k in sorted(common)), []).append(r)
    groups = []
    for runs in by.values():
        order = list(dict.fromkeys((q["quantity"], q["kind"], q["k"]) for r in runs for q in r["quantities"]))
        rows = []
        for name, kind, k in order:
            values = [next((q["value"] for q in r["quantities"] if q["quantity"] == name), None) for r in runs]
            rows.append({"quantity": name, "kind": kind, "k": k, "values": values, **metrics.seed_stats(values)})
        seeds = [r["seed"] for r in runs]
        groups.append({"overrides": {k: runs[0]["config"][k] for k in keys}, "config": runs[0]["config"],
                       "paths": [r["path"] for r in runs], "seeds": seeds,
                       "repeated_seeds": sorted({s for s in seeds if seeds.count(s) > 1}, key=str),
                       "N": runs[0]["N"], "rows": rows, "runs": runs})
    groups.sort(key=lambda grp: tuple(value_order(grp["overrides"][k]) for k in keys))
    return {"keys": keys, "not_compared": partial, "interval": INTERVAL, "groups": groups}


def value_order(v: str) -> tuple:
    """A config value's sort key: numbers by value before anything else, σ lists by their values, text as text."""
    try:
        return (0, float(v), ())
    except ValueError:
        pass
    try:
        return (1, 0.0, tuple(float(x) for x in json.loads(v)))
    except (ValueError, TypeError):
        return (2, 0.0, (v,))


def table(g: dict) -> tuple[list[str], list[list]]:
    """Long form: one row per (group, quantity)."""
    headers = [*g["keys"], "seeds", "N", "quantity", "n", "mean", "std", "min", "max", "95% low", "95% high"]
    rows = [[*(grp["overrides"][k] for k in g["keys"]), " ".join(str(s) for s in grp["seeds"]), grp["N"],
             r["quantity"], r["n"], r["mean"], r["std"], r["min"], r["max"], r["low"], r["high"]]
            for grp in g["groups"] for r in grp["rows"]]
    return headers, rows


def jsonable(g: dict) -> dict:
    """group() without the per-run records (the runs list of `merge --json` has them)."""
    return {**{k: g[k] for k in ("keys", "not_compared", "interval")},
            "groups": [{k: v for k, v in grp.items() if k not in ("runs", "config")} for grp in g["groups"]]}


# ----------------------------------------------------------------------------------------- figures

def check_plottable(records: list[dict]) -> None:
    """Runs of different tasks or models do not share an axis: refuse them in one line."""
    for what in ("task", "model"):
        values = sorted({r[what] for r in records})
        if len(values) > 1:
            first = {v: next(r["path"] for r in records if r[what] == v) for v in values}
            raise ResultsError(f"cannot plot runs of different {what}s together: "
                               + "; ".join(f"{v} ({first[v]})" for v in values))


def sigma_key(text: str) -> tuple:
    """Order σ sets by their largest, then smallest value (a set is the config's JSON list)."""
    try:
        v = sorted(float(x) for x in json.loads(text))
    except (ValueError, TypeError):
        return (float("inf"), text)
    return (v[-1], v[0], len(v)) if v else (0.0, 0.0, 0)


def sweep(g: dict, x: str) -> dict | None:
    """The series of a figure along config key x (population.size or population.sigmas), or None when the runs
    do not differ in x. Families: the other keys that tell groups apart, unless a key is a function of x (a
    scan's control_size = N, top_k cut to N): those ride along with x and make no family of their own."""
    if x not in g["keys"]:
        return None
    others = [k for k in g["keys"] if k != x]
    along = [k for k in others
             if all(len({grp["config"][k] for grp in g["groups"] if grp["config"][x] == v}) == 1
                    for v in {grp["config"][x] for grp in g["groups"]})]
    family_keys = [k for k in others if k not in along]
    families: dict[str, list[dict]] = {}
    for grp in g["groups"]:
        label = ", ".join(f"{k}={grp['config'][k]}" for k in family_keys)
        families.setdefault(label, []).append(grp)
    def order(v):
        return float(v) if x == SIZE else sigma_key(v)
    values = sorted({grp["config"][x] for grp in g["groups"]}, key=order)
    return {"x": x, "values": values, "family_keys": family_keys, "along": along,
            "families": {label: sorted(grps, key=lambda grp: order(grp["config"][x]))
                         for label, grps in families.items()}}


def describe(records: list[dict]) -> str:
    """Model, task, N (or its range), σ sets and population seeds of several runs: the figures' title line."""
    ns = sorted({r["N"] for r in records})
    sig = list(dict.fromkeys(runfile.sigma_text(r["sigmas"]) for r in records))
    seeds = sorted({r["seed"] for r in records}, key=str)
    return (f"model {records[0]['model']} · {records[0]['task']} · "
            + (f"N={ns[0]}" if len(ns) == 1 else f"N={ns[0]}–{ns[-1]}")
            + f" · σ {' | '.join(sig)} · seeds {' '.join(str(s) for s in seeds)} ({len(records)} runs)")


def group_label(grp: dict, keys: list[str]) -> str:
    if keys:
        return ", ".join(f"{k.split('.')[-1]}={grp['overrides'][k]}" for k in keys)
    return grp["runs"][0]["run"] if len(grp["runs"]) == 1 else f"{len(grp['runs'])} seeds"


def overlay(g: dict) -> list[dict]:
    """kcurves.png's lines: per group (by N, then σ) its label, base accuracy and K-curves over seeds."""
    def order(grp):
        return (grp["N"], sigma_key(grp["config"].get(SIGMAS, "[]")), group_label(grp, g["keys"]))
    return [{"label": group_label(grp, g["keys"]), "base": next(r["mean"] for r in grp["rows"] if r["kind"] == "base"),
             "selected": mean_curve(grp, "selected"), "control": mean_curve(grp, "control")}
            for grp in sorted(g["groups"], key=order)]


def mean_curve(grp: dict, which: str) -> dict | None:
    """The group's K-curve over its seeds: seed_stats at each k (k up to the shortest run's)."""
    cs = [r["curves"][which]["accuracy"] for r in grp["runs"] if r["curves"] and which in r["curves"]]
    if not cs:
        return None
    n = min(len(c) for c in cs)
    return {"k": list(range(1, n + 1)), "stats": [metrics.seed_stats([c[i] for c in cs]) for i in range(n)]}
