"""The summary a run logs and `python -m tools.analyze summary` prints, from one source: the results tree.

`summarize` reads results.h5 (an open h5py File) or the in-memory tree run() writes to it, through the
same dataset names (docs/results-schema.md), so the log and the offline tool cannot disagree. It gives
every test accuracy with a 95% paired bootstrap interval over test items: the base model greedy and
sampled (pass@1), TT-MV and Best-of-K from the base model's samples, each ensemble's vote and coverage,
and the differences that decide the question (selected − control, selected − base, ...); then the token
accounting and the generation FLOPs estimate.
"""
from __future__ import annotations

import numpy as np

from randopt_hpc import stats

GROUPS = {"selected": "top-{k}", "control": "control-{k}", "control_sigma": "σ-matched control-{k}"}
DRAWS = 2000    # bootstrap resamples: the 2.5% quantile then rests on 50 of them


def _get(src, name: str):
    """A dataset of an h5py File or of the nested tree, as numpy (strings as str)."""
    if isinstance(src, dict):
        node = src
        for part in name.split("/"):
            node = node[part]
        return node
    ds = src[name]
    return ds.asstr()[()] if ds.dtype.kind == "O" else ds[()]


def _has(src, name: str) -> bool:
    if not isinstance(src, dict):
        return name in src
    node = src
    for part in name.split("/"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _row(model, k, values, idx, train=None) -> dict:
    values = np.asarray(values, dtype=np.float64)
    lo, hi = stats.interval(values, idx)
    return {"model": model, "k": k, "train_acc": train, "test_acc": float(values.mean()), "low": lo, "high": hi,
            "values": values}


def summarize(src, attrs) -> dict:
    """Rows with intervals, paired differences and token accounting (plain numbers; `values` are per test item)."""
    base = _get(src, "base/test_correct").astype(bool)
    idx = stats.bootstrap_indices(len(base), DRAWS)
    ks = [int(k) for k in _get(src, "selection/top_k")]
    rows = [_row("base (greedy)", None, base, idx, float(np.mean(_get(src, "base/train_correct"))))]
    samples = None
    if _has(src, "base/test_samples_correct"):
        ok = _get(src, "base/test_samples_correct").astype(bool)
        keys = [[k or None for k in row] for row in _get(src, "base/test_samples_key")]
        samples = (ok, keys, _get(src, "base/test_samples_key_correct").astype(bool))
        rows.append(_row(f"base sampled, pass@1 (S={len(ok)})", 1, stats.pass_at_k_items(ok, 1), idx))
    best = int(_get(src, "selection/ranking")[0])
    sel = "ensemble/selected"
    members = list(_get(src, f"{sel}/members"))
    rows.append(_row(f"best single (#{best})", 1, _get(src, f"{sel}/test_correct")[members.index(best)], idx,
                     float(_get(src, "population/train_accuracy")[best])))
    for i, k in enumerate(ks):
        if samples is not None and 1 < k <= len(samples[0]):   # at k = 1 both are pass@1
            rows.append(_row(f"TT-MV-{k} (base samples voted)", k, stats.tt_mv_items(samples[1], samples[2], k), idx))
            rows.append(_row(f"Best-of-{k} (base samples, oracle)", k, stats.pass_at_k_items(samples[0], k), idx))
        for g, label in GROUPS.items():
            if _has(src, f"ensemble/{g}"):
                e = f"ensemble/{g}"
                rows.append(_row(label.format(k=k) + " vote", k, _get(src, f"{e}/voted_correct")[i], idx,
                                 float(_get(src, f"{e}/train_accuracy")[i])))
                if k > 1:   # one member's coverage is its vote
                    rows.append(_row(label.format(k=k) + " coverage (oracle)", k,
                                     np.any(_get(src, f"{e}/test_correct")[:k], axis=0), idx))
    by = {r["model"]: r for r in rows}
    nsamples = len(samples[0]) if samples is not None else 0
    diffs = []
    for k in ks:
        top = by[f"top-{k} vote"]
        others = (f"control-{k} vote", f"σ-matched control-{k} vote", "base (greedy)",
                  f"TT-MV-{k} (base samples voted)" if k > 1 else f"base sampled, pass@1 (S={nsamples})")
        for other in others:
            if other in by:
                diffs.append({"a": top["model"], "b": other, **stats.paired(top["values"], by[other]["values"], idx)})
    return {"rows": rows, "differences": diffs, "tokens": tokens(src, attrs), "interval": "95% paired bootstrap over "
            f"test items ({DRAWS} resamples, seed 0)"}


def tokens(src, attrs) -> dict:
    """Generations, generated tokens, response length and truncation per group; FLOPs ≈ 2·P·(prompt + generated)."""
    if not _has(src, "data/finish_reasons"):
        return {}
    length = list(_get(src, "data/finish_reasons")).index("length")
    prompt = {s: _get(src, f"data/{s}_prompt_tokens").astype(np.int64) for s in ("train", "test")}
    members: dict[int, tuple] = {}      # a member of several groups answered once
    for g in GROUPS:
        if _has(src, f"ensemble/{g}"):
            e = f"ensemble/{g}"
            for m, t, f in zip(_get(src, f"{e}/members"), _get(src, f"{e}/test_gen_tokens"),
                               _get(src, f"{e}/test_finish")):
                members.setdefault(int(m), (t, f))
    # (split, generated tokens, finish codes) with one row per generation of every example of the split
    parts = {"candidates": [("train", _get(src, "population/train_gen_tokens"), _get(src, "population/train_finish"))],
             "base (greedy)": [(s, _get(src, f"base/{s}_gen_tokens")[None], _get(src, f"base/{s}_finish")[None])
                               for s in ("train", "test")]}
    if members:
        parts["members"] = [("test", np.array([t for t, _ in members.values()]),
                             np.array([f for _, f in members.values()]))]
    if _has(src, "base/test_samples_gen_tokens"):
        parts["base samples"] = [("test", _get(src, "base/test_samples_gen_tokens"),
                                  _get(src, "base/test_samples_finish"))]
    # A halving run's candidates answered part of the split; the rest is marked by NaN rewards, not generated.
    asked = ~np.isnan(np.asarray(_get(src, "population/train_reward"), dtype=np.float64))
    out, prompt_total, gen_total = {}, 0, 0
    for name, pieces in parts.items():
        mask = [asked if name == "candidates" else np.ones(np.shape(t), dtype=bool) for _, t, _ in pieces]
        gen = np.concatenate([np.asarray(t, dtype=np.int64)[m] for (_, t, _), m in zip(pieces, mask)])
        fin = np.concatenate([np.asarray(f)[m] for (_, _, f), m in zip(pieces, mask)])
        if not len(gen) or (gen < 0).any():   # records from before token accounting: no honest total
            continue
        p = sum(int((prompt[s] * m).sum()) for (s, _, _), m in zip(pieces, mask))
        out[name] = {"generations": int(len(gen)), "generated_tokens": int(gen.sum()), "prompt_tokens": p,
                     "mean_length": float(gen.mean()), "truncated": float(np.mean(fin == length))}
        prompt_total, gen_total = prompt_total + p, gen_total + int(gen.sum())
    params = int(attrs.get("model_parameters", 0) or 0)
    return {"groups": out, "parameters": params, "prompt_tokens": prompt_total, "generated_tokens": gen_total,
            "flops": 2.0 * params * (prompt_total + gen_total) if params else None}


def render(s: dict) -> str:
    """The summary as text: accuracies with intervals, differences, tokens."""
    width = max(len(r["model"]) for r in s["rows"])
    lines = [f"{'model':<{width}}  {'train acc':>9}  {'test acc':>8}  95% interval", "-" * (width + 37)]
    for r in s["rows"]:
        tr = f"{r['train_acc']:>9.3f}" if r["train_acc"] is not None else " " * 9
        lines.append(f"{r['model']:<{width}}  {tr}  {r['test_acc']:>8.3f}  [{r['low']:.3f}, {r['high']:.3f}]")
    if s["differences"]:
        lines += ["", "differences in test accuracy (paired over test items):"]
        lines += [f"  {d['a']} − {d['b']}: {d['diff']:+.3f}  [{d['low']:+.3f}, {d['high']:+.3f}]"
                  for d in s["differences"]]
    lines.append(f"intervals: {s['interval']}")
    t = s["tokens"]
    if t.get("groups"):
        lines += ["", "generation (tokens):"] + [
            f"  {name}: {g['generations']:,} generations, {g['generated_tokens']:,} tokens generated (mean "
            f"{g['mean_length']:.1f}), {100 * g['truncated']:.2f}% cut at max_new_tokens"
            for name, g in t["groups"].items()]
        flops = (f"≈ {t['flops']:.3g} FLOPs (2 × {t['parameters']:,} parameters × {t['prompt_tokens']:,} prompt + "
                 f"{t['generated_tokens']:,} generated tokens)") if t["flops"] else "FLOPs unknown (no parameter count)"
        lines.append(f"generation compute: {flops}")
    return "\n".join(lines)
