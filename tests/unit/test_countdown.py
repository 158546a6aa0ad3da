"""Countdown task: parser bounds, correctness against an independent checker on the real data,
the reference reward, prompts, records and synthetic data."""
from __future__ import annotations

import ast
import json
import math
import os
import random
import re
import time
from pathlib import Path

import pytest

from randopt_hpc.tasks import TASKS, get_task
from randopt_hpc.tasks import countdown as cd
from randopt_hpc.tasks.base import Example, Scored, has_tag_pair, last_tag_content, split_first_last

DATA = Path(__file__).resolve().parents[3] / "shared/data/countdown.json"
REAL_ROWS = 2200
REAL_CORRECT = 2166   # measured: 19 solutions are null, 15 misuse the numbers or miss the target


# --------------------------------------------------------------------------- independent checker

_AST_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def _walk(node):
    """Python's own evaluation rules (ints stay ints, / is true division), restricted to BinOp and
    int Constant nodes, with the parser's documented bounds; raises ValueError on anything else."""
    if isinstance(node, ast.Expression):
        return _walk(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value < 10**10:   # <= 10 digits
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        a, b = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Div) and b == 0:
            raise ValueError("division by zero")
        v = _AST_OPS[type(node.op)](a, b)
        if abs(v) > 1e12:
            raise ValueError("out of bounds")
        return v
    raise ValueError(f"node {type(node).__name__} not allowed")


def reference_value(text):
    if not isinstance(text, str) or not re.fullmatch(r"[0-9+\-*/()\s]+", text.strip(), flags=re.ASCII):
        return None
    try:
        return float(_walk(ast.parse(text.strip(), mode="eval")))
    except (SyntaxError, ValueError, RecursionError):
        return None


def reference_correct(solution, numbers, target) -> bool:
    if not isinstance(solution, str):
        return False
    literals = [int(t) for t in re.findall(r"[0-9]+", solution)]
    if sorted(literals) != sorted(numbers):
        return False
    value = reference_value(solution)
    return value is not None and abs(value - float(target)) <= 1e-5


# --------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def real_rows():
    if not DATA.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{DATA} is missing (required in CI)")
        pytest.skip(f"{DATA} not present")
    return json.loads(DATA.read_text(encoding="utf-8"))


def test_real_solutions_agree_with_independent_check(real_rows):
    ours = [cd.is_correct(r["solution"], r["numbers"], r["target"]) for r in real_rows]
    theirs = [reference_correct(r["solution"], r["numbers"], r["target"]) for r in real_rows]
    agree = sum(a == b for a, b in zip(ours, theirs))
    n_correct = sum(ours)
    print(f"countdown.json: {len(real_rows)} rows, {agree} agree, {n_correct} reference solutions correct, "
          f"{sum(r['solution'] is None for r in real_rows)} null")
    assert len(real_rows) == REAL_ROWS
    assert agree == REAL_ROWS
    assert n_correct == REAL_CORRECT
    # The known flaws are really there, so the count above is not vacuous.
    assert sum(r["solution"] is None for r in real_rows) == 19
    flawed = [r for r, ok in zip(real_rows, ours) if not ok and r["solution"] is not None]
    assert any(sorted(int(t) for t in re.findall(r"\d+", r["solution"])) != sorted(r["numbers"]) for r in flawed)
    non_int = [r for r in real_rows if not re.fullmatch(r"-?\d+", r["target"])]
    assert len(non_int) == 43 and any(float(r["target"]) < 0 for r in non_int)
    assert any(ok for r, ok in zip(real_rows, ours) if r in non_int)


def test_real_rows_become_examples_and_prompts_rebuild_exactly(real_rows):
    examples = cd.examples_from_records(real_rows)
    assert [e.id for e in examples] == [str(r["id"]) for r in real_rows]
    assert all(e.prompt == r["context"] for e, r in zip(examples, real_rows))
    # Without `context` the prompt is rebuilt byte for byte (numpy-style padded numbers included).
    rebuilt = cd.examples_from_records([{k: v for k, v in r.items() if k != "context"} for r in real_rows])
    assert all(e.prompt == r["context"] for e, r in zip(rebuilt, real_rows))
    assert all(e.prompt.endswith(e.response_prefix) for e in examples)


# --------------------------------------------------------------------------- parser

@pytest.mark.parametrize("text,value", [
    ("1 + 2", 3.0), ("((44 + 19) + 35)", 98.0), ("2 * 3 + 4", 10.0), ("2 + 3 * 4", 14.0),
    ("10 - 4 - 3", 3.0), ("48 / 4 / 2", 6.0), ("(1 + 2) / 3", 1.0), ("7 / 2", 3.5),
    ("3 - 10", -7.0), ("0", 0.0), ("9999999999 * 100", 999999999900.0),
    ("(" * 32 + "1" + ")" * 32, 1.0),
])
def test_evaluate_valid(text, value):
    got = cd.evaluate_expression(text)
    assert isinstance(got, float) and got == value


@pytest.mark.parametrize("text", [
    "-1 + 2", "+1", "1 + -2", "2 * (-3)", "1 2", "1 +", "(1 + 2", "1 + 2)", "()", "1 ** 2", "2 ^ 3",
    "1.5 + 2", "1_000", "1,2", "x", "abs(1)", "٣ + 1", "１ + 1", "01 + 2", "12345678901", "1\u00a0+ 2",
    "(" * 33 + "1" + ")" * 33, "1000000 * 1000001", "1 " + "+ 1 " * 200,
])
def test_evaluate_rejects(text):
    assert cd.evaluate_expression(text) is None


HOSTILE = [
    "9**9**9", "44**19**35", "1" * 1_000_000, "(" * 100_000, "(" * 40 + "1" + ")" * 40, "__import__('os')",
    "a.b", "f(1)", "1e308*1e308", "1/0", "(1-1)/(2-2)", "1 / (3 - 3)", " ", "", None,
    "1 " * 500_000, " " * 1_000_000 + "1 + 2" + " " * 300, "9999999999*" * 20 + "1", b"1 + 2", 3, ["1"],
]


@pytest.mark.parametrize("i", range(len(HOSTILE)))
def test_hostile_expressions_are_fast_and_never_raise(i):
    text = HOSTILE[i]
    t0 = time.perf_counter()
    value = cd.evaluate_expression(text)
    ok = cd.is_correct(text, [44, 19, 35], "98")
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.05, f"{elapsed:.3f}s"
    assert ok is False
    # Only the spaces-around-"1 + 2" case is a valid expression (the strip happens first).
    assert value is None or (value == 3.0 and isinstance(text, str) and text.strip() == "1 + 2")


def test_parser_matches_python_on_random_token_strings():
    rng = random.Random(1234)
    pieces = ["1", "2", "7", "12", "05", "100", "999", "0", "+", "-", "*", "/", "(", ")", " "]
    accepted = 0
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        ours, theirs = cd.evaluate_expression(text), reference_value(text)
        if theirs is None:
            assert ours is None, text
        else:
            accepted += 1
            assert ours is not None and math.isclose(ours, theirs, rel_tol=1e-12, abs_tol=1e-12), text
    assert accepted > 200   # the comparison exercised real expressions, not only rejections


@pytest.mark.parametrize("answer,numbers,target,expected", [
    ("(1 + 2) * 3", [1, 2, 3], 9, True),
    ("3 * (2 + 1)", [3, 2, 1], "9", True),
    ("(1 + 2) * 3", [1, 2, 3], 9.000001, True),
    ("(1 + 2) * 3", [1, 2, 3], 9.0001, False),
    ("1 / 3 + 2", [1, 3, 2], "2.3333333333333335", True),
    ("05 - 2 - 3", [5, 2, 3], 0, False),
    ("00 * (1 + 2)", [0, 1, 2], 0, True),
    ("3 / 2 - 6", [3, 2, 6], "-4.5", True),
    ("47 + 47 - 52 + 98", [98, 47, 47, 52], 140, True),
    ("47 - 52 + 98", [98, 47, 47, 52], 93, False),            # a duplicate used once
    ("47 + 47 + 47 - 52 + 98", [98, 47, 47, 52], 187, False),  # used three times
    ("3 * 3", [1, 2, 3], 9, False),
    ("(1 + 2) * 3 * 1", [1, 2, 3], 9, False),
    ("(1 + 2) * 3", [1, 2, 3], "nonsense", False),
    ("(1 + 2) * 3", [1, 2, 3], None, False),
    ("(1 + 2) * 3", None, 9, False),
    ("(1 + 2) * 3", ["1", "2", "3"], 9, False),
    (None, [1, 2, 3], 9, False),
    ("", [], 0, False),
])
def test_is_correct(answer, numbers, target, expected):
    assert cd.is_correct(answer, numbers, target) is expected


# --------------------------------------------------------------------------- score

def _example(numbers, target):
    return cd.examples_from_records([{"numbers": numbers, "target": target}])[0]


EX = _example([1, 2, 3], 9)


def test_score_full_format_and_correct():
    s = cd.score(" 1 plus 2 is 3, times 3 is 9.</think>\n<answer> (1 + 2) * 3 </answer>", EX)
    assert isinstance(s, Scored)
    assert s.reward == pytest.approx(1.1) and s.correct is True
    assert s.key == "9.00000" and s.answer == "(1 + 2) * 3"


def test_score_partial_formats():
    no_think = cd.score("<answer>(1 + 2) * 3</answer>", EX)   # "<think>" prefix but no "</think>"
    assert no_think.reward == pytest.approx(1.0 + 0.1 * 0.5) and no_think.correct
    no_newline = cd.score("ok</think> <answer>(1 + 2) * 3</answer>", EX)
    assert no_newline.reward == pytest.approx(1.0 + 0.1 * 0.6)
    trailing_text = cd.score("ok</think>\n<answer>(1 + 2) * 3</answer> done", EX)
    assert trailing_text.reward == pytest.approx(1.06)
    trailing_newline = cd.score("ok</think>\n<answer>(1 + 2) * 3</answer>\n", EX)   # `$` allows one
    assert trailing_newline.reward == pytest.approx(1.1)
    think_only = cd.score("hmm</think>", EX)
    assert think_only.reward == pytest.approx(0.01) and think_only.answer is None and think_only.key is None
    nothing = cd.score("no tags at all", EX)
    assert nothing == Scored(reward=0.0, correct=False, key=None, answer=None)


def test_score_wrong_answer_keeps_format_and_key():
    s = cd.score("x</think>\n<answer>1 + 2 + 3</answer>", EX)
    assert s.reward == pytest.approx(0.1) and not s.correct and s.key == "6.00000"


def test_last_answer_wins():
    good_last = cd.score("x</think>\n<answer>1 + 2 + 3</answer> no: <answer>3 * (2 + 1)</answer>", EX)
    assert good_last.correct and good_last.answer == "3 * (2 + 1)" and good_last.reward == pytest.approx(1.1)
    bad_last = cd.score("x</think>\n<answer>3 * (2 + 1)</answer> no: <answer>1 + 2 + 3</answer>", EX)
    assert not bad_last.correct and bad_last.key == "6.00000"


def test_keys_vote_together_and_abstain_on_misuse():
    a = cd.score("</think>\n<answer>(1 + 2) * 3</answer>", EX)
    b = cd.score("</think>\n<answer>3 * (2 + 1)</answer>", EX)
    assert a.key == b.key == "9.00000"
    for bad in ("3 * 3", "(1 + 2) * 3 * 1", "(1 + 2) * x", "-(1 + 2) * 3", "", "1 / (3 - 3) + 2"):
        s = cd.score(f"</think>\n<answer>{bad}</answer>", EX)
        assert s.key is None and not s.correct, bad
    assert cd.vote_key(-0.0) == cd.vote_key(-1e-9) == cd.vote_key(0.0) == "0.00000"
    z = cd.score("</think>\n<answer>0 * (1 - 2)</answer>", _example([0, 1, 2], 0))   # -0.0 in floats
    assert z.key == "0.00000" and z.correct
    third = cd.score("</think>\n<answer>1 / 3</answer>", _example([1, 3], "0.333333"))
    assert third.key == "0.33333" and third.correct


def test_non_integer_and_negative_targets():
    frac = _example([5, 2, 7], "8.5")
    assert frac.target == 8.5
    assert cd.score("</think>\n<answer>5 + 7 / 2</answer>", frac).correct
    neg = _example([3, 2, 6], "-4.5")
    assert cd.score("</think>\n<answer>3 / 2 - 6</answer>", neg).correct
    # A repeating decimal as the data stores it (str) and as a plain row might (float).
    for target in ("-15.727272727272727", -15.727272727272727):
        ex = _example([19, 35, 3, 11], target)
        assert cd.score("</think>\n<answer>(19 - 35) + 3 / 11</answer>", ex).correct
        assert not cd.score("</think>\n<answer>19 - 35 + 3 - 11</answer>", ex).correct


def test_format_helpers_match_the_reference_regexes():
    full = re.compile(r"^<think>.*?</think>\n<answer>.*?</answer>$", re.DOTALL)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "\n", "x", "<", ">", "/", " "]
    rng = random.Random(7)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        assert cd.full_format(text) == bool(full.match(text)), repr(text)
        assert has_tag_pair(text, "think") == bool(re.search(r"<think>.*?</think>", text, re.DOTALL)), repr(text)
        found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
        assert last_tag_content(text, "answer") == (found[-1] if found else None), repr(text)


def test_score_is_linear_on_pathological_completions():
    for completion in ("<think>" * 30_000, "<answer>" * 30_000, "</think>\n<answer>" * 20_000 + "x",
                       "x</think>\n<answer>" + "(" * 200_000 + "</answer>", "\n" * 300_000):
        t0 = time.perf_counter()
        s = cd.score(completion, EX)
        assert time.perf_counter() - t0 < 0.5
        assert not s.correct
    assert cd.score(None, EX).reward == 0.0


# --------------------------------------------------------------------------- records

ES_ROW = {"id": 7, "context": "CTX<think>", "numbers": [44, 19, 35], "target": "98", "solution": None}


def test_examples_from_es_and_plain_rows():
    es, plain, plain_f, plain_s = cd.examples_from_records([
        ES_ROW, {"numbers": [1, 2, 3], "target": 9}, {"numbers": [5, 2, 7], "target": 8.5},
        {"numbers": [83, 78, 1, 39], "target": "82"}])
    assert isinstance(es, Example)
    assert es.id == "7" and es.prompt == "CTX<think>" and es.numbers == (44, 19, 35) and es.target == 98.0
    assert es.response_prefix == "<think>"
    assert es.messages == (("system", cd.SYSTEM), ("user", cd.user_text("44 19 35", "98")))
    assert plain.id == "1" and plain.target == 9.0 and plain.numbers == (1, 2, 3)
    assert plain.prompt == (
        "You are a helpful assistant. You first think about the reasoning process in your mind and then provide "
        "the user with the answer.Using the numbers [1 2 3], create an equation that equals 9. You can use basic "
        "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in <think> "
        "</think> tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 "
        "</answer>.Let me solve this step by step.\n<think>")
    assert plain.messages[1][1].startswith("Using the numbers [1 2 3], create an equation that equals 9. ")
    assert plain.messages[1][1].endswith("for example <answer> (1 + 2) / 3 </answer>.")
    assert "equals 8.5." in plain_f.prompt and plain_f.target == 8.5
    assert "[83 78  1 39]" in plain_s.prompt and plain_s.id == "3"


@pytest.mark.parametrize("row,field", [
    ({"target": 9}, "numbers"),
    ({"numbers": [], "target": 9}, "numbers"),
    ({"numbers": "1 2 3", "target": 9}, "numbers"),
    ({"numbers": [1, "two", 3], "target": 9}, "numbers"),
    ({"numbers": [1, 2.5, 3], "target": 9}, "numbers"),
    ({"numbers": [1, True, 3], "target": 9}, "numbers"),
    ({"numbers": [1, -2, 3], "target": 9}, "numbers"),
    ({"numbers": [1, 2, 3]}, "target"),
    ({"numbers": [1, 2, 3], "target": None}, "target"),
    ({"numbers": [1, 2, 3], "target": "nine"}, "target"),
    ({"numbers": [1, 2, 3], "target": "nan"}, "target"),
    ({"numbers": [1, 2, 3], "target": float("inf")}, "target"),
    ({"numbers": [1, 2, 3], "target": [9]}, "target"),
])
def test_bad_rows_raise_one_line_naming_row_and_field(row, field):
    with pytest.raises(ValueError) as e:
        cd.examples_from_records([{"numbers": [1, 2], "target": 3}, {"numbers": [4, 5], "target": "9"}, row])
    msg = str(e.value)
    assert "row 2" in msg and repr(field) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="row 0"):
        cd.examples_from_records(["not a row"])


def test_split_first_and_last():
    exs = cd.examples_from_records(cd.synthetic_records(10, 0))
    train, test = split_first_last(exs, 3, 4)
    assert train == exs[:3] and test == exs[-4:]
    assert split_first_last(exs, 6, 4) == (exs[:6], exs[6:])
    assert split_first_last(exs, 0, 0) == ([], [])
    with pytest.raises(ValueError, match=r"task\.train_size.*task\.test_size"):
        split_first_last(exs, 7, 4)


def test_registry_gives_task_objects():
    from randopt_hpc.tasks.countdown_qa import CountdownQA

    assert TASKS == {"countdown": cd.Countdown, "countdown_qa": CountdownQA}
    task = get_task("countdown")
    assert isinstance(task, cd.Countdown) and task.name == "countdown" and not task.takes_template
    rows = cd.synthetic_records(3, 1)
    assert task.synthetic_records(3, 1) == rows and task.examples_from_records(rows) == cd.examples_from_records(rows)
    ex = task.examples_from_records(rows)[0]
    assert task.score(f"</think>\n<answer>{rows[0]['solution']}</answer>", ex).correct
    with pytest.raises(KeyError) as e:
        get_task("gsm8k")
    assert e.value.args[0] == "unknown task 'gsm8k'; valid: countdown, countdown_qa"
    with pytest.raises(ValueError, match="takes no prompt template"):
        get_task("countdown", template="{numbers} {target}")


# --------------------------------------------------------------------------- synthetic data

def test_synthetic_records_deterministic_prefix_and_solvable():
    rows = cd.synthetic_records(200, 5)
    assert rows == cd.synthetic_records(200, 5)
    assert cd.synthetic_records(120, 5) == rows[:120]
    assert cd.synthetic_records(200, 6) != rows and cd.synthetic_records(0, 5) == []
    assert [r["id"] for r in rows] == [f"syn-5-{i}" for i in range(200)]
    for r in rows:
        assert len(r["numbers"]) in (3, 4) and all(1 <= n <= 99 for n in r["numbers"])
        assert isinstance(r["target"], int) and 1 <= r["target"] <= 999
        assert cd.is_correct(r["solution"], r["numbers"], r["target"]), r
        assert reference_correct(r["solution"], r["numbers"], r["target"]), r
    assert any("/" in r["solution"] for r in rows) and any(len(r["numbers"]) == 3 for r in rows)
    exs = cd.examples_from_records(rows)
    assert [e.id for e in exs] == [r["id"] for r in rows]
    good = cd.score(f"</think>\n<answer>{rows[0]['solution']}</answer>", exs[0])
    assert good.correct and good.reward == pytest.approx(1.1)
