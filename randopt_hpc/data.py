"""Reading task data files: a JSON list of rows, or JSON lines. The task turns rows into examples."""
from __future__ import annotations

import json

from randopt_hpc.config import ConfigError
from randopt_hpc.textio import read_text

MAX_DATA_BYTES = 4 << 30   # a data file is read whole; past this it is certainly not a task's split


def read_records(path: str) -> list[dict]:
    """Rows of a data file; anything hostile (not UTF-8, nesting past the parser's depth, integers of more
    digits than Python converts, no objects) is a one-line ConfigError naming the file."""
    text = read_text(path, "task.data", MAX_DATA_BYTES)
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as e:   # JSONDecodeError, and integers past Python's digit limit
                        raise ValueError(f"line {number}: {e}") from None
    except RecursionError:
        raise ConfigError(f"task.data: {path} is nested too deeply") from None
    except ValueError as e:   # JSONDecodeError, and integers past Python's digit limit
        raise ConfigError(f"task.data: {path} is neither a JSON list nor JSON lines: "
                          f"{' '.join(str(e).split())[:160]}") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"task.data: {path} must hold a non-empty list of objects")
    return rows


def load_examples(cfg) -> tuple[list, list]:
    """(train, test) examples for a validated config; bad data is a ConfigError naming task.*"""
    from randopt_hpc.tasks import get_task
    from randopt_hpc.tasks.base import split_first_last

    task = get_task(cfg.task.name, template=cfg.task.template)
    n = cfg.task.train_size + cfg.task.test_size
    if not cfg.task.data and task.synthetic_limit is not None and n > task.synthetic_limit:
        raise ConfigError(f"task.test_size: task.train_size + task.test_size = {n:,} but task {task.name} has "
                          f"{task.synthetic_limit:,} distinct synthetic problems; ask for fewer, or give task.data")
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
