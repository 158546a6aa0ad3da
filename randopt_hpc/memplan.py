"""Memory per rank, estimated from a model's config.json and safetensors headers (randopt_hpc.check): weights,
the pristine copy, and the KV cache available against what a batch of the longest prompt needs. Plain file
reads; the tokenizers library only to count the longest prompt's tokens."""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from randopt_hpc.modelcheck import has_chat_template
from randopt_hpc.population import select_names

if TYPE_CHECKING:
    from randopt_hpc.check import Model

GIB = 1 << 30
GH200_GIB = 89.4          # a GH200's 96 GB of HBM3 as CUDA reports it (tools/memory_table.py)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CHAT_TOKENS = 64          # assumed: what a chat template adds around a prompt (roles, markers, system line)


def per_rank(params: float, tp: int, pristine: str, dtype_bytes: int = 2, hbm_gbs: float = 4000,
             c2c_gbs: float = 450, selected: float | None = None) -> dict:
    """Bytes on the GPU and in host memory per rank, and seconds per restore, for `params` parameters of
    which `selected` (default: all) are perturbed and so kept in the pristine copy."""
    shard = params * dtype_bytes / tp
    copy = shard if selected is None else selected * dtype_bytes / tp
    if pristine == "device":
        return {"gpu": shard + copy, "host": 0.0, "restore_s": 2 * copy / (hbm_gbs * 1e9)}
    if pristine == "host":
        return {"gpu": shard, "host": copy, "restore_s": copy / (c2c_gbs * 1e9)}
    raise ValueError(f"pristine must be device or host, not {pristine!r}")


def kv_bytes_per_token(config: dict, dtype_bytes: int, tp: int = 1) -> int | None:
    """2 (K and V) × layers × K/V heads on one rank × head_dim × bytes; None when config.json lacks the sizes."""
    c = config["text_config"] if isinstance(config.get("text_config"), dict) else config
    layers, heads = c.get("num_hidden_layers") or c.get("n_layer"), c.get("num_attention_heads") or c.get("n_head")
    hidden = c.get("hidden_size") or c.get("n_embd")
    if not all(isinstance(v, int) and v > 0 for v in (layers, heads)):
        return None
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or (hidden // heads if isinstance(hidden, int) else None)
    # vLLM splits the K/V heads over the TP ranks, and replicates them when there are fewer than tp.
    return 2 * layers * max(1, kv // tp) * head_dim * dtype_bytes if head_dim else None


def prompt_tokens(cfg, examples) -> tuple[int, str]:
    """The longest prompt in tokens (tokenizer.json through the tokenizers library; else UTF-8 bytes, at most one
    token each in a byte-level tokenizer), plus CHAT_TOKENS when the chat template is used; and how it was counted."""
    from randopt_hpc.backends.base import use_chat

    path = cfg.model.path
    chat = use_chat(cfg.model.chat, os.path.basename(os.path.normpath(path)), has_chat_template(path))
    texts = sorted({("\n".join(c for _, c in ex.messages) + ex.response_prefix) if chat else ex.prompt
                    for ex in examples}, key=len, reverse=True)[:16]
    if not texts:
        return 0, "no prompts"
    try:
        tok = _tokenizer(os.path.join(path, "tokenizer.json"), _stamp([os.path.join(path, "tokenizer.json")]))
        n, how = max(len(e.ids) for e in tok.encode_batch(texts)), "tokens"
    except Exception:   # no tokenizer.json, no tokenizers library, or one it cannot read: count bytes
        n, how = max(len(t.encode()) for t in texts), "UTF-8 bytes"
    return n + (CHAT_TOKENS if chat else 0), how + (f", chat template +{CHAT_TOKENS}" if chat else "")


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, stamp):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def _stamp(paths) -> tuple:
    """Sizes and times of files, so that a cache of what was read from them notices a change."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, None))
    return tuple(out)


@dataclass(frozen=True)
class Memory:   # bytes per rank (per GPU with TP); needed is None when config.json lacks the attention sizes
    weights: float
    pristine: float
    pristine_at: str        # device | host
    available: float        # for the KV cache
    needed: float | None    # by `sequences` sequences of `tokens` tokens
    sequences: int
    tokens: int
    basis: str              # how `available` is reached


def memory(cfg, model: Model, prompt: int, *, gpu_gib: float, ranks_per_node: int, node_bytes: int) -> Memory:
    """Per rank: weights P·b/tp, the pristine copy of the selected tensors (on the GPU or in host memory), and the
    KV cache: what is left of the GPU (× vllm.gpu_memory_utilization for vLLM) or of the node's memory shared by
    its ranks, or vllm.kv_cache_gib; needed by generation.batch_size sequences of the longest prompt (`prompt`
    tokens) + generation.max_new_tokens, at most vllm.max_model_len, every layer full attention."""
    b, vllm = DTYPE_BYTES[cfg.model.dtype], cfg.backend == "vllm"
    tp = cfg.vllm.tensor_parallel_size if vllm else 1
    count = lambda names: sum(math.prod(model.tensors[n]) for n in names)   # noqa: E731
    selected = count(select_names(list(model.tensors), cfg.population.include, cfg.population.exclude))
    # The HF backend keeps its pristine copy next to the weights; vLLM where vllm.pristine says.
    at = cfg.vllm.pristine if vllm else "device"
    params = count(model.tensors)
    r = per_rank(params, tp, at, b, selected=selected)
    weights, pristine = params * b / tp, selected * b / tp
    on_gpu = cfg.runtime.device.startswith("cuda")
    held = r["gpu"] if on_gpu else r["gpu"] + r["host"]   # what the KV cache shares its memory with
    util = cfg.vllm.gpu_memory_utilization
    if vllm and cfg.vllm.kv_cache_gib is not None:
        available, basis = cfg.vllm.kv_cache_gib * GIB, "vllm.kv_cache_gib"
    elif on_gpu:
        share = (util if vllm else 1.0) * gpu_gib * GIB
        available = share - held
        basis = (f"{util:g} × {gpu_gib:g} GiB GPU (vllm.gpu_memory_utilization × --gpu-gib)" if vllm else
                 f"{gpu_gib:g} GiB GPU (--gpu-gib)") + " - weights" + (" - pristine copy" if at == "device" else "")
    else:
        engines = ranks_per_node * tp
        available = (util if vllm else 1.0) * node_bytes / engines - held
        basis = (f"{util:g} × " if vllm else "") + f"{node_bytes / GIB:.1f} GiB of this machine / {engines} ranks " \
            "(slurm.tasks_per_node) - weights - pristine copy"
    kv = kv_bytes_per_token(model.config, b, tp)
    tokens = prompt + cfg.generation.max_new_tokens
    if vllm and cfg.vllm.max_model_len:
        tokens = min(tokens, cfg.vllm.max_model_len)
    needed = None if kv is None else kv * tokens * cfg.generation.batch_size
    return Memory(weights, pristine, at, available, needed, cfg.generation.batch_size, tokens, basis)


def memory_problem(cfg, m: Memory, gpu_gib: float) -> str | None:
    if cfg.vllm.kv_cache_gib is not None and cfg.backend == "vllm" and cfg.runtime.device.startswith("cuda"):
        total = m.weights + (m.pristine if m.pristine_at == "device" else 0) + m.available
        if total > gpu_gib * GIB:
            return (f"vllm.kv_cache_gib: {cfg.vllm.kv_cache_gib:g} GiB of KV cache next to {_gib(total - m.available)} "
                    f"of weights and pristine copy is over the GPU's {gpu_gib:g} GiB (--gpu-gib)")
    vllm, cuda = cfg.backend == "vllm", cfg.runtime.device.startswith("cuda")
    if m.available <= 0:
        key, fix = (("vllm.gpu_memory_utilization", "set vllm.pristine=host, raise vllm.tensor_parallel_size or use "
                     "a smaller model") if vllm and cuda else ("model.dtype", "use a smaller dtype or model") if cuda
                    else ("slurm.tasks_per_node", "run fewer ranks per node"))
        return f"{key}: nothing is left for the KV cache ({m.basis} = {_gib(m.available)} per rank); {fix}"
    if m.needed is not None and m.needed > m.available:
        return (f"generation.batch_size: {m.sequences} sequences of {m.tokens} tokens need {_gib(m.needed)} of KV "
                f"cache per rank, {_gib(m.available)} is available ({m.basis}); lower generation.batch_size"
                + (" or raise vllm.tensor_parallel_size" if cfg.backend == "vllm" else ""))
    return None


def length_problem(cfg, model: Model, prompt: int, how: str) -> str | None:
    """vLLM refuses a max_model_len over the model's, and a prompt that does not fit in it."""
    if cfg.backend != "vllm":
        return None
    c = model.config["text_config"] if isinstance(model.config.get("text_config"), dict) else model.config
    scaled = any(isinstance(c.get(k), dict) and "factor" in c[k] for k in ("rope_scaling", "rope_parameters"))
    own = c.get("max_position_embeddings") if not scaled else None   # rope scaling: vLLM's own rules decide
    limit = cfg.vllm.max_model_len or own
    if cfg.vllm.max_model_len and isinstance(own, int) and cfg.vllm.max_model_len > own:
        return f"vllm.max_model_len: {cfg.vllm.max_model_len} is over the model's max_position_embeddings ({own})"
    if isinstance(limit, int) and how.startswith("tokens") and prompt >= limit:
        return f"vllm.max_model_len: the longest prompt is {prompt} {how}, the model takes {limit}; vLLM refuses it"
    return None


def _gib(x: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20)):
        if abs(x) >= size:
            return f"{x / size:.{2 if abs(x) < 10 * size else 1}f} {unit}"
    return f"{x / 1024:.1f} KiB"


def node_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0
