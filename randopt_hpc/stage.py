"""Staging model weights to node-local (or fast) storage before a run reads them.

Hundreds of ranks loading a checkpoint from a shared parallel filesystem at once is the slow start of
many HPC jobs; one copy per node to local disk (or /dev/shm) and every rank of that node reading it
from there is the usual cure. The staged copy is an optimisation only: results name model.path.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket

MARKER = ".randopt_staged"


def staged_path(model_path: str, stage_dir: str) -> str:
    """Where a model is staged: named after the source and its files' sizes and mtimes, so a changed
    checkpoint is staged afresh and an unchanged one is reused by later jobs on the node."""
    src = os.path.abspath(model_path)
    h = hashlib.sha256(src.encode())
    for name in sorted(os.listdir(src)):
        st = os.stat(os.path.join(src, name))
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    root = os.path.expandvars(os.path.expanduser(stage_dir))
    return os.path.join(root, "randopt_hpc-models", f"{os.path.basename(src.rstrip('/'))}-{h.hexdigest()[:12]}")


def stage_model(model_path: str, stage_dir: str) -> str:
    """Copy model_path under stage_dir unless an identical complete copy is there; returns its path.

    Safe when several nodes share stage_dir (fast shared storage rather than local disk): each copies
    into a private temporary folder and renames it; the first rename wins and the rest discard theirs."""
    dest = staged_path(model_path, stage_dir)
    if os.path.exists(os.path.join(dest, MARKER)):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_path, tmp, symlinks=False)
    open(os.path.join(tmp, MARKER), "w").close()
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(dest, MARKER)):   # copies are renamed only once complete
            raise RuntimeError(f"runtime.stage_dir: {dest} exists but is not a staged model; remove it") from None
        # else another node's identical copy landed first
    return dest
