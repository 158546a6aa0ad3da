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

    def counter(self) -> LocalCounter:
        return LocalCounter()


class LocalCounter:
    """The one-process shared counter: 0, 1, 2, ... (MPIComm.counter's methods)."""

    def __init__(self):
        self._next = 0

    def take(self) -> int:
        self._next += 1
        return self._next - 1

    def close(self) -> None:
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

    def counter(self) -> WindowCounter:
        return WindowCounter(self._mpi, self._c)


class WindowCounter:
    """A counter on rank 0 that every rank advances with an atomic fetch-and-add (MPI one-sided, passive
    target), so that a free rank takes the next job without waiting for anyone. Created and closed
    collectively; values are handed out once each, 0, 1, 2, ..., in whatever order the ranks ask.

    An MPI library without hardware atomics or an asynchronous progress thread (PyPI's MPICH: ch4 over ucx/ofi)
    serves another rank's fetch-and-add only when rank 0 itself enters MPI, and rank 0 spends seconds in a
    model between its own takes: measured here, a take waited 3.0 s for rank 0. So rank 0 runs a thread that
    enters MPI every PUMP_S (about 1% of a core); mpi4py initialises MPI with MPI_THREAD_MULTIPLE."""
    PUMP_S = 0.005

    def __init__(self, mpi, comm):
        import threading

        import numpy as np

        self._mpi, self._comm = mpi, comm
        item = np.dtype(np.int64).itemsize
        self._win = mpi.Win.Allocate(item if comm.Get_rank() == 0 else 0, item, comm=comm)
        self._stop, self._pump = threading.Event(), None
        if comm.Get_rank() == 0:
            self._win.Lock(0, mpi.LOCK_EXCLUSIVE)
            np.frombuffer(self._win.tomemory(), dtype=np.int64)[0] = 0
            self._win.Unlock(0)
            if mpi.Query_thread() == mpi.THREAD_MULTIPLE and comm.Get_size() > 1:
                self._pump = threading.Thread(target=self._progress, name="mpi-progress", daemon=True)
                self._pump.start()
        comm.Barrier()   # nobody takes before the counter is zeroed
        self._one, self._got = np.ones(1, np.int64), np.zeros(1, np.int64)

    def _progress(self) -> None:
        while not self._stop.wait(self.PUMP_S):
            self._comm.Iprobe(self._mpi.ANY_SOURCE, self._mpi.ANY_TAG)

    def take(self) -> int:
        mpi = self._mpi
        self._win.Lock(0, mpi.LOCK_SHARED)
        self._win.Fetch_and_op([self._one, mpi.INT64_T], [self._got, mpi.INT64_T], 0, 0, mpi.SUM)
        self._win.Unlock(0)
        return int(self._got[0])

    def close(self) -> None:
        self._stop.set()
        if self._pump:
            self._pump.join()
        self._win.Free()


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
