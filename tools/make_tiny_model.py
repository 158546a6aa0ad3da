"""Build a tiny Llama-architecture causal LM with a character tokenizer, in Hugging Face format.

Used by the tests and, until the shipped demo model exists, by `make demo`. With --train-steps > 0
it is briefly taught the Countdown answer format on synthetic problems, so that perturbations get
different scores (a random model scores 0 everywhere, which tests nothing about ranking).
Deterministic for a given --seed on one machine and thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import string
import time

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")   # one token per character
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)


def build(out: str, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 2, tie: bool = True,
          train_steps: int = 0, batch: int = 16, lr: float = 3e-3) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=2048, tie_word_embeddings=tie, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    losses = []
    if train_steps > 0:
        losses = _teach_format(model, tok, train_steps, batch, lr, seed)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    info = {"params": sum(p.numel() for p in model.parameters()), "train_steps": train_steps,
            "final_loss": losses[-1] if losses else None, "seed": seed}
    with open(os.path.join(out, "build_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def encode(tok, rows, sep: str = ""):
    """(prompt, answer) rows -> left-padded ids, attention mask, and labels on answer tokens and EOS only."""
    import torch

    ids, labels = [], []
    for prompt, answer in rows:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(sep + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, ids))
    x = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in ids])
    y = torch.tensor([[-100] * (width - len(r)) + r for r in labels])
    return x, (x != tok.pad_token_id).long(), y


def _teach_format(model, tok, steps, batch, lr, seed):
    import torch

    from randopt_hpc.tasks import countdown

    records = countdown.synthetic_records(steps * batch, seed + 1000)
    examples = countdown.examples_from_records(records)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        rows = [(ex.prompt, f"</think>\n<answer> {rec['solution']} </answer>")
                for ex, rec in zip(examples[step * batch:(step + 1) * batch], records[step * batch:(step + 1) * batch])]
        x, mask, y = encode(tok, rows)
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=150)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    info = build(args.out, seed=args.seed, train_steps=args.train_steps)
    print(f"tiny model: {info['params']} parameters, {info['train_steps']} format-teaching steps, "
          f"final loss {info['final_loss']}, {time.time() - t0:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
