"""Seeded Gaussian noise for weight tensors: one seed means one model, on any rank or device.

Noise is a pure function of (seed, checkpoint tensor name, flat element index) in the unsharded
tensor, so no RNG state is ever carried between tensors, candidates or processes:

  key     = (seed mod 2**32, seed >> 32)
  counter = (block lo, block hi, fnv1a64(name) lo, fnv1a64(name) hi),  block = j // 4
  x       = Philox4x32-10(counter, key)[j % 4]

and Box-Muller in float32 turns the word pairs (x0, x1), (x2, x3) of a block into normals.

Two Philox implementations give bitwise equal words: "torch" (reference, any device) and
"numba" (compiled CPU). The float transform is always the same torch code, so they also
give identical normals.

Noise versions (NOISE_VERSIONS, argument `version`): "boxmuller" (the above; the default, unchanged),
"table16" (the same words, each split into two 16-bit quantile-table lookups: a discretised normal,
about 2x fewer Philox blocks and no float transform; see randopt_hpc.noise_table) and "window" (runs of
16384 elements read from one fixed table of table16 normals at a seeded offset: one Philox block per run;
see randopt_hpc.noise_window).
"""
from __future__ import annotations

import functools
import math
import operator

import numpy as np
import torch

from randopt_hpc.population import NOISE_VERSIONS  # noqa: F401  (one list: the config's choices)

PHILOX_IMPLS = ("torch", "numba")

_M32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_ROUNDS = 10
_TWO_PI_F32 = float(np.float32(2.0 * math.pi))
_TWO_POW_M24 = 2.0 ** -24   # exact in float32


def fnv1a64(name: str) -> int:
    """64-bit FNV-1a of the UTF-8 name: a stable, dependency-free stream id per tensor."""
    h = 0xCBF29CE484222325
    for byte in name.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _check_seed(seed: int) -> int:
    seed = operator.index(seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


# --------------------------------------------------------------------------- torch reference

def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # A 32x32 product does not fit int64; two 32x16 products (< 2**48) do.
    p_lo = b & 0xFFFF
    p_lo = p_lo * a
    p_hi = (b >> 16) * a
    mid = p_lo + ((p_hi & 0xFFFF) << 16)          # < 2**49: no overflow
    return (p_hi >> 16) + (mid >> 32), mid & _M32


def philox4x32_10(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 (Random123) on an int64 tensor [..., 4] of u32 values; returns the same layout."""
    if counter.dtype != torch.int64 or counter.shape[-1] != 4:
        raise ValueError("counter must be an int64 tensor of shape [..., 4]")
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = int(key[0]) & _M32, int(key[1]) & _M32
    for r in range(_ROUNDS):
        if r:
            k0, k1 = (k0 + _PHILOX_W0) & _M32, (k1 + _PHILOX_W1) & _M32
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack((c0, c1, c2, c3), dim=-1)


def _counters(b: torch.Tensor, h: int) -> torch.Tensor:
    """Philox counters [n, 4] for block numbers b of the tensor whose name hashes to h."""
    return torch.stack((b & _M32, b >> 32, torch.full_like(b, h & _M32), torch.full_like(b, h >> 32)), dim=-1)


def _blocks_torch(b0: int, nblocks: int, k: tuple[int, int], h: int, device) -> torch.Tensor:
    return philox4x32_10(_counters(torch.arange(b0, b0 + nblocks, dtype=torch.int64, device=device), h), k)


# --------------------------------------------------------------------------- numba (lazy)

@functools.cache
def _numba_kernels():
    """The numba kernels (randopt_hpc.noise_kernels: at module level, so numba's disk cache holds them); None
    when numba is unavailable."""
    try:
        from randopt_hpc import noise_kernels as K
    except ImportError:
        return None
    return K.stream, K.counters


def _require_numba():
    kernels = _numba_kernels()
    if kernels is None:
        raise ImportError("noise impl 'numba' requested but numba is not importable")
    return kernels


def _philox_numba_blocks(counters, k0: int, k1: int) -> np.ndarray:
    """Numba Philox on an explicit [n, 4] array of u32 counters; int64 [n, 4] out (for tests)."""
    ctr = np.ascontiguousarray(counters, dtype=np.uint64).reshape(-1, 4)
    out = np.empty(ctr.shape, dtype=np.int64)
    _require_numba()[1](ctr, np.uint64(k0 & _M32), np.uint64(k1 & _M32), out)
    return out


def _blocks_numba(b0: int, nblocks: int, k: tuple[int, int], h: int) -> torch.Tensor:
    out = np.empty((nblocks, 4), dtype=np.int64)
    if nblocks:
        _require_numba()[0](np.uint64(b0), np.uint64(k[0]), np.uint64(k[1]),
                            np.uint64(h & _M32), np.uint64(h >> 32), out)
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- streams

def _resolve_impl(impl: str, device) -> str:
    if impl == "auto":
        on_cpu = torch.device(device).type == "cpu"
        return "numba" if on_cpu and _numba_kernels() is not None else "torch"
    if impl not in PHILOX_IMPLS:
        raise ValueError(f"unknown noise impl {impl!r}; expected 'auto' or one of {PHILOX_IMPLS}")
    return impl


def uint32_stream(seed: int, name: str, start: int, count: int, impl: str = "torch",
                  device="cpu") -> torch.Tensor:
    """Philox words for flat elements start..start+count-1 of tensor `name`, as int64 u32 values."""
    seed = _check_seed(seed)
    if start < 0 or count < 0:
        raise ValueError("start and count must be non-negative")
    impl = _resolve_impl(impl, device)
    key, h = (seed & _M32, seed >> 32), fnv1a64(name)
    # Whole blocks cover the range; the slice then drops the partial lanes at both ends.
    b0, b1 = start // 4, (start + count + 3) // 4
    if impl == "torch":
        words = _blocks_torch(b0, b1 - b0, key, h, device)
    else:
        words = _blocks_numba(b0, b1 - b0, key, h).to(device)
    lo = start - 4 * b0
    return words.reshape(-1)[lo:lo + count]


def normals_from_uint32(x: torch.Tensor, start: int) -> torch.Tensor:
    """Box-Muller (float32) normals for the words x of flat elements start.. (start, len even).

    Lanes pair up as (0, 1) and (2, 3), so the range must not split a pair.
    """
    if start % 2 or x.numel() % 2:
        raise ValueError("normals_from_uint32 needs an even start and an even number of words")
    pairs = x.reshape(-1, 2)
    # Top 24 bits: exact in float32; the +1 keeps u1 in (0, 1] so log never sees 0.
    u1 = ((pairs[:, 0] >> 8) + 1).to(torch.float32) * _TWO_POW_M24
    t1 = (pairs[:, 1] >> 8).to(torch.float32) * _TWO_POW_M24
    r = torch.sqrt(torch.log(u1) * -2.0)
    theta = t1 * _TWO_PI_F32
    return torch.stack((r * torch.cos(theta), r * torch.sin(theta)), dim=-1).reshape(-1)


def _table(version: str):
    """The module that draws a table version ("table16", "window"), None for "boxmuller"; ValueError for
    anything else."""
    if version not in NOISE_VERSIONS:
        raise ValueError(f"unknown noise version {version!r}; expected one of {NOISE_VERSIONS}")
    if version == "table16":
        from randopt_hpc import noise_table  # lazy: both import this module

        return noise_table
    if version == "window":
        from randopt_hpc import noise_window

        return noise_window
    return None


def normals_range(seed: int, name: str, start: int, count: int, impl: str = "auto", device="cpu",
                  version: str = "boxmuller") -> torch.Tensor:
    """Normals of flat elements start..start+count-1 of tensor `name`."""
    if _table(version):
        return _table(version).normals_range(seed, name, start, count, impl, device)
    # Align to whole blocks so any (start, count) works, then cut back.
    a0, a1 = start - start % 4, -(-(start + count) // 4) * 4
    x = uint32_stream(seed, name, a0, a1 - a0, impl=impl, device=device)
    return normals_from_uint32(x, a0)[start - a0:start - a0 + count]


def normals_at(seed: int, name: str, index: torch.Tensor, impl: str = "auto",
               version: str = "boxmuller") -> torch.Tensor:
    """noise(seed, name, shape).reshape(-1)[index] for any flat indices, without the whole tensor.

    Each element's whole Philox block is drawn and turned into normals by the same float transform,
    so the values are bitwise those of the contiguous path. For tensor-parallel shards whose slices
    are not one flat range (row-parallel layers split columns)."""
    if _table(version):
        return _table(version).normals_at(seed, name, index, impl)
    seed = _check_seed(seed)
    index = torch.as_tensor(index, dtype=torch.int64)
    key, h = (seed & _M32, seed >> 32), fnv1a64(name)
    counters = _counters(index.reshape(-1) // 4, h)
    if _resolve_impl(impl, index.device) == "numba":
        words = torch.from_numpy(_philox_numba_blocks(counters.numpy(), *key))
    else:
        words = philox4x32_10(counters, key)
    normals = normals_from_uint32(words.reshape(-1), 0).reshape(-1, 4)
    return normals.gather(1, (index.reshape(-1) % 4)[:, None]).reshape(index.shape)


def noise(seed: int, name: str, shape, impl: str = "auto", device="cpu", version: str = "boxmuller") -> torch.Tensor:
    """Standard normal float32 noise of `shape` for tensor `name` under candidate `seed`."""
    shape = torch.Size(shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,))
    return normals_range(seed, name, 0, shape.numel(), impl, device, version).reshape(shape)


def perturb_(param: torch.Tensor, base: torch.Tensor, seed: int, name: str, sigma: float,
             impl: str = "auto", chunk: int = 1 << 22, version: str = "boxmuller") -> None:
    """param <- cast(base.float() + float32(sigma) * noise), in flat chunks to bound memory.

    Always from the pristine base, never incrementally, so restore is an exact copy.
    """
    if param.shape != base.shape:
        raise ValueError(f"{name}: param shape {tuple(param.shape)} != base shape {tuple(base.shape)}")
    if chunk <= 0 or chunk % 4:
        raise ValueError("chunk must be a positive multiple of 4")
    fused_gpu = param.device.type == "cuda" and param.is_contiguous() and base.is_contiguous()
    # The Triton kernel draws Box-Muller only; table16 on a GPU takes the torch path below.
    if _table(version) is None and impl == "auto" and fused_gpu:
        from randopt_hpc import noise_triton  # lazy: triton only where there is a GPU

        return noise_triton.perturb_(param, base, seed, name, sigma)
    # Round sigma to float32 once, so the product is a float32 op whatever the caller passed.
    sigma32 = float(np.float32(sigma))
    flat_base = base.reshape(-1)
    # Non-contiguous params get a contiguous scratch, copied back once at the end.
    out = param.view(-1) if param.is_contiguous() else torch.empty(
        param.numel(), dtype=param.dtype, device=param.device)
    for s in range(0, out.numel(), chunk):
        n = min(chunk, out.numel() - s)
        eps = normals_range(seed, name, s, n, impl, param.device, version)
        # Separate mul and add (no fused alpha/FMA), matching the unchunked formula bitwise.
        eps.mul_(sigma32).add_(flat_base[s:s + n].to(torch.float32))
        out[s:s + n].copy_(eps)
    if not param.is_contiguous():
        param.copy_(out.view(param.shape))


def shift_(base: torch.Tensor, name: str, terms, impl: str = "auto", version: str = "boxmuller",
           chunk: int = 1 << 22) -> None:
    """base <- cast(base.float() + Σ float32(c) * noise(seed)) for (seed, c) in `terms`, summed in order in
    float32 (an ES update, randopt_hpc.es); bitwise what FlatParams.shift gives."""
    flat = base.view(-1)
    for s in range(0, flat.numel(), chunk):
        n = min(chunk, flat.numel() - s)
        acc = torch.zeros(n, dtype=torch.float32, device=base.device)
        for seed, c in terms:
            acc.add_(normals_range(seed, name, s, n, impl, base.device, version).mul_(float(np.float32(c))))
        flat[s:s + n].copy_(acc.add_(flat[s:s + n].to(torch.float32)))
