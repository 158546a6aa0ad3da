"""The Slurm request of `python -m randopt_hpc.launch`: the config's `slurm:` section."""
from __future__ import annotations

from dataclasses import dataclass

from randopt_hpc.configrules import MAX_NODES, MAX_THREADS, within


@dataclass(frozen=True)
class SlurmConfig:
    """The Slurm request of `python -m randopt_hpc.launch` (its command-line flags override these); the run
    itself never reads it, so it is not part of the results' fingerprint."""
    nodes: int = 1
    tasks_per_node: int = 4      # a GH200 node: one rank per GPU
    gpus_per_task: int = 1
    cpus_per_task: int = 72
    time: int = 240
    partition: str = ""
    account: str = ""
    qos: str = ""

    def validate(self) -> None:
        within("slurm.nodes", self.nodes, 1, MAX_NODES)
        within("slurm.tasks_per_node", self.tasks_per_node, 1, MAX_THREADS)
        within("slurm.gpus_per_task", self.gpus_per_task, 0, 64)
        within("slurm.cpus_per_task", self.cpus_per_task, 1, MAX_THREADS)
        within("slurm.time", self.time, 1, 60 * 24 * 366)
