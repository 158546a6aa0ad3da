"""MATH-500 and OlympiadBench: competition problems whose final answer is LaTeX, graded by math-verify.

Follows the RandOpt reference (data_handlers/math500.py, data_handlers/olympiadbench.py,
utils/reward_score/math.py, randopt.py):
- Prompt: one user message, the problem, a blank line, then the handler's instruction (it asks for the
  answer "after ####", although only \\boxed{} and the phrases below are read). MATH-500 rows are the
  public {problem, answer, ...}; OlympiadBench rows the public {id, question, final_answer: [...], ...},
  whose truth is final_answer[0] less one leading and one trailing "$" (clean_ground_truth).
- Only the last 500 characters of a completion are read. The answer is the content of the last
  balanced \\boxed{...}; when an unclosed \\boxed{ runs to the end, the last \\boxed{} of at most one
  inner brace level, else with no "}" inside; with no \\boxed{ at all, the reference's phrase patterns
  ("is $x$", "answer is x", "therefore x", "final answer: x", "= x" at the end, ...): the last match of
  the first pattern that matches, stripped.
- reward = 1.0 when the answer is right, else 0.0; `correct` is that verdict.

Where this departs from the reference, and why (docs/tasks.md has the details):
- Equivalence is math-verify's (parse and verify, both sides wrapped in \\boxed{}), not the reference's
  hand-written grader, whose number-list check calls "2x+3" equal to "2+3x". The verdict is taken on
  the voting key, so `correct` and key_correct agree by construction; a key equal to the normalised
  truth is right without calling math-verify.
- The voting key is the answer normalised where meaning is kept (\\left/\\right and thin spaces
  dropped, \\dfrac and \\tfrac read as \\frac, a few unicode symbols spelled in LaTeX, whitespace
  dropped except between two letters or digits, outer "$" and trailing "." dropped), so that such
  spellings vote together; an empty key, or one with a non-printable character (NUL), abstains.
- The phrase patterns are the reference's with neighbouring whitespace repeats merged, which matches
  the same text in linear time (the reference's "therefore" pattern takes a second on 500 newlines).
- Time: math-verify sees an answer only when cheap caps pass (verifiable(): length, ASCII, bracket
  depth, digits, exponents, factorials, E notation, expansion size); else only the exact-key path can
  make it right. The caps stop what no signal interrupts (a C-level big-integer power, or memory:
  10^{10^{10}} gets the process killed) and the parser's exponential time on nesting. What passes is
  parsed and verified under a 1-second SIGALRM timer when scoring runs in the main thread
  (math-verify's own timeouts count whole seconds and raise in other threads, so they are off).
"""
from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
from functools import lru_cache

from randopt_hpc.tasks.base import DataTask, Example, Scored, bad_field, record_id, reference_prompt
from randopt_hpc.tasks.gsm8k import text_field

MATH500_INSTRUCTION = "Let's think step by step and output the final answer after ####"
OLYMPIAD_INSTRUCTION = "Let\u2019s think step by step and output the final answer after ####."
CLIP_CHARS = 500             # the reference reads only this many final characters of a completion
MAX_VERIFY_CHARS = 200
MAX_DEPTH = 5
MAX_DIGITS = 40
MAX_EXPONENT_DIGITS = 4
MAX_FACTORIAL_DIGITS = 3
MAX_VARIABLE_EXPONENT_DIGITS = 2   # a letter's exponent
MAX_EXPANSION = 20           # sum over powers of bracketed sums: exponent x variables in the sum
VERIFY_SECONDS = 1.0         # per (key, truth) parse + verify, main thread only
GOLD_SECONDS = 10.0          # per truth, parsed once

_BOXED = "\\boxed{"
_BOXED_ONE_LEVEL = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
_BOXED_NO_CLOSE = re.compile(r"\\boxed\{([^}]+)\}")
_INLINE = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in (
    r"is\s+\\\(([^)]+)\\\)\.?\s*$", r"is\s+\$([^$]+)\$\.?\s*$",
    r"=\s*\\\(([^)]+)\\\)\.?\s*$", r"=\s*\$([^$]+)\$\.?\s*$")]
# The reference's "answer\s+is\s*[:\s]*" and "so\s*,?\s*(?:the\s+)?...[:\s]*" re-split whitespace among
# neighbouring repeats on every failed match (cubic); these spell the same languages with one repeat per run.
_PHRASES = [re.compile(p, re.IGNORECASE) for p in (
    r"answer\s+is[:\s]*\**\\\(([^)]+)\\\)\**", r"answer\s+is[:\s]*\**\$([^$]+)\$\**",
    r"answer\s+is[:\s]*\**([^\n.*]+)\**",
    r"(?:therefore|thus|hence|so)(?:\s*,)?(?:\s*the\s)?(?:\s*answer\s+is)?[:\s]*\**([^\n.*]+)\**",
    r"(?:final\s+)?answer[:\s]+\**([^\n.*]+)\**", r"=\s*([^\n=]+)$")]

_UNICODE = str.maketrans({"\u2212": "-", "\u2013": "-", "\u03c0": "\\pi ", "\u00b0": "^\\circ", "\u00d7": "\\times ",
                          "\u00b7": "\\cdot ", "\u221a": "\\sqrt", "\u2264": "\\le ", "\u2265": "\\ge ",
                          "\u221e": "\\infty "})
# The row break \\ is matched whole, so that "1 \\ 2" does not read as "1 \" and the space command "\ ".
_LAYOUT = re.compile(r"\\\\|\\(?:left|right)(?:\.|(?![A-Za-z]))|\\[,!;: ]|\\q?quad(?![A-Za-z])|\\[dt]frac(?![A-Za-z])")
_WHITESPACE = re.compile(r"\s+")
_BIG_OPERATORS = re.compile(r"\\(?:sum|prod|int|iint|oint|lim|binom|dbinom|tbinom|choose|exp|sinh|cosh)(?![A-Za-z])")
_REJECTED = re.compile(r"\\(?:Gamma|operatorname)(?![A-Za-z])")   # \Gamma(10^{100}) runs for seconds
_COMMAND = re.compile(r"\\[A-Za-z]+")
_E_NOTATION = re.compile(r"[eE][+-]?[0-9]{4,}")    # 1E999999999 is read as an integer of a billion digits
_DIGIT_RUN = re.compile(r"[0-9]+")
_OPENERS, _CLOSERS = "([{", ")]}"


# --------------------------------------------------------------------------- extraction

def _close(text: str, start: int) -> int:
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


def last_boxed(text: str) -> str | None:
    """The reference's strict extraction: the last balanced \\boxed{...}, scanning on after each one."""
    found, i = None, text.find(_BOXED)
    while i >= 0:
        end = _close(text, i + len(_BOXED))
        if end < 0:
            break     # the reference's scan ran to the end of the text
        found, i = text[i + len(_BOXED):end - 1], text.find(_BOXED, end)
    if found is not None:
        return found
    for pattern in (_BOXED_ONE_LEVEL, _BOXED_NO_CLOSE):
        matches = pattern.findall(text)
        if matches:
            return matches[-1]
    return None


def extract_answer(text: str) -> str | None:
    """The reference's extract_answer (strict, else flexible) on the last CLIP_CHARS characters."""
    text = text[-CLIP_CHARS:]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in _INLINE + _PHRASES:
        matches = pattern.findall(text)
        if matches:
            return matches[-1].strip()
    return None


# --------------------------------------------------------------------------- the voting key

def _space(m: re.Match) -> str:
    s = m.string
    keep = m.start() > 0 and m.end() < len(s) and s[m.start() - 1].isalnum() and s[m.end()].isalnum()
    return " " if keep else ""


def _layout(m: re.Match) -> str:
    t = m.group()
    if t == "\\\\":
        return t
    if t.endswith("frac"):
        return "\\frac"
    return " " if t == "\\ " or t.endswith("quad") else ""


def answer_key(answer: str | None) -> str | None:
    """The answer normalised where meaning is kept (module docstring); None when nothing is left."""
    if not isinstance(answer, str):
        return None
    s = _LAYOUT.sub(_layout, answer.translate(_UNICODE))
    s = _WHITESPACE.sub(_space, s.replace("^{\\circ}", "^\\circ").strip()).rstrip(".")
    if s.startswith("$"):
        s = s[1:]
    if s.endswith("$") and not s.endswith("\\$"):
        s = s[:-1]
    s = s.rstrip(".")
    # A control or format character makes no math answer, and NUL cannot be stored in results.h5.
    return s if s and s.isprintable() else None


# --------------------------------------------------------------------------- caps before math-verify

def _group_end(s: str, i: int) -> int:
    """Index past the token starting at s[i] (after any signs): a brace group, a command with the brace
    groups after it, a run of digits (the parser reads 10^999 as 10^{999}, unlike TeX), or one char."""
    while i < len(s) - 1 and s[i] in "+-":
        i += 1
    if s[i] == "{":
        return _close(s, i + 1)
    if s[i] == "\\":
        j = i + 1
        while j < len(s) and s[j].isalpha():
            j += 1
        while 0 <= j < len(s) and s[j] == "{":
            j = _close(s, j + 1)
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


# --------------------------------------------------------------------------- equivalence

class _Overtime(BaseException):
    """Raised by the timer; a BaseException so that math-verify's `except Exception` lets it through."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """SIGALRM after `seconds`, in the main thread and when no other timer is pending; else no limit."""
    if (threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer")
            or signal.getitimer(signal.ITIMER_REAL)[0] > 0):
        yield
        return

    def _raise(signum, frame):
        raise _Overtime

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


@lru_cache(maxsize=1)
def _math_verify():
    import math_verify
    # Their one-time warning says timeouts are off, which is deliberate here (_time_limit bounds them).
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


@lru_cache(maxsize=4096)
def _gold(truth: str) -> tuple:
    mv = _math_verify()
    try:
        with _time_limit(GOLD_SECONDS):
            return tuple(mv.parse("\\boxed{" + truth + "}", parsing_timeout=None))
    except _Overtime:
        return ()


@lru_cache(maxsize=4096)
def truth_key(truth: str) -> str | None:
    return answer_key(truth)


@lru_cache(maxsize=1 << 16)
def _verified(key: str, truth: str) -> bool:
    gold = _gold(truth)
    if not gold:
        return False
    mv = _math_verify()
    try:
        with _time_limit(VERIFY_SECONDS):
            pred = mv.parse("\\boxed{" + key + "}", parsing_timeout=None)
            return bool(pred) and bool(mv.verify(list(gold), pred, timeout_seconds=None))
    except _Overtime:
        return False


def equivalent(key, truth) -> bool:
    """Whether a voting key answers to `truth`: equal normalised strings, else math-verify within the caps."""
    if not isinstance(key, str) or not isinstance(truth, str) or not key:
        return False
    if key == truth_key(truth):
        return True
    try:
        return verifiable(key) and _verified(key, truth)
    except Exception:   # math-verify catches its own; this is for anything it lets through
        return False


# --------------------------------------------------------------------------- records and the tasks

def _math500_row(row: dict, index: int) -> tuple[str, str]:
    answer = text_field(row, index, "answer")
    if not answer.strip():
        raise bad_field(index, "answer", "must not be empty (no answer could match it)", answer)
    return text_field(row, index, "problem"), answer


def clean_ground_truth(answer: str) -> str:
    """The OlympiadBench handler's cleaning: strip, then drop one leading and one trailing "$"."""
    answer = answer.strip()
    if answer.startswith("$") and answer.endswith("$"):
        answer = answer[1:-1].strip()
    elif answer.startswith("$"):
        answer = answer[1:].strip()
    elif answer.endswith("$"):
        answer = answer[:-1].strip()
    return answer


def _olympiad_row(row: dict, index: int) -> tuple[str, str]:
    question = text_field(row, index, "question")
    final = row.get("final_answer")
    if isinstance(final, str):
        final = [final]
    if not isinstance(final, (list, tuple)) or not final or not isinstance(final[0], str) \
            or not clean_ground_truth(final[0]):
        raise bad_field(index, "final_answer", "must be a non-empty list of strings", final)
    return question, clean_ground_truth(final[0])


class _MathTask(DataTask):
    instruction = ""

    def examples_from_records(self, records) -> list[Example]:
        examples = []
        for i, row in enumerate(records):
            if not isinstance(row, dict):
                raise ValueError(f"row {i}: must be an object, got {type(row).__name__}")
            problem, truth = self._row(row, i)
            messages = (("user", problem + "\n\n" + self.instruction),)
            examples.append(Example(id=record_id(row, i), prompt=reference_prompt(messages), messages=messages,
                                    truth=truth))
        return examples

    def score(self, completion: str, example: Example) -> Scored:
        answer = extract_answer(completion if isinstance(completion, str) else "")
        key = answer_key(answer)
        correct = equivalent(key, example.truth)
        if answer is not None and "\0" in answer:
            answer = answer.replace("\0", "\ufffd")     # results.h5 stores answers and refuses NUL
        return Scored(reward=1.0 if correct else 0.0, correct=correct, key=key, answer=answer)

    def key_correct(self, key, example: Example) -> bool:
        """Whether a voted key is right; the same verdict `score` gives a completion with that key."""
        return equivalent(key, example.truth)


class MATH500(_MathTask):
    name = "math500"
    data_format = "JSON lines or parquet rows with problem and answer (the public MATH-500 test.jsonl)"
    instruction = MATH500_INSTRUCTION
    _row = staticmethod(_math500_row)


class OlympiadBench(_MathTask):
    name = "olympiadbench"
    data_format = "parquet or JSON rows with question and final_answer (a list of strings, the first is graded)"
    instruction = OLYMPIAD_INSTRUCTION
    _row = staticmethod(_olympiad_row)
