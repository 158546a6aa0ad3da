"""Supervised fine-tuning of a causal LM on (prompt, response) pairs, for randopt_hpc.distill.

One process, no torch.distributed: distilling K members is one model's training on a few hundred traces,
small next to the search that found them. Deterministic for a fixed (seed, thread count, device): the
initial LoRA weights come from torch.manual_seed(seed), the shuffling from its own torch.Generator, and
nothing else draws random numbers (no dropout is switched on here), so the same call twice gives bitwise
equal weights. The loss is the causal-LM cross-entropy on the response tokens only (the prompt is masked
with -100), averaged over the batch's response tokens.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

IGNORE = -100          # label of a token the loss does not see (torch's cross_entropy ignore_index)
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class Settings:
    epochs: int = 3
    lr: float = 3e-4
    batch_size: int = 16
    seed: int = 0
    lora: bool = False
    lora_rank: int = 16
    warmup: float = 0.1        # share of the steps over which the rate rises linearly from 0
    schedule: str = "cosine"   # after the warm-up: cosine down to 0, or constant
    clip: float = 1.0          # gradient norm clip
    weight_decay: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def encode_pair(tokenizer, prompt: str, response: str, special: bool, eos_id: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one pair. The prompt is encoded alone, as the backend encodes it at generation
    (special tokens only where no chat template added them), so the model learns to continue exactly the
    ids it will be given; the response follows with EOS, so it learns to stop."""
    p = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos_id]
    return p + r, [IGNORE] * len(p) + r


def collate(torch, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded (input_ids, attention_mask, labels) tensors; padding is masked and ignored by the loss."""
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(pairs):
        ids[row, :len(x)] = torch.tensor(x)
        mask[row, :len(x)] = 1
        labels[row, :len(y)] = torch.tensor(y)
    return ids, mask, labels


def lr_at(step: int, steps: int, s: Settings) -> float:
    """The rate of step `step` (0-based) of `steps`: linear warm-up, then constant or cosine to 0."""
    warm = int(math.ceil(s.warmup * steps))
    if step < warm:
        return s.lr * (step + 1) / warm
    if s.schedule == "constant" or steps <= warm:
        return s.lr
    return s.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / (steps - warm)))


def lora_targets(model) -> list[str]:
    """Leaf names of every linear projection in the transformer blocks (q/k/v/o and the MLP's on Llama and
    Qwen; c_attn/c_proj/c_fc on GPT-2), the output head and embeddings excluded."""
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
        kinds: tuple = (torch.nn.Linear, Conv1D)
    except ImportError:
        kinds = (torch.nn.Linear,)
    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, kinds) and m is not head}
    return sorted(names)


def with_lora(model, rank: int):
    """The model wrapped by peft with rank-`rank` adapters (alpha 2·rank, as the reference's SFT; no dropout,
    so the run stays a function of the seed) on every block projection; only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RuntimeError("--lora needs the peft package (pip install peft)") from None
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=lora_targets(model),
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train(model, pairs: Sequence[tuple[list[int], list[int]]], s: Settings, pad_id: int,
          log: Callable[[str], None] = _say, every_s: float = 10.0):
    """Fine-tune `model` (float32 weights for full fine-tuning) on `pairs` in place; returns (the trained
    model, LoRA merged into its weights, {loss_by_epoch, steps, seconds})."""
    import torch
    import torch.nn.functional as F

    if not pairs:
        raise ValueError("no training pairs")
    if s.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {s.schedule!r}")
    device = next(model.parameters()).device
    torch.manual_seed(s.seed)   # the LoRA initialisation; full fine-tuning starts from the weights given
    if s.lora:
        model = with_lora(model, s.lora_rank)
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach=False: one kernel per tensor, the same arithmetic whatever the parameter grouping.
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, foreach=False)
    shuffle = torch.Generator().manual_seed(s.seed)
    per_epoch = math.ceil(len(pairs) / s.batch_size)
    steps = s.epochs * per_epoch
    losses: list[float] = []
    t0 = last = time.perf_counter()
    model.train()
    step = 0
    for epoch in range(s.epochs):
        order = torch.randperm(len(pairs), generator=shuffle).tolist()
        total, tokens = 0.0, 0
        for b in range(per_epoch):
            batch = [pairs[i] for i in order[b * s.batch_size:(b + 1) * s.batch_size]]
            ids, mask, labels = (t.to(device) for t in collate(torch, batch, pad_id))
            logits = model(input_ids=ids, attention_mask=mask).logits
            target = labels[:, 1:]
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                   ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s.clip, foreach=False)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, s)
            opt.step()
            n = int((target != IGNORE).sum())
            total, tokens, step = total + float(loss.detach()) * n, tokens + n, step + 1
            now = time.perf_counter()
            if step in (1, steps) or now - last >= every_s:
                last, elapsed = now, now - t0
                log(f"distill: train epoch {epoch + 1}/{s.epochs} step {step}/{steps} loss {float(loss.detach()):.4f} "
                    f"elapsed {elapsed:.0f} s ETA {elapsed / step * (steps - step):.0f} s")
        losses.append(total / max(tokens, 1))
    model.eval()
    if s.lora:
        model = model.merge_and_unload()
    return model, {"loss_by_epoch": losses, "steps": steps, "seconds": time.perf_counter() - t0}
