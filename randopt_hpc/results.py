"""Files: the run folder, per-rank shards (append-only, crash-safe) and the final results.h5.

Run folder layout (output.dir):
  run.yaml          the resolved config of the run living here (a rerun must match it)
  shards/rank-NNNNN.jsonl   one JSON record per line, appended and fsynced by one rank each
  results.h5        written by rank 0 to a temporary name, then renamed

Shards are JSON lines rather than HDF5 on purpose: a rank killed mid-append can at worst tear its
last line, which the reader drops; an HDF5 file killed during a metadata write can be unreadable.
The schema of results.h5 is documented in docs/results-schema.md.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any, Iterable

import numpy as np

from randopt_hpc.version import SCHEMA_VERSION

RESULTS = "results.h5"
RUN_YAML = "run.yaml"


def shard_path(out_dir: str, rank: int) -> str:
    return os.path.join(out_dir, "shards", f"rank-{rank:05d}.jsonl")


class Shard:
    """One rank's append-only record log."""

    def __init__(self, out_dir: str, rank: int):
        self.path = shard_path(out_dir, rank)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        _drop_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._f.write(json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _drop_torn_tail(path: str) -> None:
    """Cut a partial last line left by a killed writer, so the next append starts on a clean line."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_shards(out_dir: str) -> list[dict]:
    """Every complete record of every shard (any past rank count); torn last lines are dropped."""
    return [r for path in shard_files(out_dir) for r in read_shards_file(path)]


def shard_files(out_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out_dir, "shards", "rank-*.jsonl")))


def read_shards_file(path: str) -> list[dict]:
    """The complete records of one shard, up to a torn or corrupt line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def index_records(records: Iterable[dict], kind: str) -> dict:
    """{key: record} for one record type; the first record wins (a duplicate cannot differ: same index, same model)."""
    out: dict = {}
    for r in records:
        if r.get("type") == kind:
            out.setdefault(r.get("index", r.get("split")), r)
    return out


def clear_run(out_dir: str) -> None:
    shutil.rmtree(os.path.join(out_dir, "shards"), ignore_errors=True)
    for name in (RESULTS, RUN_YAML):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))


# ----------------------------------------------------------------------------- results.h5

def _str_array(rows: Any) -> np.ndarray:
    return np.array(rows, dtype=object)


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


def write_results(out_dir: str, tree: dict, attrs: dict) -> str:
    """Write {group: {name: array}} and root attributes to results.h5 atomically."""
    import h5py

    final = os.path.join(out_dir, RESULTS)
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
