"""Text output of `python -m tools.analyze`: one renderer per command, a builder's dict (tools.reports) in,
the table people read out. --json bypasses these."""
from __future__ import annotations

from randopt_hpc.summary import GROUPS
from randopt_hpc.summary import render as summary_text
from tools import tables


def config_lines(cfg: dict) -> list[str]:
    """One line per config section, so the few keys that define a run read at a glance."""
    sections: dict[str, list[str]] = {}
    section = ""
    for k, v in cfg.items():
        section = k.split(".")[0] if "." in k else section      # a top-level key (backend) joins the line before
        sections.setdefault(section, []).append(f"{k}='{v}'" if " " in v else f"{k}={v}")
    return ["  " + "  ".join(items) for items in sections.values()]


def summary(s: dict) -> str:
    z = s["sizes"]
    lines = [f"run {s['run']} · task {s['task']} · created {s['created']} · git {s['git_commit'][:10]}",
             "config:", *config_lines(s["config"]),
             f"sizes: N={z['N']}  M(train)={z['M_train']}  T(test)={z['T_test']}  "
             f"world_size={z['world_size']}  K={z['K']}",
             "",
             summary_text({"rows": s["models"], "differences": s["differences"], "interval": s["interval"],
                           "tokens": s["tokens"]})]
    if s["timing"]:
        lines += ["", "timing per rank (seconds; idle = wall - busy, wait = time in the score allgather):",
                  tables.text(["rank", "host", "candidates", "wall", "busy", "idle", "wait", "load"],
                              [[t[k] for k in ("rank", "host", "candidates", "wall", "busy", "idle", "wait", "load")]
                               for t in s["timing"]], digits=1),
                  f"imbalance (max busy / mean busy): {tables.cell(s['imbalance'])}"]
    return "\n".join(lines)


def kcurve(d: dict) -> str:
    groups = [g for g in GROUPS if g in d]
    kmax = max(len(d[g]["k"]) for g in groups)
    headers = ["k"] + [h for g in groups for h in (f"{g} vote acc", f"{g} coverage")]
    rows = []
    for i in range(kmax):
        stored = any(i + 1 in d[g]["stored_k"] for g in groups)
        row = [f"{i + 1}{'*' if stored else ''}"]
        for g in groups:
            row += [d[g]["accuracy"][i], d[g]["coverage"][i]] if i < len(d[g]["k"]) else [None, None]
        rows.append(row)
    lines = [d["title"], f"base test accuracy: {d['base_test_acc']:.3f}", tables.text(headers, rows),
             "* = a K stored in the file; "
             "coverage = share of test items at least one of the first k members gets right"]
    for g in groups:
        ok = "yes" if d[g]["matches_stored"] else f"NO, differs at K = {d[g]['mismatched_k']}"
        lines.append(f"{g}: re-vote equals the stored voted_correct for K = {d[g]['stored_k']}: {ok}")
    return "\n".join(lines)


def sigma(d: dict) -> str:
    headers = ["sigma", "count", "mean", "std", "min", "q25", "median", "q75", "max", "> base", ">= base"]
    rows = [[r["sigma"] if r["sigma"] == "all" else f"{r['sigma']:g}", r["count"], r["mean"], r["std"], r["q0"],
             r["q25"], r["q50"], r["q75"], r["q100"], r["above_base"], r["at_least_base"]] for r in d["rows"]]
    return "\n".join([d["title"], f"base train score: {d['base_train_score']:.4f}",
                      tables.text(headers, rows, digits=4)])


def sigma_label(s) -> str:
    return s if s == "all" else f"{s:g}"


def density(d: dict) -> str:
    if d["on"] == "score":
        rows = [[r["margin"], r["threshold"], r["count"], r["density"], r["low"], r["high"]] for r in d["rows"]]
        return "\n".join([d["title"], f"base train score: {d['base_train_score']:.4f}; N = {d['N']}; "
                          f"interval: {d['interval']}; all σ pooled",
                          tables.text(["margin m", "score >=", "count", "density", "95% low", "95% high"], rows,
                                      digits=4)])
    sizes = ", ".join(f"{sigma_label(r['sigma'])}: {r['n']}" for r in d["rows"])
    rows = [[sigma_label(r["sigma"]), *(f"{c['density']:.3f} [{c['low']:.2f},{c['high']:.2f}]" for c in r["cells"])]
            for r in d["rows"]]
    return "\n".join([d["title"],
                      f"δ(m) = share of candidates with {d['split']} accuracy ≥ base + m; "
                      "cells: δ [95% Wilson interval]",
                      f"source: {d['source']}",
                      f"base {d['split']} accuracy {d['base_accuracy']:.4f} ({d['base_hits']}/{d['examples']}); "
                      f"N per σ: {sizes}",
                      tables.text(["sigma", *(f"m={m:g}" for m in d["margins"])], rows)])


def thicket(d: dict) -> str:
    rows = [[sigma_label(r["sigma"]), r["n"],
             f"{r['at_least_base']:.3f} [{r['at_least_low']:.2f},{r['at_least_high']:.2f}]",
             r["above_base"], r["best_test"], f"{100 * r['best_minus_base']:+.1f}",
             None if r["pearson"] is None else f"{r['pearson']:+.3f}"
             + (f" [{r['pearson_low']:+.2f},{r['pearson_high']:+.2f}]" if r["pearson_low"] is not None else ""),
             None if r["spearman"] is None else f"{r['spearman']:+.3f}"] for r in d["rows"]]
    return "\n".join([d["title"], f"source: {d['source']}",
                      f"base test accuracy {d['base_test_acc']:.4f} ({d['base_hits']}/{d['T_test']}); "
                      f"train score: {d['score']}",
                      tables.text(["sigma", "n", ">= base [95% Wilson]", "> base", "best test", "best - base (pts)",
                                   "Pearson r [95%]", "Spearman"], rows),
                      ">= base: share of candidates with test accuracy at least the base's; r, Spearman: train score "
                      "against test accuracy over these candidates (r's interval: Fisher z)"])


def over_seeds(g: dict) -> str:
    """merge's table over population seeds, markdown, with what a group is and which interval."""
    from tools import sweep

    lines = ["over population seeds (a group: runs whose configs differ only in population.seed and fields that "
             "change no result); " + g["interval"], tables.markdown(*sweep.table(g))]
    lines += [f"note: population.seed {', '.join(map(str, grp['repeated_seeds']))} appears more than once in the group "
              f"of {', '.join(grp['paths'])}: not independent seeds" for grp in g["groups"] if grp["repeated_seeds"]]
    if g["not_compared"]:
        lines.append(f"config keys not in every file (not compared): {', '.join(g['not_compared'])}")
    return "\n".join(lines)


def matrix(c) -> str:
    return tables.text([""] + [f"[{j}]" for j in range(len(c))], [[f"[{i}]", *row] for i, row in enumerate(c.tolist())])


def discordance(d: dict) -> str:
    if d["kind"] == "reliability":
        return "\n".join([d["label"], f"source: {d['source']}; N = {d['N']}",
                          f"mean inter-block rank correlation r̄ = {d['r_mean']:.4f}   1 − r̄ = {d['one_minus_r']:.4f}",
                          f"Spearman–Brown reliability of the full score M·r̄/(1+(M−1)·r̄) = {d['reliability']:.4f}"
                          f"   (M = {d['M']})",
                          "inter-block rank correlation matrix:", matrix(d["correlation"])])
    lines = [f"spectral discordance D on per-task train accuracy   (M = {d['M']} columns, "
             f"bound M/(M-1) = {d['bound']:.4f})", f"columns: {d['source']}"]
    lines += [f"  [{j}] {name}" for j, name in enumerate(d["columns"])]
    lines.append(tables.text(["sigma", "N", "D", "D corrected", *(f"ρ[{j}]" for j in range(d["M"]))],
                             [[sigma_label(r["sigma"]), r["N"], r["D"], r["D_corrected"],
                               *(rho if rho > 0 else None for rho in r["reliability"])]    # blank: no reliability
                              for r in d["rows"]], digits=4))
    for r in d["rows"]:
        if r["why"]:
            lines.append(f"  sigma {sigma_label(r['sigma'])}: D undefined: {r['why']}")
        elif r["why_corrected"]:
            lines.append(f"  sigma {sigma_label(r['sigma'])}: D corrected undefined: {r['why_corrected']}")
    every = d["rows"][-1]
    if every["correlation"] is not None:
        lines += ["rank correlation matrix (all candidates):", matrix(every["correlation"])]
    if every["corrected_correlation"] is not None:
        lines += ["corrected r_ij / sqrt(ρ_i ρ_j), clipped to [-1, 1] (all candidates):",
                  matrix(every["corrected_correlation"])]
    lines += ["D: 0 = every column ranks the candidates alike; about 1 = unrelated rankings (specialists)",
              "ρ[j]: split-half reliability of column j, 2r/(1+r) with r the rank correlation of its even- and "
              "odd-position examples; D corrected: 1 - mean off-diagonal corrected correlation"]
    return "\n".join(lines)


def passk(d: dict) -> str:
    cols = []   # (header, values by k)
    if "samples" in d:
        smp = d["samples"]
        cols += [(f"base pass@k (T={smp['temperature']})", smp["pass_at_k"]), ("base TT-MV@k", smp["tt_mv"])]
    for g in GROUPS:
        if g in d:
            cols += [(f"{g} coverage", d[g]["coverage"]), (f"{g} vote", d[g]["vote"])]
    n = max(len(v) for _, v in cols)
    rows = [[k] + [v[k - 1] if k <= len(v) else None for _, v in cols] for k in range(1, n + 1)]
    return "\n".join([d["title"], f"base test accuracy (greedy): {d['base_test_acc']:.3f}",
                      tables.text(["k"] + [h for h, _ in cols], rows),
                      "pass@k: unbiased estimator over the base model's samples; TT-MV@k: vote of k samples, mean over "
                      "disjoint blocks; coverage / vote: the first k members of each ensemble"])


def compare(d: dict) -> str:
    lines = [f"{d['datasets']} datasets, {len(d['differing']) + len(d['only_in_one'])} differ "
             f"({d['a']} vs {d['b']})"]
    lines += [f"  {name}: in one file only" for name in d["only_in_one"]]
    for r in d["differing"]:
        if r["differ"] is None:
            lines.append(f"  {r['dataset']}: shapes {r['shapes'][0]} vs {r['shapes'][1]}")
            continue
        first = "; ".join(f"at {e['at']}: {e['a']!r} vs {e['b']!r}" for e in r["first"])
        lines.append(f"  {r['dataset']}: {r['differ']} of {r['size']} elements differ; {first}")
    return "\n".join(lines)
