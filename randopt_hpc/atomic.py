"""Files that are either whole or absent: write to a temporary name, fsync, rename, fsync the folder.

A reader (a rerun, status, the launcher, tools/) never sees half a run.yaml or half a results.h5, even
after a kill -9, a full disk or a node crash. Temporaries carry host and pid in their name, so that a
stale one (its writer dead) can be told from one being written.

Fault points: `reach(point)` is where tests make a process die in the middle of a write (the
RANDOPT_FAULT adapter in randopt_hpc.environment installs them); in production nothing is installed
and reach() is a dictionary lookup.
"""
from __future__ import annotations

import errno
import os
import socket
import tempfile

_FAULTS: dict[str, object] = {}


def install_fault(point: str, action) -> None:
    _FAULTS[point] = action


def reach(point: str) -> None:
    action = _FAULTS.get(point)
    if action is not None:
        action()


def temp_name(final: str) -> str:
    return f"{final}.tmp-{socket.gethostname()}-{os.getpid()}"


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:     # some network file systems cannot fsync a folder; the data is synced
            raise
    finally:
        os.close(fd)


def publish(tmp: str, final: str) -> None:
    """Move a finished temporary file into place: its data durable first, then the name."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(final))


def write_bytes(final: str, data: bytes, fault_point: str | None = None) -> None:
    tmp = temp_name(final)
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            if fault_point:
                f.flush()
                reach(fault_point)
            f.write(data[half:])
        publish(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_text(final: str, text: str, fault_point: str | None = None) -> None:
    write_bytes(final, text.encode("utf-8"), fault_point)


def remove_temporaries(folder: str, names: tuple[str, ...]) -> list[str]:
    """Remove `NAME.tmp-*` left in `folder` by writers that died; call only while no other writer can be
    at work there (the run folder's lock is held). Returns what was removed."""
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        if any(entry.startswith(f"{name}.tmp-") for name in names):
            _remove(os.path.join(folder, entry))
            removed.append(entry)
    return removed


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def folder_problem(path: str) -> str | None:
    """Why a folder cannot be made or filled at `path` (one phrase), or None: found before any work, not when the
    finished output is written."""
    full = os.path.abspath(path) if path else ""
    if not full:
        return "an empty path"
    if os.path.lexists(full) and not os.path.isdir(full):
        return "exists and is not a folder"
    above = full if os.path.isdir(full) else os.path.dirname(full)
    while not os.path.lexists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        return f"{above} is not a folder"
    try:   # a probe, not os.access: root passes access() where mkdir then fails (/proc, read-only mounts)
        os.rmdir(tempfile.mkdtemp(prefix=".randopt-probe-", dir=above))
    except OSError as e:
        return f"cannot write there ({e.strerror or e})"
    return None
