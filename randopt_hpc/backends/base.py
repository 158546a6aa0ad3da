"""The Backend seam: what run() needs of a way to run a model, and the part every backend shares.

A backend holds one base model θ0 and answers with θ0 or with one perturbed copy θ0 + σ·ε(seed) at a
time. run() and the Evaluator only call perturb → generate → restore, so a new way of running a
model (an MLP for the 1-D toy, a remote engine) is a new file here behind the same methods.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from randopt_hpc.tasks.base import Example


class Backend(Protocol):
    names: list[str]          # the checkpoint tensors a perturbation changes, in checkpoint order

    def perturb(self, seed: int, sigma: float) -> None:
        """Become θ0 + σ·ε(seed), computed from the pristine θ0 (docs/design.md, invariant 2)."""

    def restore(self) -> None:
        """Become θ0 again, bitwise (invariant 3)."""

    def generate(self, examples: Sequence[Example]) -> list[str]:
        """One completion per example (new text only), in the order of `examples`."""

    def n_perturbed_elements(self) -> int:
        """How many weight elements a perturbation changes."""


class BaseBackend:
    """The perturb/restore guard and the per-example-list cache of encoded prompts. Subclasses provide
    _perturb, _restore, _encode(examples) and generate_ids(examples), and set `tokenizer` and `names`."""
    tokenizer: Any = None
    names: list[str]

    def __init__(self):
        self.perturbed = False
        self._encoded: dict[tuple[str, ...], Any] = {}

    def perturb(self, seed: int, sigma: float) -> None:
        if self.perturbed:
            raise RuntimeError("perturb() twice without restore()")
        self._perturb(seed, sigma)
        self.perturbed = True

    def restore(self) -> None:
        self._restore()
        self.perturbed = False

    def encoded(self, examples: Sequence[Example]) -> Any:
        """The prompts as the model takes them; the same for every candidate, so encoded once per list."""
        key = tuple(ex.id for ex in examples)
        if key not in self._encoded:
            self._encoded[key] = self._encode(examples)
        return self._encoded[key]

    @property
    def chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_text(self, ex: Example) -> str:
        """The text the model is fed: the raw prompt, or the chat template's rendering."""
        if not self.chat:
            return ex.prompt
        msgs = [{"role": r, "content": c} for r, c in ex.messages]
        # The response continues the prefix in both modes, so scoring sees the same shape.
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + \
            ex.response_prefix

    def generate(self, examples: Sequence[Example]) -> list[str]:
        return self.tokenizer.batch_decode(self.generate_ids(examples), skip_special_tokens=True)

    # ------------------------------------------------------------------ for subclasses
    def _perturb(self, seed: int, sigma: float) -> None:
        raise NotImplementedError

    def _restore(self) -> None:
        raise NotImplementedError

    def _encode(self, examples: Sequence[Example]) -> Any:
        raise NotImplementedError

    def generate_ids(self, examples: Sequence[Example]) -> list[list[int]]:
        raise NotImplementedError
