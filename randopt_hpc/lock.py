"""The run folder's lock: one run at a time writes a folder.

Rank 0 holds `output.dir/.lock` for the run's life. The file is created with O_EXCL (atomic on local and
on parallel file systems, unlike flock, which Lustre and GPFS may not honour across nodes) and names its
holder: host, pid and the pid's start time, and the Slurm job. A lock whose holder is gone is stale and
is taken over: on the same host when the pid no longer runs (or is another process now), and anywhere
when its Slurm job is this job (a requeued job's earlier incarnation is dead) or Slurm says the job has
ended. A holder that cannot be checked (another host, no Slurm) is presumed alive: the message says how
to remove the lock when you know better.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass

LOCK = ".lock"


class LockError(Exception):
    """Another run holds the folder; the message is one line naming it."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    pid_start: str | None        # /proc/PID/stat start time: tells a reused pid from the holder
    slurm_job: str | None
    restart: int
    since: str

    @staticmethod
    def me(env) -> Holder:
        return Holder(host=env.hostname, pid=os.getpid(), pid_start=_start_time(os.getpid()),
                      slurm_job=env.slurm_job_id, restart=env.restart_count,
                      since=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))

    def describe(self) -> str:
        job = f", Slurm job {self.slurm_job}" if self.slurm_job else ""
        return f"pid {self.pid} on {self.host}{job}, since {self.since}"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc, None where there is no such entry."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name may hold spaces and parentheses: fields count from the last ')'.
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), fields[19].decode()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _slurm_job_running(job: str) -> bool | None:
    """Whether Slurm still runs (or queues) the job; None when Slurm cannot be asked."""
    try:
        p = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if p.returncode != 0:
        return False if "Invalid job id" in p.stderr else None
    return bool(p.stdout.strip())


def stale(holder: Holder, env) -> bool:
    """Whether `holder` is certainly gone (see the module docstring)."""
    if holder.slurm_job and env.slurm_job_id and holder.slurm_job == env.slurm_job_id:
        return holder.restart < env.restart_count or (holder.host == env.hostname and not _alive(holder))
    if holder.host == env.hostname:
        return not _alive(holder)
    if holder.slurm_job:
        return _slurm_job_running(holder.slurm_job) is False
    return False


def _alive(holder: Holder) -> bool:
    stat = _proc_stat(holder.pid)
    if stat is not None and stat[0] in ("Z", "X"):
        return False            # exited, not yet reaped (an MPI abort's ranks linger so for a second or two)
    start = stat[1] if stat else None
    if start is None:
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return holder.pid_start is None   # no /proc here: a live pid is all there is to go on
    return holder.pid_start in (None, start)


class RunLock:
    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK)
        self.held = False

    def holder(self) -> Holder | None:
        """The lock's holder; None when unlocked, UNREADABLE when the file does not hold one (being
        written by a starter right now, or torn by a crash while it was)."""
        return _read(self.path)

    def check(self, env) -> None:
        """LockError when a live run holds the folder: lets every rank refuse before MPI starts (acquire,
        on rank 0 after MPI starts, stays the authority)."""
        holder = self.holder()
        if holder not in (None, UNREADABLE) and not stale(holder, env):
            raise LockError(self._held_message(holder))

    def _held_message(self, holder) -> str:
        return (f"output.dir: {os.path.dirname(self.path)} is in use by another run ({holder.describe()}); "
                f"wait for it, or remove {self.path} if you know that run is gone")

    def acquire(self, env) -> str | None:
        """Take the lock for this process; returns a description of the stale holder it replaced, if any,
        or raises LockError."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        me = Holder.me(env)
        took_over = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue            # released between our two looks
                if holder is UNREADABLE:
                    if _age(self.path) < UNREADABLE_GRACE_S:   # a starter between its create and its write
                        time.sleep(0.2)
                        continue
                elif not stale(holder, env):
                    raise LockError(self._held_message(holder)) from None
                self._take_over(holder)
                took_over = "an unreadable lock file" if holder is UNREADABLE else holder.describe()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(me), f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return took_over
        raise LockError(f"output.dir: could not take {self.path} (other runs are starting at the same time)")

    def _take_over(self, seen) -> None:
        """Remove a stale lock, unless another starter replaced it meanwhile (then put theirs back)."""
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read(aside) != seen:
            try:
                os.link(aside, self.path)   # never over a lock created since
            except FileExistsError:
                pass
        os.remove(aside)

    def release(self) -> None:
        if self.held:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self.held = False


UNREADABLE = Holder(host="?", pid=-1, pid_start=None, slurm_job=None, restart=0, since="?")
UNREADABLE_GRACE_S = 5.0


def _read(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return Holder(**json.load(f))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return UNREADABLE


def _age(path: str) -> float:
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return 0.0
