"""run() in-process on the fake backend: every number in results.h5 checked against values computed here
from first principles (the fake's answers are a pure function of seed and example id), resume after a
torn shard line, preemption at a boundary, ties, the control group, save_text, and 3 thread ranks."""
from __future__ import annotations

from collections import Counter
from fractions import Fraction

import h5py
import numpy as np
import pytest

from randopt_hpc import population as pop
from randopt_hpc import select
from randopt_hpc.comm import Preempted, SerialComm, StopFlag
from randopt_hpc.config import load_config
from randopt_hpc.data import load_examples
from randopt_hpc.environment import Environment, Fault
from randopt_hpc.run import run
from randopt_hpc.runfolder import RunFolder, read_shard
from tests.conftest import assert_same_results
from tests.fakes import REWARD, FakeBackend, fake_config, kind_of_answer, quiet_log, run_threads

ENV = Environment.from_os({})


def start(cfg_path, *overrides, comm=None, backend=None, stop=None, on_candidate=None):
    cfg = load_config(str(cfg_path), list(overrides))
    train, test = load_examples(cfg)
    comm = comm or SerialComm()
    backend = backend or FakeBackend()
    run(cfg, comm, ENV, quiet_log(comm.rank), train, test, stop or StopFlag(), backend=backend,
        on_candidate=on_candidate)
    return cfg, train, test, backend


def expected_rewards(seed, examples) -> list[float]:
    return [REWARD[kind_of_answer(seed, ex.id)] for ex in examples]


def mean(xs) -> float:
    return sum(xs) / len(xs)


def independent_vote(keys_by_member: list[list[str]]) -> list[str]:
    """Majority per item over non-empty keys, ties to the key met first (members in ranking order)."""
    out = []
    for item in zip(*keys_by_member):
        counts = Counter(k for k in item if k)
        if not counts:
            out.append("")
            continue
        top = max(counts.values())
        out.append(next(k for k in item if k and counts[k] == top))
    return out


def strs(ds) -> list:
    return [[x.decode() if isinstance(x, bytes) else x for x in row] for row in ds[()]]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serial")
    cfg, train, test, _ = start(fake_config(tmp))
    return cfg, train, test, tmp / "out" / "results.h5"


def test_results_hold_what_the_answers_imply(serial):
    cfg, train, test, path = serial
    n = cfg.population.size
    cands = pop.population(cfg.population.seed, n, cfg.population.sigmas, cfg.population.sigma_assignment)
    # Scores are exact: the decimal rewards summed as fractions, so float summation order cannot break a tie.
    exact = [sum(Fraction(repr(r)) for r in expected_rewards(c.seed, train)) / len(train) for c in cands]
    scores = [float(x) for x in exact]
    accuracy = [mean([kind_of_answer(c.seed, ex.id) == "right" for ex in train]) for c in cands]
    want_order = sorted(range(n), key=lambda i: (-exact[i], i))
    control = select.control_order(n, cfg.population.seed)[:5]
    assert control != [0, 1, 2, 3, 4]
    # Scores and accuracies rank this population differently: a ranking by accuracy would be caught.
    assert want_order != sorted(range(n), key=lambda i: (-accuracy[i], i))
    with h5py.File(path) as f:
        assert f["population/seed"][()].tolist() == [c.seed for c in cands]
        assert f["population/sigma"][()].tolist() == [c.sigma for c in cands]
        assert f["population/train_score"][()].tolist() == scores
        assert f["population/train_accuracy"][()].tolist() == accuracy
        assert np.array_equal(f["population/train_reward"][()],
                              np.array([expected_rewards(c.seed, train) for c in cands], dtype=np.float32))
        assert f["selection/ranking"][()].tolist() == want_order
        assert f["selection/top_k"][()].tolist() == [1, 3, 5]
        assert f["base/test_reward"][()].tolist() == pytest.approx(expected_rewards(None, test))
        assert f["base/train_correct"][()].tolist() == [kind_of_answer(None, ex.id) == "right" for ex in train]
        matched = []
        for m in want_order[:5]:   # the next unused candidate of the member's σ, in the control's order
            matched.append(next(i for i in select.control_order(n, cfg.population.seed)
                                if cands[i].sigma == cands[m].sigma and i not in matched))
        for group, members in (("selected", want_order[:5]), ("control", control), ("control_sigma", matched)):
            g = f[f"ensemble/{group}"]
            assert g["members"][()].tolist() == members
            assert g["test_correct"][()].tolist() == [[kind_of_answer(cands[m].seed, ex.id) == "right"
                                                       for ex in test] for m in members]
            keys = strs(g["test_key"])
            assert g["test_key"].shape == (5, len(test)) and g["voted_key"].shape == (3, len(test))
            for row, k in enumerate([1, 3, 5]):
                voted = independent_vote(keys[:k])
                assert strs(g["voted_key"])[row] == voted
                target = {ex.id: f"{ex.target:.5f}" for ex in test}
                right = [v == target[ex.id] for v, ex in zip(voted, test)]
                assert g["voted_correct"][row].tolist() == right
                assert g["accuracy"][row] == pytest.approx(mean(right))
        assert f["data/train_ids"].asstr()[()].tolist() == [ex.id for ex in train]
        assert f["data/test_target"][()].tolist() == [ex.target for ex in test]
        assert f["timing/busy"].shape == (1,) and "population/train_text" not in f


def test_ranking_ties_go_to_the_lower_index(tmp_path):
    # Two train examples: many candidates share a score, so the index decides between them.
    start(fake_config(tmp_path, task={"train_size": 2}))
    with h5py.File(tmp_path / "out" / "results.h5") as f:
        scores, order = f["population/train_score"][()], f["selection/ranking"][()].tolist()
    assert len(set(scores.tolist())) < len(scores) - 4
    assert order == sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def test_without_control_and_with_text(tmp_path):
    cfg, train, test, _ = start(fake_config(tmp_path, selection={"control": False}, output={"save_text": True}))
    cands = pop.population(cfg.population.seed, cfg.population.size, cfg.population.sigmas, "random")
    with h5py.File(tmp_path / "out" / "results.h5") as f:
        assert "ensemble/control" not in f and "ensemble/selected" in f
        texts = f["population/train_text"].asstr()[()]
        first = int(f["ensemble/selected/members"][0])
        member_texts = f["ensemble/selected/test_text"].asstr()[0].tolist()
    assert texts.shape == (cfg.population.size, len(train))
    b = FakeBackend()
    for i in (0, 7, first):
        b.perturb(cands[i].seed, cands[i].sigma)
        assert texts[i].tolist() == b.generate(train)
        if i == first:
            assert member_texts == b.generate(test)
        b.restore()


def test_resume_after_a_torn_shard_line_equals_an_uninterrupted_run(serial, tmp_path):
    cfg_path = fake_config(tmp_path)
    with pytest.raises(RuntimeError, match="injected failure at candidate 9"):
        start(cfg_path, on_candidate=Fault(0, 9).hook)
    folder = RunFolder(str(tmp_path / "out"))
    shard = folder.shard_path(0)
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:                         # a rank killed in the middle of its last write
        f.write(data[:-40])
    backend = FakeBackend()
    start(cfg_path, backend=backend)
    assert_same_results(serial[3], tmp_path / "out" / "results.h5")
    # The rerun evaluated the torn candidate (8) and those after it, then the base on the test split and the
    # members; the base answered the train split first in the failed run, so not again. The shard, repaired
    # before the first append, reads whole.
    members = len(serial_members(serial))
    assert backend.generated == (16 - 8) * 8 + (1 + members) * 12
    kinds = Counter(r.kind for r in folder.records())
    assert kinds == {"candidate": 16, "base": 2, "member": members}
    assert sorted(r.index for r in folder.records() if r.kind == "candidate") == list(range(16))
    assert open(shard, "rb").read().count(b"\n") == sum(kinds.values())


def serial_members(serial) -> list[int]:
    """Every member of every group, each once, in the order they answer (randopt_hpc.run.answer_jobs)."""
    return all_members(serial[3])


def all_members(path) -> list[int]:
    with h5py.File(path) as f:
        return list(dict.fromkeys(m for g in ("selected", "control", "control_sigma")
                                  for m in f[f"ensemble/{g}/members"][()].tolist()))


def stop_after_candidate_3(cfg_path) -> None:
    """Start the run and stop it as SIGTERM would, at the boundary after candidate 3."""
    stop = StopFlag()

    def preempt_at_3(rank, index):
        if index == 3:
            stop.request("SIGTERM")

    with pytest.raises(Preempted, match="SIGTERM received; stopped before candidate 4"):
        start(cfg_path, stop=stop, on_candidate=preempt_at_3)


def test_a_stop_request_ends_at_a_candidate_boundary_and_a_rerun_resumes(serial, tmp_path):
    cfg_path = fake_config(tmp_path)
    stop_after_candidate_3(cfg_path)
    folder = RunFolder(str(tmp_path / "out"))
    # The base model answered the train split first, then candidates 0-3 (its test answers come after the ranking).
    assert [(r.kind, r.key) for r in folder.records()] == [("base", "train")] + \
        [("candidate", i) for i in range(4)] and not (tmp_path / "out" / "results.h5").exists()
    backend = FakeBackend()
    start(cfg_path, backend=backend)
    assert_same_results(serial[3], tmp_path / "out" / "results.h5")
    assert sorted(r.index for r in folder.records() if r.kind == "candidate") == list(range(16))


def test_three_thread_ranks_equal_one_and_share_the_answering_round_robin(serial, tmp_path):
    cfg_path = fake_config(tmp_path)
    run_threads(3, lambda comm: start(cfg_path, comm=comm))
    path = tmp_path / "out" / "results.h5"
    assert_same_results(serial[3], path)
    with h5py.File(path) as f:
        assert f["population/rank"][()].tolist() == [i % 3 for i in range(16)]
        assert f.attrs["world_size"] == 3 and f["timing/rank"][()].tolist() == [0, 1, 2]
    base = [("base", "train")]                          # before the population, on rank 0
    jobs = [("base", "test")] + [("member", m) for m in all_members(path)]   # after the ranking, round-robin
    folder = RunFolder(str(tmp_path / "out"))
    for rank in range(3):
        held = [(r.kind, r.key) for r in read_shard(folder.shard_path(rank)) if r.kind != "candidate"]
        assert held == base[rank::3] + jobs[rank::3]
