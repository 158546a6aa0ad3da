"""The 1-D toy (issue 19): the signals, the toy_signal task, the MLP backend, its pretraining, and one whole run."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from randopt_hpc import noise, signals
from randopt_hpc.backends.mlp import MLPBackend, load_mlp
from randopt_hpc.sampling import Sampling
from randopt_hpc.tasks import get_task
from randopt_hpc.tasks.toy import BAD_REWARD, CORRECT_MSE, ToySignal, combine, key_correct, score
from tests.conftest import ROOT, child_env
from tools.pretrain_toy import pretrain

CTX, FUT = 10, 60


# ---------------------------------------------------------------------------- signals
@pytest.mark.parametrize("name", [n for n, f in signals.FAMILIES.items() if not f.fixed])
def test_random_families_draw_each_parameter_in_its_range_and_rows_differ(name):
    rows = signals.draw(name, 300, seed=5)
    fam = signals.FAMILIES[name]
    for key, (lo, hi) in fam.ranges.items():
        got = np.array([p[key] for _, p in rows])
        assert lo <= got.min() and got.max() <= hi and got.max() - got.min() > 0.8 * (hi - lo)
    ctx, fut = signals.windows(name, 300, 5, CTX, FUT)
    assert ctx.shape == (300, CTX) and fut.shape == (300, FUT) and ctx.dtype == np.float64
    assert len({tuple(r) for r in ctx}) == 300
    assert np.isfinite(ctx).all() and np.abs(np.concatenate([ctx, fut], 1)).max() < 3.5


def test_the_curves_are_the_reference_formulas_on_its_grid():
    x = signals.grid(CTX, FUT)
    assert x[0] == -2.5 and np.allclose(np.diff(x), 0.1) and len(x) == CTX + FUT
    p = {"phase": 1.0, "amp": 0.9, "y_offset": 0.2, "sharpness": 5.0}
    assert np.allclose(signals.curve("sinusoid", p, x), 0.9 * np.sin(4.0 * x + 1.0) + 0.2)
    assert np.allclose(signals.curve("squarewave", p, x), 0.9 * np.tanh(5.0 * np.sin(4.0 * x + 1.0)) + 0.2)
    assert np.allclose(signals.curve("sigmoid", p, x), 0.9 * np.tanh(0.1 * x + 1.0) + 0.2)
    t = 4.0 * x + 1.0
    saw = np.sin(t) - 0.5 * np.sin(2 * t) + 0.33 * np.sin(3 * t) - 0.25 * np.sin(4 * t)
    assert np.allclose(signals.curve("sawtooth", p, x), 0.9 * saw * 0.5 + 0.2)
    harm = 0.9 * (0.5 * np.sin(4.0 * x + 1.0) + 0.3 * np.sin(8.0 * x)) + 0.2
    assert np.allclose(signals.curve("harmonic", p, x), harm)
    ctx, fut = signals.windows("one_line", 1, 0, CTX, FUT)
    assert np.allclose(np.concatenate([ctx[0], fut[0]]), -0.25 * x)


@pytest.mark.parametrize("name", ["mixed", "sinusoid", "one_squarewave"])
def test_rows_are_a_prefix_of_the_longer_stream(name):
    short, long_ = signals.windows(name, 5, 7, CTX, FUT), signals.windows(name, 40, 7, CTX, FUT)
    assert all(np.array_equal(a, b[:5]) for a, b in zip(short, long_))
    mid = signals.windows(name, 3, 7, CTX, FUT, start=2)
    assert all(np.array_equal(a, b[2:5]) for a, b in zip(mid, long_))


@pytest.mark.parametrize("name", ["one_line", "one_sinusoid", "one_squarewave"])
def test_fixed_families_are_one_curve(name):
    ctx, fut = signals.windows(name, 20, 3, CTX, FUT)
    assert (ctx == ctx[0]).all() and (fut == fut[0]).all()
    assert np.array_equal(signals.windows(name, 1, 99, CTX, FUT)[1], fut[:1])   # whatever the seed


def test_seeds_and_streams_give_other_rows_and_a_mixture_draws_only_its_families():
    a = signals.windows("sinusoid", 10, 0, CTX, FUT)[0]
    assert not np.isclose(a, signals.windows("sinusoid", 10, 1, CTX, FUT)[0]).all(axis=1).any()
    other = signals.windows("sinusoid", 10, 0, CTX, FUT, stream=signals.PRETRAIN_STREAM)[0]
    assert not np.isclose(a, other).all(axis=1).any()
    drawn = [f for f, _ in signals.draw("mixed", 300, 0)]
    assert set(drawn) == set(signals.MIXTURES["mixed"])
    assert set(f for f, _ in signals.draw("mixed_no_sinusoid", 100, 0)) <= set(signals.MIXTURES["mixed_no_sinusoid"])


def test_unknown_names_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match=r"unknown signal 'sinus'; valid: line, sigmoid, .*mixed"):
        signals.windows("sinus", 3, 0, CTX, FUT)
    with pytest.raises(ValueError, match="unknown signal family 'mixed'"):
        signals.curve_params("mixed", np.random.default_rng(0))
    for bad in (dict(n=-1), dict(ctx=0), dict(seed=-2), dict(n=True)):
        with pytest.raises(ValueError):
            signals.windows(**{"name": "line", "n": 2, "seed": 0, "ctx": 3, "fut": 2, **bad})


# ---------------------------------------------------------------------------- the task
def test_settings_come_from_the_template():
    t = get_task("toy_signal", template="family=mixed ctx=4 fut=3")
    assert (t.family, t.ctx, t.fut) == ("mixed", 4, 3)
    t = get_task("toy_signal")
    assert (t.family, t.ctx, t.fut) == ("sinusoid", 10, 60)
    assert ToySignal("fut=7").fut == 7
    for bad, why in [("family=sinus", "family=sinus: unknown signal"), ("ctx=ten", "'ctx=ten': ctx must be"),
                     ("ctx=0", "ctx must be"), ("size=3", "'size=3' is not one of"),
                     ("ctx=3 ctx=4", "ctx is given twice"),
                     ("sinusoid", "'sinusoid' is not one of")]:
        with pytest.raises(ValueError, match=why):
            ToySignal.check_template(bad)


def test_records_and_examples():
    t = ToySignal("family=mixed ctx=4 fut=3")
    rows = t.synthetic_records(6, 2)
    assert rows[:2] == t.synthetic_records(2, 2)
    assert [r["id"] for r in rows] == [f"toy-2-{i}" for i in range(6)]
    assert all(r["family"] in signals.MIXTURES["mixed"] and len(r["context"]) == 4 and len(r["future"]) == 3
               for r in rows)
    ex = t.examples_from_records(rows)
    assert json.loads(ex[0].prompt) == rows[0]["context"] and ex[0].truth == rows[0]["future"]
    assert ex[0].target == 0.0 and ex[0].stop_strings == () and ex[0].messages == (("user", ex[0].prompt),)
    for bad, field in [({"context": [1, 2, 3], "future": [1, 2, 3]}, "context"),
                       ({"context": [1, 2, 3, 4], "future": [1, 2, float("nan")]}, "future"),
                       ({"context": [1, 2, 3, True], "future": [1, 2, 3]}, "context"),
                       ({"context": "1 2 3 4", "future": [1, 2, 3]}, "context")]:
        with pytest.raises(ValueError, match=f"row 0: field '{field}'"):
            t.examples_from_records([bad])


@pytest.fixture(scope="module")
def example():
    t = ToySignal("family=sinusoid ctx=4 fut=3")
    return t.examples_from_records([{"context": [0.0, 0.1, 0.2, 0.3], "future": [0.5, 0.25, -0.5]}])[0]


def test_scores_of_good_and_bad_rollouts(example):
    exact = score("[0.5, 0.25, -0.5]", example)
    assert exact.reward == 0.0 and exact.correct and exact.key == exact.answer == "[0.5, 0.25, -0.5]"
    near = score("[0.6,0.25,-0.5]", example)   # mse 0.01/3
    assert math.isclose(near.reward, -0.01 / 3) and near.correct and near.key == "[0.6, 0.25, -0.5]"
    far = score("[1.5, 1.25, 0.5]", example)
    assert far.reward == -1.0 and not far.correct and far.key is not None
    assert score("[0.5, 0.25, -0.4]", example).correct == (0.01 / 3 < CORRECT_MSE)
    huge = score("[1e300, 0, 0]", example)   # a real rollout, but no better than junk
    assert huge.reward == BAD_REWARD and huge.key is not None


@pytest.mark.parametrize("text", ["", "nope", "[0.5, 0.25]", "[0.5, 0.25, -0.5, 1]", "[NaN, 0, 0]",
                                  "[Infinity, 0, 0]", "[1e999, 0, 0]", "[[0.5], 0.25, -0.5]", "[true, 0, 0]",
                                  '["0.5", 0, 0]', '{"a": 1}', "0.5", "null", "[" * 100_000 + "]" * 100_000,
                                  "[" + "9" * 400 + ", 0, 0]", "[" + "9" * 5000 + ", 0, 0]", None, 3.5])
def test_hostile_completions_score_as_junk(example, text):
    s = score(text, example)
    assert (s.reward, s.correct, s.key, s.answer) == (BAD_REWARD, False, None, None)


def test_combine_is_the_mean_of_the_rollouts_and_key_correct_judges_one(example):
    a, b = "[0.0, 1.0, 2.0]", "[1.0, 0.0, -1.0]"
    assert combine([a, None, b]) == json.dumps([0.5, 0.5, 0.5])
    assert combine([a]) == a and combine([None, None]) is None and combine([]) is None
    assert combine([a, "[1.0]"]) is None   # score gives one length per example; anything else has no mean
    assert combine([a, "junk"]) == a
    assert combine([b, a]) == combine([a, b])
    assert key_correct("[0.5, 0.25, -0.5]", example) and not key_correct(a, example)
    assert not key_correct("junk", example) and not key_correct("[0.5]", example)
    task = ToySignal()
    assert task.combine is combine and task.key_correct is key_correct


# ---------------------------------------------------------------------------- the MLP backend
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy-mlp")
    pretrain(str(out), "mixed", seed=0, ctx=CTX, steps=30, batch=64, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def examples():
    t = ToySignal(f"family=sinusoid ctx={CTX} fut={FUT}")
    return t.examples_from_records(t.synthetic_records(12, 0))


@pytest.fixture()
def backend(model_dir):
    return MLPBackend(str(model_dir), max_new_tokens=FUT, batch_size=5)


def test_rollouts_are_json_of_the_right_length(backend, examples):
    out = backend.complete(examples)
    assert len(out) == len(examples)
    for c, ex in zip(out, examples):
        values = json.loads(c.text)
        assert len(values) == FUT and all(isinstance(v, float) and math.isfinite(v) for v in values)
        assert (c.prompt_tokens, c.gen_tokens, c.finish) == (CTX, FUT, "length")
        assert score(c.text, ex).key is not None
    assert backend.generate(examples) == [c.text for c in out]
    with pytest.raises(ValueError, match="greedily only"):
        backend.complete(examples, Sampling(1.0, 1.0, 0, 0))


def test_perturb_changes_rollouts_restore_is_bitwise_and_a_seed_is_one_model(backend, examples):
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    base = backend.generate(examples)
    backend.perturb(123, 0.01)
    one = backend.generate(examples)
    backend.restore()
    assert all(torch.equal(before[k], v) for k, v in backend.model.state_dict().items())
    assert backend.generate(examples) == base and one != base
    backend.perturb(123, 0.01)
    assert backend.generate(examples) == one
    with pytest.raises(RuntimeError):
        backend.perturb(5, 0.01)
    backend.restore()
    assert backend.n_perturbed_elements() == sum(p.numel() for p in backend.model.parameters()) == 51_073


def test_the_noise_is_randopt_noise_by_tensor_name(backend):
    base = {n: backend._base[n].clone() for n in backend.names}
    backend.perturb(77, 0.003)
    sigma32 = float(np.float32(0.003))
    for n in backend.names:
        want = noise.noise(77, n, base[n].shape, impl="torch") * sigma32 + base[n]
        assert torch.equal(dict(backend.model.named_parameters())[n].data, want), n
    backend.restore()


def test_include_exclude_and_the_checkpoint_names(model_dir):
    b = MLPBackend(str(model_dir), max_new_tokens=FUT, batch_size=5, include=[r"weight$"], exclude=[r"^layers\.8\."])
    assert b.names == [f"layers.{i}.weight" for i in (0, 2, 4, 6)]
    with pytest.raises(ValueError, match="select no weight tensor"):
        MLPBackend(str(model_dir), max_new_tokens=FUT, batch_size=5, include=["nothing"])


def test_a_folder_that_is_not_an_mlp_is_one_line(tmp_path, model_dir):
    with pytest.raises(ValueError, match=r"not an MLP checkpoint: config.json model_type is 'llama'"):
        load_mlp(str(ROOT / "models" / "demo"))
    with pytest.raises(ValueError, match="not an MLP checkpoint: cannot read its config.json"):
        load_mlp(str(tmp_path))
    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:-10])
    with pytest.raises(ValueError, match="cannot read model.safetensors") as e:
        load_mlp(str(tmp_path))
    assert "\n" not in str(e.value)


def test_the_preflight_passes_an_mlp_folder_and_refuses_a_wrong_one(tmp_path, model_dir):
    from randopt_hpc.check import model_problems
    from randopt_hpc.config import load_config

    path = write_config(tmp_path, model_dir)
    assert model_problems(load_config(str(path)))[0] == []
    found = model_problems(load_config(str(path), [f"model.path={ROOT / 'models' / 'demo'}"]))[0]
    assert found == [f"backend: mlp cannot run {ROOT / 'models' / 'demo'} (model_type 'llama'); backend mlp runs "
                     "model_type randopt_mlp and nothing else"]
    cfg = json.loads((model_dir / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "width": 64}))
    (bad / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    (found,) = model_problems(load_config(str(path), [f"model.path={bad}"]))[0]
    assert "are not the MLP it describes" in found and "\n" not in found
    assert model_problems(load_config(str(path), ["model.dtype=bfloat16"]))[0] == \
        ["model.dtype: backend mlp computes in float32; got bfloat16"]


# ---------------------------------------------------------------------------- pretraining
def test_pretraining_is_deterministic_and_records_its_arguments(tmp_path, model_dir):
    meta = pretrain(str(tmp_path / "a"), "mixed", seed=0, ctx=CTX, steps=30, batch=64, log=lambda *_: None)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert meta["trained_steps"] == 30 and meta["pretrain"] == "mixed" and meta["final_loss"] > 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["meta"] == meta
    pretrain(str(tmp_path / "b"), "mixed", seed=1, ctx=CTX, steps=30, batch=64, log=lambda *_: None)
    assert (tmp_path / "b" / "model.safetensors").read_bytes() != (model_dir / "model.safetensors").read_bytes()
    meta = pretrain(str(tmp_path / "c"), "none", seed=0, ctx=CTX, log=lambda *_: None)
    assert meta["trained_steps"] == 0 and meta["final_loss"] is None
    biases = [v for k, v in load_mlp(str(tmp_path / "c")).state_dict().items() if k.endswith("bias")]
    assert all((b == 0).all() for b in biases)
    with pytest.raises(ValueError, match="unknown signal"):
        pretrain(str(tmp_path / "d"), "sinus", log=lambda *_: None)


# ---------------------------------------------------------------------------- one whole run
def write_config(tmp_path, model_dir, **extra):
    cfg = {"model": {"path": str(model_dir), "dtype": "float32"}, "backend": "mlp",
           "task": {"name": "toy_signal", "template": f"family=sinusoid ctx={CTX} fut={FUT}", "train_size": 32,
                    "test_size": 32, "seed": 0},
           "population": {"size": 16, "seed": 0, "sigmas": [0.002]},
           "selection": {"top_k": [1, 4], "control": True},
           "generation": {"max_new_tokens": FUT, "batch_size": 64},
           "output": {"dir": str(tmp_path / "run")}, "runtime": {"threads": 1, "progress_every_s": 1.0}, **extra}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_whole_run_on_the_mlp(tmp_path, model_dir):
    import h5py

    p = subprocess.run([sys.executable, "-m", "randopt_hpc.run", str(write_config(tmp_path, model_dir))], cwd=ROOT,
                       env=child_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    with h5py.File(tmp_path / "run" / "results.h5") as f:
        assert f["population/train_reward"].shape == (16, 32)
        # The base model's train rewards are what this backend and task give in-process.
        train = _train()
        rollouts = MLPBackend(str(model_dir), max_new_tokens=FUT, batch_size=64).complete(train)
        want = [score(c.text, ex).reward for c, ex in zip(rollouts, train)]
        assert np.allclose(f["base/train_reward"][()], want, rtol=1e-6, atol=1e-9)
        assert f["ensemble/selected/voted_key"].shape == (2, 32)


def _train():
    t = ToySignal(f"family=sinusoid ctx={CTX} fut={FUT}")
    return t.examples_from_records(t.synthetic_records(64, 0))[:32]


def test_the_ensemble_of_a_regression_task_is_the_mean_of_its_members_rollouts():
    from types import SimpleNamespace

    from randopt_hpc import vote
    from randopt_hpc.tasks.toy import ToySignal

    task = ToySignal()
    truth = [[1.0, 1.0], [0.0, 0.0]]
    examples = [SimpleNamespace(truth=t) for t in truth]
    keys = {0: ["[0.9, 1.1]", "[3.0, 3.0]"], 1: ["[1.1, 0.9]", None], 2: ["[5.0, 5.0]", "[-3.0, -3.0]"]}
    answers = {m: SimpleNamespace(keys=k, correct=[False, False]) for m, k in keys.items()}
    v = vote.vote_ensemble([0, 1, 2], [1, 2, 3], answers, answers, (vote.judge_with(task, examples),) * 2,
                           combine=task.combine)
    assert v.voted_keys[1] == ["[1.0, 1.0]", "[3.0, 3.0]"]          # the mean, a missing rollout left out
    assert v.voted_correct[1] == [True, False] and v.accuracy == [0.0, 0.5, 0.5]   # K=3, item 1: [0, 0]
    assert [round(x, 6) for x in json.loads(v.voted_keys[2][0])] == [2.333333, 2.333333]


def test_toy_signal_refuses_to_share_a_population_with_other_tasks(tmp_path):
    import yaml

    from randopt_hpc.config import ConfigError, load_config

    cfg = {"model": {"path": "/m"}, "task": [{"name": "toy_signal"}, {"name": "countdown"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="^task: toy_signal averages its members' rollouts.*runs alone$"):
        load_config(str(tmp_path / "c.yaml"), [], check_paths=False)
