"""`python -m randopt_hpc.requeue RC`: the batch script's last line, after the run's srun step.

RC 75 means every rank stopped at a candidate boundary (warning signal before the time limit, or
preemption); then this puts the job back in the queue, at most RANDOPT_REQUEUE times, and the
requeued job resumes from the shards. Any other RC is passed through as the job's exit status.
Requeueing here, once srun has returned, and not from inside a rank: `scontrol requeue` kills the
running job, and ranks killed before MPI_Finalize leave MPICH shared-memory segments behind that the
requeued job (same job and step ids) then trips over in MPI_Init (seen with PyPI MPICH, Slurm 22.05).
"""
from __future__ import annotations

import subprocess
import sys

from randopt_hpc.comm import EXIT_PREEMPTED
from randopt_hpc.environment import Environment


def main(argv: list[str] | None = None, environ: dict | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not (argv[0].isascii() and argv[0].isdigit()) or int(argv[0]) > 255:
        print("randopt_hpc.requeue: error: expected one argument, srun's exit status (0..255), got "
              f"{' '.join(map(repr, argv)) or 'none'}; usage: python -m randopt_hpc.requeue EXIT_CODE_OF_SRUN",
              file=sys.stderr)
        return 2
    rc, env = int(argv[0]), Environment.from_os(environ)
    if rc != EXIT_PREEMPTED:
        return rc
    if not env.should_requeue:
        print(f"randopt: stopped (exit {rc}); not requeued (RANDOPT_REQUEUE={env.max_requeues}, restarts "
              f"{env.restart_count}): submit the same job again to resume", file=sys.stderr)
        return rc
    cmd = ["scontrol", "requeue", env.requeue_id]
    print(f"randopt: stopped (exit {rc}); requeueing Slurm job {env.requeue_id} (restart "
          f"{env.restart_count + 1} of at most {env.max_requeues})", file=sys.stderr, flush=True)
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        detail = (getattr(e, "stderr", None) or str(e)).strip()
        print(f"randopt: {' '.join(cmd)} failed ({detail}); submit the same job again to resume", file=sys.stderr)
        return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
