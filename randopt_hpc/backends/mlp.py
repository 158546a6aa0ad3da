"""The 1-D toy's model as a backend: a small MLP that predicts the next value of a signal from the last `ctx`
values, rolled out autoregressively for generation.max_new_tokens steps (the paper's §3; sunrainyg/RandOpt
simple_1D_signals_expts/models.py). Prompts are JSON arrays of the context (randopt_hpc.tasks.toy), answers
JSON arrays of the rollout.

Perturbation is the HF backend's per-tensor path: the same Philox noise by checkpoint tensor name
(randopt_hpc.noise), from a pristine copy, and restore copies it back. A checkpoint is a folder with
config.json (model_type randopt_mlp, ctx, width, depth, and how it was made) and model.safetensors, written
by save_mlp (tools/pretrain_toy.py); its layout is randopt_hpc.modelcheck.mlp_shapes, which the preflight
checks too.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

from randopt_hpc import noise
from randopt_hpc.backends.base import BaseBackend
from randopt_hpc.config import ConfigError
from randopt_hpc.modelcheck import MLP_TYPE, mlp_shapes
from randopt_hpc.population import select_names
from randopt_hpc.sampling import Completion, Sampling
from randopt_hpc.tasks.base import Example

WEIGHTS = "model.safetensors"


class MLP(torch.nn.Module):
    """Linear(ctx, width), depth - 2 × (ReLU, Linear(width, width)), ReLU, Linear(width, 1): the reference's
    Net, with its ModuleList, so tensors are named layers.0.weight, layers.2.weight, ..."""

    def __init__(self, ctx: int, width: int = 128, depth: int = 5):
        super().__init__()
        mlp_shapes({"ctx": ctx, "width": width, "depth": depth})   # ValueError for sizes it cannot be
        self.ctx, self.width, self.depth = ctx, width, depth
        layers: list[torch.nn.Module] = [torch.nn.Linear(ctx, width)]
        for _ in range(depth - 2):
            layers += [torch.nn.ReLU(), torch.nn.Linear(width, width)]
        layers += [torch.nn.ReLU(), torch.nn.Linear(width, 1)]
        self.layers = torch.nn.ModuleList(layers)

    def init_weights(self) -> None:
        """The reference's xavier init: uniform Xavier weights, zero biases (from torch's global RNG)."""
        for layer in self.layers:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(layer.weight)
                torch.nn.init.zeros_(layer.bias)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """[batch, ctx] -> the next value of each row, [batch]."""
        h = window
        for layer in self.layers:
            h = layer(h)
        return h.squeeze(-1)

    def rollout(self, context: torch.Tensor, steps: int) -> torch.Tensor:
        """[batch, ctx] -> [batch, steps]: each prediction joins the window and the oldest value leaves it."""
        window, out = context, []
        for _ in range(steps):
            y = self.forward(window)
            out.append(y)
            window = torch.cat([window[:, 1:], y[:, None]], dim=1)
        return torch.stack(out, dim=1) if out else context.new_zeros((context.shape[0], 0))


def save_mlp(folder: str, model: MLP, meta: dict) -> None:
    """config.json ({model_type, ctx, width, depth, meta}) and model.safetensors; the same model and meta give
    the same bytes."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    config = {"model_type": MLP_TYPE, "ctx": model.ctx, "width": model.width, "depth": model.depth, "meta": meta}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()},
              os.path.join(folder, WEIGHTS))


def load_mlp(folder: str) -> MLP:
    """The MLP of a save_mlp folder, float32 on the CPU; one-line ValueError for a folder that is not one."""
    from safetensors.torch import load_file

    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{folder}: not an MLP checkpoint: cannot read its config.json "
                         f"({getattr(e, 'strerror', None) or type(e).__name__})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind != MLP_TYPE:
        raise ValueError(f"{folder}: not an MLP checkpoint: config.json model_type is {kind!r}, not {MLP_TYPE!r}")
    try:
        want = mlp_shapes(config)
    except ValueError as e:
        raise ValueError(f"{folder}: config.json: {e}") from None
    try:
        tensors = load_file(os.path.join(folder, WEIGHTS))
    except Exception as e:   # FileNotFoundError, safetensors' SafetensorError: not one file format's errors
        raise ValueError(f"{folder}: cannot read {WEIGHTS}: {' '.join(str(e).split())[:200]}") from None
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want or any(v.dtype != torch.float32 for v in tensors.values()):
        raise ValueError(f"{folder}: {WEIGHTS} does not hold the float32 MLP config.json describes "
                         f"(ctx {config['ctx']}, width {config['width']}, depth {config['depth']})")
    model = MLP(config["ctx"], config["width"], config["depth"])
    model.load_state_dict(tensors, strict=True)
    return model


class MLPBackend(BaseBackend):
    def __init__(self, path: str, *, max_new_tokens: int, batch_size: int, include: Sequence[str] = (),
                 exclude: Sequence[str] = (), device: str = "cpu", noise_impl: str = "auto",
                 noise_version: str = "boxmuller", dtype: str = "float32"):
        super().__init__()
        if dtype != "float32":
            raise ValueError(f"backend mlp computes in float32, not {dtype}")
        self.path, self.max_new_tokens, self.batch_size = path, max_new_tokens, batch_size
        self.noise_impl, self.noise_version = noise_impl, noise_version
        self.device = torch.device(device)
        self.model = load_mlp(path).to(self.device).eval()
        self.ctx = self.model.ctx
        params = dict(self.model.named_parameters())
        self.names = select_names(list(params), list(include), list(exclude))
        if not self.names:
            raise ValueError("population.include/exclude select no weight tensor of the model")
        self._params = {n: params[n] for n in self.names}
        self._base = {n: p.detach().clone() for n, p in self._params.items()}   # the pristine copy

    @classmethod
    def from_config(cls, cfg, path: str) -> MLPBackend:
        return cls(path, max_new_tokens=cfg.generation.max_new_tokens, batch_size=cfg.generation.batch_size,
                   include=cfg.population.include, exclude=cfg.population.exclude, device=cfg.runtime.device,
                   noise_impl=cfg.runtime.noise_impl, noise_version=cfg.population.noise, dtype=cfg.model.dtype)

    # ------------------------------------------------------------------ weights
    def _perturb(self, seed: int, sigma: float) -> None:
        with torch.no_grad():
            for n in self.names:
                noise.perturb_(self._params[n].data, self._base[n], seed, n, sigma, impl=self.noise_impl,
                               version=self.noise_version)

    def _restore(self) -> None:
        # Copy from the pristine base: subtracting the noise again would drift.
        with torch.no_grad():
            for n in self.names:
                self._params[n].data.copy_(self._base[n])

    def n_perturbed_elements(self) -> int:
        return sum(p.numel() for p in self._params.values())

    # ------------------------------------------------------------------ rollouts
    def _encode(self, examples: Sequence[Example]) -> list[torch.Tensor]:
        """The contexts as float32 [batch, ctx] tensors, generation.batch_size rows each. A mismatch with the
        model or with generation.max_new_tokens is a config mistake, said once, before any rollout."""
        rows = []
        for ex in examples:
            try:
                values = json.loads(ex.prompt)
                row = torch.tensor(values, dtype=torch.float64)
                ok = row.shape == (self.ctx,) and bool(torch.isfinite(row).all())
            except (ValueError, TypeError, RecursionError, RuntimeError):
                ok = False
            if not ok:
                raise ConfigError(f"task.template: example {ex.id}'s prompt is not {self.ctx} numbers, the context "
                                  f"the MLP in {self.path} takes (its ctx)")
            # The task's truth is the future it scores against; a rollout of another length scores as junk.
            if isinstance(ex.truth, list) and len(ex.truth) != self.max_new_tokens:
                raise ConfigError(f"generation.max_new_tokens: {self.max_new_tokens}, but example {ex.id} has "
                                  f"{len(ex.truth)} future values (task.template fut); make them equal")
            rows.append(row)
        return [torch.stack(rows[s:s + self.batch_size]).to(self.device, torch.float32)
                for s in range(0, len(rows), self.batch_size)]

    def complete(self, examples: Sequence[Example], sampling: Sampling | None = None) -> list[Completion]:
        """One rollout per example, as a JSON array of floats; greedy only."""
        if sampling is not None:
            raise ValueError("backend mlp rolls out greedily only: it has no sampled answers (generation.samples)")
        out = []
        with torch.inference_mode():
            for batch in self.encoded(examples):
                for row in self.model.rollout(batch, self.max_new_tokens).cpu().tolist():
                    out.append(Completion(text=json.dumps([float(v) for v in row]), prompt_tokens=self.ctx,
                                          gen_tokens=self.max_new_tokens, finish="length"))
        return out
