"""algorithm: es under real mpiexec: θ bitwise the same on 1 and 2 ranks (strided and dynamic), and after a rank
is killed mid-iteration or the results and checkpoints are damaged."""
import os
import re

import h5py
import pytest
import torch
from safetensors.torch import load_file

from randopt_hpc.es_run import checkpoint_path
from randopt_hpc.runfolder import RunFolder
from tests.conftest import assert_same_results, launch, write_config
from tests.integration.conftest import kill_rank_when

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N, T = 6, 3


def es_config(path, model, out, **runtime):
    return write_config(path, model, out, algorithm="es",
                        population={"size": N, "sigmas": [0.02]},
                        es={"iterations": T, "lr": 0.002, "eval_every": 1, "checkpoint_every": 2},
                        generation={"samples": 0}, runtime=runtime)


def thetas(run_dir) -> list[str]:
    with h5py.File(os.path.join(run_dir, "results.h5")) as f:
        return [x.decode() for x in f["es/theta_sha256"][()]]


@pytest.fixture(scope="module")
def es_runs(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("es")
    out = {}
    for name, nproc, schedule in (("np1", 1, "strided"), ("np2", 2, "strided"), ("dyn2", 2, "dynamic")):
        cfg = es_config(tmp / f"{name}.yaml", tiny_model, tmp / name, schedule=schedule)
        p = launch(cfg, nproc)
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = tmp / name
    return out


def test_theta_is_bitwise_the_same_on_1_and_2_ranks(es_runs):
    ref = thetas(es_runs["np1"])
    assert len(ref) == T + 1 and len(set(ref)) == T + 1, "an update moved nothing: the test would prove nothing"
    with h5py.File(es_runs["np1"] / "results.h5") as f:
        assert f.attrs["algorithm"] == "es" and f["population/seed"].shape == (T * N,)
        assert len(set(f["population/train_score"][()].tolist())) > 1
        assert f["es/test_correct"].shape == (T + 1, 6) and f["es/train_tokens"][-1] > 0
    for name in ("np2", "dyn2"):
        assert thetas(es_runs[name]) == ref
        assert_same_results(es_runs["np1"] / "results.h5", es_runs[name] / "results.h5")
        a, b = (load_file(checkpoint_path(str(es_runs[x]), T)) for x in ("np1", name))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)
    with h5py.File(es_runs["np2"] / "results.h5") as f:
        assert sorted(set(f["population/rank"][()].tolist())) == [0, 1]


def test_kill_one_rank_mid_iteration_then_rerun_gives_the_same_theta(es_runs, tiny_model, tmp_path):
    out = tmp_path / "killed"
    cfg = es_config(tmp_path / "killed.yaml", tiny_model, out)
    proc = kill_rank_when(cfg, 1, lambda: RunFolder(str(out)).count_done() >= N + 2)   # inside the second iteration
    assert proc.returncode != 0 and not (out / "results.h5").exists()
    done = RunFolder(str(out)).count_done()
    assert N + 2 <= done < T * N
    again = launch(cfg, 2)
    assert again.returncode == 0, again.stderr[-3000:]
    finished = re.findall(r"es: 3 iterations of 6 candidates, (\d) finished", again.stderr)
    assert len(finished) == 2 and int(finished[0]) >= 1      # iteration 0 is not computed again
    assert thetas(out) == thetas(es_runs["np2"])
    assert_same_results(es_runs["np2"] / "results.h5", out / "results.h5")
    indices = [r.index for r in RunFolder(str(out)).records() if r.kind == "candidate"]
    assert sorted(indices) == list(range(T * N))     # every candidate exactly once across the shards


def test_a_rebuilt_run_starts_from_its_checkpoint_or_replays_without_one(es_runs, tmp_path):
    """results.h5 gone: the rerun loads θ_T from its checkpoint and generates nothing but nothing else; with the
    checkpoints torn as well it replays every update from the recorded scores. Either way θ is the same."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(es_runs["np2"], out)
    cfg = out / "run.yaml"
    os.remove(out / "results.h5")
    p = launch(cfg, 2, f"output.dir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"from θ_{T} (checkpoint)" in p.stderr
    assert thetas(out) == thetas(es_runs["np2"])
    os.remove(out / "results.h5")
    for t in (2, T):
        with open(checkpoint_path(str(out), t), "r+b") as f:
            f.truncate(100)
    p = launch(cfg, 1, f"output.dir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "from θ_0 (the model)" in p.stderr and "skipped" in p.stderr
    assert thetas(out) == thetas(es_runs["np2"])
    assert_same_results(es_runs["np2"] / "results.h5", out / "results.h5")


def test_the_final_theta_exports_as_a_model_that_answers_as_theta_T_did(es_runs, tmp_path):
    """export --final: θ_T as a Hugging Face folder; loaded on its own it answers the test split with θ_T's keys."""
    import subprocess
    import sys

    from randopt_hpc.backends.hf import HFBackend
    from randopt_hpc.config import load_config
    from randopt_hpc.data import load_examples, make_task
    from randopt_hpc.evaluate import Evaluator

    out = tmp_path / "final"
    p = subprocess.run([sys.executable, "-m", "randopt_hpc.export", str(es_runs["np2"]), "--final", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{out}: θ_{T} (sha256 {thetas(es_runs['np2'])[-1][:16]}")
    cfg = load_config(str(es_runs["np2"] / "run.yaml"))
    test = load_examples(cfg)[1]
    backend = HFBackend(str(out), cfg.model.dtype, max_new_tokens=cfg.generation.max_new_tokens,
                        batch_size=cfg.generation.batch_size)
    backend.set_chat(cfg.model.chat, str(out))
    got = Evaluator(backend, make_task(cfg)).answers(test)
    with h5py.File(es_runs["np2"] / "results.h5") as f:
        want = [x.decode() for x in f["es/test_key"][-1]]
    assert [k or "" for k in got.keys] == want
    for argv, match in ((["--rank", "1"], "--final"), (["--final", "--member", "0"], "exactly one")):
        p = subprocess.run([sys.executable, "-m", "randopt_hpc.export", str(es_runs["np2"]), *argv, "--out",
                            str(tmp_path / "no")], capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and match in p.stderr and not (tmp_path / "no").exists()
