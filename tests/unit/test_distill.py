"""randopt_hpc.distill on a real run of the shipped demo model (hf backend): the written folder loads with plain
transformers and answers the test set as distill.json says; the trace rules as pure functions; the SFT loop
is deterministic and learns; every refusal is one line, exit 2, and writes nothing."""
from __future__ import annotations

import json
import os
import shutil

import h5py
import pytest

from randopt_hpc.comm import SerialComm, StopFlag
from randopt_hpc.config import load_config
from randopt_hpc.data import load_examples, make_task
from randopt_hpc.distill import Trace, keep_correct, keep_majority, main, unlabeled_examples
from randopt_hpc.environment import Environment
from randopt_hpc.run import run
from randopt_hpc.sft import IGNORE, Settings, encode_pair, lr_at, train
from randopt_hpc.tasks.base import score_all
from tests.conftest import ROOT, assert_refused, other_weights, write_config
from tests.fakes import quiet_log
from tests.unit.test_export import greedy_texts

DEMO = ROOT / "models" / "demo"
TASK = {"name": "countdown_qa", "template": "Q: use {numbers} and make {target} A:", "train_size": 20,
        "test_size": 20, "seed": 0}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of 4 perturbations of a copy of the demo model (a test swaps that copy's weights) on 20
    train and 20 test problems: members that answer some problems right, in a few seconds."""
    tmp = tmp_path_factory.mktemp("distill")
    model = tmp / "model"
    shutil.copytree(DEMO, model)
    path = write_config(tmp / "run.yaml", model, tmp / "run", task=TASK,
                        population={"size": 4, "sigmas": [1e-2, 2e-2]}, selection={"top_k": [1, 2], "control": False},
                        generation={"samples": 0, "max_new_tokens": 12, "batch_size": 20})
    cfg = load_config(str(path))
    train_ex, test = load_examples(cfg)
    run(cfg, SerialComm(), Environment.from_os({}), quiet_log(), train_ex, test, StopFlag())
    return tmp, cfg


def distill(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err


@pytest.fixture(scope="module")
def distilled(finished):
    """The command run once on the finished run: (exit status, stdout, stderr, the folder)."""
    import contextlib
    import io

    tmp, _ = finished
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main([str(tmp / "run"), "--out", str(tmp / "small"), "--unlabeled", "10", "--epochs", "1",
              "--batch-size", "8"])
    return e.value.code or 0, out.getvalue(), err.getvalue(), tmp / "small"


def test_the_folder_answers_as_distill_json_says(finished, distilled):
    tmp, cfg = finished
    code, out, err, folder = distilled
    assert code == 0, err
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "README.md", "distill.json", "traces.jsonl"} <= set(os.listdir(folder))
    info = json.loads((folder / "distill.json").read_text())
    with h5py.File(tmp / "run" / "results.h5", "r") as f:
        ranking = [int(x) for x in f["selection/ranking"][:2]]
        fingerprint = f.attrs["config_fingerprint"]
        vote = float(f["ensemble/selected/accuracy"][list(f["ensemble/selected/k"][()]).index(2)])
        base = float(f["base/test_correct"][()].mean())
    assert info["k"] == 2 and [m["index"] for m in info["members"]] == ranking   # the largest top_k by default
    assert info["fingerprint"] == fingerprint and info["population"] == 4
    assert info["base_test_accuracy"] == base and info["vote_test_accuracy"] == vote
    assert info["member_train_keys_differ"] == 0   # the members answered train as they did in the run
    c = info["counts"]
    assert c["train"]["prompts"] == 20 and c["unlabeled"]["prompts"] == 10
    assert c["train"]["kept"] + c["train"]["skipped"] == 20 and c["train"]["traces"] == c["train"]["kept"] > 0
    assert c["train"]["traces_correct"] == c["train"]["traces"]
    assert info["sft"]["epochs"] == 1 and info["sft"]["lora"] is False and info["steps"] >= 1
    assert set(info["seconds"]) == {"traces", "training", "evaluation"}
    rows = [json.loads(line) for line in (folder / "traces.jsonl").read_text().splitlines()]
    assert len(rows) == c["train"]["traces"] + c["unlabeled"]["traces"]
    assert {r["member"] for r in rows} <= set(ranking) and {r["split"] for r in rows} <= {"train", "unlabeled"}
    assert all(r["correct"] and r["key"] for r in rows if r["split"] == "train")
    train_ex, test = load_examples(cfg)
    labeled = {ex.id for ex in train_ex + test}
    assert all(r["id"] not in labeled for r in rows if r["split"] == "unlabeled")
    # Plain transformers, greedy in the run's batches: the test accuracy distill.json reports.
    texts = greedy_texts(str(folder), [ex.prompt for ex in test], [ex.stop_strings for ex in test],
                         cfg.generation.max_new_tokens, cfg.generation.batch_size)
    assert all(texts)   # it answers
    scored = score_all(make_task(cfg), texts, test)
    assert info["distilled_test_accuracy"] == sum(s.correct for s in scored) / len(test)
    assert f"base {base:.4f}, top-2 vote {vote:.4f}, distilled {info['distilled_test_accuracy']:.4f}" in out
    assert "distill: train epoch 1/1 step" in err and "ETA" in err
    assert "| test accuracy, this model |" in (folder / "README.md").read_text()


def refused(capsys, tmp, *argv, match: str) -> None:
    assert_refused(main, "randopt_hpc.distill", capsys, tmp, *argv, match=match)


def test_refusals(finished, capsys, tmp_path):
    tmp, _ = finished
    run_dir, out = tmp / "run", tmp / "refused"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "run.yaml", unfinished / "run.yaml")
    refused(capsys, tmp, tmp_path / "nothing", "--out", out, match="not a randopt_hpc run folder")
    refused(capsys, tmp, unfinished, "--out", out, match="not finished (results.h5 missing)")
    refused(capsys, tmp, run_dir, "--k", 5, "--out", out, match="--k 5: outside 1..4")
    refused(capsys, tmp, run_dir, "--k", 0, "--out", out, match="'--k': 0 is not in the range")
    refused(capsys, tmp, run_dir, "--epochs", 0, "--out", out, match="'--epochs'")
    refused(capsys, tmp, run_dir, "--lr", 0, "--out", out, match="'--lr'")
    refused(capsys, tmp, run_dir, "--lr", "nan", "--out", out, match="'--lr': 'nan' is not a finite number")
    refused(capsys, tmp, run_dir, "--threads", 100_000, "--out", out, match="'--threads': 100000 is not in the range")
    refused(capsys, tmp, run_dir, "--out", "/proc/randopt-distill", match="cannot write there")
    # The bounds of a config's distill: section: nothing that would run for days or allocate terabytes.
    refused(capsys, tmp, run_dir, "--seed", 10**23, "--out", out, match="--seed: must be in [0, 2**63)")
    refused(capsys, tmp, run_dir, "--lora-rank", 10**11, "--out", out, match="--lora-rank: must be in [1, 65,536]")
    refused(capsys, tmp, run_dir, "--epochs", 10**11, "--out", out, match="--epochs: must be in [1, 100,000]")
    refused(capsys, tmp, run_dir, "--unlabeled", 10**11, "--out", out, match="--unlabeled: must be in [0, 1,000,000]")
    refused(capsys, tmp, run_dir, "--batch-size", -1, "--out", out, match="'--batch-size'")
    refused(capsys, tmp, run_dir, "--traces", "longest", "--out", out, match="'--traces'")
    refused(capsys, tmp, run_dir, match="Missing option '--out'")
    (tmp / "full").mkdir()
    (tmp / "full" / "x").write_text("x")
    refused(capsys, tmp, run_dir, "--out", tmp / "full", match="exists and is not an empty folder")
    with other_weights(tmp / "model", tmp_path):   # the same layout, other weights
        refused(capsys, tmp, run_dir, "--out", out, match="does not answer as the run's base model did (")


def test_nothing_to_distil(random_model, capsys, tmp_path):
    """An untrained model's members answer nothing right: refused before anything is written."""
    path = write_config(tmp_path / "run.yaml", random_model, tmp_path / "run", population={"size": 2},
                        selection={"top_k": [1], "control": False}, generation={"samples": 0, "max_new_tokens": 8})
    cfg = load_config(str(path))
    train_ex, test = load_examples(cfg)
    run(cfg, SerialComm(), Environment.from_os({}), quiet_log(), train_ex, test, StopFlag())
    capsys.readouterr()   # the run's summary
    code, out, err = distill(capsys, tmp_path / "run", "--unlabeled", 0, "--out", tmp_path / "out")
    # Found once the members have answered: after their progress lines, one error line.
    assert code == 2 and not out and err.count("error:") == 1, (code, out, err)
    assert err.splitlines()[-1].startswith("randopt_hpc.distill: error: nothing to distil: no member answered")
    assert not (tmp_path / "out").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


# ---------------------------------------------------------------- the trace rules
def T(member, response, key, correct=False):
    return Trace(member, response, key, correct)


def test_keep_correct_takes_the_shortest_correct_answer_with_a_key():
    traces = [T(0, "1+2+3", "6", True), T(1, "6*1", "6", True), T(2, "wrong", "7"), T(3, "6", None, True),
              T(4, "3+3", "6", True)]
    # 3 is the shortest text but carries no key (the task's format absent); 1 and 4 tie: the better ranked.
    assert keep_correct(traces) == [traces[1]]
    assert keep_correct(traces, every=True) == [traces[0], traces[1], traces[4]]
    assert keep_correct([T(0, "x", "1"), T(1, "y", None)]) == []
    same = [T(0, "2+4", "6", True), T(1, "2+4", "6", True)]
    assert keep_correct(same, every=True) == [same[0]]   # one of each text


def test_keep_majority_follows_the_vote():
    traces = [T(0, "aaaa", "5"), T(1, "bb", "6"), T(2, "ccc", "5"), T(3, "d", "6"), T(4, "e", None)]
    # 5 and 6 tie at two votes: the vote goes to the key reached first in ranking order, 5.
    assert keep_majority(traces) == [traces[2]]
    assert keep_majority(traces, every=True) == [traces[0], traces[2]]
    assert keep_majority(traces[1:]) == [traces[3]]            # now 6 comes first
    assert keep_majority([T(0, "x", "9"), T(1, "y", "8"), T(2, "z", "8")]) == [T(1, "y", "8")]
    assert keep_majority([T(0, "x", None), T(1, "y", "")]) == []   # every member abstains: skipped
    assert keep_majority([]) == []


def test_unlabeled_prompts_are_in_neither_split(tmp_path):
    rows = [{"id": f"r{i}", "numbers": [1, 2, i + 1], "target": i + 4} for i in range(10)]
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    for task, n, want in (({**TASK, "train_size": 3, "test_size": 3, "data": str(data)}, 9, ["r3", "r4", "r5", "r6"]),
                          ({**TASK, "train_size": 3, "test_size": 3, "data": str(data)}, 2, ["r3", "r4"]),
                          (TASK, 5, [str(i) for i in range(40, 45)])):
        cfg = load_config(str(write_config(tmp_path / "c.yaml", DEMO, tmp_path / "o", task=task)))
        got = unlabeled_examples(cfg, n)
        train, test = load_examples(cfg)
        assert [ex.id.rsplit("-", 1)[-1] if not task.get("data") else ex.id for ex in got] == want
        assert not {ex.prompt for ex in got} & {ex.prompt for ex in train + test}
        assert [ex.id for ex in unlabeled_examples(cfg, n)] == [ex.id for ex in got]   # deterministic
    assert unlabeled_examples(cfg, 0) == []


# ---------------------------------------------------------------- the SFT loop
def pairs_of(folder, n: int = 8):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return [encode_pair(tok, f"Q: {i}+{i} A:", f" {2 * i}\n", True, tok.eos_token_id) for i in range(n)], tok


def fresh(folder):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def test_encode_pair_masks_the_prompt_and_ends_with_eos(random_model):
    (ids, labels), tok = pairs_of(random_model, 1)[0][0], pairs_of(random_model, 1)[1]
    prompt = tok("Q: 0+0 A:")["input_ids"]
    assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [IGNORE] * len(prompt)
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tok.eos_token_id


def test_lr_schedule():
    s = Settings(lr=1.0, warmup=0.2)
    assert [round(lr_at(i, 10, s), 3) for i in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.038]
    assert lr_at(9, 10, Settings(lr=1.0, warmup=0.2, schedule="constant")) == 1.0


@pytest.mark.parametrize("lora", [False, True])
def test_sft_is_bitwise_deterministic(random_model, lora):
    import torch

    pairs, tok = pairs_of(random_model)
    s = Settings(epochs=2, lr=1e-3, batch_size=3, seed=5, lora=lora, lora_rank=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, sa = train(fresh(random_model), pairs, s, tok.pad_token_id, log=lambda line: None)
        b, sb = train(fresh(random_model), pairs, s, tok.pad_token_id, log=lambda line: None)
        c, _ = train(fresh(random_model), pairs, Settings(**{**s.as_dict(), "seed": 6}), tok.pad_token_id,
                     log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    wa, wb, wc = a.state_dict(), b.state_dict(), c.state_dict()
    assert set(wa) == set(fresh(random_model).state_dict())   # LoRA merged away: a plain model
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and sa["loss_by_epoch"] == sb["loss_by_epoch"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)     # another seed, another order (and init)
    assert sa["steps"] == 2 * 3


def test_sft_loss_falls(random_model):
    pairs, tok = pairs_of(random_model)
    s = Settings(epochs=15, lr=3e-3, batch_size=4, warmup=0.1)
    _, stats = train(fresh(random_model), pairs, s, tok.pad_token_id, log=lambda line: None)
    losses = stats["loss_by_epoch"]
    assert losses[-1] < 0.5 * losses[0], losses
