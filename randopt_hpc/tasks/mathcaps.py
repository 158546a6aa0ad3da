"""The caps a MATH answer key must pass before math-verify sees it (randopt_hpc.tasks.mathtask).

math-verify parses LaTeX with sympy, and no signal interrupts a single C-level big-integer operation:
`10^{10^{10}}` exhausts memory, `(1+i)^{9999}` runs for minutes, `1E999999999` is read as an integer of a
billion digits. These bounds keep every key it sees to well under a second; a key outside them can still be
right by the exact normalised-string path (docs/tasks.md, "MATH-500 and OlympiadBench").
"""
from __future__ import annotations

import re

MAX_VERIFY_CHARS = 200
MAX_DEPTH = 5
MAX_DIGITS = 40
MAX_EXPONENT_DIGITS = 4
MAX_FACTORIAL_DIGITS = 3
MAX_VARIABLE_EXPONENT_DIGITS = 2   # a letter's exponent
MAX_EXPANSION = 20           # sum over powers of bracketed sums: exponent x variables in the sum

_BIG_OPERATORS = re.compile(r"\\(?:sum|prod|int|iint|oint|lim|binom|dbinom|tbinom|choose|exp|sinh|cosh)(?![A-Za-z])")
_REJECTED = re.compile(r"\\(?:Gamma|operatorname)(?![A-Za-z])")   # \Gamma(10^{100}) runs for seconds
_COMMAND = re.compile(r"\\[A-Za-z]+")
_E_NOTATION = re.compile(r"[eE][+-]?[0-9]{4,}")    # 1E999999999 is read as an integer of a billion digits
_DIGIT_RUN = re.compile(r"[0-9]+")
_OPENERS, _CLOSERS = "([{", ")]}"


def closing_brace(text: str, start: int) -> int:
    """Index just past the "}" that closes a brace opened before `start`, or -1."""
    depth = 1
    for j in range(start, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return -1


def _group_end(s: str, i: int) -> int:
    """Index past the token starting at s[i] (after any signs): a brace group, a command with the brace
    groups after it, a run of digits (the parser reads 10^999 as 10^{999}, unlike TeX), or one char."""
    while i < len(s) - 1 and s[i] in "+-":
        i += 1
    if s[i] == "{":
        return closing_brace(s, i + 1)
    if s[i] == "\\":
        j = i + 1
        while j < len(s) and s[j].isalpha():
            j += 1
        while 0 <= j < len(s) and s[j] == "{":
            j = closing_brace(s, j + 1)
        return j if j < 0 else max(j, i + 2)
    j = i + 1
    while s[i].isdigit() and j < len(s) and (s[j].isdigit() or s[j] == "."):
        j += 1
    return j


def _group_start(s: str, end: int) -> int:
    """Index of the opener matching the closer s[end - 1] (brackets of any kind), or -1."""
    depth = 0
    for j in range(end - 1, -1, -1):
        if s[j] in _CLOSERS:
            depth += 1
        elif s[j] in _OPENERS:
            depth -= 1
            if depth == 0:
                return j
    return -1


def _digits(s: str) -> int:
    return max((len(m) for m in _DIGIT_RUN.findall(s)), default=0)


def _power_cost(s: str, i: int) -> int | None:
    """The power whose "^" is s[i]: None when it may be slow to evaluate, else its expansion cost (the
    exponent times the variables in a bracketed base, whose expansion is sympy's slowest step)."""
    if i + 1 >= len(s):
        return None
    end = _group_end(s, i + 1)
    exponent = s[i + 1:end]
    # Total digits, not the longest run: 2^{9999 \cdot 9999} is as bad as 2^{99980001}.
    if end < 0 or "^" in exponent or "!" in exponent or \
            sum(map(len, _DIGIT_RUN.findall(exponent))) > MAX_EXPONENT_DIGITS:
        return None
    if end < len(s) and s[end] in "^!":
        return None       # a^b^c, a^b!
    if i == 0 or s[i - 1] not in _CLOSERS:
        # A letter to a power of 3 or more digits costs sympy about a second to compare (1\cdot x^{999}
        # against x^{999}): past the timer's reach on a slow node, so the verdict would depend on speed.
        digits = sum(map(len, _DIGIT_RUN.findall(exponent)))
        return None if i > 0 and s[i - 1].isalpha() and digits > MAX_VARIABLE_EXPONENT_DIGITS else 0
    start = _group_start(s, i)
    base = s[start:i]
    if start < 0 or "^" in base or "!" in base or (start > 0 and s[start - 1] in "^_"):
        return None       # (10^{999})^{999}, 10^{10}^{10}
    plain = exponent.lstrip("+-")
    plain = plain[1:-1] if plain.startswith("{") else plain
    if not plain.isdigit():
        return 0 if plain.isalpha() or _COMMAND.fullmatch(plain) else None   # (x+1)^n stays unexpanded
    variables = sum(c.isalpha() for c in _COMMAND.sub("", base))
    if len(plain) > (1 if variables else 2):
        return None
    return int(plain) * variables


def _factorial_ok(s: str, i: int) -> bool:
    """The factorial whose "!" is s[i]: of a letter, a number of at most 3 digits, or a small bracket of those."""
    if s.startswith("!!", i + 1) or i == 0:
        return False
    j = i
    while j > 0 and s[j - 1] == "!":
        j -= 1
    if j == 0:
        return False
    if s[j - 1].isdigit():
        k = j
        while k > 0 and s[k - 1].isdigit():
            k -= 1
        return j - k <= MAX_FACTORIAL_DIGITS and (k == 0 or s[k - 1] not in "^.")
    if s[j - 1] in _CLOSERS:
        start = _group_start(s, j)
        inner = s[start + 1:j - 1]
        return (start >= 0 and (start == 0 or s[start - 1] not in "^_") and _digits(inner) <= MAX_FACTORIAL_DIGITS
                and all(c.isalnum() or c in "+- " for c in inner))
    return s[j - 1].isalpha()


def verifiable(key: str) -> bool:
    """Whether math-verify may see this key: the caps of the module docstring."""
    if not key or len(key) > MAX_VERIFY_CHARS or not key.isascii() or not key.isprintable():
        return False
    depth = braces = 0
    for c in key:
        if c in _OPENERS:
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif c in _CLOSERS:
            depth = max(depth - 1, 0)
        braces += (c == "{") - (c == "}")
        if braces < 0:
            return False
    if braces or _digits(key) > MAX_DIGITS:
        return False
    if _REJECTED.search(key) or (_BIG_OPERATORS.search(key) and _digits(key) >= 3) or \
            _E_NOTATION.search(key.replace(" ", "").replace("{", "").replace("}", "")):
        return False
    expansion = 0
    for i, c in enumerate(key):
        if c == "^":
            cost = _power_cost(key, i)
            if cost is None:
                return False
            expansion += cost
        elif c == "!" and not _factorial_ok(key, i):
            return False
    return expansion <= MAX_EXPANSION
