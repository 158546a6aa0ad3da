"""The Backend seam: what run() needs of a way to run a model, and the part every backend shares.

A backend holds one base model θ0 and answers with θ0 or with one perturbed copy θ0 + σ·ε(seed) at a
time. run() and the Evaluator only call perturb → generate → restore, so a new way of running a
model (an MLP for the 1-D toy, a remote engine) is a new file here behind the same methods.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from randopt_hpc.sampling import Completion, Sampling
from randopt_hpc.tasks.base import Example


class Backend(Protocol):
    names: list[str]          # the checkpoint tensors a perturbation changes, in checkpoint order

    def perturb(self, seed: int, sigma: float) -> None:
        """Become θ0 + σ·ε(seed), computed from the pristine θ0 (docs/design.md, invariant 2)."""

    def restore(self, lazy: bool = False) -> None:
        """Become θ0 again, bitwise (invariant 3); lazy: by the time the base model is next used."""

    def generate(self, examples: Sequence[Example]) -> list[str]:
        """One greedy completion per example (new text only), in the order of `examples`."""

    def complete(self, examples: Sequence[Example], sampling: Sampling | None = None) -> list[Completion]:
        """Greedy (sampling None) or sampled completions with their token counts and finish reasons."""

    def n_perturbed_elements(self) -> int:
        """How many weight elements a perturbation changes."""


def eos_ids(path: str) -> list[int] | None:
    """eos_token_id of a JSON config file, as a list; None when the file or the key is absent. ValueError
    (without the path) for a file that is not JSON or an eos_token_id that is not token ids."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    eos = cfg.get("eos_token_id") if isinstance(cfg, dict) else None
    if eos is None:
        return None
    ids = [eos] if isinstance(eos, int) else eos
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"eos_token_id must be a token id or a list of them, not {eos!r}"[:300])
    return ids


def stop_token_ids(model_path: str, tokenizer) -> list[int]:
    """Every token id that ends a completion, each once: generation_config.json's eos_token_id (an id or
    a list, as Qwen2.5-Instruct and Llama-3.1 list several), then the tokenizer's EOS. Without a
    generation_config.json, config.json's eos_token_id stands in for it, as it does in transformers and
    in vLLM (which adds these ids to every request's stop ids itself), so both backends stop alike."""
    gen = os.path.join(model_path, "generation_config.json")
    source = gen if os.path.exists(gen) else os.path.join(model_path, "config.json")
    try:
        ids = eos_ids(source) or []
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))


def cut_at_stop(ids: Iterable[int], stop_ids: Iterable[int]) -> list[int]:
    """`ids` up to and including the first stop id; all of them when none is there."""
    stops = set(stop_ids)
    out = []
    for t in ids:
        out.append(t)
        if t in stops:
            break
    return out


def stop_string_end(text: str, strings: Iterable[str]) -> int | None:
    """Where `text` ends once cut after its first stop string (the one that completes earliest, as vLLM
    picks it); None when it holds none."""
    ends = [i + len(s) for s in strings if s and (i := text.find(s)) >= 0]
    return min(ends) if ends else None


def cut_at_stop_string(ids: Sequence[int], strings: Sequence[str], decode) -> list[int] | None:
    """`ids` up to and including the token whose text completes a stop string, or None when decode(ids)
    holds none. The cut is made on decoded text, as vLLM makes it, so that a stop string split over
    tokens, or sharing one with other text, ends a row in both backends at the same token."""
    if not strings or not ids or stop_string_end(decode(ids), strings) is None:
        return None
    lo, hi = 1, len(ids)   # a prefix's text is a prefix of the whole text, so a binary search finds the token
    while lo < hi:
        mid = (lo + hi) // 2
        if stop_string_end(decode(ids[:mid]), strings) is None:
            lo = mid + 1
        else:
            hi = mid
    return list(ids[:lo])


INSTRUCT_MARKS = ("instruct", "chat", "it")


def use_chat(mode: str | bool, model_name: str, has_template: bool) -> bool:
    """Whether prompts go through the chat template. auto is the reference's rule (RandOpt randopt.py):
    the template when the model's name, lower-cased, contains "instruct", "chat" or "it" (a substring:
    "gemma-2-2b-it", but also "…-edit" or "…-lite") and the tokenizer has one; else the plain prompt."""
    if mode == "auto":
        return has_template and any(mark in model_name.lower() for mark in INSTRUCT_MARKS)
    return bool(mode) and has_template


class BaseBackend:
    """The perturb/restore guard and the per-example-list cache of encoded prompts. Subclasses provide
    _perturb, _restore, _encode(examples) and generate_ids(examples), and set `tokenizer`, `names` and
    `stop_ids` (stop_token_ids(path, tokenizer))."""
    tokenizer: Any = None
    names: list[str]
    stop_ids: list[int] | None = None
    chat_mode: str | bool = "auto"   # config model.chat
    model_name: str = ""             # what the auto rule reads: the model folder's name
    use_stop_strings: bool = True    # config generation.stop_strings: stop at each example's stop strings

    # True where _perturb rewrites every perturbed weight from the pristine copy (HFBackend's flat buffer):
    # then a restore between two perturbations is a copy nobody reads.
    rewrites_all = False

    def __init__(self):
        self.perturbed = False
        self.stale = False     # restored lazily: the weights are still the last candidate's
        self._encoded: dict[tuple[str, ...], Any] = {}

    def perturb(self, seed: int, sigma: float) -> None:
        if self.perturbed:
            raise RuntimeError("perturb() twice without restore()")
        self._perturb(seed, sigma)
        self.perturbed, self.stale = True, False

    def restore(self, lazy: bool = False) -> None:
        """Back to θ0 bitwise. lazy (the Evaluator, after each candidate): where the next perturbation rewrites
        every weight anyway, the copy waits until the base model is next asked for completions, so a
        population costs N perturbations and no copies."""
        if lazy and self.rewrites_all:
            self.stale = True
        else:
            self._restore()
            self.stale = False
        self.perturbed = False

    def shift(self, terms) -> None:
        """θ0 <- cast(θ0 + Σ c·ε(seed)) for (seed, c) in `terms`, in order in float32 (an ES update,
        randopt_hpc.es): the same bits on every rank. The weights become the new θ0."""
        if self.perturbed:
            raise RuntimeError("shift() while perturbed: restore() first")
        self._shift(list(terms))
        self.stale = False

    def base_tensors(self) -> dict:
        """θ0, the pristine copy of the perturbed tensors, by name in checkpoint order (views: do not write)."""
        return {n: self._base[n] for n in self.names}

    def load_base(self, tensors: dict) -> None:
        """θ0 <- `tensors` (an ES checkpoint), and the weights with it."""
        import torch

        if self.perturbed:
            raise RuntimeError("load_base() while perturbed: restore() first")
        with torch.no_grad():
            for n in self.names:
                self._base[n].copy_(tensors[n])
        self._restore()
        self.stale = False

    def _shift(self, terms) -> None:
        # The per-tensor path over the pristine copy; a backend with a faster one overrides it.
        import torch

        from randopt_hpc import noise

        with torch.no_grad():
            for n in self.names:
                noise.shift_(self._base[n], n, terms, self.noise_impl, self.noise_version)
                self._params[n].data.copy_(self._base[n])

    def encoded(self, examples: Sequence[Example]) -> Any:
        """The prompts as the model takes them; the same for every candidate, so encoded once per list."""
        key = tuple(ex.id for ex in examples)
        if key not in self._encoded:
            self._encoded[key] = self._encode(examples)
        return self._encoded[key]

    def set_chat(self, mode: str | bool, model_path: str) -> None:
        """model.chat: true (the chat template; ConfigError when the tokenizer has none), false (the plain
        prompt), auto (the reference's rule, see use_chat)."""
        from randopt_hpc.config import ConfigError

        self.chat_mode, self.model_name = mode, os.path.basename(os.path.normpath(model_path))
        if mode is True and not self.has_template:
            raise ConfigError(f"model.chat: true, but the tokenizer of {model_path} has no chat template")

    @property
    def has_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def chat(self) -> bool:
        return use_chat(self.chat_mode, self.model_name, self.has_template)

    def prompt_text(self, ex: Example) -> str:
        """The text the model is fed: the raw prompt, or the chat template's rendering."""
        if not self.chat:
            return ex.prompt
        msgs = [{"role": r, "content": c} for r, c in ex.messages]
        # The response continues the prefix in both modes, so scoring sees the same shape.
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + \
            ex.response_prefix

    def generate(self, examples: Sequence[Example]) -> list[str]:
        """Greedy answers, in the order of `examples`."""
        return [c.text for c in self.complete(examples)]

    def complete(self, examples: Sequence[Example], sampling: Sampling | None = None) -> list[Completion]:
        """One Completion per example: greedy, or sample `sampling.index` of each (randopt_hpc.sampling)."""
        if self.stale:
            self.restore()
        # Only what precedes the stop token is the answer: a stop id need not be a special token
        # (skip_special_tokens would not drop it), and nothing after it may reach a grade.
        stops = self._stop_id_list()
        strings = self.stop_strings_of(examples)
        rows = [self.cut_row(ids, s) for ids, s in zip(self.generate_ids(examples, sampling), strings)]
        ended = [bool(r) and r[-1] in stops for r in rows]
        texts = self.tokenizer.batch_decode([r[:-1] if e else r for r, e in zip(rows, ended)],
                                            skip_special_tokens=True)
        out = []
        for text, p, row, end, s in zip(texts, self.prompt_lengths(examples), rows, ended, strings):
            cut = None if end else stop_string_end(text, s)
            if end:
                finish = "eos" if row[-1] == self.tokenizer.eos_token_id else "stop"
            else:
                finish = "length" if cut is None else "stop"
            # The stop string stays: an extractor may need it (a closing tag), and vLLM keeps it alike.
            out.append(Completion(text=text if cut is None else text[:cut], prompt_tokens=p, gen_tokens=len(row),
                                  finish=finish))
        return out

    def stop_strings_of(self, examples: Sequence[Example]) -> list[tuple[str, ...]]:
        """Each example's stop strings, or none for any when generation.stop_strings is off."""
        return [tuple(getattr(ex, "stop_strings", ()) or ()) if self.use_stop_strings else () for ex in examples]

    def cut_row(self, ids: Sequence[int], strings: Sequence[str] = ()) -> list[int]:
        """New ids up to and including the first stop id or the token that completes a stop string,
        whichever comes first; a backend's generate_ids and complete() both cut with it, so that a row
        generated past its stop (a batch runs until its last row stops) counts only what was needed."""
        stops = self._stop_id_list()
        row = cut_at_stop(ids, stops)
        body = row[:-1] if row and row[-1] in stops else row
        shorter = cut_at_stop_string(body, strings, self._decode_new) if strings else None
        return row if shorter is None else shorter

    def _stop_id_list(self) -> list[int]:
        if self.stop_ids is not None:
            return self.stop_ids
        # A subclass that sets none stops where the tokenizer does.
        return [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id]

    def _decode_new(self, ids: Sequence[int]) -> str:
        """The text of new ids as complete() decodes it, where stop strings are looked for."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ------------------------------------------------------------------ for subclasses
    def _perturb(self, seed: int, sigma: float) -> None:
        raise NotImplementedError

    def _restore(self) -> None:
        raise NotImplementedError

    def _encode(self, examples: Sequence[Example]) -> Any:
        raise NotImplementedError

    def generate_ids(self, examples: Sequence[Example], sampling: Sampling | None = None) -> list[list[int]]:
        raise NotImplementedError

    def prompt_lengths(self, examples: Sequence[Example]) -> list[int]:
        raise NotImplementedError
