"""The base model's samples, token accounting and the summary, through run() on the fake backend: the
samples are a function of (item, sample) only, so 1 and 3 ranks and a resume agree; the stored matrices
are what the fake answers imply; the summary's TT-MV, Best-of-K and intervals come from them."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from randopt_hpc import stats
from randopt_hpc.environment import Fault
from randopt_hpc.runfolder import RunFolder
from randopt_hpc.sampling import Sampling
from randopt_hpc.summary import render, summarize
from tests.conftest import assert_same_results
from tests.fakes import answer_text, fake_config, kind_of_answer, run_threads
from tests.unit.test_run import start

SAMPLES = ("generation.samples=6", "generation.temperature=0.7", "generation.seed=11")


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sampled")
    cfg, train, test, _ = start(fake_config(tmp), *SAMPLES)
    return cfg, test, tmp / "out" / "results.h5"


def test_samples_are_what_the_fake_answers_for_each_item_and_sample(sampled):
    cfg, test, path = sampled
    with h5py.File(path) as f:
        assert f["base/test_samples_key"].shape == (6, len(test))
        for s in range(6):
            draw = Sampling(0.7, cfg.generation.top_p, 11, s)
            kinds = [kind_of_answer(draw.row_seed(ex.id), ex.id) for ex in test]
            assert f["base/test_samples_correct"][s].tolist() == [k == "right" for k in kinds]
            assert f["base/test_samples_gen_tokens"][s].tolist() == \
                [len(answer_text(k, ex.numbers).split()) for k, ex in zip(kinds, test)]
        assert f["base/test_samples_key_correct"][()].tolist() == f["base/test_samples_correct"][()].tolist()
        assert f["data/finish_reasons"].asstr()[()].tolist() == ["eos", "stop", "length"]
        assert f["data/test_prompt_tokens"][()].tolist() == [len(ex.prompt.split()) for ex in test]
        assert (f["population/train_gen_tokens"][()] > 0).all() and f["population/train_finish"].dtype == np.int8


def test_three_ranks_and_a_resume_write_the_same_samples(sampled, tmp_path):
    path = fake_config(tmp_path)
    run_threads(3, lambda comm: start(path, *SAMPLES, comm=comm))
    assert_same_results(sampled[2], tmp_path / "out" / "results.h5")
    again = tmp_path / "again"
    again.mkdir()
    cfg = fake_config(again)
    with pytest.raises(RuntimeError, match="injected"):
        start(cfg, *SAMPLES, on_candidate=Fault(0, 12).hook)
    start(cfg, *SAMPLES)
    assert_same_results(sampled[2], again / "out" / "results.h5")
    kinds = [r.kind for r in RunFolder(str(again / "out")).records()]
    assert kinds.count("sample") == 6


def test_summary_rows_are_the_statistics_of_the_stored_matrices(sampled):
    _, test, path = sampled
    with h5py.File(path) as f:
        s = summarize(f, dict(f.attrs))
        ok = f["base/test_samples_correct"][()]
        keys = [[k or None for k in row] for row in f["base/test_samples_key"].asstr()[()]]
        rows = {r["model"]: r for r in s["rows"]}
        assert rows["base sampled, pass@1 (S=6)"]["test_acc"] == pytest.approx(ok.mean())
        assert rows["Best-of-5 (base samples, oracle)"]["test_acc"] == pytest.approx(
            stats.pass_at_k_items(ok, 5).mean())
        assert rows["TT-MV-3 (base samples voted)"]["test_acc"] == pytest.approx(stats.tt_mv_items(keys, ok, 3).mean())
        assert "TT-MV-1 (base samples voted)" not in rows      # it is pass@1
        for k, acc in zip(f["ensemble/control/k"][()], f["ensemble/control/accuracy"][()]):
            r = rows[f"control-{k} vote"]
            assert r["test_acc"] == pytest.approx(acc) and r["low"] <= acc <= r["high"]
        diff = next(d for d in s["differences"] if d["a"] == "top-5 vote" and d["b"] == "control-5 vote")
        assert diff["diff"] == pytest.approx(f["ensemble/selected/accuracy"][2] - f["ensemble/control/accuracy"][2])
        groups = s["tokens"]["groups"]
        assert groups["base samples"]["generations"] == 6 * len(test)
        assert groups["base samples"]["generated_tokens"] == int(f["base/test_samples_gen_tokens"][()].sum())
        assert s["tokens"]["flops"] is None          # the fake model folder has no weights to count
    text = render(s)
    assert "TT-MV-5 (base samples voted)" in text and "FLOPs unknown" in text and "95% paired bootstrap" in text


def test_sampling_config_is_checked(tmp_path):
    from randopt_hpc.config import ConfigError, load_config

    cfg = fake_config(tmp_path)
    for bad, field in (("generation.samples=-1", "generation.samples"), ("generation.temperature=0", "temperature"),
                       ("generation.top_p=1.5", "generation.top_p"), ("selection.control_size=2", "control_size"),
                       ("selection.control_size=17", "control_size")):
        with pytest.raises(ConfigError, match=field):
            load_config(str(cfg), [bad])
    with pytest.raises(ConfigError, match="needs selection.control: true"):
        load_config(str(cfg), ["selection.control=false", "selection.control_size=8"])


def test_a_scan_has_every_candidate_answer_the_test_set(tmp_path):
    start(fake_config(tmp_path), "selection.control_size=16")
    with h5py.File(tmp_path / "out" / "results.h5") as f:
        control = f["ensemble/control/members"][()].tolist()
        assert sorted(control) == list(range(16)) and control != list(range(16))
        assert f["ensemble/control/test_correct"].shape[0] == 16
        assert f["ensemble/control_sigma/members"].shape == (5,)
