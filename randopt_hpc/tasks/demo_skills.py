"""The demo model's own skills as tasks, for one population scored on several tasks (configs/demo-multitask.yaml).

The shipped demo model (models/demo) was pretrained on a mixture of skills in a short Q/A form; its card lists
them. Three of them are tasks here, asked in the wordings the model was trained on, graded by exact match:
- demo_mul: "Q: 7*12= A:" or "Q: what is 7 times 12? A:" -> "84" (0–40 × 0–25)
- demo_eval: "Q: 20+18*9= A:" -> "182" (three numbers 1–20, two of + − ×); the model was also trained to
  answer "20+18*9=182", so the text after the last "=" is the answer
- demo_verify: "Q: 14-2-9=6? A:" -> "yes" or "no"
Unlike the demo's Countdown problems, these problems are not held out from pretraining (the skills' spaces
are small and were sampled at random): they measure what a perturbation keeps or loses of a skill the
model has, which is what the spectral discordance across tasks compares.

`sample` is the generator the demo model was trained on (tools/train_demo_model.py): the model's bits
depend on the order it draws from its random stream, so it is kept exactly as trained.
"""
from __future__ import annotations

import random

from randopt_hpc.tasks import countdown_qa
from randopt_hpc.tasks.base import Example, Scored, bad_field, record_id


def fresh_problem(rng: random.Random, exclude: set) -> tuple[list[int], int, str]:
    while True:
        numbers, target, expr = countdown_qa.random_problem(rng)
        if countdown_qa.problem_key(numbers, target) not in exclude:
            return numbers, target, expr


def sample(rng: random.Random, skill: str, exclude: set) -> tuple[str, str]:
    """(prompt, answer) for one example of a skill; the prompt ends with 'A:'."""
    alt = rng.random() < 0.5    # a second wording for every skill
    if skill in ("add", "sub", "mul"):
        hi = 999 if skill != "mul" else 40
        a, b = rng.randint(0, hi), rng.randint(0, hi if skill != "mul" else 25)
        if skill == "sub" and b > a:
            a, b = b, a
        op, word = {"add": ("+", "plus"), "sub": ("-", "minus"), "mul": ("*", "times")}[skill]
        value = {"add": a + b, "sub": a - b, "mul": a * b}[skill]
        return (f"Q: what is {a} {word} {b}? A:", f"{value}") if alt else (f"Q: {a}{op}{b}= A:", f"{value}")
    # Every skill built on a three-number expression skips held-out problems, so no demo problem's
    # solution leaks in through evaluation or checking either.
    numbers, target, expr = fresh_problem(rng, exclude)
    if skill == "eval":
        return (f"Q: {expr}= A:", f"{target}") if not alt else (f"Q: {expr}= A:", f"{expr}={target}")
    if skill == "verify":
        shown = target if rng.random() < 0.5 else max(0, target + rng.choice((-2, -1, 1, 2, 10)))
        return f"Q: {expr}={shown}? A:", "yes" if shown == target else "no"
    if alt:
        return f"Q: make {target} from {' '.join(map(str, numbers))} A:", expr
    return countdown_qa.prompt(numbers, str(target)), expr



STOP_STRINGS = ("\n",)   # the answer is the first line (_answer): nothing after its newline is read


def _answer(completion, skill: str) -> str:
    text = completion.split("\n", 1)[0].strip() if isinstance(completion, str) else ""
    return text.rsplit("=", 1)[-1].strip() if skill == "eval" else text


class DemoSkill:
    """Exact-match Q/A on one of the demo model's skills; rows {prompt, answer} (and an optional id)."""
    skill = ""
    takes_template = False
    synthetic_limit = None
    data_format = "a JSON list or JSON lines of rows with prompt (ending in 'A:') and answer"
    stop_strings = STOP_STRINGS

    @property
    def name(self) -> str:
        return f"demo_{self.skill}"

    def synthetic_records(self, n: int, seed: int) -> list[dict]:
        """n problems of the skill in its first wording, a pure function of (n, seed), each a prefix of the longer."""
        rng, rows = random.Random(f"demo-skill:{self.skill}:{seed}"), []
        while len(rows) < n:
            prompt, answer = sample(rng, self.skill, set())
            if self.skill != "eval" or "=" not in answer:   # eval's second wording answers "expr=value"
                rows.append({"id": f"{self.skill}-{seed}-{len(rows)}", "prompt": prompt, "answer": answer})
        return rows

    def examples_from_records(self, records) -> list[Example]:
        examples = []
        for i, row in enumerate(records):
            for field in ("prompt", "answer"):
                if not isinstance(row, dict) or not isinstance(row.get(field), str) or not row[field].strip() \
                        or not row[field].isprintable():
                    got = row.get(field) if isinstance(row, dict) else row
                    raise bad_field(i, field, "must be a non-empty string of printable characters", got)
            examples.append(Example(id=record_id(row, i), prompt=row["prompt"], messages=(("user", row["prompt"]),),
                                    truth=row["answer"].strip(), stop_strings=STOP_STRINGS))
        return examples

    def score(self, completion: str, example: Example) -> Scored:
        answer = _answer(completion, self.skill)
        correct = answer == example.truth
        return Scored(reward=float(correct), correct=correct, key=answer or None, answer=answer or None)


class DemoMul(DemoSkill):
    skill = "mul"


class DemoEval(DemoSkill):
    skill = "eval"


class DemoVerify(DemoSkill):
    skill = "verify"
