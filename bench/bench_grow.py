"""What growing a run saves: a fresh run at N against the same run at N/2 grown to N, and a K added afterwards.

    python bench/bench_grow.py [CONFIG] [--n 64] [--ranks 2] [--add-k 3] [--out runs/bench-grow]

Runs `mpiexec -n RANKS python -m randopt_hpc.run CONFIG` four times, one after the other (fresh N; N/2 in
another folder; that folder at N; then with K added), prints each one's wall time and what it computed
(from its log), and checks that the grown folder's results equal the fresh run's (`comparable()`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from randopt_hpc.cli import ArgParser, folder_problem, integer  # noqa: E402


def run(config: str, ranks: int, overrides: list[str], log: str) -> float:
    me = os.path.basename(sys.argv[0])
    mpiexec = shutil.which("mpiexec") or sys.exit(f"{me}: mpiexec not found on PATH")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "randopt_hpc.run", config, *overrides]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"{me}: {' '.join(cmd)} exited {code}; see {log}")
    return time.perf_counter() - t0


def computed(log: str) -> str:
    """What a run evaluated, from its log: candidates done before it started, and the test jobs it found done."""
    text = open(log, encoding="utf-8").read()
    start = re.search(r"(\d+) candidates, (\d+) with train answers already", text)   # every rank logs it alike
    new = int(start[1]) - int(start[2]) if start else 0
    jobs = re.findall(r"test answers: jobs (\d+)/(\d+)", text)
    first, total = (int(jobs[0][0]), int(jobs[0][1])) if jobs else (0, 0)
    return f"{new} candidates evaluated, {total - first} of {total} test jobs answered"


def out_problem(out: str) -> str | None:
    """Why --out cannot be this bench's folder (it is emptied first): not a folder that can be made, or one that
    holds anything but an earlier bench_grow's run folders and logs."""
    problem = folder_problem(out)
    if problem or not os.path.isdir(out):
        return problem
    root, here = os.path.realpath(ROOT), os.path.realpath(out)
    if root == here or root.startswith(os.path.join(here, "")):
        return "holds the repository; it would be deleted"
    other = sorted(f for f in os.listdir(out) if f not in ("fresh", "grown") and not f.endswith(".log"))
    if other:
        return f"is emptied first and holds more than an earlier bench_grow's output ({', '.join(other[:3])})"
    return None


def main() -> None:
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default="configs/demo.yaml")
    p.add_argument("--n", type=integer(2, 10**5), default=64, help="the fresh run's N (the grown run starts at N/2)")
    p.add_argument("--ranks", type=integer(1, 64), default=2)
    p.add_argument("--add-k", type=integer(1, 10**5), default=3)
    p.add_argument("--out", default="runs/bench-grow", help="emptied and refilled (relative to the repository)")
    a = p.parse_args()
    out = os.path.join(ROOT, a.out)
    problem = out_problem(out)
    if problem:
        p.error(f"argument --out: {a.out}: {problem}")
    from randopt_hpc.config import ConfigError, load_config

    config = os.path.join(ROOT, a.config)
    try:
        ks = sorted(set(load_config(config, check_paths=False).selection.top_k) | {a.add_k})
        for n, k in ((a.n // 2, None), (a.n, None), (a.n, ks)):   # every run's config, before the first starts
            load_config(config, [f"population.size={n}", *([f"selection.top_k={k}"] if k else []),
                                 f"output.dir={out}", "output.overwrite=false"], check_paths=False)
    except ConfigError as e:
        p.error(str(e))
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    fresh, grown = os.path.join(out, "fresh"), os.path.join(out, "grown")
    steps = [("fresh", fresh, [f"population.size={a.n}"]),
             (f"N={a.n // 2}", grown, [f"population.size={a.n // 2}"]),
             (f"grown to N={a.n}", grown, [f"population.size={a.n}"]),
             (f"K={a.add_k} added", grown, [f"population.size={a.n}", f"selection.top_k={ks}"])]
    print(f"# bench_grow: {a.config}, {a.ranks} ranks, N={a.n}")
    walls = {}
    for name, folder, overrides in steps:
        log = os.path.join(out, re.sub(r"\W+", "-", name) + ".log")
        walls[name] = run(a.config, a.ranks, [*overrides, f"output.dir={folder}", "output.overwrite=false"], log)
        print(f"{name:<18} {walls[name]:7.1f} s   {computed(log)}")
        if name.startswith("grown"):
            from randopt_hpc.results import comparable, differences

            x, y = comparable(os.path.join(fresh, "results.h5")), comparable(os.path.join(grown, "results.h5"))
            same = not differences(x, y)
            print(f"grown results equal to the fresh run's (comparable()): {same}")
            if not same:
                sys.exit(1)
    ratio = walls[f"grown to N={a.n}"] / walls["fresh"]
    print(f"growing N={a.n // 2} -> {a.n} took {ratio:.2f} of a fresh N={a.n} run")


if __name__ == "__main__":
    main()
