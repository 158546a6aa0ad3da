"""Running model-written Python programs with their tests, each in a fresh, contained process: the caller's side.

A pool of zygotes (interpreters started once, each running randopt_hpc/sandbox_zygote.py as a script) forks
per program, so a batch pays a few forks per program, not an interpreter start each. Here: the pool (`Pool`,
`default_pool`, `run_many`), what a run returns (`Outcome`, `describe`) and `SandboxError`; how a zygote
contains each program is in sandbox_zygote.py. docs/tasks.md says what this guarantees and what it does
not; where the kernel refuses namespaces the zygote falls back and Outcome.isolation says what then holds.
"""
from __future__ import annotations

import atexit
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from randopt_hpc import sandbox_zygote
from randopt_hpc.sandbox_zygote import _ENV, MEMORY_BYTES, _recv, _send
from randopt_hpc.sandbox_zygote import FILE_BYTES as FILE_BYTES
from randopt_hpc.sandbox_zygote import OUTPUT_CAP as OUTPUT_CAP
from randopt_hpc.sandbox_zygote import SANDBOX_ID as SANDBOX_ID
from randopt_hpc.sandbox_zygote import SETUP_FAILED as SETUP_FAILED
from randopt_hpc.sandbox_zygote import TMPFS_OPTIONS as TMPFS_OPTIONS


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (no zygote starts): never a verdict on a program."""


@dataclass(frozen=True)
class Outcome:
    passed: bool        # exited 0 within time after every part ran
    status: str         # passed | failed | timeout | killed | exited-early | error
    seconds: float
    output: str         # stdout and stderr, capped at OUTPUT_CAP bytes
    isolation: str      # what held for this run (describe())


def describe(iso: dict) -> str:
    """One line naming what isolates a zygote's programs, and what is missing."""
    held = [f"uid {iso['uid']}" + (" (user namespace, no capabilities)" if iso.get("userns") else "")]
    held.append("no network" if iso.get("net") else "NETWORK REACHABLE")
    held.append("read-only filesystem" if iso.get("readonly") else
                f"WRITABLE MOUNTS {iso.get('writable') or 'all'}")
    held.append("pid+ipc namespace, private /tmp /dev/shm" + (", private /proc" if iso.get("proc") else "")
                if iso.get("pidns") else f"SHARED PIDS, workdir in {tempfile.gettempdir()}")
    return "; ".join(held) + "; rlimits cpu/as/fsize/nproc=0/core=0"


class _Zygote:
    def __init__(self, namespaces: bool):
        # -I: no PYTHONPATH or user site. A minimal environment, so no secret of the caller's reaches a program;
        # LD_LIBRARY_PATH stays where module systems need it to find libpython.
        env = {**_ENV, **{k: os.environ[k] for k in ("TMPDIR", "LD_LIBRARY_PATH") if os.environ.get(k)}}
        self.proc = subprocess.Popen([sys.executable, "-I", "-B", os.path.abspath(sandbox_zygote.__file__),
                                      *([] if namespaces else ["--no-namespaces"])], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        hello = _recv(self.proc.stdout.fileno(), time.monotonic() + 60)
        if hello is None:
            self.close()
            raise SandboxError("the sandbox's zygote process did not start")
        self.iso = hello["isolation"]

    def run(self, parts: list[str], timeout: float, memory: int) -> dict | None:
        try:
            _send(self.proc.stdin.fileno(), {"parts": parts, "timeout": timeout, "memory": memory})
            return _recv(self.proc.stdout.fileno(), time.monotonic() + timeout + 30)
        except OSError:
            return None

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Pool:
    """`workers` zygotes (default: the CPUs this process may use), each running one program at a time."""

    def __init__(self, workers: int | None = None, memory_bytes: int = MEMORY_BYTES, namespaces: bool = True):
        self.workers = workers or len(os.sched_getaffinity(0))
        self.namespaces = namespaces   # False: the fallback where the kernel refuses them (tests, bench)
        self.memory_bytes = memory_bytes
        self._zygotes: list[_Zygote | None] = [None] * self.workers
        self._lock = threading.Lock()
        self.isolation = ""

    def _zygote(self, i: int) -> _Zygote:
        if self._zygotes[i] is None:
            self._zygotes[i] = _Zygote(self.namespaces)
            self.isolation = describe(self._zygotes[i].iso)
        return self._zygotes[i]

    def _run(self, i: int, parts: list[str], timeout: float) -> Outcome:
        reply = self._zygote(i).run(parts, timeout, self.memory_bytes)
        if reply is None:   # the zygote died or hung (never a program's doing): replace it
            self._zygotes[i].close()
            self._zygotes[i] = None
            reply = {"status": "error", "seconds": timeout, "output": "sandbox zygote lost"}
        return Outcome(passed=reply["status"] == "passed", status=reply["status"], seconds=reply["seconds"],
                       output=reply["output"], isolation=self.isolation)

    def run_many(self, programs: Sequence[Sequence[str]], timeout_s: float = 5.0) -> list[Outcome]:
        """Each program (its pieces, run in order in one namespace) in the sandbox; outcomes in order."""
        programs = [[str(p) for p in parts] for parts in programs]
        free: queue.SimpleQueue = queue.SimpleQueue()
        for w in range(self.workers):
            free.put(w)

        def one(parts: list[str]) -> Outcome:
            w = free.get()
            try:
                return self._run(w, parts, timeout_s)
            finally:
                free.put(w)

        with self._lock:
            if len(programs) <= 1:
                return [one(p) for p in programs]
            with ThreadPoolExecutor(min(self.workers, len(programs))) as pool:
                return list(pool.map(one, programs))

    def close(self) -> None:
        with self._lock:
            for z in self._zygotes:
                if z is not None:
                    z.close()
            self._zygotes = [None] * self.workers


_default: tuple[int, Pool] | None = None
_default_lock = threading.Lock()


def default_pool() -> Pool:
    """The process-wide pool the tasks use, started on first use and closed at exit (a forked child of
    this process gets its own: the zygotes' pipes belong to the process that started them)."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), Pool())
            atexit.register(_default[1].close)
        return _default[1]


def run_many(programs: Sequence[Sequence[str]], timeout_s: float = 5.0) -> list[Outcome]:
    return default_pool().run_many(programs, timeout_s)


def passes(programs: Sequence[Sequence[str] | None], timeout_s: float) -> list[bool]:
    """Whether each program passed, run in one batch; None (nothing to run) does not pass."""
    runnable = [i for i, p in enumerate(programs) if p is not None]
    outcomes = dict(zip(runnable, run_many([programs[i] for i in runnable], timeout_s)))
    return [i in outcomes and outcomes[i].passed for i in range(len(programs))]
