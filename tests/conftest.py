import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IN_CI = os.environ.get("CI") == "true"
# The environment before any test ran: in-process tests set variables (setup_process's NUMBA_NUM_THREADS,
# vLLM's LD_PRELOAD and LOCAL_WORLD_SIZE) that a child process must not inherit. A 2-rank child that took
# NUMBA_NUM_THREADS=2 from pytest ran 2.5 times slower on 2 cores, each rank's numba pool spinning.
START_ENV = {k: v for k, v in os.environ.items() if k != "RANDOPT_FAULT"}


def child_env(drop=(), **extra) -> dict:
    """The environment for a child process: pytest's as it started, less `drop`, plus `extra`."""
    return {**{k: v for k, v in START_ENV.items() if k not in drop}, **extra}


def fastest(fn, *args, repeat: int = 3, before=None):
    """(fn's result, the least seconds of `repeat` calls): a bound on the work, not on the machine's load.
    `before` runs ahead of each call, untimed (to clear a cache the call should pay for)."""
    import time
    best, out = float("inf"), None
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return out, best


def mpiexec() -> str:
    exe = Path(sys.executable).parent / "mpiexec"
    if exe.exists():
        return str(exe)
    if IN_CI:
        pytest.fail("mpiexec is missing from the virtual environment (pip install mpich)")
    pytest.skip("no mpiexec beside the interpreter")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Llama with a character tokenizer, taught the answer format for a few steps so that
    perturbed copies score differently (built once per test session, never downloaded)."""
    import torch

    from tools.make_tiny_model import build

    out = tmp_path_factory.mktemp("tiny-model")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        build(str(out), seed=0, train_steps=100)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    """The tiny Llama untrained (about a second to build): for tests of weights and generation mechanics,
    where what the model answers does not matter, only that perturbations change it."""
    from tools.make_tiny_model import build

    out = tmp_path_factory.mktemp("random-model")
    build(str(out), seed=0, train_steps=0)
    return out


@pytest.fixture(scope="session")
def two_rank_results(tiny_model, tmp_path_factory) -> Path:
    """results.h5 of the default test config (write_config) run under mpiexec on 2 ranks, once per session:
    the undisturbed reference that the fault tests compare with, and a real file for tools/."""
    tmp = tmp_path_factory.mktemp("two-rank")
    cfg = write_config(tmp / "run.yaml", tiny_model, tmp / "run")
    p = launch(cfg, 2)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp / "run" / "results.h5"


def write_config(path: Path, model: Path, out: Path, **sections) -> Path:
    cfg = {
        "model": {"path": str(model), "dtype": "float32"},
        "backend": "hf",
        "task": {"name": "countdown", "data": None, "train_size": 6, "test_size": 6, "seed": 3},
        "population": {"size": 12, "seed": 11, "sigmas": [5e-3, 2e-2], "sigma_assignment": "random"},
        "selection": {"top_k": [1, 3], "control": True},
        # Base samples too: every mpiexec test (rank counts, kills, requeues) then checks that they are a
        # function of (item, sample) only.
        "generation": {"max_new_tokens": 48, "batch_size": 4, "samples": 3, "temperature": 1.0},
        "output": {"dir": str(out)},
        "runtime": {"threads": 1, "progress_every_s": 1.0},
    }
    for section, values in sections.items():   # a mapping adds to its section; anything else replaces it
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    if cfg["task"]["name"] == "countdown":   # the tiny model was taught to continue the ES prompt's "<think>"
        cfg["task"].setdefault("prompt_style", "es")
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(cfg: Path, nproc: int | None, *overrides: str, env: dict | None = None, timeout: float = 300,
           popen: bool = False):
    """Run the main job: under real mpiexec with nproc ranks, or as a plain process when nproc is None."""
    cmd = [sys.executable, "-m", "randopt_hpc.run", str(cfg), *overrides]
    if nproc is not None:
        cmd = [mpiexec(), "-n", str(nproc), *cmd]
    full_env = child_env(**(env or {}))
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


# The HF and vLLM backends sample the base model from different generators (randopt_hpc.sampling): across
# backends the samples have the same shapes, not the same values; everything else is equal.
SAMPLES = "base/test_samples_"


def assert_same_results(a, b, shapes_only: tuple[str, ...] = ()) -> None:
    """Two results.h5 files hold the same results (everything but timing and provenance); datasets whose
    names start with one of `shapes_only` need only have the same shape."""
    import numpy as np

    from randopt_hpc import results

    ra, rb = results.comparable(str(a)), results.comparable(str(b))
    assert sorted(ra) == sorted(rb)
    for k in ra:
        if k.startswith(shapes_only):
            assert np.shape(ra[k]) == np.shape(rb[k]), f"{k} has another shape in {a} than in {b}"
    differ = [k for k in results.differences(ra, rb) if not k.startswith(shapes_only)]
    assert not differ, f"{differ} differ between {a} and {b}"


def assert_refused(main, name: str, capsys, folder, *argv, match: str) -> None:
    """A click command (randopt_hpc.cli.Command) refusing its arguments: exit 2, nothing on stdout, one line
    `NAME: error: ...` that says `match`, and nothing written into `folder` (no temporary left either)."""
    before = set(os.listdir(folder))
    with pytest.raises(SystemExit) as e:
        main(list(map(str, argv)))
    out, err = capsys.readouterr()
    code = e.value.code or 0
    assert code == 2 and not out, (code, out, err)
    assert err.count("\n") == 1 and err.startswith(f"{name}: error: ") and match in err, err
    assert set(os.listdir(folder)) == before


@contextlib.contextmanager
def other_weights(model: Path, scratch: Path):
    """Meanwhile the model folder holds another model: the same layout, other weights (put back after)."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = model / "model.safetensors"
    kept = scratch / "kept.safetensors"
    shutil.copy(weights, kept)
    try:
        gen = torch.Generator().manual_seed(1)
        save_file({k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in load_file(weights).items()},
                  weights, metadata={"format": "pt"})
        yield
    finally:
        shutil.copy(kept, weights)

