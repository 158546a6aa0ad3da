"""The hf backend's greedy loop (randopt_hpc.backends.greedy, runtime.decoder): the token ids of transformers'
generate() bitwise, on the demo model's perturbed candidates and countdown prompts, with and without stop
strings, whatever the batching; `auto` takes it on CPU for greedy answers only.
"""
from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import pytest
import torch

from randopt_hpc.backends import greedy
from randopt_hpc.backends.greedy import greedy_ids
from randopt_hpc.backends.hf import HFBackend
from randopt_hpc.config import ConfigError, load_config
from randopt_hpc.data import load_examples
from randopt_hpc.sampling import Sampling
from tests.archs import arch_model, one_thread, short_examples

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "models", "demo")
CANDIDATES = [(seed, sigma) for seed in (1, 2, 3) for sigma in (0.01, 0.02)]
# Rows stop at different steps, some inside a two-character string split over tokens, some never.
KINDS = [("+",), ("4+", "-"), (), ("\n",), ("*", "+"), ("no such text",), ("1",), ("+1", "-1")]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def _demo_config(tmp, *overrides):
    return load_config(os.path.join(ROOT, "configs", "demo.yaml"),
                       [f"output.dir={tmp}", f"model.path={DEMO}", "task.test_size=2", *overrides])


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    """The demo's first 40 train prompts (its task, template and stop strings)."""
    return load_examples(_demo_config(tmp_path_factory.mktemp("cfg"), "task.train_size=40"))[0]


# 100: the demo's, one batch of 40 rows whose finished rows leave it down to the floor of 8; 12: not a multiple
# of 8, ending in a short batch of 4 rows (under the floor: nothing leaves).
@pytest.fixture(scope="module", params=[100, 12])
def demo(request):
    return HFBackend(DEMO, "float32", max_new_tokens=12, batch_size=request.param, noise_impl="torch",
                     decoder="loop")


def _both(backend, examples, sampling=None):
    """(generate()'s ids, the loop's ids) of the backend as it stands."""
    out = []
    for decoder in ("generate", "loop"):
        backend.decoder = decoder
        out.append(backend.generate_ids(examples, sampling))
    backend.decoder = "loop"
    return out


def _raw_loop(backend, examples):
    n, rows = backend.batch_size, []
    for b, enc in enumerate(backend.encoded(examples)):
        rows += greedy_ids(backend.model, enc["input_ids"], enc["attention_mask"], backend.max_new_tokens,
                           backend.stop_ids, stop_strings=[ex.stop_strings for ex in examples[b * n:(b + 1) * n]],
                           decode=backend._decode_new)
    return rows


def test_loop_gives_generates_ids_on_perturbed_candidates(demo, train):
    with_stops = [dataclasses.replace(ex, stop_strings=KINDS[i % len(KINDS)]) for i, ex in enumerate(train)]
    cut = 0
    for seed, sigma in CANDIDATES:
        demo.perturb(seed, sigma)
        try:
            ref, got = _both(demo, train)
            assert got == ref, (seed, sigma, demo.batch_size)
            ref, got = _both(demo, with_stops)
            assert got == ref, (seed, sigma, demo.batch_size, "stop strings")
            if seed == 1:   # the loop itself ends a row at its stop string, not only the cut after it
                assert _raw_loop(demo, with_stops) == got
            free = demo.generate_ids([dataclasses.replace(ex, stop_strings=()) for ex in with_stops])
        finally:
            demo.restore()
        cut += sum(len(a) < len(b) for a, b in zip(got, free))
    assert cut > len(CANDIDATES) * len(train) // 4   # the stop strings did end rows early


@pytest.mark.parametrize("arch, dtype", [("llama", "bfloat16"), ("gemma2", "float32")])
def test_loop_is_exact_beyond_the_demo(tmp_path_factory, arch, dtype):
    """Half precision (no shared prefix there, greedy.py) and an architecture without the trim, with
    sliding-window layers and eager attention; rows stop early on strings so that finished rows leave."""
    b = HFBackend(str(arch_model(tmp_path_factory, arch)), dtype, max_new_tokens=10, batch_size=11,
                  noise_impl="torch")
    examples = short_examples(13)
    for seed in (1, 2):
        b.perturb(seed, 0.05)
        try:
            free, _ = _both(b, examples)
            # Each row stops at one of its own tokens' text: at different steps.
            stops = [(b._decode_new(row[(seed + i) % len(row):][:1]),) if row else () for i, row in enumerate(free)]
            ex = [dataclasses.replace(e, stop_strings=s) for e, s in zip(examples, stops)]
            ref, got = _both(b, ex)
        finally:
            b.restore()
        assert got == ref and sum(map(len, got)) < sum(map(len, free)), (arch, dtype, seed)


def test_auto_takes_the_loop_on_cpu_for_greedy_answers_only(monkeypatch, train):
    b = HFBackend(DEMO, "float32", max_new_tokens=12, batch_size=100, noise_impl="torch", decoder="auto")
    hot = Sampling(temperature=1.0, top_p=0.95, seed=3, index=0)
    assert b.uses_loop() and not b.uses_loop(hot)
    calls = []
    monkeypatch.setattr(greedy, "greedy_ids", lambda *a, **kw: calls.append("loop") or [[2]] * len(a[1]))
    monkeypatch.setattr(b, "_generate", lambda enc, *a: calls.append("generate") or [[2]] * len(enc["input_ids"]))
    b.generate_ids(train[:3])
    b.generate_ids(train[:3], hot)
    assert calls == ["loop", "generate"]
    gpu = torch.device("cuda")
    assert not HFBackend.uses_loop(SimpleNamespace(decoder="auto", device=gpu))
    assert HFBackend.uses_loop(SimpleNamespace(decoder="loop", device=gpu))
    assert not HFBackend.uses_loop(SimpleNamespace(decoder="generate", device=torch.device("cpu")))
    assert not HFBackend.uses_loop(SimpleNamespace(decoder="loop", device=gpu), hot)   # sampling: generate()


def test_from_config_passes_the_decoder(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(HFBackend, "__init__", lambda self, *a, **kw: seen.append(kw["decoder"]))
    for value in ("auto", "generate", "loop"):
        HFBackend.from_config(_demo_config(tmp_path, f"runtime.decoder={value}"), DEMO)
    assert seen == ["auto", "generate", "loop"]
    assert _demo_config(tmp_path).runtime.decoder == "auto"


def test_an_unknown_decoder_is_refused_in_one_line(tmp_path, capsys):
    from randopt_hpc import run

    with pytest.raises(ConfigError, match=r"^runtime\.decoder: .*auto.*generate.*loop") as e:
        _demo_config(tmp_path, "runtime.decoder=fast")
    assert "\n" not in str(e.value)
    assert run.main([os.path.join(ROOT, "configs", "demo.yaml"), f"output.dir={tmp_path}", f"model.path={DEMO}",
                     "runtime.decoder=fast"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("randopt_hpc: error: runtime.decoder"), lines
    with pytest.raises(ValueError, match="unknown decoder"):
        HFBackend(DEMO, max_new_tokens=1, batch_size=1, decoder="fast")
