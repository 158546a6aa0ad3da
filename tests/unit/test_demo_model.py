"""The shipped demo model loads offline, tokenizes as trained, answers fixed prompts, matches its card;
and the training script is deterministic."""
from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "demo")

# Prompts of trained skills that the shipped model answers right, with their true answers (computed,
# not recorded from the model): products, and held-out Countdown problems checked by the task itself.
PRODUCTS = [(2, 3), (3, 8), (5, 11), (12, 4), (7, 11)]
COUNTDOWN = [{"numbers": [19, 19, 20], "target": 18}, {"numbers": [4, 6, 6], "target": 16}]


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def backend():
    from randopt_hpc.backends.hf import HFBackend

    return HFBackend(MODEL, "float32", max_new_tokens=12, batch_size=16)


def test_files_size_and_card_checksum():
    files = os.listdir(MODEL)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert name in files
    assert sum(os.path.getsize(os.path.join(MODEL, f)) for f in files) <= 20 * 2**20
    with open(os.path.join(MODEL, "README.md"), encoding="utf-8") as f:
        card = f.read()
    stated = re.search(r"sha256 ([0-9a-f]{64})", card)
    assert stated, "the model card states the weights' sha256"
    assert stated.group(1) == _sha256(os.path.join(MODEL, "model.safetensors"))
    with open(os.path.join(MODEL, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["hidden_size"] // cfg["num_attention_heads"] >= 32   # vLLM's CPU attention needs it


def test_loads_offline_and_tokenizes_one_char_per_token(backend):
    text = "Q: use 9 18 20 to make 182 A: 20+18*9"
    ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and backend.tokenizer.unk_token_id not in ids
    assert backend.tokenizer.decode(ids) == text


def test_greedy_answers_on_fixed_prompts(backend):
    from randopt_hpc.tasks import countdown_qa
    from randopt_hpc.tasks.base import Example

    exs = [Example(id=f"p{i}", prompt=f"Q: {a}*{b}= A:", messages=(), response_prefix="")
           for i, (a, b) in enumerate(PRODUCTS)]
    got = [t.split("\n")[0].strip() for t in backend.generate(exs)]
    assert got == [str(a * b) for a, b in PRODUCTS]
    cd = countdown_qa.examples_from_records(COUNTDOWN)
    assert cd[0].prompt == "Q: use 19 19 20 to make 18 A:"
    assert all(countdown_qa.score(t, ex).correct for t, ex in zip(backend.generate(cd), cd))


def test_solves_some_heldout_countdown_and_votes_only_valid_answers(backend):
    from randopt_hpc.tasks import countdown_qa

    exs = countdown_qa.examples_from_records(countdown_qa.synthetic_records(100, 0))
    scored = [countdown_qa.score(t, ex) for t, ex in zip(backend.generate(exs), exs)]
    acc = sum(s.correct for s in scored) / len(scored)
    assert 0.15 <= acc <= 0.7   # the band where RandOpt has something to find (the card states the figure)
    assert all(s.key is not None for s in scored if s.correct)


def test_training_script_is_deterministic(tmp_path):
    import torch

    from tools.train_demo_model import train

    torch.set_num_threads(1)
    shas = []
    for run in ("a", "b"):
        info = train(str(tmp_path / run), seed=3, steps=3, batch=8, lr=3e-3, warmup=2, hidden=64, layers=1,
                     heads=2, intermediate=64, log_every=1, evaluate=False)
        shas.append(info["sha256"])
    assert shas[0] == shas[1]
    other = train(str(tmp_path / "c"), seed=4, steps=3, batch=8, lr=3e-3, warmup=2, hidden=64, layers=1,
                  heads=2, intermediate=64, log_every=1, evaluate=False)
    assert other["sha256"] != shas[0]
