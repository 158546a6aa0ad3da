"""The numba kernels of randopt_hpc.noise_table, at module level so that numba's on-disk cache holds them (a
kernel defined inside a function is compiled again in every process: seconds per rank at start). Imported
only where numba is installed."""
import numba
import numpy as np

from randopt_hpc import noise as N
from randopt_hpc import noise_window as W

u64, u32 = np.uint64, np.uint32
M32, S32 = u64(N._M32), u64(32)
M0, M1 = u64(N._PHILOX_M0), u64(N._PHILOX_M1)
LO16, S16 = u32(0xFFFF), u32(16)
TWO_POW_M24, TWO_PI = np.float32(N._TWO_POW_M24), np.float32(N._TWO_PI_F32)


@numba.njit(inline="always")
def rnd(c0, c1, c2, c3, k0, k1):
    # Masks that LLVM can see keep every product a 32x32 one (one vpmuludq), not a 64-bit multiply.
    p0, p1 = M0 * c0, M1 * c2
    return (p1 >> S32) ^ c1 ^ (k0 & M32), p1 & M32, (p0 >> S32) ^ c3 ^ (k1 & M32), p0 & M32


@numba.njit(inline="always")
def philox(c0, c1, c2, c3, k):
    # Unrolled by hand: a round loop keeps LLVM from vectorising the caller's loop over blocks.
    c0, c1, c2, c3 = rnd(c0, c1, c2, c3, k[0], k[1])
    c0, c1, c2, c3 = rnd(c0, c1, c2, c3, k[2], k[3])
    c0, c1, c2, c3 = rnd(c0, c1, c2, c3, k[4], k[5])
    c0, c1, c2, c3 = rnd(c0, c1, c2, c3, k[6], k[7])
    c0, c1, c2, c3 = rnd(c0, c1, c2, c3, k[8], k[9])
    c0, c1, c2, c3 = rnd(c0, c1, c2, c3, k[10], k[11])
    c0, c1, c2, c3 = rnd(c0, c1, c2, c3, k[12], k[13])
    c0, c1, c2, c3 = rnd(c0, c1, c2, c3, k[14], k[15])
    c0, c1, c2, c3 = rnd(c0, c1, c2, c3, k[16], k[17])
    return rnd(c0, c1, c2, c3, k[18], k[19])


@numba.njit(boundscheck=False, cache=True)
def words(b0, k, h0, h1, out):
    h0, h1 = h0 & M32, h1 & M32
    for i in range(out.shape[0] // 4):
        b = b0 + u64(i)
        x0, x1, x2, x3 = philox(b & M32, b >> S32, h0, h1, k)
        out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3] = u32(x0), u32(x1), u32(x2), u32(x3)


@numba.njit(boundscheck=False, cache=True)
def lookup_add(buf, table, base, out, sigma):
    for w in range(out.shape[0] // 2):
        x = buf[w]
        out[2 * w] = base[2 * w] + sigma * table[x & LO16]
        out[2 * w + 1] = base[2 * w + 1] + sigma * table[x >> S16]


@numba.njit(boundscheck=False, cache=True)
def lookup(buf, table, out):
    for w in range(out.shape[0] // 2):
        x = buf[w]
        out[2 * w], out[2 * w + 1] = table[x & LO16], table[x >> S16]


@numba.njit(parallel=True, boundscheck=False, cache=True)
def table16_flat(k, h0, h1, j0, off, cnt, table, base, out, sigma, fused):
    # Item i: elements j0[i]..j0[i]+cnt[i] of one tensor (j0 a multiple of 8) at out[off[i]..].
    # fused: out = base + sigma * z (two float32 ops, as torch's mul_ then add_); else out = z.
    for i in numba.prange(off.shape[0]):
        buf = np.empty((cnt[i] + 7) // 8 * 4, dtype=np.uint32)
        words(u64(j0[i] // 8), k, h0[i], h1[i], buf)
        m = (cnt[i] + 1) // 2 * 2
        # Zero-based slices and one branch per item keep the element loop free of index arithmetic.
        if fused:
            lookup_add(buf, table, base[off[i]:off[i] + m], out[off[i]:off[i] + m], sigma)
        else:
            lookup(buf, table, out[off[i]:off[i] + m])


@numba.njit(parallel=True, boundscheck=False, cache=True)
def boxmuller_inputs(k, h0, h1, j0, off, cnt, u1, theta):
    # Box-Muller's exact integer-to-float steps (noise.normals_from_uint32); torch does log/sin/cos.
    for i in numba.prange(off.shape[0]):
        buf = np.empty((cnt[i] + 3) // 4 * 4, dtype=np.uint32)
        words(u64(j0[i] // 4), k, h0[i], h1[i], buf)
        o = off[i] // 2
        for p in range(buf.shape[0] // 2):
            u1[o + p] = np.float32((buf[2 * p] >> 8) + u32(1)) * TWO_POW_M24
            theta[o + p] = (np.float32(buf[2 * p + 1] >> 8) * TWO_POW_M24) * TWO_PI


WINDOW, WINDOW_MASK, MARK = u64(W.WINDOW), u64((1 << W.TABLE_BITS) - 1), u64(W._MARK)


@numba.njit(boundscheck=False, cache=True)
def add_window(src, base, out, sigma):
    for j in range(out.shape[0]):
        out[j] = base[j] + sigma * src[j]


@numba.njit(parallel=True, boundscheck=False, cache=True)
def window_flat(k, h0, h1, j0, off, cnt, table, base, out, sigma, fused):
    # noise_window: item i (elements j0[i].. of one tensor, j0 a multiple of the window) is one window of the
    # table; fused: out = base + sigma * window (two float32 ops, as torch's mul_ then add_), else out = window.
    for i in numba.prange(off.shape[0]):
        b = u64(j0[i]) // WINDOW
        x0, _, _, _ = philox(b & M32, (b >> S32) | MARK, h0[i] & M32, h1[i] & M32, k)
        o, n = x0 & WINDOW_MASK, cnt[i]
        if fused:
            add_window(table[o:o + n], base[off[i]:off[i] + n], out[off[i]:off[i] + n], sigma)
        else:
            out[off[i]:off[i] + n] = table[o:o + n]


# randopt_hpc.noise's Philox words, one block per counter (a round loop: the reference layout).
# Every constant is uint64: numba turns mixed uint64/int64 arithmetic into float64.
W0, W1 = u64(N._PHILOX_W0), u64(N._PHILOX_W1)


@numba.njit(inline="always")
def philox_rounds(c0, c1, c2, c3, k0, k1):
    for r in range(N._ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & M32, (k1 + W1) & M32
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = (p1 >> S32) ^ c1 ^ k0, p1 & M32, (p0 >> S32) ^ c3 ^ k1, p0 & M32
    return c0, c1, c2, c3


@numba.njit(parallel=True, cache=True)
def stream(b0, k0, k1, h0, h1, out):
    for i in numba.prange(out.shape[0]):
        b = b0 + u64(i)
        x = philox_rounds(b & M32, b >> S32, h0, h1, k0, k1)
        for lane in range(4):
            out[i, lane] = x[lane]


@numba.njit(parallel=True, cache=True)
def counters(ctr, k0, k1, out):
    for i in numba.prange(ctr.shape[0]):
        x = philox_rounds(u64(ctr[i, 0]), u64(ctr[i, 1]), u64(ctr[i, 2]), u64(ctr[i, 3]), k0, k1)
        for lane in range(4):
            out[i, lane] = x[lane]
