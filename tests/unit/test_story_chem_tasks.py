"""ROCStories and USPTO-50K tasks: prompts pinned to the reference texts, hand-computed rewards and
keys, agreement with the reference's own extraction code, hostile output, and data rows."""
from __future__ import annotations

import hashlib
import itertools
import random
import re
from pathlib import Path

import pytest

from randopt_hpc.data import read_records
from randopt_hpc.tasks import get_task
from randopt_hpc.tasks import rocstories as roc
from randopt_hpc.tasks import uspto50k as uspto
from randopt_hpc.vote import judge_with, key_verdicts, vote
from tests.conftest import fastest

DATA = Path(__file__).resolve().parents[1] / "data"
ROC_ROWS = read_records(str(DATA / "rocstories/sample.jsonl"))
USPTO_ROWS = read_records(str(DATA / "uspto50k/sample.jsonl"))
ROC = roc.examples_from_records(ROC_ROWS)
USPTO = uspto.examples_from_records(USPTO_ROWS)
ROC_EX = ROC[0]      # gold_order [1, 2, 4, 3, 0]: "BCEDA"
USPTO_EX = USPTO[2]  # class 3
MB = 1 << 20


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- the reference's extraction, as oracles

def ref_roc_key(response: str):
    """utils/reward_score/rocstories.py extract_answer + the handler's parse and validation."""
    response = response.strip()
    for pattern in (r"([A-E])\s*,\s*([A-E])\s*,\s*([A-E])\s*,\s*([A-E])\s*,\s*([A-E])",
                    r"([A-E])\s+([A-E])\s+([A-E])\s+([A-E])\s+([A-E])", r"([A-E])([A-E])([A-E])([A-E])([A-E])"):
        m = re.search(pattern, response.upper())
        if m:
            answer = ",".join(m.groups())
            break
    else:
        letters = re.findall(r"[A-E]", response.upper())
        answer = ",".join(letters[:5]) if len(letters) >= 5 else response.upper().strip()
    answer = answer.upper().replace(" ", "")
    labels = [x.strip() for x in answer.split(",")] if "," in answer else list(answer)
    return "".join(labels) if len(labels) == 5 and set(labels) == set("ABCDE") else None


def ref_uspto_answer(response: str) -> str:
    """utils/reward_score/uspto50k.py extract_answer."""
    matches = re.findall(r"<answer>\s*(\d+)\s*</answer>", response, re.IGNORECASE)
    if matches:
        return matches[-1]
    matches = re.findall(r"\b([1-9]|10)\b", response)
    return matches[-1] if matches else ""


# --------------------------------------------------------------------------- prompts and rows

def test_registry_and_data_only():
    for name, cls in (("rocstories", roc.ROCStories), ("uspto50k", uspto.USPTO50K)):
        task = get_task(name)
        assert isinstance(task, cls) and task.name == name and task.synthetic_limit == 0 and task.data_format
        assert task.synthetic_records(0, 1) == []
        with pytest.raises(ValueError, match="synthetic"):
            task.synthetic_records(3, 1)


def test_rocstories_prompt_is_the_reference_text():
    assert _sha(roc.SYSTEM) == "1c5ef60b5c93b2e4644ea9e03c4f2507e8f62cc8841a9d24c8dfe47c9523c9b3"
    user = ("Below are 5 sentences from a story, but they are in the wrong order.\n"
            "Please arrange them in the correct chronological order.\n\nTitle: The Lost Kite\n\n"
            "Sentence A: Grandpa promised they would build an even better one.\n"
            "Sentence B: Maya built a red kite with her grandfather.\n"
            "Sentence C: They took it to the hill on a windy afternoon.\n"
            "Sentence D: The kite drifted over the trees and out of sight.\n"
            "Sentence E: A sudden gust snapped the string.\n\n"
            "Output the correct order as comma-separated letters (e.g., B,A,D,E,C).\n"
            "Only output the letters, nothing else.")
    assert ROC_EX.messages == (("system", roc.SYSTEM), ("user", user))
    assert ROC_EX.prompt == roc.SYSTEM + "\n" + user + "\n" and ROC_EX.response_prefix == ""
    assert roc.examples_from_records([{**ROC_ROWS[0], "title": None}])[0].messages[1][1].count("Title: \n") == 1


def test_rocstories_rows():
    assert len(ROC) >= 8 and [ex.id for ex in ROC] == [str(i) for i in range(len(ROC))]
    for row, ex in zip(ROC_ROWS, ROC):
        assert ex.truth == "".join("ABCDE"[g] for g in row["gold_order"])
        assert [row["shuffled_sentences"][g] for g in row["gold_order"]] == row["sentences"]
        assert ex.truth != "ABCDE"   # the prompt says the sentences are out of order
    assert ROC_EX.truth == "BCEDA"


def test_uspto_prompt_is_the_reference_text():
    assert _sha(uspto.SYSTEM) == "3d1ea486f77b21c76824e39abadfa03ca12ca620c59aca5d65bdf11dfc061f60"
    assert _sha(uspto.USER_TEMPLATE) == "6eb55cb04ad6c0a37aeb6886c20b394d779928680c045fec2a83f1f0508f49c0"
    ex = USPTO[0]
    user = ("Classify this reaction:\n\nReactants >> Product:\n"
            "Br[CH2][c]1[cH][cH][cH][cH][cH]1.[NH]1[CH2][CH2][CH2][CH2][CH2]1>>"
            "[CH2]([c]1[cH][cH][cH][cH][cH]1)[N]1[CH2][CH2][CH2][CH2][CH2]1\n\n"
            "Analyze the key transformation and output the class number (1-10) in <answer>X</answer> tags.")
    assert ex.messages == (("system", uspto.SYSTEM), ("user", user))
    assert ex.prompt == uspto.SYSTEM + "\n" + user + "\n" and ex.id == "sample_000" and ex.truth == 1
    assert sorted(e.truth for e in USPTO) == list(range(1, 11))
    assert uspto.examples_from_records([{"rxn_smiles": "C>>C", "class": " 7 "}])[0].truth == 7


def test_parquet_rows_read_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for rows, task in ((ROC_ROWS, roc), (USPTO_ROWS, uspto)):
        path = tmp_path / f"{task.__name__}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        assert task.examples_from_records(read_records(str(path))) == task.examples_from_records(rows)


ROC_BAD = [
    ({"shuffled_sentences": None}, "shuffled_sentences"), ({"shuffled_sentences": ["a"] * 4}, "shuffled_sentences"),
    ({"shuffled_sentences": ["a", "b", "c", "d", 5]}, "shuffled_sentences"), ({"gold_order": None}, "gold_order"),
    ({"gold_order": [0, 0, 1, 2, 3]}, "gold_order"), ({"gold_order": [True, 0, 2, 3, 4]}, "gold_order"),
    ({"gold_order": [0, 1, 2, 3, 5]}, "gold_order"), ({"gold_order": "12430"}, "gold_order"),
    ({"gold_order": [2, 1, 4, 3, 0]}, "gold_order"),   # disagrees with `sentences`
    ({"title": 3}, "title"), ({"sentences": "abc"}, "sentences"),
]
USPTO_BAD = [({"rxn_smiles": None}, "rxn_smiles"), ({"rxn_smiles": " "}, "rxn_smiles"), ({"class": None}, "class"),
             ({"class": 0}, "class"), ({"class": 11}, "class"), ({"class": True}, "class"), ({"class": 3.0}, "class"),
             ({"class": "three"}, "class"), ({"class": "٣"}, "class"), ({"class": "-3"}, "class")]


@pytest.mark.parametrize("task,rows,change,field", [(roc, ROC_ROWS, c, f) for c, f in ROC_BAD] +
                         [(uspto, USPTO_ROWS, c, f) for c, f in USPTO_BAD])
def test_bad_rows_name_the_row_and_field(task, rows, change, field):
    bad = {k: v for k, v in {**rows[2], **change}.items() if v is not None}
    with pytest.raises(ValueError) as e:
        task.examples_from_records([rows[0], rows[1], bad])
    msg = str(e.value)
    assert msg.startswith("row 2:") and repr(field) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="^row 1: must be an object"):
        task.examples_from_records([rows[0], ["not", "a", "row"]])


# --------------------------------------------------------------------------- ROCStories scoring

# (completion, key, reward) against gold "BCEDA"; reward = 0.6 * positions/5 + 0.4 * kept gold pairs/4
ROC_CASES = [
    ("B,C,E,D,A", "BCEDA", 1.0),
    ("b, c , e ,d, a", "BCEDA", 1.0),                 # upper-cased; spaces around commas
    ("B C E D A", "BCEDA", 1.0),
    ("The answer: bceda", "BCEDA", 1.0),              # five letters in a row
    ("b; c; e; d; a", "BCEDA", 1.0),                  # the first five letters A-E anywhere
    ("C,B,E,D,A", "CBEDA", 0.6 * 3 / 5 + 0.4 * 3 / 4),    # 0.66
    ("B,C,E,A,D", "BCEAD", 0.6 * 3 / 5 + 0.4 * 3 / 4),    # 0.66
    ("A,B,C,D,E", "ABCDE", 0.6 * 1 / 5 + 0.4 * 2 / 4),    # 0.32
    ("D,E,A,B,C", "DEABC", 0.6 * 0 / 5 + 0.4 * 2 / 4),    # 0.20
    ("The order is: A,D,E,C,B", "ADECB", 0.6 * 1 / 5),    # the reversal: only the middle sentence, 0.12
    ("B C E D A, or rather A,B,C,D,E", "ABCDE", 0.32),    # a comma list anywhere beats a spaced one
    ("A,A,B,C,D", None, 0.0),                         # repeats: no answer
    ("A,A,A,A,A then B,C,E,D,A", None, 0.0),          # the first comma list is the one read
    ("Because a decade passed", None, 0.0),           # prose: "DECAD" is read, and repeats D
    ("I'm not sure.", None, 0.0),                     # fewer than five letters
    ("", None, 0.0),
]


@pytest.mark.parametrize("completion,key,reward", ROC_CASES)
def test_rocstories_hand_computed(completion, key, reward):
    s = roc.score(completion, ROC_EX)
    assert (s.key, s.correct) == (key, key == "BCEDA")
    assert s.reward == pytest.approx(reward, abs=1e-12)
    assert roc.key_correct(s.key, ROC_EX) == s.correct
    assert s.key == ref_roc_key(completion)


def test_rocstories_partial_credit_is_never_correct():
    # The reference counted a voted answer correct when its partial credit was non-zero, which every
    # permutation has: here all 120, of which only the gold order is correct.
    rewards = {}
    for perm in itertools.permutations("ABCDE"):
        s = roc.score(",".join(perm), ROC_EX)
        rewards["".join(perm)] = s.reward
        assert s.correct == ("".join(perm) == "BCEDA") == roc.key_correct(s.key, ROC_EX)
    assert min(rewards.values()) == pytest.approx(0.1) and max(rewards.values()) == 1.0
    assert rewards["ADECB"] == pytest.approx(0.12)   # the reversal: no pair kept, the middle sentence in place
    judge = judge_with(get_task("rocstories"), [ROC_EX])

    def voted(keys, correct, k):
        return vote(keys, key_verdicts(keys, correct, judge), k)
    assert voted([["ADECB"], ["ADECB"], ["BCEDA"]], [[False], [False], [True]], 3) == (["ADECB"], [False])
    assert voted([["BCEDA"], ["ADECB"]], [[True], [False]], 2) == (["BCEDA"], [True])
    assert not roc.key_correct("B,C,E,D,A", ROC_EX) and not roc.key_correct(None, ROC_EX)


def test_rocstories_agrees_with_reference_extraction():
    rng = random.Random(11)
    pieces = ["A", "B", "C", "D", "E", "a", "e", "x", ",", " ", "\n", "\u2003", ";", "ẚ", "ß", "\0"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert roc.score(text, ROC_EX).key == ref_roc_key(text), repr(text)


def test_rocstories_long_output_is_read_at_both_ends():
    pad = "x" * 20_000
    assert roc.score(pad + "B,C,E,D,A", ROC_EX).correct and roc.score("B,C,E,D,A" + pad, ROC_EX).correct
    assert roc.score(pad + "B,C,E,D,A" + pad, ROC_EX).key is None   # the middle is not read
    exact = "x" * (2 * roc.WINDOW - 9) + "B,C,E,D,A"
    assert roc.score(exact, ROC_EX).key == ref_roc_key(exact) == "BCEDA"


# --------------------------------------------------------------------------- USPTO-50K scoring

# (completion, answer, key) for class 3; reward 1.0 exactly when key == "3"
USPTO_CASES = [
    ("<answer>3</answer>", "3", "3"),
    ("Reasoning...\n<ANSWER> 3 </Answer>", "3", "3"),
    ("<answer>03</answer>", "03", "3"),                           # the reference voted "03" apart from "3"
    ("<answer>٣</answer>", "٣", "3"),                             # \d matches it; int() reads 3
    ("<anſwer>3</anſwer>", "3", "3"),                             # IGNORECASE folds ſ to s
    ("<answer>3</answer> wait <answer>7</answer>", "7", "7"),     # the last tagged answer
    ("<answer>7</answer> though class 3 fits", "7", "7"),         # a tagged answer beats a bare number
    ("It is class 3.", "3", "3"),
    ("Step 1: look. Class 3, or maybe 10", "10", "10"),           # the last standalone 1-10
    ("<answer>Class 3</answer>", "3", "3"),                       # not digits: the bare 3 inside is read
    ("<answer>3.0</answer>", "3", "3"),
    ("<answer>-3</answer>", "3", "3"),
    ("<answer>11</answer>", "11", "11"),                          # out of range: votes, never correct
    ("<answer>0</answer>", "0", "0"),
    ("x3 3rd 33 11 0", None, None),                               # no standalone 1-10
    ("", None, None),
]


@pytest.mark.parametrize("completion,answer,key", USPTO_CASES)
def test_uspto_hand_computed(completion, answer, key):
    s = uspto.score(completion, USPTO_EX)
    assert (s.answer, s.key, s.correct, s.reward) == (answer, key, key == "3", 1.0 if key == "3" else 0.0)
    assert uspto.key_correct(s.key, USPTO_EX) == s.correct
    assert (s.answer or "") == ref_uspto_answer(completion)


def test_uspto_key_correct():
    assert all(uspto.key_correct(k, USPTO_EX) for k in ("3", "03", "٣"))
    assert not any(uspto.key_correct(k, USPTO_EX) for k in ("7", "30", "3.0", " 3", "", None, 3, "9" * 5000))


def test_uspto_votes_the_class_value():
    # The reference's keys "3", "03" and "٣" were three votes apart; here they outvote "7", "7".
    scored = [uspto.score(c, USPTO_EX) for c in ("<answer>7</answer>", "<answer>3</answer>", "<answer>03</answer>",
                                                  "<answer>٣</answer>", "7")]
    keys, correct = [[s.key] for s in scored], [[s.correct] for s in scored]
    judge = judge_with(get_task("uspto50k"), [USPTO_EX])
    assert vote(keys, key_verdicts(keys, correct, judge), 5) == (["3"], [True])


def test_uspto_agrees_with_reference_extraction():
    rng = random.Random(12)
    pieces = ["<answer>", "</answer>", "<ANSWER>", "</anſwer>", "1", "3", "0", "10", "٣", " ", "\n", "x", "-", ".", "_"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert (uspto.extract_class(text) or "") == ref_uspto_answer(text), repr(text)


def test_uspto_long_output_is_read_at_both_ends():
    pad = "x" * 20_000
    assert uspto.score("<answer>3</answer>" + pad, USPTO_EX).correct
    assert uspto.score(pad + "<answer>7</answer>" + pad + "<answer>3</answer>", USPTO_EX).correct
    assert uspto.score("<answer>3</answer>" + pad + "<answer>7</answer>" + pad, USPTO_EX).key == "3"
    assert uspto.score("<answer>" + "0" * 5000 + "3</answer>", USPTO_EX).key is None   # past int()'s digit limit
    half = "x 7 " * (uspto.WINDOW // 4 - 5)
    exact = half + "<answer>3</answer>" + half + "x" * (2 * uspto.WINDOW - 2 * len(half) - 18)
    assert len(exact) == 2 * uspto.WINDOW and uspto.extract_class(exact) == ref_uspto_answer(exact) == "3"


# --------------------------------------------------------------------------- hostile output

def _hostile(task_letters: str) -> list:
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    return [
        "A" * MB, "A." * (MB // 2), "AB," * (MB // 3), "A " + " " * MB, "a, b, c, d, " * (MB // 12),
        "A A B C D " * (MB // 10), "1 1 2 3 4 " * (MB // 10), "<answer>" * (MB // 8), "</answer>" * (MB // 9),
        "<answer><answer>7</answer></answer>" * (MB // 35), "<answer>" + "9" * MB + "</answer>",
        "<answer>" + " " * MB, "<answer> 11" * (MB // 11), "<answer>-1</answer><answer>0</answer>" * (MB // 37),
        "\0" * MB, "٣" * MB, "ß" * MB, "ẚ" * MB, "\ud800" * MB, "\n" * MB, "10 " * (MB // 3), "😀1 " * (MB // 3),
        every, "x" * MB + task_letters, "", None, b"B,C,E,D,A", 12345,
    ]


@pytest.mark.parametrize("task,example,answer", [(roc, ROC_EX, "B,C,E,D,A"), (uspto, USPTO_EX, "<answer>3</answer>")])
def test_hostile_output_never_raises_and_is_fast(task, example, answer):
    worst = 0.0
    for completion in _hostile(answer):
        s, seconds = fastest(task.score, completion, example)
        worst = max(worst, seconds)
        assert seconds < 0.010, (repr(completion)[:40], seconds)
        assert isinstance(s.reward, float) and 0.0 <= s.reward <= 1.0 and s.correct == task.key_correct(s.key, example)
        assert s.correct == (isinstance(completion, str) and completion.endswith(answer) and completion[0] == "x")
    assert worst < 0.010
