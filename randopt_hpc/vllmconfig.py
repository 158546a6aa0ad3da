"""The vLLM engine's settings: the config's `vllm:` section (backend vllm only)."""
from __future__ import annotations

from dataclasses import dataclass

from randopt_hpc.configrules import choice, require, within


@dataclass(frozen=True)
class VLLMConfig:
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9    # vLLM's own default
    enforce_eager: bool = True             # no CUDA graphs: weights change under the engine every candidate
    max_model_len: int | None = None
    kv_cache_gib: float | None = None      # on CPU, null is planned by backends.vllm.plan_memory
    pristine: str = "device"
    MAX_KV_CACHE_GIB = 1 << 20             # not a field: a PiB; anything larger is a unit mistake (bytes for GiB)

    def validate(self) -> None:
        within("vllm.tensor_parallel_size", self.tensor_parallel_size, 1, 64)   # GPUs of one engine: a node's
        require(0 < self.gpu_memory_utilization <= 1, "vllm.gpu_memory_utilization",
                 f"must be in (0, 1], got {self.gpu_memory_utilization}")
        require(self.max_model_len is None or self.max_model_len >= 1, "vllm.max_model_len",
                 f"must be >= 1 or null, got {self.max_model_len}")
        top = self.MAX_KV_CACHE_GIB
        require(self.kv_cache_gib is None or 0 < self.kv_cache_gib <= top, "vllm.kv_cache_gib",
                 f"must be in (0, {top:,}] GiB or null, got {self.kv_cache_gib}")
        choice("vllm.pristine", self.pristine, ("device", "host"))
