"""Task registry: one class per task family, each behind the Task protocol (randopt_hpc.tasks.base).

A task's module is imported when the task is asked for, so a run pays only for its own tasks' imports
(math-verify's sympy, the code sandbox)."""
from __future__ import annotations

import importlib

from randopt_hpc.tasks.base import Task

# config task.name -> (module, class)
TASKS: dict[str, tuple[str, str]] = {
    "countdown": ("randopt_hpc.tasks.countdown", "Countdown"),
    "countdown_qa": ("randopt_hpc.tasks.countdown_qa", "CountdownQA"),
    "gsm8k": ("randopt_hpc.tasks.gsm8k", "GSM8K"),
    "math500": ("randopt_hpc.tasks.mathtask", "MATH500"),
    "olympiadbench": ("randopt_hpc.tasks.mathtask", "OlympiadBench"),
    "mbpp": ("randopt_hpc.tasks.mbpp", "MBPP"),
    "humaneval": ("randopt_hpc.tasks.humaneval", "HumanEval"),
    "rocstories": ("randopt_hpc.tasks.rocstories", "ROCStories"),
    "uspto50k": ("randopt_hpc.tasks.uspto50k", "USPTO50K"),
    "demo_mul": ("randopt_hpc.tasks.demo_skills", "DemoMul"),
    "demo_eval": ("randopt_hpc.tasks.demo_skills", "DemoEval"),
    "demo_verify": ("randopt_hpc.tasks.demo_skills", "DemoVerify"),
    "toy_signal": ("randopt_hpc.tasks.toy", "ToySignal"),
}


def task_class(name: str) -> type:
    """The class of task `name`; KeyError listing the valid names."""
    try:
        module, cls = TASKS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown task {name!r}; valid: {', '.join(sorted(TASKS))}") from None
    return getattr(importlib.import_module(module), cls)


def get_task(name: str, template: str | None = None, **options) -> Task:
    """The task `name`; `template` (config task.template) only for tasks that take one; `options` (such as
    countdown's prompt_style) only for tasks whose constructor takes them."""
    cls = task_class(name)
    if template is not None:
        if not cls.takes_template:
            raise ValueError(f"task {name} takes no prompt template")
        options["template"] = template
    return cls(**options)
