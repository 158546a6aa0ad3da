"""tp.ModelShape.from_hf_config on real transformers configs of every supported architecture, and the
checkpoint tensors it promises against the tensors the HF model really has (names and shapes), on the
meta device: the only differences are the tensors vLLM 0.32 drops at load, written out below."""
from __future__ import annotations

import pytest
import torch

from randopt_hpc import tp

DIMS = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)
# (transformers config class, its arguments beyond DIMS, the ModelShape expected, written out).
CASES = {
    "llama": ("LlamaConfig", dict(head_dim=32, attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
              dict(head_dim=32, qkv_bias=True, o_bias=True, mlp_bias=True)),
    "mistral": ("MistralConfig", dict(head_dim=None, tie_word_embeddings=False), dict(head_dim=16)),
    # Qwen2: always q/k/v biases (head_dim: hidden / heads; vLLM cannot load a config that says otherwise).
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True), dict(head_dim=16, tie=True, qkv_bias=True)),
    "qwen3": ("Qwen3Config", dict(head_dim=32, attention_bias=True, tie_word_embeddings=True),
              dict(head_dim=32, tie=True, qkv_bias=True, qk_norm="head")),
    "gemma": ("GemmaConfig", dict(head_dim=16, attention_bias=True), dict(head_dim=16, tie=True)),
    "gemma2": ("Gemma2Config", dict(head_dim=16, attention_bias=True),
               dict(head_dim=16, tie=True, qkv_bias=True, o_bias=True)),
    "gemma3_text": ("Gemma3TextConfig", dict(head_dim=32, tie_word_embeddings=False),
                    dict(head_dim=32, qk_norm="head")),
    "olmo2": ("Olmo2Config", dict(attention_bias=True), dict(head_dim=16, qkv_bias=True, o_bias=True, qk_norm="full")),
    "olmo3": ("Olmo3Config", dict(tie_word_embeddings=True), dict(head_dim=16, tie=True, qk_norm="full")),
}
# Checkpoint tensors of a layer that vLLM's model has no parameter for: its loader ignores an unexpected
# `.bias`, so these would silently not exist on the vLLM backend.
DROPPED = {"qwen3": ["self_attn.o_proj.bias"],
           "gemma": [f"self_attn.{p}_proj.bias" for p in "qkvo"]}


def _config(arch: str):
    import transformers

    cls, kwargs, _ = CASES[arch]
    return getattr(transformers, cls)(**DIMS, **kwargs)


@pytest.mark.parametrize("arch", sorted(CASES))
def test_shape_from_each_architectures_config(arch):
    cfg = _config(arch)
    assert cfg.model_type == arch
    base = dict(hidden=64, intermediate=96, heads=4, kv_heads=2, vocab=100, tie=False, arch=arch, layers=2)
    assert tp.ModelShape.from_hf_config(cfg) == tp.ModelShape(**{**base, **CASES[arch][2]})


@pytest.mark.parametrize("arch", sorted(CASES))
def test_checkpoint_tensors_are_the_hf_models_own(arch):
    from transformers import AutoModelForCausalLM

    cfg = _config(arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    # named_parameters lists a tied lm_head once, under the embedding, as save_pretrained writes it.
    hf = {name: tuple(p.shape) for name, p in model.named_parameters()}
    s = tp.ModelShape.from_hf_config(cfg)
    mine = tp.checkpoint_tensors(s)
    dropped = {f"model.layers.{n}.{leaf}" for n in range(2) for leaf in DROPPED.get(arch, [])}
    assert set(hf) - mine == dropped
    assert mine <= set(hf)
    assert all(tp.source_shape(name, s) == hf[name] for name in mine)


def test_refusals_name_the_architecture_and_the_reason():
    import transformers

    with pytest.raises(ValueError, match=r"^model_type 'gpt2' is not supported by randopt_hpc.tp \(supported: "
                                         r"llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, olmo2, olmo3\)$"):
        tp.ModelShape.from_hf_config(transformers.GPT2Config())
    cfg = _config("gemma2")
    cfg.tie_word_embeddings = False
    with pytest.raises(ValueError, match=r"^gemma2: vLLM's Gemma2ForCausalLM has no lm_head"):
        tp.ModelShape.from_hf_config(cfg)
    cfg = _config("qwen2")
    cfg.quantization_config = {"quant_method": "gptq"}
    with pytest.raises(ValueError, match=r"^qwen2: quantized checkpoints are not supported"):
        tp.ModelShape.from_hf_config(cfg)
    cfg = _config("mistral")
    cfg.ada_rms_norm_t_cond = True
    with pytest.raises(ValueError, match=r"^mistral: ada_rms_norm_t_cond layers are not supported"):
        tp.ModelShape.from_hf_config(cfg)
