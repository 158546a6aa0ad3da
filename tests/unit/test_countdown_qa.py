"""The demo's short Countdown format, and that the demo model's training mixture holds out its problems."""
from __future__ import annotations

import os
import random
import re

import pytest

from randopt_hpc.tasks import countdown_qa, expression, get_task


def _example(numbers=(9, 18, 20), target=182):
    return countdown_qa.examples_from_records([{"numbers": list(numbers), "target": target}])[0]


def test_prompt_and_registry():
    ex = _example()
    assert ex.prompt == "Q: use 9 18 20 to make 182 A:"
    assert ex.response_prefix == "" and ex.numbers == (9, 18, 20) and ex.target == 182.0
    task = get_task("countdown_qa")
    assert isinstance(task, countdown_qa.CountdownQA) and task.takes_template
    assert task.examples_from_records([{"numbers": [9, 18, 20], "target": 182}]) == [ex]
    worded = get_task("countdown_qa", template="Q: use {numbers} and make {target} A:")
    assert worded.examples_from_records([{"numbers": [9, 18, 20], "target": 182}])[0].prompt == \
        "Q: use 9 18 20 and make 182 A:"
    with pytest.raises(ValueError, match="must hold"):
        get_task("countdown_qa", template="Q: {numbers} only")


@pytest.mark.parametrize("completion, reward, correct, key", [
    (" 20+18*9", 1.1, True, "182.00000"),
    (" 18*9+20\nQ: use 1 2 3 to make 6 A: 1+2+3", 1.1, True, "182.00000"),   # only the first line counts
    (" 20*9+18", 0.1, False, "198.00000"),     # valid, wrong value: still votes
    (" 1+2+3", 0.1, False, None),              # other numbers: answers another question, abstains
    (" 20+18", 0.1, False, None),              # a number missing
    (" 20+18*", 0.0, False, None),
    ("", 0.0, False, None),
    (None, 0.0, False, None),
    ("\n20+18*9", 0.0, False, None),           # the answer line is empty
    (" " + "(" * 5000 + "1", 0.0, False, None),
])
def test_score(completion, reward, correct, key):
    s = countdown_qa.score(completion, _example())
    assert s.reward == pytest.approx(reward)
    assert s.correct is correct and s.key == key


def test_score_agrees_with_is_correct_on_synthetic_solutions():
    rows = countdown_qa.synthetic_records(300, 7)
    for row, ex in zip(rows, countdown_qa.examples_from_records(rows)):
        assert expression.is_correct(row["solution"], row["numbers"], row["target"])
        assert countdown_qa.score(" " + row["solution"], ex).correct


def test_synthetic_records_are_deterministic_distinct_and_prefix_stable():
    a = countdown_qa.synthetic_records(500, 0)
    assert a == countdown_qa.synthetic_records(500, 0)
    assert a[:200] == countdown_qa.synthetic_records(200, 0)
    assert a != countdown_qa.synthetic_records(500, 1)
    keys = [countdown_qa.problem_key(r["numbers"], r["target"]) for r in a]
    assert len(set(keys)) == len(keys)
    assert all(1 <= r["target"] <= 999 and len(r["numbers"]) == 3 and all(1 <= n <= 20 for n in r["numbers"])
               for r in a)


def test_bad_rows_are_named():
    with pytest.raises(ValueError, match="row 1: field 'target'"):
        countdown_qa.examples_from_records([{"numbers": [1, 2], "target": 3}, {"numbers": [1], "target": "x"}])


_INTS = re.compile(r"\d+")


def _problem_keys(prompt: str, answer: str) -> list[tuple]:
    """Every (sorted numbers, value) a training example reveals, whatever its skill and format."""
    body = prompt[3:-3]   # strip "Q: " and " A:"
    m = re.fullmatch(r"(?:use ([\d ]+) to make (\d+)|make (\d+) from ([\d ]+))", body)
    if m:
        nums, target = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        return [countdown_qa.problem_key(_INTS.findall(nums), target)]
    m = re.fullmatch(r"([\d+\-*]+)=(\d+)?\??", body)
    if m and len(_INTS.findall(m.group(1))) == 3:
        value = expression.evaluate_expression(m.group(1))
        return [countdown_qa.problem_key(_INTS.findall(m.group(1)), value)]
    return []


def test_demo_mixture_never_holds_a_heldout_problem():
    from tools import train_demo_model as tdm

    heldout = tdm.heldout_keys()
    assert len(heldout) == tdm.HELDOUT
    seen = 0
    for rows in tdm.batches(seed=0, steps=40, batch=128, exclude=heldout):
        for prompt, answer in rows:
            keys = _problem_keys(prompt, answer)
            seen += bool(keys)
            assert not set(keys) & heldout, (prompt, answer)
    assert seen > 2000   # the check really parsed the expression-based skills
    # Without the exclusion the same stream does hit held-out problems, so the check can fail.
    hits = sum(bool(set(_problem_keys(p, a)) & heldout)
               for rows in tdm.batches(seed=0, steps=40, batch=128, exclude=set()) for p, a in rows)
    assert hits > 0


def test_fresh_problem_skips_excluded_keys():
    from tools import train_demo_model as tdm

    rng = random.Random(3)
    first = countdown_qa.random_problem(random.Random(3))
    got = tdm.fresh_problem(rng, {countdown_qa.problem_key(first[0], first[1])})
    assert countdown_qa.problem_key(got[0], got[1]) != countdown_qa.problem_key(first[0], first[1])


def test_template_words_the_question_and_reaches_the_examples(tmp_path):
    from randopt_hpc.config import load_config
    from randopt_hpc.data import load_examples

    ex = countdown_qa.examples_from_records([{"numbers": [9, 18, 20], "target": 182}],
                                            template="Q: use {numbers} and make {target} A:")[0]
    assert ex.prompt == "Q: use 9 18 20 and make 182 A:"
    assert countdown_qa.score(" 20+18*9", ex).correct
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_config(os.path.join(root, "configs", "demo.yaml"),
                      [f"output.dir={tmp_path}", f"model.path={root}/models/demo", "task.train_size=2",
                       "task.test_size=2"])
    train, test = load_examples(cfg)
    assert train[0].prompt.startswith("Q: use ") and " and make " in train[0].prompt
    assert [e.numbers for e in train] == [tuple(r["numbers"]) for r in countdown_qa.synthetic_records(4, 0)[:2]]
