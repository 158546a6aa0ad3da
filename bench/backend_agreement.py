"""How often the HF and vLLM backends give the same greedy answer, for a config's model and test set.

    python bench/backend_agreement.py configs/demo.yaml model.dtype=bfloat16 [key=value ...] [--seeds 0 1 2]

For the unperturbed model and each seed (at the config's first sigma): the share of test examples whose
generated token ids are identical, the share whose graded answer (the task's voting key) is the same, each
backend's accuracy, and where the differing completions first part. In float32 the two backends agree
exactly (tests/integration/test_archs_vllm.py); in bfloat16 they run different kernels (oneDNN or sgl
packed GEMMs in vLLM, torch's in HF) whose rounding differs, and a near-tie between two tokens can then
go either way. One process, both backends in turn (vLLM's engine in this process).
"""
from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from randopt_hpc.cli import ArgParser, integer  # noqa: E402


def answers(backend, task, examples, seeds, sigma):
    """[(ids, keys, correct)] for the unperturbed model, then for each seed."""
    out = []
    for seed in [None, *seeds]:
        if seed is not None:
            backend.perturb(seed, sigma)
        ids = backend.generate_ids(examples)
        scored = [task.score(t, ex) for t, ex in zip(backend.generate(examples), examples, strict=True)]
        out.append((ids, [s.key for s in scored], [s.correct for s in scored]))
        if seed is not None:
            backend.restore()
    return out


def first_difference(a, b) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="key=value, as for randopt_hpc.run")
    ap.add_argument("--seeds", type=integer(0, 2**63 - 1), nargs="*", default=[0, 1, 2])
    args = ap.parse_args()

    from randopt_hpc.config import ConfigError, from_dict, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        ap.error(str(e))
    from randopt_hpc.data import load_examples, make_task
    from randopt_hpc.environment import Environment, setup_process
    setup_process(from_dict({"backend": "vllm", "runtime": {"threads": cfg.runtime.threads}}), Environment.from_os())
    from randopt_hpc.backends.hf import HFBackend
    from randopt_hpc.backends.vllm import VLLMBackend

    task, (_, test) = make_task(cfg), load_examples(cfg)
    sigma = cfg.population.sigmas[0]
    t0 = time.time()
    hf = answers(HFBackend.from_config(cfg, cfg.model.path), task, test, args.seeds, sigma)
    t1 = time.time()
    vl = answers(VLLMBackend.from_config(cfg, cfg.model.path), task, test, args.seeds, sigma)
    t2 = time.time()
    print(f"model {cfg.model.path}, dtype {cfg.model.dtype}, {len(test)} test examples, "
          f"max_new_tokens {cfg.generation.max_new_tokens}, sigma {sigma:g}; HF {t1 - t0:.0f} s, vLLM {t2 - t1:.0f} s")
    print(f"{'model':<12} {'same ids':>9} {'same answer':>12} {'HF acc':>7} {'vLLM acc':>9} "
          f"{'correct differs':>16} {'median first diff (token)':>26}")
    for name, (h_ids, h_keys, h_ok), (v_ids, v_keys, v_ok) in zip(
            ["unperturbed", *[f"seed {s}" for s in args.seeds]], hf, vl, strict=True):
        n = len(test)
        differ = [first_difference(a, b) for a, b in zip(h_ids, v_ids, strict=True) if a != b]
        print(f"{name:<12} {sum(a == b for a, b in zip(h_ids, v_ids, strict=True)) / n:>9.3f} "
              f"{sum(a == b for a, b in zip(h_keys, v_keys, strict=True)) / n:>12.3f} "
              f"{sum(h_ok) / n:>7.3f} {sum(v_ok) / n:>9.3f} "
              f"{sum(a != b for a, b in zip(h_ok, v_ok, strict=True)):>16d} "
              f"{statistics.median(differ) if differ else '-':>26}")


if __name__ == "__main__":
    main()
