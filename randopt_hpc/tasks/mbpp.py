"""MBPP (Mostly Basic Python Problems): write a function that passes the problem's assert statements.

Carried over from the RandOpt reference (data_handlers/mbpp.py, utils/reward_score/mbpp.py):
- the prompt, byte for byte: the system message, and the problem text followed by its first three tests;
- the rows' fields: the Hugging Face `full` configuration (text, code, test_list, test_setup_code), or the
  `sanitized` one (prompt, test_imports), read the way the reference's preprocessing reads them;
- the code: the last <answer>…</answer>, else the last ```python fence, else the last ``` fence, stripped;
  nothing found is an empty answer (reward 0, no vote);
- the test harness: test_setup_code and the code run as one piece, then each test as its own piece, all in
  one namespace; any exception fails;
- reward 1.0 when every test passes, else 0.0; correct = reward > 0; the voting key is the code itself.

Where this departs from the reference, and why:
- Programs run in randopt_hpc.sandbox (own process, no network, read-only filesystem, rlimits), never in
  the scoring process as the reference ran them: model-written code must not reach the host or the MPI rank.
- The time limit is TIMEOUT_S for the whole program (setup, code and every test), not 5 s per piece, which
  the reference enforced only from the main thread; an infinite loop then costs one limit, not one per test.
- SystemExit and other BaseExceptions fail the program; the reference caught only Exception, so a
  `sys.exit()` in model code escaped its scorer.
- The extraction finds tags and fences with str.find (linear time); tests check it against the regexes.
"""
from __future__ import annotations

from collections.abc import Sequence

from randopt_hpc import sandbox
from randopt_hpc.tasks.base import DataTask, Example, Scored, last_tag_content, record_id, reference_prompt

SYSTEM_MESSAGE = (
    "You are a Python programming assistant. Write clean, correct Python code to solve the given problem."
)

USER_TEMPLATE = (
    "{text}\n\n"
    "Your code should pass these tests:\n{tests}\n\n"
    "Think through your solution in <think> </think> tags.\n"
    "Return your final Python code in <answer> </answer> tags, e.g.:\n"
    "<answer>\ndef solution(x):\n    return x + 1\n</answer>"
)

TIMEOUT_S = 5.0          # the reference's per-piece limit, here for the whole program
SHOWN_TESTS = 3          # tests quoted in the prompt (all of them are run)
NO_ANSWER = Scored(reward=0.0, correct=False, key=None, answer=None)
# The prompt asks for the code in answer tags, which the extraction prefers to any fence: the code is
# complete at the first closing tag (kept: the tag pair needs it). Code given in fences only never stops
# early, as no fence marks the last one.
STOP_STRINGS = ("</answer>",)


# --------------------------------------------------------------------------- extraction

def last_fence(text: str, opening: str) -> str | None:
    """Contents of the last match of re.findall(opening + r"\\n?(.*?)```", text, re.DOTALL), in linear time
    (None when there is none)."""
    last, pos = None, 0
    while True:
        s = text.find(opening, pos)
        if s < 0:
            return last
        start = s + len(opening)
        if text.startswith("\n", start):
            start += 1
        e = text.find("```", start)
        if e < 0:   # no closing fence after this opening, so none after any later one either
            return last
        last, pos = text[start:e], e + 3


def code_block(response) -> str | None:
    """The unstripped code the reference's extract_answer picks: the last answer tag pair, else the last
    python fence, else the last fence; None when there is none."""
    text = response if isinstance(response, str) else ""
    for found in (last_tag_content(text, "answer"), last_fence(text, "```python"), last_fence(text, "```")):
        if found is not None:
            return found
    return None


def extract_code(response) -> str:
    """The reference's extract_answer: the code block, stripped ("" when there is none)."""
    block = code_block(response)
    return "" if block is None else block.strip()


# --------------------------------------------------------------------------- rows

def bad_field(index: int, field: str, why: str, value) -> ValueError:
    shown = repr(value)
    return ValueError(f"row {index}: field {field!r} {why}, got {shown[:57] + '...' if len(shown) > 60 else shown}")


def text_field(row: dict, index: int, names: Sequence[str], required: bool = True) -> str:
    """The first of `names` the row has, which must be a string (non-empty when required)."""
    name = next((n for n in names if n in row), names[0])
    value = row.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise bad_field(index, name, "must be a non-empty string" if required else "must be a string", value)
    return value


def setup_code(row: dict, index: int) -> str:
    """test_setup_code (full) or test_imports (sanitized): a string, or a list of lines joined as the
    reference joins them (empty entries dropped)."""
    name = "test_setup_code" if "test_setup_code" in row or "test_imports" not in row else "test_imports"
    value = row.get(name)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "\n".join(v for v in value if v)
    raise bad_field(index, name, "must be a string or a list of strings", value)


def test_list(row: dict, index: int) -> list[str]:
    value = row.get("test_list")
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(t, str) for t in value):
        raise bad_field(index, "test_list", "must be a non-empty list of strings", value)
    return list(value)


def row_id(row: dict, index: int) -> str:
    """The row's id, else its task_id (what MBPP and HumanEval rows carry), else its position."""
    return record_id({"id": row.get("id", row.get("task_id"))}, index)


def examples_from_records(records: Sequence[dict]) -> list[Example]:
    examples = []
    for i, row in enumerate(records):
        if not isinstance(row, dict):
            raise ValueError(f"row {i}: must be an object with 'text' and 'test_list', got {type(row).__name__}")
        text = text_field(row, i, ("text", "prompt"))
        tests = test_list(row, i)
        truth = {"test_list": tests, "test_setup_code": setup_code(row, i),
                 "code": text_field(row, i, ("code",), required=False)}
        user = USER_TEMPLATE.format(text=text, tests="\n".join(tests[:SHOWN_TESTS]))
        messages = (("system", SYSTEM_MESSAGE), ("user", user))
        examples.append(Example(id=row_id(row, i), prompt=reference_prompt(messages), messages=messages,
                                truth=truth, stop_strings=STOP_STRINGS))
    return examples


# --------------------------------------------------------------------------- scoring

def program(code: str, truth) -> list[str] | None:
    """The pieces the reference execs in turn: setup and code together, then each test; None when the
    example's truth is not an MBPP one."""
    tests, setup = (truth.get("test_list"), truth.get("test_setup_code", "")) if isinstance(truth, dict) else (0, 0)
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests) or not isinstance(setup, str):
        return None
    return [(setup + "\n" if setup.strip() else "") + code + "\n", *tests]


def score_many(completions: Sequence[str], examples: Sequence[Example]) -> list[Scored]:
    codes = [extract_code(c) for c in completions]
    programs = [program(code, ex.truth) if code else None for code, ex in zip(codes, examples)]
    return [Scored(reward=float(passed), correct=passed, key=code or None, answer=code or None)
            for code, passed in zip(codes, sandbox.passes(programs, TIMEOUT_S))]


def score(completion: str, example: Example) -> Scored:
    return score_many([completion], [example])[0]




class MBPP(DataTask):
    """The Task (randopt_hpc.tasks.base.Task) over this module's functions."""
    name = "mbpp"
    data_format = "parquet or JSONL rows of MBPP (text, test_list, test_setup_code; or sanitized prompt, test_imports)"
    stop_strings = STOP_STRINGS
    examples_from_records = staticmethod(examples_from_records)
    score = staticmethod(score)
    score_many = staticmethod(score_many)
