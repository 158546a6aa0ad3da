"""`analyze es`: RandOpt against ES at equal compute, from their results files (docs/es.md).

The compute of a run is the tokens it generated on the train split (population/train_gen_tokens): RandOpt
spends them on N candidates once, ES on N candidates per iteration. RandOpt's curve is its top-K vote
against its train tokens over runs of growing N (a run grown in place keeps one results.h5 per size); ES's
is θ_t's test accuracy against the train tokens spent before θ_t. Runs pair up by population.seed; at each
ES evaluation point the RandOpt run of that seed with the nearest train tokens is its match.
"""
from __future__ import annotations

import numpy as np

from tools import runfile
from tools.runfile import ResultsError


def read(f, path: str, k: int) -> dict:
    """One file's curve points: RandOpt (one point: N, tokens, top-k vote, best single) or ES (one per θ_t)."""
    seed = runfile.population_seed(f)
    if f.attrs.get("algorithm", "randopt") == "es":
        tokens, it = f["es/train_tokens"][()], f["es/eval_iteration"][()]
        return {"path": path, "algorithm": "es", "seed": seed, "n": int(runfile.config(f)["population"]["size"]),
                "points": [{"iteration": int(t), "tokens": int(tokens[t]), "accuracy": float(a)}
                           for t, a in zip(it, f["es/test_accuracy"][()])]}
    votes = runfile.stored_votes(f, "selected")
    if k not in votes:
        raise ResultsError(f"{path}: no top-{k} vote (selection.top_k is {sorted(votes)}); choose --k")
    gen = f["population/train_gen_tokens"][()]
    best = int(f["selection/ranking"][0])
    members = [int(m) for m in f["ensemble/selected/members"][()]]
    single = float(f["ensemble/selected/test_correct"][members.index(best)].mean())
    return {"path": path, "algorithm": "randopt", "seed": seed, "n": int(gen.shape[0]),
            "points": [{"tokens": int(gen[gen >= 0].sum()), "accuracy": float(votes[k][0]), "best_single": single}]}


def compare(runs: list[dict], k: int, tolerance: float = 0.05) -> dict:
    """Rows at the ES evaluation points after θ_0 that a RandOpt run of the same seed matches in train tokens
    (within `tolerance`, relative): the ES run's accuracy and the matched RandOpt run's; and their means over
    the seeds that have both."""
    es = [r for r in runs if r["algorithm"] == "es"]
    ro = [r for r in runs if r["algorithm"] == "randopt"]
    if not es or not ro:
        raise ResultsError("give RandOpt and ES results files (at least one of each)")
    rows = []
    for run in es:
        mine = [r for r in ro if r["seed"] == run["seed"]]
        if not mine:
            raise ResultsError(f"{run['path']}: no RandOpt file with population.seed {run['seed']}")
        for p in run["points"]:
            if p["iteration"] == 0:
                continue
            match = min(mine, key=lambda r: (abs(r["points"][0]["tokens"] - p["tokens"]), r["n"]))
            q = match["points"][0]
            if abs(q["tokens"] - p["tokens"]) > tolerance * p["tokens"]:
                continue   # no RandOpt run spent about as much: the figure shows the point, the table does not
            rows.append({"seed": run["seed"], "iteration": p["iteration"], "es_tokens": p["tokens"],
                         "es_accuracy": p["accuracy"], "randopt_n": match["n"], "randopt_tokens": q["tokens"],
                         "randopt_vote": q["accuracy"], "randopt_best_single": q["best_single"]})
    means = []
    for t in sorted({r["iteration"] for r in rows}):
        at = [r for r in rows if r["iteration"] == t]
        means.append({"iteration": t, "seeds": len(at), **{key: float(np.mean([r[key] for r in at])) for key in
                                                           ("es_tokens", "es_accuracy", "randopt_tokens",
                                                            "randopt_vote", "randopt_best_single")}})
    return {"k": k, "tolerance": tolerance, "runs": runs, "rows": rows, "means": means}


def render(d: dict) -> str:
    k = d["k"]
    head = (f"| seed | ES θ_t | ES train tokens | ES test acc | RandOpt N | RandOpt train tokens | top-{k} vote | "
            "best single |\n|---|---|---|---|---|---|---|---|")
    lines = [head] + [f"| {r['seed']} | {r['iteration']} | {r['es_tokens']:,} | {100 * r['es_accuracy']:.1f} | "
                      f"{r['randopt_n']} | {r['randopt_tokens']:,} | {100 * r['randopt_vote']:.1f} | "
                      f"{100 * r['randopt_best_single']:.1f} |" for r in d["rows"]]
    lines += ["", "mean over seeds (test accuracy %):", "",
              f"| ES θ_t | seeds | ES train tokens | ES test acc | RandOpt train tokens | top-{k} vote | best single |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {m['iteration']} | {m['seeds']} | {m['es_tokens']:,.0f} | {100 * m['es_accuracy']:.1f} | "
              f"{m['randopt_tokens']:,.0f} | {100 * m['randopt_vote']:.1f} | {100 * m['randopt_best_single']:.1f} |"
              for m in d["means"]]
    return "\n".join(lines)


def plot(d: dict, out_dir: str, dpi: int = 100) -> list[str]:
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    seeds = sorted({r["seed"] for r in d["runs"]})
    colors = {s: c for s, c in zip(seeds, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)}
    for s in seeds:
        ro = sorted((r for r in d["runs"] if r["algorithm"] == "randopt" and r["seed"] == s),
                    key=lambda r: r["points"][0]["tokens"])
        xs = [r["points"][0]["tokens"] for r in ro]
        ax.plot(xs, [100 * r["points"][0]["accuracy"] for r in ro], "o-", color=colors[s],
                label=f"RandOpt top-{d['k']} vote, seed {s}")
        for r in ro:
            ax.annotate(f"N={r['n']}", (r["points"][0]["tokens"], 100 * r["points"][0]["accuracy"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        for r in (r for r in d["runs"] if r["algorithm"] == "es" and r["seed"] == s):
            ax.plot([p["tokens"] for p in r["points"]], [100 * p["accuracy"] for p in r["points"]], "s--",
                    color=colors[s], alpha=0.8, label=f"ES θ_t (N={r['n']} per iteration), seed {s}")
    ax.set_xlabel("generated train tokens")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("RandOpt vs ES at equal generated train tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "es-vs-randopt.png")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return [path]
