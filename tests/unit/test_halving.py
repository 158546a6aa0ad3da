"""Successive halving (selection.schedule: halving): the schedule's arithmetic, its replay on stored rewards, and
live runs on the fake backend — equal on 1, 2 and 3 ranks, after a stop mid-rung, and to the replay of a full
run; each (candidate, example) generated once; a run folder switching schedules computes only what it lacks."""
from __future__ import annotations

import random
from fractions import Fraction

import h5py
import numpy as np
import pytest

from randopt_hpc import halving, vote
from randopt_hpc.comm import Preempted, StopFlag
from randopt_hpc.config import ConfigError, load_config
from randopt_hpc.halving import HalvingConfig, Rung
from randopt_hpc.runfolder import RunFolder
from tests.conftest import assert_same_results
from tests.fakes import FakeBackend, fake_config, run_threads
from tests.unit.test_run import start
from tools import runfile, schedules

# The fake config: N = 16 on 8 train examples, K up to 5. first 2, eta 2, keep 1: 16 on 2 -> 8 on 4 -> 5 on 8.
HALVING = ("selection.schedule=halving", "selection.halving.first=2", "selection.halving.eta=2",
           "selection.halving.keep=1")
PLAN = [Rung(2, 16), Rung(4, 8), Rung(8, 5)]


# ------------------------------------------------------------------------------------------ the arithmetic

@pytest.mark.parametrize("n, n_train, k_max, hc, want", [
    (128, 200, 20, HalvingConfig(25, 3, 1), [(25, 128), (75, 43), (200, 20)]),
    (128, 200, 20, HalvingConfig(25, 3, 2), [(25, 128), (75, 43), (200, 40)]),     # the floor: keep × max K
    (128, 200, 10, HalvingConfig(25, 2, 1), [(25, 128), (50, 64), (100, 32), (200, 16)]),
    (16, 8, 5, HalvingConfig(2, 2, 1), [(2, 16), (4, 8), (8, 5)]),
    (10, 200, 5, HalvingConfig(25, 3, 3), [(25, 10), (75, 10), (200, 10)]),        # floor above N: nobody out
    (64, 20, 5, HalvingConfig(25, 3, 1), [(20, 64)]),                              # first >= the split: one rung
])
def test_rungs(n, n_train, k_max, hc, want):
    assert [(r.examples, r.candidates) for r in halving.rungs("halving", n, n_train, k_max, hc)] == want
    assert halving.rungs("full", n, n_train, k_max, hc) == [Rung(n_train, n)]


def test_a_rung_of_several_tasks_takes_each_tasks_share():
    cols = [list(range(0, 10)), list(range(10, 15))]
    assert halving.positions(cols, 6, 15) == [0, 1, 2, 3, 10, 11]
    assert halving.positions(cols, 1, 15) == [0, 10]            # at least one of each task
    assert halving.positions(cols, 15, 15) == list(range(15))


def brute_force(rewards: np.ndarray, plan: list[Rung]) -> list[int]:
    """Successive halving written out directly on one task: rank by total reward on the first m examples, ties
    by index; the final order is the last rung's ranking, then each earlier rung's dropped, latest first."""
    alive, dropped = list(range(rewards.shape[0])), []
    for r, rung in enumerate(plan):
        ranked = sorted(alive, key=lambda i: (-sum(Fraction(str(x)) for x in rewards[i, :rung.examples]), i))
        if r + 1 == len(plan):
            return ranked + [i for out in reversed(dropped) for i in out]
        keep = plan[r + 1].candidates
        dropped.append(ranked[keep:])
        alive = ranked[:keep]
    raise AssertionError("a plan ends with a rung on the whole split")


def test_walk_and_final_order_equal_a_direct_implementation():
    rng = random.Random(5)
    for _ in range(30):
        n, n_train = rng.randint(5, 60), rng.randint(3, 40)
        rewards = np.array([[rng.choice([0.0, 0.1, 1.0]) for _ in range(n_train)] for _ in range(n)])
        hc = HalvingConfig(rng.randint(1, n_train), rng.randint(2, 4), rng.choice([1.0, 1.5, 2.0]))
        plan = halving.rungs("halving", n, n_train, rng.randint(1, n), hc)
        asked = halving.asked(plan, [list(range(n_train))], n_train)
        history = halving.walk(plan, asked,
                               lambda i, pos, rewards=rewards: sum(Fraction(str(rewards[i, p])) for p in pos))
        order = halving.final_order(history)
        assert sorted(order) == list(range(n)) and order == brute_force(rewards, plan)
        assert [len(h) for h in history] == [r.candidates for r in plan]
        last = halving.last_rungs(plan, history)
        assert sum(last[i] == len(plan) - 1 for i in range(n)) == plan[-1].candidates
        # What the schedule asks for, counted rung by rung, is what its candidates answered in the end.
        assert halving.planned_answers(plan, asked) == sum(len(asked[r]) for r in last)


def test_bad_halving_settings_name_the_field(tmp_path):
    cfg = fake_config(tmp_path)
    for override, field in (("selection.schedule=halve", "selection.schedule: must be one of full, halving"),
                            ("selection.halving.eta=1", "selection.halving.eta"),
                            ("selection.halving.first=0", "selection.halving.first"),
                            ("selection.halving.keep=0.5", "selection.halving.keep"),
                            ("selection.halving.rate=2", "selection.halving.rate: unknown key")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config(str(cfg), [override])


def test_an_ensembles_train_accuracy_counts_the_items_all_its_members_answered():
    A = type("A", (), {})

    def answers(keys, ok):
        a = A()
        a.keys, a.correct = keys, ok
        return a
    test = {0: answers(["1"], [True]), 1: answers(["1"], [True])}
    train = {0: answers(["1", "2", None], [True, False, False]), 1: answers(["1", None, None], [True, False, False])}
    seen = {0: (True, True, True), 1: (True, False, False)}
    v = vote.vote_ensemble([0, 1], [1, 2], test, train, train_seen=seen)
    assert v.train_accuracy == [pytest.approx(1 / 3), 1.0]     # K=2: only item 0 is answered by both


# ------------------------------------------------------------------------------------------ live runs

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The fake config under the full schedule and under halving, serial."""
    tmp = tmp_path_factory.mktemp("halving")
    out = {}
    for name, overrides in (("full", ()), ("halving", HALVING)):
        backend = start(fake_config(tmp, out=name), *overrides)[3]
        out[name] = (tmp / name / "results.h5", backend.generated)
    return out


def test_a_halving_run_answers_what_its_schedule_asks_and_ranks_as_its_replay_on_a_full_run(runs):
    path, _ = runs["halving"]
    full, _ = runs["full"]
    with runfile.open_results(str(full)) as f:
        replay = schedules.replay(f, str(full), "halving", HalvingConfig(2, 2, 1), None)
    with h5py.File(path) as h, h5py.File(full) as g:
        seen = h["population/train_examples"][()]
        assert sorted(seen.tolist()) == sorted([2] * 8 + [4] * 3 + [8] * 5)
        ranking = h["selection/ranking"][()].tolist()
        # The replay of the same schedule on the full run's rewards selects the same members, in the same order.
        assert ranking[:5] == replay["top"][-1]["members"]
        assert replay["examples"] == int(seen.sum())
        # What a candidate answered is exactly the full run's answer there; the rest is marked, not scored 0.
        rewards, ref = h["population/train_reward"][()], g["population/train_reward"][()]
        answered = ~np.isnan(rewards)
        assert (answered.sum(axis=1) == seen).all()
        assert np.array_equal(rewards[answered], ref[answered])
        assert (h["population/train_gen_tokens"][()][~answered] == -1).all()
        scores = h["population/train_score"][()]
        for i in range(16):
            assert scores[i] == pytest.approx(ref[i, :seen[i]].astype(np.float64).mean(), abs=1e-6)


def _members(h) -> list[int]:
    return [m for g in ("selected", "control", "control_sigma") for m in h[f"ensemble/{g}/members"][()].tolist()]


def test_halving_generates_each_train_answer_once(runs):
    path, generated = runs["halving"]
    with h5py.File(path) as h:
        train = int(h["population/train_examples"][()].sum())
        members = len(set(_members(h)))
        test = h["base/test_correct"].shape[0]
    assert train == 2 * 16 + 2 * 8 + 4 * 5      # rung by rung: only the examples new to each survivor
    assert generated == train + members * test + 8 + test     # + the base model on both splits


def test_halving_results_are_the_same_on_1_2_and_3_ranks(runs, tmp_path):
    for size in (2, 3):
        cfg = fake_config(tmp_path, out=f"np{size}")
        run_threads(size, lambda comm, cfg=cfg: start(cfg, *HALVING, comm=comm))
        assert_same_results(runs["halving"][0], tmp_path / f"np{size}" / "results.h5")


def test_a_halving_run_stopped_mid_rung_resumes_to_the_same_results_computing_nothing_twice(runs, tmp_path):
    cfg = fake_config(tmp_path)
    stop, seen = StopFlag(), []

    def stop_in_rung_two(rank, index):
        seen.append(index)
        if len(seen) == 16 + 3:     # the third candidate of the second rung
            stop.request("SIGTERM")
    first = FakeBackend()
    with pytest.raises(Preempted):
        start(cfg, *HALVING, stop=stop, on_candidate=stop_in_rung_two, backend=first)
    from randopt_hpc.status import summarize

    stopped = summarize(str(tmp_path / "out"))   # run.yaml says halving: answers are counted, not records
    assert stopped["train_answers_planned"] == 2 * 16 + 2 * 8 + 4 * 5 and stopped["done"] == 16
    # The stop is asked for at the second rung's third candidate and taken after it: 3 of its 8 answered.
    assert stopped["train_answers"] == 2 * 16 + 3 * 2 and stopped["left"] == 2 * 8 + 4 * 5 - 3 * 2
    second = start(cfg, *HALVING)[3]
    assert_same_results(runs["halving"][0], tmp_path / "out" / "results.h5")
    assert summarize(str(tmp_path / "out"))["train_answers"] == 2 * 16 + 2 * 8 + 4 * 5
    assert first.generated + second.generated == runs["halving"][1]
    parts = [(r.index, r.answers.ids) for r in RunFolder(str(tmp_path / "out")).records() if r.kind == "candidate"]
    asked = [(i, x) for i, ids in parts for x in ids]
    assert len(asked) == len(set(asked))      # no (candidate, example) answered twice across the shards


def test_a_full_run_switched_to_halving_generates_nothing_for_the_population_and_back_only_the_rest(runs, tmp_path):
    cfg = fake_config(tmp_path)
    start(cfg)
    to_halving = start(cfg, *HALVING)[3]
    assert_same_results(runs["halving"][0], tmp_path / "out" / "results.h5")
    with h5py.File(runs["halving"][0]) as h, h5py.File(runs["full"][0]) as g:
        new_members = set(_members(h)) - set(_members(g))
    assert to_halving.generated == len(new_members) * 12      # the population's answers were all there

    cfg2 = fake_config(tmp_path, out="back")
    start(cfg2, *HALVING)
    back = start(cfg2)[3]
    assert_same_results(runs["full"][0], tmp_path / "back" / "results.h5")
    with h5py.File(runs["halving"][0]) as h, h5py.File(runs["full"][0]) as g:
        missing = 16 * 8 - int(h["population/train_examples"][()].sum())
        new_members = set(_members(g)) - set(_members(h))
    assert back.generated == missing + len(new_members) * 12


def test_analyze_halving_says_a_live_run_selected_what_the_replay_selects(runs):
    from click.testing import CliRunner

    from tools.analyze import cli

    args = ["halving", str(runs["full"][0]), "--first", "2", "--eta", "2", "--keep", "1"]
    same = CliRunner().invoke(cli, [*args, "--live", str(runs["halving"][0])])
    assert same.exit_code == 0, same.output
    assert same.output.count("the same") == 3 and "DIFFERENT" not in same.output     # K = 1, 3, 5
    other = CliRunner().invoke(cli, [*args, "--eta", "3", "--live", str(runs["halving"][0])])
    assert other.exit_code == 0 and "rungs: 16 on 2 -> 6 on 6 -> 5 on 8" in other.output
