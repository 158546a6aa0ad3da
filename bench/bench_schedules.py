"""Time to a ranked population: a TRL-style reference loop against this project's full and halving schedules,
in one process, on one model, the same train prompts, batch size and token cap.

    python bench/bench_schedules.py [configs/demo.yaml] [key=value ...] [--candidates 64] [--k 10]

The reference loop is written the way huggingface/trl PR #5718 perturbs a model: per candidate, torch.randn per
parameter (its own torch.Generator seeded by the candidate) added in place, batched greedy HF generate until EOS
or the cap, scored by the same task, then every parameter copied back from a saved clone. The project's
schedules are run() on one rank (serial) with the HF backend loaded once; their population phase is timed by
the run itself (results.h5 timing/population). Prints candidates/s, generated train tokens and the ratios, and
perturb + restore against one plain copy of the perturbed weights. The numbers are for this machine only.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_perturb import median_ms  # noqa: E402  (one way to time a repeated call)

from randopt_hpc.cli import ArgParser, integer  # noqa: E402


def trl_style(backend, task, train, candidates, max_new_tokens: int, batch_size: int) -> tuple[float, int, float]:
    """(seconds, generated tokens, perturb + restore ms per candidate) of the reference loop."""
    import torch

    from randopt_hpc.tasks.base import score_all

    model, tok = backend.model, backend.tokenizer
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    eos = tok.eos_token_id
    prompts = [backend.prompt_text(ex) for ex in train]
    batches = [tok(prompts[s:s + batch_size], return_tensors="pt", padding=True, add_special_tokens=not backend.chat)
               for s in range(0, len(prompts), batch_size)]
    tokens, overhead, t0 = 0, 0.0, time.perf_counter()
    with torch.no_grad():
        for c in candidates:
            t = time.perf_counter()
            gen = torch.Generator().manual_seed(c.seed)
            for p in params:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * c.sigma)
            overhead += time.perf_counter() - t
            texts = []
            for enc in batches:
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=eos)
                for row in out[:, enc["input_ids"].shape[1]:].tolist():
                    n = row.index(eos) + 1 if eos in row else len(row)
                    tokens += n
                    texts.append(tok.decode(row[:n], skip_special_tokens=True))
            score_all(task, texts, train)
            t = time.perf_counter()
            for p, s in zip(params, saved):
                p.copy_(s)
            overhead += time.perf_counter() - t
    return time.perf_counter() - t0, tokens, 1000 * overhead / len(candidates)


def project(cfg_path: str, overrides: list[str], backend, out_dir: str) -> tuple[float, int]:
    """(population seconds, generated train tokens) of run() on one rank with `backend`."""
    import h5py

    from randopt_hpc.comm import SerialComm, StopFlag
    from randopt_hpc.config import load_config
    from randopt_hpc.data import load_examples
    from randopt_hpc.environment import Environment
    from randopt_hpc.run import run

    cfg = load_config(cfg_path, [*overrides, f"output.dir={out_dir}", "output.overwrite=true"])
    log = logging.getLogger("bench_schedules")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    with contextlib.redirect_stdout(io.StringIO()):   # the run's summary: not this bench's output
        run(cfg, SerialComm(), Environment.from_os({}), log, *load_examples(cfg), StopFlag(), backend=backend)
    with h5py.File(os.path.join(out_dir, "results.h5")) as f:
        tokens = f["population/train_gen_tokens"][()]
        return float(f["timing/population"][0]), int(tokens[tokens >= 0].sum())


def perturb_cost(backend, reps: int = 20) -> tuple[float, float, float]:
    """(perturb + restore as the Evaluator does it between candidates, the same with an eager restore, one
    plain copy of the perturbed weights) in ms, medians of `reps`."""
    import torch

    src = torch.zeros(backend.n_perturbed_elements(), dtype=next(iter(backend.model.parameters())).dtype)
    dst = torch.empty_like(src)
    costs = [median_ms(lambda lazy=lazy: (backend.perturb(2**40 + 7, 0.01), backend.restore(lazy=lazy)), reps)
             for lazy in (True, False)]
    return (*costs, median_ms(lambda: dst.copy_(src), reps))


def cold_cost(backend, examples, reps: int = 5) -> tuple[float, float]:
    """(perturb + lazy restore, one plain copy) in ms, each timed once right after a generation, as a candidate
    meets it (the generation has pushed the weights, the copy and the noise table out of the caches); medians."""
    import statistics
    import time

    import torch

    src = torch.zeros(backend.n_perturbed_elements(), dtype=next(iter(backend.model.parameters())).dtype)
    dst = torch.empty_like(src)
    out = []
    for step in (lambda: (backend.perturb(2**40 + 7, 0.01), backend.restore(lazy=True)), lambda: dst.copy_(src)):
        times = []
        for _ in range(reps):
            backend.generate(examples)
            t = time.perf_counter()
            step()
            times.append(1000 * (time.perf_counter() - t))
        out.append(statistics.median(times))
    return out[0], out[1]


def main() -> None:
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/demo.yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--candidates", type=integer(1, 10**4), default=64)
    ap.add_argument("--k", type=integer(1, 10**4), default=10, help="the largest K (halving keeps at least keep × K)")
    a = ap.parse_args()
    if a.k > a.candidates:
        ap.error(f"--k {a.k} is more than --candidates {a.candidates}")

    from randopt_hpc.config import ConfigError, load_config

    # The bench's runs: N candidates, one K, no controls or samples, a few test items (not timed).
    common = [*a.overrides, f"population.size={a.candidates}", f"selection.top_k=[{a.k}]", "selection.control=false",
              "generation.samples=0", "task.test_size=20"]
    try:
        cfg = load_config(a.config, common)
        for schedule in ("full", "halving"):   # project()'s runs, checked before the first is timed
            load_config(a.config, [*common, f"selection.schedule={schedule}", "output.dir=bench-schedules",
                                   "output.overwrite=true"])
    except ConfigError as e:
        ap.error(str(e))

    from randopt_hpc import population as pop
    from randopt_hpc.backends import make_backend
    from randopt_hpc.data import load_examples, make_task
    from randopt_hpc.environment import Environment, setup_process

    setup_process(cfg, Environment.from_os())
    import torch

    train, _ = load_examples(cfg)
    backend = make_backend(cfg)
    backend.perturb(1, 0.01)           # warm-up: numba's kernels (from its disk cache), first allocations
    backend.restore()
    backend.generate(train[:1])
    cands = pop.population(cfg.population.seed, a.candidates, cfg.population.sigmas, cfg.population.sigma_assignment)
    g = cfg.generation
    print(f"# bench_schedules: {a.config} {' '.join(a.overrides)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, threads "
          f"{cfg.runtime.threads}; N={a.candidates} candidates x {len(train)} train prompts, batch {g.batch_size}, "
          f"max_new_tokens {g.max_new_tokens}, K={a.k}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        seconds, tokens, ref_overhead = trl_style(backend, make_task(cfg), train, cands, g.max_new_tokens,
                                                  g.batch_size)
        rows.append(("TRL-style loop", seconds, tokens))
        for schedule in ("full", "halving"):
            s, t = project(a.config, [*common, f"selection.schedule={schedule}"], backend, os.path.join(tmp, schedule))
            rows.append((f"project, {schedule} schedule", s, t))
    ref_rate = a.candidates / rows[0][1]
    print(f"{'':<26} {'seconds':>8} {'cand/s':>7} {'x TRL':>6} {'gen tokens':>11} {'x fewer':>8}")
    for name, s, t in rows:
        rate = a.candidates / s
        print(f"{name:<26} {s:>8.1f} {rate:>7.2f} {rate / ref_rate:>6.2f} {t:>11,} {rows[0][2] / t:>8.2f}")
    mine, eager, copy = perturb_cost(backend)
    cold, cold_copy = cold_cost(backend, train[:g.batch_size])
    print(f"perturb + restore: project {mine:.2f} ms (restore owed until the base is used; {eager:.2f} ms with an "
          f"eager restore), TRL-style {ref_overhead:.2f} ms per candidate; one plain copy of the perturbed weights "
          f"{copy:.2f} ms (project {mine / copy:.1f}x a copy, {eager / copy:.1f}x eager; population.noise "
          f"{cfg.population.noise})")
    print(f"right after a generation (cold caches, as in the candidate loop): project {cold:.2f} ms, one plain copy "
          f"{cold_copy:.2f} ms ({cold / cold_copy:.1f}x)")


if __name__ == "__main__":
    main()
