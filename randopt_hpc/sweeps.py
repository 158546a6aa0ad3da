"""A sweep's points: `--sweep KEY=[v1,v2]` lists -> one override list per point (their product), each point's
output folder, and an override as listings show it. Pure; randopt_hpc.launch submits them."""
from __future__ import annotations

import itertools
import json
import os
import re

import yaml

from randopt_hpc.config import ConfigError


def parse_sweep(items: tuple[str, ...]) -> list[list[str]]:
    """--sweep KEY=[a,b] ... -> one list of overrides per point, the product of all lists, first KEY slowest."""
    axes = []
    for item in items:
        key, sep, raw = item.partition("=")
        try:
            values = yaml.safe_load(raw) if sep else None
        except yaml.YAMLError:
            values = None
        if not key or not isinstance(values, list) or not values:
            raise ConfigError(f"--sweep {item!r}: expected KEY=[v1,v2,...] (a non-empty YAML list)")
        if key in (k for k, _ in axes):
            raise ConfigError(f"--sweep {key}: given twice; put every value in one list")
        if key.split(".")[0] == "slurm":
            raise ConfigError(f"--sweep {key}: a job array has one Slurm request; set {key} in the config, as an "
                              "override or with its flag, and submit each value on its own")
        axes.append((key, values))
    return [[f"{k}={json.dumps(v)}" for (k, _), v in zip(axes, combo)]
            for combo in itertools.product(*(vals for _, vals in axes))]


def point_dir(root: str, i: int, overrides: list[str]) -> str:
    """A sweep point's output folder: its number, then its overrides in a file-name-safe short form."""
    parts = []
    for o in overrides:
        key, value = o.split("=", 1)
        parts.append(f"{key.split('.')[-1]}-{re.sub(r'[^A-Za-z0-9.+-]+', '_', value).strip('_')}")
    slug = "_".join(parts)[:80]
    return os.path.join(root, f"{i:03d}-{slug}" if slug else f"{i:03d}")


def shown(override: str) -> str:
    """An override as the config reads it, for listings: parse_sweep writes YAML 1.1's strings (`1e-3` is one)
    as JSON strings, which the config turns into numbers (textio.floats_in): show the numbers."""
    from randopt_hpc.textio import parse_override

    key, value = override.split("=", 1)[0], parse_override(override)[1]
    return f"{key}={json.dumps(value, ensure_ascii=False)}"
