"""The vLLM backend's memory per rank and restore cost per candidate, from the formulas (the README's table).

    python -m tools.memory_table [--gpu-gib 89.4] [--hbm-gbs 4000] [--c2c-gbs 450] [--dtype-bytes 2]

Per rank (one GPU) at tensor-parallel size t, for P parameters of b bytes each (bfloat16: 2):
- weights: P b / t on the GPU, as vLLM holds them;
- the pristine copy θ0 of the same shard (vllm.pristine): P b / t more on the GPU (`device`), or in
  host memory (`host`: on GH200 the Grace LPDDR5X, reached over NVLink-C2C);
- restore, per candidate: `device` copies the shard GPU to GPU, reading and writing each byte
  (2 P b / t at HBM bandwidth); `host` copies it once over the link (P b / t at C2C bandwidth);
- the checkpoint is never held whole in host memory: each rank maps the safetensors files and reads
  only its shard's slices (randopt_hpc/backends/vllm_checkpoint.py);
- while perturbing, float32 temporaries of one parameter's shard at a time (its noise and the sum).
What is left of gpu_memory_utilization × GPU memory after weights (and a device copy) is the KV cache.
Bandwidths are nominal peak figures (GH200: HBM3 4 TB/s, NVLink-C2C 450 GB/s each way); measured
copies run below them. Checked on CPU: the worker's pristine copy is exactly one copy of the weights
it holds (tests/integration/test_archs_vllm.py).
"""
from __future__ import annotations

import argparse

from randopt_hpc.cli import ArgParser

# One copy of the formula: randopt_hpc.check applies it to a config's own model (python -m randopt_hpc.check).
from randopt_hpc.memplan import GIB, per_rank

__all__ = ["GIB", "MODELS", "per_rank", "table"]

MODELS = {"7B": 7e9, "32B": 32e9, "70B": 70e9}   # nominal sizes (OLMo-3-7B, Qwen2.5-32B, Llama-3.1-70B)


def table(gpu_gib: float, utilization: float, **kw) -> list[str]:
    rows = ["| model | TP | pristine | GPU GiB / rank | host GiB / rank | restore ms | KV cache GiB left |",
            "|---|---|---|---|---|---|---|"]
    for name, params in MODELS.items():
        for tp in (1, 2, 4):
            for where in ("device", "host"):
                r = per_rank(params, tp, where, **kw)
                left = utilization * gpu_gib - r["gpu"] / GIB
                fits = f"{left:.1f}" if left > 0 else "does not fit"
                rows.append(f"| {name} | {tp} | {where} | {r['gpu'] / GIB:.1f} | {r['host'] / GIB:.1f} | "
                            f"{r['restore_s'] * 1e3:.1f} | {fits} |")
    return rows


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1e9:   # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def main() -> None:
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-gib", type=_positive, default=89.4, help="GPU memory (GH200 96 GB HBM3 = 89.4 GiB)")
    ap.add_argument("--utilization", type=_fraction, default=0.85, help="vllm.gpu_memory_utilization")
    ap.add_argument("--hbm-gbs", type=_positive, default=4000)
    ap.add_argument("--c2c-gbs", type=_positive, default=450)
    ap.add_argument("--dtype-bytes", type=int, default=2, choices=[1, 2, 4])
    a = ap.parse_args()
    print(f"bytes per parameter {a.dtype_bytes}; GPU {a.gpu_gib} GiB at utilization {a.utilization}; "
          f"HBM {a.hbm_gbs:g} GB/s, C2C {a.c2c_gbs:g} GB/s")
    print("\n".join(table(a.gpu_gib, a.utilization, dtype_bytes=a.dtype_bytes, hbm_gbs=a.hbm_gbs,
                          c2c_gbs=a.c2c_gbs)))


if __name__ == "__main__":
    main()
