"""The records a run appends to its shards: one scored answer set, and who gave it.

Four kinds, one JSON object per shard line:
  candidate  {"type": "candidate", "index", "seed", "sigma", "score", "accuracy", <answers>, "rank", "seconds"}
  base       {"type": "base", "split": "train" | "test", <answers>}
  member     {"type": "member", "index", <answers>}
  sample     {"type": "sample", "index": s, <answers>}     the base model's sample s on the test split
where <answers> is "rewards", "correct", "keys", "answers", "texts" (one entry per example; texts may
be null) and "prompt_tokens", "gen_tokens", "finish" (token accounting; absent in lines written before
it existed). `from_json` refuses anything else, so a hand-edited or foreign line is never half-read.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from randopt_hpc.sampling import FINISH


def mean(xs: Sequence) -> float:
    """The plain left-to-right mean every score and accuracy uses (NaN for no examples)."""
    xs = list(xs)
    return float(sum(xs)) / len(xs) if xs else float("nan")


@dataclass(frozen=True)
class Answers:
    """One model's scored answers on one list of examples, in example order."""
    rewards: tuple[float, ...]
    correct: tuple[bool, ...]
    keys: tuple[str | None, ...]        # voting keys; None = abstain
    answers: tuple[str | None, ...]     # extracted answer text
    texts: tuple[str, ...] | None       # raw completions, when kept
    prompt_tokens: tuple[int, ...] | None = None   # token accounting (None: a shard line from before it)
    gen_tokens: tuple[int, ...] | None = None
    finish: tuple[str, ...] | None = None         # randopt_hpc.sampling.FINISH

    @staticmethod
    def from_scored(completions: Sequence, scored: Sequence, keep_text: bool) -> Answers:
        """`completions`: randopt_hpc.sampling.Completion per example."""
        return Answers(rewards=tuple(s.reward for s in scored), correct=tuple(bool(s.correct) for s in scored),
                       keys=tuple(s.key for s in scored), answers=tuple(s.answer for s in scored),
                       texts=tuple(c.text for c in completions) if keep_text else None,
                       prompt_tokens=tuple(c.prompt_tokens for c in completions),
                       gen_tokens=tuple(c.gen_tokens for c in completions), finish=tuple(c.finish for c in completions))

    @property
    def score(self) -> float:
        """The selection score: mean reward."""
        return mean(self.rewards)

    @property
    def accuracy(self) -> float:
        return mean(self.correct)

    def to_dict(self) -> dict:
        out = {"rewards": list(self.rewards), "correct": list(self.correct), "keys": list(self.keys),
               "answers": list(self.answers), "texts": None if self.texts is None else list(self.texts)}
        if self.gen_tokens is not None:
            out.update(prompt_tokens=list(self.prompt_tokens), gen_tokens=list(self.gen_tokens),
                       finish=list(self.finish))
        return out

    @staticmethod
    def from_dict(d: dict) -> Answers:
        cols = [d["rewards"], d["correct"], d["keys"], d["answers"]]
        texts = d.get("texts")
        if not all(isinstance(c, list) for c in cols) or (texts is not None and not isinstance(texts, list)) \
                or len({len(c) for c in cols + ([texts] if texts is not None else [])}) != 1:
            raise ValueError("answer columns are not lists of one length")
        rewards = tuple(float(r) for r in d["rewards"])
        if any(isinstance(r, bool) for r in d["rewards"]) or not all(isinstance(c, bool) for c in d["correct"]):
            raise ValueError("rewards must be numbers and correct flags booleans")
        for name in ("keys", "answers"):
            if not all(v is None or isinstance(v, str) for v in d[name]):
                raise ValueError(f"{name} must be strings or null")
        tokens = {}
        if "gen_tokens" in d:
            for name in ("prompt_tokens", "gen_tokens"):
                v = d[name]
                if not isinstance(v, list) or len(v) != len(rewards) or \
                        not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v):
                    raise ValueError(f"{name} must be one count per example")
                tokens[name] = tuple(v)
            if not isinstance(d["finish"], list) or len(d["finish"]) != len(rewards) or \
                    not all(f in FINISH for f in d["finish"]):
                raise ValueError(f"finish must be one of {', '.join(FINISH)} per example")
            tokens["finish"] = tuple(d["finish"])
        return Answers(rewards=rewards, correct=tuple(d["correct"]), keys=tuple(d["keys"]),
                       answers=tuple(d["answers"]), texts=None if texts is None else tuple(texts), **tokens)


class _Keyed:
    """A record is found by its kind and key: a candidate's or member's index, the base model's split."""
    kind: str
    key_field: str
    answers: Answers

    @property
    def key(self):
        return getattr(self, self.key_field)

    def fields(self) -> dict:
        return {self.key_field: self.key, **self.answers.to_dict()}


@dataclass(frozen=True)
class CandidateRecord(_Keyed):
    """A perturbed model's answers on the train split."""
    index: int
    seed: int
    sigma: float
    answers: Answers
    rank: int          # provenance: which rank evaluated it, and how long it took
    seconds: float
    kind = "candidate"
    key_field = "index"

    @property
    def score(self) -> float:
        return self.answers.score

    def fields(self) -> dict:
        return {"index": self.index, "seed": self.seed, "sigma": self.sigma, "score": self.answers.score,
                "accuracy": self.answers.accuracy, **self.answers.to_dict(), "rank": self.rank,
                "seconds": self.seconds}


@dataclass(frozen=True)
class BaseRecord(_Keyed):
    """The unperturbed model's answers on one split (its texts are always kept: one model is cheap)."""
    split: str
    answers: Answers
    kind = "base"
    key_field = "split"


@dataclass(frozen=True)
class MemberRecord(_Keyed):
    """An ensemble member's answers on the test split."""
    index: int
    answers: Answers
    kind = "member"
    key_field = "index"


@dataclass(frozen=True)
class SampleRecord(MemberRecord):
    """Sample `index` of the base model's answers on the test split (generation.samples): a member's layout,
    its own kind."""
    kind = "sample"


Record = CandidateRecord | BaseRecord | MemberRecord | SampleRecord
KINDS = ("candidate", "base", "member", "sample")


def to_json(record: Record) -> str:
    """One shard line (without the newline); "type" comes first."""
    return json.dumps({"type": record.kind, **record.fields()}, separators=(",", ":"), allow_nan=True)


def _int(d: dict, name: str) -> int:
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return v


def from_json(line: str) -> Record:
    """The record on one shard line; ValueError for anything that is not a whole, well-formed record."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(d, dict) or d.get("type") not in KINDS:
        raise ValueError("not a record (no known type)")
    try:
        answers = Answers.from_dict(d)
        if d["type"] == "candidate":
            sigma, seconds = float(d["sigma"]), float(d["seconds"])
            if not (math.isfinite(sigma) and sigma > 0):
                raise ValueError("sigma must be a positive number")
            return CandidateRecord(index=_int(d, "index"), seed=_int(d, "seed"), sigma=sigma, answers=answers,
                                   rank=_int(d, "rank"), seconds=seconds)
        if d["type"] == "base":
            if d["split"] not in ("train", "test"):
                raise ValueError("split must be train or test")
            return BaseRecord(split=d["split"], answers=answers)
        if d["type"] == "sample":
            return SampleRecord(index=_int(d, "index"), answers=answers)
        return MemberRecord(index=_int(d, "index"), answers=answers)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{d['type']} record lacks or mistypes {e}") from None


@dataclass
class Done:
    """What a run folder's shards hold, by kind and key; the first record of a key wins (a duplicate cannot
    differ: same index, same model)."""
    candidates: dict
    base: dict
    members: dict
    samples: dict

    @staticmethod
    def of(records) -> Done:
        done = Done({}, {}, {}, {})
        for r in records:
            done.add(r)
        return done

    def table(self, kind: str) -> dict:
        return {"candidate": self.candidates, "base": self.base, "member": self.members, "sample": self.samples}[kind]

    def add(self, r: Record) -> None:
        self.table(r.kind).setdefault(r.key, r)
