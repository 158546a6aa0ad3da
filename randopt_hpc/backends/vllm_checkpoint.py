"""The checkpoint as the vLLM worker reads it: the files vLLM loads, and only the slices a shard holds.

Which files: with a `model.safetensors.index.json`, those its weight_map lists and no other, as vLLM's
loader does (`filter_duplicate_safetensors_files`); a Mistral folder may also hold a
`consolidated.safetensors` with the same weights under other names, and reading it too would be
reading a second model. Without an index, every `*.safetensors` file.

How: `safe_open` maps each file and `get_slice` reads a row or column range, so a rank of a
tensor-parallel engine touches only its own shard's bytes and the host never holds the whole
checkpoint (a 70B model is 140 GB in bfloat16).
"""
from __future__ import annotations

import glob
import json
import math
import os

INDEX = "model.safetensors.index.json"


def checkpoint_files(path: str) -> list[str]:
    """The safetensors files vLLM loads from model folder `path`."""
    index = os.path.join(path, INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index with a weight_map ({e})") from None
        files = sorted({os.path.join(path, name) for name in weight_map.values()})
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ValueError(f"{index} lists files that are not there: {', '.join(map(os.path.basename, missing))}")
        return files
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ValueError(f"{path}: no *.safetensors file (the vLLM backend reads safetensors checkpoints only)")
    return files


class Checkpoint:
    """Checkpoint tensors by name, read lazily; use as a context manager (it holds open file maps)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        self._handles = {}
        self._where: dict[str, str] = {}
        for f in checkpoint_files(path):
            handle = self._handles[f] = safe_open(f, framework="pt", device="cpu")
            for name in handle.keys():
                # vLLM loads every tensor of a listed file, in file order: a later file's copy wins there too.
                self._where[name] = f

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self._handles.clear()

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def _slice(self, name: str):
        if name not in self._where:
            raise KeyError(f"{name}: not in the checkpoint at {self.path}")
        return self._handles[self._where[name]].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, rows: tuple[int, int], cols: tuple[int, int] | None = None):
        """Rows [r0, r1) (and columns [c0, c1)) of tensor `name`, as a CPU tensor of the file's dtype."""
        s = self._slice(name)
        if cols is None:
            return s[rows[0]:rows[1]]
        return s[rows[0]:rows[1], cols[0]:cols[1]]

    def assemble(self, param: str, shape, tp_rank: int, tp_size: int, model_dtype, dtype):
        """Rank tp_rank's vLLM parameter `param` from the slices its pieces name (zeros where no piece is:
        vocabulary padding). Each block goes through the model's dtype first, as vLLM's loader casts it,
        and then to the parameter's own (vLLM's CPU small-GEMM path keeps biases in float32)."""
        import torch

        from randopt_hpc import tp

        out = torch.zeros(tp.local_shape(param, shape, tp_size), dtype=dtype)
        for p in tp.pieces(param, shape, tp_rank, tp_size):
            tp.region(out, p).copy_(self.read(p.source, p.rows, p.cols).to(model_dtype).to(dtype))
        return out


def weight_bytes(path: str, element_bytes: int) -> int:
    """Bytes the checkpoint's tensors take at `element_bytes` per element (the run's dtype), from the
    file headers alone."""
    with Checkpoint(path) as ckpt:
        return sum(math.prod(ckpt.shape(name)) for name in ckpt.names) * element_bytes
