"""rounds: 2 under real mpiexec on the shipped demo model: search, distil (traces dealt over the ranks), search
again; the same on 1 and 2 ranks, a rerun computes nothing again, a changed distill setting is refused in one
line, and a lost round resumes from the published distilled model."""
import json
import os
import shutil

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT, assert_same_results, launch, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = {"name": "countdown_qa", "template": "Q: use {numbers} and make {target} A:", "train_size": 20,
        "test_size": 20, "seed": 0}


def rounds_config(path, out):
    return write_config(path, ROOT / "models" / "demo", out, task=TASK, rounds=2,
                        population={"size": 4, "sigmas": [1e-2, 2e-2]}, selection={"top_k": [1, 2], "control": False},
                        generation={"samples": 0, "max_new_tokens": 12, "batch_size": 20},
                        distill={"unlabeled": 10, "epochs": 1, "batch_size": 8})


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rounds")
    out = {}
    for name, nproc in (("np1", 1), ("np2", 2)):
        cfg = rounds_config(tmp / f"{name}.yaml", tmp / name)
        p = launch(cfg, nproc, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = (cfg, tmp / name, p)
    return out


def test_two_rounds_are_the_same_on_1_and_2_ranks(two):
    (_, a, p), (_, b, p2) = two["np1"], two["np2"]
    # The two members' traces: both on the one rank, one on each of two ranks (and the same model from them).
    assert "[rank 0/1] distill: traces member 2/2" in p.stderr, p.stderr[-3000:]
    assert all(f"[rank {r}/2] distill: traces member 1/1" in p2.stderr for r in (0, 1)), p2.stderr[-3000:]
    for r in (1, 2):
        assert_same_results(a / f"round-{r}" / "results.h5", b / f"round-{r}" / "results.h5")
    wa, wb = (load_file(x / "round-1" / "distilled" / "model.safetensors") for x in (a, b))
    assert sorted(wa) == sorted(wb) and all((wa[k] == wb[k]).all() for k in wa)
    assert not (a / "round-2" / "distilled").exists()           # the last round is not distilled
    run2 = (a / "round-2" / "run.yaml").read_text()
    assert str(a / "round-1" / "distilled") in run2 and "rounds: 1" in run2
    rows = json.loads((a / "rounds.json").read_text())
    info = json.loads((a / "round-1" / "distilled" / "distill.json").read_text())
    assert [r["round"] for r in rows] == [1, 2] and rows[0]["distilled"] == info["distilled_test_accuracy"]
    assert rows[1]["base"] == pytest.approx(info["distilled_test_accuracy"])   # round 2 starts from it
    assert "| 2 |" in (a / "rounds.md").read_text() and "rounds of" in p.stdout


def test_status_on_the_rounds_folder_shows_every_round(two):
    from randopt_hpc.status import render_rounds, summarize_rounds

    _, out, _ = two["np2"]
    s = summarize_rounds(str(out))
    assert [r["dir"] for r in s["rounds"]] == [str(out / "round-1"), str(out / "round-2")] and s["finished"]
    assert [r["finished"] for r in s["rounds"]] == [True, True]
    assert s["rounds"][0]["distilled"] == str(out / "round-1" / "distilled") and not s["rounds"][1]["distilled"]
    text = render_rounds(s)
    assert text.startswith(f"round 1: {out / 'round-1'}: 4/4 candidates") and "\nround 2: " in text
    assert text.endswith(f"{out}: 2 round(s) started, finished (rounds.md written)")
    assert summarize_rounds(str(out / "round-1"))["rounds"] == []     # a round's own folder is a plain run


def test_a_rerun_computes_nothing_and_a_changed_setting_is_refused(two):
    cfg, out, _ = two["np2"]
    model = out / "round-1" / "distilled" / "model.safetensors"
    before = os.stat(model).st_mtime_ns
    p = launch(cfg, 2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "candidates, 0 with train answers" not in p.stderr and os.stat(model).st_mtime_ns == before
    p = launch(cfg, 2, "distill.epochs=2")
    assert p.returncode == 2 and "distill: " in p.stderr and "distill.epochs 1, not 2" in p.stderr
    assert os.stat(model).st_mtime_ns == before


def test_a_lost_second_round_resumes_from_the_distilled_model(two, tmp_path):
    cfg, src, _ = two["np1"]
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    shutil.rmtree(out / "round-2")
    model = out / "round-1" / "distilled" / "model.safetensors"
    before = os.stat(model).st_mtime_ns
    p = launch(cfg, 2, f"output.dir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert os.stat(model).st_mtime_ns == before                  # not distilled again
    assert_same_results(src / "round-2" / "results.h5", out / "round-2" / "results.h5")
