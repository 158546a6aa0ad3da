"""Export a finished run's best member and answer the run's test split with it through a backend, against the
run's stored answers: `python -m tools.check_export RUN_DIR [--backend hf|vllm] [--rank R]`.

Prints how many of the member's stored test keys the exported folder reproduces (docs/export.md). The folder is
written to a temporary directory and removed at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--backend", choices=["hf", "vllm"], default="vllm")
    ap.add_argument("--rank", type=int, default=1, help="the member at this position of the ranking (1 = best)")
    a = ap.parse_args()

    import h5py

    from randopt_hpc.config import load_config
    from randopt_hpc.data import load_examples, make_task
    from randopt_hpc.environment import Environment, setup_process
    from randopt_hpc.evaluate import Evaluator

    cfg = load_config(os.path.join(a.run_dir, "run.yaml"))
    with h5py.File(os.path.join(a.run_dir, "results.h5"), "r") as f:
        index = int(f["selection/ranking"][a.rank - 1])
        members = [int(x) for x in f["ensemble/selected/members"][()]]
        if index not in members:
            sys.exit(f"check_export: candidate {index} (rank {a.rank}) has no stored test answers")
        keys = [x.decode() for x in f["ensemble/selected/test_key"][members.index(index)]]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "member")
        p = subprocess.run([sys.executable, "-m", "randopt_hpc.export", a.run_dir, "--rank", str(a.rank), "--out",
                            out], capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stderr.strip())
        print(p.stdout.strip())
        # The exported folder on its own: its config, the run's generation settings, this backend.
        setup_process(dataclasses.replace(cfg, backend=a.backend), Environment.from_os())
        if a.backend == "vllm":
            from randopt_hpc.backends.vllm import VLLMBackend

            backend = VLLMBackend(out, cfg.model.dtype, max_new_tokens=cfg.generation.max_new_tokens,
                                  batch_size=cfg.generation.batch_size, max_model_len=cfg.vllm.max_model_len,
                                  kv_cache_gib=cfg.vllm.kv_cache_gib or 0.25)   # one model: a small cache will do
        else:
            from randopt_hpc.backends.hf import HFBackend

            backend = HFBackend(out, cfg.model.dtype, max_new_tokens=cfg.generation.max_new_tokens,
                                batch_size=cfg.generation.batch_size)
        backend.set_chat(cfg.model.chat, out)
        got = Evaluator(backend, make_task(cfg)).answers(load_examples(cfg)[1]).keys
    same = sum((k or "") == want for k, want in zip(got, keys))
    print(f"{a.backend} backend on the exported member {index}: {same}/{len(keys)} test keys equal the run's stored "
          "keys")


if __name__ == "__main__":
    main()
