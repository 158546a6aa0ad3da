"""Fused GPU noise: theta = cast(base + sigma * eps) in one pass, eps from the same Philox stream.

The same counter contract as randopt_hpc.noise (key = seed, counter = (j // 4, fnv1a64(name)),
word j % 4, Box-Muller on lane pairs), so the integer words are bitwise those of the torch
reference and the normals agree within float32 rounding of log/sin/cos (the GPU's libdevice and
torch's CPU kernels may differ in the last ulp). Used automatically for CUDA tensors by the HF
backend's perturb; tested on CPU with TRITON_INTERPRET=1.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from randopt_hpc import noise

_BLOCK = 1024
MODES = {"words": 0, "normals": 1, "perturb": 2}


@triton.jit
def _philox_round(c0, c1, c2, c3, k0, k1):
    m0 = tl.full(c0.shape, 0xD2511F53, tl.uint32)
    m1 = tl.full(c0.shape, 0xCD9E8D57, tl.uint32)
    hi0 = tl.umulhi(m0, c0)
    lo0 = m0 * c0
    hi1 = tl.umulhi(m1, c2)
    lo1 = m1 * c2
    return hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0


@triton.jit
def _kernel(out_ptr, base_ptr, n, start, key0, key1, h0, h1, sigma, MODE: tl.constexpr, BLOCK: tl.constexpr,
            BF16_BITS: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    j = offs + start
    b = j // 4
    lane = j % 4
    c0 = (b & 0xFFFFFFFF).to(tl.uint32)
    c1 = (b >> 32).to(tl.uint32)
    c2 = tl.full(c0.shape, 0, tl.uint32) + h0.to(tl.uint32)
    c3 = tl.full(c0.shape, 0, tl.uint32) + h1.to(tl.uint32)
    k0 = tl.full(c0.shape, 0, tl.uint32) + key0.to(tl.uint32)
    k1 = tl.full(c0.shape, 0, tl.uint32) + key1.to(tl.uint32)
    w0 = tl.full(c0.shape, 0x9E3779B9, tl.uint32)
    w1 = tl.full(c0.shape, 0xBB67AE85, tl.uint32)
    for r in tl.static_range(10):
        if r > 0:
            k0 = k0 + w0
            k1 = k1 + w1
        c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    if MODE == 0:
        word = tl.where(lane == 0, c0, tl.where(lane == 1, c1, tl.where(lane == 2, c2, c3)))
        tl.store(out_ptr + offs, word.to(tl.int64), mask=mask)
    else:
        uw = tl.where(lane < 2, c0, c2)
        tw = tl.where(lane < 2, c1, c3)
        u1 = ((uw >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08     # 2**-24, exact
        t1 = (tw >> 8).to(tl.float32) * 5.9604644775390625e-08
        r = tl.sqrt(tl.log(u1) * -2.0)
        theta = t1 * 6.2831854820251465                                   # float32(2 pi)
        z = tl.where(lane % 2 == 0, r * tl.cos(theta), r * tl.sin(theta))
        if MODE == 1:
            tl.store(out_ptr + offs, z, mask=mask)
        else:
            base = tl.load(base_ptr + offs, mask=mask).to(tl.float32)
            v = z * sigma + base
            if BF16_BITS:
                # Round to nearest even by hand: Triton's interpreter truncates float32 -> bfloat16,
                # so the cast is spelled out to be the same on every target (torch rounds this way).
                bits = v.to(tl.uint32, bitcast=True)
                bits = bits + ((bits >> 16) & 1) + 0x7FFF
                tl.store(out_ptr + offs, (bits >> 16).to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)
            else:
                tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(mode: str, out: torch.Tensor, base: torch.Tensor | None, seed: int, name: str, start: int,
            sigma: float = 0.0) -> torch.Tensor:
    seed = noise._check_seed(seed)
    h = noise.fnv1a64(name)
    n = out.numel()
    grid = (triton.cdiv(n, _BLOCK),)
    bf16 = out.dtype == torch.bfloat16
    _kernel[grid](out.view(torch.int16) if bf16 else out, base if base is not None else out, n, start,
                  seed & 0xFFFFFFFF, seed >> 32, h & 0xFFFFFFFF, h >> 32, float(np.float32(sigma)),
                  MODE=MODES[mode], BLOCK=_BLOCK, BF16_BITS=bf16)
    return out


def uint32_stream(seed: int, name: str, start: int, count: int, device="cuda") -> torch.Tensor:
    """Philox words for flat elements start.. (int64 holding u32), as noise.uint32_stream."""
    return _launch("words", torch.empty(count, dtype=torch.int64, device=device), None, seed, name, start)


def normals(seed: int, name: str, start: int, count: int, device="cuda") -> torch.Tensor:
    return _launch("normals", torch.empty(count, dtype=torch.float32, device=device), None, seed, name, start)


def perturb_(param: torch.Tensor, base: torch.Tensor, seed: int, name: str, sigma: float) -> None:
    """param <- cast(base + float32(sigma) * eps) in one kernel; both contiguous, same shape."""
    if param.shape != base.shape or not (param.is_contiguous() and base.is_contiguous()):
        raise ValueError(f"{name}: param and base must be contiguous tensors of one shape")
    _launch("perturb", param.view(-1), base.view(-1), seed, name, 0, sigma)
