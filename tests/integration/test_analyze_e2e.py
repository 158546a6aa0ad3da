"""tools/analyze on the results.h5 of a real 2-rank RandOpt run (tiny model, mpiexec)."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import ROOT, launch, write_config
from tools.analyze import cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run_file(two_rank_results):
    return two_rank_results


@pytest.fixture(scope="module")
def stored(run_file):
    with h5py.File(run_file) as f:
        return {name: f[name][()] for name in (
            "base/train_correct", "base/test_correct", "base/train_reward", "population/train_score",
            "population/sigma", "ensemble/selected/k", "ensemble/selected/accuracy", "ensemble/control/accuracy",
            "ensemble/selected/test_correct", "selection/ranking")}


def analyze(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout) if "--json" in args else r.stdout


def test_summary(run_file, stored):
    [s] = analyze("summary", run_file, "--json")
    assert s["sizes"] == {"N": 12, "M_train": 6, "T_test": 6, "world_size": 2, "K": [1, 3]}
    base = s["models"][0]
    assert base["train_acc"] == pytest.approx(stored["base/train_correct"].mean())
    assert base["test_acc"] == pytest.approx(stored["base/test_correct"].mean())
    top = {r["k"]: r["test_acc"] for r in s["models"] if r["model"].startswith("top-") and r["model"].endswith("vote")}
    assert list(top.values()) == pytest.approx(stored["ensemble/selected/accuracy"].tolist())
    best = next(r for r in s["models"] if r["model"].startswith("best single"))
    assert best["test_acc"] == pytest.approx(stored["ensemble/selected/test_correct"][0].mean())
    assert any(r["model"] == "TT-MV-3 (base samples voted)" for r in s["models"])
    assert {d["b"] for d in s["differences"]} >= {"control-3 vote", "σ-matched control-3 vote", "base (greedy)"}
    assert s["tokens"]["flops"] > 0 and s["tokens"]["groups"]["base samples"]["generations"] == 3 * 6
    assert [t["rank"] for t in s["timing"]] == [0, 1] and sum(t["candidates"] for t in s["timing"]) == 12
    assert all(t["idle"] >= 0 for t in s["timing"]) and s["imbalance"] >= 1.0
    text = analyze("summary", run_file)
    assert "best single" in text and "world_size=2" in text and "imbalance" in text


def test_kcurve_reproduces_the_stored_vote(run_file, stored):
    [d] = analyze("kcurve", run_file, "--json")
    for g in ("selected", "control"):
        assert d[g]["matches_stored"], d[g]
        assert [d[g]["accuracy"][k - 1] for k in stored["ensemble/selected/k"]] == \
            pytest.approx(stored[f"ensemble/{g}/accuracy"].tolist())
        cov = np.array(d[g]["coverage"])
        assert np.all(np.diff(cov) >= 0) and np.all(cov >= np.array(d[g]["accuracy"]) - 1e-12)
    assert "re-vote equals the stored voted_correct" in analyze("kcurve", run_file)


def test_sigma_and_density(run_file, stored):
    base = float(stored["base/train_reward"].astype(np.float64).mean())
    [s] = analyze("sigma", run_file, "--json")
    rows = {r["sigma"]: r for r in s["rows"]}
    assert set(rows) - {"all"} == set(stored["population/sigma"].tolist())
    assert rows["all"]["count"] == 12 and s["base_train_score"] == pytest.approx(base)
    with h5py.File(run_file) as f:
        ok, base_ok = f["population/train_correct"][()], f["base/train_correct"][()]
        control = f["ensemble/control/members"][()]
    acc, base_acc = ok.sum(axis=1) / ok.shape[1], base_ok.sum() / len(base_ok)
    [d] = analyze("density", run_file, "--margins", "-1,0,1.01", "--json")
    assert d["on"] == "accuracy" and d["base_accuracy"] == pytest.approx(base_acc) and d["N"] == 12
    sig = stored["population/sigma"]
    assert [r["sigma"] for r in d["rows"]] == [*np.unique(sig).tolist(), "all"]
    for r in d["rows"]:
        mask = np.ones(len(sig), dtype=bool) if r["sigma"] == "all" else sig == r["sigma"]
        assert [c["count"] for c in r["cells"]] == [mask.sum(), int(np.sum(acc[mask] >= base_acc)), 0]
        assert all(c["low"] <= c["density"] <= c["high"] and c["n"] == mask.sum() for c in r["cells"])
    [t] = analyze("density", run_file, "--split", "test", "--json")
    assert t["split"] == "test" and t["N"] == len(control) and t["rows"][-1]["n"] == len(control)
    [old] = analyze("density", run_file, "--on", "score", "--margins", "-10,0,10", "--json")
    scores = stored["population/train_score"]
    assert [r["count"] for r in old["rows"]] == [12, int(np.sum(scores >= base - 1e-6)), 0]


def test_discordance(run_file, stored):
    same = analyze("discordance", run_file, run_file, "--json")
    assert same["bound"] == 2.0 and len(same["rows"]) == len(np.unique(stored["population/sigma"])) + 1
    if same["D"] is None:                      # six train examples: every candidate may score alike
        assert "same accuracy" in same["rows"][-1]["why"]
    else:
        assert same["D"] == pytest.approx(0.0)
    r = CliRunner().invoke(cli, ["discordance", str(run_file), "--splits", "2", "--json"])
    if r.exit_code == 0:
        d = json.loads(r.stdout)
        assert d["kind"] == "reliability" and d["M"] == 2 and -1 - 1e-12 <= d["r_mean"] <= 1 + 1e-12
        assert analyze("discordance", run_file, "--splits", "2").startswith("reliability diagnostic")
    else:
        assert r.exit_code == 2 and "same accuracy" in r.stderr


def test_passk_has_the_base_samples_and_every_ensemble(run_file):
    [d] = analyze("passk", run_file, "--json")
    with h5py.File(run_file) as f:
        ok = f["base/test_samples_correct"][()]
        sel = f["ensemble/selected/test_correct"][()]
    assert d["samples"]["n"] == 3 and d["samples"]["pass_at_k"][-1] == pytest.approx(ok.any(axis=0).mean())
    assert d["samples"]["pass_at_k"][0] == pytest.approx(ok.mean())
    assert d["selected"]["coverage"][-1] == pytest.approx(sel.any(axis=0).mean())
    assert set(d) >= {"selected", "control", "control_sigma"}
    assert "base pass@k (T=1.0)" in analyze("passk", run_file)


def test_merge(run_file, stored):
    m = analyze("merge", run_file, run_file, "--json")
    assert m["differing_keys"] == [] and len(m["runs"]) == 2
    assert m["runs"][0]["top"]["3"] == pytest.approx(stored["ensemble/selected/accuracy"][1])
    assert analyze("merge", "--csv", run_file).splitlines()[0].startswith("path,N,base test")


def test_plot_writes_five_pngs(run_file, tmp_path):
    paths = analyze("plot", run_file, "--out", tmp_path / "plots", "--samples-from", run_file, "--json")
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["density.png", "kcurve.png", "passk.png", "sigma.png",
                                                          "train_scores.png"]
    for p in paths:
        data = open(p, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.fixture(scope="module")
def other_seed(run_file, tiny_model, tmp_path_factory):
    """The same config at another population seed and size, also on 2 ranks, and a scan."""
    tmp = tmp_path_factory.mktemp("other-seed")
    cfg = write_config(tmp / "run.yaml", tiny_model, tmp / "run", population={"size": 8, "seed": 12},
                       selection={"control_size": 8})
    p = launch(cfg, 2)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp / "run" / "results.h5"


def test_merge_over_seeds_thicket_and_sweep_plots(run_file, other_seed, stored, tmp_path):
    m = analyze("merge", run_file, run_file, "--json")
    [grp] = m["over_seeds"]["groups"]
    assert grp["seeds"] == [11, 11] and grp["repeated_seeds"] == [11]
    top3 = next(r for r in grp["rows"] if r["quantity"] == "top-3 vote")
    assert top3["mean"] == pytest.approx(stored["ensemble/selected/accuracy"][1]) and top3["std"] == 0
    two = analyze("merge", run_file, other_seed, "--json")["over_seeds"]
    assert two["keys"] == ["population.size", "selection.control_size"] and len(two["groups"]) == 2
    [t] = analyze("thicket", other_seed, "--json")
    assert t["scan"] and t["candidates"] == 8 and t["rows"][-1]["n"] == 8
    [small] = analyze("thicket", run_file, "--json")
    assert not small["scan"] and small["candidates"] == 3
    paths = analyze("plot", run_file, other_seed, "--out", tmp_path / "sweep", "--json")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["nscale.png", "kcurves.png"]
    for p in paths:
        assert open(p, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"


def test_as_a_program(run_file):
    p = subprocess.run([sys.executable, "-m", "tools.analyze", "summary", str(run_file)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "top-3 vote" in p.stdout, p.stderr
