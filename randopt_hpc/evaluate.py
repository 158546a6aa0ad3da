"""Evaluating one model on a list of examples: perturb → generate → score → restore, timed by phase.

The one place a candidate is evaluated: run() and bench/bench_candidate.py both use it.
"""
from __future__ import annotations

import time

from randopt_hpc.population import Candidate
from randopt_hpc.progress import Timer
from randopt_hpc.records import Answers, BaseRecord, CandidateRecord, MemberRecord, SampleRecord
from randopt_hpc.sampling import Sampling
from randopt_hpc.tasks.base import score_all


class Evaluator:
    def __init__(self, backend, task, timer: Timer | None = None, keep_text: bool = False,
                 settings: dict | None = None, *, rank: int = 0, pause=None):
        self.backend, self.task = backend, task
        self.rank = rank               # recorded with each answer set: who answered it
        self.pause = pause             # pause(index) before a candidate: a test seam that makes chosen ones slow
        self.timer = timer or Timer()
        self.keep_text = keep_text     # output.save_text: raw completions of candidates and members
        self.settings = settings       # fingerprint.settings(cfg), recorded with every answer set

    def answers(self, examples, cand: Candidate | None = None, keep_text: bool | None = None,
                sampling: Sampling | None = None) -> Answers:
        """Greedy answers of the base model (cand None) or of a perturbed candidate, scored; or, with
        `sampling`, one sampled answer of the base model per example."""
        t = self.timer
        if cand is not None:
            with t("perturb"):
                self.backend.perturb(cand.seed, cand.sigma)
        with t("generate"):
            completions = self.backend.complete(examples, sampling)
        with t("score"):
            scored = score_all(self.task, [c.text for c in completions], examples)
        if cand is not None:
            with t("restore"):
                self.backend.restore(lazy=True)
        return Answers.from_scored(completions, scored, self.keep_text if keep_text is None else keep_text,
                                   self.settings, [ex.id for ex in examples])

    def loaded(self) -> float:
        """time.perf_counter() once the backend is there: a lazily loaded backend loads now, in the timer's
        load phase, not in the first job's phases or its recorded seconds (a rank's start-up, not its work)."""
        self.backend.perturb   # noqa: B018
        return time.perf_counter()

    def candidate(self, cand: Candidate, train, rank: int) -> CandidateRecord:
        t0 = self.loaded()
        if self.pause:
            self.pause(cand.index)
        answers = self.answers(train, cand)
        self.timer.count("candidates")
        return CandidateRecord(index=cand.index, seed=cand.seed, sigma=cand.sigma, answers=answers, rank=rank,
                               seconds=time.perf_counter() - t0)

    def member(self, cand: Candidate, test) -> MemberRecord:
        t0 = self.loaded()
        answers = self.answers(test, cand)
        return MemberRecord(index=cand.index, answers=answers, rank=self.rank, seconds=time.perf_counter() - t0)

    def model(self, index: int, examples) -> MemberRecord:
        """The backend's current θ (unperturbed) on the test split, as member `index` (ES: θ_index)."""
        t0 = self.loaded()
        answers = self.answers(examples)
        return MemberRecord(index=index, answers=answers, rank=self.rank, seconds=time.perf_counter() - t0)

    def base(self, split: str, examples) -> BaseRecord:
        # One model: its raw completions are always kept.
        t0 = self.loaded()
        answers = self.answers(examples, keep_text=True)
        return BaseRecord(split=split, answers=answers, rank=self.rank, seconds=time.perf_counter() - t0)

    def sample(self, sampling: Sampling, test) -> SampleRecord:
        t0 = self.loaded()
        answers = self.answers(test, sampling=sampling)
        return SampleRecord(index=sampling.index, answers=answers, rank=self.rank, seconds=time.perf_counter() - t0)
