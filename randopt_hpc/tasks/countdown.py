"""Countdown: combine the given numbers with + - * / into an expression that equals the target.

Scoring follows the reference code of the RandOpt / ES-at-scale papers: reward = 0.1 * format +
answer, where format is 1.0 for "<think>…</think>\n<answer>…</answer>" and otherwise 0.1 for a
think pair plus 0.5 for an answer pair, and answer is 1 when the expression uses every given
number exactly once and hits the target within 1e-5.

Where this departs from (or pins down) the reference, and why:
- Expressions are evaluated by a small recursive-descent parser, never eval. It accepts what the
  reference's character filter and Python's eval would jointly accept, minus unary signs: unary
  minus/plus are rejected (a reference answer like "-3 + 5" would have counted 3 and 5 as used
  while negating one; we read that as not using the numbers as given). Literals with leading zeros
  ("05") are rejected too, as Python's eval rejects them ("00" is accepted, as there).
- Hard bounds (length, digits, nesting, magnitude) keep every evaluation to one strip plus a
  parse of at most 256 characters.
- The LAST <answer>…</answer> is graded, so a model that revises its answer is graded on its
  final word.
- The format check is the reference regex re-expressed with str.find, so it stays linear in the
  completion length; tests check it agrees with the regex.
"""
from __future__ import annotations

import math
import random

from randopt_hpc.tasks.base import Example, Scored, has_tag_pair, last_tag_content, record_id

SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in your mind "
          "and then provide the user with the answer.")
RESPONSE_PREFIX = "<think>"

MAX_LEN = 256        # characters, after strip
MAX_DIGITS = 10      # per integer literal
MAX_DEPTH = 32       # parenthesis nesting
MAX_ABS = 1e12       # every intermediate value; keeps float arithmetic exact on integers
TOLERANCE = 1e-5

_WHITESPACE = " \t\n\r\f\v"   # ASCII only: str.isspace would admit exotic unicode spaces
_OPERATORS = "+-*/()"


# --------------------------------------------------------------------------- prompts and records

def numbers_text(numbers) -> str:
    # The reference formats str(np.array(numbers)): right-aligned to the widest, one space apart
    # ("[83 78  1 39]"). Matching it keeps synthetic/plain prompts identical to the data's `context`.
    width = max(len(str(n)) for n in numbers)
    return " ".join(str(n).rjust(width) for n in numbers)


def user_text(numbers_shown: str, target_text: str) -> str:
    return (f"Using the numbers [{numbers_shown}], create an equation that equals {target_text}. "
            "You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. "
            "Show your work in <think> </think> tags. And return the final answer in <answer> </answer> tags, "
            "for example <answer> (1 + 2) / 3 </answer>.")


def raw_prompt(numbers_shown: str, target_text: str) -> str:
    # The reference concatenates without spaces ("answer.Using", "</answer>.Let"); the data's
    # `context` field has exactly this text, so keep it byte for byte.
    return SYSTEM + user_text(numbers_shown, target_text) + "Let me solve this step by step.\n" + RESPONSE_PREFIX


def _bad(index: int, field: str, why: str, value) -> ValueError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ValueError(f"row {index}: field {field!r} {why}, got {shown}")


def parse_row(row: dict, index: int) -> tuple[tuple[int, ...], float, str]:
    """(numbers, target, target as shown) of a data row; ValueError naming the row and field."""
    if not isinstance(row, dict):
        raise ValueError(f"row {index}: must be an object with 'numbers' and 'target', got {type(row).__name__}")
    return (_numbers(row, index),) + _target(row, index)


def _numbers(row: dict, index: int) -> tuple[int, ...]:
    value = row.get("numbers")
    why = "must be a non-empty list of non-negative integers"
    if not isinstance(value, (list, tuple)) or not value:
        raise _bad(index, "numbers", why, value)
    out = []
    for v in value:
        if isinstance(v, bool):
            raise _bad(index, "numbers", why, value)
        if isinstance(v, int):
            n = v
        elif isinstance(v, float) and v.is_integer():
            n = int(v)
        elif isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
            n = int(v.strip())
        else:
            raise _bad(index, "numbers", why, value)
        if n < 0 or n >= 10**MAX_DIGITS:   # a number no answer can write (the parser's literal bound)
            raise _bad(index, "numbers", why, value)
        out.append(n)
    return tuple(out)


def _target(row: dict, index: int) -> tuple[float, str]:
    """(value, text as shown in the prompt). The ES-at-scale data keeps targets as strings."""
    value = row.get("target")
    why = f"must be a number of magnitude at most {MAX_ABS:.0e} (or a string holding one)"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _bad(index, "target", why, value)
    if isinstance(value, int):
        if abs(value) > MAX_ABS:    # before float(): a 400-digit integer does not convert
            raise _bad(index, "target", why, value)
        return float(value), str(value)
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_ABS:
            raise _bad(index, "target", why, value)
        return value, str(int(value)) if value.is_integer() else repr(value)
    text = value.strip()
    if len(text) > 64:
        raise _bad(index, "target", why, value)
    try:
        number = float(text)
    except ValueError:
        raise _bad(index, "target", why, value) from None
    if not math.isfinite(number) or abs(number) > MAX_ABS:
        raise _bad(index, "target", why, value)
    return number, text


def examples_from_records(records: list[dict]) -> list[Example]:
    """ES-at-scale rows {id, context, numbers, target, solution} or plain {numbers, target} rows.
    Solutions are never used: they are unreliable in the published data and not needed to score."""
    examples = []
    for i, row in enumerate(records):
        numbers, target, target_text = parse_row(row, i)
        shown = numbers_text(numbers)
        context = row.get("context")
        prompt = context if isinstance(context, str) and context else raw_prompt(shown, target_text)
        messages = (("system", SYSTEM), ("user", user_text(shown, target_text)))
        examples.append(Example(id=record_id(row, i), prompt=prompt, messages=messages,
                                response_prefix=RESPONSE_PREFIX, numbers=numbers, target=target))
    return examples


# --------------------------------------------------------------------------- expressions

class _Reject(Exception):
    pass


def _tokenize(text: str) -> list | None:
    """ints and operator characters; None on anything outside the grammar."""
    tokens: list = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WHITESPACE:
            i += 1
        elif "0" <= c <= "9":   # not str.isdigit: that admits unicode digits such as "٣"
            j = i + 1
            while j < n and "0" <= text[j] <= "9":
                j += 1
            # Leading zeros follow Python's literal rule (the reference evals): "00" yes, "05" no.
            if j - i > MAX_DIGITS or (text[i] == "0" and text[i:j].strip("0")):
                return None
            tokens.append(int(text[i:j]))
            i = j
        elif c in _OPERATORS:
            tokens.append(c)
            i += 1
        else:
            return None
    return tokens


class _Parser:
    """expr := term (("+"|"-") term)* ; term := factor (("*"|"/") factor)* ; factor := INT | "(" expr ")" """

    def __init__(self, tokens: list):
        self.tokens = tokens
        self.pos = 0

    def _peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    @staticmethod
    def _checked(v: float) -> float:
        if not math.isfinite(v) or abs(v) > MAX_ABS:
            raise _Reject
        return v

    def parse(self) -> float:
        v = self._expr(0)
        if self.pos != len(self.tokens):
            raise _Reject
        return v

    def _expr(self, depth: int) -> float:
        v = self._term(depth)
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            w = self._term(depth)
            v = self._checked(v + w if op == "+" else v - w)
        return v

    def _term(self, depth: int) -> float:
        v = self._factor(depth)
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            w = self._factor(depth)
            if op == "*":
                v = self._checked(v * w)
            else:
                if w == 0:
                    raise _Reject
                v = self._checked(v / w)
        return v

    def _factor(self, depth: int) -> float:
        tok = self._peek()
        self.pos += 1
        if isinstance(tok, int):
            return self._checked(float(tok))
        if tok == "(":
            if depth >= MAX_DEPTH:
                raise _Reject
            v = self._expr(depth + 1)
            if self._peek() != ")":
                raise _Reject
            self.pos += 1
            return v
        raise _Reject   # an operator, ")" or the end where a number belongs (this is where unary signs die)


def _parse(text) -> tuple[float, list[int]] | None:
    """(value, integer literals in order) or None. Never raises."""
    if not isinstance(text, str):
        return None
    text = text.strip()   # one C-speed pass, so even a megabyte costs about a millisecond
    if not text or len(text) > MAX_LEN:
        return None
    tokens = _tokenize(text)
    if not tokens:
        return None
    try:
        value = _Parser(tokens).parse()
    except (_Reject, ArithmeticError, RecursionError):
        return None
    return value, [t for t in tokens if isinstance(t, int)]


def evaluate_expression(text) -> float | None:
    """Value of an arithmetic expression over non-negative integer literals, or None when the text
    is outside the grammar or its bounds (see module docstring). Never raises."""
    parsed = _parse(text)
    return None if parsed is None else parsed[0]


def _as_ints(numbers) -> list[int] | None:
    try:
        out = []
        for n in numbers:
            if isinstance(n, bool):
                return None
            if isinstance(n, float):
                if not n.is_integer():
                    return None
                n = int(n)
            if not isinstance(n, int):
                return None
            out.append(n)
        return out
    except TypeError:
        return None


def _uses_exactly(literals: list[int], numbers) -> bool:
    given = _as_ints(numbers)
    return given is not None and sorted(literals) == sorted(given)


def is_correct(answer_text, numbers, target) -> bool:
    """True when answer_text uses each given number exactly as often as it is given and evaluates
    within 1e-5 of target (str, int or float). Never raises."""
    parsed = _parse(answer_text)
    if parsed is None or not _uses_exactly(parsed[1], numbers):
        return False
    try:
        goal = float(target)
    except (TypeError, ValueError, OverflowError):
        return False
    return abs(parsed[0] - goal) <= TOLERANCE


# --------------------------------------------------------------------------- scoring

def full_format(text: str) -> bool:
    """re.match(r"^<think>.*?</think>\\n<answer>.*?</answer>$", text, re.DOTALL) in linear time.
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


def vote_key(value: float) -> str:
    # Rounded so that answers equal up to float noise vote together; + 0.0 turns -0.0 into 0.0.
    return f"{round(value, 5) + 0.0:.5f}"


def usable_value(answer, numbers) -> float | None:
    """The value of an answer that is a valid expression using exactly the given numbers, else None.
    Only such answers vote: an expression over other numbers answers a different question."""
    parsed = _parse(answer)
    return parsed[0] if parsed is not None and _uses_exactly(parsed[1], numbers) else None


def score_answer(answer: str | None, example: Example, format_value: float) -> Scored:
    value = usable_value(answer, example.numbers)
    correct = value is not None and abs(value - float(example.target)) <= TOLERANCE
    return Scored(reward=0.1 * format_value + (1.0 if correct else 0.0), correct=bool(correct),
                  key=None if value is None else vote_key(value), answer=answer)


def score(completion: str, example: Example) -> Scored:
    text = example.response_prefix + (completion if isinstance(completion, str) else "")
    content = last_tag_content(text, "answer")
    return score_answer(None if content is None else content.strip(), example, format_score(text))


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
    synthetic_limit = None      # rows may repeat: no limit but config's own bound on the sizes
    examples_from_records = staticmethod(examples_from_records)
    synthetic_records = staticmethod(synthetic_records)
    score = staticmethod(score)
