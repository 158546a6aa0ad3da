"""Seeded noise: Philox known answers, impl equivalence, the per-tensor contract, perturb/restore."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from randopt_hpc import noise as N

# Random123 known-answer vectors for Philox4x32-10: (counter, key, expected words).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
BIG_SEED = 2**40 + 12345          # exercises the high key word


def _philox(impl, counter, key):
    if impl == "torch":
        return tuple(N.philox4x32_10(torch.tensor(counter, dtype=torch.int64), key).tolist())
    return tuple(N._philox_numba_blocks(np.array([counter]), *key)[0].tolist())


@pytest.mark.parametrize("impl", N.PHILOX_IMPLS)
@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(impl, counter, key, expected):
    assert _philox(impl, counter, key) == expected


def test_philox_torch_batched_shape():
    ctr = torch.tensor([k[0] for k in KAT[:2]] * 3, dtype=torch.int64).reshape(3, 2, 4)
    out = N.philox4x32_10(ctr, (0, 0))
    assert out.shape == (3, 2, 4) and out.dtype == torch.int64
    assert tuple(out[2, 0].tolist()) == KAT[0][2]
    assert tuple(out[1, 1].tolist()) == _philox("torch", KAT[1][0], (0, 0))


def test_fnv1a64_vectors():
    assert N.fnv1a64("") == 0xCBF29CE484222325
    assert N.fnv1a64("a") == 0xAF63DC4C8601EC8C
    assert N.fnv1a64("foobar") == 0x85944171F73967E8


@pytest.mark.parametrize("impl", N.PHILOX_IMPLS)
def test_stream_follows_the_counter_contract(impl):
    # Elements past 2**34 put bits into the high block word.
    name, start = "model.layers.3.mlp.up_proj.weight", 4 * 2**32 + 6
    h = N.fnv1a64(name)
    got = N.uint32_stream(BIG_SEED, name, start, 5, impl=impl).tolist()
    key = (BIG_SEED & 0xFFFFFFFF, BIG_SEED >> 32)
    want = []
    for j in range(start, start + 5):
        b = j // 4
        want.append(_philox("torch", (b & 0xFFFFFFFF, b >> 32, h & 0xFFFFFFFF, h >> 32), key)[j % 4])
    assert got == want


def test_torch_and_numba_bitwise_equal():
    args = (BIG_SEED, "model.embed_tokens.weight", 1_000_001, 100_003)
    xt = N.uint32_stream(*args, impl="torch")
    xn = N.uint32_stream(*args, impl="numba")
    assert xt.dtype == xn.dtype == torch.int64 and xt.shape == (100_003,)
    assert torch.equal(xt, xn)
    assert int(xt.min()) >= 0 and int(xt.max()) < 2**32
    nt = N.noise(BIG_SEED, "w", (301, 333), impl="torch")
    nn = N.noise(BIG_SEED, "w", (301, 333), impl="numba")
    assert torch.equal(nt, nn)
    assert torch.equal(N.noise(BIG_SEED, "w", (301, 333)), nn)      # auto


def test_auto_uses_numba_on_cpu():
    # A missing numba must fail here (CI), not silently fall back to the slow path.
    assert N._resolve_impl("auto", "cpu") == "numba"


def test_box_muller_mapping():
    # Lane 0 takes r*cos, lane 1 r*sin, from the top 24 bits of each word.
    x = N.uint32_stream(9, "w", 0, 4)
    n = N.noise(9, "w", (4,))
    for a, b in ((0, 1), (2, 3)):
        u1 = ((int(x[a]) >> 8) + 1) * 2.0**-24
        t1 = (int(x[b]) >> 8) * 2.0**-24
        r = math.sqrt(-2.0 * math.log(u1))
        assert n[a].item() == pytest.approx(r * math.cos(2 * math.pi * t1), abs=1e-5)
        assert n[b].item() == pytest.approx(r * math.sin(2 * math.pi * t1), abs=1e-5)


def test_names_and_seeds_give_distinct_noise():
    a = N.noise(1, "layer.0.weight", (64, 32))
    assert a.dtype == torch.float32 and a.shape == (64, 32)
    assert torch.equal(a, N.noise(1, "layer.0.weight", (64, 32)))
    assert not torch.equal(a, N.noise(1, "layer.1.weight", (64, 32)))
    assert not torch.equal(a, N.noise(2, "layer.0.weight", (64, 32)))
    # The high seed word matters too.
    assert not torch.equal(a, N.noise(1 + 2**32, "layer.0.weight", (64, 32)))


def test_noise_independent_of_other_tensors():
    alone = N.noise(5, "A", (10, 7))
    N.noise(5, "B", (1000,))
    assert torch.equal(alone, N.noise(5, "A", (10, 7)))
    # Only the element count matters, not how the shape splits it.
    assert torch.equal(alone.reshape(-1), N.noise(5, "A", (70,)))


@pytest.mark.parametrize("impl", N.PHILOX_IMPLS)
def test_stream_slices_match_long_stream(impl):
    full = N.uint32_stream(BIG_SEED, "w", 0, 10_000, impl=impl)
    for start, count in ((0, 1), (1, 3), (2, 7), (3, 4), (5, 1), (4097, 999), (9_996, 4)):
        part = N.uint32_stream(BIG_SEED, "w", start, count, impl=impl)
        assert torch.equal(part, full[start:start + count]), (start, count)
    assert N.uint32_stream(BIG_SEED, "w", 17, 0, impl=impl).numel() == 0


def test_normal_slices_match_full_noise():
    full = N.noise(3, "w", (10_000,), impl="torch")
    for start, count in ((0, 4), (1, 2), (3, 5), (4097, 999), (8_000, 2_000)):
        assert torch.equal(N.normals_range(3, "w", start, count, "torch", "cpu"), full[start:start + count])
    x = N.uint32_stream(3, "w", 4096, 1000)
    assert torch.equal(N.normals_from_uint32(x, 4096), full[4096:5096])
    with pytest.raises(ValueError):
        N.normals_from_uint32(x[1:], 4097)


def test_standard_normal_statistics():
    x = N.noise(2024, "stats", (10**6,)).double()
    assert torch.isfinite(x).all()
    assert abs(x.mean().item()) < 0.005
    assert abs(x.std().item() - 1.0) < 0.005


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_perturb_chunked_equals_formula(dtype):
    base = (torch.randn(17, 59, generator=torch.Generator().manual_seed(0))).to(dtype)   # 1003 elements
    sigma = 0.01
    want = (base.float() + float(np.float32(sigma)) * N.noise(BIG_SEED, "w", base.shape)).to(dtype)
    for chunk in (8, 1000, 1 << 22):
        param = torch.zeros_like(base)
        N.perturb_(param, base, BIG_SEED, "w", sigma, chunk=chunk)
        assert torch.equal(param, want), chunk
    # A non-contiguous param (e.g. a transposed view) gets the same values.
    param_t = torch.zeros(59, 17, dtype=dtype).t()
    N.perturb_(param_t, base, BIG_SEED, "w", sigma, chunk=8)
    assert torch.equal(param_t, want)
    assert not torch.equal(want, base)


def test_perturb_rejects_bad_input():
    p = torch.zeros(8)
    with pytest.raises(ValueError):
        N.perturb_(p, torch.zeros(8), 0, "w", 0.1, chunk=6)
    with pytest.raises(ValueError):
        N.perturb_(p, torch.zeros(9), 0, "w", 0.1)
    with pytest.raises(ValueError):
        N.noise(2**63, "w", (4,))
    with pytest.raises(ValueError):
        N.noise(-1, "w", (4,))
    with pytest.raises(ValueError):
        N.uint32_stream(0, "w", 0, 4, impl="cuda")


def test_perturb_starts_from_the_base_whatever_the_param_holds():
    """perturb_ writes base + sigma*eps, never param + sigma*eps: a second perturbation without a restore,
    or one of a param holding garbage, gives the same tensor (restore is the backends' copy from the
    pristine base, tested in test_hf_backend.py)."""
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.bfloat16, torch.float32):
        base = torch.randn(33, 31, generator=g).to(dtype)
        once = torch.empty_like(base)
        N.perturb_(once, base, 7, "w", 0.05)
        assert not torch.equal(once, base)
        again = once.clone()
        N.perturb_(again, base, 7, "w", 0.05)
        junk = torch.full_like(base, 123.0)
        N.perturb_(junk, base, 7, "w", 0.05)
        assert torch.equal(again, once) and torch.equal(junk, once)


def test_select_names():
    from randopt_hpc.population import select_names

    names = ["embed.weight", "layers.0.attn.q.weight", "layers.0.attn.q.bias",
             "layers.0.mlp.up.weight", "norm.weight", "lm_head.weight"]
    assert select_names(names, [], []) == names
    assert select_names(names, [r"layers\.\d+\."], []) == names[1:4]
    assert select_names(names, [r"attn", r"^embed"], []) == names[:3]
    assert select_names(names, [], [r"bias$", r"norm"]) == [
        "embed.weight", "layers.0.attn.q.weight", "layers.0.mlp.up.weight", "lm_head.weight"]
    assert select_names(names, [r"layers"], [r"bias$"]) == ["layers.0.attn.q.weight", "layers.0.mlp.up.weight"]
    assert select_names(list(reversed(names)), [r"weight"], []) == [n for n in reversed(names) if "weight" in n]
    assert select_names(names, [r"nomatch"], []) == []


@pytest.mark.slow   # a fresh interpreter importing torch: seconds
def test_import_does_not_load_numba():
    code = "import sys, randopt_hpc.noise; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
