"""Reading task data files: a JSON list of rows, or JSON lines. The task turns rows into examples."""
from __future__ import annotations

import json

from randopt_hpc.config import ConfigError


def read_records(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"task.data: cannot read {path}: {e}") from None
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ConfigError(f"task.data: {path} is neither a JSON list nor JSON lines: {e}") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"task.data: {path} must hold a non-empty list of objects")
    return rows


def load_examples(cfg) -> tuple[list, list]:
    """(train, test) examples for a validated config; bad data is a ConfigError naming task.*"""
    from randopt_hpc.tasks import get_task
    from randopt_hpc.tasks.base import split_first_last

    task = get_task(cfg.task.name, template=cfg.task.template)
    n = cfg.task.train_size + cfg.task.test_size
    records = read_records(cfg.task.data) if cfg.task.data else task.synthetic_records(n, cfg.task.seed)
    try:
        train, test = split_first_last(task.examples_from_records(records), cfg.task.train_size, cfg.task.test_size)
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(msg if msg.startswith("task.") else f"task.data: {msg}") from None
    ids = [ex.id for ex in train + test]
    if len(set(ids)) != len(ids):
        raise ConfigError("task.data: example ids are not unique")
    return train, test
