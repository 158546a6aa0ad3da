"""Every task runs to the end under a real 2-rank mpiexec on the demo model (its answers to these tasks are
noise: what is checked is that each task's data, prompts, scoring, sandbox and vote go through the whole job
and write a complete results.h5), one config per task plus one population scored on all of them at once.

All runs share one mpiexec job (tests/mpi_runs.py), as test_archs_runs does."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from randopt_hpc.tasks import TASKS
from tests.conftest import ROOT, child_env, mpiexec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = ROOT / "tests" / "data"
SAMPLE = {p.parent.name: p for p in sorted(DATA.glob("*/*")) if p.suffix in (".jsonl", ".json", ".parquet")}
# Tasks without a data file: synthetic problems, or (humaneval) the problems its package ships. toy_signal's
# curves are synthetic too; the demo model answers its prompts (JSON contexts) with text that is no rollout
# (reward -1e6, no key, nothing for combine to average), which is all this test asks of a task: its data,
# scoring and vote go through the job. Its own backend (mlp) runs in tests/integration/test_toy_mpi.py.
BUILT_IN = {"countdown", "countdown_qa", "humaneval", "demo_mul", "demo_eval", "demo_verify", "toy_signal"}
RUNS = sorted(TASKS) + ["countdown-es"]
ALL = [name for name in sorted(TASKS) if name != "toy_signal"]   # its ensemble averages: it runs alone


def task_section(name: str) -> dict:
    task = name.removesuffix("-es")
    section = {"name": task, "train_size": 2, "test_size": 2,
               "data": None if task in BUILT_IN else str(SAMPLE[task])}
    if name.endswith("-es"):
        section["prompt_style"] = "es"
    return section


def config(tmp: Path, name: str, task) -> Path:
    cfg = {"model": {"path": str(ROOT / "models" / "demo")}, "backend": "hf", "task": task,
           "population": {"size": 4, "seed": 0, "sigmas": [1e-2]},
           "selection": {"top_k": [1, 2], "control": True},
           "generation": {"max_new_tokens": 16, "batch_size": 16},
           "output": {"dir": str(tmp / name)}, "runtime": {"threads": 1, "progress_every_s": 60.0}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tasks")
    assert set(TASKS) - BUILT_IN <= set(SAMPLE), f"no sample data for {set(TASKS) - BUILT_IN - set(SAMPLE)}"
    paths = [config(tmp, name, task_section(name)) for name in RUNS]
    paths.append(config(tmp, "all", [task_section(name) for name in ALL]))
    p = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "tests.mpi_runs", *map(str, paths)], cwd=ROOT,
                       env=child_env(), capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-4000:]
    return tmp


@pytest.mark.parametrize("name", RUNS)
def test_each_task_runs_on_two_ranks(runs, name):
    import h5py

    from randopt_hpc import results

    out = runs / name / "results.h5"
    results.comparable(str(out))   # a complete, readable results file
    with h5py.File(out) as f:
        assert f["data/task_names"].asstr()[()].tolist() == [name.removesuffix("-es")]
        assert f["population/train_reward"].shape == (4, 2) and f["ensemble/selected/voted_key"].shape == (2, 2)
        assert f.attrs["world_size"] == 2 and len(set(f["population/rank"][()])) == 2


def test_one_population_on_every_task(runs):
    import h5py

    with h5py.File(runs / "all" / "results.h5") as f:
        assert f["data/task_names"].asstr()[()].tolist() == ALL
        assert f["population/train_score_by_task"].shape == (4, len(ALL))
        assert f["ensemble/selected/accuracy_by_task"].shape == (2, len(ALL))
        assert sorted(set(f["data/test_task"].asstr()[()])) == ALL
