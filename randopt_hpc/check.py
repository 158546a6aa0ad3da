"""Check a config against its model, data and Slurm request before anything starts:
`python -m randopt_hpc.check CONFIG [key=value ...] [--gpu-gib G]`.

What it reads, with plain file reads and no torch, transformers or vLLM import: the model folder
(modelcheck), config.json and the safetensors headers against the backend's layouts (randopt_hpc.tp for
vLLM: the checks its worker makes at start-up), the chat template, the task data (randopt_hpc.data), the
memory per rank (weights, pristine copy, KV cache) and the `slurm:` request against the rest of the config.
Prints the memory estimate and `check: ok`, or one line per problem on stderr and exits 2. `launch` runs it
before every submission, `run` its model part before MPI starts (preflight).

Not checked: whether the installed transformers knows an architecture for backend hf (its table of model
types takes seconds to import), the cluster's host memory, and what vLLM itself refuses beyond randopt_hpc.tp.
"""
from __future__ import annotations

import functools
import json
import os
import struct
import sys
from dataclasses import dataclass
from types import SimpleNamespace

from randopt_hpc.backends.vllm_checkpoint import checkpoint_files
from randopt_hpc.config import ConfigError, load_config
from randopt_hpc.memplan import (
    GH200_GIB,
    _gib,
    _stamp,
    length_problem,
    memory,
    memory_problem,
    node_memory,
    prompt_tokens,
)
from randopt_hpc.modelcheck import MLP_TYPE, check_model, has_chat_template, mlp_shapes
from randopt_hpc.population import select_names

TIED_BY_DEFAULT = ("gemma", "gemma2", "gemma3_text")   # transformers' default when config.json leaves it out


# ------------------------------------------------------------------ the model folder

@dataclass(frozen=True)
class Model:
    config: dict                            # config.json
    tensors: dict[str, tuple[int, ...]]     # checkpoint tensor -> shape, from the files the backends load


def read_model(path: str) -> Model:
    """config.json and the safetensors headers (never tensor data) of a folder check_model passed."""
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    tensors: dict[str, tuple[int, ...]] = {}
    for file in checkpoint_files(path):
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        tensors.update((k, tuple(v["shape"])) for k, v in header.items() if k != "__metadata__")
    return Model(config, tensors)


def layout_problems(cfg, model: Model) -> list[str]:
    """What the backend refuses at start-up about this checkpoint (the vLLM worker's checks, offline)."""
    selected = select_names(list(model.tensors), cfg.population.include, cfg.population.exclude)
    if not selected:
        return [f"population.include: with population.exclude, it selects no tensor of the checkpoint in "
                f"{cfg.model.path}"]
    if (cfg.backend == "mlp") != (model.config.get("model_type") == MLP_TYPE):
        return [f"backend: {cfg.backend} cannot run {cfg.model.path} (model_type "
                f"{model.config.get('model_type')!r}); backend mlp runs model_type {MLP_TYPE} and nothing else"]
    if cfg.backend == "mlp":
        return mlp_problems(cfg, model)
    if cfg.backend != "vllm":
        return []
    from randopt_hpc import tp

    hf = SimpleNamespace(**{"tie_word_embeddings": model.config.get("model_type") in TIED_BY_DEFAULT,
                            **model.config})
    try:
        shape = tp.ModelShape.from_hf_config(hf)
    except AttributeError as e:
        return [f"backend: vllm: config.json of {cfg.model.path} has no {e.name}"]
    except ValueError as e:   # an architecture, or a variant or quantization of one, the mapping does not know
        return [f"backend: vllm: {e}; backend hf runs any model transformers loads"]
    stray = sorted(set(selected) - tp.checkpoint_tensors(shape))
    if stray:   # the HF backend would perturb these; the vLLM worker refuses to skip them
        return [f"backend: vllm: checkpoint tensors with no known place in vLLM's model (model_type {shape.arch}): "
                f"{', '.join(stray[:5])}; select others with population.include/exclude"]
    for name in selected:
        want = tp.source_shape(name, shape)
        if model.tensors[name] != want:
            return [f"backend: vllm: tensor {name} of {cfg.model.path} has shape {list(model.tensors[name])}, but "
                    f"config.json makes it {list(want)}"]
    return []


def mlp_problems(cfg, model: Model) -> list[str]:
    """What backends.mlp.load_mlp refuses about an MLP checkpoint, and what the backend cannot do."""
    where = f"model.path: {os.path.join(cfg.model.path, 'config.json')}"
    try:
        want = mlp_shapes(model.config)
    except ValueError as e:
        return [f"{where}: {e}"]
    if model.tensors != want:
        return [f"{where}: its tensors {_shapes(model.tensors)} are not the MLP it describes {_shapes(want)}"[:400]]
    if cfg.model.dtype != "float32":
        return [f"model.dtype: backend mlp computes in float32; got {cfg.model.dtype}"]
    return []


def _shapes(tensors: dict) -> str:
    return ", ".join(f"{k} {list(v)}" for k, v in sorted(tensors.items()))


def model_problems(cfg) -> tuple[list[str], Model | None]:
    """The model folder's files, its layout for the backend and its chat template: file reads only
    (milliseconds), so every rank runs them before MPI starts."""
    try:
        check_model(cfg.model.path, tokenizer=cfg.backend != "mlp")
        model = read_model(cfg.model.path)
    except ValueError as e:   # ModelError; checkpoint_files' refusals
        return [str(e)], None
    out = layout_problems(cfg, model)
    if cfg.model.chat is True and not has_chat_template(cfg.model.path):
        out.append(f"model.chat: true, but the tokenizer of {cfg.model.path} has no chat template (tokenizer_config."
                   "json's chat_template, chat_template.jinja or chat_template.json); set model.chat: false or auto")
    return out, model


# ------------------------------------------------------------------ the Slurm request

def slurm_problems(cfg, ranks: int | None = None) -> list[str]:
    """The slurm: request against the rest of the config; `ranks` in place of slurm.nodes × tasks_per_node."""
    s, rt = cfg.slurm, cfg.runtime
    shape = f" ({s.nodes} nodes × {s.tasks_per_node})" if ranks is None else ""
    ranks = s.nodes * s.tasks_per_node if ranks is None else ranks
    cuda, tp = rt.device.startswith("cuda"), cfg.vllm.tensor_parallel_size
    out = []
    if ranks > cfg.population.size:
        out.append(f"slurm.nodes: {ranks} ranks{shape} for population.size "
                   f"{cfg.population.size}: {ranks - cfg.population.size} ranks would have no candidate; ask for "
                   "fewer nodes or slurm.tasks_per_node")
    if cuda and s.gpus_per_task == 0:
        out.append(f"slurm.gpus_per_task: 0, but runtime.device is {rt.device}: the ranks would see no GPU")
    elif cuda and cfg.backend == "vllm" and s.gpus_per_task != tp:
        out.append(f"slurm.gpus_per_task: {s.gpus_per_task}, but vllm.tensor_parallel_size is {tp}: each rank's "
                   "engine uses tensor_parallel_size GPUs; make them equal")
    elif cuda and cfg.backend == "hf" and s.gpus_per_task > 1:
        out.append(f"slurm.gpus_per_task: {s.gpus_per_task}, but backend hf runs each rank on one GPU; ask for 1")
    elif cuda and ":" in rt.device and int(rt.device.split(":")[1]) >= s.gpus_per_task:
        out.append(f"runtime.device: {rt.device}, but each rank sees {s.gpus_per_task} GPU(s) "
                   "(slurm.gpus_per_task), numbered from 0; use cuda")
    if rt.threads > s.cpus_per_task:
        out.append(f"runtime.threads: {rt.threads} threads per rank, but slurm.cpus_per_task gives each rank "
                   f"{s.cpus_per_task} CPUs")
    return out


# ------------------------------------------------------------------ everything

def data_problems(cfg) -> tuple[list[str], list]:
    """The task data as the run reads it (randopt_hpc.data.load_examples): its one-line refusal, or the examples."""
    return _data(cfg.task, cfg.tasks, _stamp(t.data for t in cfg.all_tasks if t.data))


@functools.lru_cache(maxsize=4)
def _data(task, tasks, stamp) -> tuple[list[str], list]:
    from randopt_hpc.data import load_examples

    try:
        train, test = load_examples(SimpleNamespace(task=task, tasks=tasks))   # it reads only these two
    except ValueError as e:   # ConfigError: bad rows, too few problems, an unreadable file
        return [str(e).splitlines()[0]], []
    return [], train + test


def _findings(cfg, gpu_gib: float):
    names = sorted(os.listdir(cfg.model.path)) if os.path.isdir(cfg.model.path) else []
    return _cached_findings(cfg, gpu_gib, _stamp(os.path.join(cfg.model.path, n) for n in names))


@functools.lru_cache(maxsize=16)
def _cached_findings(cfg, gpu_gib: float, stamp):
    """(problems, Memory or None, prompt tokens, how counted) from the files; cached for problems + estimate."""
    found, model = model_problems(cfg)
    bad_data, examples = data_problems(cfg)
    found = found + bad_data
    if model is None or found:
        return found, None, 0, ""
    prompt, how = prompt_tokens(cfg, examples)
    m = memory(cfg, model, prompt, gpu_gib=gpu_gib, ranks_per_node=cfg.slurm.tasks_per_node, node_bytes=node_memory())
    found += [p for p in (length_problem(cfg, model, prompt, how), memory_problem(cfg, m, gpu_gib)) if p]
    return found, m, prompt, how


def problems(cfg, ranks: int | None = None, *, check_paths: bool = True, gpu_gib: float = GH200_GIB,
             slurm: bool = True) -> list[str]:
    """Every problem found, one line each, starting with the config field it concerns. check_paths=False
    skips what needs model.path and task.data (files on another machine)."""
    found = list(_findings(cfg, gpu_gib)[0]) if check_paths else []
    return found + (slurm_problems(cfg, ranks) if slurm else [])


def estimate(cfg, *, gpu_gib: float = GH200_GIB) -> list[str]:
    """The memory per rank, and what it assumes; [] when the files say nothing (problems, or not here)."""
    _, m, prompt, how = _findings(cfg, gpu_gib)
    if m is None:
        return []
    kv = "not estimated (config.json lacks the attention sizes)" if m.needed is None else \
        f"{_gib(m.needed)} needed for {m.sequences} sequences of {m.tokens} tokens"
    where = "device" if m.pristine_at == "device" else "host memory"
    lines = [f"memory per rank: weights {_gib(m.weights)}, pristine copy {_gib(m.pristine)} ({where}), "
             f"KV cache {_gib(m.available)} available, {kv}",
             f"memory basis: {m.basis}; a sequence is the longest prompt ({prompt} {how}) + "
             "generation.max_new_tokens" + (", at most vllm.max_model_len" if cfg.backend == "vllm" else "")
             + "; every layer full attention; activations not counted"]
    return lines


def missing_paths(cfg) -> list[str]:
    """The config's files that are not on this machine ('model.path X', 'task.data Y')."""
    out = [] if os.path.isdir(cfg.model.path) else [f"model.path {cfg.model.path}"]
    return out + [f"task.data {t.data}" for t in cfg.all_tasks if t.data and not os.path.isfile(t.data)]


def output_problems(cfg) -> list[str]:
    """output.dir as the run would find it, where its parent folder is on this machine (else it is the cluster's):
    a place the run can write, holding no other config's run. Writes nothing."""
    from randopt_hpc.runfolder import RunFolder

    if not os.path.isdir(os.path.dirname(os.path.abspath(cfg.output.dir))):
        return []
    folder = RunFolder(cfg.output.dir)
    try:
        folder.check_writable()
        folder.state(cfg)
    except ConfigError as e:
        return [str(e)]
    return []


def preflight(cfg, folder, env) -> str | None:
    """What would fail after MPI starts, found before (run.load, on every rank; `folder` the RunFolder of
    output.dir): the first problem as one line, or None."""
    from randopt_hpc.lock import LockError
    from randopt_hpc.stage import check_stage_dir

    cpus = os.cpu_count() or 1
    try:
        folder.lock.check(env)
        # The model folder's files, its tensors against the backend's layouts, the chat template (file reads only).
        found = model_problems(cfg)[0]
        if found:
            raise ConfigError(found[0])
        if cfg.runtime.stage_dir:
            check_stage_dir(cfg.runtime.stage_dir)
        if cfg.runtime.threads > cpus:
            raise ConfigError(f"runtime.threads: {cfg.runtime.threads} threads per rank, but this machine has "
                              f"{cpus} CPUs")
        folder.check_writable()     # last: the folder it may create is the run's own
    except (ConfigError, LockError, ValueError) as e:   # ModelError and stage_dir's refusals are ValueErrors
        return str(e)
    return None



SKIPPED = "the model, tokenizer, data and memory checks are skipped"


def _command():
    """The click command, built when main() runs: `run` imports this module for its preflight, not click."""
    import click

    from randopt_hpc import cli as cli_errors

    @click.command(cls=cli_errors.Command, error_name="randopt_hpc.check",
                   context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("config", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1)
    @click.option("--gpu-gib", default=GH200_GIB, show_default=True, type=cli_errors.Finite(0, 1e6, min_open=True),
                  help="Memory of one GPU, GiB (GH200: 89.4).")
    def check(config, overrides, gpu_gib):
        """Check CONFIG (with key=value OVERRIDES) against its model, data and Slurm request."""
        try:
            cfg = load_config(config, list(overrides), check_paths=False)
        except ConfigError as e:
            raise SystemExit(cli_errors.fail("randopt_hpc.check", str(e))) from None
        missing = missing_paths(cfg)
        if missing:
            click.echo(f"randopt_hpc.check: note: not on this machine: {', '.join(missing)}; {SKIPPED}", err=True)
        found = problems(cfg, check_paths=not missing, gpu_gib=gpu_gib) + output_problems(cfg)
        for p in found:
            click.echo(f"randopt_hpc.check: {' '.join(p.split())}", err=True)
        if found:
            raise SystemExit(2)
        for line in [] if missing else estimate(cfg, gpu_gib=gpu_gib):
            click.echo(line)
        s = cfg.slurm
        click.echo(f"ranks: {s.nodes * s.tasks_per_node} ({s.nodes} node{'s' * (s.nodes > 1)} × {s.tasks_per_node})")
        click.echo("check: ok")
    return check


def main(argv: list[str] | None = None) -> int:
    try:
        return _command().main(args=argv, prog_name="python -m randopt_hpc.check", standalone_mode=False)
    except SystemExit as e:
        return int(e.code or 0)


if __name__ == "__main__":
    sys.exit(main())
