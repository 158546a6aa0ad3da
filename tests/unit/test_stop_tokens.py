"""Stop tokens: every EOS id a model declares ends a completion, and no grade sees text after one.

Instruct models list several EOS ids in generation_config.json (Qwen2.5-Instruct: <|im_end|> and
<|endoftext|>); vLLM stops at all of them, so the HF backend must too, and the text of both must end
before the stop.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from randopt_hpc.backends.base import BaseBackend, cut_at_stop, stop_token_ids
from randopt_hpc.backends.hf import HFBackend
from tests.archs import arch_model, one_thread, short_examples
from tools.make_tiny_model import build_arch, build_tokenizer

TOK = SimpleNamespace(eos_token_id=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


# ---------------------------------------------------------------------------- cut_at_stop
@pytest.mark.parametrize("ids, stops, expected", [
    ([5, 6, 7, 8], [7], [5, 6, 7]),
    ([5, 9, 6, 7], [7, 9], [5, 9]),          # the first stop of any kind ends it
    ([7, 5, 7], [7], [7]),
    ([5, 6], [7], [5, 6]),                    # none generated: everything
    ([5, 6], [], [5, 6]),
    ([], [7], []),
    ((i for i in (5, 7, 0, 0)), (7,), [5, 7]),   # any iterables; padding after the stop goes
])
def test_cut_at_stop(ids, stops, expected):
    assert cut_at_stop(ids, stops) == expected


# ---------------------------------------------------------------------------- stop_token_ids
def _folder(tmp_path, generation=None, config=None):
    for name, content in (("generation_config.json", generation), ("config.json", config)):
        if content is not None:
            (tmp_path / name).write_text(json.dumps(content))
    return str(tmp_path)


@pytest.mark.parametrize("generation, config, tok_eos, expected", [
    ({"eos_token_id": 7}, None, 2, [7, 2]),                          # an int
    ({"eos_token_id": [151645, 151643]}, None, 151645, [151645, 151643]),   # Qwen2.5-Instruct
    ({"eos_token_id": [9, 2, 9, 7]}, {"eos_token_id": 8}, 2, [9, 2, 7]),   # duplicates once, order kept
    ({"bos_token_id": 1}, {"eos_token_id": 8}, 2, [2]),            # the file is there and lists none
    (None, {"eos_token_id": [8, 9]}, 2, [8, 9, 2]),                  # no file: config.json's instead
    (None, {}, 2, [2]),
    (None, None, 2, [2]),                                            # neither file
    ({"eos_token_id": [4, 5]}, None, None, [4, 5]),                  # a tokenizer without EOS
    (None, None, None, []),
])
def test_stop_token_ids(tmp_path, generation, config, tok_eos, expected):
    path = _folder(tmp_path, generation, config)
    assert stop_token_ids(path, SimpleNamespace(eos_token_id=tok_eos)) == expected


@pytest.mark.parametrize("generation", [{"eos_token_id": "</s>"}, {"eos_token_id": [2, None]},
                                        {"eos_token_id": True}, {"eos_token_id": -1}])
def test_stop_token_ids_refuses_what_is_not_a_token_id(tmp_path, generation):
    with pytest.raises(ValueError, match="generation_config.json: eos_token_id"):
        stop_token_ids(_folder(tmp_path, generation), TOK)


def test_stop_token_ids_refuses_a_damaged_file(tmp_path):
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json: not JSON"):
        stop_token_ids(str(tmp_path), TOK)


@pytest.mark.parametrize("generation", [True, False])
def test_stop_token_ids_agree_with_transformers(tmp_path, generation):
    """The ids are those transformers itself would stop at (its model.generation_config), plus the
    tokenizer's EOS: from generation_config.json, or from config.json when there is none."""
    from transformers import AutoModelForCausalLM

    build_arch(str(tmp_path), "mistral", eos_ids=[40, 2, 41])
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["eos_token_id"] = [50, 51]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    if not generation:
        (tmp_path / "generation_config.json").unlink()
    eos = AutoModelForCausalLM.from_pretrained(str(tmp_path)).generation_config.eos_token_id
    assert stop_token_ids(str(tmp_path), build_tokenizer()) == ([40, 2, 41] if generation else [50, 51, 2])
    assert stop_token_ids(str(tmp_path), build_tokenizer())[:len(eos)] == eos


# ---------------------------------------------------------------------------- BaseBackend.generate
class _Canned(BaseBackend):
    """Answers fixed token ids, as a backend's generate_ids would."""

    def __init__(self, rows, stop_ids):
        super().__init__()
        self.tokenizer, self.rows, self.stop_ids = build_tokenizer(), rows, stop_ids

    def generate_ids(self, examples, sampling=None):
        return self.rows

    def prompt_lengths(self, examples):
        return [len(self.tokenizer(ex.prompt)["input_ids"]) for ex in examples]


def test_generate_decodes_only_what_precedes_the_stop():
    tok = build_tokenizer()
    ab, cd, x = tok("ab")["input_ids"], tok("cd")["input_ids"], tok("x")["input_ids"]
    rows = [ab + x + cd, ab + [2], ab + [2, 0, 0], ab + cd, x + cd]
    assert _Canned(rows, [2] + x).generate(short_examples(5)) == ["ab", "ab", "ab", "abcd", ""]
    # A backend that sets no stop ids stops where its tokenizer does; "x" is then text like any other.
    assert _Canned(rows, None).generate(short_examples(5)) == ["abxcd", "ab", "ab", "abcd", "xcd"]


def test_complete_counts_tokens_and_says_why_each_generation_ended():
    tok = build_tokenizer()
    assert tok.eos_token_id == 2
    ab, cd, x = tok("ab")["input_ids"], tok("cd")["input_ids"], tok("x")["input_ids"]
    rows = [ab + x + cd, ab + [2], ab + [2, 0, 0], ab + cd, x + cd]
    done = _Canned(rows, [2] + x).complete(short_examples(5))
    assert [c.finish for c in done] == ["stop", "eos", "eos", "length", "stop"]
    # The stop token was generated, so it counts; what follows it was not.
    assert [c.gen_tokens for c in done] == [len(ab) + 1, len(ab) + 1, len(ab) + 1, len(ab + cd), 1]
    assert [c.prompt_tokens for c in done] == [len(tok(ex.prompt)["input_ids"]) for ex in short_examples(5)]


# ---------------------------------------------------------------------------- the HF backend
def _first_new_id(row, start=2):
    """The first id at or after `start` that the row has not produced before, and where it is."""
    for k in range(start, len(row) - 1):
        if row[k] not in row[:k]:
            return row[k], k
    return None, None


def test_hf_stops_at_a_second_eos_id(tmp_path_factory, tmp_path):
    """A Qwen2 whose generation_config.json lists [EOS, X], where X is an ordinary character the model
    emits mid-answer: HF stops at X, and the graded text ends before it."""
    ex = short_examples(2)
    free = HFBackend(str(arch_model(tmp_path_factory, "qwen2")), max_new_tokens=12, batch_size=2)
    rows = free.generate_ids(ex)
    stop, k = _first_new_id(rows[0])
    # The precondition: without X as a stop the model writes past it, so there is text to cut.
    assert stop is not None and stop != free.tokenizer.eos_token_id and len(rows[0]) > k + 1
    build_arch(str(tmp_path), "qwen2", eos_ids=[free.tokenizer.eos_token_id, stop])   # same seed, same weights
    b = HFBackend(str(tmp_path), max_new_tokens=12, batch_size=2)
    assert b.stop_ids == [free.tokenizer.eos_token_id, stop]
    got = b.generate_ids(ex)
    assert got[0] == rows[0][:k + 1]
    assert got == [cut_at_stop(r, b.stop_ids) for r in rows]   # each row of the batch at its own stop
    text = b.generate(ex)
    char = b.tokenizer.decode([stop])
    assert text[0] == b.tokenizer.decode(rows[0][:k]) and char not in text[0]
    assert text == [b.tokenizer.decode(r[:-1] if r[-1] in b.stop_ids else r) for r in got]
