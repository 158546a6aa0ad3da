"""What a checkpoint of each supported architecture holds, read from its HF config.

A ModelShape says which tensors a checkpoint has and their shapes, as vLLM 0.32 loads them: where
vLLM's model drops a tensor the HF model has (Qwen3's o_proj bias, Gemma's attention biases: vLLM's
loader ignores any unexpected `.bias`), the shape leaves it out, so a checkpoint holding it fails
the coverage check (`checkpoint_tensors`) instead of being perturbed on one backend only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

QK_NORMS = ("none", "head", "full")   # none; per head (head_dim), shared by all heads; full projection width


@dataclass(frozen=True)
class Family:
    norms: tuple[str, ...]       # per-layer norms over the hidden size, as the checkpoint names them
    lm_head: bool = True         # vLLM builds an lm_head (Gemma 2 reads logits off the embedding)
    backend: str = "vllm"        # "vllm": vLLM's own model file; "transformers": vLLM's Transformers backend


_PRE = ("input_layernorm", "post_attention_layernorm")
_SANDWICH = _PRE + ("pre_feedforward_layernorm", "post_feedforward_layernorm")
_OLMO = ("post_attention_layernorm", "post_feedforward_layernorm")
# Keyed by HF model_type. Gemma 3 is its text model (Gemma3ForCausalLM, model_type gemma3_text).
FAMILIES = {"llama": Family(_PRE), "mistral": Family(_PRE), "qwen2": Family(_PRE), "qwen3": Family(_PRE),
            "gemma": Family(_PRE), "gemma2": Family(_SANDWICH, lm_head=False), "gemma3_text": Family(_SANDWICH),
            "olmo2": Family(_OLMO, backend="transformers"), "olmo3": Family(_OLMO, backend="transformers")}
SUPPORTED = tuple(FAMILIES)


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tie: bool = False
    arch: str = "llama"              # HF model_type, one of SUPPORTED
    layers: int | None = None        # None: any layer index (checkpoint_tensors needs it)
    qkv_bias: bool = False           # q_proj, k_proj, v_proj biases
    o_bias: bool = False             # o_proj bias
    mlp_bias: bool = False           # gate_proj, up_proj, down_proj biases
    qk_norm: str = "none"            # one of QK_NORMS

    def __post_init__(self):
        if self.arch not in FAMILIES:
            raise ValueError(f"model_type {self.arch!r} is not supported by randopt_hpc.tp "
                             f"(supported: {', '.join(SUPPORTED)})")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {', '.join(QK_NORMS)}; got {self.qk_norm!r}")

    @property
    def family(self) -> Family:
        return FAMILIES[self.arch]

    @classmethod
    def from_hf_config(cls, cfg) -> ModelShape:
        """From a transformers config (or anything with the same fields), read as vLLM 0.32 reads it."""
        arch = getattr(cfg, "model_type", None)
        if arch not in FAMILIES:
            raise ValueError(f"model_type {arch!r} is not supported by randopt_hpc.tp "
                             f"(supported: {', '.join(SUPPORTED)})")
        if getattr(cfg, "quantization_config", None):
            # Quantized weights are repacked and rescaled at load: no element maps back to the checkpoint.
            raise ValueError(f"{arch}: quantized checkpoints are not supported by randopt_hpc.tp")
        heads = cfg.num_attention_heads
        dims = dict(hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, heads=heads,
                    kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                    head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, vocab=cfg.vocab_size,
                    tie=bool(getattr(cfg, "tie_word_embeddings", False)), arch=arch,
                    layers=cfg.num_hidden_layers)
        bias = bool(getattr(cfg, "attention_bias", False))
        if arch in ("llama", "mistral"):   # llama.py's LlamaDecoderLayer, which mistral.py extends
            if getattr(cfg, "ada_rms_norm_t_cond", False):
                raise ValueError(f"{arch}: ada_rms_norm_t_cond layers are not supported by randopt_hpc.tp")
            bias = bias or bool(getattr(cfg, "bias", False))
            qkv = bool(cfg.qkv_bias) if hasattr(cfg, "qkv_bias") else bias
            return cls(**dims, qkv_bias=qkv, o_bias=bias, mlp_bias=bool(getattr(cfg, "mlp_bias", False)))
        if arch == "qwen2":   # q/k/v biases always
            return cls(**dims, qkv_bias=True, qk_norm="head" if getattr(cfg, "qk_norm", False) else "none")
        if arch == "qwen3":   # vLLM builds o_proj without the bias HF gives it under attention_bias
            return cls(**dims, qkv_bias=bias, qk_norm="head")
        if arch == "gemma":   # vLLM builds no attention biases at all
            return cls(**dims)
        if arch == "gemma2" and not dims["tie"]:
            raise ValueError("gemma2: vLLM's Gemma2ForCausalLM has no lm_head, so an untied checkpoint "
                             "is not supported by randopt_hpc.tp")
        qk = {"gemma2": "none", "gemma3_text": "head"}.get(arch, "full")   # OLMo: over the whole projection
        return cls(**dims, qkv_bias=bias, o_bias=bias, qk_norm=qk)


def layer_tensors(s: ModelShape) -> dict[str, tuple[int, ...]]:
    """Each checkpoint tensor of one decoder layer: its name after `model.layers.N.`, and its shape."""
    q, kv, h, i = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.hidden, s.intermediate
    t = {"self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
         "self_attn.o_proj.weight": (h, q), "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h),
         "mlp.down_proj.weight": (h, i)}
    if s.qkv_bias:
        t.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)})
    if s.o_bias:
        t["self_attn.o_proj.bias"] = (h,)
    if s.mlp_bias:
        t.update({"mlp.gate_proj.bias": (i,), "mlp.up_proj.bias": (i,), "mlp.down_proj.bias": (h,)})
    if s.qk_norm != "none":
        full = s.qk_norm == "full"
        t.update({"self_attn.q_norm.weight": (q if full else s.head_dim,),
                  "self_attn.k_norm.weight": (kv if full else s.head_dim,)})
    for norm in s.family.norms:
        t[f"{norm}.weight"] = (h,)
    return t


def model_tensors(s: ModelShape) -> dict[str, tuple[int, ...]]:
    """The checkpoint tensors outside the decoder layers."""
    t = {"model.embed_tokens.weight": (s.vocab, s.hidden), "model.norm.weight": (s.hidden,)}
    if not s.tie:
        t["lm_head.weight"] = (s.vocab, s.hidden)
    return t


_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def split_layer(name: str, s: ModelShape) -> tuple[str, str] | None:
    """("model.layers.N.", rest) for a name inside a decoder layer this shape has, else None."""
    m = _LAYER.fullmatch(name)
    if m is None or (s.layers is not None and int(m.group(1)) >= s.layers):
        return None
    return f"model.layers.{m.group(1)}.", m.group(2)


def source_shape(name: str, s: ModelShape) -> tuple[int, ...]:
    """Shape of a checkpoint tensor, from its name."""
    layer = split_layer(name, s)
    shape = layer_tensors(s).get(layer[1]) if layer else model_tensors(s).get(name)
    if shape is None:
        raise ValueError(f"{name}: not a tensor of a {s.arch} checkpoint as vLLM loads it")
    return shape


def checkpoint_tensors(s: ModelShape) -> set[str]:
    """Every checkpoint tensor vLLM holds for this shape (needs s.layers). A checkpoint name outside this
    set is one vLLM drops or transforms: the worker must refuse to perturb it."""
    if s.layers is None:
        raise ValueError("checkpoint_tensors needs the shape's number of layers (ModelShape.layers)")
    leaves = layer_tensors(s)
    return {f"model.layers.{n}.{leaf}" for n in range(s.layers) for leaf in leaves} | set(model_tensors(s))
