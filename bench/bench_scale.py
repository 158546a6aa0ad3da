"""Strided against dynamic scheduling with a share of slow candidates, measured, and the simulator checked on it.

    python bench/bench_scale.py [configs/demo.yaml] [--ranks 2 4] [--n 48] [--slow-share 0.2] [--slow-s 2.0]

Each run is the main job under mpiexec with RANDOPT_SLOW making a seeded random share of the candidates
`--slow-s` seconds slower (on whichever rank computes them; the delay is part of the candidate's recorded time).
For every rank count both schedules run one after the other on the same config. Printed per run: the measured
population and test-answer phases (the slowest rank's timing/population and timing/test) and what
`python -m tools.analyze scale` replays from the file's own recorded job times at its ranks and schedule; then
the cross-check that matters for planning: the strided run's recorded times replayed under the dynamic
schedule, against the dynamic run's measured phase. The numbers are for this machine only.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from randopt_hpc.cli import ArgParser, integer, new_folder, number  # noqa: E402


def run(config: str, ranks: int, schedule: str, out: str, slow: str, extra: list[str]) -> None:
    env = dict(os.environ, RANDOPT_SLOW=slow)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "randopt_hpc.run", config, f"output.dir={out}",
           f"runtime.schedule={schedule}", "output.overwrite=true", *extra]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench_scale: {' '.join(cmd)} failed:\n{p.stderr[-3000:]}")


def main() -> int:
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/demo.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    ap.add_argument("--ranks", type=integer(1, 64), nargs="+", default=[2, 4])
    ap.add_argument("--n", type=integer(1, 10**5), default=48)
    ap.add_argument("--test-size", type=integer(1, 10**6), default=200)
    ap.add_argument("--slow-share", type=number(0, 1), default=0.2)
    ap.add_argument("--slow-s", type=number(0, 3600), default=2.0)
    ap.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    ap.add_argument("--keep", type=new_folder, default=None, metavar="DIR", help="Write the run folders here and "
                    "keep them; a run already finished there is not run again (its recorded times are replayed as "
                    "they are).")
    args = ap.parse_args()

    from randopt_hpc.config import ConfigError, load_config

    extra = [f"population.size={args.n}", f"task.test_size={args.test_size}", "selection.top_k=[1,5,10]",
             *args.overrides]
    try:   # the runs' own config (as run() passes it, in the repository), refused here, not by the first mpiexec
        for schedule in ("strided", "dynamic"):
            out = os.path.join(args.keep or tempfile.gettempdir(), f"{schedule}-{args.ranks[0]}")
            load_config(os.path.join(ROOT, args.config), [f"output.dir={out}", f"runtime.schedule={schedule}",
                                                          "output.overwrite=true", *extra], check_paths=False)
    except ConfigError as e:
        ap.error(str(e))

    import h5py

    from tools import scale

    slow_ids = sorted(random.Random(args.seed).sample(range(args.n), round(args.slow_share * args.n)))
    slow = f"{args.slow_s}:{','.join(map(str, slow_ids))}"
    print(f"# bench_scale: {args.config} {' '.join(extra)}; RANDOPT_SLOW: {len(slow_ids)} of {args.n} candidates "
          f"+{args.slow_s} s ({', '.join(map(str, slow_ids))})")
    print("| ranks | schedule | population measured s | replayed s | error | test answers measured s | replayed s "
          "| error |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        tmp = args.keep or scratch
        for ranks in args.ranks:
            rec = {}
            for schedule in ("strided", "dynamic"):
                out = os.path.join(tmp, f"{schedule}-{ranks}")
                if not (args.keep and os.path.exists(os.path.join(out, "results.h5"))):
                    run(args.config, ranks, schedule, out, slow, extra)
                with h5py.File(os.path.join(out, "results.h5")) as f:
                    rec[schedule] = scale.recorded(f, out)
                r, m = rec[schedule], rec[schedule]["measured"]
                own = scale.simulate(r, ranks, schedule)
                print(f"| {ranks} | {schedule} | {m['population']:.1f} | {own['population_s']:.1f} | "
                      f"{100 * (own['population_s'] / m['population'] - 1):+.1f}% | {m['test']:.1f} | "
                      f"{own['test_s']:.1f} | {100 * (own['test_s'] / m['test'] - 1):+.1f}% |", flush=True)
            cross = scale.simulate(rec["strided"], ranks, "dynamic")["population_s"]
            got = rec["dynamic"]["measured"]["population"]
            print(f"| {ranks} | strided's times replayed as dynamic | {got:.1f} (dynamic run) | {cross:.1f} | "
                  f"{100 * (cross / got - 1):+.1f}% | | | |")
            s, d = rec["strided"]["measured"]["population"], got
            print(f"| {ranks} | dynamic / strided, measured | {d / s:.2f} | | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
