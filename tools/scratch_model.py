"""A model folder with another folder's architecture and freshly initialised random weights.

    python -m tools.scratch_model runs/scratch/model --like models/demo --seed 0

Copies config.json, generation_config.json and the tokenizer files of --like unchanged, and writes
model.safetensors: transformers' own initialisation for that config under torch.manual_seed(seed),
float32, weights tied exactly as the config says. The same seed gives byte-identical safetensors. For
"RandOpt from scratch" (docs/scratch.md): does a random model have a thicket, or only a needle?
"""
from __future__ import annotations

import os
import shutil
import sys

from randopt_hpc.cli import ArgParser, integer, new_folder

KEEP = ("config.json", "generation_config.json", "special_tokens_map.json", "added_tokens.json",
        "chat_template.jinja", "chat_template.json", "merges.txt")


def copied_files(like: str) -> list[str]:
    """The files of `like` to copy: config, generation config and tokenizer files."""
    return sorted(f for f in os.listdir(like) if f in KEEP or f.startswith(("tokenizer", "vocab.")))


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m tools.scratch_model", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=new_folder, help="the folder to write (created; its model files are overwritten)")
    ap.add_argument("--like", default="models/demo", help="the model folder whose architecture to copy")
    ap.add_argument("--seed", type=integer(0, 2**63 - 1), default=0, help="torch.manual_seed before initialisation")
    a = ap.parse_args(argv)
    need = [f for f in ("config.json", "tokenizer_config.json") if not os.path.isfile(os.path.join(a.like, f))]
    if not os.path.isdir(a.like) or need:
        print(f"error: --like {a.like}: not a model folder (no {', '.join(need) or 'such folder'})", file=sys.stderr)
        return 2
    if os.path.realpath(a.out) == os.path.realpath(a.like):
        print(f"error: OUT is the --like folder {a.like}: it would overwrite its weights", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(a.like)
    except Exception as e:   # noqa: BLE001 - any unreadable config is the same one-line refusal
        print(f"error: --like {a.like}: config.json does not load: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    torch.manual_seed(a.seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    for name in copied_files(a.like):   # after saving: the folder keeps --like's own config files
        shutil.copyfile(os.path.join(a.like, name), os.path.join(a.out, name))
    n = sum(p.numel() for p in model.parameters())
    print(f"{type(model).__name__}: {n:,} parameters, random init (seed {a.seed}), float32, tied "
          f"{bool(getattr(cfg, 'tie_word_embeddings', False))} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
