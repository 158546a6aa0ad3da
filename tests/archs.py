"""Test helpers for the tiny models of every supported architecture (tools/make_tiny_model.build_arch).

A model folder is built once per pytest session and arguments, under the session's temporary folder,
so that any number of tests (and fixtures in conftest) can ask for the same one. Nothing is downloaded.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from randopt_hpc.tasks.base import Example
from tools.make_tiny_model import ARCHS, build_arch

__all__ = ["ARCHS", "DTYPES", "arch_model", "one_thread", "sharded_folder", "short_examples", "vllm_patches_undone"]

DTYPES = ["float32", "bfloat16", "float16"]

_built: dict[tuple, Path] = {}


def arch_model(tmp_path_factory, arch: str, **kwargs) -> Path:
    """The folder of build_arch(arch, **kwargs), built on first use in this session."""
    key = (str(tmp_path_factory.getbasetemp()), arch, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _built:
        out = tmp_path_factory.mktemp(f"arch-{arch}")
        build_arch(str(out), arch, **kwargs)
        _built[key] = out
    return _built[key]


def short_examples(n: int = 2) -> list[Example]:
    """Prompts of a few tokens: generation mechanics do not need a task's long prompts, and the tiny
    models' character tokenizer makes a Countdown prompt hundreds of tokens long. Of different lengths, so
    a batch is padded, and longer than the 16-token sliding window of the tiny models that have one."""
    return [Example(id=f"s{i}", prompt=f"Q: what is {i + 3} times {10 * i + 7}? A:", messages=(), response_prefix="")
            for i in range(n)]


@contextlib.contextmanager
def one_thread():
    """torch on one thread: a tiny model gains nothing from a second one, and on a busy 2-core machine
    the spinning worker threads of a second made these tests several times slower. Tests that perturb
    here use noise_impl="torch": numba's OpenMP pool, once started, spins beside torch and slows its
    generation again (test_noise checks that both impls draw the same noise)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def vllm_patches_undone():
    """vLLM's Transformers backend (OLMo 2/3 here) decorates the transformers model class itself for
    torch.compile, for the whole process: an HF model of that class made or called after a vLLM engine
    fails ('no attribute do_not_compile'). A run holds one backend per process; a test session holds
    both, so the classes get their own attributes back once the engines of a test are gone."""
    import transformers

    classes = [getattr(transformers, name) for name in ("Olmo2Model", "Olmo3Model") if hasattr(transformers, name)]
    saved = [(cls, dict(vars(cls))) for cls in classes]
    try:
        yield
    finally:
        for cls, before in saved:
            for key in set(vars(cls)) - set(before):
                delattr(cls, key)
            for key, value in before.items():
                if vars(cls).get(key) is not value:
                    setattr(cls, key, value)


def sharded_folder(path, tensors: dict, extra: dict | None = None):
    """Tensors written to `path` in two safetensors files listed by a model.safetensors.index.json, plus
    unlisted `extra` files ({file name: tensors}); returns path."""
    import json

    from safetensors.torch import save_file

    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(path / file))
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}))
    for file, content in (extra or {}).items():
        save_file(content, str(path / file))
    return path
