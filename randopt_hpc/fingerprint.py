"""The result-defining part of a config: a resumed run must match it exactly, and results.h5 records its hash.

Everything but the fields that cannot change a result (where a run writes, how it reports, how it talks
between ranks) takes part.
"""
from __future__ import annotations

import hashlib

import yaml

from randopt_hpc.config import Config, to_dict

# Fields that do not change any result: a rerun may change them and still resume.
# Batch size and thread count stay in: padding and reduction order can flip a greedy argmax.
NON_RESULT_FIELDS = ("output.dir", "output.overwrite", "runtime.comm", "runtime.progress_every_s",
                     "runtime.noise_impl", "runtime.stage_dir", "runtime.stop_grace_s")


def result_fingerprint(cfg: Config) -> dict:
    """The flattened fields that define results: a resumed run must match these exactly."""
    flat: dict = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif f"{prefix}{k}" not in NON_RESULT_FIELDS:
                flat[f"{prefix}{k}"] = v
    walk(to_dict(cfg), "")
    return flat


def fingerprint_hash(cfg: Config) -> str:
    return hashlib.sha256(yaml.safe_dump(result_fingerprint(cfg), sort_keys=True).encode()).hexdigest()[:16]
