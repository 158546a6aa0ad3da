"""tools.scale and `analyze scale`: the schedule replay's arithmetic on known cases, and the command on a real
results file written by run() on thread ranks (fake backend) under each schedule."""
from __future__ import annotations

import json

import h5py
import pytest
from click.testing import CliRunner

from tests.fakes import fake_config, run_threads
from tests.unit.test_run import start
from tools import scale
from tools.analyze import cli


def test_strided_and_dynamic_deal_known_cases():
    times = [5.0, 1.0, 1.0, 1.0, 1.0]
    assert scale.deal(times, 2, "strided") == [7.0, 2.0]          # rank 0: jobs 0, 2, 4
    assert scale.deal(times, 2, "dynamic") == [5.0, 4.0]          # the free rank takes the next job
    assert scale.deal(times, 2, "dynamic", [0.0, 6.0]) == [8.0, 7.0]   # rank 1 starts late, at 6 s
    assert scale.deal([1.0] * 4, 2, "dynamic", None, take_s=0.5) == [3.0, 3.0]
    assert scale.deal([], 3, "dynamic") == [0.0, 0.0, 0.0]


REC = {"candidates": [1.0] * 8, "base_train": 2.0, "base_rate": 0.005, "per_prompt": [0.01, 0.02], "members": 2,
       "test_size": 100, "batch_size": 10, "perturb_s": 0.1, "world_size": 2, "schedule": "strided", "load": [0.4, 0.6],
       "measured": {"population": 1.0, "test": 1.0}}


def test_simulate_one_rank_is_the_sum_of_the_jobs():
    x = scale.simulate(REC, 1, "dynamic")
    # One part per job on one rank (3 jobs, PARTS_PER_RANK = 2): the base's 100 answers, then the 2 members'.
    test = 100 * 0.005 + 2 * 0.1 + 100 * (0.01 + 0.02)
    assert x["population_s"] == pytest.approx(8.0) and x["test_s"] == pytest.approx(test)
    # The model loads (the recorded ranks' median, 0.5 s), the base answers the train split (2 s), then the rest.
    assert x["total_s"] == pytest.approx(0.5 + 2 + 8 + test) and x["efficiency"] == pytest.approx(1.0)


def test_simulate_resamples_and_slows_down():
    x = scale.simulate(REC, 4, "strided", n=1000, slow_share=1.0, slow_factor=3.0)
    assert x["n"] == 1000
    # Every candidate 3 s, 250 on each rank; every rank loads first (0.5 s), rank 0 then answers the base (2 s).
    assert x["population_s"] == pytest.approx(0.5 + 2 + 750.0)
    # A share of runaways: the same draws (one seed) dealt both ways; the free rank taking the next evens them out.
    s, d = (scale.simulate(REC, 8, schedule, n=200, slow_share=0.1, slow_factor=5.0) for schedule in ("strided",
                                                                                                   "dynamic"))
    assert d["population_s"] < s["population_s"] and d["population_efficiency"] > s["population_efficiency"]
    many = scale.simulate(REC, 8, "dynamic", members=2, test_size=1000)
    assert many["parts"] > 2      # fewer member jobs than ranks: each member's test split is cut in parts


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    out = {}
    for schedule in ("strided", "dynamic"):
        cfg = fake_config(tmp, schedule, runtime={"schedule": schedule})
        run_threads(3, lambda comm, cfg=cfg: start(cfg, comm=comm))
        out[schedule] = tmp / schedule / "results.h5"
    return out


def test_analyze_scale_replays_a_recorded_run(files):
    r = CliRunner().invoke(cli, ["scale", str(files["dynamic"]), "--ranks", "1,3,200", "--n", "16,2000", "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)[0]
    assert out["recorded"]["world_size"] == 3 and out["recorded"]["schedule"] == "dynamic"
    assert [(x["n"], x["ranks"], x["schedule"]) for x in out["rows"]][:3] == \
        [(16, 1, "strided"), (16, 1, "dynamic"), (16, 3, "strided")]
    with h5py.File(files["dynamic"]) as f:
        assert out["rows"][0]["population_s"] == pytest.approx(float(f["population/seconds"][()].sum()))
    r = CliRunner().invoke(cli, ["scale", str(files["strided"])])
    assert r.exit_code == 0 and "recorded: 3 ranks, strided" in r.stdout and "| 800 | dynamic |" in r.stdout


@pytest.mark.parametrize("args,word", [(["--ranks", "0"], "--ranks"), (["--ranks", "a"], "--ranks"),
                                       (["--schedule", "greedy"], "--schedule"), (["--n", "5,-1"], "--n")])
def test_analyze_scale_refuses_bad_options_in_one_line(files, args, word):
    r = CliRunner().invoke(cli, ["scale", str(files["strided"]), *args])
    assert r.exit_code == 2 and word in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_analyze_scale_refuses_a_file_without_job_times(files, tmp_path):
    old = tmp_path / "old.h5"
    old.write_bytes(files["strided"].read_bytes())
    with h5py.File(old, "a") as f:
        del f["jobs"]
    r = CliRunner().invoke(cli, ["scale", str(old)])
    assert r.exit_code == 2 and "no jobs/ group" in r.stderr and r.stderr.count("\n") == 1
