"""results.h5: writing the tree rank 0 builds (atomically), and reading it back for comparisons.

The schema is documented in docs/results-schema.md; the run folder that holds the file is
randopt_hpc.runfolder.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from randopt_hpc import atomic
from randopt_hpc.version import SCHEMA_VERSION


def storable(text: str) -> str:
    """A string HDF5 can hold: it refuses NUL in variable-length strings and lone surrogates in UTF-8,
    both of which model output or a data file may hold; each becomes U+FFFD (the shards keep the original)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def _put(group, name: str, data: Any) -> None:
    import h5py

    arr = np.asarray(data) if not isinstance(data, np.ndarray) else data
    if arr.dtype == object:
        arr = np.vectorize(lambda v: storable(v) if isinstance(v, str) else v, otypes=[object])(arr) \
            if arr.size else arr
        group.create_dataset(name, data=arr.astype(object), dtype=h5py.string_dtype("utf-8"),
                             **({"chunks": True, "compression": "gzip"} if arr.ndim == 2 and arr.size > 0 else {}))
    elif arr.ndim == 2 and arr.size > 0:
        group.create_dataset(name, data=arr, chunks=True, compression="gzip", shuffle=True)
    else:
        group.create_dataset(name, data=arr)


def write_results(final: str, tree: dict, attrs: dict) -> str:
    """Write {group: {name: array}} and root attributes to `final` atomically."""
    import h5py

    tmp = atomic.temp_name(final)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            for k, v in attrs.items():
                f.attrs[k] = v if not isinstance(v, (dict, list)) else json.dumps(v)
            _write_tree(f, tree)
            f.flush()
            atomic.reach("write:results.h5")
        atomic.publish(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return final


def _write_tree(group, tree: dict) -> None:
    for name, value in tree.items():
        if isinstance(value, dict):
            _write_tree(group.create_group(name), value)
        else:
            _put(group, name, value)


# Parts of results.h5 that describe where and how fast a run went, not what it found.
NOT_RESULTS = ("timing", "jobs", "population/rank", "population/seconds")


def comparable(path: str) -> dict[str, Any]:
    """Every dataset of a results file except timing and provenance, for equality checks."""
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        check_schema(f, path)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not any(name == p or name.startswith(p + "/") for p in NOT_RESULTS):
                data = obj[()]
                if isinstance(data, np.ndarray) and data.dtype == object:
                    data = np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(data) \
                        if data.size else data
                out[name] = data
        f.visititems(visit)
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The datasets two comparable() results disagree on, or hold alone; NaN equals NaN (a halving run marks
    the train examples a dropped candidate never answered with NaN rewards)."""
    out = sorted(set(a) ^ set(b))
    for k in sorted(set(a) & set(b)):
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == y.dtype.kind == "f"):
            out.append(k)
    return out


def check_schema(f, path: str) -> None:
    """One line for a file of another schema version: its datasets mean other things (schema 1's control was
    the first K by index), so nothing is read from it."""
    v = f.attrs.get("schema_version")
    try:
        ok = v is not None and int(v) == SCHEMA_VERSION
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{path}: results schema version {str(v)[:40]}, this reader understands only "
                         f"{SCHEMA_VERSION} (docs/results-schema.md; rerun the config to rewrite it)")


def damage(path: str, cfg) -> str | None:
    """Why the results file at `path` cannot stand for a finished run of cfg (None: it can). It must open,
    carry this schema and cfg's fingerprint, and its datasets must have the shapes cfg implies; a file
    torn by a crash, emptied by a full disk or written by another config is rebuilt from the shards."""
    import h5py

    from randopt_hpc.fingerprint import fingerprint_hash

    try:
        if not h5py.is_hdf5(path):
            return "not an HDF5 file"
        with h5py.File(path, "r") as f:
            if f.attrs.get("schema_version") != SCHEMA_VERSION:
                return f"schema version {f.attrs.get('schema_version')!r}, expected {SCHEMA_VERSION}"
            if f.attrs.get("config_fingerprint") != fingerprint_hash(cfg):
                return "written for another config"
            n, m, t = cfg.population.size, cfg.task.train_size, cfg.task.test_size
            k, nk = max(cfg.selection.top_k), len(cfg.selection.top_k)
            if cfg.algorithm == "es":
                from randopt_hpc.es_results import expected_shapes

                return _shape_damage(f, expected_shapes(cfg))
            want = {"population/seed": (n,), "population/train_score": (n,), "population/train_reward": (n, m),
                    "population/train_key": (n, m), "base/train_correct": (m,), "base/test_correct": (t,),
                    "selection/ranking": (n,), "selection/top_k": (nk,), "ensemble/selected/members": (k,),
                    "ensemble/selected/test_key": (k, t), "ensemble/selected/voted_correct": (nk, t)}
            if cfg.selection.control:
                c = cfg.selection.control_size or k
                want.update({"ensemble/control/members": (c,), "ensemble/control/voted_correct": (nk, t),
                             "ensemble/control_sigma/members": (k,), "ensemble/control_sigma/voted_correct": (nk, t)})
            if cfg.generation.samples:
                want["base/test_samples_key"] = (cfg.generation.samples, t)
            return _shape_damage(f, want)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        return f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    return None


def _shape_damage(f, want: dict) -> str | None:
    for name, shape in want.items():
        if name not in f:
            return f"{name} is missing"
        if f[name].shape != shape:
            return f"{name} has shape {f[name].shape}, expected {shape}"
        f[name][()]   # every dataset cfg implies must read back, not only its shape
    return None
