"""Sampled answers that are reproducible per (item, sample): the draw for sample s of item x depends on
(generation.seed, x's id, s) only, never on the batch it ran in, the rank that ran it, or a restart.

vLLM draws from a per-request seeded generator (SamplingParams.seed). The HF backend samples by the
Gumbel-max trick: argmax(logits/T + G) is a draw from softmax(logits/T) when G is i.i.d. Gumbel(0, 1), and
G here is a counter-based hash of (row seed, step, token id), so greedy decoding of the perturbed logits
is sampling, with no generator state shared between rows. The two backends draw different samples
(different generators); each is reproducible. Pure; numpy is imported only where noise is drawn, as the
model check reads this module too.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from randopt_hpc.population import splitmix64

# Why a generation ended: the tokenizer's EOS, another stop id or the example's stop string, the token cap.
FINISH = ("eos", "stop", "length")


@dataclass(frozen=True)
class Completion:
    """One generation: the answer text (without its stop token; with its stop string, which ends it) and
    what it cost."""
    text: str
    prompt_tokens: int
    gen_tokens: int      # new tokens, the stop token (or the one completing the stop string) included
    finish: str          # one of FINISH


@dataclass(frozen=True)
class Sampling:
    """Sample `index` of every item, at this temperature and nucleus, from the run's generation.seed."""
    temperature: float
    top_p: float
    seed: int
    index: int

    def row_seed(self, example_id: str) -> int:
        """A 63-bit seed for this sample of one item (fits int64 and every generator's manual_seed)."""
        item = int.from_bytes(hashlib.blake2b(example_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                              "little")
        return splitmix64(splitmix64(self.seed) ^ splitmix64(item ^ splitmix64(self.index + 1))) >> 1


def _mix(x):
    """splitmix64 (randopt_hpc.population) on a uint64 array; numpy wraps uint64 products, as it must."""
    import numpy as np

    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def gumbel(row_seeds, step: int, vocab: int):
    """rows × vocab i.i.d. Gumbel(0, 1) noise (numpy) for one decoding step, a pure function of (row seed,
    step, token id)."""
    import numpy as np

    with np.errstate(over="ignore"):
        rows = _mix(np.asarray(row_seeds, dtype=np.uint64) ^ _mix(np.full(1, step + 1, dtype=np.uint64)))
        x = _mix(rows[:, None] ^ (np.arange(1, vocab + 1, dtype=np.uint64)[None, :] * np.uint64(0x9E3779B97F4A7C15)))
    u = ((x >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53     # in (0, 1), never 0 or 1
    return -np.log(-np.log(u))
