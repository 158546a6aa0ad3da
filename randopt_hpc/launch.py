"""Submit runs to Slurm: `python -m randopt_hpc.launch CONFIG [key=value ...] [--sweep KEY=[v1,v2] ...]`.

One run is one Slurm job; a sweep (the product of every --sweep list) is one submitit job array with a
task per point. Each job is an MPI job: srun starts nodes x tasks_per_node ranks, and every rank runs
randopt_hpc.run in-process through submitit. The request is the config's slurm: section, flags in its place;
its defaults are GH200 nodes: 4 GPUs, 72 Grace cores per GPU, one rank per GPU. Every job's config is checked
first (randopt_hpc.check). Site profiles (randopt_hpc/sites/*.env, package data, also sourced by
jobs/gh200.sbatch) say how srun wires MPI, which modules to load and where to stage the model.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from importlib import resources

import click
import yaml

from randopt_hpc import check, dryrun
from randopt_hpc import cli as cli_errors
from randopt_hpc.comm import EXIT_PREEMPTED
from randopt_hpc.config import ConfigError, load_config, to_yaml
from randopt_hpc.runfolder import FINISHED, LAUNCH_YAML, RunFolder
from randopt_hpc.slurmconfig import SlurmConfig
from randopt_hpc.sweeps import parse_sweep, point_dir, shown

SITE_KEYS = ("SRUN_MPI", "MODULES", "SETUP", "STAGE_DIR", "PARTITION", "OVERCOMMIT")

# What reaches the batch script, and how (tests/unit/test_launch.py runs the generated lines with bash):
# - --python: one executable, written as one shell word (shlex.quote) on the srun line (submitit's `python`)
#   and on the requeue line; no shell expansion (no ~, no $VAR), no multi-word commands.
# - #SBATCH values (--job-name, --account, --partition and a site's PARTITION, --qos, the folder in
#   --output/--error): submitit shlex-quotes them, but sbatch reads #SBATCH lines with its own parser, not
#   bash: Slurm 22.05 takes single quotes yet drops backslashes, and a newline, even quoted, ends the
#   #SBATCH line and starts one that bash runs. So these must need no quoting at all (what shlex.quote leaves
#   as it is) and are refused otherwise, before anything is written or submitted. The folder may not hold %
#   either: Slurm expands %-patterns in --output and submitit its own %j.
# - srun words (the folder, a site's SRUN_MPI): quoted by submitit (shlex.quote of every word).
# - MODULES and SETUP of a site profile are shell by design (`module load MODULES`, SETUP as a line): the
#   profiles ship inside the package and are trusted like its code.
# - CONFIG, OVERRIDES, --sweep, output.dir and STAGE_DIR never reach the script: they go into the resolved
#   YAML config that each job reads (FOLDER/configs/NNN.yaml, path pickled by submitit).
_SBATCH_SAFE = re.compile(r"[\w@%+=:,./-]+", re.ASCII)
_SBATCH_CHARS = "letters, digits and _@%+=:,./-"


def _sites():
    # Read through importlib.resources, not a path beside the source: the package may be a wheel install.
    return resources.files("randopt_hpc") / "sites"


def site_names() -> list[str]:
    return sorted(p.name[:-len(".env")] for p in _sites().iterdir() if p.name.endswith(".env"))


@dataclass(frozen=True)
class Site:
    """A cluster's way of running MPI under Slurm, read from randopt_hpc/sites/NAME.env (bash-sourceable)."""
    name: str
    srun_mpi: str = ""        # srun --mpi plugin: pmix (Open MPI), pmi2 (MPICH), "" (Cray MPICH: Slurm's default)
    modules: str = ""         # `module load` these first
    setup: str = ""           # one more shell line before srun (activate an environment, export a path)
    stage_dir: str = ""       # node-local or fast storage for a copy of the model (runtime.stage_dir)
    partition: str = ""
    overcommit: bool = False  # more ranks than cores (tests on small machines)

    @staticmethod
    def load(name: str) -> Site:
        where = f"randopt_hpc/sites/{name}.env"
        values: dict = {}
        for n, line in enumerate((_sites() / f"{name}.env").read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, raw = line.partition("=")
            if not sep or key not in SITE_KEYS:
                raise ConfigError(f"{where}:{n}: expected KEY=value with KEY one of {', '.join(SITE_KEYS)}")
            words = shlex.split(raw, comments=True)
            values[key.lower()] = " ".join(words)
        if values.get("partition") and not _SBATCH_SAFE.fullmatch(values["partition"]):
            raise ConfigError(f"{where}: PARTITION={values['partition']!r} would be written into an #SBATCH line, "
                              f"which takes no shell quoting: use {_SBATCH_CHARS} only")
        values["overcommit"] = values.get("overcommit", "0") not in ("", "0", "false", "no")
        return Site(name=name, **values)


def _site_option(ctx, param, name: str) -> Site:
    """--site, checked when the command runs (the profiles are files: nothing is read at import)."""
    names = site_names()
    if name not in names:
        raise click.BadParameter(f"no site {name!r}; valid sites: {', '.join(names)}")
    try:
        return Site.load(name)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


def _sbatch_option(ctx, param, value: str) -> str:
    """--job-name, --account, --partition, --qos: written into #SBATCH lines (see _SBATCH_SAFE); None: not given."""
    if value is not None and (value or param.name == "job_name") and not _SBATCH_SAFE.fullmatch(value):
        raise click.BadParameter(f"{value!r} would be written into an #SBATCH line, which takes no shell quoting: "
                                 f"use {_SBATCH_CHARS} only")
    return value


def _python_option(ctx, param, value: str | None) -> str:
    """--python as the shell word the script runs: one executable, quoted [this interpreter]."""
    if value is None:
        value = sys.executable
    if not value.strip():
        raise click.BadParameter("an empty name; give the compute nodes' Python executable")
    return shlex.quote(value)


def check_folder(folder: str, given: bool, here: bool) -> None:
    """The submitit folder goes into #SBATCH --output/--error: refuse what sbatch could not read back, a file in
    its place, and (here: a submission, whose folder is on this machine) a place where it cannot be made."""
    option = "--folder" if given else "--folder (default OUTPUT.DIR/slurm, from output.dir)"
    if not dryrun.FOLDER_SAFE.fullmatch(folder):
        raise ConfigError(f"{option}: {folder!r} would be written into #SBATCH lines, which take no shell quoting: "
                          f"use a folder whose path has {dryrun.FOLDER_CHARS} only "
                          "(--folder sets it apart from output.dir)")
    problem = cli_errors.folder_problem(folder) if here else \
        "exists and is not a folder" if os.path.lexists(folder) and not os.path.isdir(folder) else None
    if problem:
        raise ConfigError(f"{option}: {folder}: {problem}")


SLURM_FLAGS = ("nodes", "tasks_per_node", "gpus_per_task", "cpus_per_task", "time", "partition", "account", "qos")


def slurm_request(cfg, opts: dict) -> SlurmConfig:
    """The config's slurm: section with the flags given on the command line (not None) in its place."""
    request = dataclasses.replace(cfg.slurm, **{k: opts[k] for k in SLURM_FLAGS if opts.get(k) is not None})
    request.validate()
    for key in ("partition", "account", "qos"):
        value = getattr(request, key)
        if value and not _SBATCH_SAFE.fullmatch(value):
            raise ConfigError(f"slurm.{key}: {value!r} would be written into an #SBATCH line, which takes no shell "
                              f"quoting: use {_SBATCH_CHARS} only")
    return request


def refusals(points, check_paths: bool, gpu_gib: float) -> list[str]:
    """randopt_hpc.check's problems of every point, each once; one that only some points have names them."""
    found: dict[str, list[int]] = {}
    for i, (_, cfg) in enumerate(points):
        for problem in check.problems(cfg, check_paths=check_paths, gpu_gib=gpu_gib):
            found.setdefault(problem, []).append(i)
    return [p if len(tasks) == len(points) else f"{p} (task {', '.join(map(str, tasks))})"
            for p, tasks in found.items()]


def _site_overrides(site: Site) -> tuple[str, ...]:
    return (f"runtime.stage_dir={json.dumps(site.stage_dir)}",) if site.stage_dir else ()


def resolve_points(config: str, overrides: tuple[str, ...], sweep: tuple[str, ...], site: Site,
                   check_paths: bool):
    """Every job's full config, validated before anything is submitted, and overwrite handled here (a
    requeued job must never clear). Relative paths stay as written: jobs start in the submission
    folder (sbatch's default), and model.path is part of the results' fingerprint, so making it absolute
    would refuse to resume a run started with mpiexec. Precedence: CONFIG < the site's stage_dir <
    OVERRIDES < --sweep."""
    overrides = _site_overrides(site) + tuple(overrides)
    base = load_config(config, list(overrides), check_paths=check_paths)
    root = os.path.abspath(base.output.dir)
    points = parse_sweep(sweep) if sweep else [[]]
    out = []
    for i, extra in enumerate(points):
        where = point_dir(root, i, extra) if sweep else root
        cfg = load_config(config, [*overrides, *extra, f"output.dir={json.dumps(where)}", "output.overwrite=false"],
                          check_paths=check_paths)
        out.append((extra, cfg))
    return base, root, out


class RunJob:
    """What each srun task of a job runs (pickled by submitit): the main job on a resolved config."""

    def __init__(self, config_path: str):
        self.config_path = config_path

    def __call__(self) -> str:
        from randopt_hpc import run

        code = run.main([self.config_path])
        if code == EXIT_PREEMPTED:
            # SystemExit, not an exception: submitit writes no result, so the requeued job is awaited.
            sys.exit(code)
        if code:
            raise RuntimeError(f"randopt_hpc.run exited with {code}; see this job's log")
        return self.config_path


def executor_parameters(site: Site, opts: dict, python: str) -> dict:
    """submitit's SlurmExecutor.update_parameters for these jobs; PYTHON is the compute nodes' interpreter
    as one shell word (already quoted: --python's value)."""
    setup = []   # MODULES and SETUP are shell by design: site profiles are package files, trusted like the code
    if site.modules:
        setup.append(f"module load {site.modules}")
    if site.setup:
        setup.append(site.setup)
    setup.append(f"export RANDOPT_REQUEUE={opts['max_requeues']}")
    srun_args = ([f"--mpi={site.srun_mpi}"] if site.srun_mpi else []) + ["--kill-on-bad-exit=1"]
    extra: dict = {"requeue": True}
    if site.overcommit:
        extra["overcommit"] = True
    if opts["account"]:
        extra["account"] = opts["account"]
    # After srun: exit 75 (every rank stopped at a candidate boundary) requeues the job. submitit's own
    # requeue-on-signal is not used (see randopt_hpc.requeue), so its max_num_timeout is moot.
    teardown = [f"{python} -m randopt_hpc.requeue $?"]
    params = dict(job_name=opts["job_name"], time=opts["time"], nodes=opts["nodes"],
                  ntasks_per_node=opts["tasks_per_node"], cpus_per_task=opts["cpus_per_task"],
                  signal_delay_s=opts["signal_delay"], setup=setup, teardown=teardown, srun_args=srun_args,
                  additional_parameters=extra, array_parallelism=opts["array_parallelism"])
    if opts["gpus_per_task"]:
        params["gpus_per_task"] = opts["gpus_per_task"]
    if opts["partition"] or site.partition:
        params["partition"] = opts["partition"] or site.partition
    if opts["qos"]:
        params["qos"] = opts["qos"]
    return params


@click.command(cls=cli_errors.Command, error_name="randopt_hpc.launch",
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--sweep", multiple=True, metavar="KEY=[v1,v2]", help="Sweep KEY over a YAML list (repeat: product).")
@click.option("--site", default="cray-mpich", show_default=True, callback=_site_option,
              help="MPI wiring and staging profile (randopt_hpc/sites/NAME.env).")
# The Slurm request: the config's slurm: section, each flag given here in its place ([default] when neither says).
@click.option("--nodes", type=click.IntRange(1), help="[slurm.nodes, 1]")
@click.option("--tasks-per-node", type=click.IntRange(1), help="MPI ranks per node [slurm.tasks_per_node, 4].")
@click.option("--gpus-per-task", type=click.IntRange(0), help="[slurm.gpus_per_task, 1]")
@click.option("--cpus-per-task", type=click.IntRange(1), help="[slurm.cpus_per_task, 72]")
@click.option("--time", type=click.IntRange(1), help="Time limit, minutes [slurm.time, 240].")
@click.option("--partition", callback=_sbatch_option,
              help="Slurm partition [slurm.partition, else the site's, else Slurm's].")
@click.option("--account", callback=_sbatch_option, help="[slurm.account]")
@click.option("--qos", callback=_sbatch_option, help="[slurm.qos]")
@click.option("--gpu-gib", default=check.GH200_GIB, show_default=True, type=cli_errors.Finite(0, 1e6, min_open=True),
              help="Memory of one GPU in GiB, for the memory check (randopt_hpc.check).")
@click.option("--job-name", default="randopt", show_default=True, callback=_sbatch_option)
@click.option("--signal-delay", default=180, show_default=True, type=click.IntRange(1, 7 * 86400),
              help="Seconds before the time limit when ranks are told to stop at a candidate boundary.")
@click.option("--max-requeues", default=10, show_default=True, type=click.IntRange(0, 1000),
              help="How often a stopped (preempted or timed-out) job requeues itself.")
@click.option("--array-parallelism", default=64, show_default=True, type=click.IntRange(1))
@click.option("--folder", default="", help="submitit folder for scripts, pickles and logs [OUTPUT.DIR/slurm]; "
              "its path may hold only letters, digits and _@+=:,./- (it goes into #SBATCH lines).")
@click.option("--python", "python", default=None, callback=_python_option,
              help="The compute nodes' Python: one executable (a path or a name on PATH), written into the batch "
                   "script as one quoted word, so no ~ or $VAR expansion; for a container, give a wrapper script "
                   "that execs python inside it [this interpreter].")
@click.option("--dry-run", is_flag=True, help="Print the batch script and the jobs; submit nothing (no Slurm needed).")
@click.option("--wait", is_flag=True, help="Wait for every job and exit non-zero if any failed.")
def cli(config, overrides, sweep, site, dry_run, wait, folder, python, **opts):
    """Submit CONFIG (with key=value OVERRIDES) as one Slurm job, or a sweep as a job array."""
    gpu_gib = opts.pop("gpu_gib")
    try:
        base, root, points = resolve_points(config, overrides, sweep, site, check_paths=not dry_run)
        given, folder = bool(folder), os.path.abspath(folder or os.path.join(root, "slurm"))
        check_folder(folder, given, not dry_run)
        request = slurm_request(base, opts)   # a sweep never changes it (parse_sweep)
        if opts["signal_delay"] >= request.time * 60:
            raise ConfigError(f"--signal-delay: {opts['signal_delay']} s is not less than the time limit "
                              f"({request.time} min): the ranks would be told to stop as the job starts")
    except ConfigError as e:
        raise SystemExit(_fail(str(e))) from None
    # Each job's config records the request it runs under (the slurm: section is no part of its results).
    points = [(extra, dataclasses.replace(cfg, slurm=request)) for extra, cfg in points]
    missing = check.missing_paths(base)   # a dry run's files may be on the cluster only; a submission's are here
    if missing:
        click.echo(f"randopt_hpc.launch: note: not on this machine: {', '.join(missing)}; {check.SKIPPED}", err=True)
    found = refusals(points, not missing, gpu_gib)
    if found:   # before anything is cleared, written or submitted, and before Slurm is looked for
        for problem in found:
            _fail(problem)
        raise SystemExit(2)
    opts.update(dataclasses.asdict(request))
    params = executor_parameters(site, opts, python)
    ranks = request.nodes * request.tasks_per_node
    where = [os.path.join(cfg.output.dir, "results.h5") for _, cfg in points]
    if dry_run:
        kind = f"a job array of {len(points)} tasks" if len(points) > 1 else "one job"
        click.echo(f"# randopt_hpc.launch --dry-run: {kind}, {ranks} MPI ranks each, site {site.name}")
        click.echo(f"# config: {config} {' '.join(_site_overrides(site) + overrides)}".rstrip())
        for i, ((extra, _), path) in enumerate(zip(points, where)):
            click.echo(f"# task {i}: {' '.join(map(shown, extra)) or '(the config as given)'} -> {path}")
        estimates = [] if missing else [x for _, cfg in points for x in check.estimate(cfg, gpu_gib=gpu_gib)]
        for line in dict.fromkeys(estimates):
            click.echo(f"# {line}")
        try:
            click.echo(dryrun.script(folder, params, python, len(points)), nl=False)
        except RuntimeError as e:
            raise SystemExit(_fail(str(e))) from None
        return
    try:
        # A folder holding another config's run fails here, not hours later in the queue; finished
        # points (a sweep submitted again after some of it failed) are not submitted again.
        todo = [i for i, (_, cfg) in enumerate(points) if RunFolder(cfg.output.dir).state(cfg) != FINISHED]
        for i in todo:   # what the job's run would refuse at its start, hours later in the queue
            RunFolder(points[i][1].output.dir).check_writable()
    except ConfigError as e:
        raise SystemExit(_fail(str(e))) from None
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if missing:   # before anything is cleared or written
        raise SystemExit(_fail(f"{' and '.join(missing)} not found on PATH: submit from a Slurm login node "
                               "(--dry-run prints the batch script anywhere)"))
    if base.output.overwrite:
        for _, cfg in points:
            RunFolder(cfg.output.dir).clear()
    for i in sorted(set(range(len(points))) - set(todo)):
        click.echo(f"already finished, not submitted: {where[i]}")
    if not todo:
        return
    jobs = submit(make_executor(os.path.join(folder, "%j"), params, python), folder, root, points, todo)
    for i, job in zip(todo, jobs):
        click.echo(f"submitted job {job.job_id}: {' '.join(map(shown, points[i][0])) or config} -> {where[i]}")
        # Rank 0's logs; rank r writes _r_log.out and _r_log.err beside them.
        click.echo(f"  logs: {job.paths.stdout}  {job.paths.stderr}")
    where = [where[i] for i in todo]
    click.echo(f"progress: python -m randopt_hpc.status {root}")
    if wait:
        raise SystemExit(wait_all(jobs, where))


def make_executor(folder: str, params: dict, python: str):
    import submitit

    ex = submitit.SlurmExecutor(folder=folder, python=python)
    ex.update_parameters(**params)
    return ex


def submit(ex, folder: str, root: str, points, todo: list[int]) -> list:
    """Write each point's resolved config (what the job will run, whatever happens to CONFIG later),
    submit points[todo], and record every point's job id ('finished' when not submitted) and folder
    in ROOT/launch.yaml for the status command and the analysis tools."""
    os.makedirs(os.path.join(folder, "configs"), exist_ok=True)
    paths = []
    for i, (_, cfg) in enumerate(points):
        paths.append(os.path.join(folder, "configs", f"{i:03d}.yaml"))
        with open(paths[-1], "w", encoding="utf-8") as f:
            f.write(to_yaml(cfg))
    with ex.batch():
        jobs = [ex.submit(RunJob(paths[i])) for i in todo]
    ids = dict(zip(todo, (j.job_id for j in jobs)))
    os.makedirs(root, exist_ok=True)
    record = [{"job_id": ids.get(i, "finished"), "overrides": extra, "output_dir": cfg.output.dir, "config": p}
              for i, ((extra, cfg), p) in enumerate(zip(points, paths))]
    with open(os.path.join(root, LAUNCH_YAML), "w", encoding="utf-8") as f:
        yaml.safe_dump(record, f, sort_keys=False)
    return jobs


def wait_all(jobs, where) -> int:
    failed = 0
    for job, path in zip(jobs, where):
        try:
            job.results()   # one per rank; results() waits for every task
            click.echo(f"job {job.job_id} finished: {path}")
        except Exception as e:   # submitit re-raises the job's failure; report each and go on
            failed += 1
            click.echo(f"randopt_hpc.launch: job {job.job_id} failed: {str(e).strip().splitlines()[-1]}", err=True)
    return 1 if failed else 0


def _fail(message: str) -> int:
    return cli_errors.fail("randopt_hpc.launch", message)


def main(argv: list[str] | None = None) -> int:
    try:
        return cli.main(args=argv, prog_name="python -m randopt_hpc.launch", standalone_mode=False)
    except SystemExit as e:   # the command's own errors and --wait's status
        return int(e.code or 0)


if __name__ == "__main__":
    # Run the imported module, not __main__: submitit pickles RunJob by reference to randopt_hpc.launch.
    from randopt_hpc.launch import main as _main

    sys.exit(_main())
