"""Hugging Face backend: a local causal LM, batched greedy (or seeded sampled) generation, in-place perturb and
exact restore. Greedy answers come from transformers' generate() or from the exact greedy loop of
randopt_hpc.backends.greedy (runtime.decoder); sampled answers always from generate()."""
from __future__ import annotations

from collections.abc import Sequence

from randopt_hpc import noise
from randopt_hpc.backends.base import BaseBackend, stop_string_end, stop_token_ids
from randopt_hpc.config import DECODERS
from randopt_hpc.population import select_names
from randopt_hpc.sampling import Sampling, gumbel
from randopt_hpc.tasks.base import Example


class HFBackend(BaseBackend):
    def __init__(self, path: str, dtype: str = "float32", *, max_new_tokens: int, batch_size: int,
                 include: Sequence[str] = (), exclude: Sequence[str] = (), device: str = "cpu",
                 stop_strings: bool = True, decoder: str = "generate",
                 noise_impl: str = "auto", noise_version: str = "boxmuller"):
        super().__init__()
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.torch = torch
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.use_stop_strings = stop_strings
        self.noise_impl = noise_impl   # auto: numba on CPU, the fused Triton kernel on CUDA
        if noise_version not in noise.NOISE_VERSIONS:
            raise ValueError(f"unknown noise version {noise_version!r}; expected one of {noise.NOISE_VERSIONS}")
        self.noise_version = noise_version
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")
        # generate() unless asked: code that builds a backend itself keeps transformers' path (tests spy on
        # model.generate); a run's config brings runtime.decoder, auto by default (from_config).
        self.decoder = decoder
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stop_ids = stop_token_ids(path, self.tokenizer)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        # SDPA drops attention-logit soft-capping (Gemma 2) without a word; the eager kernel applies it.
        attn = "eager" if getattr(config, "attn_logit_softcapping", None) else None
        self.model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=getattr(torch, dtype), local_files_only=True,
            attn_implementation=attn).to(self.device)
        self.model.eval()
        # Greedy, stopping at every stop id and nothing else. This also replaces the model's own
        # generation_config.json, whose settings (repetition_penalty, no_repeat_ngram_size, num_beams, ...)
        # generate() would otherwise merge into any field left unset here, and which vLLM does not apply.
        self.gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens,
                                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_ids or None)
        self.model.generation_config = self.gen
        # named_parameters() lists a tied tensor once, under its first (checkpoint) name, so tied
        # weights are perturbed exactly once.
        params = dict(self.model.named_parameters())
        self.names = select_names(list(params), list(include), list(exclude))
        if not self.names:
            raise ValueError("population.include/exclude select no weight tensor of the model")
        self._params = {n: params[n] for n in self.names}
        self._flat = None
        one_dtype = len({p.dtype for p in self._params.values()}) == 1
        if self.device.type == "cpu" and noise_impl == "auto" and one_dtype and noise._numba_kernels():
            from randopt_hpc.noise_table import FlatParams

            # One flat buffer: a perturbation is one compiled call and a restore one copy, not one per tensor.
            self._flat = FlatParams(self._params)
            self._base = self._flat.base
        else:
            self._base = {n: p.detach().clone() for n, p in self._params.items()}   # the pristine copy

    @classmethod
    def from_config(cls, cfg, path: str) -> HFBackend:
        return cls(path, cfg.model.dtype, max_new_tokens=cfg.generation.max_new_tokens,
                   stop_strings=cfg.generation.stop_strings, decoder=cfg.runtime.decoder,
                   batch_size=cfg.generation.batch_size, include=cfg.population.include,
                   exclude=cfg.population.exclude, device=cfg.runtime.device, noise_impl=cfg.runtime.noise_impl,
                   noise_version=cfg.population.noise)

    # ------------------------------------------------------------------ weights
    def _perturb(self, seed: int, sigma: float) -> None:
        with self.torch.no_grad():
            if self.rewrites_all:   # else a test narrowed `names`
                self._flat.perturb(seed, sigma, self.noise_version)
                return
            for n in self.names:
                noise.perturb_(self._params[n].data, self._base[n], seed, n, sigma, impl=self.noise_impl,
                               version=self.noise_version)

    def _shift(self, terms) -> None:
        if self.rewrites_all:
            with self.torch.no_grad():
                self._flat.shift(terms, self.noise_version)
        else:
            super()._shift(terms)

    @property
    def rewrites_all(self) -> bool:
        return self._flat is not None and self._flat.names == self.names

    def _restore(self) -> None:
        # Copy from the pristine base: subtracting the noise again drifts in low precision.
        with self.torch.no_grad():
            if self._flat is not None:
                self._flat.restore()
                return
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

    def prompt_lengths(self, examples: Sequence[Example]) -> list[int]:
        return [int(n) for enc in self.encoded(examples) for n in enc["attention_mask"].sum(dim=1).tolist()]

    def uses_loop(self, sampling: Sampling | None = None) -> bool:
        """Whether generate_ids runs the greedy loop (randopt_hpc.backends.greedy) rather than generate(): for
        greedy answers with decoder `loop`, or `auto` on CPU, where its exactness was checked."""
        if sampling is not None or self.decoder == "generate":
            return False
        return self.decoder == "loop" or self.device.type == "cpu"

    def generate_ids(self, examples: Sequence[Example], sampling: Sampling | None = None) -> list[list[int]]:
        """New token ids, greedy or sampled, up to and including the first stop id or the token that completes
        a stop string of the example, in the order of `examples`."""
        ids: list[list[int]] = []
        strings = self.stop_strings_of(examples)
        loop = self.uses_loop(sampling)
        if loop:
            from randopt_hpc.backends.greedy import greedy_ids
        with self.torch.inference_mode():
            for b, enc in enumerate(self.encoded(examples)):
                rows = examples[b * self.batch_size:(b + 1) * self.batch_size]
                stops = strings[b * self.batch_size:(b + 1) * self.batch_size]
                if loop:
                    new = greedy_ids(self.model, enc["input_ids"], enc["attention_mask"], self.max_new_tokens,
                                     self.stop_ids, stop_strings=stops, decode=self._decode_new)
                else:
                    new = self._generate(enc, rows, stops, sampling)
                # generate() pads finished rows to the batch's length, and either path may run a row past a
                # stop string it did not see: what follows a stop is not an answer.
                ids += [self.cut_row(row, s) for row, s in zip(new, stops)]
        return ids

    def _generate(self, enc: dict, rows: Sequence[Example], stops: list[tuple[str, ...]],
                  sampling: Sampling | None) -> list[list[int]]:
        extra = {}
        if sampling is not None:   # greedy decoding of Gumbel-perturbed logits is sampling
            extra["logits_processor"] = [GumbelSampler(self.torch, [sampling.row_seed(ex.id) for ex in rows],
                                                       enc["input_ids"].shape[1], sampling)]
        if any(stops):
            extra["stopping_criteria"] = [StopStrings(self.torch, self._decode_new, stops, enc["input_ids"].shape[1])]
        out = self.model.generate(**enc, generation_config=self.gen, **extra)
        return out[:, enc["input_ids"].shape[1]:].tolist()


class GumbelSampler:
    """A transformers LogitsProcessor: logits / T, cut to the top-p nucleus, plus this step's Gumbel noise of
    each row (randopt_hpc.sampling.gumbel), so that the greedy argmax draws each row's own sample."""

    def __init__(self, torch, row_seeds: list[int], prompt_len: int, sampling: Sampling):
        self.torch, self.row_seeds, self.prompt_len, self.sampling = torch, row_seeds, prompt_len, sampling

    def __call__(self, input_ids, scores):
        torch = self.torch
        logits = scores.float() / self.sampling.temperature
        if self.sampling.top_p < 1.0:
            probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is short.
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= self.sampling.top_p
            logits = logits.masked_fill(torch.empty_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
        noise = gumbel(self.row_seeds, input_ids.shape[1] - self.prompt_len, logits.shape[-1])
        return logits + torch.from_numpy(noise).to(device=logits.device, dtype=logits.dtype)


class StopStrings:
    """A transformers StoppingCriteria: a row is done once its new text holds one of its stop strings, so that
    the batch ends when every row has stopped. Only the last few tokens are decoded each step (a stop string
    ends in the newest token, and one of n characters spans at most n tokens); the whole new text confirms
    a hit. A row this misses runs on to EOS or the cap and is cut all the same (cut_row): rows of a
    batch do not change one another's tokens, so only the time differs."""

    def __init__(self, torch, decode, strings: Sequence[tuple[str, ...]], prompt_len: int):
        self.torch, self.decode, self.strings, self.prompt_len = torch, decode, list(strings), prompt_len
        self.window = max((len(s) for row in self.strings for s in row), default=0) + 2
        self.done = [False] * len(self.strings)

    def __call__(self, input_ids, scores, **kwargs):
        new = input_ids[:, self.prompt_len:]
        tails = new[:, -self.window:].tolist()
        for i, (tail, strings) in enumerate(zip(tails, self.strings)):
            if strings and not self.done[i] and stop_string_end(self.decode(tail), strings) is not None:
                self.done[i] = stop_string_end(self.decode(new[i].tolist()), strings) is not None
        return self.torch.tensor(self.done, dtype=self.torch.bool, device=input_ids.device)
