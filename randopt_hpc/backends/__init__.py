"""Backends: one module each behind the Backend protocol (randopt_hpc.backends.base), imported lazily; how a
run's rank gets its backend (staged, loaded on first use)."""
from __future__ import annotations

import importlib

# config `backend` -> (module, class); the module is imported only when the backend is made.
BACKENDS = {"hf": ("randopt_hpc.backends.hf", "HFBackend"), "vllm": ("randopt_hpc.backends.vllm", "VLLMBackend"),
            "mlp": ("randopt_hpc.backends.mlp", "MLPBackend")}


def make_backend(cfg, model_path: str | None = None):
    """The configured backend; model_path, when given, is a staged copy of cfg.model.path."""
    module, name = BACKENDS[cfg.backend]
    cls = getattr(importlib.import_module(module), name)
    backend = cls.from_config(cfg, model_path or cfg.model.path)
    backend.set_chat(cfg.model.chat, cfg.model.path)   # the configured name: a staged copy's folder is not it
    return backend


class _Lazy:
    """A backend loaded on first use: a rerun with nothing left to answer on this rank (another K, new
    settings) votes and writes without loading a model."""

    def __init__(self, load):
        self._load, self._backend = load, None

    def __getattr__(self, name):
        if self._backend is None:
            self._backend = self._load()
        return getattr(self._backend, name)


def run_backend(cfg, comm, env, log, timer):
    """The backend of a run's rank, loaded (and staged) on first use, its time in `timer`'s load phase."""
    def load():
        with timer("load"):
            return load_backend(cfg, comm, env, log)
    # Staging waits for the node's other ranks (a barrier), so every rank must load, and at once.
    return load() if cfg.runtime.stage_dir else _Lazy(load)


def load_backend(cfg, comm, env, log):
    """The configured backend on the model, staged first (one copy per node) when runtime.stage_dir asks."""
    model_path = cfg.model.path
    if cfg.runtime.stage_dir:
        from randopt_hpc.stage import stage_model, staged_path

        if env.local_rank == 0:   # one copy per node; the node's other ranks wait for it
            stage_model(cfg.model.path, cfg.runtime.stage_dir, log=log.info)
        comm.barrier()
        model_path = staged_path(cfg.model.path, cfg.runtime.stage_dir)
        log.info("model staged at %s", model_path)
    return make_backend(cfg, model_path)
