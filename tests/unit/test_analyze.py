"""tools/analyze: the math on hand-made numbers, and the CLI on results files written by hand."""
import itertools
import json
import math
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from randopt_hpc import vote
from randopt_hpc.runfolder import RunFolder
from tests.conftest import ROOT
from tools import metrics
from tools.analyze import cli

# ----------------------------------------------------------------------------- a hand-made results file

# Four members, four test items: ties, abstains ('') and an item only the last member gets right.
KEYS = [["a", "", "x", ""],
        ["b", "", "y", "z"],
        ["b", "c", "y", ""],
        ["a", "d", "y", ""]]
CORRECT = [[True, False, False, False],
           [False, False, True, True],
           [False, False, True, False],
           [True, True, True, False]]
VOTE_ACC = [0.25, 0.5, 0.5, 0.75]       # worked out by hand, item by item (see test_vote_and_coverage_per_k)
COVERAGE = [0.25, 0.75, 0.75, 1.0]


def _ensemble(members, keys, correct, ks):
    voted = [vote.vote(keys, correct, k) for k in ks]
    return {"members": np.array(members, dtype=np.int64), "test_key": np.array(keys, dtype=object),
            "test_correct": np.array(correct, dtype=bool),
            "test_reward": np.array(correct, dtype=np.float32), "k": np.array(ks, dtype=np.int64),
            "voted_key": np.array([[k or "" for k in v[0]] for v in voted], dtype=object),
            "voted_correct": np.array([v[1] for v in voted], dtype=bool),
            "accuracy": np.array([vote.accuracy(v[1]) for v in voted]), "train_accuracy": np.zeros(len(ks))}


def make_results(out_dir, hits=(1, 2, 2, 3, 5, 4), base_hits=2, m=10, sigmas=None, seed=0, ks=(1, 3),
                 config=None, extra=None):
    """A minimal valid results.h5 per docs/results-schema.md: candidate i gets hits[i] of m train examples right."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(hits)
    reward = np.array([[1.0] * h + [0.0] * (m - h) for h in hits], dtype=np.float32)
    base_reward = np.array([1.0] * base_hits + [0.0] * (m - base_hits), dtype=np.float32)
    score = reward.mean(axis=1).astype(np.float64)
    ranking = sorted(range(n), key=lambda i: (-score[i], i))
    cfg = {"task": {"name": "countdown"}, "population": {"size": n, "seed": seed, "sigmas": [0.01, 0.02]},
           "selection": {"top_k": list(ks)}, "output": {"dir": str(out_dir)}}
    for section, values in (config or {}).items():
        cfg.setdefault(section, {}).update(values)
    members = ranking[:4]
    tree = {
        "population": {"index": np.arange(n), "seed": np.arange(n, dtype=np.int64) + 1000 * seed,
                       "sigma": np.array(sigmas if sigmas is not None else [0.01, 0.02] * (n // 2) + [0.01] * (n % 2)),
                       "train_score": score, "train_accuracy": score, "train_reward": reward,
                       "train_correct": reward > 0, "train_key": np.full((n, m), "1", dtype=object),
                       "rank": np.arange(n, dtype=np.int32) % 2, "seconds": np.ones(n)},
        "base": {"train_reward": base_reward, "train_correct": base_reward > 0,
                 "train_key": np.full(m, "1", dtype=object), "test_reward": np.array([1, 0, 0, 0], dtype=np.float32),
                 "test_correct": np.array([True, False, False, False]),
                 "test_key": np.array(["a", "", "", ""], dtype=object)},
        "selection": {"ranking": np.array(ranking, dtype=np.int64), "top_k": np.array(ks, dtype=np.int64)},
        "ensemble": {"selected": _ensemble(members, KEYS, CORRECT, ks),
                     "control": _ensemble(list(range(4)), KEYS[::-1], CORRECT[::-1], ks)},
        "data": {"task": np.array("countdown", dtype=object),
                 "train_ids": np.array([str(i) for i in range(m)], dtype=object),
                 "test_ids": np.array(["t0", "t1", "t2", "t3"], dtype=object)},
        "timing": {"rank": np.array([0, 1]), "hostname": np.array(["h0", "h1"], dtype=object),
                   "busy": np.array([30.0, 10.0]), "wait": np.array([0.5, 20.0]), "wall": np.array([31.0, 31.0]),
                   "candidates": np.array([3, 3])},
    }
    for path, value in (extra or {}).items():
        group, name = path.split("/")
        tree[group][name] = value
    attrs = {"config": yaml.safe_dump(cfg), "world_size": 2, "task": "countdown", "population_size": n}
    return RunFolder(str(out_dir)).write_results(tree, attrs)


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def run_json(*args):
    code, out, err = run(*args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("hand") / "run")


# ----------------------------------------------------------------------------- imports

def test_cli_imports_no_mpi_torch_vllm_matplotlib(demo):
    code = ("import sys; from click.testing import CliRunner; from tools.analyze import cli\n"
            f"for c in ('summary', 'kcurve', 'sigma', 'density', 'passk', 'merge', 'thicket'):\n"
            f"    assert CliRunner().invoke(cli, [c, {str(demo)!r}]).exit_code == 0, c\n"
            "print(sorted(m for m in ('mpi4py', 'vllm', 'torch', 'matplotlib') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- density

def test_density_exact_on_hand_made_scores():
    d = metrics.density(np.array([0.1, 0.2, 0.2, 0.3, 0.5]), 0.2, [-0.1, 0.0, 0.1, 0.3, 0.31])
    assert d["count"].tolist() == [5, 4, 2, 1, 0]          # 0.2 + 0.1 ≠ 0.3 in floats; 0.3 still counts
    assert d["density"].tolist() == [1.0, 0.8, 0.4, 0.2, 0.0]
    assert np.all(d["low"] <= d["density"]) and np.all(d["density"] <= d["high"])
    lo, hi = metrics.wilson(0, 10)                         # Wilson at 0 of n: [0, z²/(n+z²)]
    z2 = 1.959963984540054 ** 2
    assert lo == 0 and hi == pytest.approx(z2 / (10 + z2))
    lo, hi = metrics.wilson(np.arange(11), 10)
    assert np.all(lo <= np.arange(11) / 10) and np.all(np.arange(11) / 10 <= hi) and lo[0] == 0 and hi[-1] == 1


def test_density_command_uses_base_from_rewards(demo):
    # --on score: the pooled δ on the train score, as before the per-σ accuracy δ (tests/unit/test_thicket_stats.py)
    [d] = run_json("density", demo, "--on", "score", "--margins", "0,0.1,-0.1,0.3")
    assert d["on"] == "score" and d["base_train_score"] == pytest.approx(0.2)
    # scores 0.1 0.2 0.2 0.3 0.5 0.4, base 0.2
    assert [r["count"] for r in d["rows"]] == [5, 3, 6, 1]
    assert d["N"] == 6
    [auto] = run_json("density", demo, "--on", "score")
    assert 0.0 in [r["margin"] for r in auto["rows"]]
    assert auto["rows"][0]["density"] == 1.0 and auto["rows"][-1]["count"] <= 1


def test_auto_margins_are_round_and_include_zero():
    g = metrics.auto_margins(np.array([0.1345, 0.285]), 0.225)
    assert 0.0 in g and g[0] <= 0.1345 - 0.225 and g[-1] >= 0.285 - 0.225
    assert np.allclose(np.diff(g), g[1] - g[0])


# ----------------------------------------------------------------------------- sigma

def test_sigma_table(demo):
    [d] = run_json("sigma", demo)
    rows = {r["sigma"]: r for r in d["rows"]}
    # sigma 0.01: candidates 0, 2, 4 -> 0.1, 0.2, 0.5 ; 0.02: 1, 3, 5 -> 0.2, 0.3, 0.4 ; base 0.2
    assert rows[0.01]["count"] == 3 and rows[0.01]["mean"] == pytest.approx(0.8 / 3)
    assert rows[0.01]["above_base"] == pytest.approx(1 / 3) and rows[0.01]["at_least_base"] == pytest.approx(2 / 3)
    assert rows[0.02]["q0"] == pytest.approx(0.2) and rows[0.02]["q100"] == pytest.approx(0.4)
    assert rows[0.02]["at_least_base"] == 1.0 and rows[0.02]["above_base"] == pytest.approx(2 / 3)
    assert rows["all"]["count"] == 6 and rows["all"]["q50"] == pytest.approx(0.25)


# ----------------------------------------------------------------------------- discordance

def test_discordance_identical_independent_anticorrelated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    assert metrics.discordance(np.column_stack([x, x, 2 * x + 1]))["D"] == pytest.approx(0.0)
    big = metrics.discordance(rng.normal(size=(20000, 3)))
    assert big["D"] == pytest.approx(1.0, abs=0.03) and big["bound"] == 1.5
    anti = metrics.discordance(np.column_stack([x, -x]))
    assert anti["D"] == pytest.approx(2.0) and anti["bound"] == 2.0
    for seed in range(30):                                   # never above M/(M-1), whatever the structure
        r = np.random.default_rng(seed)
        m = int(r.integers(2, 6))
        base = r.normal(size=(40, 1))
        cols = r.normal(size=(40, m)) + base * r.choice([-3.0, 3.0], size=m)
        d = metrics.discordance(np.round(cols, 1))          # rounding makes ties
        assert d["D"] <= d["bound"] + 1e-12


def test_discordance_constant_column_and_ties():
    assert metrics.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    with pytest.raises(metrics.ConstantColumn) as e:
        metrics.discordance(np.column_stack([np.arange(5.0), np.ones(5)]))
    assert e.value.columns == [1]


def test_discordance_command_files_and_splits(tmp_path, demo):
    same = make_results(tmp_path / "other-task", hits=(5, 4, 3, 2, 1, 0))     # same seeds and sigmas, reversed ranking
    d = run_json("discordance", demo, same)
    assert d["M"] == 2 and d["bound"] == 2.0 and d["D"] > 1.5 and [r["sigma"] for r in d["rows"]] == [0.01, 0.02, "all"]
    code, _, err = run("discordance", demo, make_results(tmp_path / "pop1", seed=1))
    assert code == 2 and err.count("\n") == 1 and "not the same population" in err and "population/seed" in err
    split = run_json("discordance", make_results(tmp_path / "wide", hits=(1, 6, 7, 3, 9, 10)), "--splits", "2")
    assert split["kind"] == "reliability" and split["M"] == 2 and 0 < split["r_mean"] <= 1
    assert "not a discordance" in split["label"]
    # 10 examples in 2 blocks of 5: candidate hits are a prefix, so block 2 is constant (all zero) except for 5+ hits
    code, _, err = run("discordance", make_results(tmp_path / "flat", hits=(1, 2, 3, 4)), "--splits", "2")
    assert code == 2 and "same accuracy" in err and "train block 2/2" in err
    code, _, err = run("discordance", demo)
    assert code == 2 and "--splits" in err


def test_split_scores():
    r = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=np.float32)
    assert metrics.split_scores(r, 2).tolist() == [[2 / 3, 0.5], [0.0, 1.0]]
    with pytest.raises(ValueError):
        metrics.split_scores(r, 6)


# ----------------------------------------------------------------------------- vote, coverage

def test_vote_and_coverage_per_k():
    acc, per_k = metrics.vote_curve(KEYS, np.array(CORRECT))
    # item 0: a | a,b tie -> a | b,b beat a | 2-2 tie -> a (first)       -> T F... per k: T T F T
    # item 1: abstain | abstain | c (wrong) | c,d tie -> c (wrong)        -> F F F F
    # item 2: x wrong | x,y tie -> x | y | y                                -> F F T T
    # item 3: abstain | z right | z | z                                     -> F T T T
    assert [list(map(bool, v)) for v in per_k] == [[True, False, False, False], [True, False, False, True],
                                                  [False, False, True, True], [True, False, True, True]]
    assert acc.tolist() == VOTE_ACC
    assert metrics.coverage_curve(np.array(CORRECT)).tolist() == COVERAGE


def test_kcurve_command_matches_stored_vote(demo, tmp_path):
    [d] = run_json("kcurve", demo)
    assert d["selected"]["accuracy"] == VOTE_ACC and d["selected"]["coverage"] == COVERAGE
    assert d["selected"]["matches_stored"] and d["control"]["matches_stored"]
    with h5py.File(demo) as f:
        for g in ("selected", "control"):
            for k, acc in zip(f[f"ensemble/{g}/k"][()], f[f"ensemble/{g}/accuracy"][()]):
                assert d[g]["accuracy"][k - 1] == pytest.approx(acc)
    bad = make_results(tmp_path / "bad")
    with h5py.File(bad, "r+") as f:
        f["ensemble/selected/voted_correct"][1] = ~f["ensemble/selected/voted_correct"][1]
    [d] = run_json("kcurve", bad)
    assert not d["selected"]["matches_stored"] and d["selected"]["mismatched_k"] == [3]
    code, out, _ = run("kcurve", bad)
    assert code == 0 and "NO, differs at K = [3]" in out


# ----------------------------------------------------------------------------- pass@k

def _pass_by_enumeration(ok: np.ndarray, k: int) -> float:
    n = ok.shape[0]
    subsets = list(itertools.combinations(range(n), k))
    return float(np.mean([np.mean([ok[list(s), t].any() for s in subsets]) for t in range(ok.shape[1])]))


def test_pass_at_k_against_enumeration():
    rng = np.random.default_rng(1)
    ok = rng.random((7, 9)) < 0.3
    ok[:, 0] = False
    ok[:, 1] = True
    curve = metrics.pass_at_k_curve(ok)
    for k in range(1, 8):
        assert curve[k - 1] == pytest.approx(_pass_by_enumeration(ok, k))
        c = ok.sum(axis=0)
        assert curve[k - 1] == pytest.approx(np.mean([1 - math.comb(7 - ci, k) / math.comb(7, k) for ci in c]))
    assert curve[-1] == pytest.approx(ok.any(axis=0).mean())     # k = n: coverage of everyone


def test_passk_command_members_and_base_samples(demo, tmp_path):
    [d] = run_json("passk", demo)
    assert "samples" not in d and d["selected"]["n"] == 4
    assert d["selected"]["coverage"] == COVERAGE and d["selected"]["vote"] == VOTE_ACC
    samples = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    keys = np.array([["r", "r", "w", ""], ["r", "r", "", ""], ["w", "w", "", ""]], dtype=object)
    path = make_results(tmp_path / "samples", extra={"base/test_samples_correct": samples,
                                                    "base/test_samples_key_correct": keys == "r",
                                                    "base/test_samples_key": keys})
    [s] = run_json("passk", path)
    assert s["samples"]["pass_at_k"] == pytest.approx([_pass_by_enumeration(samples, k) for k in (1, 2, 3)])
    # Key "r" is the right one. TT-MV@1: 4 right keys in 12. TT-MV@2 votes samples 0 and 1 (one block):
    # r, r, w, abstain -> 2 of 4. TT-MV@3: r|r|w -> r, r|r|w -> r, w, abstain -> 2 of 4.
    assert s["samples"]["tt_mv"] == pytest.approx([4 / 12, 0.5, 0.5])
    code, out, _ = run("passk", path)
    assert code == 0 and "base pass@k" in out and "selected coverage" in out


# ----------------------------------------------------------------------------- summary, merge

def test_summary_numbers(demo):
    [s] = run_json("summary", demo)
    assert s["sizes"] == {"N": 6, "M_train": 10, "T_test": 4, "world_size": 2, "K": [1, 3]}
    base, best = s["models"][0], s["models"][1]
    assert base["train_acc"] == pytest.approx(0.2) and base["test_acc"] == 0.25
    assert best["model"] == "best single (#4)" and best["train_acc"] == pytest.approx(0.5)
    assert best["test_acc"] == pytest.approx(0.25)          # member 0's row of the hand-made answers
    assert [r["model"] for r in s["models"][2:]] == ["top-1 vote", "control-1 vote", "top-3 vote",
                                                     "top-3 coverage (oracle)", "control-3 vote",
                                                     "control-3 coverage (oracle)"]
    assert all(r["low"] <= r["test_acc"] <= r["high"] for r in s["models"])
    assert s["models"][4]["test_acc"] == VOTE_ACC[2] and s["models"][5]["test_acc"] == COVERAGE[2]
    diffs = {(d["a"], d["b"]): d["diff"] for d in s["differences"]}
    assert diffs[("top-3 vote", "base (greedy)")] == pytest.approx(VOTE_ACC[2] - 0.25)
    assert [t["idle"] for t in s["timing"]] == [1.0, 21.0]
    assert s["imbalance"] == pytest.approx(1.5)
    code, out, _ = run("summary", demo)
    assert code == 0 and "imbalance (max busy / mean busy): 1.500" in out


def test_merge_keeps_only_differing_keys(tmp_path):
    a = make_results(tmp_path / "s0", seed=0)
    b = make_results(tmp_path / "s1", seed=1, config={"population": {"sigmas": [0.5]}})
    c = make_results(tmp_path / "s2", seed=2, ks=(1, 3, 4))
    d = run_json("merge", a, b, c)
    assert d["differing_keys"] == ["population.seed", "population.sigmas", "selection.top_k"]
    assert [r["overrides"]["population.seed"] for r in d["runs"]] == ["0", "1", "2"]
    assert d["runs"][2]["top"] == {"1": 0.25, "3": 0.5, "4": 0.75}
    code, out, _ = run("merge", a, b, c)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("| path | population.seed | population.sigmas | selection.top_k | N |")
    assert "output.dir" not in out and "top-4 test" in lines[0] and len(lines) == 5
    newer = make_results(tmp_path / "newer", config={"runtime": {"added_later": 1}, "output": {"overwrite": True}})
    d = run_json("merge", a, newer)
    assert d["differing_keys"] == [] and d["keys_not_in_every_file"] == ["runtime.added_later"]
    code, out, _ = run("merge", "--csv", a, b)
    assert out.splitlines()[0] == ("path,population.seed,population.sigmas,N,base test,best single test,"
                                   "top-1 test,top-3 test,control-1 test,control-3 test")


# ----------------------------------------------------------------------------- compare

def test_compare_says_which_results_differ_and_exits_1(demo, tmp_path):
    same = make_results(tmp_path / "same")
    code, out, _ = run("compare", demo, same)
    from randopt_hpc.results import comparable

    assert code == 0 and out.startswith(f"{len(comparable(demo))} datasets, 0 differ"), out
    other = make_results(tmp_path / "other")
    with h5py.File(other, "r+") as f:
        keys = f["ensemble/selected/test_key"]
        row = keys[2].astype(object)
        row[1] = b"q"
        keys[2] = row
        f["timing/busy"][0] = 99.0      # timing is not a result: not compared
    code, out, _ = run("compare", demo, other)
    assert code == 1, out
    assert out.splitlines()[1:] == ["  ensemble/selected/test_key: 1 of 16 elements differ; at [2, 1]: 'c' vs 'q'"]
    d = json.loads(run("compare", demo, other, "--json")[1])
    assert [r["dataset"] for r in d["differing"]] == ["ensemble/selected/test_key"] and d["only_in_one"] == []


# ----------------------------------------------------------------------------- errors

def test_schema_mismatch_exits_2_with_one_line(tmp_path):
    path = make_results(tmp_path / "v99")
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 99
    p = subprocess.run([sys.executable, "-m", "tools.analyze", "summary", path], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("analyze: error: ") and "version 99" in p.stderr


@pytest.mark.parametrize("kind", ["missing", "text", "bare-hdf5", "truncated"])
def test_unreadable_files_exit_2_with_one_line(tmp_path, kind):
    path = tmp_path / "x.h5"
    if kind == "text":
        path.write_text("not hdf5")
    elif kind == "bare-hdf5":
        h5py.File(path, "w").close()
    elif kind == "truncated":
        path = make_results(tmp_path / "t")
        with h5py.File(path, "r+") as f:
            del f["ensemble"]
    for command in ("summary", "kcurve", "sigma", "density", "passk", "merge", "thicket", "plot", "compare"):
        extra = {"plot": ["--out", tmp_path / "p"], "compare": [path]}.get(command, [])
        code, out, err = run(command, path, *extra)
        assert code == 2 and out == "", (command, out)
        assert err.startswith("analyze: error: ") and err.count("\n") == 1, (command, err)


def test_usage_errors_are_one_line():
    code, out, err = run()
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("analyze: error: missing command (")
    code, _, err = run("frobnicate", "x")
    assert code == 2 and err.count("\n") == 1 and "commands: compare, density, discordance, es, halving, kcurve" in err
    code, _, err = run("density", "--margins", "a,b", "x")
    assert code == 2 and err.count("\n") == 1 and "--margins" in err


@pytest.mark.parametrize("argv,match", [
    (["halving", "--keep", "nan"], "'--keep': 'nan' is not a finite number"),
    (["scale", "--slow-share", "nan"], "'--slow-share': 'nan' is not a finite number"),
    (["scale", "--slow-factor", "inf"], "'--slow-factor': 'inf' is not a finite number"),
    (["es", "--tolerance", "nan"], "'--tolerance': 'nan' is not a finite number"),
    (["plot", "--dpi", "0"], "'--dpi': 0 is not in the range 10<=x<=1200"),
    (["plot", "--dpi", "100000"], "'--dpi': 100000 is not in the range"),   # gigapixels, not an error
    (["es", "--dpi", "-5"], "'--dpi': -5 is not in the range"),
    (["density", "--on", "score", "--steps", "99999999999"], "'--steps': 99999999999 is not in the range 2<=x<=10000"),
    (["density", "--margins", "nan"], "'--margins': expected comma-separated numbers in [-100, 100], got 'nan'"),
    (["density", "--margins", "-1,inf"], "got '-1,inf'"),
    (["scale", "--ranks", "99999999999"], "'--ranks': expected comma-separated integers in [1, 100000]"),
    (["scale", "--n", "99999999999"], "'--n': expected comma-separated integers in [1, 10000000]"),
    (["scale", "--members", "99999999999"], "'--members': 99999999999 is not in the range"),
    (["scale", "--seed", "-1"], "'--seed': -1 is not in the range"),
    (["plot", "--out", ""], "'--out': '': an empty path"),
    (["plot", "--out", __file__], f"'--out': {__file__}: exists and is not a folder"),
    (["es", "--out", "/proc/randopt-analyze"], "'--out': /proc/randopt-analyze: cannot write there"),
])
def test_numbers_out_of_range_exit_2_with_one_line(demo, tmp_path, argv, match):
    """nan passes every bound of click's FloatRange; a dpi of 0 or 10^5 reached matplotlib (a traceback,
    or gigabytes of pixels)."""
    extra = ["--out", tmp_path / "p"] if argv[0] == "plot" and "--out" not in argv else []
    code, out, err = run(*argv, demo, *extra)
    assert code == 2 and out == "" and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "p").exists()


def test_every_command_json_is_valid(demo, tmp_path):
    for command in ("summary", "kcurve", "sigma", "density", "passk", "merge", "thicket"):
        code, out, err = run(command, demo, demo, "--json")
        assert code == 0, err
        json.loads(out)
    json.loads(run("discordance", demo, demo, "--json")[1])


# ----------------------------------------------------------------------------- across runs (real fake-backend runs)

# Student's t, 0.975 quantile (two-sided 95%), from printed tables
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 6: 2.4469, 10: 2.2281, 30: 2.0423, 120: 1.9799}


def test_t_quantile_and_seed_stats():
    for df, want in T975.items():
        assert metrics.t_quantile(0.95, df) == pytest.approx(want, abs=1e-4)
    assert metrics.t_quantile(0.90, 5) == pytest.approx(2.0150, abs=1e-4)
    st = metrics.seed_stats([0.2, None, 0.3, 0.4])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert st["n"] == 3 and st["mean"] == pytest.approx(0.3) and st["std"] == pytest.approx(0.1)
    assert (st["min"], st["max"]) == (0.2, 0.4)
    assert st["low"] == pytest.approx(0.3 - half) and st["high"] == pytest.approx(0.3 + half)
    one = metrics.seed_stats([0.25])
    assert one["mean"] == 0.25 and one["std"] is one["low"] is one["high"] is None
    assert metrics.seed_stats([None])["n"] == 0
    assert metrics.pearson([1, 2, 3], [1, 1, 1]) is None and metrics.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == 1.0
    assert metrics.fisher_interval(0.5, 3) == (None, None)
    lo, hi = metrics.fisher_interval(0.5, 30)
    assert lo < 0.5 < hi and hi - 0.5 < 0.5 - lo          # skewed towards 0


def fake_run(tmp, out, **sections):
    """results.h5 of run() on the fake backend (tests/fakes.py): real files in milliseconds."""
    from randopt_hpc.comm import SerialComm, StopFlag
    from randopt_hpc.config import load_config
    from randopt_hpc.data import load_examples
    from randopt_hpc.environment import Environment
    from randopt_hpc.run import run as run_job
    from tests.fakes import FakeBackend, fake_config, quiet_log

    cfg = load_config(str(fake_config(tmp, out, **sections)), [])
    train, test = load_examples(cfg)
    run_job(cfg, SerialComm(), Environment.from_os({}), quiet_log(), train, test, StopFlag(), backend=FakeBackend())
    return tmp / out / "results.h5"


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    """Scans (every candidate answers the test set) at N = 8 and 16, population seeds 0, 1, 2; and N = 16 at
    another σ set, seeds 0 and 1."""
    tmp = tmp_path_factory.mktemp("sweep")
    runs = {(n, s, "base"): fake_run(tmp, f"n{n}-s{s}", population={"size": n, "seed": s},
                                     selection={"control_size": n})
            for n in (8, 16) for s in (0, 1, 2)}
    for s in (0, 1):
        runs[(16, s, "wide")] = fake_run(tmp, f"wide-s{s}", population={"size": 16, "seed": s, "sigmas": [0.05]},
                                         selection={"control_size": 16})
    return runs


def stored_accuracy(path, group, k):
    with h5py.File(path) as f:
        return float(f[f"ensemble/{group}/accuracy"][list(f[f"ensemble/{group}/k"][()]).index(k)])


def test_merge_over_seeds_on_real_runs(sweep_runs):
    files = [sweep_runs[(n, s, "base")] for n in (8, 16) for s in (0, 1, 2)]
    d = run_json("merge", *files)
    assert d["differing_keys"] == ["population.seed", "population.size", "selection.control_size"]
    g = d["over_seeds"]
    assert g["keys"] == ["population.size", "selection.control_size"] and "t(0.975, n−1)" in g["interval"]
    assert [grp["seeds"] for grp in g["groups"]] == [[0, 1, 2], [0, 1, 2]]
    assert [grp["N"] for grp in g["groups"]] == [8, 16]
    for grp, n in zip(g["groups"], (8, 16)):
        rows = {r["quantity"]: r for r in grp["rows"]}
        assert list(rows)[:2] == ["base (greedy)", "best single"]
        for k in (1, 3, 5):
            top = [stored_accuracy(sweep_runs[(n, s, "base")], "selected", k) for s in (0, 1, 2)]
            ctrl = [stored_accuracy(sweep_runs[(n, s, "base")], "control", k) for s in (0, 1, 2)]
            r = rows[f"top-{k} vote"]
            assert r["values"] == pytest.approx(top) and r["mean"] == pytest.approx(np.mean(top))
            assert r["std"] == pytest.approx(np.std(top, ddof=1)) and (r["min"], r["max"]) == (min(top), max(top))
            half = 4.302652729911275 * np.std(top, ddof=1) / math.sqrt(3)
            assert (r["low"], r["high"]) == pytest.approx((np.mean(top) - half, np.mean(top) + half))
            diff = rows[f"top-{k} − control-{k}"]
            assert diff["values"] == pytest.approx(np.subtract(top, ctrl).tolist())
            assert f"σ-matched control-{k} vote" in rows and f"top-{k} − σ-matched control-{k}" in rows
    code, out, _ = run("merge", *files)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 + 6 + 1 + 1 + 2 + 2 * len(g["groups"][0]["rows"])
    assert lines[9].startswith("over population seeds") and "t(0.975, n−1)" in lines[9]
    assert lines[10] == ("| population.size | selection.control_size | seeds | N | quantity | n | mean | std | min "
                         "| max | 95% low | 95% high |")
    assert lines[12].startswith("| 8 | 8 | 0 1 2 | 8 | base (greedy) | 3 | ")
    code, out, _ = run("merge", "--over-seeds", "--csv", *files)
    assert out.splitlines()[0] == ("population.size,selection.control_size,seeds,N,quantity,n,mean,std,min,max,"
                                   "95% low,95% high")
    assert len(out.splitlines()) == 1 + 2 * len(g["groups"][0]["rows"])
    code, out, _ = run("merge", "--over-seeds", *files)
    assert out.startswith("over population seeds")


def test_merge_over_seeds_one_run_per_group_and_repeated_seeds(tmp_path, demo):
    one = run_json("merge", make_results(tmp_path / "a", seed=0), make_results(tmp_path / "b", seed=1, ks=(1,)))
    groups = one["over_seeds"]["groups"]
    assert len(groups) == 2 and all(r["n"] == 1 and r["std"] is None and r["low"] is None
                                    for grp in groups for r in grp["rows"] if r["mean"] is not None)
    code, out, _ = run("merge", demo, demo)
    assert code == 0 and "note: population.seed 0 appears more than once" in out


def test_thicket_on_a_scan(sweep_runs, demo, tmp_path):
    path = sweep_runs[(16, 0, "base")]
    [d] = run_json("thicket", path)
    with h5py.File(path) as f:
        idx = f["ensemble/control/members"][()]
        acc = f["ensemble/control/test_correct"][()].mean(axis=1)
        base = f["base/test_correct"][()].mean()
        score, sig = f["population/train_score"][()][idx], f["population/sigma"][()][idx]
    assert d["scan"] and d["candidates"] == d["N"] == 16 and "every candidate" in d["source"]
    assert d["base_test_acc"] == pytest.approx(base)

    def ranks(x):
        values = sorted(set(x.tolist()))
        first = {v: sum(1 for y in x if y < v) for v in values}
        return np.array([first[v] + (np.sum(x == v) + 1) / 2 for v in x])

    for r in d["rows"]:
        mask = np.ones(16, bool) if r["sigma"] == "all" else sig == r["sigma"]
        assert r["n"] == mask.sum() and r["at_least_base"] == pytest.approx(np.mean(acc[mask] >= base - 1e-12))
        assert r["above_base"] == pytest.approx(np.mean(acc[mask] > base + 1e-12))
        assert r["best_test"] == pytest.approx(acc[mask].max())
        assert r["at_least_low"] <= r["at_least_base"] <= r["at_least_high"]
        assert r["pearson"] == pytest.approx(np.corrcoef(score[mask], acc[mask])[0, 1])
        assert r["spearman"] == pytest.approx(np.corrcoef(ranks(score[mask]), ranks(acc[mask]))[0, 1])
    code, out, _ = run("thicket", path)
    assert code == 0 and "Pearson r [95%]" in out and out.splitlines()[1].endswith("every candidate (a scan run)")
    [small] = run_json("thicket", demo)
    assert not small["scan"] and small["source"].endswith("only the 4 control members of 6 candidates")
    no_control = make_results(tmp_path / "no-control")
    with h5py.File(no_control, "r+") as f:
        del f["ensemble/control"]
    code, _, err = run("thicket", no_control)
    assert code == 2 and err.count("\n") == 1 and "selection.control_size = population.size" in err


def test_titles_name_model_task_n_sigma_and_seed(sweep_runs):
    path = sweep_runs[(8, 1, "base")]
    [k] = run_json("kcurve", path)
    assert k["title"] == "model model · countdown_qa · N=8 · σ 0.01, 0.02 · seed 1 · run n8-s1"
    assert run("sigma", path)[1].splitlines()[0] == k["title"]


def png(path) -> bytes:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    return data


def test_plot_several_runs(sweep_runs, tmp_path):
    pytest.importorskip("matplotlib")
    base = [sweep_runs[(n, s, "base")] for n in (8, 16) for s in (0, 1, 2)]
    paths = run_json("plot", *base, "--out", tmp_path / "n")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["nscale.png", "kcurves.png"]
    for p in paths:
        png(p)
    wide = [sweep_runs[(16, s, "wide")] for s in (0, 1)]
    paths = run_json("plot", *base, *wide, "--out", tmp_path / "both", "--band", "ci")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["nscale.png", "sigma.png", "kcurves.png"]
    code, out, err = run("plot", *base[:3], "--out", tmp_path / "seeds")
    assert code == 0 and out.splitlines() == [str(tmp_path / "seeds" / "kcurves.png")], err


def test_sweep_series_families_and_titles(sweep_runs):
    from tools import runfile, sweep

    files = [sweep_runs[(n, s, "base")] for n in (8, 16) for s in (0, 1, 2)] + \
        [sweep_runs[(16, s, "wide")] for s in (0, 1)]
    recs = []
    for p in files:
        with runfile.open_results(str(p)) as f:
            recs.append(sweep.record(f, str(p), with_curves=True))
    g = sweep.group(recs)
    n = sweep.sweep(g, sweep.SIZE)
    # control_size = N in a scan rides along with N; the σ set makes a family of its own
    assert n["along"] == ["selection.control_size"] and n["family_keys"] == ["population.sigmas"]
    assert n["values"] == ["8", "16"] and len(n["families"]) == 2
    sig = sweep.sweep(g, sweep.SIGMAS)
    assert sig["values"] == ["[0.01, 0.02]", "[0.05]"]
    assert sig["family_keys"] == ["population.size", "selection.control_size"] and len(sig["families"]) == 2
    assert sweep.sweep(sweep.group(recs[:3]), sweep.SIZE) is None
    assert sweep.describe(recs) == ("model model · countdown_qa · N=8–16 · σ 0.01, 0.02 | 0.05 · seeds 0 1 2 "
                                    "(8 runs)")
    lines = sweep.overlay(g)
    assert [ln["label"] for ln in lines] == ["sigmas=[0.01, 0.02], size=8, control_size=8",
                                             "sigmas=[0.01, 0.02], size=16, control_size=16",
                                             "sigmas=[0.05], size=16, control_size=16"]
    assert lines[0]["selected"]["k"] == [1, 2, 3, 4, 5] and lines[0]["control"]["k"] == [1, 2, 3, 4, 5]
    assert lines[0]["selected"]["stats"][0]["n"] == 3


def test_plot_refuses_runs_of_other_tasks_or_models(sweep_runs, tmp_path):
    code, out, err = run("plot", sweep_runs[(8, 0, "base")], make_results(tmp_path / "cd"), "--out", tmp_path / "p")
    assert code == 2 and out == "" and err.count("\n") == 1 and "different tasks" in err
    a = make_results(tmp_path / "m1", config={"model": {"path": "models/one"}})
    b = make_results(tmp_path / "m2", config={"model": {"path": "/elsewhere/two/"}})
    code, _, err = run("plot", a, b, "--out", tmp_path / "p")
    assert code == 2 and err.count("\n") == 1 and "different models" in err and "one (" in err and "two (" in err
    code, _, err = run("plot", a, a, "--samples-from", a, "--out", tmp_path / "p")
    assert code == 2 and "--samples-from goes with one FILE" in err
