"""Countdown: combine the given numbers with + - * / into an expression that equals the target.

Two prompt styles (config task.prompt_style):
- reference (the default): the RandOpt repository's prompt byte for byte (data_handlers/countdown.py):
  the numbers shown as a Python list ("[44, 19, 35]"), the target as the data gives it, a system and a
  user message; without a chat template the two joined by newlines (base.reference_prompt), nothing
  prefilled.
- es: the ES-at-scale wording: numbers numpy-style ("[44 19 35]"), the raw prompt ending in
  "Let me solve this step by step.\n<think>" (the data's `context` when a row has one), and "<think>"
  prefilled after a chat template too.

Scoring is the reference reward (utils/reward_score/countdown.py), the same in both styles:
reward = 0.1 * format + answer, on "<think>" + completion (the reference prepends it whether or not the
prompt prefilled it). format is 1.0 when the text is "<think>…</think>\n<answer>…</answer>" (one final
newline allowed), else 0.1 for a think pair plus 0.5 for an answer pair. answer is 1.0 when the LAST
answer's contents, unstripped, are only the characters 0-9 + - * / ( ) and space (one final newline
allowed, as the regex's `$` allows), its digit runs are the given numbers (as a multiset), and it
evaluates as Python evaluates it (unary signs, ** and // included) to within 1e-5 of the target.
So "<answer>\n44 + 19 + 35\n</answer>" earns no answer reward: the leading newline fails the filter.
`correct` is answer == 1.0 (the reference's is_answer_correct).

The vote is the reference's extract_answer_for_voting, which is more lenient than the reward: the
answer is stripped (any whitespace), every digit run must be at most 1000 and the runs must be the
given numbers, and the key is the value ("9", or str(float) when not within 1e-9 of an integer), so
different expressions of one value vote together. A voted key is right when its value is within 1e-5
of the target (is_voted_answer_correct): `key_correct`.

Where this departs from the reference, and why: expressions are never eval'd. Python's own parser
(ast.parse, as eval would parse them) reads them and a small evaluator applies Python's operators,
refusing integers past 2**16 bits, where the reference would compute `9**9**9` for hours; such an answer
scores no answer reward. An answer of more than 512 characters is refused, so that no answer costs more
than a few milliseconds (Python parses 500 nested signs in about 3 ms).
"""
from __future__ import annotations

import ast
import functools
import math
import operator
import random
import re

from randopt_hpc.tasks.base import (
    Example,
    Scored,
    bad_field,
    has_tag_pair,
    last_tag_content,
    record_id,
    reference_prompt,
)
from randopt_hpc.tasks.expression import MAX_ABS, MAX_DIGITS

SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in your mind "
          "and then provide the user with the answer.")
ES_PREFIX = "<think>"
STYLES = ("reference", "es")
# Both styles: the reward reads the last answer pair and its format wants the text to end with the closing
# tag, so generation stops just after the first one, kept. Text after it (a second answer) is not generated.
STOP_STRINGS = ("</answer>",)

TOLERANCE = 1e-5          # reward and voted correctness (reference ANSWER_MATCH_TOLERANCE)
KEY_INTEGRAL = 1e-9       # a value this close to an integer votes as that integer (reference NUMERIC_TOLERANCE)
MAX_VOTE_NUMBER = 1000    # a digit run past this never votes (reference MAX_FORMULA_NUMBER)
MAX_ANSWER_CHARS = 512    # a Countdown answer is a few dozen characters; parsing more is a cost, not a use
MAX_BITS = 1 << 16        # any integer along the way

_ALLOWED = frozenset("0123456789+-*/() ")


# --------------------------------------------------------------------------- prompts and records

def numbers_text(numbers) -> str:
    # ES-at-scale formats str(np.array(numbers)): right-aligned to the widest, one space apart
    # ("[83 78  1 39]"). Matching it keeps synthetic prompts identical to the data's `context`.
    width = max(len(str(n)) for n in numbers)
    return " ".join(str(n).rjust(width) for n in numbers)


def user_text(numbers_shown: str, target_text: str) -> str:
    """The user message; numbers_shown includes the brackets ("[44, 19, 35]" or "[44 19 35]")."""
    return (f"Using the numbers {numbers_shown}, create an equation that equals {target_text}. "
            "You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. "
            "Show your work in <think> </think> tags. And return the final answer in <answer> </answer> tags, "
            "for example <answer> (1 + 2) / 3 </answer>.")


def es_raw_prompt(numbers_shown: str, target_text: str) -> str:
    # ES-at-scale concatenates without spaces ("answer.Using", "</answer>.Let"); its data's `context`
    # field has exactly this text, so keep it byte for byte.
    return SYSTEM + user_text(numbers_shown, target_text) + "Let me solve this step by step.\n" + ES_PREFIX


def parse_row(row: dict, index: int) -> tuple[tuple[int, ...], float, str]:
    """(numbers, target, target as shown) of a data row; ValueError naming the row and field."""
    if not isinstance(row, dict):
        raise ValueError(f"row {index}: must be an object with 'numbers' and 'target', got {type(row).__name__}")
    return (_numbers(row, index),) + _target(row, index)


def _numbers(row: dict, index: int) -> tuple[int, ...]:
    value = row.get("numbers")
    why = "must be a non-empty list of non-negative integers"
    if not isinstance(value, (list, tuple)) or not value:
        raise bad_field(index, "numbers", why, value)
    out = []
    for v in value:
        if isinstance(v, bool):
            raise bad_field(index, "numbers", why, value)
        if isinstance(v, int):
            n = v
        elif isinstance(v, float) and v.is_integer():
            n = int(v)
        elif isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
            n = int(v.strip())
        else:
            raise bad_field(index, "numbers", why, value)
        if n < 0 or n >= 10**MAX_DIGITS:   # a number no answer can write (the parser's literal bound)
            raise bad_field(index, "numbers", why, value)
        out.append(n)
    return tuple(out)


def _target(row: dict, index: int) -> tuple[float, str]:
    """(value, text as shown in the prompt). The ES-at-scale data keeps targets as strings."""
    value = row.get("target")
    why = f"must be a number of magnitude at most {MAX_ABS:.0e} (or a string holding one)"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad_field(index, "target", why, value)
    if isinstance(value, int):
        if abs(value) > MAX_ABS:    # before float(): a 400-digit integer does not convert
            raise bad_field(index, "target", why, value)
        return float(value), str(value)
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_ABS:
            raise bad_field(index, "target", why, value)
        return value, str(int(value)) if value.is_integer() else repr(value)
    text = value.strip()
    if len(text) > 64:
        raise bad_field(index, "target", why, value)
    try:
        number = float(text)
    except ValueError:
        raise bad_field(index, "target", why, value) from None
    if not math.isfinite(number) or abs(number) > MAX_ABS:
        raise bad_field(index, "target", why, value)
    return number, text


def examples_from_records(records: list[dict], style: str = "reference") -> list[Example]:
    """Rows {numbers, target} (the RandOpt data), or ES-at-scale rows {id, context, numbers, target,
    solution}. Solutions are never used: they are unreliable in the published data and not needed to score.
    The reference style shows the row's own values as the reference's str.format does; es shows the
    parsed numbers numpy-style and takes the row's `context` as the raw prompt when there is one."""
    examples = []
    for i, row in enumerate(records):
        numbers, target, target_text = parse_row(row, i)
        if style == "es":
            shown = f"[{numbers_text(numbers)}]"
            messages = (("system", SYSTEM), ("user", user_text(shown, target_text)))
            context = row.get("context")
            prompt = context if isinstance(context, str) and context else es_raw_prompt(shown, target_text)
            prefix = ES_PREFIX
        else:
            messages = (("system", SYSTEM), ("user", user_text(str(list(row["numbers"])), str(row["target"]))))
            prompt, prefix = reference_prompt(messages), ""
        examples.append(Example(id=record_id(row, i), prompt=prompt, messages=messages, response_prefix=prefix,
                                numbers=numbers, target=target, stop_strings=STOP_STRINGS))
    return examples


# --------------------------------------------------------------------------- expressions, as Python reads them

class _TooBig(Exception):
    pass


def _power(a, b):
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1 and \
            (b > MAX_BITS or (abs(a).bit_length() - 1) * b > MAX_BITS):
        raise _TooBig
    return a ** b


def _times(a, b):
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_BITS:
        raise _TooBig
    return a * b


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: _times, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Pow: _power}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


@functools.lru_cache(maxsize=4096)   # the reward reads the answer as written, the vote stripped: mostly the same text
def python_value(text: str):
    """The value Python's evaluation of text gives, for text over the reference's characters: an int, float
    or complex (a negative number to a fractional power), or None where Python would raise or the bounds
    refuse. The walk is iterative: Python parses 500 nested unary signs; a recursive walk would hold 500 frames."""
    if len(text) > MAX_ANSWER_CHARS:
        return None
    try:
        # Python's evaluation strips leading spaces and tabs; ast.parse does not.
        tree = ast.parse(text.lstrip(" \t"), mode="eval")
        stack, values = [(tree.body, False)], []
        while stack:
            node, ready = stack.pop()
            if isinstance(node, ast.Constant) and type(node.value) is int:
                values.append(node.value)
            elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
                if ready:
                    values.append(_UNARY[type(node.op)](values.pop()))
                else:
                    stack += [(node, True), (node.operand, False)]
            elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
                if ready:
                    b = values.pop()
                    values.append(_BINARY[type(node.op)](values.pop(), b))
                else:   # left first, as Python: its error is the one raised
                    stack += [(node, True), (node.right, False), (node.left, False)]
            else:   # "()" or "(1)(2)": Python builds a tuple or calls an int, and float() of it fails
                return None
        return values[0]
    except (SyntaxError, ArithmeticError, RecursionError, MemoryError, TypeError, ValueError, _TooBig):
        return None


def _passes_filter(content: str) -> bool:
    r"""re.match(r"^[0-9+\-*/() ]+$", content): `$` also matches before one final newline."""
    body = content[:-1] if content.endswith("\n") else content
    return bool(body) and all(c in _ALLOWED for c in body)


def _same_numbers(text: str, numbers) -> bool:
    r"""sorted(int(n) for n in re.findall(r"\d+", text)) == sorted(numbers), for text already limited to
    ASCII digits; a run of more significant digits than any given number differs without int() (which
    refuses past 4300 digits)."""
    runs = re.findall(r"[0-9]+", text)
    if len(runs) != len(numbers) or any(len(r.lstrip("0")) > MAX_DIGITS for r in runs):
        return False
    return sorted(int(r) for r in runs) == sorted(numbers)


def _close(value, target: float) -> bool:
    try:
        return abs(float(value) - float(target)) < TOLERANCE
    except (TypeError, ValueError, OverflowError):   # a complex value, an integer past float range
        return False


def answer_reward(content: str | None, numbers, target: float) -> float:
    """The reference answer reward of the last answer's contents (unstripped)."""
    if not content or len(content) > MAX_ANSWER_CHARS or not _passes_filter(content) or \
            not _same_numbers(content, numbers):
        return 0.0
    value = python_value(content)
    return 1.0 if value is not None and _close(value, target) else 0.0


def vote_key(content: str | None, numbers) -> str | None:
    """The reference's voting key of the last answer's contents, or None (abstain)."""
    formula = content.strip() if content and len(content) <= MAX_ANSWER_CHARS else ""
    if not formula or not all(c in _ALLOWED for c in formula):
        return None
    if not _same_numbers(formula, numbers) or any(int(r) > MAX_VOTE_NUMBER for r in re.findall(r"[0-9]+", formula)):
        return None
    value = python_value(formula)
    if value is None:
        return None
    try:
        nearest = round(value)
        return str(int(nearest)) if abs(value - nearest) < KEY_INTEGRAL else str(value)
    except (TypeError, ValueError, OverflowError):   # complex, nan, inf: the reference's except clause
        return None


def key_correct(key: str, example: Example) -> bool:
    """Whether a voted key's value is the target (the reference's is_voted_answer_correct)."""
    try:
        return bool(key) and len(key) <= MAX_ANSWER_CHARS and _close(float(key), example.target)
    except ValueError:
        return False


# --------------------------------------------------------------------------- scoring

def full_format(text: str) -> bool:
    r"""re.match(r"^<think>.*?</think>\n<answer>.*?</answer>$", text, re.DOTALL) in linear time.
    `$` also matches before one final newline, as in the reference."""
    if not text.startswith("<think>"):
        return False
    # The earliest "</think>\n<answer>" leaves the most room for the answer, so it is the only one to try.
    p = text.find("</think>\n<answer>", len("<think>"))
    if p < 0:
        return False
    body = p + len("</think>\n<answer>")
    ends = [len(text)] + ([len(text) - 1] if text.endswith("\n") else [])
    return any(e - len("</answer>") >= body and text.startswith("</answer>", e - len("</answer>")) for e in ends)


def format_score(text: str) -> float:
    if full_format(text):
        return 1.0
    return (0.1 if has_tag_pair(text, "think") else 0.0) + (0.5 if has_tag_pair(text, "answer") else 0.0)


def score(completion: str, example: Example) -> Scored:
    completion = completion if isinstance(completion, str) else ""
    content = last_tag_content(completion, "answer")
    answer = answer_reward(content, example.numbers, example.target)
    return Scored(reward=0.1 * format_score("<think>" + completion) + answer, correct=answer >= 1.0,
                  key=vote_key(content, example.numbers), answer=None if content is None else content.strip())


# --------------------------------------------------------------------------- synthetic data

_SYN_OPS = ("+", "-", "*", "/")


def _random_expression(rng: random.Random, numbers: list[int]) -> tuple[int, str] | None:
    """Combine random pairs until one (value, text) remains; None when a division is not exact."""
    pool = [(n, str(n)) for n in numbers]
    rng.shuffle(pool)
    while len(pool) > 1:
        (a, ta) = pool.pop(rng.randrange(len(pool)))
        (b, tb) = pool.pop(rng.randrange(len(pool)))
        op = rng.choice(_SYN_OPS)
        if op == "+":
            v = a + b
        elif op == "-":
            v = a - b
        elif op == "*":
            v = a * b
        else:
            if b == 0 or a % b:
                return None
            v = a // b
        pool.append((v, f"({ta} {op} {tb})"))
    value, text = pool[0]
    return value, text[1:-1] if text.startswith("(") else text


def synthetic_records(n: int, seed: int) -> list[dict]:
    """n solvable Countdown rows, a pure function of (n, seed). One generator stream is consumed
    row by row, so the first n rows of synthetic_records(n + m, seed) are synthetic_records(n, seed)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        while True:
            numbers = [rng.randint(1, 99) for _ in range(rng.choice((3, 4)))]
            found = None
            for _ in range(20):
                found = _random_expression(rng, numbers)
                if found is not None and 1 <= found[0] <= 999:
                    break
                found = None
            if found is not None:
                break
        rows.append({"id": f"syn-{seed}-{i}", "numbers": numbers, "target": found[0], "solution": found[1]})
    return rows


class Countdown:
    """The Task (randopt_hpc.tasks.base.Task) over this module's functions."""
    name = "countdown"
    takes_template = False
    prompt_styles = STYLES
    synthetic_limit = None      # rows may repeat: no limit but config's own bound on the sizes
    data_format = "a JSON list or JSON lines of rows with numbers (a list of integers) and target"
    stop_strings = STOP_STRINGS
    synthetic_records = staticmethod(synthetic_records)
    score = staticmethod(score)
    key_correct = staticmethod(key_correct)

    def __init__(self, prompt_style: str = "reference"):
        if prompt_style not in STYLES:
            raise ValueError(f"task.prompt_style must be one of {', '.join(STYLES)}; got {prompt_style!r}")
        self.prompt_style = prompt_style

    def examples_from_records(self, records):
        return examples_from_records(records, self.prompt_style)
