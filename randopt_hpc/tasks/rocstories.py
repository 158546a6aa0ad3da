"""ROCStories sentence ordering: five shuffled sentences of a story, labelled A-E; answer with their
story order as letters ("B,C,E,D,A").

Follows the RandOpt reference (data_handlers/rocstories.py, utils/reward_score/rocstories.py):
- Rows are the public shawon/rocstories-combined rows {title, sentences, shuffled_sentences,
  gold_order}; the shuffle is the one stored in the row (shuffled_sentences[gold_order[i]] is the
  story's i-th sentence), so the permutation is a pure function of the row.
- The order is read from the upper-cased completion by the reference's four patterns, first hit
  wins: "X,X,X,X,X" (spaces allowed around commas), then "X X X X X", then "XXXXX", then the first
  five of the letters A-E anywhere. Only a permutation of A-E is an answer.
- reward = 0.6 * (share of sentences in their gold position) + 0.4 * (share of the four gold
  adjacent pairs that the answer keeps in order); 0.0 without an answer.
- The voting key is the permutation without commas ("BCEDA").

Where this departs from the reference, and why:
- A voted answer is correct only when it is the gold order. The reference judged a voted answer by
  its partial-credit score, and counted any non-zero score as correct; every permutation of five
  scores at least 0.1 (a score of 0 needs every gold pair inverted, which only the reversal does, and
  the reversal keeps the middle sentence in place), so its ensemble "accuracy" was the share of test
  items with any valid vote. `correct` is exact match for single completions too, where the reference reported the mean
  partial credit as accuracy; the partial credit stays the selection reward.
- A completion longer than 2 * WINDOW characters is read as its first and last WINDOW characters
  joined by a NUL, so that scoring stays within milliseconds on megabytes of output. Shorter ones,
  far longer than the 64 tokens the reference generates, are read exactly as the reference reads them.
- When a row also has `sentences`, it must agree with shuffled_sentences and gold_order under the
  reading above; a data set that stored the inverse permutation would otherwise be scored against
  the wrong order without a word.
"""
from __future__ import annotations

import re
from itertools import islice

from randopt_hpc.tasks.base import DataTask, Example, Scored, bad_field, both_ends, record_id, reference_prompt

SYSTEM = ("You are a helpful assistant that excels at story comprehension and logical reasoning. Given shuffled "
          "sentences from a story, you carefully analyze the narrative flow and temporal cues to determine the "
          "correct chronological order.")
LABELS = "ABCDE"
NUM_SENTENCES = 5
POSITION_WEIGHT = 0.6
ADJACENT_WEIGHT = 0.4
WINDOW = 8192   # characters read from each end of an over-long completion (see module docstring)

# The reference's patterns, in its order of preference; greedy with no nested repeats, so linear.
_COMMAS = re.compile(r"([A-E])\s*,\s*([A-E])\s*,\s*([A-E])\s*,\s*([A-E])\s*,\s*([A-E])")
_SPACES = re.compile(r"([A-E])\s+([A-E])\s+([A-E])\s+([A-E])\s+([A-E])")
_RUN = re.compile(r"([A-E])([A-E])([A-E])([A-E])([A-E])")
_LETTER = re.compile(r"[A-E]")


# --------------------------------------------------------------------------- prompts and records

def user_text(title: str, shuffled) -> str:
    sentences = "\n".join(f"Sentence {LABELS[i]}: {s}" for i, s in enumerate(shuffled))
    return ("Below are 5 sentences from a story, but they are in the wrong order.\n"
            "Please arrange them in the correct chronological order.\n\n"
            f"Title: {title}\n\n"
            f"{sentences}\n\n"
            "Output the correct order as comma-separated letters (e.g., B,A,D,E,C).\n"
            "Only output the letters, nothing else.")


def _five_strings(row: dict, index: int, field: str) -> list[str]:
    value = row.get(field)
    if not isinstance(value, (list, tuple)) or len(value) != NUM_SENTENCES or \
            not all(isinstance(s, str) for s in value):
        raise bad_field(index, field, f"must be a list of {NUM_SENTENCES} strings", value)
    return list(value)


def parse_row(row: dict, index: int) -> tuple[str, list[str], str]:
    """(title, shuffled sentences, gold key such as "BCEDA") of a data row; ValueError naming the row and field."""
    if not isinstance(row, dict):
        raise ValueError(f"row {index}: must be an object with 'shuffled_sentences' and 'gold_order', "
                         f"got {type(row).__name__}")
    title = row.get("title")
    if title is None:
        title = ""   # the reference's default for a missing title (a null would have printed "None")
    elif not isinstance(title, str):
        raise bad_field(index, "title", "must be a string", title)
    shuffled = _five_strings(row, index, "shuffled_sentences")
    order = row.get("gold_order")
    if not isinstance(order, (list, tuple)) or any(isinstance(g, bool) or not isinstance(g, int) for g in order) \
            or sorted(order) != list(range(NUM_SENTENCES)):
        raise bad_field(index, "gold_order", f"must be a permutation of 0..{NUM_SENTENCES - 1}", order)
    if row.get("sentences") is not None:
        story = _five_strings(row, index, "sentences")
        if any(shuffled[g].strip() != s.strip() for g, s in zip(order, story)):
            raise bad_field(index, "gold_order", "must list shuffled_sentences in story order "
                       "(shuffled_sentences[gold_order[i]] == sentences[i])", order)
    return title, shuffled, "".join(LABELS[g] for g in order)


def examples_from_records(records: list[dict]) -> list[Example]:
    examples = []
    for i, row in enumerate(records):
        title, shuffled, gold = parse_row(row, i)
        messages = (("system", SYSTEM), ("user", user_text(title, shuffled)))
        examples.append(Example(id=record_id(row, i), prompt=reference_prompt(messages), messages=messages,
                                truth=gold))
    return examples


# --------------------------------------------------------------------------- scoring

def extract_order(text) -> str | None:
    """The reference's extracted order, "B,C,E,D,A" (letters may repeat), or None where it found fewer
    than five letters (it then returned the whole text, which never parses as an order)."""
    upper = both_ends(text, WINDOW).strip().upper()
    for pattern in (_COMMAS, _SPACES, _RUN):
        m = pattern.search(upper)
        if m:
            return ",".join(m.groups())
    letters = [m.group() for m in islice(_LETTER.finditer(upper), NUM_SENTENCES)]
    return ",".join(letters) if len(letters) == NUM_SENTENCES else None


def order_key(order: str | None) -> str | None:
    """"BCEDA" when the extracted order is a permutation of A-E, else None (abstain)."""
    if order is None:
        return None
    labels = order.split(",")
    return "".join(labels) if sorted(labels) == list(LABELS) else None


def order_reward(key: str, gold: str) -> float:
    """0.6 * positions right + 0.4 * gold adjacent pairs kept in order, as the reference computes it."""
    position_score = sum(1 for p, g in zip(key, gold) if p == g) / float(NUM_SENTENCES)
    where = {label: i for i, label in enumerate(key)}
    adjacent = sum(1 for a, b in zip(gold, gold[1:]) if where[a] < where[b])
    return POSITION_WEIGHT * position_score + ADJACENT_WEIGHT * (adjacent / float(NUM_SENTENCES - 1))


def _gold(example: Example) -> str | None:
    gold = example.truth
    return gold if isinstance(gold, str) and sorted(gold) == list(LABELS) else None


def key_correct(key, example: Example) -> bool:
    gold = _gold(example)
    return gold is not None and key == gold


def score(completion: str, example: Example) -> Scored:
    order = extract_order(completion)
    key = order_key(order)
    gold = _gold(example)
    if key is None or gold is None:
        return Scored(reward=0.0, correct=False, key=key, answer=order)
    return Scored(reward=order_reward(key, gold), correct=key == gold, key=key, answer=order)


class ROCStories(DataTask):
    """The Task (randopt_hpc.tasks.base.Task) over this module's functions."""
    name = "rocstories"
    data_format = "parquet or JSON rows with shuffled_sentences (5 strings), gold_order (a permutation of 0-4), title"
    # None: the order is the first match of a comma pattern anywhere, before a space pattern anywhere, so
    # a later line can still change the answer, even across a newline; generation runs to EOS or the cap.
    stop_strings = ()
    examples_from_records = staticmethod(examples_from_records)
    score = staticmethod(score)
    key_correct = staticmethod(key_correct)
