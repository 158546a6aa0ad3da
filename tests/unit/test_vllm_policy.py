"""The vLLM backend's pure parts, without vLLM: how much memory a rank's engine may take, which vLLM
refusals become which one-line errors, the new config keys, and the lazy checkpoint reader (which files,
which slices)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from randopt_hpc import tp
from randopt_hpc.backends.vllm import GIB, VLLMMemoryError, memory_error, plan_memory
from randopt_hpc.backends.vllm_checkpoint import Checkpoint, checkpoint_files, weight_bytes
from randopt_hpc.config import ConfigError, load_config
from tests.archs import sharded_folder

CPU = dict(kv_cache_gib=None, utilization=0.9, pristine="device", on_cpu=True)
GPU = dict(kv_cache_gib=None, utilization=0.9, pristine="device", on_cpu=False)


# ------------------------------------------------------------------ memory plan
def test_an_explicit_kv_cache_is_taken_as_it_is_on_cpu_and_gpu():
    for where in (CPU, GPU):
        plan = plan_memory(**{**where, "kv_cache_gib": 1.5}, engines_on_node=8, node_available=GIB,
                           shard_bytes=100 * GIB, device_total=GIB)
        assert plan.kv_cache_bytes == int(1.5 * GIB)
        assert plan.utilization == 0.9


def test_cpu_ranks_split_the_nodes_available_memory_less_their_weights_and_pristine_copy():
    one = plan_memory(**CPU, engines_on_node=1, node_available=20 * GIB, shard_bytes=GIB)
    assert one.kv_cache_bytes == int(0.9 * 20 * GIB - 2 * GIB)
    two = plan_memory(**CPU, engines_on_node=2, node_available=20 * GIB, shard_bytes=GIB)
    assert two.kv_cache_bytes == int(0.9 * 20 * GIB / 2 - 2 * GIB)
    # Every rank's share together stays within the fraction of what is available.
    for n in (1, 2, 3, 8):
        plan = plan_memory(**CPU, engines_on_node=n, node_available=64 * GIB, shard_bytes=GIB // 4)
        assert n * (plan.kv_cache_bytes + 2 * GIB // 4) <= 0.9 * 64 * GIB
    # The pristine copy is host memory on CPU wherever it is said to live.
    host = plan_memory(**{**CPU, "pristine": "host"}, engines_on_node=2, node_available=20 * GIB, shard_bytes=GIB)
    assert host.kv_cache_bytes == two.kv_cache_bytes
    assert "GiB KV cache" in two.why


def test_this_machines_two_rank_demo_gets_a_kv_cache_that_fits():
    """The demo on 2 ranks (1.08 M float32 parameters) with a node like this one's NUMA node when it is
    busiest (8.8 GiB available of 11.8): both KV caches and weights fit in the fraction."""
    plan = plan_memory(**CPU, engines_on_node=2, node_available=int(8.8 * GIB), shard_bytes=4_301_312)
    assert 3.5 * GIB < plan.kv_cache_bytes < 4 * GIB


def test_no_room_on_cpu_is_one_line_naming_the_key():
    with pytest.raises(VLLMMemoryError) as e:
        plan_memory(**CPU, engines_on_node=4, node_available=8 * GIB, shard_bytes=GIB)
    msg = str(e.value)
    assert msg.startswith("vllm.gpu_memory_utilization:") and "vllm.kv_cache_gib" in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)


def test_gpu_keeps_vllms_fraction_less_a_pristine_copy_on_the_device():
    plan = plan_memory(**GPU, engines_on_node=4, node_available=0, shard_bytes=16 * GIB, device_total=96 * GIB)
    assert plan.kv_cache_bytes is None
    assert plan.utilization == pytest.approx(0.9 - 16 / 96)
    host = plan_memory(**{**GPU, "pristine": "host"}, engines_on_node=4, node_available=0, shard_bytes=16 * GIB,
                       device_total=96 * GIB)
    assert (host.kv_cache_bytes, host.utilization) == (None, 0.9)
    with pytest.raises(VLLMMemoryError, match=r"^vllm.gpu_memory_utilization: .*vllm.pristine=host"):
        plan_memory(**GPU, engines_on_node=1, node_available=0, shard_bytes=140 * GIB, device_total=96 * GIB)


# ------------------------------------------------------------------ vLLM's refusals as one line
CPU_TOO_BIG = ("Available memory on node 0 (9.88/11.84 GiB) on kv cache allocation is less than requested memory "
               "for kv (1000.0 GiB). Decrease --kv-cache-memory-bytes, VLLM_CPU_KVCACHE_SPACE, or reduce CPU memory "
               "used by other processes.")
GPU_TOO_SMALL = ("To serve at least one request with the models's max seq len (4096), (2.0 GiB KV cache is needed, "
                 "which is larger than the available KV cache memory (1.0 GiB). Try increasing "
                 "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.")


@pytest.mark.parametrize("text, gib, key", [
    (CPU_TOO_BIG, 1000.0, "vllm.kv_cache_gib"),
    (CPU_TOO_BIG, None, "vllm.gpu_memory_utilization"),
    ("Free memory on device cuda:0 (10.0/95.0 GiB) on startup is less than desired GPU memory utilization "
     "(0.9, 85.5 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
     None, "vllm.gpu_memory_utilization"),
    (GPU_TOO_SMALL, 1.0, "vllm.kv_cache_gib"),
    (GPU_TOO_SMALL, None, "vllm.gpu_memory_utilization"),
])
def test_vllm_memory_refusals_become_one_line_naming_the_key(text, gib, key):
    plan = plan_memory(**{**CPU, "kv_cache_gib": gib}, engines_on_node=2, node_available=20 * GIB, shard_bytes=0)
    err = memory_error(text, gib, plan)
    assert isinstance(err, VLLMMemoryError) and isinstance(err, ValueError)
    msg = str(err)
    assert msg.startswith(f"{key}:") and "\n" not in msg
    assert "--kv-cache-memory-bytes" not in msg    # vLLM's flags are not this program's keys
    if "too small" in msg:
        assert "vllm.max_model_len" in msg


def test_other_vllm_errors_are_left_alone():
    plan = plan_memory(**CPU, engines_on_node=1, node_available=20 * GIB, shard_bytes=0)
    assert memory_error("Model architectures ['Foo'] are not supported for now.", None, plan) is None


# ------------------------------------------------------------------ config keys
def test_vllm_config_keys_are_validated_in_one_line():
    cfg = load_config(None, ["model.path=models/demo", "vllm.kv_cache_gib=0.5", "vllm.pristine=host"], False)
    assert (cfg.vllm.kv_cache_gib, cfg.vllm.pristine) == (0.5, "host")
    default = load_config(None, ["model.path=models/demo"], False).vllm
    assert (default.kv_cache_gib, default.pristine) == (None, "device")
    for override in ("vllm.kv_cache_gib=0", "vllm.kv_cache_gib=-1", "vllm.kv_cache_gib=4e9", "vllm.kv_cache_gib=lots",
                     "vllm.kv_cache_gib=.inf", "vllm.pristine=gpu"):
        with pytest.raises(ConfigError) as e:
            load_config(None, ["model.path=models/demo", override], False)
        field = override.split("=")[0]
        assert str(e.value).startswith(f"{field}:") and "\n" not in str(e.value)


# ------------------------------------------------------------------ the lazy checkpoint reader
SHAPE = tp.ModelShape(hidden=64, intermediate=96, heads=8, kv_heads=2, head_dim=8, vocab=100)
PARAMS = ["model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.o_proj.weight",
          "model.layers.0.mlp.gate_up_proj.weight", "model.layers.0.mlp.down_proj.weight",
          "model.layers.0.input_layernorm.weight", "model.norm.weight", "model.embed_tokens.weight", "lm_head.weight"]


def _labelled() -> dict:
    """Every checkpoint tensor of SHAPE with each element a distinct float32 integer."""
    names = sorted({p.source for param in PARAMS for p in tp.pieces(param, SHAPE, 0, 1)})
    return {n: ((i + 1) * 100_000 + torch.arange(torch.Size(tp.source_shape(n, SHAPE)).numel(), dtype=torch.float32))
            .reshape(tp.source_shape(n, SHAPE)) for i, n in enumerate(names)}


def test_an_index_names_the_only_files_read(tmp_path):
    t = _labelled()
    # A Mistral-style consolidated file: the same names with other values, and a name of its own.
    other = {**{n: -v for n, v in t.items()}, "layers.0.attention.wq.weight": torch.zeros(2, 2)}
    folder = sharded_folder(tmp_path, t, {"consolidated.safetensors": other})
    assert [f.rsplit("/", 1)[1] for f in checkpoint_files(str(folder))] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    with Checkpoint(str(folder)) as ckpt:
        assert sorted(ckpt.names) == sorted(t)
        for n, v in t.items():
            assert torch.equal(ckpt.read(n, (0, v.shape[0])), v)
    assert weight_bytes(str(folder), 2) == 2 * sum(v.numel() for v in t.values())


def test_without_an_index_every_safetensors_file_is_read(tmp_path):
    t = _labelled()
    names = sorted(t)
    save_file({n: t[n] for n in names[:3]}, str(tmp_path / "a.safetensors"))
    save_file({n: t[n] for n in names[3:]}, str(tmp_path / "b.safetensors"))
    with Checkpoint(str(tmp_path)) as ckpt:
        assert sorted(ckpt.names) == names


def test_an_index_listing_a_missing_file_or_no_weights_at_all_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        checkpoint_files(str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "gone.safetensors"}}))
    with pytest.raises(ValueError, match="gone.safetensors"):
        checkpoint_files(str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="weight_map"):
        checkpoint_files(str(tmp_path))


@pytest.mark.parametrize("size", [1, 2, 4])
def test_slices_assemble_each_ranks_shard_as_the_whole_tensors_do(tmp_path, size):
    """Reading only a shard's rows and columns gives what tp.assemble cuts from the loaded tensors, in the
    model's dtype (bfloat16 here: the cast happens before the parameter's own dtype, as vLLM loads)."""
    t = _labelled()
    folder = sharded_folder(tmp_path, t)
    with Checkpoint(str(folder)) as ckpt:
        for param in PARAMS:
            for rank in range(size):
                want = tp.assemble(param, SHAPE, rank, size, {n: v.to(torch.bfloat16) for n, v in t.items()},
                                   torch.float32)
                got = ckpt.assemble(param, SHAPE, rank, size, torch.bfloat16, torch.float32)
                assert torch.equal(got, want), (param, rank)
