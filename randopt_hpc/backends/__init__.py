"""Backends: one module each behind the Backend protocol (randopt_hpc.backends.base), imported lazily."""
from __future__ import annotations

import importlib

# config `backend` -> (module, class); the module is imported only when the backend is made.
BACKENDS = {"hf": ("randopt_hpc.backends.hf", "HFBackend"), "vllm": ("randopt_hpc.backends.vllm", "VLLMBackend")}


def make_backend(cfg, model_path: str | None = None):
    """The configured backend; model_path, when given, is a staged copy of cfg.model.path."""
    module, name = BACKENDS[cfg.backend]
    cls = getattr(importlib.import_module(module), name)
    backend = cls.from_config(cfg, model_path or cfg.model.path)
    backend.set_chat(cfg.model.chat, cfg.model.path)   # the configured name: a staged copy's folder is not it
    return backend
