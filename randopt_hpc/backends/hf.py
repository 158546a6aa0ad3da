"""Hugging Face backend: a local causal LM, batched greedy generation, in-place perturb and exact restore."""
from __future__ import annotations

import os
from collections.abc import Sequence

from randopt_hpc import noise
from randopt_hpc.tasks.base import Example

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class HFBackend:
    def __init__(self, path: str, dtype: str = "float32", *, max_new_tokens: int, batch_size: int,
                 include: Sequence[str] = (), exclude: Sequence[str] = (), device: str = "cpu",
                 noise_impl: str = "auto"):
        # Never reach a hub: the model is a local folder, on clusters as on laptops.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
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
            path, dtype=getattr(torch, _DTYPES[dtype]), local_files_only=True).to(self.device)
        self.model.eval()
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        # named_parameters() lists a tied tensor once, under its first (checkpoint) name, so tied
        # weights are perturbed exactly once.
        params = dict(self.model.named_parameters())
        self.names = noise.select_names(list(params), list(include), list(exclude))
        if not self.names:
            raise ValueError("population.include/exclude select no weight tensor of the model")
        self._params = {n: params[n] for n in self.names}
        self._base = {n: p.detach().clone() for n, p in self._params.items()}   # the pristine copy
        self._encoded: dict[tuple[str, ...], list] = {}
        self.perturbed = False

    # ------------------------------------------------------------------ weights
    def perturb(self, seed: int, sigma: float) -> None:
        if self.perturbed:
            raise RuntimeError("perturb() twice without restore()")
        with self.torch.no_grad():
            for n in self.names:
                noise.perturb_(self._params[n].data, self._base[n], seed, n, sigma, impl=self.noise_impl)
        self.perturbed = True

    def restore(self) -> None:
        # Copy from the pristine base: subtracting the noise again drifts in low precision.
        with self.torch.no_grad():
            for n in self.names:
                self._params[n].data.copy_(self._base[n])
        self.perturbed = False

    def n_perturbed_elements(self) -> int:
        return sum(p.numel() for p in self._params.values())

    # ------------------------------------------------------------------ generation
    def prompt_text(self, ex: Example) -> str:
        return prompt_text(self.tokenizer, self.chat, ex)

    def _batches(self, examples: Sequence[Example]) -> list:
        # Prompts are the same for every candidate: tokenize once per example list.
        key = tuple(ex.id for ex in examples)
        if key not in self._encoded:
            out = []
            for s in range(0, len(examples), self.batch_size):
                chunk = [self.prompt_text(ex) for ex in examples[s:s + self.batch_size]]
                enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=not self.chat)
                out.append({k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")})
            self._encoded[key] = out
        return self._encoded[key]

    def generate_ids(self, examples: Sequence[Example]) -> list[list[int]]:
        """Greedy new token ids, up to and including EOS, in the order of `examples`."""
        from transformers import GenerationConfig

        eos = self.tokenizer.eos_token_id
        gen = GenerationConfig(do_sample=False, max_new_tokens=self.max_new_tokens,
                               pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos)
        ids: list[list[int]] = []
        with self.torch.inference_mode():
            for enc in self._batches(examples):
                out = self.model.generate(**enc, generation_config=gen)
                for row in out[:, enc["input_ids"].shape[1]:].tolist():
                    # Finished rows are padded to the batch's length; what follows EOS is not an answer.
                    ids.append(row[:row.index(eos) + 1] if eos in row else row)
        return ids

    def generate(self, examples: Sequence[Example]) -> list[str]:
        """Greedy completions (new text only), in the order of `examples`."""
        return self.tokenizer.batch_decode(self.generate_ids(examples), skip_special_tokens=True)


def prompt_text(tokenizer, chat: bool, ex: Example) -> str:
    """The text a backend feeds the model: the raw prompt, or the chat template's rendering."""
    if not chat:
        return ex.prompt
    msgs = [{"role": r, "content": c} for r, c in ex.messages]
    # The response continues the prefix in both modes, so scoring sees the same shape.
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + ex.response_prefix
