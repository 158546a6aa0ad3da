"""Hugging Face backend: a local causal LM, batched greedy generation, in-place perturb and exact restore."""
from __future__ import annotations

from collections.abc import Sequence

from randopt_hpc import noise
from randopt_hpc.backends.base import BaseBackend
from randopt_hpc.tasks.base import Example


class HFBackend(BaseBackend):
    def __init__(self, path: str, dtype: str = "float32", *, max_new_tokens: int, batch_size: int,
                 include: Sequence[str] = (), exclude: Sequence[str] = (), device: str = "cpu",
                 noise_impl: str = "auto"):
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.torch = torch
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.noise_impl = noise_impl   # auto: numba on CPU, the fused Triton kernel on CUDA
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), local_files_only=True).to(self.device)
        self.model.eval()
        # named_parameters() lists a tied tensor once, under its first (checkpoint) name, so tied
        # weights are perturbed exactly once.
        params = dict(self.model.named_parameters())
        self.names = noise.select_names(list(params), list(include), list(exclude))
        if not self.names:
            raise ValueError("population.include/exclude select no weight tensor of the model")
        self._params = {n: params[n] for n in self.names}
        self._base = {n: p.detach().clone() for n, p in self._params.items()}   # the pristine copy

    @classmethod
    def from_config(cls, cfg, path: str) -> HFBackend:
        return cls(path, cfg.model.dtype, max_new_tokens=cfg.generation.max_new_tokens,
                   batch_size=cfg.generation.batch_size, include=cfg.population.include,
                   exclude=cfg.population.exclude, device=cfg.runtime.device, noise_impl=cfg.runtime.noise_impl)

    # ------------------------------------------------------------------ weights
    def _perturb(self, seed: int, sigma: float) -> None:
        with self.torch.no_grad():
            for n in self.names:
                noise.perturb_(self._params[n].data, self._base[n], seed, n, sigma, impl=self.noise_impl)

    def _restore(self) -> None:
        # Copy from the pristine base: subtracting the noise again drifts in low precision.
        with self.torch.no_grad():
            for n in self.names:
                self._params[n].data.copy_(self._base[n])

    def n_perturbed_elements(self) -> int:
        return sum(p.numel() for p in self._params.values())

    # ------------------------------------------------------------------ generation
    def _encode(self, examples: Sequence[Example]) -> list:
        out = []
        for s in range(0, len(examples), self.batch_size):
            chunk = [self.prompt_text(ex) for ex in examples[s:s + self.batch_size]]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=not self.chat)
            out.append({k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")})
        return out

    def generate_ids(self, examples: Sequence[Example]) -> list[list[int]]:
        """Greedy new token ids, up to and including EOS, in the order of `examples`."""
        from transformers import GenerationConfig

        eos = self.tokenizer.eos_token_id
        gen = GenerationConfig(do_sample=False, max_new_tokens=self.max_new_tokens,
                               pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos)
        ids: list[list[int]] = []
        with self.torch.inference_mode():
            for enc in self.encoded(examples):
                out = self.model.generate(**enc, generation_config=gen)
                for row in out[:, enc["input_ids"].shape[1]:].tolist():
                    # Finished rows are padded to the batch's length; what follows EOS is not an answer.
                    ids.append(row[:row.index(eos) + 1] if eos in row else row)
        return ids
