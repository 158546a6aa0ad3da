"""results.h5: writing the tree rank 0 builds (atomically), and reading it back for comparisons.

The schema is documented in docs/results-schema.md; the run folder that holds the file is
randopt_hpc.runfolder.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from randopt_hpc.version import SCHEMA_VERSION


def _put(group, name: str, data: Any) -> None:
    import h5py

    arr = np.asarray(data) if not isinstance(data, np.ndarray) else data
    if arr.dtype == object:
        group.create_dataset(name, data=arr.astype(object), dtype=h5py.string_dtype("utf-8"),
                             **({"chunks": True, "compression": "gzip"} if arr.ndim == 2 and arr.size > 0 else {}))
    elif arr.ndim == 2 and arr.size > 0:
        group.create_dataset(name, data=arr, chunks=True, compression="gzip", shuffle=True)
    else:
        group.create_dataset(name, data=arr)


def write_results(final: str, tree: dict, attrs: dict) -> str:
    """Write {group: {name: array}} and root attributes to `final` atomically."""
    import h5py

    tmp = f"{final}.tmp-{os.getpid()}"
    with h5py.File(tmp, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        for k, v in attrs.items():
            f.attrs[k] = v if not isinstance(v, (dict, list)) else json.dumps(v)
        _write_tree(f, tree)
    os.replace(tmp, final)
    return final


def _write_tree(group, tree: dict) -> None:
    for name, value in tree.items():
        if isinstance(value, dict):
            _write_tree(group.create_group(name), value)
        else:
            _put(group, name, value)


# Parts of results.h5 that describe where and how fast a run went, not what it found.
NOT_RESULTS = ("timing", "population/rank", "population/seconds")


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


def check_schema(f, path: str) -> None:
    v = f.attrs.get("schema_version")
    if v is None or int(v) != SCHEMA_VERSION:
        raise ValueError(f"{path}: results schema version {v}, this reader understands {SCHEMA_VERSION}")
