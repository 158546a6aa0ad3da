"""Tensor-parallel shard mapping of every supported architecture's tensors beyond Llama's: q/k/v, o_proj
and MLP biases, q_norm/k_norm per head and over the full projection, Gemma's four norms per layer,
OLMo's unfused tensor-parallel-plan layers. For TP = 1, 2, 4 every checkpoint element lands in the
shards exactly as often as vLLM holds it, and the shards' noise is the canonical noise."""
from __future__ import annotations

import pytest
import torch

from randopt_hpc import noise, tp

L0 = "model.layers.0."
A, M = L0 + "self_attn.", L0 + "mlp."


def _shape(arch, kv=2, tie=False, **flags):
    return tp.ModelShape(hidden=64, intermediate=96, heads=8, kv_heads=kv, head_dim=8, vocab=130, tie=tie,
                         arch=arch, layers=1, **flags)


# One shape per layout the architectures give (flags as from_hf_config sets them), K/V heads from 8
# down to 1 so that replication on fewer heads than ranks is in every layout.
SHAPES = {
    "llama-all-biases": _shape("llama", kv=8, qkv_bias=True, o_bias=True, mlp_bias=True),
    "mistral-mqa": _shape("mistral", kv=1),
    "qwen2-bias-tied": _shape("qwen2", tie=True, qkv_bias=True),
    "qwen3-head-norm": _shape("qwen3", kv=1, qkv_bias=True, qk_norm="head"),
    "gemma-tied": _shape("gemma", kv=1, tie=True),
    "gemma2-sandwich": _shape("gemma2", kv=4, tie=True, qkv_bias=True, o_bias=True),
    "gemma3-sandwich-head-norm": _shape("gemma3_text", kv=1, qk_norm="head", qkv_bias=True, o_bias=True),
    "olmo2-full-norm": _shape("olmo2", kv=8, qk_norm="full", qkv_bias=True, o_bias=True),
    "olmo3-full-norm-gqa": _shape("olmo3", kv=2, tie=True, qk_norm="full"),
}
UNFUSED = [f"{A}{p}_proj.{k}" for p in "qkv" for k in ("weight", "bias")] + [
    f"{M}{p}_proj.weight" for p in ("gate", "up")]


def _params(s) -> list[str]:
    # A tied lm_head is the embedding's own parameter; listed here too, as a module's weight it is one more
    # holder of the embedding's elements.
    return tp.vllm_parameters(s) + ["lm_head.weight"] * (s.tie and s.family.lm_head)


def _labels(s) -> dict:
    """Every checkpoint tensor, each element a distinct float64 label."""
    return {n: (i + 1) * 1e6 + torch.arange(torch.Size(tp.source_shape(n, s)).numel(), dtype=torch.float64)
            .reshape(tp.source_shape(n, s)) for i, n in enumerate(sorted(tp.checkpoint_tensors(s)))}


def _want(name: str, s, size: int) -> int:
    """How many copies of each element vLLM holds over tp_size ranks, by tensor kind (written out)."""
    leaf, kind = name.split(".")[-2:]
    if leaf.endswith("norm"):                                    # every norm: on every rank
        return size
    if leaf in ("o_proj", "down_proj") and kind == "bias":      # RowParallelLinear: full bias everywhere
        return size
    if leaf in ("k_proj", "v_proj"):                            # K/V heads (weights and biases) replicated
        return max(1, size // s.kv_heads)
    if name == "model.embed_tokens.weight" and s.tie and s.family.lm_head:
        return 2
    return 1


def _count(params, s, size, t):
    """copies(tensor): how many times each of its elements appears in all ranks' shards of `params`."""
    held = []
    for param in params:
        for rank in range(size):
            local = tp.assemble(param, s, rank, size, t, torch.float64)
            assert tuple(local.shape) == tp.local_shape(param, s, size)
            held.append(local.reshape(-1))
    held = torch.cat(held)
    labels, counts = torch.unique(held[held != 0], return_counts=True)

    def copies(tensor):
        flat = tensor.reshape(-1)
        at = torch.searchsorted(labels, flat).clamp(max=len(labels) - 1)
        return set(torch.where(labels[at] == flat, counts[at], 0).tolist())
    return copies


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("key", sorted(SHAPES))
def test_shards_cover_each_checkpoint_tensor(key, size):
    s = SHAPES[key]
    t = _labels(s)
    copies = _count(_params(s), s, size, t)
    for name, tensor in t.items():
        assert copies(tensor) == {_want(name, s, size)}, (key, name, size, sorted(copies(tensor)))


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("key", ["olmo2-full-norm", "olmo3-full-norm-gqa"])
def test_olmo_unfused_plan_covers_each_tensor_once(key, size):
    """Where the Transformers backend's fusers decline, q/k/v (colwise_gather_output) and gate/up (colwise)
    split their rows evenly: K/V rows then split without regard to heads, and nothing is replicated."""
    s = SHAPES[key]
    t = _labels(s)
    params = [p for p in UNFUSED if p.endswith("weight") or s.qkv_bias] + [A + "o_proj.weight", M + "down_proj.weight"]
    copies = _count(params, s, size, t)
    for name in {p.source for param in params for p in tp.pieces(param, s, 0, 1)}:
        assert copies(t[name]) == {1}, (name, size)


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("key", ["llama-all-biases", "qwen3-head-norm", "gemma3-sandwich-head-norm",
                                 "olmo2-full-norm"])
def test_shard_noise_is_the_canonical_noise(key, size):
    """The new kinds (biases, norms, unfused layers; test_tp covers the weights Llama has)."""
    s = SHAPES[key]
    params = [p for p in tp.vllm_parameters(s) if p.startswith(L0) and (p.endswith("bias") or "norm" in p)]
    if key.startswith("olmo"):
        params += [p for p in UNFUSED if p.endswith("weight") or s.qkv_bias]
    sources = {p.source for param in params for p in tp.pieces(param, s, 0, 1)}
    canonical = {n: noise.noise(7, n, tp.source_shape(n, s), impl="torch").double() for n in sources}
    for param in params:
        for rank in range(size):
            got = tp.shard_noise(7, param, s, rank, size, impl="torch" if size < 4 else "numba")
            want = tp.assemble(param, s, rank, size, canonical, torch.float64)
            assert torch.equal(got.double(), want), (key, param, rank, size)


# The layouts below are written out by hand from vLLM's layers and loaders, not derived from tp.pieces.
# Shape: hidden 64, 8 query heads of head_dim 8 (a head is 8 rows), 2 K/V heads, intermediate 96.
Q = {1: [(0, 64)], 2: [(0, 32), (32, 64)], 4: [(0, 16), (16, 32), (32, 48), (48, 64)]}
KV = {1: [(0, 16)], 2: [(0, 8), (8, 16)], 4: [(0, 8), (0, 8), (8, 16), (8, 16)]}     # 2 heads, replicated at 4
INTER = {1: [(0, 96)], 2: [(0, 48), (48, 96)], 4: [(0, 24), (24, 48), (48, 72), (72, 96)]}
# Transformers backend, unfused k_proj (16 rows, colwise_gather_output): even bands, cutting heads at TP 4.
KV_COLWISE = {1: [(0, 16)], 2: [(0, 8), (8, 16)], 4: [(0, 4), (4, 8), (8, 12), (12, 16)]}


def _hand(shapes: dict) -> dict:
    """Tensors with shapes typed in; element i of tensor number n is n * 1e6 + i."""
    return {name: n * 1e6 + torch.arange(torch.Size(shape).numel(), dtype=torch.float64).reshape(shape)
            for n, (name, shape) in enumerate(shapes.items(), 1)}


def _get(param, s, rank, size, t):
    return tp.assemble(param, s, rank, size, t, torch.float64)


@pytest.mark.parametrize("size", [1, 2, 4])
def test_attention_and_mlp_biases_of_each_rank_by_hand(size):
    s = _shape("llama", qkv_bias=True, o_bias=True, mlp_bias=True)
    t = _hand({A + "q_proj.bias": (64,), A + "k_proj.bias": (16,), A + "v_proj.bias": (16,),
               A + "o_proj.bias": (64,), M + "gate_proj.bias": (96,), M + "up_proj.bias": (96,),
               M + "down_proj.bias": (64,)})
    for rank in range(size):
        (q0, q1), (k0, k1), (i0, i1) = Q[size][rank], KV[size][rank], INTER[size][rank]
        want = torch.cat([t[A + "q_proj.bias"][q0:q1], t[A + "k_proj.bias"][k0:k1], t[A + "v_proj.bias"][k0:k1]])
        assert torch.equal(_get(A + "qkv_proj.bias", s, rank, size, t), want), rank
        want = torch.cat([t[M + "gate_proj.bias"][i0:i1], t[M + "up_proj.bias"][i0:i1]])
        assert torch.equal(_get(M + "gate_up_proj.bias", s, rank, size, t), want), rank
        # Row-parallel biases are not split: every rank holds all of it (only rank 0 adds it).
        assert torch.equal(_get(A + "o_proj.bias", s, rank, size, t), t[A + "o_proj.bias"]), rank
        assert torch.equal(_get(M + "down_proj.bias", s, rank, size, t), t[M + "down_proj.bias"]), rank


@pytest.mark.parametrize("size", [2, 4])
def test_norms_of_each_rank_by_hand(size):
    """Per-head q/k norms (head_dim), OLMo's full-width ones (q: heads * head_dim, k: kv_heads * head_dim),
    Gemma's four per-layer norms: whole on every rank, each from its own tensor."""
    gemma3 = _shape("gemma3_text", qk_norm="head")
    olmo = _shape("olmo2", qk_norm="full")
    t = _hand({A + "q_norm.weight": (8,), A + "k_norm.weight": (8,)})
    t_full = _hand({A + "q_norm.weight": (64,), A + "k_norm.weight": (16,)})
    sandwich = ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                "post_feedforward_layernorm"]
    t_norms = _hand({f"{L0}{n}.weight": (64,) for n in sandwich})
    for rank in range(size):
        for leaf in ("q_norm.weight", "k_norm.weight"):
            assert torch.equal(_get(A + leaf, gemma3, rank, size, t), t[A + leaf]), (leaf, rank)
            assert torch.equal(_get(A + leaf, olmo, rank, size, t_full), t_full[A + leaf]), (leaf, rank)
        for n in sandwich:
            assert torch.equal(_get(f"{L0}{n}.weight", gemma3, rank, size, t_norms), t_norms[f"{L0}{n}.weight"])
    assert tp.local_shape(A + "q_norm.weight", olmo, size) == (64,)
    assert tp.local_shape(A + "k_norm.weight", olmo, size) == (16,)


@pytest.mark.parametrize("size", [1, 2, 4])
def test_olmo_unfused_plan_rows_by_hand(size):
    s = _shape("olmo2", qk_norm="full", qkv_bias=True)
    t = _hand({A + "q_proj.weight": (64, 64), A + "k_proj.weight": (16, 64), A + "k_proj.bias": (16,),
               M + "up_proj.weight": (96, 64)})
    for rank in range(size):
        (q0, q1), (k0, k1), (i0, i1) = Q[size][rank], KV_COLWISE[size][rank], INTER[size][rank]
        assert torch.equal(_get(A + "q_proj.weight", s, rank, size, t), t[A + "q_proj.weight"][q0:q1])
        assert torch.equal(_get(A + "k_proj.weight", s, rank, size, t), t[A + "k_proj.weight"][k0:k1])
        assert torch.equal(_get(A + "k_proj.bias", s, rank, size, t), t[A + "k_proj.bias"][k0:k1])
        assert torch.equal(_get(M + "up_proj.weight", s, rank, size, t), t[M + "up_proj.weight"][i0:i1])


def test_gemma2_logits_come_from_the_embedding():
    s = SHAPES["gemma2-sandwich"]
    assert "lm_head.weight" not in tp.vllm_parameters(s) and "lm_head.weight" not in tp.checkpoint_tensors(s)
    with pytest.raises(ValueError, match=r"^lm_head.weight: not a parameter of vLLM's gemma2 model"):
        tp.pieces("lm_head.weight", s, 0, 1)


@pytest.mark.parametrize(("key", "param"), [
    ("mistral-mqa", A + "qkv_proj.bias"),            # no biases in this config
    ("qwen2-bias-tied", A + "o_proj.bias"),          # Qwen2: q/k/v biases only
    ("llama-all-biases", A + "q_norm.weight"),       # Llama has no q/k norms
    ("gemma-tied", "model.layers.0.pre_feedforward_layernorm.weight"),   # Gemma 1: two norms a layer
    ("olmo2-full-norm", L0 + "input_layernorm.weight"),                  # OLMo: post-norms only
    ("llama-all-biases", A + "q_proj.weight"),       # unfused names exist only on the Transformers backend
    ("olmo2-full-norm", "lm_head.bias"),
    ("olmo2-full-norm", "model.layers.1.self_attn.qkv_proj.weight"),     # 1 layer
    ("qwen3-head-norm", A + "rotary_emb.inv_freq"),
])
def test_parameters_the_architecture_lacks_are_refused_in_one_line(key, param):
    arch = SHAPES[key].arch
    with pytest.raises(ValueError, match=rf"^{param}: not a parameter of vLLM's {arch} model") as e:
        tp.pieces(param, SHAPES[key], 0, 2)
    assert "\n" not in str(e.value)


def test_every_vllm_parameter_is_mapped_and_every_tensor_covered():
    for key, s in SHAPES.items():
        covered = {p.source for param in tp.vllm_parameters(s) for p in tp.pieces(param, s, 0, 1)}
        assert covered == tp.checkpoint_tensors(s), key


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported .*llama, mistral, qwen2, qwen3, "
                                         r"gemma, gemma2, gemma3_text, olmo2, olmo3\)$"):
        tp.ModelShape(hidden=8, intermediate=8, heads=1, kv_heads=1, head_dim=8, vocab=8, arch="gpt2")
    with pytest.raises(ValueError, match="checkpoint_tensors needs the shape's number of layers"):
        tp.checkpoint_tensors(tp.ModelShape(hidden=8, intermediate=8, heads=1, kv_heads=1, head_dim=8, vocab=8))
    with pytest.raises(ValueError, match=r"not a tensor of a qwen2 checkpoint"):
        tp.source_shape(A + "q_norm.weight", SHAPES["qwen2-bias-tied"])
