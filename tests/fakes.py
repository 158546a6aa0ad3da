"""Fakes for the expensive seams, so that run() is tested in-process in milliseconds.

FakeBackend answers Countdown-QA prompts without a model: its answer to an example is a pure function
of (candidate seed, example id), so a test can compute every expected score, ranking and vote from
first principles. ThreadComm is an MPI world of threads in one process, with MPIComm's methods.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import yaml

from randopt_hpc.backends.base import BaseBackend
from randopt_hpc.sampling import Completion

# What an answer earns under countdown_qa's reward (0.1 * parses + correct).
REWARD = {"right": 1.1, "wrong": 0.1, "junk": 0.0}


def unit(*parts) -> float:
    """A uniform number in [0, 1) from the parts, the same on every run and machine."""
    h = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def kind_of_answer(seed: int | None, example_id: str) -> str:
    """'right', 'wrong' (a valid expression of the given numbers with another value) or 'junk'. The base
    model (seed None) is right 30% of the time; each candidate has its own skill in [0.1, 0.9]."""
    skill = 0.3 if seed is None else 0.1 + 0.8 * unit("skill", seed)
    u = unit("answer", seed, example_id)
    return "right" if u < skill else ("wrong" if u < skill + (1 - skill) / 2 else "junk")


def answer_text(kind: str, numbers, task: str = "") -> str:
    """The completion for a sum-target problem (target = a + b + c): numbers are >= 1, so a + b - c is
    never the target. For the countdown task (in a run of several tasks) the answer is in its tags."""
    a, b, c = numbers
    answer = {"right": f" {a}+{b}+{c}", "wrong": f" {a}+{b}-{c}", "junk": " ?"}[kind]
    return f"ok</think>\n<answer>{answer}</answer>" if task == "countdown" else answer + "\nQ:"


class FakeBackend(BaseBackend):
    def __init__(self):
        super().__init__()
        self.names = ["fake.weight"]
        self.seed: int | None = None
        self.generated = 0          # examples answered, to see what a resume did not redo

    def _perturb(self, seed: int, sigma: float) -> None:
        self.seed = seed

    def _restore(self) -> None:
        self.seed = None

    def n_perturbed_elements(self) -> int:
        return 1

    def complete(self, examples, sampling=None) -> list[Completion]:
        """A sample draws its answer as a candidate of seed row_seed would: a pure function of (item, sample)."""
        self.generated += len(examples)
        out = []
        for ex in examples:
            seed = self.seed if sampling is None else sampling.row_seed(ex.id)
            text = answer_text(kind_of_answer(seed, ex.id), ex.numbers, ex.task)
            out.append(Completion(text=text, prompt_tokens=len(ex.prompt.split()), gen_tokens=len(text.split()),
                                  finish="length" if text.endswith("?") else "eos"))
        return out


def sum_problems(path: Path, n: int, seed: int = 0) -> Path:
    """n distinct Countdown-QA rows whose target is the sum of their three numbers."""
    rows, seen, i = [], set(), 0
    while len(rows) < n:
        nums = [1 + int(19 * unit("n", seed, i, j)) for j in range(3)]
        i += 1
        if tuple(sorted(nums)) in seen:
            continue
        seen.add(tuple(sorted(nums)))
        rows.append({"id": f"p{len(rows)}", "numbers": nums, "target": sum(nums)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fake_config(tmp: Path, out: str = "out", **sections) -> Path:
    """A config file for runs on the fake backend (the model folder only has to exist)."""
    model = tmp / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    data = sum_problems(tmp / "problems.jsonl", 40)
    cfg = {"model": {"path": str(model)},
           "task": {"name": "countdown_qa", "data": str(data), "train_size": 8, "test_size": 12},
           "population": {"size": 16, "seed": 3, "sigmas": [1e-2, 2e-2]},
           "selection": {"top_k": [1, 3, 5], "control": True},
           "generation": {"max_new_tokens": 8, "batch_size": 4},
           "output": {"dir": str(tmp / out)},
           "runtime": {"progress_every_s": 60.0}}
    for section, values in sections.items():
        cfg[section].update(values)
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class ThreadWorld:
    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots: list = [None] * size


class ThreadComm:
    """Rank `rank` of a world of threads; collectives exchange Python objects through shared slots."""
    mpi_version = "threads (tests)"

    def __init__(self, world: ThreadWorld, rank: int):
        self.world, self.rank, self.size = world, rank, world.size

    def allgather(self, obj) -> list:
        self.world.slots[self.rank] = obj
        self.world.barrier.wait()
        out = list(self.world.slots)
        self.world.barrier.wait()     # nobody overwrites a slot before everyone has read them all
        return out

    def gather(self, obj, root: int = 0):
        out = self.allgather(obj)
        return out if self.rank == root else None

    def bcast(self, obj, root: int = 0):
        return self.allgather(obj)[root]

    def barrier(self) -> None:
        self.world.barrier.wait()

    def wait_all(self, timeout_s: float) -> bool:
        try:
            self.world.barrier.wait(timeout_s)
            return True
        except threading.BrokenBarrierError:
            return False

    def abort(self, code: int = 1) -> None:
        self.world.barrier.abort()    # the other ranks leave their collective with an error, not a hang

    def counter(self) -> ThreadCounter:
        """Collective, as MPIComm.counter: one counter shared by the thread ranks."""
        return self.bcast(ThreadCounter(self) if self.rank == 0 else None)


class ThreadCounter:
    """randopt_hpc.comm.WindowCounter for thread ranks: a fetch-and-add under a lock."""

    def __init__(self, comm: ThreadComm):
        self.comm, self.lock, self.next = comm, threading.Lock(), 0

    def take(self) -> int:
        with self.lock:
            self.next += 1
            return self.next - 1

    def close(self) -> None:
        self.comm.barrier()


def run_threads(size: int, target) -> list:
    """target(comm) on `size` thread ranks; their return values, or the first exception re-raised."""
    world = ThreadWorld(size)
    results, errors = [None] * size, [None] * size

    def body(rank: int) -> None:
        comm = ThreadComm(world, rank)
        try:
            results[rank] = target(comm)
        except BaseException as e:   # one failing rank ends the world, as MPI_Abort would
            errors[rank] = e
            comm.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)), None)
    if first is not None:
        raise first
    return results


def quiet_log(rank: int = 0) -> logging.Logger:
    log = logging.getLogger(f"randopt_hpc.tests.rank{rank}")
    log.setLevel(logging.WARNING)
    return log
