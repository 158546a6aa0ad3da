"""The shipped configs of the paper's setups run to the end on CPU with the vLLM backend, each with a tiny
random model of its own architecture substituted by model.path and small sizes given on the command line;
everything else (backend, dtype bfloat16, sigmas, seed, selection) is the config's own."""
from __future__ import annotations

import os

import pytest

from randopt_hpc.config import load_config
from tests.archs import arch_model
from tests.conftest import ROOT, launch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIGS = {"gh200-countdown.yaml": "qwen2", "olmo3-7b-countdown.yaml": "olmo3"}
SMALL = ["runtime.device=cpu", "runtime.threads=1", "task.data=null", "task.train_size=4", "task.test_size=4",
         "population.size=4", "selection.top_k=[1,2]", "generation.max_new_tokens=8", "generation.batch_size=4",
         "vllm.kv_cache_gib=0.25"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_paper_config_runs_on_cpu_with_a_tiny_model_of_its_architecture(name, tmp_path_factory, tmp_path):
    import h5py

    from randopt_hpc import results

    path = os.path.join(ROOT, "configs", name)
    model = arch_model(tmp_path_factory, CONFIGS[name])
    shipped = load_config(path, [f"model.path={model}", "task.data=null"])   # its paths are a cluster's
    assert shipped.backend == "vllm" and shipped.model.dtype == "bfloat16"
    p = launch(path, None, f"model.path={model}", *SMALL, f"output.dir={tmp_path / 'run'}", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "run" / "results.h5"
    results.comparable(str(out))   # a complete results file
    ran = load_config(str(tmp_path / "run" / "run.yaml"), [])
    assert (ran.backend, ran.model.dtype, ran.population.sigmas, ran.population.seed, ran.vllm.max_model_len) == \
        (shipped.backend, shipped.model.dtype, shipped.population.sigmas, shipped.population.seed,
         shipped.vllm.max_model_len)
    with h5py.File(out) as f:
        assert len(f["population/index"]) == 4
