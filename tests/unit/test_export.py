"""randopt_hpc.export on a real run of the tiny model (hf backend): the exported folder, loaded with plain
transformers, answers the test set as the exported member did in the run; every refusal is one line, exit 2,
and writes nothing."""
from __future__ import annotations

import json
import os
import shutil

import h5py
import pytest

from randopt_hpc.comm import SerialComm, StopFlag
from randopt_hpc.config import load_config
from randopt_hpc.data import load_examples
from randopt_hpc.environment import Environment
from randopt_hpc.export import main
from randopt_hpc.run import run
from tests.conftest import assert_refused, other_weights, write_config
from tests.fakes import quiet_log


def strs(ds) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else x for x in ds]


@pytest.fixture(scope="module")
def finished(random_model, tmp_path_factory):
    """A finished run on a copy of the untrained tiny Llama (a test swaps that copy's weights), texts saved; its
    σ large enough that the candidates answer unlike the base."""
    tmp = tmp_path_factory.mktemp("export")
    model = tmp / "model"
    shutil.copytree(random_model, model)
    path = write_config(tmp / "run.yaml", model, tmp / "run", population={"size": 4, "sigmas": [0.3, 0.6]},
                        selection={"top_k": [1, 2], "control": False}, generation={"samples": 0, "max_new_tokens": 24},
                        output={"save_text": True})
    cfg = load_config(str(path))
    train, test = load_examples(cfg)
    run(cfg, SerialComm(), Environment.from_os({}), quiet_log(), train, test, StopFlag())
    return tmp, cfg, test


def export(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err


def greedy_texts(folder, prompts, stop_strings, max_new_tokens, batch_size) -> list[str]:
    """Plain transformers: the run's prompts in the run's batches, left padded, greedy, stopping at the folder's
    EOS ids; each text cut after the example's first stop string, as the run cut it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    stops = list(dict.fromkeys(([eos] if isinstance(eos, int) else list(eos or [])) + [tok.eos_token_id]))
    texts = []
    for s in range(0, len(prompts), batch_size):
        enc = tok(prompts[s:s + batch_size], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            texts.append(tok.decode(row[:cut], skip_special_tokens=True))
    out = []
    for text, strings in zip(texts, stop_strings):
        ends = [text.find(x) + len(x) for x in strings if x in text]
        out.append(text[:min(ends)] if ends else text)
    return out


def test_rank_1_answers_the_test_set_as_the_member_did(finished, capsys):
    tmp, cfg, test = finished
    code, out, err = export(capsys, tmp / "run", "--rank", 1, "--out", tmp / "best")
    assert code == 0, err
    with h5py.File(tmp / "run" / "results.h5", "r") as f:
        best = int(f["selection/ranking"][0])
        members = [int(x) for x in f["ensemble/selected/members"][()]]
        stored = strs(f["ensemble/selected/test_text"][members.index(best)])
        prompts = strs(f["data/test_prompt"][()])
        seed, fingerprint = int(f["population/seed"][best]), f.attrs["config_fingerprint"]
        accuracy = f["ensemble/selected/test_correct"][members.index(best)].mean()
    assert f"candidate {best} (rank 1/4" in out
    files = set(os.listdir(tmp / "best"))
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "README.md"} <= files
    assert json.loads((tmp / "best" / "generation_config.json").read_text()) == \
        json.loads((tmp / "model" / "generation_config.json").read_text())
    card = (tmp / "best" / "README.md").read_text()
    assert f"| candidate index | {best} |" in card and f"| seed | {seed} |" in card and fingerprint in card
    assert f"| test accuracy | {accuracy:.4f} |" in card
    assert prompts == [ex.prompt for ex in test]
    got = greedy_texts(str(tmp / "best"), prompts, [ex.stop_strings for ex in test], cfg.generation.max_new_tokens,
                       cfg.generation.batch_size)
    assert got == stored
    # Not the base model: the weights were perturbed.
    base = greedy_texts(str(tmp / "model"), prompts, [ex.stop_strings for ex in test],
                        cfg.generation.max_new_tokens, cfg.generation.batch_size)
    with h5py.File(tmp / "run" / "results.h5", "r") as f:
        assert base == strs(f["base/test_text"][()]) != stored


def refused(capsys, tmp, *argv, match: str) -> None:
    assert_refused(main, "randopt_hpc.export", capsys, tmp, *argv, match=match)


def test_refusals(finished, capsys, tmp_path):
    tmp, _, _ = finished
    run_dir, out = tmp / "run", tmp / "refused"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "run.yaml", unfinished / "run.yaml")
    refused(capsys, tmp, tmp_path / "nothing", "--member", 0, "--out", out, match="not a randopt_hpc run folder")
    refused(capsys, tmp, unfinished, "--member", 0, "--out", out, match="not finished (results.h5 missing)")
    refused(capsys, tmp, run_dir, "--out", out, match="exactly one of --member I, --rank R and --final")
    refused(capsys, tmp, run_dir, "--member", 0, "--rank", 1, "--out", out, match="exactly one of")
    refused(capsys, tmp, run_dir, "--member", 4, "--out", out, match="--member 4: outside 0..3")
    refused(capsys, tmp, run_dir, "--rank", 0, "--out", out, match="--rank 0: outside 1..4")
    refused(capsys, tmp, run_dir, "--rank", 1, match="Missing option '--out'")
    # An --out that cannot be made is refused before any work, not after it (and leaves no probe behind).
    refused(capsys, tmp, run_dir, "--rank", 1, "--out", "/proc/randopt-export", match="cannot write there")
    refused(capsys, tmp, run_dir, "--rank", 1, "--out", tmp / "run" / "results.h5" / "x",
            match="results.h5 is not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    refused(capsys, tmp, run_dir, "--rank", 1, "--out", tmp_path / "link", match="exists and is not an empty folder")
    (tmp / "full").mkdir()
    (tmp / "full" / "x").write_text("x")
    refused(capsys, tmp, run_dir, "--rank", 1, "--out", tmp / "full", match="exists and is not an empty folder")
    with other_weights(tmp / "model", tmp_path):   # the same layout, other weights
        refused(capsys, tmp, run_dir, "--rank", 1, "--out", out,
                match="does not answer as the run's base model did (")


def test_check_export_refuses_in_one_line(finished, tmp_path):
    import subprocess
    import sys

    tmp, _, _ = finished
    for argv, match in [([tmp_path / "nothing"], "not a randopt_hpc run folder"),
                        ([tmp / "run", "--rank", 0], "'--rank': 0 is not in the range"),
                        ([tmp / "run", "--rank", 5], "--rank 5: outside 1..4"),
                        ([tmp / "run", "--final"], "--final: only an ES run"),
                        ([tmp / "run", "--backend", "tgi"], "'--backend': 'tgi' is not one of")]:
        p = subprocess.run([sys.executable, "-m", "tools.check_export", *map(str, argv)], capture_output=True,
                           text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("check_export: error: "), p.stderr
        assert match in lines[0] and not p.stdout


def test_check_export_reproduces_every_stored_key(finished):
    """tools.check_export: the exported best member, loaded on its own by the hf backend, reproduces every key."""
    import subprocess
    import sys

    tmp, _, test = finished
    p = subprocess.run([sys.executable, "-m", "tools.check_export", str(tmp / "run"), "--backend", "hf"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith(f"{len(test)}/{len(test)} test keys equal the run's stored keys"), p.stdout
