"""Backends: one small class each behind the same methods (generate, perturb, restore). Imported lazily."""
from __future__ import annotations


def make_backend(cfg, model_path: str | None = None):
    """The configured backend; model_path, when given, is a staged copy of cfg.model.path."""
    path = model_path or cfg.model.path
    common = dict(max_new_tokens=cfg.generation.max_new_tokens, batch_size=cfg.generation.batch_size,
                  include=cfg.population.include, exclude=cfg.population.exclude, device=cfg.runtime.device,
                  noise_impl=cfg.runtime.noise_impl)
    if cfg.backend == "hf":
        from randopt_hpc.backends.hf import HFBackend

        return HFBackend(path, cfg.model.dtype, **common)
    if cfg.backend == "vllm":
        from randopt_hpc.backends.vllm import VLLMBackend

        v = cfg.vllm
        return VLLMBackend(path, cfg.model.dtype, **common, tensor_parallel_size=v.tensor_parallel_size,
                           gpu_memory_utilization=v.gpu_memory_utilization, enforce_eager=v.enforce_eager,
                           max_model_len=v.max_model_len)
    raise ValueError(f"backend: unknown {cfg.backend!r}; valid: hf, vllm")
