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
from randopt_hpc.tasks.mathcaps import closing_brace, verifiable

MATH500_INSTRUCTION = "Let's think step by step and output the final answer after ####"
OLYMPIAD_INSTRUCTION = "Let\u2019s think step by step and output the final answer after ####."
CLIP_CHARS = 500             # the reference reads only this many final characters of a completion
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


# --------------------------------------------------------------------------- extraction

def last_boxed(text: str) -> str | None:
    """The reference's strict extraction: the last balanced \\boxed{...}, scanning on after each one."""
    found, i = None, text.find(_BOXED)
    while i >= 0:
        end = closing_brace(text, i + len(_BOXED))
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
    # None: the answer is the last \boxed{} of the final 500 characters, else the last of several phrase
    # patterns, so no text marks where the answer is complete; generation runs to EOS or the cap.
    stop_strings = ()

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
