"""Perturb + restore against one plain copy of the perturbed weights, per noise path, in one process.

    python bench/bench_perturb.py [--threads 1] [--reps 30] [--big]

--big adds a random Llama (hidden 768, 12 layers, ~85M parameters) built in memory. Medians of --reps;
the numbers are for this machine only.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from randopt_hpc.cli import ArgParser, cpu_threads, integer  # noqa: E402


def median_ms(fn, reps: int) -> float:
    fn()   # warm-up: numba compilation, first allocations
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def rows_for(params: dict, reps: int) -> list[tuple[str, float]]:
    """params: name -> Parameter, the perturbed tensors (re-pointed into a flat buffer by FlatParams here)."""
    import torch

    from randopt_hpc import noise
    from randopt_hpc.noise_table import FlatParams

    seed, sigma = 2**40 + 7, 0.01
    names = list(params)
    base = {n: p.detach().clone() for n, p in params.items()}

    def per_tensor(version):
        def cycle():
            for n in names:   # today's HFBackend._perturb and _restore
                noise.perturb_(params[n].data, base[n], seed, n, sigma, version=version)
            for n in names:
                params[n].data.copy_(base[n])
        return cycle

    src = torch.cat([b.reshape(-1) for b in base.values()])
    dst = torch.empty_like(src)
    rows = [("plain copy (one flat copy_)", median_ms(lambda: dst.copy_(src), reps)),
            ("boxmuller, per tensor (before)", median_ms(per_tensor("boxmuller"), max(5, reps // 4))),
            ("table16, per tensor", median_ms(per_tensor("table16"), max(5, reps // 4)))]
    with torch.no_grad():
        flat = FlatParams(params)
        for version in noise.NOISE_VERSIONS:
            rows.append((f"{version}, FlatParams", median_ms(lambda v=version: (flat.perturb(seed, sigma, v),
                                                                                 flat.restore()), reps)))
            rows.append(("  of which perturb only", median_ms(lambda v=version: flat.perturb(seed, sigma, v), reps)))
        rows.append(("  restore only (flat copy)", median_ms(flat.restore, reps)))
    return rows


def demo_params():
    from randopt_hpc.backends.hf import HFBackend

    # noise_impl "torch" keeps the backend off its own flat buffer; this bench builds one itself.
    b = HFBackend(os.path.join(ROOT, "models/demo"), max_new_tokens=1, batch_size=1, noise_impl="torch")
    return b._params


def big_params():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                      num_key_value_heads=12, vocab_size=1000)
    return dict(LlamaForCausalLM(cfg).named_parameters())


def main() -> None:
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=cpu_threads, default=1)
    ap.add_argument("--reps", type=integer(1, 10**5), default=30)
    ap.add_argument("--big", action="store_true", help="also a random ~85M-parameter Llama")
    args = ap.parse_args()
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)   # before numba starts its pool
    import numba
    import torch

    torch.set_num_threads(args.threads)
    models = [("demo", demo_params)] + ([("llama-85M", big_params)] if args.big else [])
    print(f"# bench_perturb: {args.threads} thread(s) (torch {torch.get_num_threads()}, "
          f"numba {numba.config.NUMBA_NUM_THREADS}), {os.cpu_count()} cpus, median of {args.reps}")
    for label, build in models:
        params = build()
        n = sum(p.numel() for p in params.values())
        rows = rows_for(params, args.reps)
        copy_ms = rows[0][1]
        print(f"\n{label}: {n:,} elements in {len(params)} tensors, {next(iter(params.values())).dtype}")
        print(f"{'path (perturb + restore)':<34} {'ms':>9} {'x copy':>7}")
        for name, ms in rows:
            print(f"{name:<34} {ms:>9.3f} {ms / copy_ms:>7.1f}")
        del params


if __name__ == "__main__":
    main()
