"""δ(m) on accuracy per σ and 𝒟 on per-task accuracy with its noise correction: known answers on hand-made data."""
import h5py
import numpy as np
import pytest

from tests.unit.test_analyze import make_results, run, run_json
from tools import metrics


def rows_of(hits, e):
    """N×e correctness, candidate i right on its first hits[i] examples."""
    return np.array([[True] * h + [False] * (e - h) for h in hits])


def halves(even_hits, odd_hits, e=8):
    """N×e correctness with given hits on the even- and on the odd-position examples."""
    ok = np.zeros((len(even_hits), e), dtype=bool)
    for i, (a, b) in enumerate(zip(even_hits, odd_hits)):
        ok[i, 0::2][:a] = True
        ok[i, 1::2][:b] = True
    return ok


# ----------------------------------------------------------------------------- δ(m) on accuracy, per σ

def test_accuracy_density_exact_per_sigma():
    rng = np.random.default_rng(0)
    ok = rows_of([4, 5, 3, 6, 4, 4, 2, 8], 10)
    ok = ok[:, rng.permutation(10)]                      # only the counts matter, not where the hits are
    sig = [0.01] * 4 + [0.02] * 4
    d = metrics.accuracy_density(ok, rows_of([4], 10)[0], sig, [-0.1, 0.0, 0.1, 0.2])
    assert d["base"] == 0.4 and d["base_hits"] == 4 and d["examples"] == 10
    by = {r["sigma"]: r for r in d["rows"]}
    # σ 0.01: .4 .5 .3 .6 ; σ 0.02: .4 .4 .2 .8 ; equal to the base counts at m = 0; 0.4 + 0.2 > 0.6 in floats
    assert by[0.01]["count"].tolist() == [4, 3, 2, 1]
    assert by[0.02]["count"].tolist() == [3, 3, 1, 1]
    assert by["all"]["count"].tolist() == [7, 6, 3, 2] and by["all"]["n"] == 8
    assert by[0.02]["density"].tolist() == [0.75, 0.75, 0.25, 0.25]
    for r in d["rows"]:
        assert np.all(r["low"] <= r["density"]) and np.all(r["density"] <= r["high"])
    # base 1 of 10, margin 0.2: 0.1 + 0.2 = 0.30000000000000004, yet 3 of 10 is exactly base + 0.2
    assert metrics.accuracy_density(rows_of([3], 10), rows_of([1], 10)[0], [0.5], [0.2])["rows"][0]["count"][0] == 1


def test_wilson_contains_the_estimate_everywhere():
    for n in (1, 2, 7, 64, 500):
        k = np.arange(n + 1)
        lo, hi = metrics.wilson(k, n)
        assert np.all(lo <= k / n) and np.all(k / n <= hi) and np.all(lo >= 0) and np.all(hi <= 1)
        assert np.all(lo[1:] > 0) and np.all(hi[:-1] < 1)


def test_step_grid_holds_every_margin():
    g = metrics.step_grid(np.array([0.3, 0.5, 0.5, 0.1]), 0.3)
    assert g[1:-1].tolist() == pytest.approx([-0.2, 0.0, 0.2]) and g[0] < -0.2 and g[-1] > 0.2


def test_density_command_per_sigma(tmp_path):
    path = make_results(tmp_path / "r")      # hits 1 2 2 3 5 4 of 10, base 2; σ 0.01: #0 #2 #4, σ 0.02: #1 #3 #5
    [d] = run_json("density", path, "--margins", "0,0.1,0.25")
    assert d["on"] == "accuracy" and d["split"] == "train" and d["base_accuracy"] == 0.2 and d["N"] == 6
    by = {r["sigma"]: r for r in d["rows"]}
    assert [c["count"] for c in by[0.01]["cells"]] == [2, 1, 1]          # .1 .2 .5
    assert [c["count"] for c in by[0.02]["cells"]] == [3, 2, 0]          # .2 .3 .4
    assert [c["count"] for c in by["all"]["cells"]] == [5, 3, 1]
    cell = by[0.02]["cells"][1]
    assert cell["n"] == 3 and cell["density"] == pytest.approx(2 / 3) and cell["low"] < 2 / 3 < cell["high"]
    assert cell["threshold"] == pytest.approx(0.3)
    [default] = run_json("density", path)
    assert default["margins"] == [0.0, 0.01, 0.02, 0.05, 0.1]
    code, out, _ = run("density", path, "--margins", "0,0.1")
    assert code == 0 and "base train accuracy 0.2000 (2/10); N per σ: 0.01: 3, 0.02: 3, all: 6" in out
    assert "0.667 [0.21,0.94]" in out.splitlines()[-3]                   # σ 0.01 at m = 0


def test_density_test_split_from_control_members(tmp_path):
    # Control members 0..3 hold the hand-made answers reversed: test accuracy .75 .25 .5 .25; base .25.
    [d] = run_json("density", make_results(tmp_path / "r"), "--split", "test", "--margins", "0,0.25,0.5")
    assert d["split"] == "test" and d["N"] == 4 and d["base_accuracy"] == 0.25 and d["examples"] == 4
    assert "only the 4 control members of 6 candidates" in d["source"]
    by = {r["sigma"]: r for r in d["rows"]}
    assert [c["count"] for c in by[0.01]["cells"]] == [2, 2, 1]           # members 0 and 2: .75 .5
    assert [c["count"] for c in by[0.02]["cells"]] == [2, 0, 0]           # members 1 and 3: .25 .25
    assert [c["count"] for c in by["all"]["cells"]] == [4, 2, 1]
    [scan] = run_json("density", make_results(tmp_path / "scan", hits=(1, 2, 3, 4)), "--split", "test")
    assert "every candidate (a scan run)" in scan["source"]
    bare = make_results(tmp_path / "bare")
    with h5py.File(bare, "r+") as f:
        del f["ensemble/control"]
    code, out, err = run("density", bare, "--split", "test")
    assert code == 2 and out == "" and err.count("\n") == 1 and "ensemble/control" in err
    code, _, err = run("density", bare, "--on", "score", "--split", "test")
    assert code == 2 and "train split only" in err


# ----------------------------------------------------------------------------- reliability, Spearman–Brown

def test_spearman_brown_closed_forms():
    assert metrics.spearman_brown(0.6) == pytest.approx(0.75)
    assert metrics.spearman_brown(0.25, 4) == pytest.approx(1 / 1.75)
    assert metrics.spearman_brown(1.0, 5) == pytest.approx(1.0) and metrics.spearman_brown(0.0) == 0.0
    assert np.isnan(metrics.spearman_brown(-1.0))
    # even-half ranks 1 2 3 4, odd-half ranks 2 1 4 3: Pearson r = 3/5 by hand, so ρ = 2r/(1+r) = 0.75
    assert metrics.split_half_reliability(halves([0, 1, 2, 3], [1, 0, 3, 2])) == pytest.approx(0.75)
    assert metrics.split_half_reliability(halves([0, 1, 2, 3], [0, 1, 2, 3])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one half"):
        metrics.split_half_reliability(halves([0, 1, 2, 3], [2, 2, 2, 2]))


def test_corrected_correlation_closed_form():
    c = metrics.corrected_correlation(np.array([[1.0, 0.3], [0.3, 1.0]]), [0.5, 0.8])
    assert c[0, 1] == pytest.approx(0.3 / np.sqrt(0.4)) and c[0, 0] == 1.0
    assert metrics.corrected_correlation(np.array([[1.0, 0.9], [0.9, 1.0]]), [0.5, 0.5])[0, 1] == 1.0   # clipped
    with pytest.raises(ValueError):
        metrics.corrected_correlation(np.eye(2), [0.5, 0.0])


def test_block_reliability_of_two_blocks():
    ok = np.hstack([rows_of([0, 1, 2, 3], 4), rows_of([1, 0, 3, 2], 4)])    # block ranks 1234 vs 2143: r̄ = 0.6
    r = metrics.block_reliability(ok, 2)
    assert r["r_mean"] == pytest.approx(0.6) and r["one_minus_r"] == pytest.approx(0.4)
    assert r["reliability"] == pytest.approx(0.75) and r["M"] == 2 and r["N"] == 4


# ----------------------------------------------------------------------------- 𝒟 per σ

def test_thicket_discordance_identical_reversed_and_undefined():
    up = rows_of([1, 2, 3, 4, 5, 6], 8)       # even/odd halves rank alike but not identically: 0 < ρ < 1
    down = up[::-1]
    names = ["a", "b"]
    sig = np.array([0.01] * 3 + [0.02] * 3)
    for label, mask in metrics.sigma_groups(sig):
        same = metrics.thicket_discordance([up[mask], up[mask]], names)
        assert same["D"] == pytest.approx(0.0) and same["D_corrected"] == pytest.approx(0.0), label
        rev = metrics.thicket_discordance([up[mask], down[mask]], names)
        assert rev["D"] == pytest.approx(2.0) and rev["D_corrected"] == pytest.approx(2.0), label
        assert all(0 < rho <= 1 for rho in rev["reliability"])
    one = metrics.thicket_discordance([up[:1], down[:1]], names)
    assert one["D"] is None and "1 candidate" in one["why"] and one["D_corrected"] is None
    flat = metrics.thicket_discordance([up, rows_of([3] * 6, 8)], names)
    assert flat["D"] is None and "same accuracy on b" in flat["why"]
    noisy = metrics.thicket_discordance([halves([0, 1, 2, 3], [1, 0, 3, 2]), halves([0, 1, 2, 3], [6, 4, 2, 0], 12)],
                                        names)    # b's halves rank in reverse: r = −1, no reliability
    assert noisy["D"] is not None and noisy["D_corrected"] is None and "b:" in noisy["why_corrected"]
    assert noisy["reliability"][0] == pytest.approx(0.75) and noisy["half_correlation"] == pytest.approx([0.6, -1.0])
    assert "r = -1.000 ≤ 0" in noisy["why_corrected"]


def test_discordance_command_per_sigma_on_files(tmp_path):
    a = make_results(tmp_path / "a", hits=(1, 2, 3, 4, 5, 6), m=8)
    b = make_results(tmp_path / "b", hits=(6, 5, 4, 3, 2, 1), m=8)           # same population, reversed ranking
    d = run_json("discordance", a, b)
    assert d["kind"] == "discordance" and d["M"] == 2 and d["bound"] == 2.0
    assert d["D"] == pytest.approx(2.0) and d["D_corrected"] == pytest.approx(2.0)
    by = {r["sigma"]: r for r in d["rows"]}
    assert set(by) == {0.01, 0.02, "all"} and by[0.01]["N"] == 3 and by[0.01]["D"] == pytest.approx(2.0)
    lone = make_results(tmp_path / "lone", hits=(1, 2, 3, 4), sigmas=[0.05, 0.01, 0.01, 0.01])
    lone2 = make_results(tmp_path / "lone2", hits=(4, 3, 2, 1), sigmas=[0.05, 0.01, 0.01, 0.01])
    code, out, err = run("discordance", lone, lone2)
    assert code == 0, err
    assert "sigma 0.05: D undefined: 1 candidate" in out


def test_discordance_command_multitask_file(tmp_path):
    ok = np.hstack([rows_of([0, 1, 1, 2, 3, 4], 4), rows_of([4, 3, 3, 2, 1, 0], 4)])
    path = make_results(tmp_path / "multi", hits=(1, 2, 3, 4, 5, 6), m=8, extra={
        "population/train_correct": ok,
        "data/task_names": np.array(["up", "down"], dtype=object),
        "data/train_task": np.array(["up"] * 4 + ["down"] * 4, dtype=object)})
    d = run_json("discordance", path)
    assert d["columns"] == ["up (4 ex.)", "down (4 ex.)"] and "each of its 2 tasks" in d["source"]
    assert d["D"] == pytest.approx(2.0)
    assert d["rows"][-1]["correlation"][0][1] == pytest.approx(-1.0)


def test_splits_is_labelled_a_reliability_diagnostic(tmp_path):
    path = make_results(tmp_path / "wide", hits=(1, 6, 7, 3, 9, 10))
    code, out, _ = run("discordance", path, "--splits", "2")
    assert code == 0 and out.startswith("reliability diagnostic (one task cut into M blocks: not a discordance)")
    d = run_json("discordance", path, "--splits", "2")
    # blocks of 5: accuracies .2 1 1 .6 1 1 and 0 .2 .4 0 .8 1, average ranks below
    r = np.corrcoef([1, 4.5, 4.5, 2, 4.5, 4.5], [1.5, 3, 4, 1.5, 5, 6])[0, 1]
    assert d["kind"] == "reliability" and "D" not in d
    assert d["r_mean"] == pytest.approx(r) and d["one_minus_r"] == pytest.approx(1 - r)
    assert d["reliability"] == pytest.approx(2 * r / (1 + r))
    assert "Spearman–Brown reliability of the full score" in out
