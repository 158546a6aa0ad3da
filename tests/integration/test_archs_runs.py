"""Whole runs of every supported architecture on 2 MPI ranks: backend=vllm gives the same results as
backend=hf (randopt_hpc.results.comparable: scores, rankings, every answer and vote), for a tiny random
model of each (tools/make_tiny_model.build_arch), and for one whose generation config lists two EOS ids.

All 20 runs share one mpiexec job (tests/mpi_runs.py), which runs each config through randopt_hpc.run's
load() and run(); the command line itself is covered by test_vllm.py's 2-rank run on the demo model.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.archs import ARCHS, arch_model
from tests.conftest import ROOT, SAMPLES, assert_same_results, child_env, mpiexec, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TWO_EOS = "qwen2-two-eos"


def _two_eos(src, dst, config):
    """src with generation_config.json's eos_token_id = [EOS, X], X the character src writes most often
    in its answers to `config`'s train set, so that many completions stop at the second id."""
    from collections import Counter

    from randopt_hpc.backends.hf import HFBackend
    from randopt_hpc.config import load_config
    from randopt_hpc.data import load_examples

    hb = HFBackend(str(src), "float32", max_new_tokens=12, batch_size=6)
    texts = hb.generate(load_examples(load_config(str(config), []))[0])
    char = Counter("".join(texts).replace(" ", "")).most_common(1)[0][0]
    shutil.copytree(src, dst)
    gen = json.loads((dst / "generation_config.json").read_text())
    gen["eos_token_id"] = [gen["eos_token_id"], hb.tokenizer.convert_tokens_to_ids(char)]
    (dst / "generation_config.json").write_text(json.dumps(gen))
    return dst, char


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arch-runs")
    models = {arch: arch_model(tmp_path_factory, arch) for arch in ARCHS}
    models[TWO_EOS] = None
    configs, outs = {}, {}
    for backend in ("hf", "vllm"):   # every HF run first: see tests.archs.vllm_patches_undone
        for name, model in models.items():
            outs[name, backend] = tmp / backend / name
            configs[name, backend] = write_config(
                tmp / f"{name}-{backend}.yaml", model or models["qwen2"], outs[name, backend],
                backend=backend, vllm={"max_model_len": 512, "kv_cache_gib": 0.0625},
                task={"name": "countdown_qa", "template": "Q: use {numbers} and make {target} A:", "seed": 0,
                      "train_size": 6, "test_size": 6},
                population={"size": 6, "seed": 0, "sigmas": [1e-2, 2e-2]},
                generation={"max_new_tokens": 12, "batch_size": 6},
                output={"dir": str(outs[name, backend]), "save_text": True})
    model, outs["stop"] = _two_eos(models["qwen2"], tmp / "two-eos-model", configs["qwen2", "hf"])
    for backend in ("hf", "vllm"):
        text = configs[TWO_EOS, backend].read_text().replace(str(models["qwen2"]), str(model))
        configs[TWO_EOS, backend].write_text(text)
    configs = [str(c) for c in configs.values()]
    p = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "tests.mpi_runs", *configs], cwd=ROOT,
                       env=child_env(), capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-4000:]
    return outs


@pytest.mark.parametrize("name", [*ARCHS, TWO_EOS])
def test_two_rank_vllm_run_equals_hf_run(runs, name):
    assert_same_results(runs[name, "hf"] / "results.h5", runs[name, "vllm"] / "results.h5", (SAMPLES,))


def test_no_text_after_a_second_eos_id_reaches_a_grade(runs):
    """Raw completions are saved (output.save_text) and compared above; here: with character X a stop id,
    no completion the two-EOS runs graded holds an X, while the same model without it writes them."""
    import h5py

    def texts(path):
        with h5py.File(path) as f:
            return [t.decode() if isinstance(t, bytes) else t for t in f["population/train_text"][()].ravel()]
    stop = runs["stop"]
    assert not any(stop in t for t in texts(runs[TWO_EOS, "vllm"] / "results.h5"))
    assert sum(stop in t for t in texts(runs["qwen2", "vllm"] / "results.h5")) >= 3
