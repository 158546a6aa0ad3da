"""tp.assemble against vLLM's own layers of every supported architecture: for TP = 1, 2, 4 and every rank,
the decoder layers vLLM 0.32 builds (the real classes of llama.py, mistral.py, qwen2.py, qwen3.py,
gemma.py, gemma2.py, gemma3.py; for OLMo 2/3 the Transformers backend's own replacement of the HF
model), loaded from a labelled HF checkpoint through vLLM's loader (AutoWeightsLoader with the
model's hf_to_vllm_mapper), hold exactly what tp.assemble builds: every weight, bias and norm.

Rank r of s is the monkeypatched `parallel_state._TP` of test_tp_vllm.py. vLLM's Attention layer is
replaced by a weightless stand-in in the native model files: it holds no parameter, and building it
needs a whole engine (model config, KV cache). The OLMo build runs the backend's
`_create_hf_to_vllm_mapper` and `recursive_replace` (fusers, tensor-parallel plan) on the HF model;
once as vLLM runs it (q/k/v and gate/up fused) and once with the stacking fusers declining, where
the config's tensor-parallel plan decides (colwise_gather_output, colwise, rowwise, rowwise_split_input).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import transformers
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.distributed import parallel_state
from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models import gemma, gemma2, gemma3, llama, mistral, qwen2, qwen3
from vllm.model_executor.models.transformers import base as tf_base
from vllm.model_executor.models.transformers.fusers.base import StackedFuser
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper

from randopt_hpc import tp

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("hf_classes_as_they_were")]

COMMON = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
# Each architecture with what sets its layout apart switched on: biases wherever its vLLM model builds
# them, K/V heads from 4 down to 1 (replicated at TP 2 and 4), q widths other than hidden, tied and not.
ARCHS = {
    "llama": ("LlamaConfig", dict(num_attention_heads=8, num_key_value_heads=2, head_dim=8, attention_bias=True,
                                  mlp_bias=True, tie_word_embeddings=False)),
    "mistral": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                      tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    # attention_bias: q/k/v biases, and an o_proj bias in the checkpoint that vLLM drops.
    "qwen3": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, attention_bias=True,
                                  tie_word_embeddings=True)),
    "gemma": ("GemmaConfig", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16)),
    "gemma2": ("Gemma2Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=True)),
    "gemma3_text": ("Gemma3TextConfig", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                             attention_bias=True, tie_word_embeddings=False)),
    "olmo2": ("Olmo2Config", dict(num_attention_heads=4, num_key_value_heads=4, attention_bias=True)),
    "olmo3": ("Olmo3Config", dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)),
}
# Native model files: module, decoder layer class, the mapper its load_weights applies, its norm class.
NATIVE = {"llama": (llama, "LlamaDecoderLayer", llama.LlamaModel.hf_to_vllm_mapper, RMSNorm),
          "mistral": (mistral, "MistralDecoderLayer", mistral.MistralForCausalLM.hf_to_vllm_mapper, RMSNorm),
          "qwen2": (qwen2, "Qwen2DecoderLayer", qwen2.Qwen2Model.hf_to_vllm_mapper, RMSNorm),
          "qwen3": (qwen3, "Qwen3DecoderLayer", qwen3.Qwen3Model.hf_to_vllm_mapper, RMSNorm),
          "gemma": (gemma, "GemmaDecoderLayer", gemma.GemmaForCausalLM.hf_to_vllm_mapper, GemmaRMSNorm),
          "gemma2": (gemma2, "Gemma2DecoderLayer", gemma2.Gemma2ForCausalLM.hf_to_vllm_mapper, GemmaRMSNorm),
          "gemma3_text": (gemma3, "Gemma3DecoderLayer", gemma3.Gemma3Model.hf_to_vllm_mapper, GemmaRMSNorm)}


class _NoAttention(torch.nn.Module):
    """Stands in for vLLM's Attention, which holds no parameter."""

    def __init__(self, *args, **kwargs):
        super().__init__()


@pytest.fixture
def as_rank(monkeypatch):
    for module, *_ in NATIVE.values():
        for name in ("Attention", "EncoderOnlyAttention"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _NoAttention)

    def become(rank: int, size: int):
        monkeypatch.setattr(parallel_state, "_TP", SimpleNamespace(rank_in_group=rank, world_size=size))
    return become


def _config(arch: str):
    cls, kwargs = ARCHS[arch]
    return getattr(transformers, cls)(**COMMON, **kwargs)


def _checkpoint(cfg) -> dict:
    """The HF model's own tensors (names and shapes off the meta device), each element a distinct
    float32-exact label: tensor number * 1e4 + flat index."""
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(cfg)
    return {name: (n * 1e4 + torch.arange(p.numel(), dtype=torch.float32)).reshape(p.shape)
            for n, (name, p) in enumerate(hf.named_parameters(), 1)}


def _lm_head(root, cfg, tie: bool):
    root.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)
    if tie:   # as the model files and the backend's CausalMixin do: the head shares the embedding's weight
        root.lm_head = root.lm_head.tie_weights(root.model.embed_tokens)


def _native(arch: str, cfg):
    """The model as vLLM's own model file builds it, around the real decoder layers."""
    module, layer_name, mapper, norm = NATIVE[arch]
    layer_cls = getattr(module, layer_name)
    root, root.model = torch.nn.Module(), torch.nn.Module()
    root.model.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
    if arch in ("llama", "mistral"):
        vcfg = SimpleNamespace(model_config=SimpleNamespace(hf_config=cfg), cache_config=None, quant_config=None)
        layers = [layer_cls(vllm_config=vcfg, prefix=f"model.layers.{i}") for i in range(cfg.num_hidden_layers)]
    else:
        layers = [layer_cls(cfg, prefix=f"model.layers.{i}") for i in range(cfg.num_hidden_layers)]
    root.model.layers = torch.nn.ModuleList(layers)
    root.model.norm = norm(cfg.hidden_size, eps=cfg.rms_norm_eps)
    if arch != "gemma2":   # Gemma 2 computes its logits from the embedding
        _lm_head(root, cfg, cfg.tie_word_embeddings)
    return root, mapper, []


def _transformers_backend(cfg, size: int, fuse: bool, monkeypatch):
    """The model as vLLM's Transformers backend builds it: Base.__init__'s mapper and module replacement,
    run on the HF model (pipeline parallelism and attention instances, which hold no weights, left out)."""
    if not fuse:   # the stacking fusers decline (as they do when a model's forward does not admit them)
        fusers = tf_base.Fusers

        class Declined(fusers):
            def __getitem__(self, m):
                return [f for f in super().__getitem__(m) if not isinstance(f, StackedFuser)]
        monkeypatch.setattr(tf_base, "Fusers", Declined)
    hf = transformers.AutoModel.from_config(cfg)
    head = cfg.hidden_size // cfg.num_attention_heads
    vcfg = SimpleNamespace(quant_config=None, parallel_config=SimpleNamespace(tensor_parallel_size=size),
                           model_config=SimpleNamespace(get_head_size=lambda: head))
    me = SimpleNamespace(model=hf, config=cfg, text_config=cfg, quant_config=None, vllm_config=vcfg,
                         model_config=SimpleNamespace(model="tiny", trust_remote_code=False),
                         tp_group=SimpleNamespace(world_size=size), fusers={}, attention_fusers={},
                         packed_modules_mapping={}, ignore_unexpected_prefixes=[], _layer_names={},
                         _maybe_apply_model_mapping=lambda: None)
    me._vocab_embeddings = lambda: tf_base.Base._vocab_embeddings(me)
    tf_base.Base._create_hf_to_vllm_mapper(me)
    tf_base.Base.recursive_replace(me)
    root = torch.nn.Module()
    root.model = hf
    _lm_head(root, cfg, cfg.tie_word_embeddings)
    return root, me.hf_to_vllm_mapper, me.ignore_unexpected_prefixes


def _load(root, mapper: WeightsMapper, ignore: list, ckpt: dict) -> dict:
    params = dict(root.named_parameters())
    for p in params.values():
        # NaN everywhere first: an element no loader writes then fails the comparison.
        p.data.fill_(float("nan"))
    AutoWeightsLoader(root, ignore_unexpected_prefixes=ignore).load_weights(ckpt.items(), mapper=mapper)
    return params


def _check(params: dict, shape, rank: int, size: int, ckpt: dict):
    for name, param in params.items():
        assert tuple(param.shape) == tp.local_shape(name, shape, size), (name, rank, size)
        mine = tp.assemble(name, shape, rank, size, ckpt, torch.float32)
        assert torch.equal(param.data, mine), (name, rank, size)


def _each_rank(size, as_rank, build, ckpt):
    """(rank, parameters) for each rank of `size`: the layers build() makes there, loaded from ckpt."""
    for rank in range(size):
        as_rank(rank, size)
        with set_current_vllm_config(VllmConfig()):
            yield rank, _load(*build(), ckpt)


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("arch", sorted(NATIVE))
def test_native_layers_hold_what_assemble_builds(arch, size, as_rank):
    cfg = _config(arch)
    shape = tp.ModelShape.from_hf_config(cfg)
    ckpt = _checkpoint(cfg)
    for rank, params in _each_rank(size, as_rank, lambda: _native(arch, cfg), ckpt):
        assert sorted(params) == sorted(tp.vllm_parameters(shape))
        _check(params, shape, rank, size, ckpt)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "tp-plan"])
@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("arch", ["olmo2", "olmo3"])
def test_transformers_backend_layers_hold_what_assemble_builds(arch, size, fuse, as_rank, monkeypatch):
    cfg = _config(arch)
    shape = tp.ModelShape.from_hf_config(cfg)
    ckpt = _checkpoint(cfg)
    for rank, params in _each_rank(size, as_rank, lambda: _transformers_backend(cfg, size, fuse, monkeypatch), ckpt):
        if fuse:
            assert sorted(params) == sorted(tp.vllm_parameters(shape))
        else:
            assert any(n.endswith("self_attn.q_proj.weight") for n in params), sorted(params)
        covered = {p.source for name in params for p in tp.pieces(name, shape, 0, 1)}
        assert covered == tp.checkpoint_tensors(shape) == set(ckpt)
        _check(params, shape, rank, size, ckpt)


def test_dropped_checkpoint_tensors_are_what_checkpoint_tensors_leaves_out(as_rank):
    """Qwen3's o_proj bias (attention_bias) is in the HF checkpoint and nowhere in vLLM's model: the
    loader ignores it without a word. checkpoint_tensors leaves exactly it out, so a worker can refuse."""
    cfg = _config("qwen3")
    shape = tp.ModelShape.from_hf_config(cfg)
    ckpt = _checkpoint(cfg)
    as_rank(0, 1)
    with set_current_vllm_config(VllmConfig()):
        params = _load(*_native("qwen3", cfg), ckpt)
    held = {p.source for name in params for p in tp.pieces(name, shape, 0, 1)}
    assert set(ckpt) - held == set(ckpt) - tp.checkpoint_tensors(shape) == {
        "model.layers.0.self_attn.o_proj.bias", "model.layers.1.self_attn.o_proj.bias"}
