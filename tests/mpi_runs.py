"""`mpiexec -n R python -m tests.mpi_runs CONFIG...`: several runs, one after another, in one MPI job.

Each config goes through randopt_hpc.run's own load() and run(), as `python -m randopt_hpc.run` runs it,
less the run-folder lock (the folders are the calling test's own). One process start and one MPI world
for many small runs: on 2 CPU cores, starting `python -m randopt_hpc.run` (imports, MPI, a vLLM engine in
a fresh process) costs more than a tiny model's whole run. The process is set up for the last config
(put the vLLM runs last: their engine runs in this process).
"""
from __future__ import annotations

import gc
import sys

from randopt_hpc.comm import StopFlag, make_comm, setup_logging
from randopt_hpc.environment import Environment, setup_process
from randopt_hpc.run import load, run
from tests.archs import vllm_patches_undone


def main(paths: list[str]) -> int:
    env = Environment.from_os()
    loaded = [load([path], env) for path in paths]
    if any(x is None or x[3] for x in loaded):
        print(f"mpi_runs: a config is finished or refused: {[x and x[3] for x in loaded]}", file=sys.stderr)
        return 2
    last = loaded[-1][0]
    setup_process(last, env)
    comm = make_comm(last.runtime.comm, env)
    log = setup_logging(comm.rank, comm.size)
    for path, (cfg, train, test, _) in zip(paths, loaded, strict=True):
        log.info("mpi_runs: %s (backend %s)", path, cfg.backend)
        try:
            with vllm_patches_undone():
                run(cfg, comm, env, log, train, test, StopFlag())
        except BaseException:
            log.exception("failed")
            comm.abort(1)
            raise
        gc.collect()   # the engine of this run goes before the next one starts
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
