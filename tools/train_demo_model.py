"""Pretrain the shipped demo model: a small Llama on a procedural mixture of arithmetic skills, on CPU.

    python -m tools.train_demo_model --out models/demo            # the documented recipe (seed 0)

The paper's toy experiment is the guide: a model pretrained on a mixture of related tasks has many
task experts around it, so RandOpt can find some. The mixture (skill weights in MIXTURE) holds
additions, subtractions, products, evaluation of three-number expressions, equation checking and
small Countdown problems, in more than one question and answer format. The demo's Countdown
problems (the first HELDOUT rows of tasks.countdown_qa's seed-0 stream, which every demo config's
train and test splits come from) never appear in it: they are excluded by (sorted numbers, target).

Deterministic for a given --seed and --threads on one machine and torch build: data come from one
seeded random.Random, initialisation and dropout-free training from torch.manual_seed, and the step
count is fixed (no wall-clock budget). Prints the loss curve and per-skill greedy accuracy, and
writes train_log.json beside the weights.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time

from randopt_hpc.cli import ArgParser, cpu_threads, integer, new_folder, number
from randopt_hpc.tasks import countdown_qa
from randopt_hpc.tasks.demo_skills import fresh_problem, sample  # noqa: F401 - fresh_problem: tests

HELDOUT = 2000          # demo configs use task.seed 0 and train_size + test_size <= HELDOUT
MAX_PARAMS = 10**9      # --hidden/--layers/--intermediate: float32 weights and AdamW state stay under ~16 GB
MIXTURE = {"add": 1, "sub": 1, "mul": 1, "eval": 1, "verify": 1, "countdown": 2}


def heldout_keys(n: int = HELDOUT, seed: int = 0) -> set:
    return {countdown_qa.problem_key(r["numbers"], r["target"]) for r in countdown_qa.synthetic_records(n, seed)}


def batches(seed: int, steps: int, batch: int, exclude: set):
    rng = random.Random(f"demo-mixture:{seed}")
    skills = [s for s, w in MIXTURE.items() for _ in range(w)]
    for _ in range(steps):
        yield [sample(rng, rng.choice(skills), exclude) for _ in range(batch)]


def greedy(model, tok, prompts: list[str], max_new_tokens: int = 12, batch: int = 250) -> list[str]:
    import torch

    tok.padding_side = "left"
    out = []
    with torch.inference_mode():
        for s in range(0, len(prompts), batch):
            enc = tok(prompts[s:s + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
            out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def skill_accuracy(model, tok, seed: int, n: int = 300) -> dict:
    """Greedy exact-match accuracy per skill on fresh samples (Countdown: held-out demo problems)."""
    rng = random.Random(f"demo-eval:{seed}")
    acc = {}
    for skill in MIXTURE:
        if skill == "countdown":
            continue
        rows = [sample(rng, skill, set()) for _ in range(n)]
        texts = greedy(model, tok, [p for p, _ in rows])
        acc[skill] = sum(t.split("\n")[0].strip() == a for t, (_, a) in zip(texts, rows)) / n
    exs = countdown_qa.examples_from_records(countdown_qa.synthetic_records(HELDOUT, 0))
    texts = greedy(model, tok, [ex.prompt for ex in exs])
    right = sum(countdown_qa.score(t, ex).correct for t, ex in zip(texts, exs))
    acc["countdown (held-out demo problems)"] = right / len(exs)
    return acc


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train(out: str, seed: int, steps: int, batch: int, lr: float, warmup: int, hidden: int, layers: int,
          heads: int, intermediate: int, log_every: int, evaluate: bool = True) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tools.make_tiny_model import build_tokenizer, encode

    torch.manual_seed(seed)
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters (hidden {hidden}, {layers} layers, {heads} heads, head_dim "
          f"{hidden // heads}); {steps} steps x {batch}; mixture {MIXTURE}")
    exclude = heldout_keys()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    curve, t0, window = [], time.time(), []
    model.train()
    for step, rows in enumerate(batches(seed, steps, batch, exclude), 1):
        x, mask, y = encode(tok, rows, sep=" ")
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        window.append(loss.item())
        if step % log_every == 0 or step == steps:
            curve.append((step, sum(window) / len(window)))
            print(f"step {step:5d}  answer-token loss {curve[-1][1]:.4f}  {time.time() - t0:6.0f} s", flush=True)
            window = []
    wall = time.time() - t0
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    acc = skill_accuracy(model, tok, seed) if evaluate else {}
    info = {"seed": seed, "steps": steps, "batch": batch, "lr": lr, "warmup": warmup, "params": n_params,
            "mixture": MIXTURE, "heldout": HELDOUT, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "wall_seconds": round(wall, 1), "final_loss": curve[-1][1],
            "loss_curve": curve, "skill_accuracy": acc,
            "sha256": sha256(os.path.join(out, "model.safetensors"))}
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def main() -> None:
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=new_folder)
    ap.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    ap.add_argument("--steps", type=integer(1, 10**7), default=1400)
    ap.add_argument("--batch", type=integer(1, 10**4), default=128)
    ap.add_argument("--lr", type=number(0, 10, lo_open=True), default=3e-3)
    ap.add_argument("--warmup", type=integer(1, 10**7), default=100)
    ap.add_argument("--hidden", type=integer(2, 1 << 16), default=128)
    ap.add_argument("--layers", type=integer(1, 1024), default=4)
    ap.add_argument("--heads", type=integer(1, 1024), default=4)
    ap.add_argument("--intermediate", type=integer(1, 1 << 18), default=512)
    ap.add_argument("--threads", type=cpu_threads, default=2, help="torch threads; part of the recipe (sums reorder)")
    ap.add_argument("--log-every", type=integer(1, 10**7), default=50)
    a = ap.parse_args()
    if a.hidden % a.heads or (a.hidden // a.heads) % 2:
        ap.error(f"--hidden {a.hidden} must be --heads {a.heads} times an even head_dim (rotary embeddings)")
    from tools.make_tiny_model import VOCAB_SIZE

    params = a.layers * (4 * a.hidden ** 2 + 3 * a.hidden * a.intermediate) + 2 * VOCAB_SIZE * a.hidden
    if params > MAX_PARAMS:
        ap.error(f"--hidden {a.hidden}, --layers {a.layers}, --intermediate {a.intermediate}: about {params:,} "
                 f"parameters, more than {MAX_PARAMS:,} (a CPU-trained demo model)")
    import torch

    torch.set_num_threads(a.threads)
    info = train(a.out, a.seed, a.steps, a.batch, a.lr, a.warmup, a.hidden, a.layers, a.heads, a.intermediate,
                 a.log_every)
    print(f"wall-clock {info['wall_seconds']} s, final loss {info['final_loss']:.4f}")
    for skill, v in info["skill_accuracy"].items():
        print(f"  {skill:<36} {100 * v:5.1f}%")
    print(f"model.safetensors sha256 {info['sha256']} -> {a.out}")


if __name__ == "__main__":
    main()
