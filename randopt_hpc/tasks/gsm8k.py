"""GSM8K: grade-school word problems whose answer is a number written after "####".

Follows the RandOpt reference (data_handlers/gsm8k.py, utils/reward_score/gsm8k.py,
baselines/examples/data_preprocess/gsm8k.py, randopt.py):
- Prompt: one user message, the question, a space, then
  'Let's think step by step and output the final answer after "####".'
- Ground truth: the number after the first "#### " of the public `answer` field, commas removed.
  Rows already in the reference's preprocessed form ({prompt: [{role, content}], reward_model:
  {ground_truth}}, the parquet its handler reads) are taken as they are.
- Only the last 300 characters of a completion are read. Strict extraction: the last "#### N" with
  N matching -?[0-9.,]+, commas removed. Flexible extraction (when there is no strict one): the last
  run of -?[0-9.,]+ that is not just ".", taken as written (commas kept); a text whose only runs are
  "." yields the first of them, as the reference's loop does.
- reward = 1.0 when the strict answer equals the truth as strings, else 1.0 when the flexible answer
  does, else 0.0; `correct` is reward > 0 (the reference's accuracy is the mean reward).
- Voting key: the strict answer, else the flexible one (extract_answer). A voted key is right when
  the reward of "#### " + key is positive (format_answer_for_check + is_answer_correct).

Kept from the reference although it is questionable (the rewards decide which members are kept, so
the paper's selection depends on them): the strings are compared exactly, so "18.", "18.00" and a
flexible "1,000" do not equal "18" and "1000". A voted "1,000" is nevertheless right, since
"#### 1,000" reads as 1000 strictly: the reference's voted accuracy and its single-model accuracy
differ there, and so do `correct` and key_correct here.

Where this departs from the reference, and why:
- A key without a digit abstains. The reference's flexible pattern also matches a lone "," or "-."
  (and returns "." when nothing else matched), and such keys voted: they are never right, so the
  only effect of their votes was to outvote a right answer.
"""
from __future__ import annotations

import re

from randopt_hpc.tasks.base import DataTask, Example, Scored, bad_field, record_id, reference_prompt

INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
CLIP_CHARS = 300     # the reference reads only this many final characters of a completion

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(\-?[0-9\.\,]+)")


# --------------------------------------------------------------------------- records

def text_field(row: dict, index: int, field: str) -> str:
    """row[field], which must be a string; ValueError naming the row and field."""
    value = row.get(field)
    if not isinstance(value, str):
        raise bad_field(index, field, "must be a string", value)
    return value


def truth_from_solution(solution: str) -> str | None:
    """The preprocessing script's ground truth: the number after the first "#### ", commas removed."""
    found = _STRICT.search(solution)
    return None if found is None else found.group(0).split("#### ")[1].replace(",", "")


def _preprocessed(row: dict, index: int) -> tuple[tuple, str]:
    """(messages, truth) of a row in the reference's preprocessed form."""
    prompt = row.get("prompt")
    why = "must be a non-empty list of {role, content} messages"
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise bad_field(index, "prompt", why, prompt)
    messages = []
    for m in prompt:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise bad_field(index, "prompt", why, prompt)
        messages.append((m["role"], m["content"]))
    reward_model = row.get("reward_model")
    truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if isinstance(truth, float) and truth.is_integer():
        truth = int(truth)   # parquet may hold 18 as 18.0; as text it would never match "18"
    if isinstance(truth, bool) or not isinstance(truth, (str, int)) or not str(truth).strip():
        raise bad_field(index, "reward_model", "must be an object with a non-empty ground_truth (a number)",
                        reward_model)
    return tuple(messages), str(truth)


def examples_from_records(records) -> list[Example]:
    """Public GSM8K rows {question, answer: "...#### N"}, or the reference's preprocessed rows."""
    examples = []
    for i, row in enumerate(records):
        if not isinstance(row, dict):
            raise ValueError(f"row {i}: must be an object with 'question' and 'answer', got {type(row).__name__}")
        if "question" not in row and "prompt" in row:
            messages, truth = _preprocessed(row, i)
        else:
            question = text_field(row, i, "question")
            solution = text_field(row, i, "answer")
            truth = truth_from_solution(solution)
            if truth is None:
                raise bad_field(i, "answer", "must hold the final answer after '#### '", solution[-60:])
            messages = (("user", question + " " + INSTRUCTION),)
        examples.append(Example(id=record_id(row, i), prompt=reference_prompt(messages), messages=messages,
                                truth=truth))
    return examples


# --------------------------------------------------------------------------- the reference's reward

def extract_solution(text: str, method: str = "strict") -> str | None:
    """utils/reward_score/gsm8k.py extract_solution, on the last CLIP_CHARS characters."""
    text = text[-CLIP_CHARS:]
    if method == "strict":
        found = _STRICT.findall(text)
        # The reference also removes "$", which the pattern cannot match: a no-op kept for the record.
        return found[-1].replace(",", "").replace("$", "") if found else None
    found = _FLEXIBLE.findall(text)
    if not found:
        return None
    for candidate in reversed(found):
        if candidate not in ("", "."):
            return candidate
    return found[0]


def compute_score(text: str, truth: str, method: str) -> float:
    answer = extract_solution(text, method)
    return 1.0 if answer is not None and answer == truth else 0.0


def compute_reward(text: str, truth: str) -> float:
    """The handler's compute_reward: strict, and flexible when strict scores 0."""
    reward = compute_score(text, truth, "strict")
    return reward if reward else compute_score(text, truth, "flexible")


def extract_answer(text: str) -> str:
    """The handler's extract_answer (its voting answer): strict, else flexible, else ""."""
    answer = extract_solution(text, "strict")
    if answer is None:
        answer = extract_solution(text, "flexible")
    return answer or ""


# --------------------------------------------------------------------------- the task

def key_correct(key, example: Example) -> bool:
    """Whether a voted key is right: the reward of "#### " + key, as the reference judges a voted answer."""
    if not isinstance(key, str) or not isinstance(example.truth, str):
        return False
    return compute_reward("#### " + key, example.truth) > 0


def score(completion: str, example: Example) -> Scored:
    text = completion if isinstance(completion, str) else ""
    truth = example.truth if isinstance(example.truth, str) else ""
    reward = compute_reward(text, truth) if truth else 0.0
    answer = extract_answer(text)
    key = answer if any("0" <= c <= "9" for c in answer) else None
    return Scored(reward=reward, correct=reward > 0, key=key, answer=answer or None)


class GSM8K(DataTask):
    """The Task (randopt_hpc.tasks.base.Task) over this module's functions."""
    name = "gsm8k"
    data_format = ("parquet or JSON rows with question and answer (the solution, ending '#### N'), "
                   "or the reference's preprocessed rows with prompt and reward_model.ground_truth")
    # None: the answer is the last "#### N" of the final 300 characters, else their last number, so no
    # text marks where the answer is complete; generation runs to EOS or the cap, as the reference's did.
    stop_strings = ()
    examples_from_records = staticmethod(examples_from_records)
    score = staticmethod(score)
    key_correct = staticmethod(key_correct)
