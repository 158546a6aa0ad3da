"""Greedy decoding that gives the token ids of `model.generate(do_sample=False)` bitwise, faster: the hf
backend's path for greedy answers where runtime.decoder picks it (HFBackend.generate_ids).

greedy_ids() runs the same forward passes as transformers' greedy loop (left-padded batch, position ids from the
attention mask, a DynamicCache, logits of the last position only, argmax in float32) and skips only work whose
result no kept token depends on:

- the generate() machinery around the forward passes (logits processors, stopping criteria, deferred checks);
- trim (Llama only): in the prefill, the last decoder layer's o_proj, post-attention norm and MLP run on the last
  position only; the other positions' outputs feed nothing but logits that are never computed;
- shared prefix (float32 only): every prompt of a batch starts with the same tokens (the task's wording, a chat
  template), whose K/V do not depend on the row (they attend to the prefix alone) and are computed once, at
  batch 1, then placed in each row's columns. In bfloat16 and float16 that K/V came out a rounding off the
  batch's on most tiny architectures tried, and a few answers changed, so there each row computes its own;
- finished rows (a stop id, or one of the row's stop strings completed) leave the batch, their K/V rows dropped,
  down to a floor of `min_rows`.

Exactness rests on row-wise kernels: on the x86 CPUs checked (MKL sgemm, AVX2) a row of a GEMM with M >= 4 rows,
a softmax row of SDPA and a row of RMSNorm come out bitwise the same whatever the other rows are. The floor, the
prefill's minimum of `min_rest` query columns and the shared prefix's minimum length keep every GEMM above that
size. Checked against generate() on the demo model's perturbed candidates (tests/unit/test_greedy_loop.py,
bench/bench_greedy.py: 0 rows differ) and on tiny models of every architecture of tools/make_tiny_model.ARCHS
in float32, bfloat16 and float16 (two of them in the test); on other hardware or kernels (GPUs: cuBLAS picks
kernels by shape) run that check again before relying on it, which is why runtime.decoder `auto` takes the loop
on CPU only. Greedy only: sampling (a logits processor) stays on generate().
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from randopt_hpc.backends.base import stop_string_end

TRIM_MODEL_TYPES = ("llama",)   # decoder layers of the form x + attn(norm(x)), then h + mlp(norm(h))
ROWWISE_MIN = 4                  # the fewest GEMM rows whose results are row-wise (see the module docstring)


def _is_left_padded(attention_mask: torch.Tensor) -> bool:
    return bool((attention_mask[:, 1:] >= attention_mask[:, :-1]).all())


def _trim_hooks(model) -> list:
    """Pre-hooks that cut the last layer's o_proj and post-attention norm to the last position. The layer then
    adds its full residual to a one-position tensor; the broadcast leaves the last position exact and the others
    garbage, which only the (skipped) logits of those positions would read. Other layer forms (Gemma's extra
    norms, OLMo's post-norms) would not broadcast to the same last position, so they run whole."""
    if getattr(model.config, "model_type", None) not in TRIM_MODEL_TYPES:
        return []
    layer = model.model.layers[-1]
    last = lambda mod, args: (args[0][:, -1:],)   # noqa: E731
    return [layer.self_attn.o_proj.register_forward_pre_hook(last),
            layer.post_attention_layernorm.register_forward_pre_hook(last)]


def _shared_prefix(model, input_ids, attention_mask, min_rest: int):
    """(cache, c): a DynamicCache holding the K/V of the first c columns of every row, each a pad or a token of
    the batch's common prompt prefix, computed once at batch 1; (None, 0) where there is none to share."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    B, L = input_ids.shape
    pads = (attention_mask == 0).sum(1)
    starts = pads.tolist()
    first = input_ids[0, starts[0]:].tolist()
    n = min(L - s for s in starts)
    for r, s in enumerate(starts[1:], 1):
        row = input_ids[r, s:s + n].tolist()
        n = next((i for i, (a, b) in enumerate(zip(row, first)) if a != b), n)
    c = min(min(starts) + n, L - min_rest)   # keep enough query columns for row-wise GEMMs
    p = c - min(starts)
    if p < ROWWISE_MIN:   # the prefix's own forward pass is a GEMM of p rows
        return None, 0
    one = DynamicCache(config=model.config)
    if any(type(layer) is not DynamicLayer for layer in one.layers):   # sliding windows, linear attention: no
        return None, 0
    pre = input_ids[:1, starts[0]:starts[0] + p]
    model(input_ids=pre, attention_mask=torch.ones_like(pre),
          position_ids=torch.arange(p, device=pre.device)[None], past_key_values=one, use_cache=True, logits_to_keep=1)
    # Column j of row r holds prefix token j - pads[r]; pad columns get zeros, which the mask hides as it hides
    # the pad token's own K/V in generate() (finite values times a zero weight add exact zeros).
    j = torch.arange(c, device=pads.device)[None, :] - pads[:, None]
    valid = (j >= 0)[:, None, :, None]
    j = j.clamp(min=0)
    cache = DynamicCache(config=model.config)
    for layer, src in zip(cache.layers, one.layers):
        k = (src.keys[0][:, j].permute(1, 0, 2, 3) * valid).contiguous()
        v = (src.values[0][:, j].permute(1, 0, 2, 3) * valid).contiguous()
        layer.update(k, v)
    return cache, c


def _string_stopped(ids: list[int], strings: Sequence[str], window: int, decode: Callable) -> bool:
    """Whether decode(ids) holds one of `strings`. A new hit ends in the newest token, so the last few tokens
    are decoded first and the whole text only confirms; a tail that decodes otherwise than inside the text
    may miss a hit, and the row then runs on: the caller's cut (BaseBackend.cut_row) cuts it all the same."""
    return stop_string_end(decode(ids[-window:]), strings) is not None and \
        stop_string_end(decode(ids), strings) is not None


@torch.inference_mode()
def greedy_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
               stop_ids: Iterable[int], *, stop_strings: Sequence[Sequence[str]] = (), decode: Callable | None = None,
               trim: bool = True, share_prefix: bool = True, drop_finished: bool = True,
               min_rows: int = 8, min_rest: int = 8) -> list[list[int]]:
    """New token ids of each row of a left-padded batch, greedy, up to and including the first stop id (all
    max_new_tokens of them when none comes): what model.generate(do_sample=False, eos_token_id=stop_ids) gives,
    cut after the first stop id. With `stop_strings` (one tuple per row) and `decode` (ids -> text), a row also
    ends at the token after which its decoded text holds one of its strings; stop ids are checked first, as
    BaseBackend.cut_row looks for strings only before a row's stop id."""
    from transformers import DynamicCache

    dev = input_ids.device
    B = input_ids.shape[0]
    stop_t = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=dev)
    strings = [tuple(s) for s in stop_strings] if decode is not None and any(stop_strings) else []
    window = max((len(s) for row in strings for s in row), default=0) + 2   # n characters span <= n tokens
    if not _is_left_padded(attention_mask) or model.dtype != torch.float32:
        share_prefix = False
    # As generate() builds them: pads get position 0, the first real token 0.
    pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    cache, c = _shared_prefix(model, input_ids, attention_mask, min_rest) if share_prefix else (None, 0)
    if cache is None:
        cache = DynamicCache(config=model.config)
    hooks = _trim_hooks(model) if trim else []
    try:
        out = model(input_ids=input_ids[:, c:], attention_mask=attention_mask, position_ids=pos[:, c:],
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    toks: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    rows = torch.arange(B, device=dev)   # the batch row of each row still run
    mask, p = attention_mask, pos[:, -1:]
    for step in range(max_new_tokens):
        # generate() casts the last logits to float32 before its argmax; so does this.
        nxt = out.logits[:, -1].to(torch.float32).argmax(-1)
        live = ~done[rows]
        ended = torch.isin(nxt, stop_t)
        for r, t, e in zip(rows[live].tolist(), nxt[live].tolist(), ended[live].tolist()):
            toks[r].append(t)
            if e or (strings and strings[r] and _string_stopped(toks[r], strings[r], window, decode)):
                done[r] = True
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        keep = ~done[rows]
        n = int(keep.sum())
        if drop_finished and n < len(rows) and len(rows) > min_rows:
            if n < min_rows:   # finished rows ride along: a GEMM of very few rows may round otherwise
                keep[(~keep).nonzero().squeeze(1)[:min_rows - n]] = True
            idx = keep.nonzero().squeeze(1)
            rows, nxt, mask, p = rows[idx], nxt[idx], mask[idx], p[idx]
            cache.batch_select_indices(idx)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        p = p + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=p, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
    return toks
