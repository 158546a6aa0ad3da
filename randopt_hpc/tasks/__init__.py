"""Task registry. A task module exposes examples_from_records, synthetic_records, score and split."""
from __future__ import annotations

from types import ModuleType

from randopt_hpc.tasks import countdown, countdown_qa

TASKS: dict[str, ModuleType] = {"countdown": countdown, "countdown_qa": countdown_qa}


def get_task(name: str) -> ModuleType:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown task {name!r}; valid: {', '.join(sorted(TASKS))}") from None
