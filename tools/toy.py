"""The paper's 1-D toy (§3) end to end: needle, plateau and thicket in numbers (issue 19).

    python -m tools.toy [--seeds 0 1 2] [--ranks 2] [--out docs] [--runs runs/toy]

(a) builds the three base models with tools.pretrain_toy where their folder is missing (pretraining seed
fixed: the population seed varies, not the base model); (b) runs configs/toy-{needle,plateau,thicket}.yaml
for each population seed under `mpiexec -n RANKS python -m randopt_hpc.run` (a finished folder says so and
is left alone); (c) reads each results.h5: test MSE of the base, of the best single candidate (the top-1
member), of the top-K ensemble (the mean rollout, ensemble/selected/voted_key) and of the random control
ensemble of the same K, and two train-split densities; (d) prints the table and writes it to OUT/toy.md
(between the markers below; the rest of that file is kept); (e) draws OUT/plots/toy-<phase>.png and
OUT/plots/toy-density.png.

δ is the project's own (tools.analyze density): the share of the N candidates whose train accuracy is at
least the base's + m, a rollout being right when its MSE is under randopt_hpc.tasks.toy.CORRECT_MSE (an
absolute bar: an expert for that curve). δ_MSE is the share whose train MSE is at most (1 - m) × the base's:
it counts a candidate that is less wrong than a bad base as better, expert or not.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from randopt_hpc import signals
from randopt_hpc.cli import ArgParser, integer, new_folder
from randopt_hpc.tasks.toy import CORRECT_MSE, mse, rollout_of
from tools import metrics, tables
from tools.runfile import open_results, strings

ROOT = Path(__file__).resolve().parents[1]
# phase -> (config, model folder under RUNS/models, tools.pretrain_toy --pretrain)
PHASES = {"needle": ("configs/toy-needle.yaml", "xavier", "none"),
          "plateau": ("configs/toy-plateau.yaml", "line", "line"),
          "thicket": ("configs/toy-thicket.yaml", "mixed", "mixed")}
PRETRAIN_SEED = 0
MARGIN, REL_MARGIN = 0.04, 0.1           # the table's margins: 2 more right of 50 train curves; 10% less MSE
ACC_GRID, REL_GRID = np.round(np.arange(0.02, 0.2001, 0.02), 6), np.round(np.arange(0, 0.9001, 0.02), 6)
EXAMPLE = 0                              # the test curve drawn for every phase (the first; not picked)
BEGIN, END = "<!-- tools.toy: begin (generated) -->", "<!-- tools.toy: end -->"
COLOURS = {"needle": "tab:gray", "plateau": "tab:orange", "thicket": "tab:green"}


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def pretrain(runs: Path) -> None:
    for _, name, recipe in PHASES.values():
        folder = runs / "models" / name
        if (folder / "model.safetensors").exists():   # written last by save_mlp
            continue
        print(f"pretraining {folder} (--pretrain {recipe} --seed {PRETRAIN_SEED})", flush=True)
        subprocess.run([sys.executable, "-m", "tools.pretrain_toy", str(folder), "--pretrain", recipe,
                        "--seed", str(PRETRAIN_SEED)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def run_all(runs: Path, seeds: list[int], ranks: int) -> None:
    for phase, (config, name, _) in PHASES.items():
        for s in seeds:
            out = runs / phase / f"seed{s}"
            cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "randopt_hpc.run", config,
                   f"model.path={runs / 'models' / name}", f"population.seed={s}", f"output.dir={out}"]
            t0 = time.perf_counter()
            out.parent.mkdir(parents=True, exist_ok=True)
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            with open(runs / phase / f"seed{s}.log", "a", encoding="utf-8") as log:
                log.write(f"$ {shlex.join(cmd)}\n{p.stdout}{p.stderr}")
            if p.returncode != 0:
                sys.exit(f"tools.toy: {shlex.join(cmd)} failed ({p.returncode}); see {runs / phase}/seed{s}.log")
            done = "already finished" if "already finished" in p.stderr else f"{time.perf_counter() - t0:.0f} s"
            print(f"{phase} seed {s}: {done}", flush=True)


def _rollouts(keys) -> list:
    return [rollout_of(k) if k else None for k in keys]


def _mse(rollouts, truth) -> tuple[float, int]:
    """(mean MSE over the curves with a rollout, how many had none: a diverged, non-finite rollout)."""
    errs = [mse(r, t) for r, t in zip(rollouts, truth) if r is not None]
    return (float(np.mean(errs)) if errs else float("nan")), len(truth) - len(errs)


def read(path: Path) -> dict:
    with open_results(str(path)) as f:
        truth = [json.loads(t) for t in strings(f, "data/test_truth")]
        k = int(max(f["selection/top_k"][()]))
        ik = list(f["ensemble/selected/k"][()]).index(k)
        roll = {"base": _rollouts(strings(f, "base/test_key")),
                "best single": _rollouts(strings(f, "ensemble/selected/test_key")[0]),
                f"top-{k} mean": _rollouts(strings(f, "ensemble/selected/voted_key")[ik]),
                f"control-{k} mean": _rollouts(strings(f, "ensemble/control/voted_key")[ik])}
        controls = [_rollouts(row[EXAMPLE:EXAMPLE + 1])[0] for row in strings(f, "ensemble/control/test_key")]
        pop_acc = f["population/train_correct"][()].mean(axis=1)
        base_acc = float(f["base/train_correct"][()].mean())
        pop_mse = -metrics.mean_scores(f["population/train_reward"][()])
        base_mse = -float(metrics.mean_scores(f["base/train_reward"][()]))
        sigma = float(f["population/sigma"][0])
        context = json.loads(strings(f, "data/test_prompt")[EXAMPLE])
    rel = -pop_mse / base_mse   # ≥ -1 + m  <=>  train MSE ≤ (1 - m) × the base's
    test = {name: _mse(r, truth) for name, r in roll.items()}
    return {"k": k, "sigma": sigma, "n": len(pop_acc), "test": test, "base_train_mse": base_mse,
            "delta": metrics.density(pop_acc, base_acc, ACC_GRID)["density"],
            "delta_mse": metrics.density(rel, -1.0, REL_GRID)["density"],
            "example": {"context": context, "truth": truth[EXAMPLE], "controls": controls,
                        **{name: r[EXAMPLE] for name, r in roll.items()}}}


def table(res: dict, seeds: list[int]) -> tuple[list[str], list[list]]:
    k = next(iter(res.values()))["k"]
    heads = ["phase", "seed", "σ", "base", "best single", f"top-{k} mean", f"control-{k} mean",
             f"δ(m={MARGIN:g})", f"δ_MSE(m={REL_MARGIN:g})"]
    ia, ir = list(ACC_GRID).index(MARGIN), list(REL_GRID).index(REL_MARGIN)
    rows = []
    for phase in PHASES:
        per = []
        for s in seeds:
            r = res[phase, s]
            per.append([r["test"][h][0] for h in heads[3:7]] + [r["delta"][ia], r["delta_mse"][ir]])
        for s, values in [*zip(seeds, per), ("mean", np.mean(per, axis=0))]:
            rows.append([phase, s, f"{r['sigma']:g}", *(f"{v:.4g}" for v in values[:4]),
                         *(f"{v:.3f}" for v in values[4:])])
    return heads, rows


def plot_example(phase: str, r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex, k = r["example"], r["k"]
    ctx, fut = len(ex["context"]), len(ex["truth"])
    x = signals.grid(ctx, fut)
    xc, xf = x[:ctx], x[ctx:]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, c in enumerate(ex["controls"]):
        if c is not None:
            ax.plot(xf, c, color="black", alpha=0.15, lw=1, label=f"random perturbations ({k})" if i == 0 else None)
    ax.plot(xc, ex["context"], color="tab:blue", lw=3, label="context")
    ax.plot(xf, ex["truth"], color="tab:blue", lw=3, ls="--", label="true future")
    styles = {"base": ("black", 2.5), "best single": ("tab:red", 2), f"top-{k} mean": ("gold", 3),
              f"control-{k} mean": ("tab:purple", 2)}
    for name, (colour, lw) in styles.items():
        if ex[name] is not None:
            err = mse(ex[name], ex["truth"])
            ax.plot(xf, ex[name], color=colour, lw=lw, label=f"{name} (MSE {err:.3g})")
    span = np.concatenate([ex["context"], ex["truth"]])
    lo, hi = span.min(), span.max()
    ax.set_ylim(lo - 0.6 * (hi - lo), hi + 0.6 * (hi - lo))   # a diverging rollout leaves the frame
    ax.set_xlabel("x")
    ax.set_ylabel("signal")
    ax.set_title(f"{phase}: σ = {r['sigma']:g}, N = {r['n']}, test curve {EXAMPLE}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_density(res: dict, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, grid, xlabel in (
            (axes[0], "delta", ACC_GRID, f"m: train accuracy over the base's (right: MSE < {CORRECT_MSE:g})"),
            (axes[1], "delta_mse", REL_GRID, "m: train MSE at most (1 - m) × the base's")):
        for phase in PHASES:
            curves = np.array([res[phase, s][key] for s in seeds])
            ls = "--" if phase == "plateau" else "-"   # needle and plateau may both lie on 0
            for c in curves:
                ax.plot(grid, c, ls, color=COLOURS[phase], alpha=0.3, lw=1)
            ax.plot(grid, curves.mean(axis=0), ls, marker="o", ms=3, color=COLOURS[phase], lw=2,
                    label=f"{phase} (σ = {res[phase, seeds[0]]['sigma']:g}; mean of seeds {seeds}, thin: each)")
        ax.set_xlabel(xlabel)
        ax.set_ylim(bottom=-0.005)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("δ(m): share of the N candidates")
    axes[0].set_title("δ(m), the project's (tools.analyze density): experts", fontsize=10)
    axes[1].set_title("δ_MSE(m): less wrong than the base, expert or not", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(path: Path, command: str, heads: list[str], rows: list[list], res: dict, seeds: list[int]) -> None:
    r = next(iter(res.values()))
    invalid = sorted({(p, s, n, bad) for (p, s), v in res.items() for n, (_, bad) in v["test"].items() if bad})
    body = [BEGIN, "", "```console", f"$ {command}", "```", "",
            f"Test MSE (mean over {len(r['example']['truth'])}-step rollouts of the test curves) of the base, the "
            f"best single candidate (top-1 by train score), the mean rollout of the top {r['k']} and of {r['k']} "
            f"random candidates; N = {r['n']} candidates per run. δ(m = {MARGIN:g}): share of the N candidates "
            f"with train accuracy ≥ the base's + {MARGIN:g} (a rollout is right when its MSE < {CORRECT_MSE:g}); "
            f"δ_MSE(m = {REL_MARGIN:g}): share with train MSE ≤ {1 - REL_MARGIN:g} × the base's.", "",
            tables.markdown(heads, rows, digits=4), ""]
    body += [f"{p} seed {s}: {n} had no finite rollout on {bad} test curves (left out of its mean)"
             for p, s, n, bad in invalid] + ([""] if invalid else [])
    body += [f"![{p}](plots/toy-{p}.png)" for p in PHASES] + ["![density](plots/toy-density.png)", "", END]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + "\n".join(body) + text[text.index(END) + len(END):]
    else:
        text = "# The 1-D toy: needle, plateau, thicket\n\n" + "\n".join(body) + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m tools.toy", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=integer(0, 2**63 - 1), nargs="+", default=[0, 1, 2], help="population seeds")
    p.add_argument("--ranks", type=integer(1, 64), default=2, help="mpiexec -n")
    p.add_argument("--out", type=new_folder, default="docs", help="where toy.md and plots/toy-*.png go")
    p.add_argument("--runs", type=new_folder, default="runs/toy", help="models and run folders")
    a = p.parse_args(argv)
    runs, out = Path(a.runs).resolve(), Path(a.out).resolve()   # the runs' cwd is the repository
    t0 = time.perf_counter()
    pretrain(runs)
    run_all(runs, a.seeds, a.ranks)
    res = {(phase, s): read(runs / phase / f"seed{s}" / "results.h5") for phase in PHASES for s in a.seeds}
    heads, rows = table(res, a.seeds)
    print(tables.markdown(heads, rows, digits=4))
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for phase in PHASES:
        plot_example(phase, res[phase, a.seeds[0]], out / "plots" / f"toy-{phase}.png")
    plot_density(res, a.seeds, out / "plots" / "toy-density.png")
    command = shlex.join(["python", "-m", "tools.toy", *(argv if argv is not None else sys.argv[1:])])
    write_markdown(out / "toy.md", command, heads, rows, res, a.seeds)
    print(f"wrote {out / 'toy.md'} and {out / 'plots'}/toy-*.png in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
