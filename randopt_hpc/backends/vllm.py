"""vLLM backend: one in-process engine per MPI rank; perturbation happens inside its workers.

Same contract as the HF backend (DESIGN invariant 2): the model for (seed, sigma) is
cast(theta0 + float32(sigma) * eps) with eps drawn per checkpoint tensor name, however vLLM fuses and
shards the weights (randopt_hpc.tp, randopt_hpc.backends.vllm_worker). Prompts go in as the same
token ids the HF backend uses, and answers are decoded the same way, so the two backends differ
only in their kernels.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from randopt_hpc.backends.hf import prompt_text
from randopt_hpc.tasks.base import Example


class VLLMBackend:
    def __init__(self, path: str, dtype: str = "float32", *, max_new_tokens: int, batch_size: int,
                 include: Sequence[str] = (), exclude: Sequence[str] = (), device: str = "cpu",
                 noise_impl: str = "auto", tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 enforce_eager: bool = True, max_model_len: int | None = None, block_size: int | None = None):
        # In-process engine: each MPI rank owns its engine, and collective_rpc reaches the worker directly.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from vllm import LLM, SamplingParams

        self.llm = LLM(model=path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       enforce_eager=enforce_eager, gpu_memory_utilization=gpu_memory_utilization,
                       enable_prefix_caching=False,   # a cached prefix would answer with the old weights
                       max_model_len=max_model_len, max_num_seqs=batch_size, seed=0,
                       **({"block_size": block_size} if block_size else {}),
                       worker_extension_cls="randopt_hpc.backends.vllm_worker.PerturbExtension")
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)
        info = self.llm.collective_rpc("randopt_init", args=(path, list(include), list(exclude), noise_impl))[0]
        if not info["selected"]:
            raise ValueError("population.include/exclude select no weight tensor of the model")
        self.names = info["selected"]
        self._elements = info["elements"]
        self._encoded: dict[tuple[str, ...], list] = {}
        self.perturbed = False

    def perturb(self, seed: int, sigma: float) -> None:
        if self.perturbed:
            raise RuntimeError("perturb() twice without restore()")
        self.llm.collective_rpc("randopt_perturb", args=(int(seed), float(sigma)))
        self.perturbed = True

    def restore(self) -> None:
        self.llm.collective_rpc("randopt_restore")
        self.perturbed = False

    def n_perturbed_elements(self) -> int:
        return self._elements

    def token_ids(self, examples: Sequence[Example]) -> list[list[int]]:
        key = tuple(ex.id for ex in examples)
        if key not in self._encoded:
            self._encoded[key] = [self.tokenizer(prompt_text(self.tokenizer, self.chat, ex),
                                                 add_special_tokens=not self.chat)["input_ids"] for ex in examples]
        return self._encoded[key]

    def generate_ids(self, examples: Sequence[Example]) -> list[list[int]]:
        prompts = [{"prompt_token_ids": ids} for ids in self.token_ids(examples)]
        outs = self.llm.generate(prompts, self.sampling, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    def generate(self, examples: Sequence[Example]) -> list[str]:
        return self.tokenizer.batch_decode(self.generate_ids(examples), skip_special_tokens=True)
