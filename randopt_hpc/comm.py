"""The communicator (the MPI world or a serial stand-in), per-rank logging, and stopping at a boundary.

Only this module imports mpi4py, and only when the process was launched by an MPI launcher
(mpiexec, srun) or runtime.comm=mpi asks for it.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

EXIT_PREEMPTED = 75   # EX_TEMPFAIL: stopped on request at a candidate boundary; rerun or requeue to resume
EXIT_INTERRUPTED = 130   # the shell's code for Ctrl-C: stopped at a boundary as for SIGTERM, but not requeued


class Preempted(Exception):
    """Raised at a candidate boundary after SIGTERM/SIGUSR1: the shard is flushed, nothing is half done."""


class StopFlag:
    """A request to stop at the next candidate boundary. Signals only set it (`install_signals`); the run
    loop checks it between candidates, so a stop never interrupts a write. Tests set it directly."""

    def __init__(self):
        self.received: str | None = None

    def request(self, reason: str) -> None:
        self.received = reason

    def check(self, where: str) -> None:
        if self.received:
            raise Preempted(f"{self.received} received; stopped before {where}")


STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")


def install_signals(flag: StopFlag) -> StopFlag:
    """SIGTERM (Slurm's preemption and time limit), SIGUSR1 (`sbatch --signal=USR1@...`), SIGUSR2
    (submitit's warning signal) and SIGINT (Ctrl-C) set the flag. Installed after submitit's own handlers,
    so they replace its requeue-now. A second Ctrl-C does not wait for the boundary: KeyboardInterrupt."""
    import signal

    def note(signum, frame):
        name = signal.Signals(signum).name
        if name == "SIGINT" and flag.received == "SIGINT":
            raise KeyboardInterrupt
        flag.request(name)

    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), note)
    return flag


def exit_code(stop: StopFlag) -> int:
    """What a run stopped at a boundary exits with: 130 after Ctrl-C (a person asked; no requeue), else 75."""
    return EXIT_INTERRUPTED if stop.received == "SIGINT" else EXIT_PREEMPTED


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


def make_comm(mode: str, env):
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
