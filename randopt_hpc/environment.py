"""The process environment, both ways: what the launcher told this process (read once, `Environment`),
and what this process tells the libraries it will import (written once, `setup_process`).

Nothing else in the package writes os.environ or reads the launcher's variables. Variables a library reads on import
(numba's thread pool, CUDA's visible devices, vLLM's engine mode) only take effect when set before
that import, so `setup_process` runs before anything heavy is imported. Every variable is listed in
the README's table.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

# Variables through which launchers tell a process its place in the world.
_RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS")
_LOCAL_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


# Where RANDOPT_FAULT=rank:R:kill:POINT makes rank R kill itself (SIGKILL) half-way through a write.
KILL_POINTS = ("run.yaml", "shard", "results.h5")


@dataclass(frozen=True)
class Fault:
    """RANDOPT_FAULT, a thin adapter for subprocess tests of the failure paths (in-process tests pass hooks
    instead): `rank:R:candidate:C` makes rank R raise when it starts candidate C (the abort path);
    `rank:R:kill:POINT` makes rank R die by SIGKILL in the middle of writing POINT (one of KILL_POINTS)."""
    rank: int
    candidate: int | None = None
    kill: str | None = None

    @staticmethod
    def parse(text: str | None) -> Fault | None:
        if not text:
            return None
        parts = text.split(":")
        if len(parts) == 4 and parts[0] == "rank" and parts[1].isdigit():
            if parts[2] == "candidate" and parts[3].isdigit():
                return Fault(int(parts[1]), candidate=int(parts[3]))
            if parts[2] == "kill" and parts[3] in KILL_POINTS:
                return Fault(int(parts[1]), kill=parts[3])
        raise ValueError(f"RANDOPT_FAULT: expected rank:R:candidate:C or rank:R:kill:{{{','.join(KILL_POINTS)}}}, "
                         f"got {text!r}")

    def hook(self, rank: int, index: int) -> None:
        """run()'s on_candidate hook."""
        if rank == self.rank and index == self.candidate:
            raise RuntimeError(f"RANDOPT_FAULT: injected failure at candidate {index}")

    def install(self, rank: int) -> None:
        """Arm the kill point on its rank (randopt_hpc.atomic.reach is called half-way through each write)."""
        if self.kill and rank == self.rank:
            import signal

            from randopt_hpc import atomic

            atomic.install_fault(f"write:{self.kill}", lambda: os.kill(os.getpid(), signal.SIGKILL))


@dataclass(frozen=True)
class Slow:
    """RANDOPT_SLOW=SECONDS:I,J,...: candidates I, J, ... take SECONDS longer, on whichever rank computes them
    (a test seam for the schedules: a share of runaway candidates on purpose). Timed as part of the candidate."""
    seconds: float
    indices: frozenset

    @staticmethod
    def parse(text: str | None) -> Slow | None:
        if not text:
            return None
        head, _, tail = text.partition(":")
        try:
            seconds, indices = float(head), frozenset(int(i) for i in tail.split(",") if i.strip())
        except ValueError:
            seconds, indices = -1.0, frozenset()
        if not (0 <= seconds < float("inf")) or not indices or min(indices) < 0:
            raise ValueError(f"RANDOPT_SLOW: expected SECONDS:I,J,... (seconds >= 0, indices >= 0), got {text!r}")
        return Slow(seconds, indices)

    def pause(self, index: int) -> None:
        if index in self.indices:
            import time

            time.sleep(self.seconds)


@dataclass(frozen=True)
class Environment:
    launched_rank: int | None     # what the launcher says, before MPI is initialised
    launched_size: int | None
    local_rank: int
    hostname: str
    slurm_job_id: str | None
    fault: Fault | None
    cuda_visible: str | None = None     # CUDA_VISIBLE_DEVICES as launched (Slurm's binding, if any)
    max_requeues: int = 0               # RANDOPT_REQUEUE=N: a stopped Slurm job requeues itself up to N times
    restart_count: int = 0              # SLURM_RESTART_COUNT: requeues so far
    slurm_array_task: str | None = None  # "ARRAYJOB_TASK" in a job array: the id that requeues this task alone
    local_size: int = 1                 # ranks on this node (they share its memory and cores)
    slow: Slow | None = None            # RANDOPT_SLOW: a test seam (Slow)

    @staticmethod
    def from_os(environ: dict | None = None) -> Environment:
        env = os.environ if environ is None else environ
        first = lambda names: next((int(env[n]) for n in names if env.get(n, "").isdigit()), None)  # noqa: E731
        return Environment(
            launched_rank=first(_RANK_VARS), launched_size=first(_SIZE_VARS),
            local_rank=first(_LOCAL_VARS) or 0, hostname=socket.gethostname(),
            slurm_job_id=env.get("SLURM_JOB_ID"), fault=Fault.parse(env.get("RANDOPT_FAULT")),
            cuda_visible=env.get("CUDA_VISIBLE_DEVICES"),
            max_requeues=first(("RANDOPT_REQUEUE",)) or 0, restart_count=first(("SLURM_RESTART_COUNT",)) or 0,
            slurm_array_task=(f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
                              if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID") else None),
            local_size=first(_LOCAL_SIZE_VARS) or _slurm_tasks_here(env) or 1,
            slow=Slow.parse(env.get("RANDOPT_SLOW")))

    @property
    def requeue_id(self) -> str | None:
        """What `scontrol requeue` takes for this job: the last task of an array shares SLURM_JOB_ID with
        the array itself, and requeueing that id requeues every task (seen on Slurm 22.05)."""
        return self.slurm_array_task or self.slurm_job_id

    @property
    def should_requeue(self) -> bool:
        """Whether a stopped run asks Slurm to requeue its job (the launcher and jobs/*.sbatch set it)."""
        return self.slurm_job_id is not None and self.restart_count < self.max_requeues

    def rank_gpus(self, per_rank: int) -> str | None:
        """CUDA_VISIBLE_DEVICES for this rank's `per_rank` GPUs, or None to leave it as it is.

        Slurm's per-task binding (--gpus-per-task) already shows each rank only its own GPUs: keep it.
        Otherwise (mpiexec on a multi-GPU node, or srun without binding) the node's ranks split the
        visible devices by local rank. The list is only ever narrowed, never cleared."""
        visible = [d.strip() for d in (self.cuda_visible or "").split(",") if d.strip()]
        if visible and len(visible) <= per_rank:
            return None
        lo, hi = self.local_rank * per_rank, (self.local_rank + 1) * per_rank
        if not visible:   # nothing set: device ordinals
            return ",".join(str(i) for i in range(lo, hi))
        if hi > len(visible):
            raise RuntimeError(f"local rank {self.local_rank} needs {per_rank} GPU(s) but this node shows "
                               f"{len(visible)} ({','.join(visible)})")
        return ",".join(visible[lo:hi])

    @property
    def under_launcher(self) -> bool:
        return self.launched_size is not None

    @property
    def is_first(self) -> bool:
        """Rank 0, or a plain process: the one that prints errors that every rank would print alike."""
        return not self.launched_rank


def _slurm_tasks_here(env) -> int | None:
    """Tasks on this node from Slurm: SLURM_TASKS_PER_NODE is "4" or "4(x2),3" (one entry per node group);
    SLURM_NODEID says which node this is."""
    text, node = env.get("SLURM_TASKS_PER_NODE", ""), env.get("SLURM_NODEID", "")
    if not text or not node.isdigit():
        return None
    counts: list[int] = []
    for part in text.split(","):
        count, _, times = part.partition("(x")
        if not count.isdigit():
            return None
        counts += [int(count)] * (int(times.rstrip(")")) if times.rstrip(")").isdigit() else 1)
    return counts[int(node)] if int(node) < len(counts) else None


def process_variables(cfg, env: Environment) -> tuple[dict[str, str], dict[str, str]]:
    """(defaults, assignments) for this process's environment: defaults give way to what the user set,
    assignments do not. Pure, so that the choice is testable without touching os.environ."""
    defaults = {
        # numba's pool gets this rank's share of the cores, as torch's does (one rank per core is the norm).
        "NUMBA_NUM_THREADS": str(cfg.runtime.threads),
        # Never reach a hub: the model is a local folder, on clusters as on laptops.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if cfg.backend == "vllm":
        # In-process engine: each MPI rank owns its engine, and collective_rpc reaches the worker directly.
        defaults["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    assign = {}
    if cfg.runtime.device.startswith("cuda"):
        gpus = env.rank_gpus(cfg.vllm.tensor_parallel_size if cfg.backend == "vllm" else 1)
        if gpus is not None:
            assign["CUDA_VISIBLE_DEVICES"] = gpus
    return defaults, assign


def device_problem(cfg) -> str | None:
    """runtime.device against the CUDA devices this rank sees (after setup_process has narrowed them), as one
    line; None when they fit. Imports torch, as the run is about to."""
    device = cfg.runtime.device
    if not device.startswith("cuda"):
        return None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return (f"runtime.device: {device}, but this rank sees no CUDA device"
                + ("" if torch.backends.cuda.is_built() else " (this torch is built without CUDA)"))
    index = int(device.partition(":")[2] or 0)
    need = cfg.vllm.tensor_parallel_size if cfg.backend == "vllm" else 1
    if index >= count or need > count:
        return (f"runtime.device: {device}" + (f" with vllm.tensor_parallel_size {need}" if need > 1 else "")
                + f", but this rank sees {count} CUDA device(s)")
    return None


def setup_process(cfg, env: Environment) -> dict[str, str]:
    """The one place that writes os.environ; call once per process, before torch, numba or vLLM is used.
    Returns the variables it assigned (to be logged once logging knows the rank)."""
    defaults, assign = process_variables(cfg, env)
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    for name, value in assign.items():
        os.environ[name] = value
    import torch

    torch.set_num_threads(cfg.runtime.threads)
    return assign
