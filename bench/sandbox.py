"""What the code sandbox costs per program, next to a fresh interpreter per program, and the time to score
HumanEval's 164 canonical solutions (and the same with each final `return` made `return None`).

    python bench/sandbox.py [--programs 200] [--fresh 40]

Rows: the sandbox pool as the tasks use it (namespaces, one zygote per CPU this process may use); the same
pool on one worker; the fallback without namespaces; and `python -I -c` started once per program, in
sequence (what 200 programs would cost without a pool). The numbers are for this machine only.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from randopt_hpc.cli import ArgParser, integer  # noqa: E402

PROGRAM = ["def solution(x):\n    return x + 1\n", "assert solution(2) == 3"]


def pool_ms(n: int, workers: int | None, namespaces: bool = True) -> tuple[float, float, str]:
    """(wall ms per program, median ms one program took inside the pool, isolation line)."""
    from randopt_hpc import sandbox

    pool = sandbox.Pool(workers=workers, namespaces=namespaces)
    try:
        pool.run_many([PROGRAM] * pool.workers)   # start the zygotes outside the timing
        start = time.perf_counter()
        outcomes = pool.run_many([PROGRAM] * n)
        wall = (time.perf_counter() - start) / n * 1000
        assert all(o.passed for o in outcomes), {o.status for o in outcomes}
        return wall, statistics.median(o.seconds for o in outcomes) * 1000, pool.isolation
    finally:
        pool.close()


def fresh_ms(n: int) -> float:
    source = "\n".join(PROGRAM)
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, "-I", "-c", source], check=True)
    return (time.perf_counter() - start) / n * 1000


def humaneval() -> list[str]:
    from randopt_hpc.tasks import get_task
    from randopt_hpc.tasks.base import score_all

    task = get_task("humaneval")
    problems = task.packaged_records()
    examples = task.examples_from_records(problems)
    score_all(task, [problems[0]["canonical_solution"]], examples[:1])   # the default pool starts here

    def without_final_return(solution: str) -> str:
        lines = solution.split("\n")
        last = max(i for i, line in enumerate(lines) if line.lstrip().startswith("return"))
        lines[last] = lines[last][:len(lines[last]) - len(lines[last].lstrip())] + "return None"
        return "\n".join(lines)

    rows = []
    for label, completions in (("canonical solutions", [p["canonical_solution"] for p in problems]),
                               ("final return -> return None", [without_final_return(p["canonical_solution"])
                                                                 for p in problems])):
        start = time.perf_counter()
        scored = score_all(task, completions, examples)
        seconds = time.perf_counter() - start
        rows.append(f"  {label:30s} {sum(s.correct for s in scored):3d}/164 pass   {seconds:6.2f} s")
    return rows


def main() -> None:
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=integer(1, 10**6), default=200)
    parser.add_argument("--fresh", type=integer(1, 10**5), default=40,
                        help="programs timed with a fresh interpreter each")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    print(f"# bench/sandbox.py\nmachine: {platform.machine()}, {cpus} cpus usable, Python {platform.python_version()}, "
          f"uid {os.getuid()}")
    print(f"program: {PROGRAM!r}; {args.programs} programs per pool row\n")
    print(f"{'how':44s} {'ms/program':>10s} {'in-pool ms':>10s}")
    isolation = ""
    for label, workers, namespaces in ((f"pool, {cpus} workers (what the tasks use)", None, True),
                                       ("pool, 1 worker", 1, True), ("pool, 1 worker, no namespaces", 1, False)):
        wall, inside, line = pool_ms(args.programs, workers, namespaces)
        isolation = isolation or line
        print(f"{label:44s} {wall:10.1f} {inside:10.1f}")
    print(f"{'fresh `python -I -c` per program, sequential':44s} {fresh_ms(args.fresh):10.1f}")
    print(f"\nisolation: {isolation}\n\nHumanEval through the task (score_many, {cpus} workers):")
    print("\n".join(humaneval()))


if __name__ == "__main__":
    main()
