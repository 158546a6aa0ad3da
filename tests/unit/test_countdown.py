"""Countdown task: the reference's reward and vote against an implementation of the reference's rules
written here (re + eval, on inputs this file controls), the golden prompts of both styles, records and
synthetic data."""
from __future__ import annotations

import json
import os
import random
import re
import warnings
from pathlib import Path

import pytest

from randopt_hpc.tasks import TASKS, get_task, task_class
from randopt_hpc.tasks import countdown as cd
from randopt_hpc.tasks.base import Example, Scored, has_tag_pair, last_tag_content, split_first_last
from tests.conftest import fastest

DATA = Path(__file__).resolve().parents[3] / "shared/data/countdown.json"
REAL_ROWS = 2200


# --------------------------------------------------------------------------- the reference's rules, as written there

def ref_format(response: str) -> float:
    if re.match(r"^<think>.*?<\/think>\n<answer>.*?<\/answer>$", response, re.DOTALL):
        return 1.0
    return (0.1 if re.search(r"<think>.*?<\/think>", response, re.DOTALL) else 0.0) + \
        (0.5 if re.search(r"<answer>.*?<\/answer>", response, re.DOTALL) else 0.0)


@pytest.fixture(autouse=True)
def _quiet_eval():
    with warnings.catch_warnings():   # eval("(1)(2)") warns before it fails
        warnings.simplefilter("ignore", SyntaxWarning)
        yield


def ref_answer(response: str, numbers, target) -> float:
    found = re.findall(r"<answer>(.*?)<\/answer>", response, re.DOTALL)
    if not found or not found[-1] or not re.match(r"^[0-9+\-*/() ]+$", found[-1]):
        return 0.0
    content = found[-1]
    if sorted(int(n) for n in re.findall(r"\d+", content)) != sorted(numbers):
        return 0.0
    try:
        return 1.0 if abs(float(eval(content, {"__builtins__": None}, {})) - float(target)) < 1e-5 else 0.0
    except Exception:
        return 0.0


def ref_reward(response: str, numbers, target) -> tuple[float, bool]:
    answer = ref_answer(response, numbers, target)
    return ref_format("<think>" + response) * 0.1 + answer, answer >= 1.0


def ref_vote(response: str, numbers, target) -> tuple[str, bool]:
    """extract_answer_for_voting, then is_voted_answer_correct."""
    found = re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)
    formula = found[-1].strip() if found else ""
    if not formula or not re.match(r"^[0-9+\-*/() ]+$", formula):
        return "", False
    used = [int(n) for n in re.findall(r"\d+", formula)]
    if any(n > 10**3 for n in used) or sorted(used) != sorted(numbers):
        return "", False
    try:
        result = eval(formula, {"__builtins__": None}, {})
        key = str(int(round(result))) if abs(result - round(result)) < 1e-9 else str(result)
    except (SyntaxError, ZeroDivisionError, TypeError, ValueError, OverflowError):
        return "", False
    return key, abs(float(key) - float(target)) < 1e-5


def _example(numbers, target, style="reference"):
    return cd.examples_from_records([{"numbers": numbers, "target": target}], style)[0]


# (completion, numbers, target): each written from a rule of the reference reward or vote.
EDGE = [
    ("<think>x</think>\n<answer>44 + 19 + 35</answer>", [44, 19, 35], 98),       # the model repeats <think>
    ("x</think>\n<answer>44 + 19 + 35</answer>", [44, 19, 35], 98),               # the full format
    ("x</think>\n<answer>\n44 + 19 + 35\n</answer>", [44, 19, 35], 98),          # a leading newline fails the filter
    ("x</think>\n<answer>44 + 19 + 35\n</answer>", [44, 19, 35], 98),             # `$` allows one final newline
    ("x</think>\n<answer>44 + 19 + 35\n\n</answer>", [44, 19, 35], 98),           # but not two
    ("x</think>\n<answer>\t44 + 19 + 35</answer>", [44, 19, 35], 98),             # a tab fails the filter
    ("x</think>\n<answer> 44 + 19 + 35 </answer>", [44, 19, 35], 98),             # spaces are characters it allows
    ("x</think>\n<answer>-3 + 5 + 6</answer>", [3, 5, 6], 8),                     # unary minus is Python's
    ("x</think>\n<answer>+44 + 19 + 35</answer>", [44, 19, 35], 98),              # unary plus
    ("x</think>\n<answer>- - 44 + 19 + 35</answer>", [44, 19, 35], 98),           # two of them
    ("x</think>\n<answer>2**3</answer>", [2, 3], 8),                               # ** is power
    ("x</think>\n<answer>2 ** -1</answer>", [2, 1], 0.5),                          # to a float
    ("x</think>\n<answer>7//2</answer>", [7, 2], 3),                               # floor division
    ("x</think>\n<answer>(0 - 8) ** (1 / 3)</answer>", [0, 8, 1, 3], 1),          # a complex value is never right
    ("x</think>\n<answer>05 + 3</answer>", [5, 3], 8),                             # Python refuses leading zeros
    ("x</think>\n<answer>00 + 3</answer>", [0, 3], 3),                             # but not 00
    ("x</think>\n<answer>(1)(2)</answer>", [1, 2], 2),                             # calling an int fails
    ("x</think>\n<answer>()</answer>", [1], 1),                                    # a tuple
    ("x</think>\n<answer>1 / 0 + 2</answer>", [1, 0, 2], 2),                       # division by zero
    ("x</think>\n<answer>1 2 + 3</answer>", [1, 2, 3], 6),                         # not an expression
    ("x</think>\n<answer>3 / 2 * 4</answer>", [3, 2, 4], 6),
    ("x</think>\n<answer>5 + 7 / 2</answer>", [5, 2, 7], "8.5"),                  # non-integer target
    ("x</think>\n<answer>3 / 2 - 6</answer>", [3, 2, 6], "-4.5"),                 # negative target
    ("x</think>\n<answer>1 / 3</answer>", [1, 3], "0.333333"),                     # within 1e-5
    ("x</think>\n<answer>1 / 3</answer>", [1, 3], "0.3333"),                       # not within 1e-5
    ("x</think>\n<answer>1 + 2 = 3</answer>", [1, 2], 3),                          # `=` is not allowed
    ("x</think>\n<answer>٣ + 1</answer>", [3, 1], 4),                              # nor unicode digits
    ("x</think>\n<answer>44 +\n19 + 35</answer>", [44, 19, 35], 98),              # nor an inner newline
    ("x</think>\n<answer></answer>", [1], 1),                                      # empty
    ("x</think>\n<answer>44 + 19 + 35", [44, 19, 35], 98),                         # no closing tag
    ("x</think>\n<answer>1 + 2</answer> no, <answer>44 + 19 + 35</answer>", [44, 19, 35], 98),   # the last counts
    ("x</think>\n<answer>44 + 19 + 35</answer> no, <answer>1 + 2</answer>", [44, 19, 35], 98),
    ("x</think>\n<answer><answer>44 + 19 + 35</answer>", [44, 19, 35], 98),        # non-greedy from the first tag
    ("x</think>\n<answer>44 + 19 + 35</answer>\n", [44, 19, 35], 98),             # format: one final newline
    ("x</think>\n<answer>44 + 19 + 35</answer>\n\n", [44, 19, 35], 98),           # two: partial format
    ("x</think> \n<answer>44 + 19 + 35</answer>", [44, 19, 35], 98),              # a space before the newline
    ("x</think>\n<answer>44 + 19 + 35</answer><|endoftext|>", [44, 19, 35], 98),
    ("x</think>\n<answer>44 + 44 + 19</answer>", [44, 44, 19], 107),              # a number given twice
    ("x</think>\n<answer>44 + 19</answer>", [44, 44, 19], 63),                     # used once
    ("x</think>\n<answer>1000 + 1</answer>", [1000, 1], 1001),                     # the vote's bound: 1000 votes
    ("x</think>\n<answer>1001 + 1</answer>", [1001, 1], 1002),                     # 1001 is rewarded, never voted
    ("<answer>44 + 19 + 35</answer>", [44, 19, 35], 98),                            # no think pair
    ("no tags at all", [44, 19, 35], 98),
    ("", [44, 19, 35], 98),
]


@pytest.mark.parametrize("completion,numbers,target", EDGE)
def test_reward_and_vote_equal_the_reference(completion, numbers, target):
    got = cd.score(completion, _example(numbers, target))
    reward, correct = ref_reward(completion, numbers, target)
    assert (got.reward, got.correct) == (pytest.approx(reward), correct)
    key, voted_right = ref_vote(completion, numbers, target)
    assert (got.key or "") == key
    assert (bool(got.key) and cd.key_correct(got.key, _example(numbers, target))) == voted_right


def test_edge_cases_exercise_every_outcome():
    rewards = {round(ref_reward(c, n, t)[0], 6) for c, n, t in EDGE}
    assert {0.0, 0.01, 0.1, 1.05, 1.06, 1.1} <= rewards
    # The vote is laxer than the reward: whitespace it strips, and it refuses numbers past 1000.
    laxer = [c for c, n, t in EDGE if ref_vote(c, n, t)[1] and not ref_reward(c, n, t)[1]]
    stricter = [c for c, n, t in EDGE if ref_reward(c, n, t)[1] and not ref_vote(c, n, t)[0]]
    assert len(laxer) >= 2 and len(stricter) == 1


def test_the_issue_example_scores_as_in_the_reference():
    s = cd.score("x</think>\n<answer>\n44 + 19 + 35\n</answer>", _example([44, 19, 35], 98))
    assert s.reward == pytest.approx(0.1) and not s.correct
    assert s.key == "98"   # the vote strips: this answer still votes, and its vote is right


HOSTILE = ["9**9**9**9", "(9**9)**(9**9)", "9 ** 9 ** 9 * 9", "-" * 490 + "9 + 9 + 9 + 9", "-" * 5000 + "9",
           "(" * 150 + "9+9+9+9" + ")" * 150, "(" * 100_000, " " * 20_000 + "9 + 9 + 9 + 9", "9" * 5000 + " + 9",
           "9" * 100_000, "1/0", "(9-9)/(9-9)", "9e999", "__import__('os').system('true')", "9 " * 50_000,
           "()" * 10_000, "\x00" * 10_000, "٩ + ٩", "9+9+9+9" + "\n" * 10_000, "<answer>" * 20_000,
           "</answer>" * 20_000, "𝟗 + 9 + 9 + 9", "9.0 + 9 + 9 + 9", "9_9 + 9 + 9"]


@pytest.mark.parametrize("i", range(len(HOSTILE)))
def test_hostile_answers_score_nothing_within_10_ms(i):
    ex = _example([9, 9, 9, 9], 1)
    completion = f"x</think>\n<answer>{HOSTILE[i]}</answer>"
    s, seconds = fastest(cd.score, completion, ex, before=cd.python_value.cache_clear)
    assert isinstance(s, Scored) and not s.correct
    assert seconds < 0.010, f"{seconds * 1000:.1f} ms"


def test_within_its_bounds_the_evaluator_is_pythons():
    # 2**16 bits and 500 nested signs are fine; past them, nothing is computed.
    assert cd.python_value("2 ** 65535") == 2 ** 65535 and cd.python_value("2 ** 65537") is None
    assert cd.python_value("-" * 501 + "1") == -1 and cd.python_value("-" * 512 + "1") is None
    assert cd.python_value("()") is None and cd.python_value("7 // 2") == 3


# --------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def real_rows():
    if not DATA.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{DATA} is missing (required in CI)")
        pytest.skip(f"{DATA} not present")
    return json.loads(DATA.read_text(encoding="utf-8"))


def test_real_solutions_score_as_in_the_reference(real_rows):
    examples = cd.examples_from_records(real_rows)
    completions = [f"x</think>\n<answer>{r['solution']}</answer>" for r in real_rows if r["solution"] is not None]
    rows = [(r, ex) for r, ex in zip(real_rows, examples) if r["solution"] is not None]
    ours = [cd.score(c, ex) for c, (_, ex) in zip(completions, rows)]
    theirs = [ref_reward(c, r["numbers"], r["target"]) for c, (r, _) in zip(completions, rows)]
    assert len(real_rows) == REAL_ROWS and len(rows) == REAL_ROWS - 19
    assert [(s.reward, s.correct) for s in ours] == [(pytest.approx(t[0]), t[1]) for t in theirs]
    assert [s.key or "" for s in ours] == [ref_vote(c, r["numbers"], r["target"])[0]
                                            for c, (r, _) in zip(completions, rows)]
    n_correct = sum(s.correct for s in ours)
    print(f"countdown.json: {len(rows)} solutions, {n_correct} correct under the reference reward")
    assert 2100 < n_correct < len(rows)   # the known flaws are there, so agreement is not vacuous


def test_real_rows_make_the_es_prompts_exactly(real_rows):
    examples = cd.examples_from_records(real_rows, "es")
    assert [e.id for e in examples] == [str(r["id"]) for r in real_rows]
    assert all(e.prompt == r["context"] for e, r in zip(examples, real_rows))
    # Without `context` the ES prompt is rebuilt byte for byte (numpy-style padded numbers included).
    rebuilt = cd.examples_from_records([{k: v for k, v in r.items() if k != "context"} for r in real_rows], "es")
    assert all(e.prompt == r["context"] for e, r in zip(rebuilt, real_rows))
    assert all(e.prompt.endswith(e.response_prefix) for e in examples)
    reference = cd.examples_from_records(real_rows[:1])[0]
    assert reference.prompt.startswith(cd.SYSTEM + "\nUsing the numbers [44, 19, 35], create an equation that "
                                       "equals 98.")


# --------------------------------------------------------------------------- score

EX = _example([1, 2, 3], 9)


def test_score_fields():
    s = cd.score(" 1 plus 2 is 3, times 3 is 9.</think>\n<answer> (1 + 2) * 3 </answer>", EX)
    assert isinstance(s, Scored)
    assert s == Scored(reward=pytest.approx(1.1), correct=True, key="9", answer="(1 + 2) * 3")
    assert cd.score("no tags at all", EX) == Scored(reward=0.0, correct=False, key=None, answer=None)
    assert cd.score(None, EX).reward == 0.0
    assert cd.key_correct("9", EX) and not cd.key_correct("9.0001", EX) and not cd.key_correct("nine", EX)


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


def test_reward_matches_the_reference_on_random_answers():
    rng = random.Random(11)
    pieces = ["1", "2", "3", "12", "05", "0", "+", "-", "*", "/", "**", "//", "(", ")", " ", "\n", "\t"]
    seen = set()
    for _ in range(3000):
        body = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 9)))
        completion = f"x</think>\n<answer>{body}</answer>"
        numbers = [int(n) for n in re.findall(r"\d+", body)] or [1]
        if any(n >= 10**10 for n in numbers):
            continue   # a row's numbers have at most 10 digits
        target = rng.choice([0, 1, 3, 6, -1, 0.5])
        if "**" in body and len(body) > 6:
            continue   # the reference could compute a huge power; bounded inputs only here
        got, want = cd.score(completion, _example(numbers, target)), ref_reward(completion, numbers, target)
        assert (got.reward, got.correct) == (pytest.approx(want[0]), want[1]), body
        assert (got.key or "") == ref_vote(completion, numbers, target)[0], body
        seen.add(want[1])
    assert seen == {True, False}


def test_score_is_linear_on_pathological_completions():
    for completion in ("<think>" * 30_000, "<answer>" * 30_000, "</think>\n<answer>" * 20_000 + "x",
                       "x</think>\n<answer>" + "(" * 200_000 + "</answer>", "\n" * 300_000,
                       "<answer>" + " " * 1_000_000 + "</answer>", "<answer>" + "1+" * 300_000 + "1</answer>"):
        s, seconds = fastest(cd.score, completion, EX)
        assert seconds < 0.5, f"{seconds:.2f} s"
        assert not s.correct


# --------------------------------------------------------------------------- prompts

USER_44 = ("Using the numbers [44, 19, 35], create an equation that equals 98. You can use basic arithmetic "
           "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. "
           "And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.")
SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in your mind and then provide "
          "the user with the answer.")


def test_reference_prompt_is_the_reference_text():
    ex = _example([44, 19, 35], "98")
    assert ex.messages == (("system", SYSTEM), ("user", USER_44))
    assert ex.prompt == SYSTEM + "\n" + USER_44 + "\n" and ex.response_prefix == ""
    # str.format of the row's own values: an int target, a float target, a string with its spaces.
    assert "equals 98." in _example([44, 19, 35], 98).prompt
    assert "equals 8.5." in _example([5, 2, 7], 8.5).prompt
    assert "[83, 78, 1, 39]" in _example([83, 78, 1, 39], "82").prompt


# --------------------------------------------------------------------------- records

ES_ROW = {"id": 7, "context": "CTX<think>", "numbers": [44, 19, 35], "target": "98", "solution": None}


def test_examples_from_es_and_plain_rows():
    es, plain, plain_f, plain_s = cd.examples_from_records([
        ES_ROW, {"numbers": [1, 2, 3], "target": 9}, {"numbers": [5, 2, 7], "target": 8.5},
        {"numbers": [83, 78, 1, 39], "target": "82"}], "es")
    assert isinstance(es, Example)
    assert es.id == "7" and es.prompt == "CTX<think>" and es.numbers == (44, 19, 35) and es.target == 98.0
    assert es.response_prefix == "<think>"
    assert es.messages == (("system", cd.SYSTEM), ("user", cd.user_text("[44 19 35]", "98")))
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

    assert TASKS["countdown"] == ("randopt_hpc.tasks.countdown", "Countdown")
    assert task_class("countdown") is cd.Countdown and task_class("countdown_qa") is CountdownQA
    task = get_task("countdown")
    assert isinstance(task, cd.Countdown) and task.name == "countdown" and not task.takes_template
    rows = cd.synthetic_records(3, 1)
    assert task.synthetic_records(3, 1) == rows and task.examples_from_records(rows) == cd.examples_from_records(rows)
    ex = task.examples_from_records(rows)[0]
    assert task.score(f"</think>\n<answer>{rows[0]['solution']}</answer>", ex).correct
    with pytest.raises(KeyError) as e:
        get_task("gsm9k")
    assert e.value.args[0] == f"unknown task 'gsm9k'; valid: {', '.join(sorted(TASKS))}"
    assert get_task("countdown", prompt_style="es").examples_from_records(rows)[0].response_prefix == "<think>"
    with pytest.raises(ValueError, match="prompt_style"):
        get_task("countdown", prompt_style="chatty")
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
        assert ref_reward(f"x</think>\n<answer>{r['solution']}</answer>", r["numbers"], r["target"])[1], r
    assert any("/" in r["solution"] for r in rows) and any(len(r["numbers"]) == 3 for r in rows)
    exs = cd.examples_from_records(rows)
    assert [e.id for e in exs] == [r["id"] for r in rows]
    good = cd.score(f"</think>\n<answer>{rows[0]['solution']}</answer>", exs[0])
    assert good.correct and good.reward == pytest.approx(1.1)
