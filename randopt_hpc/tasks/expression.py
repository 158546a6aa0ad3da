"""The project's strict arithmetic grammar, for countdown_qa (the demo's short-form Countdown).

An answer is an expression over non-negative integer literals with + - * / and parentheses, read by a
small recursive-descent parser (never eval). Unlike the reference reward (randopt_hpc.tasks.countdown),
unary signs, ** and // are rejected (a "-3 + 5" would count 3 and 5 as used while negating one), and
hard bounds (length, digits, nesting, magnitude) keep every evaluation to one strip plus a parse of at
most 256 characters. Literals with leading zeros ("05") are rejected as Python rejects them ("00" is
accepted, as there).
"""
from __future__ import annotations

import math

from randopt_hpc.tasks.base import Example, Scored

MAX_LEN = 256        # characters, after strip
MAX_DIGITS = 10      # per integer literal
MAX_DEPTH = 32       # parenthesis nesting
MAX_ABS = 1e12       # every intermediate value; keeps float arithmetic exact on integers
TOLERANCE = 1e-5

_WHITESPACE = " \t\n\r\f\v"   # ASCII only: str.isspace would admit exotic unicode spaces
_OPERATORS = "+-*/()"


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
