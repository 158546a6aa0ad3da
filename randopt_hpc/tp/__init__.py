"""Where every element of a vLLM parameter comes from in the checkpoint, for any TP size.

Noise is defined on the checkpoint's own tensors (docs/design.md, invariant 2). vLLM does not hold those
tensors: it fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj` (weights and biases), splits
column-parallel layers by rows and row-parallel layers (`o_proj`, `down_proj`) by columns, pads the
vocabulary to a multiple of 64 before splitting it, replicates K/V heads when there are fewer than
tp_size, and replicates norms and row-parallel biases on every rank. So a shard's noise is assembled
from slices ("pieces") of the canonical per-tensor noise; the pieces of all ranks together cover each
checkpoint tensor (replicas more than once, padding rows never).

Pure functions of (parameter name, model shape, tp_rank, tp_size); no vLLM import. `shape` describes
what a checkpoint of each architecture holds (ModelShape.from_hf_config); `layout` which slices make
up each vLLM parameter. Tested for TP = 1, 2, 4 against the canonical noise and pinned against vLLM's
own layers and loaders (tests/integration/test_tp_vllm*.py).
"""
from __future__ import annotations

from randopt_hpc.tp.layout import VOCAB_PADDING, Piece, layout, vllm_parameters, vocab_padded
from randopt_hpc.tp.shape import (
    FAMILIES,
    SUPPORTED,
    ModelShape,
    checkpoint_tensors,
    source_shape,
)

__all__ = ["FAMILIES", "SUPPORTED", "VOCAB_PADDING", "ModelShape", "Piece", "assemble",
           "checkpoint_tensors", "local_shape", "pieces", "region", "shard_noise",
           "source_shape", "vllm_parameters", "vocab_padded"]


def pieces(param: str, s: ModelShape, tp_rank: int, tp_size: int) -> list[Piece]:
    """The checkpoint slices that make up vLLM parameter `param` on rank tp_rank of tp_size. ValueError,
    naming the parameter and the architecture, for a parameter this mapping does not know."""
    return layout(param, s, tp_rank, tp_size)[0]


def local_shape(param: str, s: ModelShape, tp_size: int) -> tuple[int, ...]:
    """Shape of a vLLM parameter on one rank (the same on every rank)."""
    return layout(param, s, 0, tp_size)[1]


def shard_noise(seed: int, param: str, s: ModelShape, tp_rank: int, tp_size: int, impl: str = "auto",
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


def assemble(param: str, s: ModelShape, tp_rank: int, tp_size: int, tensors: dict, dtype):
    """Rank tp_rank's `param` built from checkpoint tensors (zeros on vocabulary padding)."""
    import torch

    out = torch.zeros(local_shape(param, s, tp_size), dtype=dtype)
    for p in pieces(param, s, tp_rank, tp_size):
        src = tensors[p.source]
        block = src[p.rows[0]:p.rows[1]] if p.cols is None else src[p.rows[0]:p.rows[1], p.cols[0]:p.cols[1]]
        region(out, p).copy_(block.to(dtype))
    return out
