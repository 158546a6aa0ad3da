"""Staging model weights to node-local (or fast) storage before a run reads them.

Hundreds of ranks loading a checkpoint from a shared parallel filesystem at once is the slow start of
many HPC jobs; one copy per node to local disk (or /dev/shm) and every rank of that node reading it
from there is the usual cure. The staged copy is an optimisation only: results name model.path.

Stage directories are often shared with other users (/dev/shm, /tmp are world-writable), so a copy is
trusted only when (1) it sits in a per-user folder that only this user can write, and (2) its files
match model.path: sizes, the safetensors headers and a few sampled blocks of large files, the whole
content of small ones (config, tokenizer, index). Anything else is copied afresh.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import struct
import tempfile
from collections.abc import Callable, Iterator

from randopt_hpc.atomic import folder_problem, fsync_dir, fsync_file

MARKER = ".randopt_staged"
MARKER_FORMAT = 1
FULL_HASH_MAX = 16 << 20        # config, tokenizer, index, generation config: cheap to hash whole
SAMPLE_BYTES = 64 << 10
SAMPLES = 4                     # blocks per large file, the last one at its end (catches truncate + regrow)
SAFETENSORS_HEADER_MAX = 100 << 20   # the format's own limit; a corrupt length must not read a whole shard
_VAR = re.compile(r"\$(\w+|\{[^}]*\})")
# Temporaries carry host and pid so that a later stager on the same host can tell a dead one's leftovers.
_TEMP = re.compile(r"^.+-[0-9a-f]{12}\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+$")
_log = logging.getLogger(__name__)


class _Mismatch(Exception):
    """A staged copy that must not be used; the message says why, for the log."""


def _root(stage_dir: str) -> str:
    root = os.path.expandvars(os.path.expanduser(stage_dir))
    unset = _VAR.search(root)
    if unset:   # expandvars leaves it as is: we would stage into a folder literally named "$TMPDIR"
        raise ValueError(f"runtime.stage_dir: {stage_dir!r} names an environment variable that is not set "
                         f"({unset.group(0)}); set it where the job runs or choose another folder")
    return os.path.abspath(root)


def user_dir(stage_dir: str) -> str:
    """The per-user folder under stage_dir that holds this user's staged models."""
    return os.path.join(_root(stage_dir), f"randopt_hpc-models-{os.geteuid()}")


def staged_path(model_path: str, stage_dir: str) -> str:
    """Where a model is staged: named after the source and its files' sizes and mtimes, so a changed
    checkpoint is staged afresh and an unchanged one is reused by later jobs on the node."""
    src = os.path.abspath(model_path)
    h = hashlib.sha256(src.encode())
    for name in sorted(os.listdir(src)):
        st = os.stat(os.path.join(src, name))
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return os.path.join(user_dir(stage_dir), f"{os.path.basename(src.rstrip('/'))}-{h.hexdigest()[:12]}")


def check_stage_dir(stage_dir: str) -> None:
    """Raise ValueError (one line, starting `runtime.stage_dir: `) unless stage_dir can hold this user's
    staged models safely. Leaves nothing behind (a probe folder is made and removed), so the main program can
    call it before MPI starts."""
    root, mine = _root(stage_dir), user_dir(stage_dir)
    if os.path.exists(root):
        st = os.stat(root)      # follows a symlink: /dev/shm is one on some systems, and root owns it
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError(f"runtime.stage_dir: {root} is not a folder; choose a folder")
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            # Without the sticky bit anyone may rename our folder away and put theirs in its place.
            raise ValueError(f"runtime.stage_dir: {root} is writable by everyone and not sticky (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}), so others could swap the staged model; choose "
                             "a folder only you can write, or one with the sticky bit such as /dev/shm")
    problem = folder_problem(root)   # made, or written into, when the model is staged
    if problem:
        raise ValueError(f"runtime.stage_dir: {root}: {problem}")
    try:
        st = os.lstat(mine)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"runtime.stage_dir: {mine} is a symlink, which staging never makes (someone may have "
                         "planted it); remove it or choose another runtime.stage_dir")
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"runtime.stage_dir: {mine} is not a folder; remove it or choose another runtime.stage_dir")
    if st.st_uid != os.geteuid():
        raise ValueError(f"runtime.stage_dir: {mine} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}), "
                         "so someone else may have planted it; have it removed or choose another runtime.stage_dir")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"runtime.stage_dir: {mine} is writable by group or others (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}), so its contents cannot be trusted; remove it "
                         "(staging makes it again, mode 0700) or choose another runtime.stage_dir")


def stage_model(model_path: str, stage_dir: str, log: Callable[[str], None] | None = None) -> str:
    """Copy model_path under stage_dir unless a verified copy is there; returns its path (staged_path).

    `log` (default: this module's logger at INFO) gets one line saying what happened: reused, copied,
    copied afresh and why, another stager's copy verified, stale temporaries removed.
    Safe when several nodes share stage_dir (fast shared storage rather than local disk): each copies
    into a private temporary folder and renames it; the first rename wins, the rest verify the winner
    and discard theirs."""
    say = log or _log.info
    check_stage_dir(stage_dir)
    mine = user_dir(stage_dir)
    os.makedirs(os.path.dirname(mine), mode=0o700, exist_ok=True)   # made by us: only for us, whatever the umask
    try:
        os.mkdir(mine, 0o700)
        fsync_dir(os.path.dirname(mine))
    except FileExistsError:
        pass
    check_stage_dir(stage_dir)   # again: someone may have planted the folder between the check and mkdir
    _remove_stale(mine, say)
    dest = staged_path(model_path, stage_dir)
    try:
        want = manifest(model_path)
    except _Mismatch as e:
        raise RuntimeError(f"runtime.stage_dir: cannot stage model.path {model_path}: {e}") from None
    seen, problem = _identity(dest), _verify(dest, want)
    if problem is None:
        say(f"staging: reused the verified copy at {dest}")
        return dest
    for _ in range(3):
        tmp = _copy(model_path, dest, want)
        old = _move_aside(dest, seen) if seen else None
        landed = _rename(tmp, dest)
        if old:
            _remove(old)
        if landed:
            fsync_dir(mine)
            say(f"staging: copied {model_path} to {dest}" if seen is None else
                f"staging: the copy at {dest} did not match model.path ({problem}); replaced it with a fresh copy")
            return dest
        _remove(tmp)       # another stager's copy landed first: use it if it is right
        seen, problem = _identity(dest), _verify(dest, want)
        if problem is None:
            say(f"staging: another stager's copy at {dest} landed first; verified it and discarded ours")
            return dest
    raise RuntimeError(f"runtime.stage_dir: could not place a verified copy of {model_path} at {dest} (last "
                       f"problem: {problem}); other stagers keep replacing it: stage one job at a time")


def manifest(folder: str, *, staged: bool = False) -> dict[str, list]:
    """{relative path: [size, digest]} for every file under folder, the marker left out. The source is
    read through symlinks (a Hugging Face cache snapshot is made of them), as the copy is; a staged
    copy must hold only regular files and folders of this user (else _Mismatch)."""
    files = {}
    for rel, path, st in _walk(folder, follow=not staged):
        if staged and stat.S_ISLNK(st.st_mode):
            raise _Mismatch(f"{rel} is a symlink")
        if staged and st.st_uid != os.geteuid():
            raise _Mismatch(f"{rel} is owned by uid {st.st_uid}")
        if stat.S_ISREG(st.st_mode):
            files[rel] = [st.st_size, _digest(path, st.st_size)]
        elif not stat.S_ISDIR(st.st_mode):
            raise _Mismatch(f"{rel} is not a regular file")
    return files


def _walk(top: str, follow: bool) -> Iterator[tuple[str, str, os.stat_result]]:
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(top, rel)) as entries:
            for e in entries:
                if not rel and e.name == MARKER:
                    continue
                st = e.stat(follow_symlinks=follow)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(f"{rel}{e.name}/")
                yield f"{rel}{e.name}", e.path, st


def _digest(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_MAX:
            while block := f.read(1 << 20):
                h.update(block)
            return f"sha256:{h.hexdigest()}"
        if path.endswith(".safetensors"):   # 8-byte little-endian length, then that much JSON: names, shapes, offsets
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            h.update(head + f.read(min(n, size - 8, SAFETENSORS_HEADER_MAX)))
        for i in range(SAMPLES):
            f.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
            h.update(f.read(SAMPLE_BYTES))
    return f"sampled:{h.hexdigest()}"


def _verify(dest: str, want: dict) -> str | None:
    """None when the copy at dest matches the source's manifest, else why not (for the log). The files
    are read again each time: the marker says only what was staged, not what is there now."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return "absent"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    try:
        got = manifest(dest, staged=True)
    except _Mismatch as e:
        return str(e)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    if missing or extra:
        return f"missing file {missing[0]}" if missing else f"extra file {extra[0]}"
    for rel in sorted(want):
        if got[rel][0] != want[rel][0]:
            return f"{rel} has {got[rel][0]} bytes, not {want[rel][0]}"
        if got[rel][1] != want[rel][1]:
            return f"{rel} differs in content"
    try:
        with open(os.path.join(dest, MARKER)) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return "no readable marker (an interrupted or foreign copy)"
    if not isinstance(recorded, dict) or recorded.get("format") != MARKER_FORMAT or recorded.get("files") != want:
        return "its marker records other files"
    return None


def _copy(model_path: str, dest: str, want: dict) -> str:
    """A complete, verified, fsynced copy with its marker, in a private temporary folder beside dest."""
    tmp = tempfile.mkdtemp(prefix=f"{os.path.basename(dest)}.tmp-{socket.gethostname()}-{os.getpid()}-",
                           dir=os.path.dirname(dest))
    try:
        shutil.copytree(model_path, tmp, symlinks=False, dirs_exist_ok=True)
        os.chmod(tmp, 0o700)      # copytree gave it the source's mode, maybe read-only
        try:
            got = manifest(tmp, staged=True)
        except _Mismatch as e:
            got = str(e)
        if got != want:
            raise RuntimeError(f"runtime.stage_dir: model.path {model_path} changed while it was being copied to "
                               f"{tmp}; run again once it is stable")
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"format": MARKER_FORMAT, "source": os.path.abspath(model_path), "files": want}, f)
        _fsync_tree(tmp)
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _move_aside(dest: str, seen: tuple[int, int]) -> str | None:
    """Rename the bad copy that was judged out of dest's way (a folder cannot be renamed over a full one),
    unless another stager has replaced it since; that one is then judged after our rename fails."""
    if _identity(dest) != seen:
        return None
    old = f"{dest}.old-{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.rename(dest, old)
    except FileNotFoundError:
        return None
    return old


def _rename(tmp: str, dest: str) -> bool:
    try:
        os.rename(tmp, dest)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            return False
        raise
    return True


def _remove_stale(mine: str, say: Callable[[str], None]) -> None:
    host = socket.gethostname()
    for name in os.listdir(mine):
        m = _TEMP.match(name)
        # Only this host's: a pid means nothing on another node sharing the stage folder.
        if m and m["host"] == host and not _alive(int(m["pid"])):
            _remove(os.path.join(mine, name))
            say(f"staging: removed {os.path.join(mine, name)}, left by process {m['pid']} on this host, which is gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # someone else's process has that pid now: leave the folder be
        return True
    return True


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _fsync_tree(top: str) -> None:
    """Data before the rename: after a crash the name must never point at a folder of empty files."""
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)
