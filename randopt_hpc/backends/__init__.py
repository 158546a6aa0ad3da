"""Backends: one small class each behind the same methods (generate, perturb, restore). Imported lazily."""
from __future__ import annotations


def make_backend(cfg):
    if cfg.backend == "hf":
        from randopt_hpc.backends.hf import HFBackend

        return HFBackend(cfg.model.path, cfg.model.dtype, max_new_tokens=cfg.generation.max_new_tokens,
                         batch_size=cfg.generation.batch_size, include=cfg.population.include,
                         exclude=cfg.population.exclude, device=cfg.runtime.device,
                         noise_impl=cfg.runtime.noise_impl)
    raise ValueError(f"backend: unknown {cfg.backend!r}; valid: hf")
