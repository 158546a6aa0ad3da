"""The launch environment as an object, and the communicator: the MPI world or a serial stand-in.

Only this module imports mpi4py, and only when the process was launched by an MPI launcher
(mpiexec, srun) or runtime.comm=mpi asks for it.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

# Variables through which launchers tell a process its place in the world.
_RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS")
_LOCAL_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


@dataclass(frozen=True)
class Fault:
    """Test hook RANDOPT_FAULT=rank:R:candidate:C: rank R raises when it starts candidate C."""
    rank: int
    candidate: int

    @staticmethod
    def parse(text: str | None) -> "Fault | None":
        if not text:
            return None
        parts = text.split(":")
        if len(parts) != 4 or parts[0] != "rank" or parts[2] != "candidate" \
                or not parts[1].isdigit() or not parts[3].isdigit():
            raise ValueError(f"RANDOPT_FAULT: expected rank:R:candidate:C, got {text!r}")
        return Fault(int(parts[1]), int(parts[3]))


EXIT_PREEMPTED = 75   # EX_TEMPFAIL: stopped on request at a candidate boundary; rerun or requeue to resume


class Preempted(Exception):
    """Raised at a candidate boundary after SIGTERM/SIGUSR1: the shard is flushed, nothing is half done."""


class StopSignals:
    """SIGTERM (Slurm's preemption and time limit), SIGUSR1 (`sbatch --signal=USR1@...`) and SIGUSR2
    (submitit's warning signal) only set a flag; the run loop checks it between candidates, so a signal
    never interrupts a write. Installed after submitit's own handlers, so they replace its requeue-now."""
    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")

    def __init__(self):
        import signal

        self.received: str | None = None
        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), self._note)

    def _note(self, signum, frame) -> None:
        import signal

        self.received = signal.Signals(signum).name

    def check(self, where: str) -> None:
        if self.received:
            raise Preempted(f"{self.received} received; stopped before {where}")


@dataclass(frozen=True)
class Environment:
    launched_rank: int | None     # what the launcher says, before MPI is initialised
    launched_size: int | None
    local_rank: int
    hostname: str
    slurm_job_id: str | None
    fault: Fault | None
    cuda_visible: str | None = None     # CUDA_VISIBLE_DEVICES as launched (Slurm's binding, if any)
    max_requeues: int = 0               # RANDOPT_REQUEUE=N: a stopped Slurm job requeues itself up to N times
    restart_count: int = 0              # SLURM_RESTART_COUNT: requeues so far
    slurm_array_task: str | None = None  # "ARRAYJOB_TASK" in a job array: the id that requeues this task alone

    @staticmethod
    def from_os(environ: dict | None = None) -> "Environment":
        env = os.environ if environ is None else environ
        first = lambda names: next((int(env[n]) for n in names if env.get(n, "").isdigit()), None)  # noqa: E731
        return Environment(
            launched_rank=first(_RANK_VARS), launched_size=first(_SIZE_VARS),
            local_rank=first(_LOCAL_VARS) or 0, hostname=socket.gethostname(),
            slurm_job_id=env.get("SLURM_JOB_ID"), fault=Fault.parse(env.get("RANDOPT_FAULT")),
            cuda_visible=env.get("CUDA_VISIBLE_DEVICES"),
            max_requeues=first(("RANDOPT_REQUEUE",)) or 0, restart_count=first(("SLURM_RESTART_COUNT",)) or 0,
            slurm_array_task=(f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
                              if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID") else None))

    @property
    def requeue_id(self) -> str | None:
        """What `scontrol requeue` takes for this job: the last task of an array shares SLURM_JOB_ID with
        the array itself, and requeueing that id requeues every task (seen on Slurm 22.05)."""
        return self.slurm_array_task or self.slurm_job_id

    @property
    def should_requeue(self) -> bool:
        """Whether a stopped run asks Slurm to requeue its job (the launcher and jobs/*.sbatch set it)."""
        return self.slurm_job_id is not None and self.restart_count < self.max_requeues

    def rank_gpus(self, per_rank: int) -> str | None:
        """CUDA_VISIBLE_DEVICES for this rank's `per_rank` GPUs, or None to leave it as it is.

        Slurm's per-task binding (--gpus-per-task) already shows each rank only its own GPUs: keep it.
        Otherwise (mpiexec on a multi-GPU node, or srun without binding) the node's ranks split the
        visible devices by local rank. The list is only ever narrowed, never cleared."""
        visible = [d.strip() for d in (self.cuda_visible or "").split(",") if d.strip()]
        if visible and len(visible) <= per_rank:
            return None
        lo, hi = self.local_rank * per_rank, (self.local_rank + 1) * per_rank
        if not visible:   # nothing set: device ordinals
            return ",".join(str(i) for i in range(lo, hi))
        if hi > len(visible):
            raise RuntimeError(f"local rank {self.local_rank} needs {per_rank} GPU(s) but this node shows "
                               f"{len(visible)} ({','.join(visible)})")
        return ",".join(visible[lo:hi])

    @property
    def under_launcher(self) -> bool:
        return self.launched_size is not None

    @property
    def is_first(self) -> bool:
        """Rank 0, or a plain process: the one that prints errors that every rank would print alike."""
        return not self.launched_rank


class SerialComm:
    """The one-process world, with the methods of MPIComm."""
    rank, size, mpi_version = 0, 1, "none (serial)"

    def allgather(self, obj: Any) -> list:
        return [obj]

    def gather(self, obj: Any, root: int = 0) -> list:
        return [obj]

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def barrier(self) -> None:
        pass

    def wait_all(self, timeout_s: float) -> bool:
        return True

    def abort(self, code: int = 1) -> None:
        # Nothing to tear down; the caller re-raises.
        pass


class MPIComm:
    def __init__(self):
        from mpi4py import MPI

        self._mpi = MPI
        self._c = MPI.COMM_WORLD
        self.rank, self.size = self._c.Get_rank(), self._c.Get_size()
        self.mpi_version = MPI.Get_library_version().splitlines()[0].strip()

    def allgather(self, obj: Any) -> list:
        return self._c.allgather(obj)

    def gather(self, obj: Any, root: int = 0) -> list | None:
        return self._c.gather(obj, root=root)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self._c.bcast(obj, root=root)

    def barrier(self) -> None:
        self._c.Barrier()

    def wait_all(self, timeout_s: float) -> bool:
        """A barrier that gives up after timeout_s (True when every rank arrived). A stopped rank uses
        it to wait for the others to reach their own candidate boundary without risking a hang."""
        req = self._c.Ibarrier()
        deadline = time.monotonic() + timeout_s
        while not req.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def abort(self, code: int = 1) -> None:
        # Ends every rank: the others may be blocked in a collective that will never complete.
        logging.getLogger("randopt_hpc").error("aborting the MPI world (exit %d)", code)
        for h in logging.getLogger("randopt_hpc").handlers:
            h.flush()
        sys.stderr.flush()
        # Hydra kills every process as soon as the abort reaches it, without draining their output
        # pipes: seen in CI as a fault whose traceback never reached the terminal. A moment's pause
        # lets the launcher forward this rank's last lines; a failing job can spare it.
        time.sleep(1.0)
        self._c.Abort(code)


def make_comm(mode: str, env: Environment):
    if mode == "serial" or (mode == "auto" and not env.under_launcher):
        return SerialComm()
    return MPIComm()


def setup_logging(rank: int, size: int) -> logging.Logger:
    log = logging.getLogger("randopt_hpc")
    log.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}/{size}] %(message)s", "%H:%M:%S"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log
