"""The HF backend on the tiny model: perturb/restore exactness, tied weights, selection of tensors."""
import json
import shutil

import pytest
import torch

from randopt_hpc import noise
from randopt_hpc.backends.hf import HFBackend
from randopt_hpc.tasks import countdown


@pytest.fixture(scope="module")
def backend(random_model):
    return HFBackend(str(random_model), "float32", max_new_tokens=8, batch_size=3)


def _state(b):
    return {n: p.detach().clone() for n, p in b.model.named_parameters()}


def test_tied_weights_are_perturbed_once(backend):
    assert backend.model.lm_head.weight is backend.model.model.embed_tokens.weight
    assert "model.embed_tokens.weight" in backend.names and "lm_head.weight" not in backend.names
    base = _state(backend)
    backend.perturb(5, 1e-2)
    w = backend.model.model.embed_tokens.weight.detach()
    expected = base["model.embed_tokens.weight"] + 1e-2 * noise.noise(5, "model.embed_tokens.weight", w.shape)
    assert torch.allclose(w, expected, atol=1e-6)
    backend.restore()


def test_100_cycles_restore_bitwise(backend):
    base = _state(backend)
    for s in range(100):
        backend.perturb(s, 2e-2)
        if s == 0:
            assert not all(torch.equal(base[n], p) for n, p in _state(backend).items())
            with pytest.raises(RuntimeError, match="twice without restore"):
                backend.perturb(1, 2e-2)
        backend.restore()
    after = _state(backend)
    assert all(torch.equal(base[n], after[n]) for n in base)


def test_perturbation_changes_output_and_restore_brings_it_back(backend):
    ex = countdown.examples_from_records(countdown.synthetic_records(3, 1))
    before = backend.generate(ex)
    backend.perturb(1, 0.5)
    changed = backend.generate(ex)
    backend.restore()
    assert changed != before
    assert backend.generate(ex) == before


def test_include_exclude(random_model):
    b = HFBackend(str(random_model), max_new_tokens=4, batch_size=2, include=[r"layers\.0\."], exclude=[r"norm"])
    assert b.names and all("layers.0." in n and "norm" not in n for n in b.names)
    base = _state(b)
    b.perturb(3, 1e-2)
    now = _state(b)
    changed = {n for n in base if not torch.equal(base[n], now[n])}
    assert changed == set(b.names)
    with pytest.raises(ValueError, match="select no weight"):
        HFBackend(str(random_model), max_new_tokens=4, batch_size=2, include=["nothing-matches"])


def test_bf16_perturb_is_computed_in_f32_from_base(random_model):
    b = HFBackend(str(random_model), "bfloat16", max_new_tokens=4, batch_size=2)
    name = b.names[1]
    p = dict(b.model.named_parameters())[name]
    base = p.detach().clone()
    b.perturb(9, 1e-2)
    expected = (base.float() + 1e-2 * noise.noise(9, name, base.shape)).to(torch.bfloat16)
    assert torch.equal(p.detach(), expected)
    b.restore()
    assert torch.equal(p.detach(), base)
    # In bfloat16, undoing the noise by subtraction would leave many weights a step off; the copy does not.
    before = _state(b)
    for seed in range(20):
        b.perturb(seed, 5e-2)
        b.restore()
    assert all(torch.equal(before[n], t) for n, t in _state(b).items())


def test_generation_config_settings_of_the_model_are_not_applied(random_model, tmp_path, backend):
    """Decoding is greedy and plain, as in the vLLM backend. transformers would otherwise merge the
    model's generation_config.json (Qwen2.5-Instruct ships repetition_penalty 1.05) into every field
    the backend leaves unset, and change the answers."""
    shutil.copytree(random_model, tmp_path / "m")
    gen = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    gen.update(repetition_penalty=5.0, no_repeat_ngram_size=2, num_beams=3, do_sample=True, temperature=0.7,
               min_new_tokens=8)
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps(gen))
    ex = countdown.examples_from_records(countdown.synthetic_records(2, 1))
    b = HFBackend(str(tmp_path / "m"), "float32", max_new_tokens=8, batch_size=3)
    ids = b.generate_ids(ex)
    assert ids == backend.generate_ids(ex)
    assert any(len(set(r)) < len(r) for r in ids)   # a repeat, which those settings would have prevented


def test_samples_are_a_function_of_item_and_sample_not_of_the_batch(random_model, backend):
    from randopt_hpc.sampling import Sampling

    ex = countdown.examples_from_records(countdown.synthetic_records(7, 3))
    hot = Sampling(temperature=1.0, top_p=1.0, seed=4, index=0)
    first = backend.generate_ids(ex, hot)
    other_batches = HFBackend(str(random_model), "float32", max_new_tokens=8, batch_size=2)
    assert other_batches.generate_ids(ex[::-1], hot)[::-1] == first        # reordered, rebatched: the same
    assert other_batches.generate_ids(ex[3:4], hot) == first[3:4]
    assert backend.generate_ids(ex, Sampling(1.0, 1.0, 4, 1)) != first      # sample 1 is another draw
    assert backend.generate_ids(ex, Sampling(1.0, 1.0, 5, 0)) != first      # so is another generation.seed
    # A cold temperature or a tiny nucleus leaves one candidate token: the greedy answer.
    assert backend.generate_ids(ex, Sampling(1e-4, 1.0, 4, 0)) == backend.generate_ids(ex)
    assert backend.generate_ids(ex, Sampling(1.0, 1e-9, 4, 0)) == backend.generate_ids(ex)


def test_gumbel_max_draws_from_the_softmax():
    """argmax(logits + G) over 20,000 rows of independent noise: token frequencies within 4 standard errors
    of softmax(logits), and the noise of one (row seed, step) is the same however many rows are drawn."""
    import numpy as np

    from randopt_hpc.sampling import gumbel

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    picks = np.argmax(logits[None, :] + gumbel(np.arange(20000), 3, 4), axis=1)
    freq = np.bincount(picks, minlength=4) / 20000
    se = np.sqrt(np.exp(logits) * (1 - np.exp(logits)) / 20000)
    assert np.all(np.abs(freq - np.exp(logits)) < 4 * se)
    assert np.array_equal(gumbel([7, 8], 3, 4)[1], gumbel([8], 3, 4)[0])
