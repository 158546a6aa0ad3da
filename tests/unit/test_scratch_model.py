"""tools.scratch_model: the demo's architecture with seeded random weights, byte for byte reproducible."""
from __future__ import annotations

import filecmp
import os

from tools.scratch_model import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "models", "demo")


def _weights(folder) -> bytes:
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        return f.read()


def test_seeded_builds_are_identical_and_load_with_the_demo_architecture(tmp_path, capsys):
    a, b, c = (str(tmp_path / n) for n in ("a", "b", "c"))
    assert main([a, "--like", DEMO, "--seed", "0"]) == 0
    assert main([b, "--like", DEMO, "--seed", "0"]) == 0
    assert main([c, "--like", DEMO, "--seed", "1"]) == 0
    assert "1,075,328 parameters" in capsys.readouterr().out
    assert _weights(a) == _weights(b)
    assert _weights(a) != _weights(c)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert filecmp.cmp(os.path.join(a, name), os.path.join(DEMO, name), shallow=False), name
    assert not os.path.exists(os.path.join(a, "train_log.json"))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scratch = AutoModelForCausalLM.from_pretrained(a)
    demo = AutoModelForCausalLM.from_pretrained(DEMO)
    assert sum(p.numel() for p in scratch.parameters()) == sum(p.numel() for p in demo.parameters()) == 1_075_328
    sd, dd = scratch.state_dict(), demo.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in dd.items()}
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert not torch.equal(sd["lm_head.weight"], dd["lm_head.weight"])   # random, not the trained weights
    tok = AutoTokenizer.from_pretrained(a)
    assert tok.decode(tok("Q: 7*12= A:", add_special_tokens=False)["input_ids"]) == "Q: 7*12= A:"


def test_refuses_a_bad_like_folder_in_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "out"), "--like", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "out"), "--like", str(tmp_path / "empty")]) == 2
    assert main([DEMO, "--like", DEMO]) == 2    # never overwrite the like folder's weights
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert not os.path.exists(tmp_path / "out")
