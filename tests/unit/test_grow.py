"""Growing a run folder (randopt_hpc.fingerprint: GROWABLE fields and SETTINGS) on the fake backend: a run
grown to a larger N, shrunk, given more K or run on under other settings writes the results a fresh run
of the final config writes, and computes only what the folder lacks."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from randopt_hpc.config import ConfigError, load_config
from randopt_hpc.results import comparable
from randopt_hpc.runfolder import FINISHED, RESUME, RunFolder
from tests.conftest import assert_same_results
from tests.fakes import FakeBackend, fake_config, run_threads
from tests.unit.test_run import all_members, start, stop_after_candidate_3

SETTINGS = ("population/settings", "base/settings", "base/test_samples_settings", "data/settings",
            "ensemble/selected/settings", "ensemble/control/settings", "ensemble/control_sigma/settings")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Fresh runs of the fake config at N = 8 and N = 16, at N = 16 with K = 1, 2, 3, 5, and with 20 and 6
    test examples (12 in the config)."""
    tmp = tmp_path_factory.mktemp("fresh")
    out = {}
    for name, overrides in (("n8", ["population.size=8"]), ("n16", []), ("k2", ["selection.top_k=[1,2,3,5]"]),
                            ("t20", ["task.test_size=20"]), ("t6", ["task.test_size=6"])):
        start(fake_config(tmp, out=name), *overrides)
        out[name] = tmp / name / "results.h5"
    return out


def members(path) -> set[int]:
    return set(all_members(path))


def test_a_run_grown_from_8_to_16_candidates_equals_a_fresh_one_and_computes_only_the_new(fresh, tmp_path):
    cfg_path = fake_config(tmp_path)
    start(cfg_path, "population.size=8")
    folder = RunFolder(str(tmp_path / "out"))
    assert folder.state(load_config(str(cfg_path))) == RESUME
    backend = FakeBackend()
    start(cfg_path, backend=backend)
    assert_same_results(fresh["n16"], tmp_path / "out" / "results.h5")
    new_members = members(fresh["n16"]) - members(fresh["n8"])
    assert new_members   # else the test would not see members answer again
    # 8 new candidates on 8 train examples, each new member on 12 test examples; the base is not asked again.
    assert backend.generated == 8 * 8 + len(new_members) * 12
    assert folder.config().population.size == 16   # run.yaml now describes the grown run


def test_growing_with_another_rank_count_equals_a_fresh_run(fresh, tmp_path):
    cfg_path = fake_config(tmp_path)
    start(cfg_path, "population.size=8")
    run_threads(3, lambda comm: start(cfg_path, comm=comm))
    assert_same_results(fresh["n16"], tmp_path / "out" / "results.h5")


def rerun_finished(tmp_path, override: str, like) -> FakeBackend:
    """A finished N = 16 run rerun with `override`: its results equal `like`'s; the backend says what it did."""
    cfg_path = fake_config(tmp_path)
    start(cfg_path)
    backend = FakeBackend()
    start(cfg_path, override, backend=backend)
    assert_same_results(like, tmp_path / "out" / "results.h5")
    return backend


def test_a_run_shrunk_to_8_candidates_equals_a_fresh_one_and_evaluates_no_candidate(fresh, tmp_path):
    backend = rerun_finished(tmp_path, "population.size=8", fresh["n8"])
    assert backend.generated == len(members(fresh["n8"]) - members(fresh["n16"])) * 12


def test_adding_a_k_to_a_finished_run_answers_nothing_again(fresh, tmp_path):
    backend = rerun_finished(tmp_path, "selection.top_k=[1,2,3,5]", fresh["k2"])
    assert backend.generated == 0   # K = 2 votes a prefix of the top 5, whose members answered already


def test_a_rerun_with_nothing_to_answer_loads_no_model(fresh, tmp_path):
    from randopt_hpc.comm import SerialComm, StopFlag
    from randopt_hpc.data import load_examples
    from randopt_hpc.run import run
    from tests.fakes import quiet_log
    from tests.unit.test_run import ENV

    cfg_path = fake_config(tmp_path)
    start(cfg_path)
    cfg = load_config(str(cfg_path), ["selection.top_k=[1,2,3,5]"])
    # The configured backend (hf) on this folder's fake model (an empty config.json) would fail to load.
    run(cfg, SerialComm(), ENV, quiet_log(0), *load_examples(cfg), StopFlag())
    assert_same_results(fresh["k2"], tmp_path / "out" / "results.h5")


def test_new_settings_continue_a_stopped_run_and_the_results_say_which_part_came_from_which(fresh, tmp_path):
    cfg_path = fake_config(tmp_path)
    stop_after_candidate_3(cfg_path)
    start(cfg_path, "generation.batch_size=2", "output.save_text=true", "runtime.threads=2")
    out = tmp_path / "out" / "results.h5"
    # The fake's answers ignore the batch: everything but the settings and the kept texts is as in a fresh run.
    a, b = comparable(str(fresh["n16"])), comparable(str(out))
    assert all(k.endswith("_text") for k in set(b) - set(a)) and set(a) <= set(b)
    assert all(np.array_equal(a[k], b[k]) for k in a if not k.startswith(SETTINGS))
    with h5py.File(out) as f:
        table = [s.decode() if isinstance(s, bytes) else s for s in f["data/settings"][()]]
        assert table == ["generation.batch_size=4 runtime.threads=1", "generation.batch_size=2 runtime.threads=2"]
        assert f["population/settings"][()].tolist() == [0] * 4 + [1] * 12
        assert f["base/settings"][()].tolist() == [0, 1]          # train before the stop, test after the ranking
        assert set(f["ensemble/selected/settings"][()].tolist()) == {1}
        assert "population/train_text" not in f   # texts kept only after the switch: not for every candidate
        assert "ensemble/selected/test_text" in f


def test_a_finished_run_under_new_settings_only_is_finished(tmp_path):
    cfg_path = fake_config(tmp_path)
    start(cfg_path)
    folder = RunFolder(str(tmp_path / "out"))
    for override in ("generation.batch_size=2", "runtime.threads=2", "output.save_text=true", "slurm.nodes=4"):
        assert folder.state(load_config(str(cfg_path), [override])) == FINISHED


@pytest.mark.parametrize("override, field", [("population.seed=4", "population.seed"),
                                             ("task.train_size=6", "task.train_size"),
                                             ("generation.max_new_tokens=9", "generation.max_new_tokens"),
                                             ("population.sigmas=[0.01]", "population.sigmas")])
def test_result_defining_changes_are_refused_in_one_line_naming_the_field(tmp_path, override, field):
    cfg_path = fake_config(tmp_path)
    start(cfg_path, "population.size=4", "selection.top_k=[1,3]")
    folder = RunFolder(str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=rf"holds a run with another config \({field}: ") as e:
        folder.state(load_config(str(cfg_path), ["population.size=4", "selection.top_k=[1,3]", override]))
    assert "\n" not in str(e.value)


def test_blocked_sigmas_cannot_grow_since_candidate_i_would_change_sigma(tmp_path):
    cfg_path = fake_config(tmp_path, population={"sigma_assignment": "blocked", "size": 6})
    start(cfg_path, "selection.top_k=[1,3]")
    folder = RunFolder(str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="blocked σ assignment gives candidate i another σ"):
        folder.state(load_config(str(cfg_path), ["selection.top_k=[1,3]", "population.size=8"]))


def test_status_counts_the_test_answers_once_the_candidates_are_done(tmp_path):
    from randopt_hpc import status

    cfg_path = fake_config(tmp_path)
    start(cfg_path)
    out = tmp_path / "out"
    (out / "results.h5").unlink()   # as if the run stopped after its last test answer, before the vote
    s = status.summarize(str(out))
    jobs = RunFolder(str(out)).test_jobs(16)[0]
    assert (s["left"], s["test_jobs"], s["test_answered"]) == (0, len(jobs), len(jobs))
    assert {key for kind, key in jobs if kind == "member"} == {r.key for r in RunFolder(str(out)).records()
                                                               if r.kind == "member"}
    assert s["eta_s"] is None and f"test answers {s['test_jobs']}/{s['test_jobs']} jobs" in status.render(s)


def test_a_grown_test_split_is_answered_only_where_it_is_new_and_equals_a_fresh_run(fresh, tmp_path):
    cfg_path = fake_config(tmp_path)
    backend = rerun_finished(tmp_path, "task.test_size=20", fresh["t20"])
    # The base and every member answer the 8 new test examples only; no candidate runs again.
    assert backend.generated == (1 + len(members(fresh["t20"]) & members(fresh["n16"]))) * 8 + \
        len(members(fresh["t20"]) - members(fresh["n16"])) * 20
    backend = FakeBackend()
    start(cfg_path, "task.test_size=6", backend=backend)   # a subset of what was answered: nothing to answer
    assert_same_results(fresh["t6"], tmp_path / "out" / "results.h5")
    assert backend.generated == 0


def test_a_train_split_that_moved_under_the_run_is_refused(tmp_path):
    from randopt_hpc.run import load
    from tests.unit.test_run import ENV

    cfg_path = fake_config(tmp_path)
    start(cfg_path)
    data = load_config(str(cfg_path)).task.data
    lines = open(data).read().splitlines()
    open(data, "w").write("\n".join(lines[1:] + lines[:1]) + "\n")   # the data file changed under the run
    for overrides in ([], ["task.test_size=20"]):
        with pytest.raises(ConfigError, match="task.data: the train split is not the one this run's candidates"):
            load([str(cfg_path), *overrides], ENV)


def test_every_phase_reports_its_progress_and_the_base_model_answers_the_train_split_first(tmp_path, capsys):
    import logging

    from randopt_hpc.comm import SerialComm, StopFlag
    from randopt_hpc.data import load_examples
    from randopt_hpc.run import run
    from tests.unit.test_run import ENV

    cfg = load_config(str(fake_config(tmp_path)), ["runtime.progress_every_s=1000"])
    log = logging.getLogger("randopt_hpc.tests.progress")
    log.setLevel(logging.INFO)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log.addHandler(handler)
    try:
        run(cfg, SerialComm(), ENV, log, *load_examples(cfg), StopFlag(), backend=FakeBackend())
    finally:
        log.removeHandler(handler)
    phases = [next(i for i, line in enumerate(lines) if line.startswith(p))
              for p in ("base model on train", "population: candidates 0/16",
                        "population: candidates 16/16 (100%)", "ranking done", "test answers: jobs 0/",
                        "base model on test", "vote:", "write:")]
    assert phases == sorted(phases)   # in this order, each phase opening and closing with a line
    best = next(line for line in lines if line.startswith("population: candidates 16/16"))
    with h5py.File(tmp_path / "out" / "results.h5") as f:
        top = int(f["selection/ranking"][0])
        assert f"best train score so far {f['population/train_score'][top]:.4f} (candidate {top})" in best
    total = len(RunFolder(str(tmp_path / "out")).test_jobs(16)[0])
    assert f"test answers: jobs {total}/{total} (100%)" in "\n".join(lines)
    assert capsys.readouterr().out.startswith("summary of ")   # the summary goes to stdout, the log elsewhere
