"""The records a run appends to its shards: one scored answer set, and who gave it.

Four kinds, one JSON object per shard line:
  candidate  {"type": "candidate", "index", "seed", "sigma", "score", "accuracy", <answers>, "rank", "seconds"}
  base       {"type": "base", "split": "train" | "test", <answers>, "rank", "seconds"}
  member     {"type": "member", "index", <answers>, "rank", "seconds"}   all or part of the test split
  sample     {"type": "sample", "index": s, <answers>, "rank", "seconds"}   the base model's sample s (test)
where <answers> is "rewards", "correct", "keys", "answers", "texts" (one entry per example; texts may
be null) and "prompt_tokens", "gen_tokens", "finish" (token accounting; absent in lines written before
it existed). `from_json` refuses anything else, so a hand-edited or foreign line is never half-read.
"""
from __future__ import annotations

import dataclasses
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
    settings: tuple[tuple[str, int], ...] | None = None   # the fingerprint.SETTINGS they were produced under
    ids: tuple[str, ...] | None = None    # the examples' ids (None in both: a line from before they were recorded)

    @staticmethod
    def from_scored(completions: Sequence, scored: Sequence, keep_text: bool, settings: dict | None = None,
                    ids: Sequence[str] | None = None) -> Answers:
        """`completions`: randopt_hpc.sampling.Completion per example."""
        return Answers(rewards=tuple(s.reward for s in scored), correct=tuple(bool(s.correct) for s in scored),
                       keys=tuple(s.key for s in scored), answers=tuple(s.answer for s in scored),
                       texts=tuple(c.text for c in completions) if keep_text else None,
                       prompt_tokens=tuple(c.prompt_tokens for c in completions),
                       gen_tokens=tuple(c.gen_tokens for c in completions), finish=tuple(c.finish for c in completions),
                       settings=None if settings is None else tuple(sorted(settings.items())),
                       ids=None if ids is None else tuple(ids))

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
        if self.settings is not None:
            out["settings"] = [list(p) for p in self.settings]
        if self.ids is not None:
            out["ids"] = list(self.ids)
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
        if "settings" in d:
            st = d["settings"]
            if not isinstance(st, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and
                                                   isinstance(p[1], int) and not isinstance(p[1], bool) for p in st):
                raise ValueError("settings must be [name, integer] pairs")
            tokens["settings"] = tuple(tuple(p) for p in st)
        if "ids" in d:
            if not isinstance(d["ids"], list) or len(d["ids"]) != len(rewards) or \
                    not all(isinstance(x, str) for x in d["ids"]):
                raise ValueError("ids must be one string per example")
            tokens["ids"] = tuple(d["ids"])
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


class _Job(_Keyed):
    """A record answered as one job of the run (`rank` and `seconds`: who answered it and how long it took;
    -1 and NaN in lines from before they were recorded)."""
    rank: int
    seconds: float

    def fields(self) -> dict:
        return {**super().fields(), **({"rank": self.rank, "seconds": self.seconds} if self.rank >= 0 else {})}


@dataclass(frozen=True)
class BaseRecord(_Job):
    """The unperturbed model's answers on one split (its texts are always kept: one model is cheap)."""
    split: str
    answers: Answers
    rank: int = -1
    seconds: float = float("nan")
    kind = "base"
    key_field = "split"


@dataclass(frozen=True)
class MemberRecord(_Job):
    """An ensemble member's answers on the test split, or on a part of it (a member's test answers are
    shared between ranks by parts: randopt_hpc.jobs)."""
    index: int
    answers: Answers
    rank: int = -1
    seconds: float = float("nan")
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
            if not (math.isfinite(sigma) and sigma != 0):   # negative: the antithetic twin of an ES pair
                raise ValueError("sigma must be a non-zero number")
            return CandidateRecord(index=_int(d, "index"), seed=_int(d, "seed"), sigma=sigma, answers=answers,
                                   rank=_int(d, "rank"), seconds=seconds)
        job = {"rank": _int(d, "rank"), "seconds": float(d["seconds"])} if "seconds" in d else {}
        if d["type"] == "base":
            if d["split"] not in ("train", "test"):
                raise ValueError("split must be train or test")
            return BaseRecord(split=d["split"], answers=answers, **job)
        if d["type"] == "sample":
            return SampleRecord(index=_int(d, "index"), answers=answers, **job)
        return MemberRecord(index=_int(d, "index"), answers=answers, **job)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{d['type']} record lacks or mistypes {e}") from None


def _positions(a: Answers, ids: Sequence[str]) -> Sequence[str]:
    """The ids a's entries answer: its own, or for a line from before ids were recorded, `ids` when the
    lengths agree (such a line was written for its run's one test split) and none otherwise."""
    return a.ids if a.ids is not None else (ids if len(a.rewards) == len(ids) else ())


def assemble(parts: Sequence[Answers], ids: Sequence[str]) -> Answers | None:
    """The answers to the examples `ids`, in that order, from answer sets each covering some of them (a run
    whose test split grew answered only its new examples); None while one is not covered. The first answer
    to an id wins. A column (texts, token accounting) is kept only if every part used has it; the settings
    are those of every part used."""
    ids = tuple(ids)
    whole = next((a for a in parts if tuple(_positions(a, ids)) == ids), None)
    if whole is not None:
        return whole if whole.ids is not None else dataclasses.replace(whole, ids=ids)
    at: dict = {}
    for a in parts:
        for j, x in enumerate(_positions(a, ids)):
            at.setdefault(x, (a, j))
    if any(x not in at for x in ids):
        return None
    rows = [at[x] for x in ids]
    used = list({id(a): a for a, _ in rows}.values())

    def column(name: str):
        if any(getattr(a, name) is None for a in used):
            return None
        return tuple(getattr(a, name)[j] for a, j in rows)
    settings = sorted({p for a in used for p in a.settings or ()})
    return Answers(**{f: column(f) for f in ("rewards", "correct", "keys", "answers", "texts", "prompt_tokens",
                                             "gen_tokens", "finish")}, settings=tuple(settings) or None, ids=ids)


def spread(a: Answers, ids: Sequence[str]) -> tuple[Answers, tuple[bool, ...]]:
    """a's answers laid out on the examples `ids`, and which of them it answered: an unanswered example (a
    candidate a halving schedule dropped before it) holds reward NaN, correct False, no key, answer or text,
    -1 tokens and finish None, so it is marked, never scored 0."""
    mine = {x: j for j, x in enumerate(_positions(a, ids))}
    rows = [mine.get(x) for x in ids]

    def column(name: str, missing):
        col = getattr(a, name)
        return None if col is None else tuple(missing if j is None else col[j] for j in rows)
    out = Answers(rewards=column("rewards", float("nan")), correct=column("correct", False),
                  keys=column("keys", None), answers=column("answers", None), texts=column("texts", ""),
                  prompt_tokens=column("prompt_tokens", -1), gen_tokens=column("gen_tokens", -1),
                  finish=column("finish", None), settings=a.settings, ids=tuple(ids))
    return out, tuple(j is not None for j in rows)


def merged(a: CandidateRecord, b: CandidateRecord) -> CandidateRecord:
    """One candidate's answers from two records (a halving schedule answers the train split in parts): a's
    examples, then b's new ones (`assemble`: an example both answer keeps a's answer, the same model's greedy
    answer). A record from before ids were recorded answered the whole split."""
    if a.answers.ids is None or b.answers.ids is None:
        return a if a.answers.ids is None or b.answers.ids is not None else b
    have = set(a.answers.ids)
    ids = a.answers.ids + tuple(x for x in b.answers.ids if x not in have)
    if len(ids) == len(have):
        return a
    return dataclasses.replace(a, answers=assemble([a.answers, b.answers], ids), seconds=a.seconds + b.seconds)


@dataclass
class Done:
    """What a run folder's shards hold, by kind and key. A candidate: its records merged (`merged`; a
    duplicate cannot differ: same index, same model). The other kinds: every record of the key, whose
    answers `answers()` puts together for a list of examples (a grown test split is answered in parts)."""
    candidates: dict
    base: dict
    members: dict
    samples: dict
    jobs: list = dataclasses.field(default_factory=list)   # every base, member and sample record, as added

    @staticmethod
    def of(records) -> Done:
        done = Done({}, {}, {}, {})
        for r in records:
            done.add(r)
        return done

    def table(self, kind: str) -> dict:
        return {"candidate": self.candidates, "base": self.base, "member": self.members, "sample": self.samples}[kind]

    def add(self, r: Record) -> None:
        if r.kind == "candidate":
            self.candidates[r.key] = merged(self.candidates[r.key], r) if r.key in self.candidates else r
        else:
            self.table(r.kind).setdefault(r.key, []).append(r.answers)
            self.jobs.append(r)

    def answers(self, kind: str, key, examples) -> Answers | None:
        return assemble(self.table(kind).get(key, ()), [ex.id for ex in examples])

    def missing(self, kind: str, key, examples) -> list:
        """The examples no record of (kind, key) answers yet."""
        have = {x for a in self.table(kind).get(key, ()) for x in _positions(a, [ex.id for ex in examples])}
        return [ex for ex in examples if ex.id not in have]
