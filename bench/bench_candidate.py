"""Per-candidate time split (perturb, generate, score, restore) and candidates/s for a config, plus the
noise generator's throughput next to torch.randn and a plain copy.

    python bench/bench_candidate.py configs/demo.yaml [key=value ...] [--candidates 8]

One process, the config's runtime.threads; the numbers are for this machine only.
"""
from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from randopt_hpc.cli import ArgParser, integer  # noqa: E402


def bench_noise(n: int = 10**7) -> list[tuple[str, float]]:
    import torch

    from randopt_hpc import noise

    rows = []
    for impl in ("torch", "numba"):
        noise.uint32_stream(1, "warmup", 0, 4096, impl=impl)
        t0 = time.perf_counter()
        noise.uint32_stream(123, "bench.weight", 0, n, impl=impl)
        rows.append((f"Philox u32 stream ({impl})", n / (time.perf_counter() - t0)))
    t0 = time.perf_counter()
    noise.noise(123, "bench.weight", (n,), impl="auto")
    rows.append(("normals, noise() auto", n / (time.perf_counter() - t0)))
    base = torch.zeros(n)
    p = torch.empty(n)
    t0 = time.perf_counter()
    noise.perturb_(p, base, 123, "bench.weight", 1e-3)
    rows.append(("perturb_ (base + sigma*eps, f32)", n / (time.perf_counter() - t0)))
    t0 = time.perf_counter()
    torch.randn(n)
    rows.append(("torch.randn", n / (time.perf_counter() - t0)))
    t0 = time.perf_counter()
    p.copy_(base)
    rows.append(("plain copy (restore)", n / (time.perf_counter() - t0)))
    return rows


def main() -> None:
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--candidates", type=integer(1, 10**6), default=8)
    args = ap.parse_args()

    from randopt_hpc.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        ap.error(str(e))

    from randopt_hpc import population as pop
    from randopt_hpc.backends import make_backend
    from randopt_hpc.data import load_examples, make_task
    from randopt_hpc.environment import Environment, setup_process
    from randopt_hpc.evaluate import Evaluator
    from randopt_hpc.progress import Timer

    # As the main job: one rank's share of the cores for torch and numba, set before either starts.
    setup_process(cfg, Environment.from_os())
    import torch

    train, _ = load_examples(cfg)
    t0 = time.perf_counter()
    backend = make_backend(cfg)
    load_s = time.perf_counter() - t0
    cands = pop.population(cfg.population.seed, cfg.population.size, cfg.population.sigmas,
                           cfg.population.sigma_assignment)[:args.candidates]
    # Warm-up: the first perturb loads numba's cached kernels and the first generate allocates;
    # both are once per process, not per candidate, so they are reported apart.
    t = time.perf_counter()
    backend.perturb(cands[0].seed, cands[0].sigma)
    backend.restore()
    first_perturb_s = time.perf_counter() - t
    backend.generate(train[:1])
    # The run's own candidate evaluation, timed by the run's own timer.
    timer = Timer()
    ev = Evaluator(backend, make_task(cfg), timer)
    start = time.perf_counter()
    for c in cands:
        ev.candidate(c, train, rank=0)
    total = time.perf_counter() - start
    split = {k: v for k, v in timer.totals().items() if k in ("perturb", "generate", "score", "restore")}
    n = len(cands)
    print(f"# bench_candidate: {args.config} {' '.join(args.overrides)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {cfg.runtime.threads}, device {cfg.runtime.device}")
    print(f"model: {backend.n_perturbed_elements():,} perturbed elements in {len(backend.names)} tensors, "
          f"dtype {cfg.model.dtype}; load {load_s:.2f} s, "
          f"first perturb (once per process: numba kernels) {first_perturb_s:.2f} s")
    print(f"per candidate: {len(train)} train prompts, max_new_tokens {cfg.generation.max_new_tokens}, "
          f"batch {cfg.generation.batch_size}, {n} candidates")
    print(f"{'phase':<10} {'ms/candidate':>13} {'share':>7}")
    for k, v in split.items():
        print(f"{k:<10} {1000 * v / n:>13.1f} {100 * v / total:>6.1f}%")
    print(f"{'total':<10} {1000 * total / n:>13.1f}")
    print(f"candidates/s: {n / total:.2f}")
    # The floor for any exact restore: one copy of every perturbed weight, in the model's dtype.
    dtype = getattr(torch, cfg.model.dtype)
    src = torch.zeros(backend.n_perturbed_elements(), dtype=dtype)
    dst = torch.empty_like(src)
    t = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    copy_ms = 1000 * (time.perf_counter() - t) / 10
    overhead = 1000 * (split["perturb"] + split["restore"]) / n
    print(f"perturb + restore {overhead:.1f} ms/candidate ({cfg.backend}) vs one plain copy of the weights "
          f"{copy_ms:.2f} ms ({overhead / copy_ms:.0f}x)")
    import numba

    print(f"\nnoise throughput (10^7 elements, one call, {numba.config.NUMBA_NUM_THREADS} numba threads):")
    for name, rate in bench_noise():
        print(f"  {name:<36} {rate / 1e6:>8.1f} M/s")


if __name__ == "__main__":
    main()
