"""vLLM backend: one in-process engine per MPI rank; perturbation happens inside its workers.

Same contract as the HF backend (docs/design.md, invariant 2): the model for (seed, sigma) is
cast(theta0 + float32(sigma) * eps) with eps drawn per checkpoint tensor name, however vLLM fuses and
shards the weights (randopt_hpc.tp, randopt_hpc.backends.vllm_worker). Prompts go in as the same
token ids the HF backend uses, and answers are decoded the same way, so the two backends differ
only in their kernels. The engine runs in this process only with VLLM_ENABLE_V1_MULTIPROCESSING=0,
which randopt_hpc.environment.setup_process sets for backend vllm.
"""
from __future__ import annotations

from collections.abc import Sequence

from randopt_hpc.backends.base import BaseBackend
from randopt_hpc.tasks.base import Example


class VLLMBackend(BaseBackend):
    def __init__(self, path: str, dtype: str = "float32", *, max_new_tokens: int, batch_size: int,
                 include: Sequence[str] = (), exclude: Sequence[str] = (), device: str = "cpu",
                 noise_impl: str = "auto", tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 enforce_eager: bool = True, max_model_len: int | None = None, engine_args: dict | None = None):
        super().__init__()
        from vllm import LLM, SamplingParams

        self.llm = LLM(model=path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       enforce_eager=enforce_eager, gpu_memory_utilization=gpu_memory_utilization,
                       enable_prefix_caching=False,   # a cached prefix would answer with the old weights
                       max_model_len=max_model_len, max_num_seqs=batch_size, seed=0,
                       **(engine_args or {}),   # further vllm.LLM arguments (tests: block_size, KV cache size)
                       worker_extension_cls="randopt_hpc.backends.vllm_worker.PerturbExtension")
        self.tokenizer = self.llm.get_tokenizer()
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)
        info = self.llm.collective_rpc("randopt_init", args=(path, list(include), list(exclude), noise_impl))[0]
        if not info["selected"]:
            raise ValueError("population.include/exclude select no weight tensor of the model")
        self.names = info["selected"]
        self._elements = info["elements"]

    @classmethod
    def from_config(cls, cfg, path: str) -> VLLMBackend:
        v = cfg.vllm
        return cls(path, cfg.model.dtype, max_new_tokens=cfg.generation.max_new_tokens,
                   batch_size=cfg.generation.batch_size, include=cfg.population.include,
                   exclude=cfg.population.exclude, device=cfg.runtime.device, noise_impl=cfg.runtime.noise_impl,
                   tensor_parallel_size=v.tensor_parallel_size, gpu_memory_utilization=v.gpu_memory_utilization,
                   enforce_eager=v.enforce_eager, max_model_len=v.max_model_len)

    def _perturb(self, seed: int, sigma: float) -> None:
        self.llm.collective_rpc("randopt_perturb", args=(int(seed), float(sigma)))

    def _restore(self) -> None:
        self.llm.collective_rpc("randopt_restore")

    def n_perturbed_elements(self) -> int:
        return self._elements

    def _encode(self, examples: Sequence[Example]) -> list[list[int]]:
        return [self.tokenizer(self.prompt_text(ex), add_special_tokens=not self.chat)["input_ids"]
                for ex in examples]

    def generate_ids(self, examples: Sequence[Example]) -> list[list[int]]:
        prompts = [{"prompt_token_ids": ids} for ids in self.encoded(examples)]
        outs = self.llm.generate(prompts, self.sampling, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]
