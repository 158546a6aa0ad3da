"""vLLM backend: one in-process engine per MPI rank; perturbation happens inside its workers.

Same contract as the HF backend (docs/design.md, invariant 2): the model for (seed, sigma) is
cast(theta0 + float32(sigma) * eps) with eps drawn per checkpoint tensor name, however vLLM fuses and
shards the weights (randopt_hpc.tp, randopt_hpc.backends.vllm_worker). Prompts go in as the same
token ids the HF backend uses, generation stops at the same stop ids and answers are cut and decoded
the same way, so the two backends differ only in their kernels. The engine runs in this process only
with VLLM_ENABLE_V1_MULTIPROCESSING=0, which randopt_hpc.environment.setup_process sets for backend vllm.

Memory (`plan_memory`): vLLM sizes its KV cache as if its engine were alone on the machine. On a GPU
it is (one rank per GPU), and the pristine copy kept next to the weights is taken out of its share; on
CPU the ranks of a node share one memory, so each rank's KV cache is set explicitly.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from randopt_hpc.backends.base import BaseBackend, stop_token_ids
from randopt_hpc.config import ConfigError
from randopt_hpc.sampling import Sampling
from randopt_hpc.tasks.base import Example

GIB = 1 << 30


class VLLMError(ConfigError):
    """A vLLM backend setup that cannot work as configured; the message is one line naming what to change.
    Found only once the engine starts, after MPI: run.main ends the job with it as a config error (exit 2)."""


class VLLMMemoryError(VLLMError):
    """A KV cache that does not fit (or is too small); the message names the config key to change."""


@dataclass(frozen=True)
class MemoryPlan:
    kv_cache_bytes: int | None    # vLLM's kv_cache_memory_bytes; None: vLLM sizes it from `utilization`
    utilization: float            # vLLM's gpu_memory_utilization
    why: str                      # for the log


def plan_memory(*, kv_cache_gib: float | None, utilization: float, pristine: str, on_cpu: bool,
                engines_on_node: int, node_available: int, shard_bytes: int, device_total: int = 0) -> MemoryPlan:
    """How much memory this rank's engine may take. Pure.

    kv_cache_gib set: exactly that KV cache, per engine worker (vLLM's kv_cache_memory_bytes).
    CPU, unset: `utilization` of the node's available memory, split among the engine workers on the node
    (engines_on_node = ranks on the node × tensor_parallel_size), less this worker's weights and pristine
    copy (both in host memory on CPU, 2 × shard_bytes). vLLM's own CPU rule (utilization × the node's total,
    less the process's size) assumes one engine per node: every rank would claim the same memory.
    Available memory already excludes what the ranks and everything else hold, so a rank that starts
    after another has taken its share only gets a smaller one, never an overlapping one.
    GPU, unset: vLLM's fraction of this GPU, less the pristine copy when it lives on the GPU (vLLM
    allocates its fraction before the copy is made)."""
    if kv_cache_gib is not None:
        return MemoryPlan(int(kv_cache_gib * GIB), utilization, f"vllm.kv_cache_gib = {kv_cache_gib:g} GiB")
    if on_cpu:
        share = utilization * node_available / engines_on_node
        kv = int(share - 2 * shard_bytes)
        if kv <= 0:
            raise VLLMMemoryError(
                f"vllm.gpu_memory_utilization: {utilization:g} of the {node_available / GIB:.2f} GiB available on "
                f"this node, shared by {engines_on_node} vLLM workers, leaves no KV cache next to each worker's "
                f"weights and pristine copy ({2 * shard_bytes / GIB:.2f} GiB); raise it, run fewer ranks per "
                f"node, or set vllm.kv_cache_gib")
        return MemoryPlan(kv, utilization, f"{utilization:g} × {node_available / GIB:.2f} GiB available / "
                                           f"{engines_on_node} workers - {2 * shard_bytes / GIB:.2f} GiB weights "
                                           f"and pristine copy = {kv / GIB:.2f} GiB KV cache")
    if pristine == "host":
        return MemoryPlan(None, utilization, f"{utilization:g} of the GPU (pristine copy in host memory)")
    left = utilization - shard_bytes / device_total
    if left <= 0:
        raise VLLMMemoryError(
            f"vllm.gpu_memory_utilization: {utilization:g} of the GPU's {device_total / GIB:.1f} GiB leaves no "
            f"room next to the pristine copy ({shard_bytes / GIB:.1f} GiB per GPU); set vllm.pristine=host or "
            f"raise vllm.tensor_parallel_size")
    return MemoryPlan(None, left, f"{left:.3f} of the GPU ({utilization:g} less the pristine copy, "
                                  f"{shard_bytes / GIB:.2f} GiB)")


# vLLM's own words for a KV cache that does not fit, and for one too small for max_model_len.
_TOO_BIG = ("Available memory on node", "less than desired GPU memory utilization")
_TOO_SMALL = ("No available memory for the cache blocks", "larger than the available KV cache memory",
              "Cannot auto-fit max_model_len")


def memory_error(message: str, kv_cache_gib: float | None, plan: MemoryPlan) -> VLLMMemoryError | None:
    """The one-line error for vLLM's refusal `message` at engine start, or None if it is no memory matter."""
    said = _first_sentence(message)
    if any(m in message for m in _TOO_BIG):
        if kv_cache_gib is not None:
            return VLLMMemoryError(f"vllm.kv_cache_gib: {kv_cache_gib:g} GiB of KV cache per rank does not fit "
                                   f"in this node's memory; lower vllm.kv_cache_gib (vLLM: {said})")
        return VLLMMemoryError(f"vllm.gpu_memory_utilization: the KV cache it gives each rank does not fit "
                               f"({plan.why}); lower vllm.gpu_memory_utilization or set vllm.kv_cache_gib "
                               f"(vLLM: {said})")
    if any(m in message for m in _TOO_SMALL):
        key = "vllm.kv_cache_gib" if kv_cache_gib is not None else "vllm.gpu_memory_utilization"
        return VLLMMemoryError(f"{key}: the KV cache is too small for one sequence of vllm.max_model_len "
                               f"tokens; raise {key} or lower vllm.max_model_len (vLLM: {said})")
    return None


def _memory_plan(path: str, dtype: str, tensor_parallel_size: int, kv_cache_gib, utilization: float,
                 pristine: str, ranks_on_node: int) -> MemoryPlan:
    """plan_memory with this machine's numbers: vLLM's own view of the node (the NUMA node its CPU worker
    binds to), and this rank's weights from the checkpoint's headers."""
    import torch
    from vllm.platforms import current_platform

    from randopt_hpc.backends.vllm_checkpoint import weight_bytes

    on_cpu = current_platform.is_cpu()
    if kv_cache_gib is not None:
        return plan_memory(kv_cache_gib=kv_cache_gib, utilization=utilization, pristine=pristine, on_cpu=on_cpu,
                           engines_on_node=1, node_available=0, shard_bytes=0)
    shard = weight_bytes(path, torch.empty((), dtype=getattr(torch, dtype)).element_size()) // tensor_parallel_size
    available = total = 0
    if on_cpu:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

        available = get_memory_node_info(get_allowed_cpu_list()[0].numa_node).available_memory
    else:
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return plan_memory(kv_cache_gib=None, utilization=utilization, pristine=pristine, on_cpu=on_cpu,
                       engines_on_node=ranks_on_node * tensor_parallel_size, node_available=available,
                       shard_bytes=shard, device_total=total)


class VLLMBackend(BaseBackend):
    def __init__(self, path: str, dtype: str = "float32", *, max_new_tokens: int, batch_size: int,
                 include: Sequence[str] = (), exclude: Sequence[str] = (), device: str = "cpu",
                 noise_impl: str = "auto", tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 enforce_eager: bool = True, max_model_len: int | None = None, kv_cache_gib: float | None = None,
                 pristine: str = "device", ranks_on_node: int = 1, engine_args: dict | None = None,
                 keep_written: bool = False, stop_strings: bool = True):
        super().__init__()
        import logging

        from vllm import LLM, SamplingParams

        self.plan = _memory_plan(path, dtype, tensor_parallel_size, kv_cache_gib, gpu_memory_utilization,
                                 pristine, ranks_on_node)
        logging.getLogger(__name__).info("vLLM memory: %s", self.plan.why)
        sidestep_llvmlite_in_kernel_scan()
        try:
            self.llm = LLM(model=path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                           enforce_eager=enforce_eager, gpu_memory_utilization=self.plan.utilization,
                           kv_cache_memory_bytes=self.plan.kv_cache_bytes,
                           enable_prefix_caching=False,   # a cached prefix would answer with the old weights
                           # Not "auto": beside a consolidated*.safetensors (Mistral's own format) vLLM 0.32
                           # reads that file alone. The index's files are the checkpoint the HF backend and
                           # the worker read (randopt_hpc.backends.vllm_checkpoint).
                           load_format="safetensors",
                           max_model_len=max_model_len, max_num_seqs=batch_size, seed=0,
                           **(engine_args or {}),   # further vllm.LLM arguments (tests: block_size)
                           worker_extension_cls="randopt_hpc.backends.vllm_worker.PerturbExtension")
        except (ValueError, RuntimeError) as e:
            # RuntimeError: the multiprocess executor (tensor parallelism) wraps its workers' errors.
            err = memory_error(str(e), kv_cache_gib, self.plan)
            if err is None and isinstance(e, ValueError):   # vLLM's refusal of the model or the settings
                err = VLLMError(f"backend vllm: vLLM refused to start an engine for {path}: "
                                f"{' '.join(str(e).split())[:500]}")
            if err is None:
                raise
            raise err from None
        self.tokenizer = self.llm.get_tokenizer()
        # vLLM would stop at generation_config's EOS ids by itself; the explicit list also holds the
        # tokenizer's, as the HF backend's does, so both stop at the same token.
        self.stop_ids = stop_token_ids(path, self.tokenizer)
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False,
                                       stop_token_ids=self.stop_ids)
        self.use_stop_strings = stop_strings
        self._greedy: dict[tuple[str, ...], SamplingParams] = {(): self.sampling}
        self._worker_options = {"pristine": pristine, "keep_written": keep_written}
        self.select(path, include, exclude, noise_impl)

    @classmethod
    def from_config(cls, cfg, path: str) -> VLLMBackend:
        from randopt_hpc.environment import Environment

        v = cfg.vllm
        return cls(path, cfg.model.dtype, max_new_tokens=cfg.generation.max_new_tokens,
                   batch_size=cfg.generation.batch_size, include=cfg.population.include,
                   exclude=cfg.population.exclude, device=cfg.runtime.device, noise_impl=cfg.runtime.noise_impl,
                   tensor_parallel_size=v.tensor_parallel_size, gpu_memory_utilization=v.gpu_memory_utilization,
                   enforce_eager=v.enforce_eager, max_model_len=v.max_model_len, kv_cache_gib=v.kv_cache_gib,
                   pristine=v.pristine, ranks_on_node=Environment.from_os().local_size,
                   stop_strings=cfg.generation.stop_strings)

    def select(self, path: str, include: Sequence[str] = (), exclude: Sequence[str] = (), noise_impl: str = "auto",
               **options) -> dict:
        """(Re)read the pristine shards of the selected checkpoint tensors in every worker; options
        override the worker options given at construction (pristine, keep_written)."""
        opts = {**self._worker_options, **options}
        infos = self.llm.collective_rpc("randopt_init", args=(path, list(include), list(exclude), noise_impl, opts))
        problem = next((i["error"] for i in infos if "error" in i), None)
        if problem:
            raise VLLMError(problem)
        info = infos[0]
        if not info["selected"]:
            raise VLLMError("population.include/exclude select no weight tensor of the model")
        self.names = info["selected"]
        self._elements = info["elements"]
        self._shapes = {n: tuple(x) for n, x in info["shapes"].items()}
        return info

    def _perturb(self, seed: int, sigma: float) -> None:
        self.llm.collective_rpc("randopt_perturb", args=(int(seed), float(sigma)))

    def _restore(self) -> None:
        self.llm.collective_rpc("randopt_restore")

    def n_perturbed_elements(self) -> int:
        return self._elements

    # ES (randopt_hpc.es_run): θ0 lives in the workers, sharded as vLLM holds it; these move and read it there.
    def _shift(self, terms) -> None:
        self.llm.collective_rpc("randopt_shift", args=([(int(seed), float(c)) for seed, c in terms],))

    def base_tensors(self) -> dict:
        """θ0 by checkpoint name, put together from every worker's pieces."""
        return put_together(self.llm.collective_rpc("randopt_base"), self._shapes, self.names)

    def load_base(self, tensors: dict) -> None:
        if self.perturbed:
            raise RuntimeError("load_base() while perturbed: restore() first")
        self.llm.collective_rpc("randopt_load_base", args=({n: tensors[n].cpu() for n in self.names},))
        self.stale = False

    def _encode(self, examples: Sequence[Example]) -> list[list[int]]:
        return [self.tokenizer(self.prompt_text(ex), add_special_tokens=not self.chat)["input_ids"]
                for ex in examples]

    def prompt_lengths(self, examples: Sequence[Example]) -> list[int]:
        return [len(ids) for ids in self.encoded(examples)]

    def generate_ids(self, examples: Sequence[Example], sampling: Sampling | None = None) -> list[list[int]]:
        """New token ids, greedy or sampled, up to and including the first stop id or the token that completes
        a stop string of the example, in the order of `examples`."""
        prompts = [{"prompt_token_ids": ids} for ids in self.encoded(examples)]
        strings = self.stop_strings_of(examples)
        params = self.sampling
        if sampling is not None:   # one seeded generator per request: a sample does not depend on its batch
            params = [self._params(s, sampling, ex.id) for ex, s in zip(examples, strings)]
        elif any(strings):
            for s in set(strings) - set(self._greedy):
                self._greedy[s] = self._params(s)
            params = [self._greedy[s] for s in strings]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        # vLLM drops what follows the token that completes a stop string; cut_row cuts where the HF backend
        # does, on the same decoded text, should its detokenizer ever see the stop a token later.
        return [self.cut_row(o.outputs[0].token_ids, s) for o, s in zip(outs, strings)]

    def _params(self, strings: tuple[str, ...], sampling: Sampling | None = None, example_id: str = ""):
        """SamplingParams of one request: greedy, or seeded per item; stop strings need the text decoded, and
        stay in it as they do in complete()."""
        from vllm import SamplingParams

        opts = {"max_tokens": self.sampling.max_tokens, "detokenize": bool(strings), "stop_token_ids": self.stop_ids}
        if strings:
            opts.update(stop=list(strings), include_stop_str_in_output=True)
        if sampling is None:
            return SamplingParams(temperature=0.0, **opts)
        return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                              seed=sampling.row_seed(example_id), **opts)


def put_together(per_worker: list, shapes: dict, names) -> dict:
    """Checkpoint tensors from the workers' (name, rows, cols, slice) pieces: each tensor-parallel rank holds
    slices of some tensors (replicated ones on every rank, alike)."""
    import torch

    out = {}
    for pieces in per_worker:
        for name, rows, cols, t in pieces:
            full = out.setdefault(name, torch.empty(shapes[name], dtype=t.dtype))
            (full[rows[0]:rows[1]] if cols is None else full[rows[0]:rows[1], cols[0]:cols[1]]).copy_(t)
    return {n: out[n] for n in names}


def sidestep_llvmlite_in_kernel_scan() -> None:
    """vLLM 0.32 on CPU rebinds Triton kernels at every engine start by reading vars(x) of every value in
    every loaded module (vllm.triton_utils.dispatcher). llvmlite's `ffi.lib` (loaded with numba, i.e. by
    the first perturbation) answers `__dict__` with a wrapped C function, and the scan dies with
    "'_lib_fn_wrapper' object has no attribute 'get'": no second engine could start in a process that
    has perturbed. Its lazily filled table of functions gets a plain dict under that name instead."""
    import sys

    table = getattr(getattr(sys.modules.get("llvmlite.binding.ffi"), "lib", None), "_fntab", None)
    if isinstance(table, dict) and not isinstance(table.get("__dict__"), dict):
        table["__dict__"] = {}


def _first_sentence(text: str) -> str:
    """vLLM's finding without its advice, which names vLLM's flags rather than this program's keys."""
    lines = text.strip().splitlines()
    return re.split(r"\.\s", lines[0], maxsplit=1)[0] if lines else ""
