"""Runs inside each vLLM worker (`worker_extension_cls`), reached through `collective_rpc`.

Why map shards back to checkpoint tensors (randopt_hpc.tp) rather than feed perturbed tensors
through the model's own `load_weights`: the mapping lets each tensor-parallel rank draw only its own
shard's noise (1/tp of the work), and it keeps a pristine copy of exactly the tensors the worker
holds. `load_weights` would need every rank to draw the whole tensor's noise and would copy every
weight twice per candidate.

Why re-dispatch after writing a weight: on CPU, vLLM packs each linear layer's weight into a oneDNN
(or sgl) handle when the model is loaded and drops `layer.weight`; the matmul reads only the handle.
A write to `layer.weight` would silently not reach it, so every changed CPU linear layer (and the
LM head, which keeps its weight but also gets a handle) is packed again from the new weight.
"""
from __future__ import annotations

import glob
import os


class PerturbExtension:
    def randopt_init(self, path: str, include: list, exclude: list, noise_impl: str) -> dict:
        import torch
        from safetensors.torch import load_file
        from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

        from randopt_hpc import noise, tp

        model = self.model_runner.model
        shape = tp.LlamaShape.from_hf_config(model.config)
        rank, size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        ckpt = {}
        for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
            ckpt.update(load_file(f))
        # The checkpoint's order and names, as the HF backend selects them.
        selected = set(noise.select_names(list(ckpt), list(include), list(exclude)))
        self._rp = {"seed_shape": shape, "rank": rank, "size": size, "impl": noise_impl, "slots": [],
                    "selected": selected}
        cpu = current_platform_is_cpu()
        mapped = []
        for mod_name, module in model.named_modules():
            w = getattr(module, "weight", None)
            if not isinstance(w, torch.nn.Parameter):
                continue
            param = f"{mod_name}.weight"
            try:
                pieces = tp.pieces(param, shape, rank, size)
            except ValueError:
                continue
            mapped.append(param)
            if not any(p.source in selected for p in pieces):
                continue
            dtype = w.dtype
            base = tp.assemble(param, shape, rank, size, ckpt, dtype)
            packed = cpu and hasattr(module, "cpu_linear")
            if w.numel():   # the weight is still there: the mapping must reproduce it exactly
                if not torch.equal(w.detach().cpu(), base):
                    raise RuntimeError(f"{param}: the checkpoint mapping does not reproduce vLLM's weight "
                                       f"(architecture or layout not supported)")
            mask = torch.zeros(base.shape, dtype=torch.bool)
            for p in pieces:
                if p.source in selected:
                    tp.region(mask, p)[...] = True
            self._rp["slots"].append({"param": param, "module": module, "base": base.to(w.device),
                                      "mask": mask.to(w.device), "packed": packed,
                                      "drop_weight": w.numel() == 0})
        # Whole-model coverage (the TP = 1 layout): a rank may hold no piece of a tensor (vocab padding).
        covered = {p.source for param in mapped for p in tp.pieces(param, shape, 0, 1)}
        if selected - covered:
            # The HF backend would perturb these; silently skipping them would make another model.
            raise RuntimeError(f"checkpoint tensors with no known place in vLLM's model: "
                               f"{sorted(selected - covered)[:5]} (architecture not supported by randopt_hpc.tp)")
        return {"selected": sorted(selected), "params": [s["param"] for s in self._rp["slots"]],
                "elements": int(sum(int(s["mask"].sum()) for s in self._rp["slots"]))}

    def randopt_perturb(self, seed: int, sigma: float) -> None:
        import numpy as np

        from randopt_hpc import tp

        rp = self._rp
        sigma32 = float(np.float32(sigma))
        for s in rp["slots"]:
            eps = tp.shard_noise(seed, s["param"], rp["seed_shape"], rp["rank"], rp["size"], impl=rp["impl"],
                                 sources=rp["selected"], device=s["base"].device)
            new = s["base"].clone()
            m = s["mask"]
            # The HF backend's formula, elementwise: cast(float32(sigma) * eps + float32(base)).
            new[m] = eps[m].mul_(sigma32).add_(s["base"][m].float()).to(new.dtype)
            _set_weight(s, new)

    def randopt_restore(self) -> None:
        for s in self._rp["slots"]:
            _set_weight(s, s["base"])

    def randopt_weights(self) -> dict:
        """The weights the worker holds now (for tests): the unpacked local tensors."""
        return {s["param"]: s["current"].cpu() for s in self._rp["slots"] if "current" in s}


def current_platform_is_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _set_weight(slot, tensor) -> None:
    import torch

    module = slot["module"]
    slot["current"] = tensor
    if slot["packed"]:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        # The packed layer keeps this tensor as its weight: never hand it the pristine copy itself.
        weight = tensor.clone() if tensor is slot["base"] else tensor
        module.weight = torch.nn.Parameter(weight, requires_grad=False)
        dispatch_cpu_unquantized_gemm(module, remove_weight=slot["drop_weight"])
    else:
        module.weight.data.copy_(tensor)
