"""Reading task data files in the formats their public sources use: a JSON list of rows, JSON lines
(optionally gzipped, as HumanEval ships), or parquet (the Hugging Face copies of GSM8K, MBPP, MATH-500).
The task turns rows into examples."""
from __future__ import annotations

import gzip
import json

from randopt_hpc.config import ConfigError
from randopt_hpc.textio import read_text

MAX_DATA_BYTES = 4 << 30   # a data file is read whole; past this it is certainly not a task's split


def read_records(path: str) -> list[dict]:
    """Rows of a data file; anything hostile (not UTF-8, nesting past the parser's depth, integers of more
    digits than Python converts, no objects, a parquet file that is not one) is a one-line ConfigError
    naming the file."""
    if path.endswith(".parquet"):
        rows = _parquet_rows(path)
    else:
        rows = _json_rows(path, _gunzipped(path) if path.endswith(".gz") else
                          read_text(path, "task.data", MAX_DATA_BYTES))
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"task.data: {path} must hold a non-empty list of objects")
    for i, row in enumerate(rows):
        for field, value in row.items():
            if not _encodable(value):
                raise ConfigError(f"task.data: {path}: row {i}: field {field!r} holds a lone surrogate (a JSON "
                                  "escape such as \\ud800 alone), which no tokenizer encodes")
    return rows


def _encodable(value) -> bool:
    """No string in value holds a lone surrogate (JSON's "\\ud800" decodes to one; UTF-8 has no encoding of it)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(v, dict):
            stack += list(v.keys()) + list(v.values())
        elif isinstance(v, list):
            stack += v
    return True


def _json_rows(path: str, text: str):
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:   # JSONDecodeError, and integers past Python's digit limit
                    raise ValueError(f"line {number}: {e}") from None
        return rows
    except RecursionError:
        raise ConfigError(f"task.data: {path} is nested too deeply") from None
    except ValueError as e:   # JSONDecodeError, and integers past Python's digit limit
        raise ConfigError(f"task.data: {path} is neither a JSON list nor JSON lines: "
                          f"{' '.join(str(e).split())[:160]}") from None


def _gunzipped(path: str) -> str:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(MAX_DATA_BYTES + 1)
        if len(data) > MAX_DATA_BYTES:
            raise ConfigError(f"task.data: {path} holds more than {MAX_DATA_BYTES:,} bytes of text")
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"task.data: {path} is not UTF-8 text") from None
    except (OSError, EOFError) as e:   # gzip.BadGzipFile is an OSError
        raise ConfigError(f"task.data: cannot read {path}: {e}") from None


def _parquet_rows(path: str) -> list[dict]:
    import pyarrow.parquet as pq  # lazy: only parquet data needs it

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:   # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise ConfigError(f"task.data: {path} is not a readable parquet file: {' '.join(str(e).split())[:160]}") \
            from None


def task_records(task, cfg_task) -> list[dict]:
    """The rows a task config names: its data file, the task's packaged rows, or its synthetic problems."""
    n = cfg_task.train_size + cfg_task.test_size
    if cfg_task.data:
        return read_records(cfg_task.data)
    packaged = getattr(task, "packaged_records", None)
    if packaged is not None:
        return packaged()
    if task.synthetic_limit == 0:
        raise ConfigError(f"task.data: task {task.name} has no built-in problems; give a local file of "
                          f"{task.data_format}")
    if task.synthetic_limit is not None and n > task.synthetic_limit:
        raise ConfigError(f"task.test_size: task.train_size + task.test_size = {n:,} but task {task.name} has "
                          f"{task.synthetic_limit:,} distinct synthetic problems; ask for fewer, or give task.data")
    return task.synthetic_records(n, cfg_task.seed)


def task_examples(task, cfg_task) -> tuple[list, list]:
    """(train, test) examples of one task config; bad data is a ConfigError naming task.* and the file."""
    from randopt_hpc.tasks.base import split_first_last

    records = task_records(task, cfg_task)
    source = cfg_task.data or f"task {task.name}'s problems"
    try:
        train, test = split_first_last(task.examples_from_records(records), cfg_task.train_size, cfg_task.test_size)
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(msg if msg.startswith("task.") else f"task.data: {source}: {msg}") from None
    ids = [ex.id for ex in train + test]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"task.data: {source}: example ids are not unique")
    return train, test


def task_of(cfg_task):
    """The task one task config names, with its options."""
    from randopt_hpc.tasks import get_task

    options = {} if cfg_task.prompt_style is None else {"prompt_style": cfg_task.prompt_style}
    return get_task(cfg_task.name, template=cfg_task.template, **options)


def make_task(cfg):
    """The run's task: the configured one, or every listed task behind one MultiTask."""
    if not cfg.tasks:
        return task_of(cfg.task)
    from randopt_hpc.tasks.multi import MultiTask

    return MultiTask({t.name: task_of(t) for t in cfg.tasks})


def load_examples(cfg) -> tuple[list, list]:
    """(train, test) examples for a validated config; with several tasks, each task's splits in config
    order, tagged with the task (randopt_hpc.tasks.multi)."""
    if not cfg.tasks:
        return task_examples(task_of(cfg.task), cfg.task)
    from randopt_hpc.tasks.multi import tagged

    train, test = [], []
    for i, t in enumerate(cfg.tasks):
        try:
            tr, te = task_examples(task_of(t), t)
        except ConfigError as e:   # name the list entry: task.data -> task[1].data
            raise ConfigError(str(e).replace("task.", f"task[{i}].", 1)) from None
        train += tagged(tr, t.name)
        test += tagged(te, t.name)
    return train, test
