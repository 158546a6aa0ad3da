"""USPTO-50K reaction classification: name the class (1-10) of a reaction given as reaction SMILES.

Follows the RandOpt reference (data_handlers/uspto50k.py, utils/reward_score/uspto50k.py, and
baselines/examples/data_preprocess/uspto50k.py for the prompt texts):
- Rows are the public USPTO-50K rows {id, class, rxn_smiles, prod_smiles}; the prompt shows
  rxn_smiles with atom-map numbers removed ("[CH3:10]" -> "[CH3]"). prod_smiles is not used.
- The answer is the digits of the last <answer> N </answer> (tags in any case, whitespace around
  N); without one, the last standalone 1-10 anywhere in the completion.
- reward = 1.0 when the answer's integer value is the class, else 0.0; correct = reward == 1.0.

Where this departs from the reference, and why:
- The voting key is the answer's integer value in decimal ("3"), where the reference voted the raw
  digits: "3", "03" and "٣" (an Arabic-Indic three, which \\d matches and int() reads as 3) were
  all judged class 3 but split their votes.
- Answers the reference could not convert (over 4,300 digits: Python's int() limit) abstain rather
  than vote their digits; they score 0, as there.
- A completion longer than 2 * WINDOW characters is read as its first and last WINDOW characters
  joined by a NUL, so that scoring stays within milliseconds on megabytes of output. Shorter ones,
  far longer than the 64 tokens the reference generates, are read exactly as the reference reads them.
- `class` must be an integer 1-10 (or a string of one): the prompt offers only those, so a data set
  numbered 0-9 would otherwise be scored one class off without a word.
"""
from __future__ import annotations

import re

from randopt_hpc.tasks.base import DataTask, Example, Scored, bad_field, both_ends, record_id, reference_prompt

SYSTEM = (
    "You are an expert organic chemist. Your task is to classify chemical reactions "
    "into one of 10 standard reaction categories based on the transformation type.\n\n"
    "## Reaction Classes:\n"
    "1: Heteroatom alkylation/arylation - N, O, S attacking C (e.g., SN2, ether formation)\n"
    "2: Acylation - Forming C=O bonds with N, O, S (e.g., amide, ester formation)\n"
    "3: C-C bond formation - New C-C bonds (e.g., Suzuki, Heck, Grignard)\n"
    "4: Heterocycle formation - Creating rings with N, O, S\n"
    "5: Protections - Adding protecting groups (Boc, Bn, TBS, etc.)\n"
    "6: Deprotections - Removing protecting groups\n"
    "7: Reductions - Adding H, removing O (e.g., ketone\u2192alcohol, nitro\u2192amine)\n"
    "8: Oxidations - Adding O, removing H (e.g., alcohol\u2192ketone)\n"
    "9: Functional group interconversion - Changing one FG to another\n"
    "10: Functional group addition - Adding new FG to molecule (e.g., halogenation)"
)
USER_TEMPLATE = (
    "Classify this reaction:\n\n"
    "Reactants >> Product:\n{rxn_smiles}\n\n"
    "Analyze the key transformation and output the class number (1-10) in <answer>X</answer> tags."
)
NUM_CLASSES = 10
# The tagged answer wins over any bare number, so the answer is complete at the first closing tag (kept:
# the tag pattern needs it). The bare-number fallback then reads only the text before it.
STOP_STRINGS = ("</answer>",)
MAX_DIGITS = 4300   # Python's default int() limit on decimal digits, which bounded the reference's answers
WINDOW = 8192       # characters read from each end of an over-long completion (see module docstring)

_ATOM_MAP = re.compile(r':(\d+)\]')
# The reference takes the last match of r"<answer>\s*(\d+)\s*</answer>" (IGNORECASE), else of
# r"\b([1-9]|10)\b". These are those patterns reversed, searched in the reversed text (extract_class).
_TAGGED_REVERSED = re.compile(r">rewsna/<\s*(\d+)\s*>rewsna<", re.IGNORECASE)
_BARE_REVERSED = re.compile(r"\b([1-9]|01)\b")


# --------------------------------------------------------------------------- prompts and records

def simplify_smiles(smiles: str) -> str:
    """Atom-map numbers removed, as the reference shows reactions."""
    return _ATOM_MAP.sub(']', smiles)


def parse_row(row: dict, index: int) -> tuple[str, int]:
    """(reaction SMILES, class 1-10) of a data row; ValueError naming the row and field."""
    if not isinstance(row, dict):
        raise ValueError(f"row {index}: must be an object with 'rxn_smiles' and 'class', got {type(row).__name__}")
    smiles = row.get("rxn_smiles")
    if not isinstance(smiles, str) or not smiles.strip():
        raise bad_field(index, "rxn_smiles", "must be a non-empty string", smiles)
    given = row.get("class")
    value = given.strip() if isinstance(given, str) else given   # some copies store the class as text
    if isinstance(value, str) and value in [str(c) for c in range(1, NUM_CLASSES + 1)]:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= NUM_CLASSES:
        raise bad_field(index, "class", f"must be an integer 1-{NUM_CLASSES} (or a string holding one)", given)
    return smiles, value


def examples_from_records(records: list[dict]) -> list[Example]:
    examples = []
    for i, row in enumerate(records):
        smiles, reaction_class = parse_row(row, i)
        messages = (("system", SYSTEM), ("user", USER_TEMPLATE.format(rxn_smiles=simplify_smiles(smiles))))
        examples.append(Example(id=record_id(row, i), prompt=reference_prompt(messages), messages=messages,
                                truth=reaction_class, stop_strings=STOP_STRINGS))
    return examples


# --------------------------------------------------------------------------- scoring

def extract_class(text) -> str | None:
    """The reference's answer digits (the last tagged number, else the last standalone 1-10), or None."""
    text = both_ends(text, WINDOW)
    # Last match = first match in the reversed text of the reversed pattern: the tagged matches cannot
    # overlap (no '<' inside one), nor can the bare ones (each is a whole word), so the two agree, and
    # the reversed search stops at the first hit instead of listing every match.
    backwards = text[::-1]
    m = _TAGGED_REVERSED.search(backwards)
    if m:
        return m.group(1)[::-1]
    m = _BARE_REVERSED.search(backwards)
    return m.group(1)[::-1] if m else None


def class_value(answer) -> int | None:
    """The integer an answer names (Unicode decimal digits count, as int() reads them), or None."""
    if not isinstance(answer, str) or not answer or len(answer) > MAX_DIGITS or not answer.isdecimal():
        return None
    try:
        return int(answer)
    except ValueError:   # a lowered int() digit limit (PYTHONINTMAXSTRDIGITS)
        return None


def key_correct(key, example: Example) -> bool:
    value = class_value(key)
    return value is not None and value == example.truth


def score(completion: str, example: Example) -> Scored:
    answer = extract_class(completion)
    value = class_value(answer)
    correct = value is not None and value == example.truth
    return Scored(reward=1.0 if correct else 0.0, correct=correct, key=None if value is None else str(value),
                  answer=answer)


class USPTO50K(DataTask):
    """The Task (randopt_hpc.tasks.base.Task) over this module's functions."""
    name = "uspto50k"
    data_format = "parquet or JSON rows with rxn_smiles (reaction SMILES) and class (1-10)"
    stop_strings = STOP_STRINGS
    examples_from_records = staticmethod(examples_from_records)
    score = staticmethod(score)
    key_correct = staticmethod(key_correct)
