"""MBPP and HumanEval: the reference's prompt, extraction, harness, reward and voting key (expectations
written by hand from the reference's rules), HumanEval's canonical solutions, hostile model output and
bad data rows."""
from __future__ import annotations

import gzip
import json
import random
import re
import time
from pathlib import Path

import pytest

from randopt_hpc import sandbox
from randopt_hpc.data import read_records
from randopt_hpc.tasks import get_task, mbpp
from randopt_hpc.tasks import humaneval as he
from randopt_hpc.tasks.base import Scored, score_all

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mbpp" / "sample.jsonl"

# utils/reward_score/mbpp.py and data_handlers/mbpp.py of the RandOpt reference, copied by hand.
REF_SYSTEM = "You are a Python programming assistant. Write clean, correct Python code to solve the given problem."
REF_USER = ("{text}\n\nYour code should pass these tests:\n{tests}\n\nThink through your solution in <think> </think> "
            "tags.\nReturn your final Python code in <answer> </answer> tags, e.g.:\n<answer>\ndef solution(x):\n"
            "    return x + 1\n</answer>")


def ref_extract(response: str) -> str:
    matches = re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)
    if matches:
        return matches[-1].strip()
    for pattern in (r"```python\n?(.*?)```", r"```\n?(.*?)```"):
        matches = re.findall(pattern, response, re.DOTALL)
        if matches:
            return matches[-1].strip()
    return ""


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return read_records(str(SAMPLE))


@pytest.fixture(scope="module")
def examples(rows):
    return get_task("mbpp").examples_from_records(rows)


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return get_task("humaneval").packaged_records()


@pytest.fixture(scope="module")
def he_examples(problems):
    return get_task("humaneval").examples_from_records(problems)


# --------------------------------------------------------------------------- MBPP

def test_mbpp_prompt_is_the_reference_one(rows, examples):
    assert len(rows) >= 8 and len(examples) == len(rows)
    ex, row = examples[9], rows[9]   # four tests: the prompt shows the first three
    user = REF_USER.format(text=row["text"], tests="\n".join(row["test_list"][:3]))
    assert ex.messages == (("system", REF_SYSTEM), ("user", user))
    assert ex.prompt == REF_SYSTEM + "\n" + user + "\n" and ex.response_prefix == ""
    assert row["test_list"][3] not in ex.prompt and ex.truth["test_list"] == row["test_list"]
    assert [e.id for e in examples] == [str(r["task_id"]) for r in rows]
    assert json.loads(json.dumps(ex.truth)) == ex.truth


def test_mbpp_extraction_matches_the_reference_regexes():
    rng = random.Random(0)
    pieces = ["<answer>", "</answer>", "```python", "```python\n", "```", "```\n", "\n", "x", " def f(): pass ", "`"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert mbpp.extract_code(text) == ref_extract(text), text


def test_mbpp_scores_follow_the_reference(rows, examples):
    task = get_task("mbpp")
    right = [f"<think>easy</think>\n<answer>\n{r['code']}\n</answer>" for r in rows]
    wrong = [f"<answer>{r['code'].replace('return', 'return None and')}</answer>" for r in rows]
    scored = score_all(task, right + wrong, examples + examples)
    for row, s in zip(rows, scored[:len(rows)]):
        assert s == Scored(reward=1.0, correct=True, key=row["code"].strip(), answer=row["code"].strip())
    for row, s in zip(rows, scored[len(rows):]):
        code = row["code"].replace("return", "return None and").strip()
        assert s == Scored(reward=0.0, correct=False, key=code, answer=code)


def test_mbpp_extraction_order_and_empty_answers(examples):
    ex = examples[0]   # sum_of_squares
    good = "def sum_of_squares(n):\n    return n * (n + 1) * (2 * n + 1) // 6"
    cases = {
        f"```python\n{good}\n```": 1.0,                                  # a python fence
        f"```\n{good}\n```": 1.0,                                        # a bare fence
        f"```python\ndef sum_of_squares(n): return 0\n```\n```\n{good}\n```": 0.0,   # python fence wins
        f"<answer>{good}</answer>\n```python\nbroken(\n```": 1.0,         # answer tags win over fences
        f"<answer>{good}</answer><answer>def sum_of_squares(n): return -1</answer>": 0.0,   # the last one
        f"<answer> </answer>\n```python\n{good}\n```": 0.0,              # empty answer: no fallback
        good: 0.0,                                                       # no tags, no fence: no answer
    }
    scored = mbpp.score_many(list(cases), [ex] * len(cases))
    assert [s.reward for s in scored] == list(cases.values())
    assert scored[-1] == Scored(0.0, False, None, None) and scored[-2] == Scored(0.0, False, None, None)


def test_mbpp_setup_code_runs_before_the_code(rows, examples):
    i = next(i for i, r in enumerate(rows) if r["test_setup_code"])
    code = rows[i]["code"]
    assert mbpp.score(f"<answer>{code}</answer>", examples[i]).correct
    no_setup = get_task("mbpp").examples_from_records([{**rows[i], "test_setup_code": ""}])[0]
    assert not mbpp.score(f"<answer>{code}</answer>", no_setup).correct   # the tests need its `import math`


def test_mbpp_sanitized_rows_and_parquet(tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    sanitized = [{"source_file": "x.py", "task_id": r["task_id"], "prompt": r["text"], "code": r["code"],
                  "test_imports": [r["test_setup_code"]] if r["test_setup_code"] else [], "test_list": r["test_list"]}
                 for r in rows]
    path = tmp_path / "sanitized.parquet"
    pq.write_table(pa.Table.from_pylist(sanitized), path)
    examples = get_task("mbpp").examples_from_records(read_records(str(path)))
    full = get_task("mbpp").examples_from_records(rows)
    assert [(e.id, e.prompt, e.truth) for e in examples] == [(e.id, e.prompt, e.truth) for e in full]


@pytest.mark.parametrize("row, message", [
    ({"test_list": ["assert f() == 1"]}, "row 0: field 'text' must be a non-empty string, got None"),
    ({"text": "  ", "test_list": ["assert True"]}, "row 0: field 'text' must be a non-empty string"),
    ({"text": "t", "test_list": "assert f() == 1"}, "row 0: field 'test_list' must be a non-empty list of strings, "
                                                    "got 'assert f() == 1'"),
    ({"text": "t", "test_list": []}, "row 0: field 'test_list' must be a non-empty list of strings, got []"),
    ({"text": "t", "test_list": ["assert True", 3]}, "row 0: field 'test_list' must be a non-empty list of strings"),
    ({"text": "t", "test_list": ["assert True"], "test_setup_code": 5}, "row 0: field 'test_setup_code' must be a "
                                                                        "string or a list of strings, got 5"),
    ({"prompt": "t", "test_list": ["assert True"], "test_imports": [1]}, "row 0: field 'test_imports'"),
    ({"text": "t", "test_list": ["assert True"], "code": 7}, "row 0: field 'code' must be a string, got 7"),
])
def test_mbpp_bad_rows_name_the_row_and_field(row, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        mbpp.examples_from_records([row])


def test_bad_row_position_is_reported(rows):
    with pytest.raises(ValueError, match=r"^row 3: field 'test_list'"):
        mbpp.examples_from_records(rows[:3] + [{**rows[3], "test_list": None}])
    with pytest.raises(ValueError, match=r"^row 1: must be an object"):
        mbpp.examples_from_records([rows[0], ["not", "a", "row"]])


# --------------------------------------------------------------------------- hostile model output

HOSTILE_OUTPUTS = [
    "", " ", "\n\n\n", "garbage text without code", "x" * (1 << 20), "<answer>" * 50000, "```" * 40000,
    "```python" * 20000, "<answer>\n```python\n" * 1000, "\x00" * 1000, "<answer>\x00\x00</answer>",
    "<answer>def f(:</answer>", "```python\nprint('unbalanced fence'\n", "日本語のテキスト 🙂" * 1000,
    "<answer>\ud800</answer>", "<answer>import os; os._exit(0)</answer>", "import os; os._exit(0)",
    "<answer>import sys; sys.exit(0)</answer>", "<answer>raise SystemExit</answer>",
    "<answer>import os\nos.kill(-1, 9)</answer>",
    "<answer>" + "(" * 10000 + "</answer>", "<answer>" + "def f():\n" + " " * 100 + "pass\n" * 1000 + "</answer>",
    "</answer><answer>", "<think>" * 1000 + "</think>", None, 12345,
]


def _hostile_run(task_name, outputs, examples, he_examples) -> float:
    task = get_task(task_name)
    example = (examples if task_name == "mbpp" else he_examples)[0]
    start = time.monotonic()
    scored = task.score_many(outputs, [example] * len(outputs))
    seconds = time.monotonic() - start
    assert len(scored) == len(outputs)
    assert all(isinstance(s, Scored) and s.reward == 0.0 and not s.correct for s in scored), scored
    assert task.score("<answer>import os; os._exit(0)</answer>", example).reward == 0.0
    return seconds


@pytest.mark.parametrize("task_name", ["mbpp", "humaneval"])
def test_hostile_outputs_never_raise_and_score_zero(task_name, examples, he_examples):
    assert len(HOSTILE_OUTPUTS) >= 20
    assert _hostile_run(task_name, HOSTILE_OUTPUTS, examples, he_examples) < 10


@pytest.mark.slow
@pytest.mark.parametrize("task_name, limit", [("mbpp", mbpp.TIMEOUT_S), ("humaneval", he.TIMEOUT_S)])
def test_an_endless_answer_ends_at_the_time_limit(task_name, limit, examples, he_examples):
    loops = ["<answer>while True: pass</answer>", "<answer>import time\ntime.sleep(1000)</answer>"]
    assert _hostile_run(task_name, loops, examples, he_examples) < limit + 3   # the two run side by side


# --------------------------------------------------------------------------- HumanEval

def test_humaneval_packaged_problems_and_prompt(problems, he_examples):
    assert len(problems) == 164 and len(he_examples) == 164
    ex, p = he_examples[0], problems[0]
    assert ex.id == "HumanEval/0" and ex.response_prefix == ""
    assert ex.messages[0] == ("system", REF_SYSTEM)
    assert f"```python\n{p['prompt'].strip(chr(10))}\n```" in ex.messages[1][1]
    assert ex.messages[1][1].endswith("<answer>\ndef solution(x):\n    return x + 1\n</answer>")
    assert ex.prompt == REF_SYSTEM + "\n" + ex.messages[1][1] + "\n"
    assert ex.truth == {"prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]}


def test_humaneval_reads_the_packages_gzip_as_a_data_file(tmp_path, problems):
    path = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(p) + "\n" for p in problems[:3])
    assert read_records(str(path)) == problems[:3]


def test_humaneval_answer_forms_and_keys(problems, he_examples):
    p, ex = problems[2], he_examples[2]   # truncate_number: return number % 1.0
    full = f"def {p['entry_point']}(number: float) -> float:\n    '''Docs.'''\n    return number % 1.0"
    forms = {
        "canonical as completion": p["canonical_solution"],
        "body in tags": "<answer>\n    return number % 1.0\n</answer>",
        "unindented body in tags": "<answer>return number % 1.0</answer>",
        "full function in tags": f"<think>t</think>\n<answer>\n{full}\n</answer>",
        "full function, comment": f"```python\n# mod\n{full}  # done\n```",
        "indented full function": "<answer>\n" + "\n".join("    " + line for line in full.splitlines()) + "\n</answer>",
    }
    scored = he.score_many(list(forms.values()), [ex] * len(forms))
    assert all(s.correct and s.reward == 1.0 for s in scored), dict(zip(forms, scored))
    assert len({s.key for s in scored}) == 1 and scored[0].key.startswith("sha256:")
    other = he.score("<answer>\n    return number - int(number)\n</answer>", ex)
    assert other.correct and other.key != scored[0].key
    broken = he.score("<answer>def truncate_number(:</answer>", ex)
    assert broken == Scored(0.0, False, None, "def truncate_number(:")


def test_humaneval_overriding_check_fails(he_examples):
    ex = he_examples[2]
    hack = "<answer>def check(candidate):\n    pass\n\ndef truncate_number(number):\n    return 0</answer>"
    assert not he.score(hack, ex).correct


def test_humaneval_bad_rows_name_the_row_and_field(problems):
    with pytest.raises(ValueError, match=r"^row 1: field 'entry_point' must be the name of the function to check"):
        he.examples_from_records([problems[0], {**problems[1], "entry_point": "not a name"}])
    with pytest.raises(ValueError, match=r"^row 0: field 'test' must be a non-empty string, got None"):
        he.examples_from_records([{k: v for k, v in problems[0].items() if k != "test"}])


def _without_final_return(solution: str) -> str:
    lines = solution.split("\n")
    last = max(i for i, line in enumerate(lines) if line.lstrip().startswith("return"))
    lines[last] = lines[last][:len(lines[last]) - len(lines[last].lstrip())] + "return None"
    return "\n".join(lines)


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_broken_ones_fail(problems, he_examples):
    task = get_task("humaneval")
    start = time.monotonic()
    canonical = score_all(task, [p["canonical_solution"] for p in problems], he_examples)
    seconds = time.monotonic() - start
    broken = score_all(task, [_without_final_return(p["canonical_solution"]) for p in problems], he_examples)
    passed, still = sum(s.correct for s in canonical), [p["task_id"] for p, s in zip(problems, broken) if s.correct]
    print(f"HumanEval canonical: {passed}/164 pass in {seconds:.1f} s on {sandbox.default_pool().workers} workers; "
          f"final return -> return None: {164 - len(still)}/164 fail")
    assert passed == 164
    assert still == []
