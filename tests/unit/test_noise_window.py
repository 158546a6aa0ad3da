"""Noise version window (known answers, the definition, statistics, impl equality) and the lazy restore between
candidates that a perturbation rewriting every weight allows."""
import hashlib
import math

import pytest
import torch

from randopt_hpc import noise as N
from randopt_hpc import noise_table as T
from randopt_hpc import noise_window as W

BIG_SEED = 2**40 + 12345
NAME = "model.layers.0.mlp.up_proj.weight"


def test_table_known_answers():
    t = W.table().numpy()
    assert t.shape == ((1 << 22) + (1 << 14),) and str(t.dtype) == "float32"
    # The whole table, pinned: it is the noise of every window run.
    assert hashlib.sha256(t.tobytes()).hexdigest() == \
        "066b709caf8f4b6892911a516e2c30c154b28443706cb93237e0756341a21235"
    assert [float(t[i]).hex() for i in (0, 1, len(t) - 1)] == \
        ["-0x1.119a740000000p-3", "-0x1.0158760000000p+0", "-0x1.ed15560000000p-2"]
    # Every entry is a table16 normal: the same marginal as version table16.
    assert torch.isin(W.table(), T.table16()).all()


def test_known_answers():
    assert W.offsets(BIG_SEED, NAME, torch.tensor([0, 1, 2**33])).tolist() == [2542133, 1729853, 3646631]
    z = N.noise(BIG_SEED, NAME, (16386,), version="window")
    assert [float(v).hex() for v in z[[0, 1, 16383, 16384, 16385]]] == \
        ["-0x1.1d64a60000000p-2", "-0x1.b6ddf20000000p-2", "-0x1.a8a7ac0000000p-2", "0x1.e1c42e0000000p-2",
         "0x1.036b420000000p-1"]


def test_the_definition():
    """z[j] = TABLE[(word 0 of Philox(counter (item, item >> 32 | 2**31, name hash), key seed) & (2**22 - 1))
    + j % 16384], item = j // 16384, written out from the reference Philox."""
    h = N.fnv1a64(NAME)
    z = N.noise(BIG_SEED, NAME, (3 * W.WINDOW + 5,), version="window")
    for j in (0, 5, W.WINDOW - 1, W.WINDOW, 2 * W.WINDOW + 77, 3 * W.WINDOW + 4):
        item = j // W.WINDOW
        ctr = torch.tensor([[item & N._M32, (item >> 32) | 2**31, h & N._M32, h >> 32]])
        word = int(N.philox4x32_10(ctr, (BIG_SEED & N._M32, BIG_SEED >> 32))[0, 0])
        assert torch.equal(z[j], W.table()[(word & (2**22 - 1)) + j % W.WINDOW]), j
    # The offset draws are not an element stream's words: boxmuller's block `item` has the high bit clear.
    assert W.offsets(BIG_SEED, NAME, torch.tensor([0])).item() != \
        N.uint32_stream(BIG_SEED, NAME, 0, 1).item() & (2**22 - 1)


@pytest.mark.parametrize("impl", ["torch", "numba"])
def test_ranges_and_indices_agree_with_the_whole_tensor(impl):
    full = N.noise(3, "w", (3 * W.WINDOW + 11,), impl=impl, version="window")
    assert torch.equal(full, N.noise(3, "w", (3 * W.WINDOW + 11,), impl="torch", version="window"))
    for start, count in ((0, 1), (W.WINDOW - 3, 7), (W.WINDOW, W.WINDOW), (2 * W.WINDOW + 1, W.WINDOW + 9), (5, 0)):
        got = N.normals_range(3, "w", start, count, impl, "cpu", "window")
        assert torch.equal(got, full[start:start + count]), (start, count)
    idx = torch.tensor([[0, W.WINDOW - 1, W.WINDOW], [3 * W.WINDOW + 10, 17, 2 * W.WINDOW]])
    assert torch.equal(N.normals_at(3, "w", idx, impl=impl, version="window"), full[idx])
    assert N.normals_at(3, "w", torch.tensor([], dtype=torch.int64), version="window").shape == (0,)
    with pytest.raises(ValueError, match="non-negative"):
        N.normals_range(3, "w", -1, 4, version="window")
    with pytest.raises(ValueError, match="seed"):
        N.noise(-1, "w", (4,), version="window")


def test_statistics():
    n = 1 << 21    # 128 windows
    x = N.noise(2024, "stats", (n,), version="window").double()
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1.0) < 0.01
    assert x.abs().max().item() < 4.33
    y = N.noise(2024, "stats2", (n,), version="window").double()
    w = N.noise(2025, "stats", (n,), version="window").double()
    # Other tensors and other seeds: windows at independent offsets, so uncorrelated.
    for a, b in ((x, y), (x, w)):
        assert abs(torch.corrcoef(torch.stack((a, b)))[0, 1].item()) < 5 / math.sqrt(n)
    # Different windows of one tensor start at different offsets (a coincidence has odds 2**-22 a pair).
    off = W.offsets(2024, "stats", torch.arange(n // W.WINDOW))
    assert off.unique().numel() == off.numel()
    assert not torch.equal(x[:W.WINDOW], x[W.WINDOW:2 * W.WINDOW])


def _backend(path, version="window"):
    from randopt_hpc.backends.hf import HFBackend

    return HFBackend(str(path), max_new_tokens=3, batch_size=4, noise_version=version)


def test_hf_backend_window_noise_is_the_per_tensor_formula(random_model):
    b = _backend(random_model)
    assert b.rewrites_all
    base = {n: b._params[n].detach().clone() for n in b.names}
    b.perturb(5, 1e-2)
    for n in b.names:
        want = torch.empty_like(base[n])
        N.perturb_(want, base[n], 5, n, 1e-2, impl="torch", version="window")
        assert torch.equal(b._params[n].detach(), want), n
    b.restore()
    assert all(torch.equal(b._params[n].detach(), base[n]) for n in b.names)


def test_lazy_restore_changes_no_answer_and_no_weight(random_model):
    from randopt_hpc.config import load_config
    from randopt_hpc.data import load_examples, make_task
    from randopt_hpc.evaluate import Evaluator
    from randopt_hpc.population import Candidate

    cfg = load_config("configs/demo.yaml", ["task.train_size=5"])
    exs = load_examples(cfg)[0]
    eager, lazy = _backend(random_model, "boxmuller"), _backend(random_model, "boxmuller")
    base = {n: lazy._params[n].detach().clone() for n in lazy.names}
    want_base = tuple(eager.generate(exs))
    ev = Evaluator(lazy, make_task(cfg), keep_text=True)
    for c in [Candidate(index=i, seed=100 + i, sigma=0.05) for i in range(3)]:
        got = ev.answers(exs, c).texts
        eager.perturb(c.seed, c.sigma)
        assert got == tuple(eager.generate(exs)) != want_base
        eager.restore()
        # The copy back is owed, not made: the weights are still the candidate's until the base is used.
        assert lazy.stale and not lazy.perturbed
        assert any(not torch.equal(lazy._params[n].detach(), base[n]) for n in lazy.names)
    assert ev.answers(exs).texts == want_base and not lazy.stale
    assert all(torch.equal(lazy._params[n].detach(), base[n]) for n in lazy.names)
    # An explicit restore() is eager whatever came before; perturb() twice is still refused.
    lazy.perturb(7, 0.05)
    lazy.restore(lazy=True)
    lazy.restore()
    assert not lazy.stale and all(torch.equal(lazy._params[n].detach(), base[n]) for n in lazy.names)
    lazy.perturb(7, 0.05)
    with pytest.raises(RuntimeError, match="twice"):
        lazy.perturb(8, 0.05)
