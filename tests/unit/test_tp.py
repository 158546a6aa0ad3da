"""Tensor-parallel shard mapping: for TP = 1, 2, 4, the shards of every vLLM Llama parameter are
exactly the canonical checkpoint tensors (and their noise), fused and split as vLLM lays them out."""
from __future__ import annotations

import os

import pytest
import torch

from randopt_hpc import noise, tp

LAYER = "model.layers.3."
PARAMS = [LAYER + "self_attn.qkv_proj.weight", LAYER + "self_attn.o_proj.weight", LAYER + "mlp.gate_up_proj.weight",
          LAYER + "mlp.down_proj.weight", LAYER + "input_layernorm.weight", LAYER + "post_attention_layernorm.weight",
          "model.norm.weight", "model.embed_tokens.weight", "lm_head.weight"]
# Small but with every awkward case: 8 query heads, K/V heads from 8 down to 1 (replicated when
# fewer than ranks), a vocabulary that is not a multiple of 64 (padding, a shard of padding only).
SHAPES = [tp.ModelShape(hidden=64, intermediate=96, heads=8, kv_heads=kv, head_dim=8, vocab=vocab, tie=tie)
          for kv, vocab, tie in ((8, 100, False), (2, 130, True), (1, 70, False))]


def _labels(s: tp.ModelShape) -> dict:
    """Every checkpoint tensor with each element labelled by (tensor number, flat index) -> unique float."""
    names = sorted({p.source for param in PARAMS for p in tp.pieces(param, s, 0, 1)})
    return {n: (i + 1) * 1e6 + torch.arange(torch.Size(tp.source_shape(n, s)).numel(), dtype=torch.float64)
            .reshape(tp.source_shape(n, s)) for i, n in enumerate(names)}


def _assemble(param, s, rank, size, tensors):
    return tp.assemble(param, s, rank, size, tensors, torch.float64)


@pytest.mark.parametrize("s", SHAPES, ids=lambda s: f"kv{s.kv_heads}-vocab{s.vocab}-tie{int(s.tie)}")
def test_tp1_is_the_fused_layout(s):
    t = _labels(s)
    a = LAYER + "self_attn."
    assert torch.equal(_assemble(a + "qkv_proj.weight", s, 0, 1, t),
                       torch.cat([t[a + "q_proj.weight"], t[a + "k_proj.weight"], t[a + "v_proj.weight"]]))
    m = LAYER + "mlp."
    assert torch.equal(_assemble(m + "gate_up_proj.weight", s, 0, 1, t),
                       torch.cat([t[m + "gate_proj.weight"], t[m + "up_proj.weight"]]))
    emb = _assemble("model.embed_tokens.weight", s, 0, 1, t)
    assert emb.shape[0] == tp.vocab_padded(s.vocab) and emb.shape[0] % 64 == 0
    assert torch.equal(emb[:s.vocab], t["model.embed_tokens.weight"]) and not emb[s.vocab:].any()
    head_src = "model.embed_tokens.weight" if s.tie else "lm_head.weight"
    assert torch.equal(_assemble("lm_head.weight", s, 0, 1, t)[:s.vocab], t[head_src])


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("s", SHAPES, ids=lambda s: f"kv{s.kv_heads}-vocab{s.vocab}-tie{int(s.tie)}")
def test_shards_cover_each_checkpoint_tensor(s, size):
    """Every element of every checkpoint tensor sits in the shards: exactly once, except K/V heads
    replicated over tp_size / kv_heads ranks and replicated norms; padding holds nothing."""
    t = _labels(s)
    seen: dict[float, int] = {}
    for param in PARAMS:
        for rank in range(size):
            local = _assemble(param, s, rank, size, t)
            assert tuple(local.shape) == tp.local_shape(param, s, size)
            for v in local[local != 0].tolist():
                seen[v] = seen.get(v, 0) + 1
    for name, tensor in t.items():
        counts = [seen.get(v, 0) for v in tensor.reshape(-1).tolist()]
        if name.endswith("norm.weight"):
            want = size
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            want = max(1, size // s.kv_heads)
        elif s.tie and name == "model.embed_tokens.weight":
            want = 2   # embedding and lm_head share it
        else:
            want = 1
        assert set(counts) == {want}, (name, size, sorted(set(counts)))


# The layouts below are written out by hand from vLLM's loaders, not derived from tp.pieces: the other
# tests compare tp.assemble with itself, so only these pin which rank holds which rows. Shape: hidden 64,
# 8 query heads of head_dim 8, intermediate 96, vocabulary 130 (padded to 192); a head is 8 rows.
Q_ROWS = {2: [(0, 32), (32, 64)], 4: [(0, 16), (16, 32), (32, 48), (48, 64)],
          8: [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 48), (48, 56), (56, 64)]}
# (kv_heads, tp_size) -> k_proj rows (= v_proj rows) per rank. Fewer heads than ranks: vLLM's
# shard_rank = tp_rank // (tp_size // kv_heads), so a head's replicas sit on consecutive ranks.
KV_ROWS = {(8, 2): [(0, 32), (32, 64)], (8, 4): [(0, 16), (16, 32), (32, 48), (48, 64)],
           (2, 2): [(0, 8), (8, 16)], (2, 4): [(0, 8), (0, 8), (8, 16), (8, 16)],
           (1, 2): [(0, 8), (0, 8)], (1, 4): [(0, 8), (0, 8), (0, 8), (0, 8)],
           (2, 8): [(0, 8), (0, 8), (0, 8), (0, 8), (8, 16), (8, 16), (8, 16), (8, 16)],
           (4, 8): [(0, 8), (0, 8), (8, 16), (8, 16), (16, 24), (16, 24), (24, 32), (24, 32)]}
# Rows of gate_proj and up_proj, and columns of down_proj, on each rank (intermediate 96).
INTER = {2: [(0, 48), (48, 96)], 4: [(0, 24), (24, 48), (48, 72), (72, 96)]}
O_COLS = {2: [(0, 32), (32, 64)], 4: [(0, 16), (16, 32), (32, 48), (48, 64)]}
# Vocabulary rows on each rank and the zero padding rows after them: 192 / tp_size rows a rank.
VOCAB = {1: [((0, 130), 62)], 2: [((0, 96), 0), ((96, 130), 62)],
         4: [((0, 48), 0), ((48, 96), 0), ((96, 130), 14), ((130, 130), 48)]}


def _hand_shape(kv_heads=2, tie=False):
    return tp.ModelShape(hidden=64, intermediate=96, heads=8, kv_heads=kv_heads, head_dim=8, vocab=130, tie=tie)


def _hand_tensors(kv_heads=2) -> dict:
    """Checkpoint tensors with shapes typed in; element (row, col) of tensor i is i * 1e6 + row * 1000 + col."""
    a, m = LAYER + "self_attn.", LAYER + "mlp."
    shapes = {a + "q_proj.weight": (64, 64), a + "k_proj.weight": (8 * kv_heads, 64),
              a + "v_proj.weight": (8 * kv_heads, 64), a + "o_proj.weight": (64, 64),
              m + "gate_proj.weight": (96, 64), m + "up_proj.weight": (96, 64), m + "down_proj.weight": (64, 96),
              "model.embed_tokens.weight": (130, 64), "lm_head.weight": (130, 64), "model.norm.weight": (64,)}
    out = {}
    for i, (name, shape) in enumerate(shapes.items(), 1):
        rows = torch.arange(shape[0], dtype=torch.float64)
        out[name] = i * 1e6 + (rows * 1000 if len(shape) == 1 else rows[:, None] * 1000 + torch.arange(shape[1]))
    return out


@pytest.mark.parametrize(("kv", "size"), sorted(KV_ROWS))
def test_qkv_rows_of_each_rank_by_hand(kv, size):
    t, a = _hand_tensors(kv), LAYER + "self_attn."
    q, k, v = t[a + "q_proj.weight"], t[a + "k_proj.weight"], t[a + "v_proj.weight"]
    for rank, ((q0, q1), (k0, k1)) in enumerate(zip(Q_ROWS[size], KV_ROWS[kv, size], strict=True)):
        got = _assemble(a + "qkv_proj.weight", _hand_shape(kv), rank, size, t)
        assert torch.equal(got, torch.cat([q[q0:q1], k[k0:k1], v[k0:k1]])), (kv, size, rank)


@pytest.mark.parametrize("size", [2, 4])
def test_mlp_o_proj_and_norm_of_each_rank_by_hand(size):
    t, s, a, m = _hand_tensors(), _hand_shape(), LAYER + "self_attn.", LAYER + "mlp."
    for rank, ((i0, i1), (c0, c1)) in enumerate(zip(INTER[size], O_COLS[size], strict=True)):
        gate_up = _assemble(m + "gate_up_proj.weight", s, rank, size, t)
        assert torch.equal(gate_up, torch.cat([t[m + "gate_proj.weight"][i0:i1], t[m + "up_proj.weight"][i0:i1]]))
        # Row-parallel layers split the input dimension: every output row, a band of columns.
        assert torch.equal(_assemble(m + "down_proj.weight", s, rank, size, t), t[m + "down_proj.weight"][:, i0:i1])
        assert torch.equal(_assemble(a + "o_proj.weight", s, rank, size, t), t[a + "o_proj.weight"][:, c0:c1])
        assert torch.equal(_assemble("model.norm.weight", s, rank, size, t), t["model.norm.weight"])


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("size", sorted(VOCAB))
def test_vocab_rows_of_each_rank_by_hand(size, tie):
    t, s = _hand_tensors(), _hand_shape(tie=tie)
    if tie:   # a tied lm_head must not read a checkpoint lm_head, so there is none to read
        del t["lm_head.weight"]
    for param in ("model.embed_tokens.weight", "lm_head.weight"):
        src = t["lm_head.weight" if param == "lm_head.weight" and not tie else "model.embed_tokens.weight"]
        for rank, ((r0, r1), pad) in enumerate(VOCAB[size]):
            want = torch.cat([src[r0:r1], torch.zeros(pad, 64, dtype=torch.float64)])
            assert torch.equal(_assemble(param, s, rank, size, t), want), (param, size, rank)


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("s", SHAPES[:2], ids=lambda s: f"kv{s.kv_heads}-vocab{s.vocab}")
def test_shard_noise_is_the_canonical_noise(s, size):
    canonical = {n: noise.noise(11, n, tp.source_shape(n, s), impl="torch").double() for n in _labels(s)}
    for param in PARAMS:
        for rank in range(size):
            got = tp.shard_noise(11, param, s, rank, size, impl="torch" if size < 4 else "numba")
            assert torch.equal(got.double(), _assemble(param, s, rank, size, canonical)), (param, rank, size)


@pytest.mark.parametrize("impl", ["torch", "numba"])
def test_normals_at_equals_the_contiguous_stream(impl):
    name = "model.layers.0.mlp.down_proj.weight"
    full = noise.noise(5, name, (37, 29), impl="torch").reshape(-1)
    idx = torch.tensor([0, 1, 2, 3, 5, 6, 1072, 1071, 17, 17, 4])
    assert torch.equal(noise.normals_at(5, name, idx, impl=impl), full[idx])
    grid = torch.arange(3, 9)[:, None] * 29 + torch.arange(7, 12)[None, :]
    assert torch.equal(noise.normals_at(5, name, grid, impl=impl), full[grid])


def test_bad_sizes_are_named():
    s = SHAPES[0]
    with pytest.raises(ValueError, match="num_attention_heads = 8 is not divisible by tensor_parallel_size = 3"):
        tp.pieces(LAYER + "self_attn.qkv_proj.weight", s, 0, 3)
    with pytest.raises(ValueError, match="rotary.weight: not a parameter of vLLM's llama model"):
        tp.pieces(LAYER + "self_attn.rotary.weight", s, 0, 1)
    with pytest.raises(ValueError, match="tp_rank 2 outside"):
        tp.pieces("model.norm.weight", s, 2, 2)


def test_shape_from_the_demo_model_config():
    from transformers import AutoConfig

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    s = tp.ModelShape.from_hf_config(AutoConfig.from_pretrained(os.path.join(root, "models", "demo")))
    assert s == tp.ModelShape(hidden=128, intermediate=512, heads=4, kv_heads=4, head_dim=32, vocab=100, tie=False,
                             layers=4)
    assert tp.local_shape("model.layers.0.self_attn.qkv_proj.weight", s, 2) == (192, 128)


# --------------------------------------------------------------------------- ES on the vLLM workers' shards

def _workers(s: tp.ModelShape, size: int, tensors: dict) -> list:
    """A vLLM worker's ES state for each tensor-parallel rank, as randopt_init sets it up (no engine: the
    live weights are plain tensors on stand-in modules)."""
    from types import SimpleNamespace

    from randopt_hpc.backends.vllm_worker import PerturbExtension

    out = []
    for rank in range(size):
        w = PerturbExtension()
        slots = []
        for param in tp.vllm_parameters(s):
            base = tp.assemble(param, s, rank, size, tensors, torch.float32)
            slots.append({"param": param, "module": SimpleNamespace(weight=base.clone()), "attr": "weight",
                          "device": torch.device("cpu"), "base": base, "pieces": tp.pieces(param, s, rank, size),
                          "packed": False, "sharing": [], "drop_weight": False})
        w._rp = {"shape": s, "rank": rank, "size": size, "impl": "torch", "dtype": torch.float32,
                 "selected": set(tensors), "slots": slots, "keep": False}
        out.append(w)
    return out


@pytest.mark.parametrize("size", [1, 2, 4])
def test_an_es_update_on_the_shards_is_the_update_of_the_whole_tensors(size):
    """Each rank moves its own slices of θ in place (randopt_shift); put back together (put_together), θ is
    bitwise what noise.shift_ gives the HF backend's whole tensors; loading a checkpoint puts each rank's
    slices of it in place (randopt_load_base); the live weights follow θ each time."""
    from dataclasses import replace

    from randopt_hpc.backends.vllm import put_together

    s = replace(SHAPES[1], layers=2)      # K/V heads replicated at TP 4, a padded and tied vocabulary
    gen = torch.Generator().manual_seed(0)
    theta = {n: torch.randn(tp.source_shape(n, s), generator=gen) for n in sorted(tp.checkpoint_tensors(s))}
    shapes = {n: t.shape for n, t in theta.items()}
    workers = _workers(s, size, theta)
    terms = [(7, 0.25), (8, -0.25), (2**40 + 3, 1e-3)]
    for w in workers:
        w.randopt_shift(terms)
    want = {n: t.clone() for n, t in theta.items()}
    for n, t in want.items():
        noise.shift_(t, n, terms, "torch")
    got = put_together([w.randopt_base() for w in workers], shapes, sorted(theta))
    assert sorted(got) == sorted(want) and all(torch.equal(got[n], want[n]) for n in want)
    assert any(not torch.equal(got[n], theta[n]) for n in theta)
    for w in workers:
        assert all(torch.equal(x["module"].weight, x["base"]) for x in w._rp["slots"])
    for w in workers:
        w.randopt_load_base(theta)
    back = put_together([w.randopt_base() for w in workers], shapes, sorted(theta))
    assert all(torch.equal(back[n], theta[n]) for n in theta)
    for rank, w in enumerate(workers):
        for x in w._rp["slots"]:
            assert torch.equal(x["module"].weight, tp.assemble(x["param"], s, rank, size, theta, torch.float32))
