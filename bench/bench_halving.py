"""Full against halving selection on one config over several population seeds: test accuracy of the top-K vote,
generated train tokens and population wall time, each pair run one after the other under the same conditions.

    python bench/bench_halving.py [CONFIG] [--seeds 0 1 2] [--ranks 2] [--k 10] [--out runs/halving] [key=value ...]

Runs `mpiexec -n RANKS python -m randopt_hpc.run CONFIG population.seed=S selection.schedule=full|halving` for
every seed (the halving parameters are the config's, or given as key=value), keeps each results.h5 under --out,
and prints a markdown table: per seed and on average, the top-K vote's test accuracy, the generated train tokens
(population/train_gen_tokens) and the population phase's wall time (the slowest rank's timing/population).
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_grow import ROOT, run  # noqa: E402  (one way to launch a run and time it)

from randopt_hpc.cli import ArgParser, folder_problem, integer  # noqa: E402


def measures(path: str, k: int) -> dict:
    import h5py

    with h5py.File(path) as f:
        ks = f["ensemble/selected/k"][()].tolist()
        tokens = f["population/train_gen_tokens"][()]
        return {"acc": float(f["ensemble/selected/accuracy"][ks.index(k)]), "tokens": int(tokens[tokens >= 0].sum()),
                "seconds": float(f["timing/population"][()].max()),
                "examples": int(f["population/train_examples"][()].sum())}


def main() -> None:
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default="configs/demo.yaml")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--seeds", type=integer(0, 2**63 - 1), nargs="+", default=[0, 1, 2])
    p.add_argument("--ranks", type=integer(1, 64), default=2)
    p.add_argument("--k", type=integer(1, 10**6), default=10)
    p.add_argument("--out", default="runs/halving")
    a = p.parse_args()
    out = os.path.join(ROOT, a.out)
    problem = folder_problem(out)
    if problem:
        p.error(f"argument --out: {a.out}: {problem}")
    from randopt_hpc.config import ConfigError, load_config

    try:   # every run's config (run() starts it in the repository), before the first starts
        for seed in a.seeds:
            for schedule in ("full", "halving"):
                cfg = load_config(os.path.join(ROOT, a.config), [
                    *a.overrides, f"population.seed={seed}", f"selection.schedule={schedule}",
                    f"output.dir={os.path.join(out, f'seed{seed}-{schedule}')}", "output.overwrite=true"],
                    check_paths=False)
                if a.k not in cfg.selection.top_k:
                    p.error(f"--k {a.k}: not one of the config's selection.top_k {list(cfg.selection.top_k)}")
    except ConfigError as e:
        p.error(str(e))
    os.makedirs(out, exist_ok=True)
    rows = []
    for seed in a.seeds:
        got = {}
        for schedule in ("full", "halving"):
            name = os.path.join(out, f"seed{seed}-{schedule}")
            run(a.config, a.ranks, [*a.overrides, f"population.seed={seed}", f"selection.schedule={schedule}",
                                    f"output.dir={name}", "output.overwrite=true"], name + ".log")
            got[schedule] = measures(os.path.join(name, "results.h5"), a.k)
        rows.append((seed, got["full"], got["halving"]))
        print(f"seed {seed} done", file=sys.stderr, flush=True)
    print(f"# bench_halving: {a.config} {' '.join(a.overrides)}, {a.ranks} ranks, top-{a.k} vote")
    print(f"| seed | top-{a.k} full | top-{a.k} halving | train tokens full | halving | x fewer "
          "| population s full | halving | x less |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed, f, h in rows:
        print(f"| {seed} | {f['acc']:.3f} | {h['acc']:.3f} | {f['tokens']:,} | {h['tokens']:,} | "
              f"{f['tokens'] / h['tokens']:.2f} | {f['seconds']:.1f} | {h['seconds']:.1f} | "
              f"{f['seconds'] / h['seconds']:.2f} |")
    mean = {s: {m: float(np.mean([r[i][m] for r in rows])) for m in ("acc", "tokens", "seconds")}
            for i, s in ((1, "full"), (2, "halving"))}
    f, h = mean["full"], mean["halving"]
    print(f"| mean | {f['acc']:.3f} | {h['acc']:.3f} | {f['tokens']:,.0f} | {h['tokens']:,.0f} | "
          f"{f['tokens'] / h['tokens']:.2f} | {f['seconds']:.1f} | {h['seconds']:.1f} | "
          f"{f['seconds'] / h['seconds']:.2f} |")
    print(f"halving - full, top-{a.k} test accuracy, mean over seeds: {100 * (h['acc'] - f['acc']):+.1f} points")


if __name__ == "__main__":
    main()
