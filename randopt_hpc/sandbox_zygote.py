"""The sandbox's zygote: what runs model-written programs, each in a fresh, contained process.

randopt_hpc.sandbox starts a pool of zygotes, interpreters that each run this file once as a script
(`python -I -B sandbox_zygote.py`: isolated mode, so it imports the standard library only) and fork per
program. A zygote sits in its own network namespace (no interface up) and mount namespace (every mount
read-only). Per program it forks X, which unshares PID, mount and IPC namespaces and mounts empty
size-capped tmpfs on /tmp and /dev/shm; X forks Y, PID 1 there, which mounts its own /proc, sets rlimits,
drops to uid 65534 (root zygote) or all capabilities (user namespace), and runs the program's pieces in
one namespace dict. The kernel kills whatever Y leaves when it exits. Pass = exit 0 within the wall-clock
limit after the harness wrote "PASS <nonce>" to a pipe, which it does only once every piece returned.
Where the kernel refuses namespaces the zygote falls back and reports what then holds. Also here: the
limits and the message framing both sides share. Importing this module runs nothing.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Sequence

SANDBOX_ID = 65534            # nobody/nogroup: the uid and gid a root zygote's programs run as
OUTPUT_CAP = 64 << 10         # bytes of stdout+stderr kept per program (the rest is read and dropped)
MEMORY_BYTES = 1 << 30        # RLIMIT_AS
FILE_BYTES = 16 << 20         # RLIMIT_FSIZE
TMPFS_OPTIONS = "size=32m,nr_inodes=4096,mode=0700"
SETUP_FAILED = 125
_NEWNS, _NEWIPC, _NEWUSER, _NEWPID, _NEWNET = 0x20000, 0x08000000, 0x10000000, 0x20000000, 0x40000000
_MS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "nosymfollow": 256, "noatime": 1024, "nodiratime": 2048,
       "relatime": 1 << 21}
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 1, 38, 36
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE, _MS_STRICTATIME = 32, 4096, 1 << 14, 1 << 18, 1 << 24
_PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "typing",
            "operator", "random", "statistics", "fractions", "decimal", "copy", "datetime", "traceback")
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _mount(source, target: str, fstype, flags: int, data=None) -> None:
    source, fstype, data = (None if v is None else v.encode() for v in (source, fstype, data))
    _check(_libc.mount(source, target.encode(), fstype, ctypes.c_ulong(flags), data), f"mount {target}")


def _remount_readonly() -> list[str]:
    """Every mount of this (private) mount namespace made read-only, keeping its own flags (a user namespace
    may not clear them); the mount points that refused."""
    refused = []
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])   # "\040" is a space
        opts = fields[5].split(",")
        flags = _MS_REMOUNT | _MS_BIND | _MS["ro"] | sum(_MS.get(o, 0) for o in opts)
        if "noatime" not in opts and "relatime" not in opts:
            flags |= _MS_STRICTATIME
        try:
            _mount(None, point, None, flags)
        except OSError:
            refused.append(point)
    return refused


def _expose(paths) -> None:
    """Let the sandbox uid reach `paths` (the interpreter's own files: pyenv puts them under /root, closed to
    others): each ancestor directory that others may not enter is covered with a tmpfs holding only the
    path's next component, bound back from the original."""
    covered: dict[str, int] = {}   # covered directory -> O_PATH fd of the original beneath it
    for path in sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)}):
        parent = "/"
        for name in path.strip("/").split("/"):
            child = os.path.join(parent, name)
            if parent not in covered and not os.stat(parent).st_mode & 0o001:
                covered[parent] = os.open(parent, os.O_PATH)
                _mount("tmpfs", parent, "tmpfs", _MS["nosuid"] | _MS["nodev"], "size=64k,mode=0755")
            if parent in covered and not os.path.lexists(child):
                original = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=covered[parent])
                if os.path.isdir(f"/proc/self/fd/{original}"):
                    os.mkdir(child)
                else:
                    open(child, "w").close()
                _mount(f"/proc/self/fd/{original}", child, None, _MS_BIND | _MS_REC)
                os.close(original)
            parent = child


def _isolate_zygote(namespaces: bool) -> dict:
    """Private network and read-only mount namespaces for this zygote and all it forks."""
    uid, gid = os.getuid(), os.getgid()
    iso = {"uid": SANDBOX_ID if uid == 0 else uid, "userns": False, "net": False, "readonly": False,
           "writable": None, "pidns": False, "proc": False}
    try:
        if not namespaces:
            raise OSError("namespaces turned off (Pool(namespaces=False))")
        if uid != 0:
            _unshare(_NEWUSER)
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            iso["userns"] = True
        _unshare(_NEWNS | _NEWNET)
        iso["net"] = True
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)   # nothing mounted here may reach the host
        if uid == 0:
            _expose([sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path])
        iso["writable"] = _remount_readonly()
        iso["readonly"] = not iso["writable"]
        iso["pidns"] = True   # confirmed (or withdrawn) by the probe in _zygote_main
    except OSError as e:
        iso["why"] = str(e)
    return iso


def _drop_capabilities() -> None:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")


def _harness(parts: Sequence[str], nonce: bytes, result_fd: int) -> None:
    """Run the parts in order in one namespace; report PASS only after the last returns. The references
    below are taken before the program runs, so rebinding builtins or module attributes cannot reach them."""
    import builtins
    import traceback

    saved, run, compile_, write, exit_ = dict(vars(builtins)), exec, compile, os.write, os._exit
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        for i, source in enumerate(parts):
            if i:   # tests see the real builtins, whatever the program rebound
                vars(builtins).update(saved)
                namespace["__builtins__"] = builtins
            run(compile_(source, f"<part {i}>", "exec"), namespace)
    except BaseException:   # SystemExit included: exiting before the tests is a failure
        try:
            traceback.print_exc(limit=-3)
            sys.stderr.flush()
        finally:
            exit_(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    write(result_fd, b"PASS " + nonce)
    exit_(0)


def _program(req: dict, nonce: bytes, pipes: dict, workdir: str, iso: dict) -> None:
    """Contain this process, then run the program (never returns)."""
    import resource

    try:
        os.setsid()   # kill(0, ...) by the program then reaches no process outside its namespace
    except OSError:
        pass   # already a group leader (no PID namespace): the zygote kills it by pid
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(pipes["out_w"], 1)
    os.dup2(pipes["out_w"], 2)
    os.dup2(pipes["res_w"], 3, inheritable=False)
    os.closerange(4, 1 << 16)   # the zygote's request/response pipes among them
    try:
        os.chdir(workdir)
        cpu = max(1, int(req["timeout"] + 0.999))
        for limit, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, req["memory"]),
                             (resource.RLIMIT_FSIZE, FILE_BYTES), (resource.RLIMIT_NPROC, 0),
                             (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 256)):
            resource.setrlimit(limit, (value, value))
        if os.getuid() == 0:
            os.setgroups([])
            os.setgid(SANDBOX_ID)
            os.setuid(SANDBOX_ID)
        elif iso["userns"]:
            _drop_capabilities()
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")   # exec gains no setuid privileges
        _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)   # die with X (setuid cleared any earlier one)
        os.environ.clear()
        os.environ.update(_ENV, HOME=workdir, TMPDIR=workdir)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    except BaseException as e:
        try:
            os.write(3, f"SETUP {e}".encode()[:200])
        finally:
            os._exit(SETUP_FAILED)
    _harness(req["parts"], nonce, 3)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _child(req: dict, nonce: bytes, pipes: dict, workdir: str, iso: dict) -> None:
    """X: new namespaces, then Y, PID 1 there, runs the program; Y's pid goes to the zygote. Never returns."""
    try:
        os.setpgid(0, 0)
        _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)   # die with the zygote
        if not iso["pidns"]:
            _program(req, nonce, pipes, workdir, iso)
        _unshare(_NEWPID | _NEWNS | _NEWIPC)
        owner = f"uid={iso['uid']},gid={SANDBOX_ID if os.getuid() == 0 else os.getgid()}"
        for point in ("/tmp", "/dev/shm"):
            _mount("tmpfs", point, "tmpfs", _MS["nosuid"] | _MS["nodev"], f"{TMPFS_OPTIONS},{owner}")
        y = os.fork()
        if y == 0:
            try:
                _mount("proc", "/proc", "proc", _MS["nosuid"] | _MS["nodev"] | _MS["noexec"])
            except OSError:
                pass   # the host's /proc stays (read-only); the zygote's probe reports it
            _program(req, nonce, pipes, "/tmp", iso)
        os.write(pipes["ctl_w"], b"%d" % y)
        for fd in pipes.values():
            os.close(fd)
        os._exit(_exit_code(os.waitpid(y, 0)[1]))
    except BaseException as e:
        try:
            os.write(pipes["res_w"], f"SETUP {e}".encode()[:200])
        finally:
            os._exit(SETUP_FAILED)


def _kill(pid: int, ctl_r: int) -> None:
    """SIGKILL to Y (the namespace's init: everything in it dies with it), then to X and its group; both
    reaped before this returns (Y comes to the zygote, a subreaper, once X is gone)."""
    os.set_blocking(ctl_r, False)
    try:
        y = int(os.read(ctl_r, 32) or 0)
    except (OSError, ValueError):
        y = 0
    for target in (y, pid):
        for kill in (os.kill, os.killpg):
            try:
                if target > 0:
                    kill(target, signal.SIGKILL)
            except OSError:
                pass
    os.waitpid(pid, 0)
    try:
        if y > 0:
            os.waitpid(y, 0)
    except ChildProcessError:
        pass   # X reaped it first


def _collect(pid: int, pipes: dict, deadline: float) -> tuple[int | None, bytes, bytes]:
    """(exit code or None on timeout, output, result message)."""
    out_r, res_r = pipes["out_r"], pipes["res_r"]
    buffers, caps = {out_r: bytearray(), res_r: bytearray()}, {out_r: OUTPUT_CAP, res_r: 256}
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    code, live = None, [out_r, res_r]
    while True:
        if code is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = _exit_code(status)
        now = time.monotonic()
        if code is None and now >= deadline:
            _kill(pid, pipes["ctl_r"])
            break
        if code is not None and not live:
            break
        wait = [*live, pidfd] if (code is None and pidfd is not None) else live
        pause = 0.2 if code is not None else (deadline - now if pidfd is not None else min(0.002, deadline - now))
        ready, _, _ = select.select(wait, [], [], max(0.0, pause))
        if code is not None and not ready:
            break   # every writer is dead once X is reaped; this only guards against a stray holder
        for fd in ready:
            if fd in buffers:
                chunk = os.read(fd, 65536)
                if not chunk:
                    live.remove(fd)
                buffers[fd].extend(chunk[:max(0, caps[fd] - len(buffers[fd]))])
    if pidfd is not None:
        os.close(pidfd)
    return code, bytes(buffers[out_r]), bytes(buffers[res_r])


def _run_one(req: dict, iso: dict) -> dict:
    nonce = os.urandom(16).hex().encode()
    pipes = {}
    for name in ("out", "res", "ctl"):
        pipes[f"{name}_r"], pipes[f"{name}_w"] = os.pipe()
    workdir = ""
    if not iso["pidns"]:
        workdir = tempfile.mkdtemp(prefix="randopt-sandbox-")
        if os.getuid() == 0:
            os.chown(workdir, SANDBOX_ID, SANDBOX_ID)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(req, nonce, pipes, workdir, iso)
    try:
        os.setpgid(pid, pid)   # also here: the deadline's killpg must not race X's own setpgid
    except OSError:
        pass
    for name in ("out_w", "res_w", "ctl_w"):
        os.close(pipes.pop(name))
    code, output, message = _collect(pid, pipes, start + req["timeout"])
    seconds = time.monotonic() - start
    for fd in pipes.values():
        os.close(fd)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if code is None:
        status = "timeout"
    elif code == SETUP_FAILED and message.startswith(b"SETUP "):
        status, output = "error", message
    elif code == 0:
        status = "passed" if message == b"PASS " + nonce else "exited-early"
    else:
        status = "killed" if code > 128 else "failed"
    return {"status": status, "seconds": seconds, "output": output.decode("utf-8", "replace")}


def _send(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    data = struct.pack("!Q", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _recv(fd: int, deadline: float | None = None):
    """One framed message, or None at EOF or past the deadline."""
    want, buf, head = 8, bytearray(), None
    while True:
        while len(buf) < want:
            if deadline is not None and not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return None
            chunk = os.read(fd, want - len(buf))
            if not chunk:
                return None
            buf.extend(chunk)
        if head is not None:
            return json.loads(bytes(buf))
        head, want, buf = buf, struct.unpack("!Q", buf)[0], bytearray()


def _zygote_main() -> None:
    requests, responses = os.dup(0), os.dup(1)   # fds 3 and 4; 0-2 become /dev/null for stray prints
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)   # a program's orphans stay below this zygote
    iso = _isolate_zygote("--no-namespaces" not in sys.argv)
    for name in _PRELOAD:
        __import__(name)
    if iso["pidns"]:
        probe = {"parts": ["import os\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()))"],
                 "timeout": 10.0, "memory": MEMORY_BYTES}
        result = _run_one(probe, iso)
        iso["pidns"] = result["status"] == "passed"
        iso["proc"] = result["output"].strip() == "['1']"
        if not iso["pidns"]:
            iso["why"] = result["output"][:200]
    _send(responses, {"isolation": iso})
    while (req := _recv(requests)) is not None:
        _send(responses, _run_one(req, iso))
        try:   # orphans of a killed X come here (subreaper): reap them
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


if __name__ == "__main__":
    _zygote_main()
