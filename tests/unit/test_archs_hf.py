"""Every supported architecture, as a tiny random model, through the HF backend in every dtype: it loads,
answers, a perturbation reaches every tensor and changes the answer, and restore is bitwise."""
from __future__ import annotations

import json
import re

import pytest
import torch

from randopt_hpc.backends.hf import HFBackend
from tests.archs import ARCHS, DTYPES, arch_model, one_thread, short_examples
from tools.make_tiny_model import build_arch

# Nine architectures' model classes to import and build: 15 s, a quarter of the fast layer's minute.
# `make test` runs them; `make test-unit` leaves them out.
pytestmark = pytest.mark.slow

# What each tiny model must hold to stand for its architecture: a checkpoint tensor name for each
# particular part, and config values. A build that lost one would test a plainer model than it claims.
PARTS = {
    "llama": ([r"^lm_head\.weight$"], {"num_key_value_heads": 2, "num_attention_heads": 4,
                                        "rope_parameters.rope_type": "llama3"}),
    "mistral": ([r"^lm_head\.weight$"], {"num_key_value_heads": 1, "sliding_window": None}),
    "qwen2": ([r"q_proj\.bias$", r"k_proj\.bias$", r"v_proj\.bias$"], {"tie_word_embeddings": True}),
    "qwen3": ([r"self_attn\.q_norm\.weight$", r"self_attn\.k_norm\.weight$"], {"head_dim": 32, "hidden_size": 64,
                                                                            "num_attention_heads": 4}),
    "olmo2": ([r"q_norm\.weight$", r"post_attention_layernorm", r"post_feedforward_layernorm"], {}),
    "olmo3": ([r"q_norm\.weight$"], {"layer_types": ["sliding_attention", "full_attention"]}),
    "gemma": ([r"mlp\.gate_proj"], {"num_key_value_heads": 1, "tie_word_embeddings": True,
                                    "hidden_act": "gelu_pytorch_tanh"}),
    "gemma2": ([r"pre_feedforward_layernorm", r"post_feedforward_layernorm"],
               {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                "layer_types": ["sliding_attention", "full_attention"]}),
    "gemma3": ([r"self_attn\.q_norm\.weight$", r"self_attn\.k_norm\.weight$"],
               {"model_type": "gemma3_text", "layer_types": ["sliding_attention", "full_attention"]}),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def _state(b):
    return {n: p.detach().clone() for n, p in b.model.named_parameters()}


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_has_its_architecture(tmp_path_factory, arch):
    path = arch_model(tmp_path_factory, arch)
    cfg = json.loads((path / "config.json").read_text())
    patterns, values = PARTS[arch]
    b = HFBackend(str(path), max_new_tokens=1, batch_size=1)
    for pattern in patterns:
        assert any(re.search(pattern, n) for n in b.names), f"{arch}: no tensor matches {pattern}"
    for key, value in values.items():
        got = cfg
        for part in key.split("."):
            got = got[part]
        assert got == value, f"{arch}: {key}"
    assert cfg["num_hidden_layers"] == 2 and 64 <= cfg["hidden_size"] <= 128
    assert cfg["vocab_size"] == len(b.tokenizer)
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    assert head_dim >= 32 and heads * head_dim >= cfg["hidden_size"]
    # A tied model lists its shared tensor once, so it is perturbed once; an untied one has its own head.
    assert ("lm_head.weight" in b.names) != cfg["tie_word_embeddings"]
    # Gemma 2's soft-capping exists only in the eager attention kernel.
    assert (b.model.config._attn_implementation == "eager") == (arch == "gemma2")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_generate_perturb_restore(tmp_path_factory, arch, dtype):
    b = HFBackend(str(arch_model(tmp_path_factory, arch)), dtype, max_new_tokens=4, batch_size=2, noise_impl="torch")
    params = dict(b.model.named_parameters())
    assert b.names == list(params) and all(p.dtype == getattr(torch, dtype) for p in params.values())
    assert b.n_perturbed_elements() == sum(p.numel() for p in params.values())
    ex = short_examples(2)
    before = b.generate(ex)
    base = _state(b)
    b.perturb(7, 0.05)
    now = _state(b)
    untouched = [n for n in base if torch.equal(base[n], now[n])]
    assert not untouched, f"{arch} {dtype}: perturbation left {untouched} as they were"
    changed = b.generate(ex)
    b.restore()
    after = _state(b)
    # Bitwise the same weights answer the same (test_hf_backend checks it end to end once).
    assert all(torch.equal(base[n], after[n]) for n in base)
    assert changed != before


def test_build_is_deterministic_and_seeded(tmp_path):
    weights = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build_arch(str(tmp_path / name), "qwen3", seed=seed)
        weights.append((tmp_path / name / "model.safetensors").read_bytes())
    assert weights[0] == weights[1] != weights[2]


def test_dtype_and_eos_ids_are_written(tmp_path):
    info = build_arch(str(tmp_path / "m"), "llama", dtype="bfloat16", eos_ids=[2, 40])
    assert info["dtype"] == "bfloat16" and info["eos_ids"] == [2, 40]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text())["eos_token_id"] == [2, 40]
    b = HFBackend(str(tmp_path / "m"), "float32", max_new_tokens=1, batch_size=1)
    assert b.tokenizer.eos_token_id == 2 and b.stop_ids == [2, 40]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_arch(str(tmp_path / "x"), "llama", eos_ids=[100])
    with pytest.raises(ValueError, match="unknown arch"):
        build_arch(str(tmp_path / "y"), "gpt2")
