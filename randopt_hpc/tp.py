"""Where every element of a vLLM Llama parameter comes from in the checkpoint, for any TP size.

Noise is defined on the checkpoint's own tensors (docs/design.md, invariant 2). vLLM does not hold those
tensors: it fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`, splits column-parallel
layers by rows and row-parallel layers (`o_proj`, `down_proj`) by columns, pads the vocabulary to a
multiple of 64 before splitting it, and replicates K/V heads when there are fewer than tp_size. So a
shard's noise is assembled from slices ("pieces") of the canonical per-tensor noise; the pieces of
all ranks together cover each checkpoint tensor (K/V replicas more than once, padding rows never).

Pure functions of (parameter name, model shape, tp_rank, tp_size); no vLLM import, tested for TP =
1, 2, 4 against the canonical noise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

VOCAB_PADDING = 64    # vLLM's DEFAULT_VOCAB_PADDING_SIZE


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tie: bool = False

    @classmethod
    def from_hf_config(cls, cfg) -> LlamaShape:
        """From a transformers LlamaConfig (or anything with the same fields)."""
        heads = cfg.num_attention_heads
        return cls(hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, heads=heads,
                   kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
                   vocab=cfg.vocab_size, tie=bool(getattr(cfg, "tie_word_embeddings", False)))


@dataclass(frozen=True)
class Piece:
    source: str                       # checkpoint tensor name
    rows: tuple[int, int]             # [start, stop) rows of the checkpoint tensor
    cols: tuple[int, int] | None      # [start, stop) columns; None = all (and 1-D tensors)
    dest_row: int                     # where the piece starts in the local vLLM tensor
    dest_col: int = 0


def _split(total: int, tp_rank: int, tp_size: int, what: str) -> tuple[int, int]:
    if total % tp_size:
        raise ValueError(f"{what} = {total} is not divisible by tensor_parallel_size = {tp_size}")
    per = total // tp_size
    return tp_rank * per, (tp_rank + 1) * per


def _kv_rows(s: LlamaShape, tp_rank: int, tp_size: int) -> tuple[int, int]:
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


def vocab_padded(vocab: int) -> int:
    return -(-vocab // VOCAB_PADDING) * VOCAB_PADDING


def source_shape(name: str, s: LlamaShape) -> tuple[int, ...]:
    """Shape of a checkpoint tensor, from its name."""
    leaf = name.rsplit(".", 2)[-2]
    shapes = {"q_proj": (s.heads * s.head_dim, s.hidden), "k_proj": (s.kv_heads * s.head_dim, s.hidden),
              "v_proj": (s.kv_heads * s.head_dim, s.hidden), "o_proj": (s.hidden, s.heads * s.head_dim),
              "gate_proj": (s.intermediate, s.hidden), "up_proj": (s.intermediate, s.hidden),
              "down_proj": (s.hidden, s.intermediate), "embed_tokens": (s.vocab, s.hidden),
              "lm_head": (s.vocab, s.hidden)}
    if leaf in shapes:
        return shapes[leaf]
    if leaf.endswith("norm"):
        return (s.hidden,)
    raise ValueError(f"{name}: not a Llama checkpoint tensor")


def local_shape(param: str, s: LlamaShape, tp_size: int) -> tuple[int, ...]:
    """Shape of a vLLM parameter on one rank."""
    if param.endswith(("qkv_proj.weight", "gate_up_proj.weight")):
        return sum(p.rows[1] - p.rows[0] for p in pieces(param, s, 0, tp_size)), s.hidden
    if param.endswith("o_proj.weight"):
        return s.hidden, s.heads * s.head_dim // tp_size
    if param.endswith("down_proj.weight"):
        return s.hidden, s.intermediate // tp_size
    if param.endswith(("embed_tokens.weight", "lm_head.weight")):
        return vocab_padded(s.vocab) // tp_size, s.hidden
    return (s.hidden,)


def pieces(param: str, s: LlamaShape, tp_rank: int, tp_size: int) -> list[Piece]:
    """The checkpoint slices that make up vLLM parameter `param` on rank tp_rank of tp_size."""
    if not 0 <= tp_rank < tp_size:
        raise ValueError(f"tp_rank {tp_rank} outside [0, {tp_size})")
    m = re.fullmatch(r"(model\.layers\.\d+\.)(self_attn|mlp)\.(\w+)\.weight", param)
    if m:
        prefix, block, leaf = m.groups()
        if leaf == "qkv_proj":
            q0, q1 = _split(s.heads, tp_rank, tp_size, "num_attention_heads")
            q0, q1 = q0 * s.head_dim, q1 * s.head_dim
            k0, k1 = _kv_rows(s, tp_rank, tp_size)
            att = prefix + "self_attn."
            return [Piece(att + "q_proj.weight", (q0, q1), None, 0),
                    Piece(att + "k_proj.weight", (k0, k1), None, q1 - q0),
                    Piece(att + "v_proj.weight", (k0, k1), None, q1 - q0 + k1 - k0)]
        if leaf == "gate_up_proj":
            i0, i1 = _split(s.intermediate, tp_rank, tp_size, "intermediate_size")
            return [Piece(prefix + "mlp.gate_proj.weight", (i0, i1), None, 0),
                    Piece(prefix + "mlp.up_proj.weight", (i0, i1), None, i1 - i0)]
        if leaf == "o_proj":
            c0, c1 = _split(s.heads * s.head_dim, tp_rank, tp_size, "num_attention_heads * head_dim")
            return [Piece(param, (0, s.hidden), (c0, c1), 0)]
        if leaf == "down_proj":
            c0, c1 = _split(s.intermediate, tp_rank, tp_size, "intermediate_size")
            return [Piece(param, (0, s.hidden), (c0, c1), 0)]
    if param in ("model.embed_tokens.weight", "lm_head.weight"):
        v0, v1 = _split(vocab_padded(s.vocab), tp_rank, tp_size, "padded vocab size")
        source = "model.embed_tokens.weight" if s.tie else param
        lo, hi = v0, min(v1, s.vocab)      # rows past the real vocabulary are padding: no noise
        return [Piece(source, (lo, hi), None, 0)] if hi > lo else []
    norms = r"model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight|model\.norm\.weight"
    if re.fullmatch(norms, param):
        return [Piece(param, (0, s.hidden), None, 0)]
    raise ValueError(f"{param}: not a vLLM Llama parameter this mapping knows")


def shard_noise(seed: int, param: str, s: LlamaShape, tp_rank: int, tp_size: int, impl: str = "auto",
                sources=None, device="cpu"):
    """The canonical noise of `param`'s checkpoint tensors, laid out as rank tp_rank holds it (zeros
    on vocabulary padding, and on pieces whose source is not in `sources` when given). Equal to
    slicing noise.noise(seed, source, shape) piece by piece."""
    import torch

    from randopt_hpc import noise

    on_gpu = torch.device(device).type == "cuda"
    out = torch.zeros(local_shape(param, s, tp_size), dtype=torch.float32, device=device)
    for p in pieces(param, s, tp_rank, tp_size):
        if sources is not None and p.source not in sources:
            continue
        shape = source_shape(p.source, s)
        ncols = shape[1] if len(shape) == 2 else 1
        nrows = p.rows[1] - p.rows[0]
        dst = region(out, p)
        if p.cols is None or p.cols == (0, ncols):   # whole rows: one flat range of the canonical stream
            if on_gpu:   # the fused Triton generator, on the GPU that holds the shard
                from randopt_hpc import noise_triton

                eps = noise_triton.normals(seed, p.source, p.rows[0] * ncols, nrows * ncols, device=device)
            else:
                eps = noise.normals_range(seed, p.source, p.rows[0] * ncols, nrows * ncols, impl, "cpu")
            dst.copy_(eps.view(dst.shape))
        else:                # a column band: element indices row * ncols + col
            r = torch.arange(p.rows[0], p.rows[1])[:, None]
            c = torch.arange(p.cols[0], p.cols[1])[None, :]
            dst.copy_(noise.normals_at(seed, p.source, r * ncols + c, impl=impl))
    return out


def region(t, piece: Piece):
    """The view of local tensor t that `piece` fills."""
    rows = slice(piece.dest_row, piece.dest_row + piece.rows[1] - piece.rows[0])
    if piece.cols is None:
        return t[rows]
    return t[rows, piece.dest_col:piece.dest_col + piece.cols[1] - piece.cols[0]]


def assemble(param: str, s: LlamaShape, tp_rank: int, tp_size: int, tensors: dict, dtype):
    """Rank tp_rank's `param` built from checkpoint tensors (zeros on vocabulary padding)."""
    import torch

    out = torch.zeros(local_shape(param, s, tp_size), dtype=dtype)
    for p in pieces(param, s, tp_rank, tp_size):
        src = tensors[p.source]
        block = src[p.rows[0]:p.rows[1]] if p.cols is None else src[p.rows[0]:p.rows[1], p.cols[0]:p.cols[1]]
        region(out, p).copy_(block.to(dtype))
    return out
