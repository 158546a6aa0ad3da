"""Runs inside each vLLM worker (`worker_extension_cls`), reached through `collective_rpc`.

Why map shards back to checkpoint tensors (randopt_hpc.tp) rather than feed perturbed tensors
through the model's own `load_weights`: the mapping lets each tensor-parallel rank draw only its own
shard's noise (1/tp of the work) and read only its own shard of the checkpoint
(randopt_hpc.backends.vllm_checkpoint), and it keeps a pristine copy of exactly the tensors the worker
holds. `load_weights` would need every rank to draw the whole tensor's noise and would copy every
weight twice per candidate.

Why re-dispatch after writing a weight: on CPU, vLLM packs each linear layer's weight into a oneDNN
(or sgl) handle when the model is loaded and drops `layer.weight`; the matmul reads only the handle.
A write to `layer.weight` would silently not reach it, so every changed CPU linear layer (and the
LM head, which keeps its weight but also gets a handle) is packed again from the new weight. Every
other parameter (norms, biases, any weight on a GPU) is written in place, and only where the
selection perturbs it: what is left alone is already θ0 after a restore.

Errors a user can act on come back as {"error": one line} rather than as an exception, since the
multiprocess executor (tensor parallelism) would bury an exception's message in its own.
"""
from __future__ import annotations

import math

PRISTINE = ("device", "host")


def model_shape(hf_config):
    """randopt_hpc.tp's description of the model vLLM built, from the HF config it read."""
    from randopt_hpc import tp

    return tp.ModelShape.from_hf_config(hf_config)


class PerturbExtension:
    def randopt_init(self, path: str, include: list, exclude: list, noise_impl: str,
                     options: dict | None = None) -> dict:
        """Read this worker's shard of the selected checkpoint tensors, check it against what vLLM loaded,
        and keep it as the pristine θ0. options: pristine ("device": next to the weights; "host": in host
        memory, pinned where CUDA is, copied back on every restore), keep_written (tests: remember each
        tensor handed to a packed layer, so that randopt_weights can show it)."""
        import torch
        from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

        from randopt_hpc import tp
        from randopt_hpc.backends.vllm_checkpoint import Checkpoint
        from randopt_hpc.population import select_names

        opts = {"pristine": "device", "keep_written": False, **(options or {})}
        if opts["pristine"] not in PRISTINE:
            return {"error": f"vllm.pristine: must be one of {', '.join(PRISTINE)}; got {opts['pristine']!r}"}
        model = self.model_runner.model
        arch = getattr(model.config, "model_type", type(model).__name__)
        try:
            shape = model_shape(model.config)
        except ValueError as e:   # an architecture, or a variant of one, that the mapping does not know
            return {"error": f"backend vllm: {e}; backend hf runs any model transformers loads"}
        rank, size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        dtype = self.model_config.dtype
        host = opts["pristine"] == "host"
        pin = host and torch.cuda.is_available()
        cpu = current_platform_is_cpu()
        slots, mapped = [], []
        # A tied LM head holds the embedding's Parameter under a module of its own, with a packed handle of
        # its own: named_parameters() lists the Parameter once, but every module holding it must change.
        holders: dict[int, list] = {}
        for m in model.modules():
            for p in m.parameters(recurse=False):
                holders.setdefault(id(p), []).append(m)
        with Checkpoint(path) as ckpt, torch.no_grad():
            # The checkpoint's own names select, as in the HF backend; vLLM's fused names never do.
            selected = set(select_names(ckpt.names, list(include), list(exclude)))
            shapes = {n: tuple(ckpt.shape(n)) for n in selected}
            elements = sum(math.prod(shape) for shape in shapes.values())
            for name, param in model.named_parameters():
                try:
                    pieces = tp.pieces(name, shape, rank, size)
                except ValueError:   # a parameter tp does not know: refused below if it holds a selected tensor
                    continue
                mapped.append(name)
                chosen = [p for p in pieces if p.source in selected]
                if not chosen:
                    continue
                owner, _, attr = name.rpartition(".")
                module = model.get_submodule(owner)
                base = ckpt.assemble(name, shape, rank, size, dtype, param.dtype)
                # A packed CPU linear layer no longer holds its weight; every other parameter must be
                # reproduced bitwise, or the noise would land on other elements than the HF backend's.
                if param.numel() and not _bitwise_equal(param.detach(), base):
                    return {"error": f"{name}: the checkpoint mapped by randopt_hpc.tp does not reproduce the "
                                     f"weight vLLM loaded (model_type {arch}: layout not supported)"}
                sharing = holders[id(param)]
                packed = cpu and attr == "weight" and any(hasattr(m, "cpu_linear") for m in sharing)
                slots.append({"param": name, "module": module, "sharing": sharing, "attr": attr,
                              "device": param.device,
                              "base": base.pin_memory() if pin else base if host else base.to(param.device),
                              "pieces": chosen, "packed": packed, "drop_weight": param.numel() == 0})
        # Whole-model coverage (the TP = 1 layout): a rank may hold no piece of a tensor (vocab padding).
        covered = {p.source for name in mapped for p in tp.pieces(name, shape, 0, 1)}
        if selected - covered:
            # The HF backend would perturb these; silently skipping them would make another model.
            return {"error": f"checkpoint tensors with no known place in vLLM's model (model_type {arch}): "
                             f"{', '.join(sorted(selected - covered)[:5])}; select others with "
                             f"population.include/exclude"}
        self._rp = {"shape": shape, "rank": rank, "size": size, "impl": noise_impl, "dtype": dtype,
                    "selected": selected, "slots": slots, "keep": bool(opts["keep_written"])}
        return {"selected": sorted(selected), "params": [s["param"] for s in slots],
                # Counted on the checkpoint, as the HF backend counts: the same on every rank and TP size.
                "elements": int(elements), "shapes": {n: list(x) for n, x in shapes.items()},
                "pristine_bytes": int(sum(s["base"].numel() * s["base"].element_size() for s in slots))}

    def randopt_perturb(self, seed: int, sigma: float) -> None:
        import numpy as np
        import torch

        from randopt_hpc import tp

        rp = self._rp
        sigma32 = float(np.float32(sigma))
        with torch.no_grad():
            for s in rp["slots"]:
                dev = s["device"]
                eps = tp.shard_noise(seed, s["param"], rp["shape"], rp["rank"], rp["size"], impl=rp["impl"],
                                     sources=rp["selected"], device=dev)
                # Packed layers get a whole new tensor; the rest is θ0 already and changes in place.
                target = s["base"].to(dev, copy=True) if s["packed"] else _live(s)
                for p in s["pieces"]:
                    base = tp.region(s["base"], p).to(dev, non_blocking=True)
                    # The HF backend's formula: cast(float32(sigma) * eps + float32(base)) to the model's
                    # dtype, whatever dtype vLLM keeps the parameter in.
                    new = tp.region(eps, p).mul_(sigma32).add_(base.float()).to(rp["dtype"])
                    tp.region(target, p).copy_(new)
                if s["packed"]:
                    _repack(s, target, rp["keep"])

    def randopt_restore(self) -> None:
        import torch

        rp = self._rp
        with torch.no_grad():
            for s in rp["slots"]:
                if s["packed"]:
                    # A copy: the packed layer keeps what it is given, and θ0 must stay untouched.
                    _repack(s, s["base"].to(s["device"], copy=True), rp["keep"])
                else:
                    # From pinned host memory this is an asynchronous copy, ordered before the next forward.
                    _live(s).copy_(s["base"], non_blocking=True)

    def randopt_shift(self, terms: list) -> None:
        """θ0 <- cast(θ0 + Σ float32(c)·ε(seed)) for (seed, c) in order, summed in float32 as noise.shift_ sums
        them for the HF backend (an ES update): per element the same operations in the same order, so the
        same bits. Then the live weights are θ0 again."""
        import numpy as np
        import torch

        from randopt_hpc import tp

        rp = self._rp
        with torch.no_grad():
            for s in rp["slots"]:
                acc = torch.zeros(s["base"].shape, dtype=torch.float32, device=s["device"])
                for seed, c in terms:
                    eps = tp.shard_noise(int(seed), s["param"], rp["shape"], rp["rank"], rp["size"], impl=rp["impl"],
                                         sources=rp["selected"], device=s["device"])
                    acc.add_(eps.mul_(float(np.float32(c))))
                for p in s["pieces"]:
                    base = tp.region(s["base"], p)
                    new = tp.region(acc, p).add_(base.to(acc.device).float()).to(rp["dtype"])
                    base.copy_(new.to(base.device))
        self.randopt_restore()

    def randopt_base(self) -> list:
        """This worker's pieces of θ0 as (checkpoint name, rows, cols, tensor on the CPU): a rank holds whole
        tensors or slices of them; the driver puts the slices of every rank together."""
        from randopt_hpc import tp

        return [(p.source, p.rows, p.cols, tp.region(s["base"], p).to("cpu", copy=True).contiguous())
                for s in self._rp["slots"] for p in s["pieces"]]

    def randopt_load_base(self, tensors: dict) -> None:
        """θ0 <- the given checkpoint tensors (an ES checkpoint, by checkpoint name), and the live weights."""
        import torch

        from randopt_hpc import tp

        with torch.no_grad():
            for s in self._rp["slots"]:
                for p in s["pieces"]:
                    src = tensors[p.source]
                    piece = src[p.rows[0]:p.rows[1]] if p.cols is None else \
                        src[p.rows[0]:p.rows[1], p.cols[0]:p.cols[1]]
                    tp.region(s["base"], p).copy_(piece.to(s["base"].dtype))
        self.randopt_restore()

    def randopt_weights(self) -> dict:
        """The weights the worker holds now, as local (unpacked) tensors, for tests; a packed layer that
        drops its weight shows only what it was last given under keep_written."""
        out = {}
        for s in self._rp["slots"]:
            if not (s["packed"] and s["drop_weight"]):
                out[s["param"]] = _live(s).detach().cpu().clone()
            elif "written" in s:
                out[s["param"]] = s["written"].cpu()
        return out


def current_platform_is_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _bitwise_equal(a, b) -> bool:
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    # As bytes: torch.equal calls -0.0 and 0.0 equal and NaN unequal to itself.
    return torch.equal(a.contiguous().view(torch.uint8), b.to(a.device).contiguous().view(torch.uint8))


def _live(slot):
    # Looked up each time: vLLM may swap a parameter's storage (`.data =`) after loading.
    return getattr(slot["module"], slot["attr"]).data


def _repack(slot, tensor, keep: bool) -> None:
    import torch
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    weight = torch.nn.Parameter(tensor, requires_grad=False)
    for module in slot["sharing"]:   # still one Parameter for all of them, as vLLM tied it
        module.weight = weight
        if hasattr(module, "cpu_linear"):
            dispatch_cpu_unquantized_gemm(module, remove_weight=slot["drop_weight"])
    if keep:
        slot["written"] = tensor
