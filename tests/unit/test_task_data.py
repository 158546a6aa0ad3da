"""Task data files as their public sources ship them (JSON, JSONL, gzip'ed JSONL, parquet), read through
the run's own command line: every task's sample in tests/data loads in every format alike, and a missing
file, a file that is not what its name says, or a row without one of its task's fields ends the run
before MPI with exit 2 and one line naming the file, the row and the field."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from randopt_hpc import run
from randopt_hpc.config import ConfigError, load_config
from randopt_hpc.data import load_examples, read_records
from randopt_hpc.tasks import get_task
from tests.fakes import fake_config

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLES = sorted(p for p in DATA.glob("*/*") if p.suffix in (".jsonl", ".json", ".parquet"))
TASK_OF = {p: p.parent.name for p in SAMPLES}


def rows_of(path: Path) -> list[dict]:
    return read_records(str(path))


def config(tmp_path, task: str, data, n: int = 2):
    return load_config(str(fake_config(tmp_path)), [f"task.name={task}", f"task.data={data}", "task.template=null",
                                                  f"task.train_size={n}", f"task.test_size={n}"])


def test_every_task_with_a_data_format_has_a_sample():
    assert {p.parent.name for p in SAMPLES} >= {"gsm8k", "math500", "olympiadbench", "mbpp", "rocstories",
                                                 "uspto50k"}


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.parent.name)
def test_samples_load_alike_as_json_jsonl_gz_and_parquet(path, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = rows_of(path)
    task = get_task(TASK_OF[path])
    want = task.examples_from_records(rows)
    assert len(want) >= 4
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    for name in ("rows.json", "rows.jsonl", "rows.jsonl.gz", "rows.parquet"):
        cfg = config(tmp_path, TASK_OF[path], tmp_path / name)
        train, test = load_examples(cfg)
        assert train + test == want[:2] + want[-2:], name


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.parent.name)
def test_a_row_without_a_field_is_one_line_naming_file_row_and_field(path, tmp_path, capsys):
    rows = rows_of(path)
    task = get_task(TASK_OF[path])
    required = []
    for field in rows[0]:
        broken = [dict(r) for r in rows]
        del broken[1][field]
        try:
            task.examples_from_records(broken)
        except ValueError:
            required.append(field)
    assert required, "no field of the sample is required: the schema check is missing"
    for field in required:
        broken = [dict(r) for r in rows]
        del broken[1][field]
        bad = tmp_path / f"no-{field}.jsonl"
        bad.write_text("".join(json.dumps(r) + "\n" for r in broken))
        out = tmp_path / "out"
        argv = [str(fake_config(tmp_path)), f"task.name={TASK_OF[path]}", f"task.data={bad}", "task.template=null",
                "task.train_size=2", "task.test_size=2", f"output.dir={out}"]
        assert run.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert str(bad) in lines[0] and "row 1" in lines[0] and repr(field) in lines[0], lines[0]
        assert not out.exists()


@pytest.mark.parametrize("name,content,problem", [
    ("x.parquet", b"not parquet at all", "is not a readable parquet file"),
    ("x.jsonl.gz", b"not gzip", "cannot read"),
    ("x.jsonl", b'{"a": 1}\n{oops\n', "neither a JSON list nor JSON lines"),
    ("x.json", b"\xff\xfe", "is not UTF-8 text"),
    ("x.json", b"[]", "non-empty list of objects"),
    ("x.jsonl", b'{"question": "a\\ud800b", "answer": "#### 1"}\n', "row 0: field 'question' holds a lone surrogate"),
    ("x.json", b'[{"prompt": [{"content": "\\udfff"}]}]', "row 0: field 'prompt' holds a lone surrogate"),
])
def test_unreadable_files_are_one_line_naming_the_file(name, content, problem, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        read_records(str(path))
    assert str(e.value).startswith(f"task.data: {path}") or str(path) in str(e.value)
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_a_missing_file_and_a_task_without_built_in_problems(tmp_path):
    with pytest.raises(ConfigError, match=r"^task\.data: no such file: .*nope\.jsonl$"):
        config(tmp_path, "gsm8k", tmp_path / "nope.jsonl")
    cfg = load_config(str(fake_config(tmp_path)), ["task.name=gsm8k", "task.data=null", "task.template=null"])
    with pytest.raises(ConfigError, match=r"^task\.data: task gsm8k has no built-in problems; give a local file of "):
        load_examples(cfg)


def test_rows_the_tasks_could_never_score_are_refused():
    from randopt_hpc.tasks.base import bad_field, record_id

    gsm8k, math500 = get_task("gsm8k"), get_task("math500")
    row = {"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": 18.0}}
    assert gsm8k.examples_from_records([row])[0].truth == "18"   # parquet's 18.0 is the answer 18
    for truth in (float("nan"), "", " ", None, True, [18]):
        with pytest.raises(ValueError, match=r"^row 0: field 'reward_model' must be an object with a non-empty"):
            gsm8k.examples_from_records([{**row, "reward_model": {"ground_truth": truth}}])
    for answer in ("", "  "):
        with pytest.raises(ValueError, match=r"^row 0: field 'answer' must not be empty"):
            math500.examples_from_records([{"problem": "p", "answer": answer}])
    huge = 10 ** 5000
    assert str(bad_field(3, "target", "must be small", huge)).startswith("row 3: field 'target' must be small, got an "
                                                                        "integer of 16610 bits")
    with pytest.raises(ValueError, match=r"^row 2: field 'id' must be a string or an integer of at most 18 digits"):
        record_id({"id": huge}, 2)


def test_a_list_where_a_task_section_belongs_is_one_line_with_a_hint(tmp_path):
    for value, got in (("[1, 2]", "int"), ("countdown", "str")):
        with pytest.raises(ConfigError) as e:
            load_config(str(fake_config(tmp_path)), [f"task={value}"])
        where = "task[0]" if value.startswith("[") else "task"
        assert str(e.value) == f"{where}: expected a mapping, got {got}; give `task: {{name: ...}}` or a list of them"
