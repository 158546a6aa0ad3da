"""Build tiny causal LMs with a character tokenizer, in Hugging Face format.

`build` makes the tiny Llama used by the tests and, until the shipped demo model exists, by `make demo`.
With --train-steps > 0 it is briefly taught the Countdown answer format on synthetic problems, so that
perturbations get different scores (a random model scores 0 everywhere, which tests nothing about ranking).
`build_arch` (--arch) makes an untrained model of each architecture the project supports, with that
architecture's particular parts (GQA, biases, q/k norms, sliding windows, soft-capping, tying), so the
backends are tested on the weight layouts and kernels they will meet.
Deterministic for a given --seed on one machine and thread count.
"""
from __future__ import annotations

import json
import os
import string
import time

from randopt_hpc.cli import ArgParser, integer, new_folder

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]   # one token each, after SPECIALS
VOCAB_SIZE = len(SPECIALS) + len(CHARS)
MAX_TRAIN_STEPS = 10**5   # its synthetic problems (steps x 16) are made up front


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
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


# The architectures the project must run, each as small as it can be while keeping what sets it apart.
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "olmo2", "olmo3", "gemma", "gemma2", "gemma3"]

# Every tiny arch has head_dim 32 (vLLM's CPU attention takes nothing smaller) and 2 layers; the
# sliding-window ones get one sliding and one full layer, so both attention paths run.
_SLIDING = ["sliding_attention", "full_attention"]


def _dims(hidden: int, heads: int, kv_heads: int, head_dim: bool = True) -> dict:
    d = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_attention_heads": heads,
         "num_key_value_heads": kv_heads}
    if head_dim:   # Qwen2 and OLMo configs take no head_dim: it is hidden / heads there
        d["head_dim"] = 32
    else:
        assert hidden // heads == 32
    return d


def _arch_kwargs(arch: str, sliding_window: int) -> dict:
    """Config arguments beyond the shared ones: what makes `arch` itself."""
    if arch == "llama":   # Llama 3: GQA, llama3 rope scaling, untied
        return {**_dims(128, 4, 2), "tie_word_embeddings": False,
                "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 512}}
    if arch == "mistral":   # GQA, untied, no sliding window (as from v0.2 on)
        return {**_dims(64, 2, 1), "tie_word_embeddings": False, "sliding_window": None}
    if arch == "qwen2":   # biases on q, k and v; tied as the small Qwen2.5 models are
        return {**_dims(128, 4, 2, head_dim=False), "tie_word_embeddings": True}
    if arch == "qwen3":   # q_norm/k_norm per head; heads x head_dim (128) wider than hidden (64); tied
        return {**_dims(64, 4, 2), "tie_word_embeddings": True}
    if arch == "olmo2":   # norms after attention and MLP, q_norm/k_norm over the whole projection
        return {**_dims(64, 2, 2, head_dim=False), "tie_word_embeddings": False}
    if arch == "olmo3":   # OLMo 2 plus sliding-window layers
        return {**_dims(64, 2, 2, head_dim=False), "tie_word_embeddings": False,
                "sliding_window": sliding_window, "layer_types": _SLIDING}
    if arch == "gemma":   # MQA, embeddings scaled by sqrt(hidden), (1 + w) norms, GeGLU, tied
        return {**_dims(64, 2, 1), "tie_word_embeddings": True}
    if arch == "gemma2":   # + pre/post norms, attention and final logit soft-capping, sliding layers
        return {**_dims(64, 2, 1), "tie_word_embeddings": True, "query_pre_attn_scalar": 32,
                "sliding_window": sliding_window, "layer_types": _SLIDING}
    if arch == "gemma3":   # text-only Gemma3ForCausalLM: + q_norm/k_norm, a local and a global rope base
        return {**_dims(64, 4, 1), "tie_word_embeddings": True, "query_pre_attn_scalar": 32,
                "sliding_window": sliding_window, "layer_types": _SLIDING}
    raise ValueError(f"unknown arch {arch!r}; one of {', '.join(ARCHS)}")


_CONFIGS = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
            "olmo2": "Olmo2Config", "olmo3": "Olmo3Config", "gemma": "GemmaConfig", "gemma2": "Gemma2Config",
            "gemma3": "Gemma3TextConfig"}


def build_arch(out: str, arch: str, *, seed: int = 0, dtype: str = "float32", eos_ids: list[int] | None = None,
               sliding_window: int = 16, init_std: float = 0.1) -> dict:
    """An untrained tiny `arch` model in `out`. `eos_ids` become generation_config.json's eos_token_id (a
    list, as Qwen2.5-Instruct and Llama-3.1 ship it); the tokenizer's EOS stays one id. The window of
    sliding layers is shorter than any task prompt, so generation always runs past it. `init_std` is 5x
    transformers' default: the logits of a random model then spread enough that greedy choices are not
    near-ties that two correct kernels could break differently."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    kwargs = _arch_kwargs(arch, sliding_window)
    if not hasattr(transformers, _CONFIGS[arch]):
        raise RuntimeError(f"transformers {transformers.__version__} has no {_CONFIGS[arch]} (arch {arch})")
    tok = build_tokenizer()
    if eos_ids is not None and not all(0 <= int(i) < len(tok) for i in eos_ids):
        raise ValueError(f"eos_ids {eos_ids} outside the vocabulary of {len(tok)}")
    torch.manual_seed(seed)
    cfg = getattr(transformers, _CONFIGS[arch])(
        vocab_size=len(tok), num_hidden_layers=2, max_position_embeddings=4096, initializer_range=init_std,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kwargs)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        # Norms start at one (Gemma's at zero) and biases at zero; made distinct, a backend that drops,
        # swaps or misplaces one answers differently even unperturbed.
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        if cfg.model_type.startswith("gemma"):
            # Gemma scales input embeddings by sqrt(hidden) (8 here): at full size they outweigh both
            # layers and a random tied Gemma only repeats the prompt's last character, whatever the
            # rest of its weights. A quarter leaves the layers in charge of the answer.
            model.get_input_embeddings().weight.mul_(0.25)
    model.to(getattr(torch, dtype))
    if eos_ids is not None:
        model.generation_config.eos_token_id = [int(i) for i in eos_ids]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    info = {"arch": arch, "model_type": cfg.model_type, "class": type(model).__name__, "seed": seed,
            "dtype": dtype, "params": sum(p.numel() for p in model.parameters()),
            "tied": bool(cfg.tie_word_embeddings), "eos_ids": model.generation_config.eos_token_id,
            "layer_types": getattr(cfg, "layer_types", None)}
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
    examples = countdown.examples_from_records(records, "es")   # the prompt ends in <think>: teach what follows
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
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=new_folder)
    ap.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    ap.add_argument("--train-steps", type=integer(0, MAX_TRAIN_STEPS), default=None,
                    help="tiny Llama only (default 150)")
    ap.add_argument("--arch", choices=ARCHS, help="an untrained model of this architecture instead")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="with --arch")
    ap.add_argument("--eos-ids", type=integer(0, VOCAB_SIZE - 1), nargs="+",
                    help="with --arch: generation_config.json's eos_token_id")
    args = ap.parse_args()
    if args.arch and args.train_steps:
        ap.error("--train-steps applies to the tiny Llama only, not to --arch")
    if not args.arch and (args.eos_ids or args.dtype != "float32"):
        ap.error("--dtype and --eos-ids apply with --arch only")
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    if args.arch:
        try:
            info = build_arch(args.out, args.arch, seed=args.seed, dtype=args.dtype, eos_ids=args.eos_ids)
        except ValueError as e:   # eos ids outside the vocabulary
            ap.error(str(e))
        print(f"tiny {info['class']}: {info['params']} parameters, {info['dtype']}, "
              f"{time.time() - t0:.1f} s -> {args.out}")
        return
    steps = 150 if args.train_steps is None else args.train_steps
    info = build(args.out, seed=args.seed, train_steps=steps)
    print(f"tiny model: {info['params']} parameters, {info['train_steps']} format-teaching steps, "
          f"final loss {info['final_loss']}, {time.time() - t0:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
