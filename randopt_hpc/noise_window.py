"""Noise version "window": each run of 2**14 elements of a tensor is a window into one fixed table of normals.

The shared noise table of evolution strategies at scale (Salimans et al. 2017), made counter-based:

  TABLE    = table16 normals 0 .. 2**22 + 2**14 - 1 of seed TABLE_SEED, tensor name TABLE_NAME (16.1 MiB)
  item     = j // 2**14 (the tensor's elements in runs of WINDOW),  r = j % 2**14
  offset   = word 0 of Philox4x32-10(counter = (item lo, item hi | 2**31, fnv1a64(name) lo, hi), key = seed)
             & (2**22 - 1)
  z[j]     = TABLE[offset(item) + r]

The top counter bit keeps the offset words apart from the element streams of boxmuller and table16
(whose block numbers never reach 2**31 in their high word). So one Philox block is drawn per 16384
elements instead of one per 4 or 8, and a perturbation is a streaming add: base + sigma * TABLE[window],
memory-bound like a copy. Every element is a table16 normal (the same marginal: 65536 levels, tails cut
at 4.325, variance 0.99998); two candidates share a window only where two 22-bit offsets coincide. What
is given up: within one candidate, elements of different windows may repeat the same table values (at
other positions) once a model has more than 2**22 perturbed elements; the directions stay random, the
coordinates are no longer independent. No float math: every device gives the same bits from the same
table, computed once per process on the CPU.
"""
from __future__ import annotations

import functools

import torch

from randopt_hpc import noise as N

WINDOW = 1 << 14                 # elements per window; noise_table's work items are exactly these
TABLE_BITS = 22
TABLE_SEED = 0x52414E444F505421   # "RANDOPT!": any fixed seed; changing it is a new noise version
TABLE_NAME = "randopt_hpc.noise_window.table"
_MARK = 1 << 31                   # in the counter's block-high word: offset draws, never an element's block


@functools.cache
def _table_cpu() -> torch.Tensor:
    from randopt_hpc import noise_table

    return noise_table.normals_range(TABLE_SEED, TABLE_NAME, 0, (1 << TABLE_BITS) + WINDOW, impl="auto")


@functools.cache
def _table_on(device: str) -> torch.Tensor:
    return _table_cpu().to(device)


def table(device="cpu") -> torch.Tensor:
    """The shared float32 table, 2**22 + 2**14 normals, the same bits on every device."""
    return _table_on(str(torch.device(device)))


def offsets(seed: int, name: str, items: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """The table offsets (int64) of windows `items` of tensor `name` under `seed`."""
    seed = N._check_seed(seed)
    items = torch.as_tensor(items, dtype=torch.int64)
    key, h = (seed & N._M32, seed >> 32), N.fnv1a64(name)
    counters = N._counters(items.reshape(-1), h)
    counters[:, 1] |= _MARK
    if N._resolve_impl(impl, items.device) == "numba":
        words = torch.from_numpy(N._philox_numba_blocks(counters.cpu().numpy(), *key)).to(items.device)
    else:
        words = N.philox4x32_10(counters, key)
    return (words[:, 0] & ((1 << TABLE_BITS) - 1)).reshape(items.shape)


def normals_at(seed: int, name: str, index: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """window normals of any flat indices of tensor `name` (tensor-parallel shards)."""
    index = torch.as_tensor(index, dtype=torch.int64)
    if index.numel() == 0:
        return torch.empty(index.shape, dtype=torch.float32, device=index.device)
    first = int(index.min()) // WINDOW
    items = torch.arange(first, int(index.max()) // WINDOW + 1, dtype=torch.int64, device=index.device)
    off = offsets(seed, name, items, impl)
    return table(index.device)[off[index // WINDOW - first] + index % WINDOW]


def normals_range(seed: int, name: str, start: int, count: int, impl: str = "auto", device="cpu") -> torch.Tensor:
    """window normals of flat elements start..start+count-1 of tensor `name`."""
    if start < 0 or count < 0:
        raise ValueError("start and count must be non-negative")
    return normals_at(seed, name, torch.arange(start, start + count, dtype=torch.int64, device=device), impl)

