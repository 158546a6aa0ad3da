"""The paper's 1-D toy (§3) as a task: given `ctx` values of a curve, roll out the next `fut` values.

A prompt is the context as a JSON array of floats; a completion is the rollout as one (backend mlp writes
it). The reward is minus the mean squared error against the true future; a rollout is `correct` when its
MSE is under CORRECT_MSE; the voting key is the rollout itself, and an ensemble's answer is the element-wise
mean of its members' rollouts (combine), as the reference averages its top K.

Settings come in config task.template, e.g. "family=sinusoid ctx=10 fut=60" (any of the three; the rest
default): the signal (a family or mixture of randopt_hpc.signals) the examples are drawn from, and the
window. Each example is a fresh random curve of the family (the reference's one_* targets are one fixed
curve, so its selection and test sets coincide; those families stay available for comparison).
generation.max_new_tokens must equal fut, and the model's ctx the task's.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence

from randopt_hpc import signals
from randopt_hpc.tasks.base import Example, Scored, bad_field, record_id

DEFAULTS = {"family": "sinusoid", "ctx": 10, "fut": 60}   # expt_script_generalization.py's window
MAX_LEN = 100_000          # a window longer than this is a typo, not a toy
# Curves span about ±1.5; an MSE of 0.01 is an RMS error of 0.1, a tenth of a typical amplitude: a rollout
# that visibly traces the curve. The reference reports MSE only; this threshold fills the accuracy columns.
CORRECT_MSE = 0.01
# The reward of a rollout that is no rollout (not JSON, wrong length, not finite numbers), and the floor of
# every reward: finite, because rewards are averaged, ranked and written as JSON (-inf would make a mean
# NaN and a shard unreadable), and no better than the worst real rollout, so junk never wins a selection.
BAD_REWARD = -1e6
NONE = Scored(reward=BAD_REWARD, correct=False, key=None, answer=None)


def parse_settings(template: str | None) -> dict:
    """{"family", "ctx", "fut"} from "family=sinusoid ctx=10 fut=60"; ValueError naming the bad part."""
    out = dict(DEFAULTS)
    if template is None:
        return out
    if not isinstance(template, str):
        raise ValueError(f"must be a string such as 'family=sinusoid ctx=10 fut=60', got {template!r}")
    seen = set()
    for part in template.split():
        key, eq, value = part.partition("=")
        if not eq or key not in DEFAULTS:
            raise ValueError(f"{part!r} is not one of family=NAME, ctx=N, fut=N")
        if key in seen:
            raise ValueError(f"{key} is given twice")
        seen.add(key)
        if key == "family":
            try:
                out[key] = signals.check_name(value)
            except ValueError as e:
                raise ValueError(f"family={value}: {e}") from None
        else:
            if not value.isdigit() or not 1 <= int(value) <= MAX_LEN:
                raise ValueError(f"{part!r}: {key} must be an integer in [1, {MAX_LEN}]")
            out[key] = int(value)
    return out


def check_template(template: str) -> None:
    parse_settings(template)


def rollout_of(text) -> list[float] | None:
    """The finite numbers of a JSON array, as floats; None for anything else (hostile input: never raises)."""
    if not isinstance(text, str):
        return None
    try:
        values = json.loads(text)
    except (ValueError, RecursionError):   # JSONDecodeError, digit-limit integers, deep nesting
        return None
    return finite_floats(values)


def finite_floats(values) -> list[float] | None:
    """A list of finite numbers (no booleans) as floats; None for anything else."""
    if not isinstance(values, list):
        return None
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        try:
            f = float(v)
        except OverflowError:   # an integer past float range
            return None
        if not math.isfinite(f):   # json reads NaN, Infinity and 1e999
            return None
        out.append(f)
    return out


def mse(pred: Sequence[float], truth: Sequence[float]) -> float:
    """Mean squared error in member order (deterministic); inf where the squares overflow."""
    total = 0.0
    for p, t in zip(pred, truth):
        d = p - t
        total += d * d if abs(d) < 1e150 else math.inf
    return total / len(truth)


def score(completion: str, example: Example) -> Scored:
    truth = example.truth
    pred = rollout_of(completion)
    if pred is None or not truth or len(pred) != len(truth):
        return NONE
    error = mse(pred, truth)
    key = json.dumps(pred)
    return Scored(reward=max(0.0 - error, BAD_REWARD), correct=error < CORRECT_MSE, key=key, answer=key)


def combine(keys: Sequence[str | None]) -> str | None:
    """The ensemble's rollout: the element-wise mean of the members' rollouts (keys) that are there, summed
    in member order; None when none is, or when they differ in length (score gives one length per example)."""
    rollouts = [r for r in (rollout_of(k) for k in keys if k is not None) if r is not None]
    if not rollouts or len({len(r) for r in rollouts}) != 1:
        return None
    n = len(rollouts)
    # Each term divided first: a sum of n values of at most max/n cannot overflow.
    mean = [sum(r[j] / n for r in rollouts) for j in range(len(rollouts[0]))]
    return json.dumps(mean) if all(math.isfinite(v) for v in mean) else None


def key_correct(key, example: Example) -> bool:
    """Whether a key's rollout (a member's or combine's) is within CORRECT_MSE of the true future."""
    pred = rollout_of(key)
    truth = example.truth
    return pred is not None and bool(truth) and len(pred) == len(truth) and mse(pred, truth) < CORRECT_MSE


def _values(row: dict, i: int, field: str, n: int) -> list[float]:
    v = row.get(field)
    if not isinstance(v, list) or len(v) != n:
        raise bad_field(i, field, f"must be a list of {n} numbers (task.template)", v)
    out = finite_floats(v)
    if out is None:
        raise bad_field(i, field, "must hold finite numbers only", v)
    return out


class ToySignal:
    """The Task (randopt_hpc.tasks.base.Task) of the 1-D toy; `template` carries its settings."""
    name = "toy_signal"
    takes_template = True
    synthetic_limit = None
    data_format = "a JSON list or JSON lines of rows with context and future (lists of numbers)"
    stop_strings: tuple = ()

    def __init__(self, template: str | None = None):
        s = parse_settings(template)
        self.family, self.ctx, self.fut = s["family"], s["ctx"], s["fut"]

    check_template = staticmethod(check_template)

    def synthetic_records(self, n: int, seed: int) -> list[dict]:
        """n windows, a pure function of (n, seed, settings), each a prefix of the longer stream."""
        rows = signals.draw(self.family, n, seed)
        ctx, fut = signals.evaluate(rows, self.ctx, self.fut)
        return [{"id": f"toy-{seed}-{i}", "family": fam, "context": [float(v) for v in c],
                 "future": [float(v) for v in f]} for i, ((fam, _), c, f) in enumerate(zip(rows, ctx, fut))]

    def examples_from_records(self, records: Sequence[dict]) -> list[Example]:
        examples = []
        for i, row in enumerate(records):
            context, future = _values(row, i, "context", self.ctx), _values(row, i, "future", self.fut)
            prompt = json.dumps(context)
            examples.append(Example(id=record_id(row, i), prompt=prompt, messages=(("user", prompt),),
                                    target=0.0, truth=future))
        return examples

    score = staticmethod(score)
    combine = staticmethod(combine)
    key_correct = staticmethod(key_correct)
