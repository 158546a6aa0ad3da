"""Which checkpoint slices make up each vLLM parameter on one tensor-parallel rank.

One layout serves every supported architecture, because vLLM 0.32 builds them all from the same
parallel layers: its own model files (llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3) and the
Transformers backend that serves OLMo 2/3, whose fusers turn q/k/v into a QKVParallelLinear and
gate/up into a MergedColumnParallelLinear under the same names. So:

- qkv_proj (weight and bias): q rows split by heads, then k and v rows split by K/V heads, each K/V
  head replicated on tp_size / kv_heads consecutive ranks when there are fewer heads than ranks;
- gate_up_proj (weight and bias): gate rows, then up rows, each split in tp_size bands;
- o_proj, down_proj weights: every row, a band of columns; their biases: whole on every rank
  (RowParallelLinear keeps the full bias everywhere and only rank 0 adds it);
- embed_tokens, lm_head: rows of the vocabulary padded to a multiple of 64, then split;
- every norm (per-layer norms, q_norm/k_norm of either width, the final norm): whole on every rank.
  OLMo's full-width q/k norms are replicated too: the backend's TPAwareRMSNorm gathers the sharded
  activations and normalises them against the full weight.

Where the Transformers backend does not fuse (its fusers decline), q/k/v and gate/up stay separate
layers built from the config's tensor-parallel plan ("colwise", "colwise_gather_output": rows in
tp_size bands), and o_proj/down_proj are "rowwise" as above; those names are mapped for OLMo only.
"""
from __future__ import annotations

from dataclasses import dataclass

from randopt_hpc.tp.shape import ModelShape, layer_tensors, model_tensors, split_layer

VOCAB_PADDING = 64    # vLLM's DEFAULT_VOCAB_PADDING_SIZE


@dataclass(frozen=True)
class Piece:
    source: str                       # checkpoint tensor name
    rows: tuple[int, int]             # [start, stop) rows of the checkpoint tensor (elements, if 1-D)
    cols: tuple[int, int] | None      # [start, stop) columns; None = all (and 1-D tensors)
    dest_row: int                     # where the piece starts in the local vLLM tensor
    dest_col: int = 0


def vocab_padded(vocab: int) -> int:
    return -(-vocab // VOCAB_PADDING) * VOCAB_PADDING


def _split(total: int, tp_rank: int, tp_size: int, what: str) -> tuple[int, int]:
    if total % tp_size:
        raise ValueError(f"{what} = {total} is not divisible by tensor_parallel_size = {tp_size}")
    per = total // tp_size
    return tp_rank * per, (tp_rank + 1) * per


def _kv_rows(s: ModelShape, tp_rank: int, tp_size: int) -> tuple[int, int]:
    # Fewer K/V heads than ranks: each head is replicated on tp_size / kv_heads consecutive ranks.
    if s.kv_heads >= tp_size:
        h0, h1 = _split(s.kv_heads, tp_rank, tp_size, "num_key_value_heads")
    else:
        if tp_size % s.kv_heads:
            raise ValueError(f"tensor_parallel_size = {tp_size} is not a multiple of "
                             f"num_key_value_heads = {s.kv_heads}")
        h0 = tp_rank // (tp_size // s.kv_heads)
        h1 = h0 + 1
    return h0 * s.head_dim, h1 * s.head_dim


def _stacked(sources: list[tuple[str, tuple[int, int]]], tail: tuple[int, ...]):
    """Row bands of several checkpoint tensors, one after another (a fused column-parallel layer)."""
    out, at = [], 0
    for source, (r0, r1) in sources:
        out.append(Piece(source, (r0, r1), None, at))
        at += r1 - r0
    return out, (at, *tail)


def _layer(prefix: str, leaf: str, s: ModelShape, tp_rank: int, tp_size: int):
    """(pieces, local shape) of parameter prefix + leaf, or None if the layout has no such parameter."""
    module, _, kind = leaf.rpartition(".")
    tail = (s.hidden,) if kind == "weight" else ()
    att, mlp = prefix + "self_attn.", prefix + "mlp."
    if module == "self_attn.qkv_proj":
        q0, q1 = _split(s.heads, tp_rank, tp_size, "num_attention_heads")
        kv = _kv_rows(s, tp_rank, tp_size)
        return _stacked([(att + f"q_proj.{kind}", (q0 * s.head_dim, q1 * s.head_dim)),
                         (att + f"k_proj.{kind}", kv), (att + f"v_proj.{kind}", kv)], tail)
    if module == "mlp.gate_up_proj":
        band = _split(s.intermediate, tp_rank, tp_size, "intermediate_size")
        return _stacked([(mlp + f"gate_proj.{kind}", band), (mlp + f"up_proj.{kind}", band)], tail)
    if module in ("self_attn.o_proj", "mlp.down_proj"):
        src = prefix + leaf
        if kind == "bias":
            return [Piece(src, (0, s.hidden), None, 0)], (s.hidden,)
        inner = s.heads * s.head_dim if module == "self_attn.o_proj" else s.intermediate
        what = "num_attention_heads * head_dim" if module == "self_attn.o_proj" else "intermediate_size"
        c0, c1 = _split(inner, tp_rank, tp_size, what)
        return [Piece(src, (0, s.hidden), (c0, c1), 0)], (s.hidden, c1 - c0)
    shape = layer_tensors(s).get(leaf)
    if shape is None:
        return None
    if module.endswith("norm"):
        return [Piece(prefix + leaf, (0, shape[0]), None, 0)], shape
    if s.family.backend == "transformers":   # an unfused q/k/v/gate/up: rows in tp_size bands
        r0, r1 = _split(shape[0], tp_rank, tp_size, f"{module} output size")
        return [Piece(prefix + leaf, (r0, r1), None, 0)], (r1 - r0, *shape[1:])
    return None


def layout(param: str, s: ModelShape, tp_rank: int, tp_size: int):
    """(pieces, local shape) of vLLM parameter `param` on rank tp_rank of tp_size."""
    if not 0 <= tp_rank < tp_size:
        raise ValueError(f"tp_rank {tp_rank} outside [0, {tp_size})")
    found = None
    if param == "model.embed_tokens.weight" or (param == "lm_head.weight" and s.family.lm_head):
        v0, v1 = _split(vocab_padded(s.vocab), tp_rank, tp_size, "padded vocab size")
        source = "model.embed_tokens.weight" if s.tie else param
        lo, hi = v0, min(v1, s.vocab)      # rows past the real vocabulary are padding: no noise
        found = ([Piece(source, (lo, hi), None, 0)] if hi > lo else []), (v1 - v0, s.hidden)
    elif param == "model.norm.weight":
        found = [Piece(param, (0, s.hidden), None, 0)], (s.hidden,)
    elif layer := split_layer(param, s):
        found = _layer(*layer, s, tp_rank, tp_size)
    # A name this layout would build from a tensor the shape's checkpoint lacks (a bias the config
    # turns off, a q_norm of a model without one) is not a parameter of this model either.
    if found is None or not all(_known(p.source, s) for p in found[0]):
        raise ValueError(f"{param}: not a parameter of vLLM's {s.arch} model that randopt_hpc.tp maps")
    return found


def _known(source: str, s: ModelShape) -> bool:
    layer = split_layer(source, s)
    return layer[1] in layer_tensors(s) if layer else source in model_tensors(s)


def vllm_parameters(s: ModelShape) -> list[str]:
    """The names vLLM's model.named_parameters() lists for this shape (needs s.layers): a tied lm_head
    shares the embedding's parameter and is listed once, under the embedding's name."""
    if s.layers is None:
        raise ValueError("vllm_parameters needs the shape's number of layers (ModelShape.layers)")
    leaves = ["self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.gate_up_proj.weight",
              "mlp.down_proj.weight"]
    leaves += ["self_attn.qkv_proj.bias"] * s.qkv_bias + ["self_attn.o_proj.bias"] * s.o_bias
    leaves += ["mlp.gate_up_proj.bias", "mlp.down_proj.bias"] * s.mlp_bias
    leaves += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"] * (s.qk_norm != "none")
    leaves += [f"{norm}.weight" for norm in s.family.norms]
    names = ["model.embed_tokens.weight"]
    names += [f"model.layers.{n}.{leaf}" for n in range(s.layers) for leaf in leaves]
    names += ["model.norm.weight"] + ["lm_head.weight"] * (s.family.lm_head and not s.tie)
    return names
