"""Fast CPU perturbation: noise version "table16", and one compiled call for all tensors of a model.

table16 takes the same Philox4x32-10 words as Box-Muller (randopt_hpc.noise: key = seed, counter =
(block, fnv1a64(name))) but spends each 32-bit word on two elements: element j of a tensor is

  x = word j // 2 of the stream (block j // 8, lane (j // 2) % 4),  u = (x >> 16 * (j % 2)) & 0xFFFF,
  z = TABLE16[u],  TABLE16[u] = float32(Phi^-1((u + 0.5) / 65536)).

So z is exactly a discretised standard normal: 65536 equally likely values, the midpoints in probability
of 65536 equal slices. Tails are cut at |z| <= 4.325 (Phi^-1(0.5 / 65536)), so no element moves more
than 4.325 sigma; the variance is 0.99998 rather than 1 (the cut tails and the midpoint rule); the mean
is exactly 0 (the table is symmetric by construction). No float math but one lookup, so torch, numba and
any GPU port give bitwise equal normals wherever the words are equal; only the table must be the same
(its known answers are in the tests).

FlatParams packs a model's perturbed tensors into one flat buffer (each at an offset that is a multiple
of 8, so Box-Muller's lane pairs and table16's blocks never straddle two tensors), so that a
perturbation is one numba call plus, for Box-Muller, a few torch passes over flat scratch: bitwise the
values of randopt_hpc.noise.perturb_ tensor by tensor, with no per-tensor Python in the loop.
"""
from __future__ import annotations

import functools
from statistics import NormalDist

import numpy as np
import torch

from randopt_hpc import noise as N
from randopt_hpc import noise_window

_ITEM = noise_window.WINDOW   # elements per parallel work item: a multiple of 8, and one window of "window"
_CHUNK = 1 << 21         # elements per scratch chunk, bounding Box-Muller's temporaries


@functools.cache
def table16() -> torch.Tensor:
    """The 65536 float32 quantiles, lower half computed once and mirrored so TABLE[65535 - u] == -TABLE[u]."""
    nd = NormalDist()
    lo = np.array([nd.inv_cdf((u + 0.5) / 65536) for u in range(32768)], dtype=np.float32)
    return torch.from_numpy(np.concatenate([lo, -lo[::-1]]))


def _round_keys(seed: int) -> np.ndarray:
    seed = N._check_seed(seed)
    r = np.arange(10, dtype=np.uint64)
    k = np.empty(20, dtype=np.uint64)
    k[0::2] = (np.uint64(seed & N._M32) + r * np.uint64(N._PHILOX_W0)) & np.uint64(N._M32)
    k[1::2] = (np.uint64(seed >> 32) + r * np.uint64(N._PHILOX_W1)) & np.uint64(N._M32)
    return k


# --------------------------------------------------------------------------- reference (torch or numba words)

def normals_range(seed: int, name: str, start: int, count: int, impl: str = "auto", device="cpu") -> torch.Tensor:
    """table16 normals of flat elements start..start+count-1 of tensor `name`."""
    w0, w1 = start // 2, (start + count + 1) // 2
    x = N.uint32_stream(seed, name, w0, w1 - w0, impl=impl, device=device)
    halves = torch.stack((x & 0xFFFF, x >> 16), dim=-1).reshape(-1)
    return table16().to(device)[halves][start - 2 * w0:start - 2 * w0 + count]


def normals_at(seed: int, name: str, index: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """table16 normals of any flat indices of tensor `name` (tensor-parallel shards)."""
    seed = N._check_seed(seed)
    index = torch.as_tensor(index, dtype=torch.int64)
    flat = index.reshape(-1)
    key, h = (seed & N._M32, seed >> 32), N.fnv1a64(name)
    counters = N._counters(flat // 8, h)
    if N._resolve_impl(impl, index.device) == "numba":
        words = torch.from_numpy(N._philox_numba_blocks(counters.numpy(), *key))
    else:
        words = N.philox4x32_10(counters, key)
    x = words.gather(1, ((flat // 2) % 4)[:, None])[:, 0]
    u = (x >> (16 * (flat % 2))) & 0xFFFF
    return table16().to(index.device)[u].reshape(index.shape)


# --------------------------------------------------------------------------- numba (lazy)

@functools.cache
def _kernels():
    from randopt_hpc import noise_kernels as K  # numba: only here

    return K.words, K.table16_flat, K.boxmuller_inputs


def words_numba(seed: int, name: str, b0: int, nblocks: int) -> np.ndarray:
    """Philox words of blocks b0.. of tensor `name` from the vectorised kernel, uint32 (for tests)."""
    h = N.fnv1a64(name)
    out = np.empty(4 * nblocks, dtype=np.uint32)
    _kernels()[0](np.uint64(b0), _round_keys(seed), np.uint64(h & N._M32), np.uint64(h >> 32), out)
    return out


# --------------------------------------------------------------------------- all tensors in one call

class FlatParams:
    """A model's perturbed tensors re-pointed into one flat CPU buffer, with a pristine flat copy.

    `params` maps name -> Parameter (each once: tied weights share one Parameter). After this,
    param.data is a view of `flat` and `base[name]` a view of `base_flat`; the padding between
    tensors is junk in `flat` and never read as a weight.
    """

    def __init__(self, params: dict[str, torch.Tensor]):
        self.names = list(params)
        dtype = {p.dtype for p in params.values()}
        if len(dtype) != 1 or any(p.device.type != "cpu" for p in params.values()):
            raise ValueError("FlatParams needs CPU tensors of one dtype")
        self.dtype = dtype.pop()
        counts = [params[n].numel() for n in self.names]
        offs = np.concatenate([[0], np.cumsum([-(-c // 8) * 8 for c in counts])]).astype(np.int64)
        self.numel = int(offs[-1])
        self.flat = torch.zeros(self.numel, dtype=self.dtype)
        self.base_flat = torch.zeros(self.numel, dtype=self.dtype)
        self.base = {}
        with torch.no_grad():
            for n, o, c in zip(self.names, offs, counts):
                p = params[n]
                self.base_flat[o:o + c].copy_(p.detach().reshape(-1))
                self.flat[o:o + c].copy_(p.detach().reshape(-1))
                p.data = self.flat[o:o + c].view(p.shape)
                self.base[n] = self.base_flat[o:o + c].view(p.shape)
        # Work items of at most _ITEM elements, in flat order, so a chunk of the buffer is a run of items.
        items = [(N.fnv1a64(n), j, o + j, min(_ITEM, c - j))
                 for n, o, c in zip(self.names, offs, counts) for j in range(0, c, _ITEM)]
        h = np.array([it[0] for it in items], dtype=np.uint64)
        self.h0, self.h1 = h & np.uint64(N._M32), h >> np.uint64(32)
        self.j0, self.off, self.cnt = (np.array([it[i] for it in items], dtype=np.int64) for i in (1, 2, 3))
        # Chunk boundaries: item indices where a new _CHUNK-sized piece of the flat buffer starts.
        self.cuts = [0]
        for i, o in enumerate(self.off):
            if o - self.off[self.cuts[-1]] >= _CHUNK:
                self.cuts.append(i)
        self.cuts.append(len(items))
        self._scratch: torch.Tensor | None = None

    def restore(self) -> None:
        self.flat.copy_(self.base_flat)

    def perturb(self, seed: int, sigma: float, version: str = "boxmuller") -> None:
        """flat <- cast(base + float32(sigma) * eps(version)), bitwise as noise.perturb_ per tensor."""
        self._draw(seed, sigma, version, self.base_flat, self.flat)

    def shift(self, terms, version: str = "boxmuller") -> None:
        """base <- cast(base + Σ float32(c) * eps(seed)) for (seed, c) in `terms` (an ES update), the sum in
        order in float32, bitwise as noise.shift_ per tensor; then the weights are the new base."""
        acc = torch.zeros(self.numel, dtype=torch.float32)
        for seed, c in terms:
            self._draw(seed, c, version, acc, acc)   # acc <- acc + c * eps: the two float32 ops of a perturbation
        self.base_flat.copy_(acc.add_(self.base_flat.to(torch.float32)))
        self.restore()

    def _draw(self, seed: int, sigma: float, version: str, base: torch.Tensor, out: torch.Tensor) -> None:
        """out <- cast(base + float32(sigma) * eps) over the whole buffer (base and out may be one tensor)."""
        if version not in N.NOISE_VERSIONS:
            raise ValueError(f"unknown noise version {version!r}; expected one of {N.NOISE_VERSIONS}")
        k, sigma32 = _round_keys(seed), np.float32(sigma)
        _, table_kernel, bm_kernel = _kernels()
        if version == "window":
            from randopt_hpc import noise_kernels  # numba: only here

            table_kernel, table = noise_kernels.window_flat, noise_window.table().numpy()
        else:
            table = table16().numpy()
        if version != "boxmuller" and out.dtype == base.dtype == torch.float32:
            table_kernel(k, self.h0, self.h1, self.j0, self.off, self.cnt, table, base.numpy(), out.numpy(),
                         sigma32, True)
            return
        for a, b in zip(self.cuts[:-1], self.cuts[1:]):
            s = int(self.off[a])
            e = int(self.off[b - 1] + -(-self.cnt[b - 1] // 8) * 8)
            eps = self._eps(e - s)
            off = self.off[a:b] - s
            args = (k, self.h0[a:b], self.h1[a:b], self.j0[a:b], off, self.cnt[a:b])
            if version != "boxmuller":
                table_kernel(*args, table, eps.numpy(), eps.numpy(), sigma32, False)
            else:
                self._boxmuller(args, eps, bm_kernel)
            # Separate mul and add, as noise.perturb_ does, so no FMA changes a bit.
            eps.mul_(float(sigma32))
            if out.dtype == base.dtype == torch.float32:
                torch.add(eps, base[s:e], out=out[s:e])
            else:
                eps.add_(base[s:e].to(torch.float32))
                out[s:e].copy_(eps)

    def _eps(self, n: int) -> torch.Tensor:
        if self._scratch is None or self._scratch.numel() < 3 * n:
            self._scratch = torch.empty(3 * n, dtype=torch.float32)
        return self._scratch[:n]

    def _boxmuller(self, args, eps: torch.Tensor, kernel) -> None:
        n = eps.numel()
        r, c = self._scratch[n:n + n // 2], self._scratch[n + n // 2:2 * n]
        theta = self._scratch[2 * n:2 * n + n // 2]
        kernel(*args, r.numpy(), theta.numpy())
        # The same torch ops on the same float32 inputs as noise.normals_from_uint32, in place.
        torch.log(r, out=r)
        r.mul_(-2.0)
        torch.sqrt(r, out=r)
        torch.cos(theta, out=c)
        torch.sin(theta, out=theta)
        pairs = eps.view(-1, 2)
        torch.mul(r, c, out=pairs[:, 0])
        torch.mul(r, theta, out=pairs[:, 1])
