"""Task registry: one class per task family, each behind the Task protocol (randopt_hpc.tasks.base)."""
from __future__ import annotations

from randopt_hpc.tasks.base import Task
from randopt_hpc.tasks.countdown import Countdown
from randopt_hpc.tasks.countdown_qa import CountdownQA

TASKS: dict[str, type] = {"countdown": Countdown, "countdown_qa": CountdownQA}


def get_task(name: str, template: str | None = None) -> Task:
    """The task `name`; `template` (config task.template) only for tasks that take one."""
    try:
        cls = TASKS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown task {name!r}; valid: {', '.join(sorted(TASKS))}") from None
    if template is None:
        return cls()
    if not cls.takes_template:
        raise ValueError(f"task {name} takes no prompt template")
    return cls(template)
