"""Countdown in the demo model's short question/answer format.

    Q: use 9 18 20 to make 182 A: 20+18*9

The shipped demo model (models/demo/) was pretrained on a mixture of arithmetic skills written
this way; it has no chat template and no <think>/<answer> tags. Expressions follow the project's
strict grammar (randopt_hpc.tasks.expression: no unary signs, no ** or //, bounded; every number used
exactly once, tolerance 1e-5); the prompt and the answer extraction are its own:
- the answer is the completion up to its first newline, stripped;
- reward = 0.1 * format + correct, where format is 1 when that answer parses as an expression
  (the same 0.1 weight as Countdown's tag format), correct is exact correctness;
- the voting key is the value of an answer that uses exactly the given numbers (else abstain).

Synthetic problems are the demo distribution: three numbers in 1..20 and a target in 1..999 made
by two of + - * with normal precedence, each (sorted numbers, target) at most once per stream.
"""
from __future__ import annotations

import functools
import itertools
import random

from randopt_hpc.tasks import countdown, expression
from randopt_hpc.tasks.base import Example, Scored, record_id

OPS = ("+", "-", "*")
TEMPLATE = "Q: use {numbers} to make {target} A:"   # the wording the demo model was trained on
STOP_STRINGS = ("\n",)   # the answer is the first line: nothing after its newline is read


def prompt(numbers, target_text: str, template: str = TEMPLATE) -> str:
    return template.format(numbers=" ".join(str(n) for n in numbers), target=target_text)


def examples_from_records(records: list[dict], template: str = TEMPLATE) -> list[Example]:
    """Rows {numbers, target} (an `id` is kept when present), as Countdown's data files. `template`
    (config task.template) words the question; a wording the model never saw makes a new target task."""
    examples = []
    for i, row in enumerate(records):
        numbers, target, target_text = countdown.parse_row(row, i)
        text = prompt(numbers, target_text, template)
        examples.append(Example(id=record_id(row, i), prompt=text, messages=(("user", text),),
                                response_prefix="", numbers=numbers, target=target, stop_strings=STOP_STRINGS))
    return examples


def extract(completion) -> str:
    text = completion if isinstance(completion, str) else ""
    return text.split("\n", 1)[0].strip()


def score(completion: str, example: Example) -> Scored:
    answer = extract(completion)
    fmt = 1.0 if expression.evaluate_expression(answer) is not None else 0.0
    return expression.score_answer(answer or None, example, fmt)


def problem_key(numbers, target) -> tuple:
    """What makes two problems the same problem (the demo model's training data excludes test keys)."""
    return tuple(sorted(int(n) for n in numbers)), int(target)


def random_problem(rng: random.Random, lo: int = 1, hi: int = 20) -> tuple[list[int], int, str]:
    """(numbers in shown order, target, one solution) with the target in 1..999."""
    while True:
        nums = [rng.randint(lo, hi) for _ in range(3)]
        ops = [rng.choice(OPS), rng.choice(OPS)]
        expr = f"{nums[0]}{ops[0]}{nums[1]}{ops[1]}{nums[2]}"
        value = expression.evaluate_expression(expr)
        if value is not None and 1 <= value <= 999:
            shown = nums[:]
            rng.shuffle(shown)
            return shown, int(value), expr


def _value(a: int, op1: str, b: int, op2: str, c: int) -> int:
    """a op1 b op2 c with * before + and -, as random_problem's expressions evaluate."""
    apply = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    if op2 == "*" and op1 != "*":
        return apply[op1](a, b * c)
    return apply[op2](apply[op1](a, b), c)


@functools.lru_cache(maxsize=1)
def distinct_problems(lo: int = 1, hi: int = 20) -> int:
    """How many distinct problems (problem_key) random_problem can draw: the most synthetic_records can give."""
    keys = set()
    for a, b, c in itertools.product(range(lo, hi + 1), repeat=3):
        for op1, op2 in itertools.product(OPS, repeat=2):
            v = _value(a, op1, b, op2, c)
            if 1 <= v <= 999:
                keys.add(problem_key((a, b, c), v))
    return len(keys)


def synthetic_records(n: int, seed: int) -> list[dict]:
    """n distinct problems, a pure function of (n, seed); a prefix of a longer stream with the same seed."""
    if n > distinct_problems():
        # Asking for more would draw forever: every further draw repeats a problem.
        raise ValueError(f"task.test_size: {n:,} problems asked, only {distinct_problems():,} distinct ones exist")
    rng = random.Random(f"countdown_qa:{seed}")
    rows, seen = [], set()
    while len(rows) < n:
        numbers, target, solution = random_problem(rng)
        key = problem_key(numbers, target)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"id": f"cqa-{seed}-{len(rows)}", "numbers": numbers, "target": target, "solution": solution})
    return rows


def check_template(template: str) -> None:
    """ValueError unless the template holds {numbers} and {target} and no other field."""
    try:
        shown = template.format(numbers="\0N", target="\0T")
        ok = "\0N" in shown and "\0T" in shown
    except (KeyError, IndexError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"must hold {{numbers}} and {{target}} and no other fields, got {template!r}")


class CountdownQA:
    """The Task (randopt_hpc.tasks.base.Task) over this module's functions; `template` words the question."""
    name = "countdown_qa"
    takes_template = True
    data_format = "a JSON list or JSON lines of rows with numbers (a list of integers) and target"
    stop_strings = STOP_STRINGS

    @property
    def synthetic_limit(self) -> int:
        return distinct_problems()

    def __init__(self, template: str | None = None):
        if template is not None:
            check_template(template)
        self.template = TEMPLATE if template is None else template

    check_template = staticmethod(check_template)

    def examples_from_records(self, records: list[dict]) -> list[Example]:
        return examples_from_records(records, self.template)

    synthetic_records = staticmethod(synthetic_records)
    score = staticmethod(score)
