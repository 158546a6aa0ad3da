"""The hf backend's greedy loop (randopt_hpc.backends.greedy.greedy_ids, runtime.decoder loop/auto) against
model.generate on the demo model: seconds per candidate (the config's train prompts, batch size and
max_new_tokens), the speed ratio, and how many rows differ.

    python bench/bench_greedy.py [--config configs/demo.yaml] [--seeds 10] [--variants]

Wall and CPU (process) seconds, medians over models. Models: the base model perturbed with seeds 1..N at each
of σ = 0.01 and 0.02 (2N models). One thread.
--variants also times greedy_ids with each of its tricks off.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from randopt_hpc.cli import ArgParser, existing_file, integer  # noqa: E402


def main() -> None:
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=existing_file, default="configs/demo.yaml")
    ap.add_argument("--seeds", type=integer(1, 10**4), default=10)
    ap.add_argument("--variants", action="store_true")
    args = ap.parse_args()

    from randopt_hpc.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        ap.error(str(e))

    import torch

    torch.set_num_threads(1)
    from randopt_hpc.backends import make_backend
    from randopt_hpc.backends.base import cut_at_stop
    from randopt_hpc.backends.greedy import greedy_ids
    from randopt_hpc.data import load_examples

    b = make_backend(cfg)
    train, _ = load_examples(cfg)
    encs = b.encoded(train)
    n_new = cfg.generation.max_new_tokens

    def generate():
        ids = []
        with torch.inference_mode():
            for enc in encs:
                out = b.model.generate(**enc, generation_config=b.gen)
                ids += [cut_at_stop(r, b.stop_ids) for r in out[:, enc["input_ids"].shape[1]:].tolist()]
        return ids

    def loop(**kw):
        return lambda: [r for enc in encs
                        for r in greedy_ids(b.model, enc["input_ids"], enc["attention_mask"], n_new, b.stop_ids, **kw)]

    runs = {"model.generate": generate, "greedy_ids": loop()}
    if args.variants:
        runs |= {"greedy_ids no trim": loop(trim=False), "greedy_ids no prefix": loop(share_prefix=False),
                 "greedy_ids no drop": loop(drop_finished=False),
                 "greedy_ids lean only": loop(trim=False, share_prefix=False, drop_finished=False)}
    generate()   # warm-up: first-call allocations
    times = {k: [] for k in runs}
    cpu = {k: [] for k in runs}   # this process's CPU seconds: less swayed by other jobs on shared cores
    diff = {k: 0 for k in runs}
    diff_project = 0
    models = [(s, sg) for s in range(1, args.seeds + 1) for sg in (0.01, 0.02)]
    for seed, sigma in models:
        b.perturb(seed, sigma)
        try:
            ref = None
            for name, fn in runs.items():
                t, c = time.perf_counter(), time.process_time()
                ids = fn()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                ref = ids if ref is None else ref
                diff[name] += sum(a != c for a, c in zip(ref, ids))
            # The project's path (stop strings too, runtime.decoder as configured): the same rows unless a stop
            # string ends one first.
            diff_project += sum(a != c for a, c in zip(ref, b.generate_ids(train)))
        finally:
            b.restore()
    base = statistics.median(times["model.generate"])
    base_cpu = statistics.median(cpu["model.generate"])
    print(f"{len(models)} models (seeds 1..{args.seeds} x sigma 0.01, 0.02), {len(train)} prompts, batch "
          f"{cfg.generation.batch_size}, max_new_tokens {n_new}, 1 thread; medians over models")
    for name, ts in times.items():
        med = statistics.median(ts)
        med_cpu = statistics.median(cpu[name])
        print(f"{name:22s} wall {med:.3f} s/candidate (min {min(ts):.3f}) x{base / med:.2f} | "
              f"cpu {med_cpu:.3f} s x{base_cpu / med_cpu:.2f} | "
              f"rows differing {diff[name]} of {len(models) * len(train)}")
    print(f"rows where b.generate_ids (stop strings on, decoder {b.decoder}) differs from model.generate: "
          f"{diff_project}")


if __name__ == "__main__":
    main()
