"""Typed run configuration: frozen dataclasses, YAML + dotted overrides, validated where built.

Every error is a ConfigError whose message starts with the dotted field name; run.py prints it as
one line and exits 2, before MPI or any model is touched.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, get_args, get_origin, get_type_hints

import yaml

# ConfigError is imported from here everywhere: it lives with the checks that raise it.
from randopt_hpc.configrules import (
    MAX_BATCH,
    MAX_EXAMPLES,
    MAX_NEW_TOKENS,
    MAX_POPULATION,
    MAX_SAMPLES,
    MAX_TEMPERATURE,
    MAX_THREADS,
    ConfigError,
    choice,
    near,
    require,
    within,
)
from randopt_hpc.es import ALGORITHMS, EsConfig
from randopt_hpc.halving import SCHEDULES, HalvingConfig
from randopt_hpc.population import DEALS, NOISE_VERSIONS
from randopt_hpc.rounds import DistillConfig, validate_rounds
from randopt_hpc.slurmconfig import SlurmConfig
from randopt_hpc.vllmconfig import VLLMConfig

DECODERS = ("auto", "generate", "loop")   # runtime.decoder (randopt_hpc.backends.hf)


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""
    dtype: str = "float32"
    chat: str | bool = "auto"

    def validate(self, paths: bool = True) -> None:
        require(self.path != "", "model.path", "is required")
        choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        require(self.chat == "auto" or isinstance(self.chat, bool), "model.chat",
                 f"must be one of auto, true, false; got {self.chat!r}")
        if not paths:
            return
        require(os.path.isdir(self.path), "model.path", f"not a directory: {self.path}")
        require(os.path.isfile(os.path.join(self.path, "config.json")), "model.path",
                 f"no config.json in {self.path} (expected a Hugging Face model folder)")


@dataclass(frozen=True)
class TaskConfig:
    name: str = "countdown"
    data: str | None = None
    train_size: int = 200
    test_size: int = 2000
    seed: int = 0
    template: str | None = None
    prompt_style: str | None = None

    def validate(self, paths: bool = True, where: str = "task") -> None:
        from randopt_hpc.tasks import TASKS, task_class

        choice(f"{where}.name", self.name, tuple(sorted(TASKS)))
        task = task_class(self.name)
        if self.template is not None:
            require(task.takes_template, f"{where}.template", f"task {self.name} takes no prompt template")
            try:
                task.check_template(self.template)
            except ValueError as e:
                raise ConfigError(f"{where}.template: {e}") from None
        if self.prompt_style is not None:
            styles = getattr(task, "prompt_styles", ())
            require(bool(styles), f"{where}.prompt_style", f"task {self.name} has one prompt style; leave it null")
            choice(f"{where}.prompt_style", self.prompt_style, styles)
        if self.data is not None and paths:
            require(os.path.isfile(self.data), f"{where}.data", f"no such file: {self.data}")
        within(f"{where}.train_size", self.train_size, 1, MAX_EXAMPLES)
        within(f"{where}.test_size", self.test_size, 1, MAX_EXAMPLES)
        require(self.seed >= 0, f"{where}.seed", f"must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class PopulationConfig:
    size: int = 64
    seed: int = 0
    sigmas: tuple[float, ...] = (1e-3,)
    sigma_assignment: str = "random"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    noise: str = "boxmuller"

    def validate(self) -> None:
        within("population.size", self.size, 1, MAX_POPULATION)
        choice("population.noise", self.noise, NOISE_VERSIONS)
        require(0 <= self.seed < 2**63, "population.seed", f"must be in [0, 2**63), got {self.seed}")
        require(len(self.sigmas) >= 1, "population.sigmas", "must list at least one sigma")
        for s in self.sigmas:
            require(s > 0 and s == s and s != float("inf"), "population.sigmas",
                     f"each sigma must be > 0 and finite, got {s}")
        choice("population.sigma_assignment", self.sigma_assignment, ("random", "blocked"))
        for key in ("include", "exclude"):
            for pattern in getattr(self, key):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ConfigError(f"population.{key}: bad regex {pattern!r}: {e}") from None


@dataclass(frozen=True)
class SelectionConfig:
    top_k: tuple[int, ...] = (1, 5, 10)
    control: bool = True
    control_size: int | None = None
    task: str | None = None
    schedule: str = "full"
    halving: HalvingConfig = field(default_factory=HalvingConfig)

    def validate(self, n: int, tasks: tuple = ()) -> None:
        choice("selection.schedule", self.schedule, SCHEDULES)
        self.halving.validate()
        names = [t.name for t in tasks]
        if self.task is not None:
            require(len(names) > 1, "selection.task", "names a task only when `task` lists several; leave it null")
            choice("selection.task", self.task, tuple(names))
        require(len(self.top_k) >= 1, "selection.top_k", "must list at least one K")
        for k in self.top_k:
            require(1 <= k <= n, "selection.top_k", f"each K must be in [1, population.size={n}], got {k}")
        require(len(set(self.top_k)) == len(self.top_k), "selection.top_k", f"duplicate K in {list(self.top_k)}")
        if self.control_size is not None:
            within("selection.control_size", self.control_size, max(self.top_k), n)
            require(self.control, "selection.control_size", "sizes the control; it needs selection.control: true")


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 1024
    batch_size: int = 64
    samples: int = 0
    temperature: float = 0.6      # 0.6 and 0.95: the limit-of-RLVR study's setting
    top_p: float = 0.95
    seed: int = 0
    stop_strings: bool = True     # each task's (tasks/*.py); false: to EOS or the cap, as the reference

    def validate(self) -> None:
        within("generation.max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        within("generation.batch_size", self.batch_size, 1, MAX_BATCH)
        within("generation.samples", self.samples, 0, MAX_SAMPLES)
        require(0 < self.temperature <= MAX_TEMPERATURE, "generation.temperature",
                 f"must be in (0, {MAX_TEMPERATURE:g}], got {self.temperature}")
        require(0 < self.top_p <= 1, "generation.top_p", f"must be in (0, 1], got {self.top_p}")
        require(0 <= self.seed < 2**63, "generation.seed", f"must be in [0, 2**63), got {self.seed}")


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs/default"
    overwrite: bool = False
    save_text: bool = False          # off: raw completions of every candidate and member are large at scale

    def validate(self) -> None:
        require(self.dir != "", "output.dir", "is required")
        require(not os.path.isfile(self.dir), "output.dir", f"is a file: {self.dir}")


@dataclass(frozen=True)
class RuntimeConfig:
    comm: str = "auto"
    threads: int = 1           # one rank per core is the HPC way
    device: str = "cpu"
    noise_impl: str = "auto"
    progress_every_s: float = 5.0
    stage_dir: str | None = None
    stop_grace_s: float = 60.0
    schedule: str = "strided"    # who computes which candidate; never what it is
    decoder: str = "auto"        # hf backend, greedy: transformers' generate() or the exact greedy loop

    def validate(self) -> None:
        choice("runtime.comm", self.comm, ("auto", "mpi", "serial"))
        within("runtime.threads", self.threads, 1, MAX_THREADS)
        require(re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None, "runtime.device",
                 f"must be cpu, cuda or cuda:N, got {self.device!r}")
        choice("runtime.noise_impl", self.noise_impl, ("auto", "torch", "numba"))
        require(0 < self.progress_every_s <= 86_400, "runtime.progress_every_s",
                f"must be in (0, 86400] seconds, got {self.progress_every_s}")
        require(self.stage_dir is None or bool(self.stage_dir.strip()), "runtime.stage_dir",
                 "must be a folder or null, got an empty string")
        require(0 <= self.stop_grace_s <= 86_400, "runtime.stop_grace_s",
                f"must be in [0, 86400] seconds, got {self.stop_grace_s}")
        choice("runtime.schedule", self.schedule, DEALS)
        choice("runtime.decoder", self.decoder, DECODERS)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: str = "hf"
    algorithm: str = "randopt"    # or es: iterated, on the same parts (randopt_hpc.es)
    task: TaskConfig = field(default_factory=TaskConfig)   # the task, or the first of `tasks`
    tasks: tuple[TaskConfig, ...] = ()    # several tasks scored on one population (`task:` given as a list)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    es: EsConfig = field(default_factory=EsConfig)
    rounds: int = 1               # > 1: search, distil the top K, search again from it (randopt_hpc.rounds)
    distill: DistillConfig = field(default_factory=DistillConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def validate(self, paths: bool = True) -> Config:
        """paths=False skips the checks that model.path and task.data exist on this machine (a launcher
        preparing a job for a cluster whose file systems it cannot see)."""
        self.model.validate(paths)
        from randopt_hpc.backends import BACKENDS

        choice("backend", self.backend, tuple(BACKENDS))
        choice("algorithm", self.algorithm, ALGORITHMS)
        require(self.backend == "hf" or self.population.noise == "boxmuller", "population.noise",
                f"{self.population.noise} is drawn by the hf backend only; backend {self.backend} needs boxmuller")
        require(self.backend != "mlp" or self.generation.samples == 0, "generation.samples",
                f"backend mlp rolls out greedily only; set 0, got {self.generation.samples}")
        if self.tasks:
            require(self.tasks[0] == self.task, "task", "with several tasks, `task` is the first of `tasks`")
            for i, t in enumerate(self.tasks):
                t.validate(paths, f"task[{i}]")
            names = [t.name for t in self.tasks]
            dup = next((n for n in names if names.count(n) > 1), None)
            require(dup is None, "task", f"task {dup} is listed twice; each task once")
            require(len(names) == 1 or "toy_signal" not in names, "task",
                    "toy_signal averages its members' rollouts, the others vote: it runs alone")
        else:
            self.task.validate(paths)
        self.population.validate()
        if self.algorithm != "es":   # ES votes nothing: its section says what it needs
            self.selection.validate(self.population.size, self.all_tasks)
        self.generation.validate()
        self.output.validate()
        self.runtime.validate()
        self.vllm.validate()
        self.slurm.validate()
        self.es.validate(self)
        validate_rounds(self)
        return self

    @property
    def all_tasks(self) -> tuple[TaskConfig, ...]:
        return self.tasks or (self.task,)

    @property
    def k_max(self) -> int:
        return max(self.selection.top_k)


# ---------------------------------------------------------------- building from YAML and overrides

def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Check/convert one leaf value to its declared type; YAML already typed most scalars."""
    origin = get_origin(typ)
    if origin is tuple:
        item_t = get_args(typ)[0]
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]   # `population.sigmas=1e-3` means a one-element list
        if dataclasses.is_dataclass(item_t):
            if not isinstance(value, list):
                raise ConfigError(f"{name}: expected a list of mappings, got {type(value).__name__}")
            return tuple(_build(item_t, v, f"{name}[{i}].") for i, v in enumerate(value))
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(f"{name}[{i}]", v, item_t) for i, v in enumerate(value))
    if origin is not None and set(get_args(typ)) == {str, bool}:   # `str | bool`: true/false, or a word
        return value if isinstance(value, bool) else _coerce(name, value, str)
    if origin is not None and type(None) in get_args(typ):   # `X | None`: null, or an X
        inner = [t for t in get_args(typ) if t is not type(None)][0]
        return None if value is None else _coerce(name, value, inner)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:
                raise ConfigError(f"{name}: {str(value)[:20]}... is out of range (|value| < 2**63)")
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)   # 1e3 written for an int
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:   # an integer past float's range
                number = math.inf
            if not math.isfinite(number):   # YAML's .inf and 1e309 read as infinity
                raise ConfigError(f"{name}: expected a finite number, got {str(value)[:24]}")
            return number
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)   # a path or name that YAML read as a number
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    raise ConfigError(f"{name}: unsupported type {typ}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        hint = "; give `task: {name: ...}` or a list of them" if where.startswith("task") else ""
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}{hint}")
    hints = get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in valid:
            hint = near(key, valid, prefix) or ";"   # on the key alone: a shared prefix is no likeness
            raise ConfigError(f"{name}: unknown key{hint} valid keys: {', '.join(prefix + v for v in valid)}")
        typ = hints[key]
        if cls is Config and key == "task" and isinstance(value, list):   # several tasks on one population
            if not value:
                raise ConfigError("task: an empty list; give one task or several")
            if "tasks" in data:
                raise ConfigError("task: a list here and `tasks` too; give the list once")
            kwargs["tasks"] = _coerce("task", value, hints["tasks"])
            kwargs["task"] = kwargs["tasks"][0]
        elif dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value if value is not None else {}, f"{name}.")
        else:
            kwargs[key] = _coerce(name, value, typ)
    return cls(**kwargs)


def from_dict(data: dict) -> Config:
    """A Config from a plain mapping (e.g. a run folder's run.yaml), not yet validated."""
    return _build(Config, data, "")


def load_config(path: str | None, overrides: list[str] = (), check_paths: bool = True) -> Config:
    """YAML file (or nothing) + overrides -> a validated Config."""
    from randopt_hpc.textio import floats_in, parse_override, read_yaml_file  # textio imports ConfigError from here

    data: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config: no such file: {path}")
        data = read_yaml_file(path, "config") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config: {path} must hold a mapping at the top level")
        data = floats_in(data)

    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{'.'.join(keys[:i + 1])}: is a value, not a section")
            node = nxt
        node[keys[-1]] = value
    return _build(Config, data, "").validate(check_paths)


def to_dict(cfg: Any) -> dict:
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, tuple):
            v = [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else v
    return out


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


if __name__ == "__main__":   # `python -m randopt_hpc.config`: the listing of every key
    import sys

    from randopt_hpc.confighelp import main

    sys.exit(main())
