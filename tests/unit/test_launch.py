"""The Slurm launcher without Slurm: sweeps, site profiles, the batch script (golden file), quoting,
and the pieces of the requeue path that need no scheduler. Commands run in-process through main();
two tests start the real `python -m randopt_hpc.launch` for its process contract (exit status 2, one
stderr line, nothing written)."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from randopt_hpc import dryrun, launch, requeue
from randopt_hpc.config import ConfigError, load_config, to_yaml
from randopt_hpc.environment import Environment
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden" / "launch_gh200_dry_run.txt"
# 8 nodes from the config's slurm: section (the golden file is the same with --nodes 8)
GOLDEN_CMD = ["configs/gh200-countdown.yaml", "--sweep", "population.seed=[0,1,2]",
              "--account", "a123", "--dry-run", "--python", "python"]
SITES = ["cray-mpich", "local", "mpich", "openmpi"]


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)      # configs/... as users write it; the dry run echoes the path as given


@pytest.fixture
def no_slurm(tmp_path, monkeypatch):
    """A PATH with no sbatch, srun or anything else, whatever this machine has installed."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return str(empty)


def run_launch(*args, env=None):
    return subprocess.run([sys.executable, "-m", "randopt_hpc.launch", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


def test_dry_run_for_gh200_matches_golden_file_without_slurm(at_root, no_slurm, capsys):
    """The batch script users submit is pinned: set UPDATE_GOLDEN=1 to rewrite it after a deliberate change.
    It comes from submitit's own submission path, run against stand-ins: no Slurm on PATH."""
    assert launch.main(GOLDEN_CMD) == 0
    out, err = capsys.readouterr()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(out)
    assert out == GOLDEN.read_text()
    # The GH200 shape and the preemption wiring, spelled out so a golden rewrite cannot drop them unseen.
    lines = out.splitlines()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --nodes=8", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --cpus-per-task=72", "#SBATCH --requeue",
                 "#SBATCH --signal=USR2@180", "#SBATCH --account=a123", "export RANDOPT_REQUEUE=10",
                 "python -m randopt_hpc.requeue $?"):
        assert line in lines, line
    assert "--kill-on-bad-exit=1" in out and "--mpi=" not in out       # Cray MPICH: Slurm's default
    assert "/tmp" not in out and "randopt-dry-run" not in out           # the stand-in folder is renamed
    assert err.splitlines() == [
        "randopt_hpc.launch: note: not on this machine: model.path /scratch/models/Qwen2.5-3B-Instruct, task.data "
        "/scratch/data/countdown.json; the model, tokenizer, data and memory checks are skipped"]


def test_a_dry_run_that_submitit_refuses_says_why_in_one_line(tmp_path):
    with pytest.raises(RuntimeError) as e:
        dryrun.script(str(tmp_path / "s"), {"time": 5, "gpus_per_nodes": 4}, "python", 1)
    assert "--dry-run: submitit failed" in str(e.value) and "\n" not in str(e.value)
    assert "ValueError: Unavailable parameter(s): ['gpus_per_nodes']" in str(e.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("site,flag", [("openmpi", "--mpi=pmix"), ("mpich", "--mpi=pmi2"), ("local", "--mpi=pmi2")])
def test_site_profiles_choose_the_mpi_plugin(site, flag, at_root, tmp_path, capsys):
    assert launch.main(["configs/gh200-countdown.yaml", "--site", site, "--folder", str(tmp_path / "s"),
                        "--dry-run"]) == 0
    out = capsys.readouterr().out
    srun = [x for x in out.splitlines() if x.startswith("srun ")]
    assert len(srun) == 1 and flag in srun[0]
    assert f"--output {tmp_path}/s/%j/%j_%t_log.out" in srun[0]          # --folder, one job: %j, not %A_%a
    assert ("#SBATCH --overcommit" in out) == (site == "local")
    assert "#SBATCH --array" not in out          # one run: one job, not an array
    assert not (tmp_path / "s").exists()         # a dry run writes nothing


def test_every_site_file_loads_and_the_sbatch_script_knows_them():
    names = launch.site_names()
    assert names == SITES == sorted(p.stem for p in (ROOT / "randopt_hpc" / "sites").glob("*.env"))
    for name in names:
        assert launch.Site.load(name).srun_mpi in ("", "pmix", "pmi2")
    assert launch.Site.load("openmpi").stage_dir == "$TMPDIR"     # expanded on the node, not here
    # jobs/gh200.sbatch sources the same files from the checkout: bash must accept them as they are.
    for name in names:
        p = subprocess.run(["bash", "-c", f"set -eu; source randopt_hpc/sites/{name}.env; echo \"[$SRUN_MPI]\""],
                           cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout.strip() == f"[{launch.Site.load(name).srun_mpi}]", p.stderr
    p = subprocess.run(["bash", "jobs/gh200.sbatch", "configs/demo.yaml"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "SITE": "nowhere", "RANDOPT_REPO": str(ROOT)})
    assert p.returncode == 2
    assert p.stderr.strip().endswith(f"randopt_hpc/sites/nowhere.env; valid: {' '.join(SITES)}"), p.stderr


def test_a_site_is_read_when_the_command_runs_and_a_bad_profile_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine.env").write_text("# a site of one's own\nSRUN_MPI=pmix\nSTAGE_DIR='$SCRATCH'\n")
    (tmp_path / "broken.env").write_text("SRUN_MPI=pmi2\nNODES=4\n")
    monkeypatch.setattr(launch, "_sites", lambda: tmp_path)
    cfg = str(ROOT / "configs" / "demo.yaml")
    assert launch.main([cfg, f"output.dir={tmp_path}/out", "--site", "mine", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert 'runtime.stage_dir="$SCRATCH"' in out and "--mpi=pmix" in out
    assert launch.main([cfg, f"output.dir={tmp_path}/out", "--site", "broken", "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "randopt_hpc.launch: error: Invalid value for '--site': randopt_hpc/sites/broken.env:2: expected KEY=value "
        "with KEY one of SRUN_MPI, MODULES, SETUP, STAGE_DIR, PARTITION, OVERCOMMIT"]
    assert launch.main([cfg, "--site", "cray-mpich", "--dry-run"]) == 2
    assert "no site 'cray-mpich'; valid sites: broken, mine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sweep_is_the_product_with_the_first_key_slowest():
    pts = launch.parse_sweep(("population.seed=[0,1]", "population.sigmas=[[0.001],[0.001,0.002]]"))
    assert pts == [["population.seed=0", "population.sigmas=[0.001]"],
                   ["population.seed=0", "population.sigmas=[0.001, 0.002]"],
                   ["population.seed=1", "population.sigmas=[0.001]"],
                   ["population.seed=1", "population.sigmas=[0.001, 0.002]"]]
    assert launch.point_dir("/r", 3, pts[3]) == "/r/003-seed-1_sigmas-0.001_0.002"
    assert launch.point_dir("/r", 0, ['task.name="countdown_qa"']) == "/r/000-name-countdown_qa"
    # YAML 1.1 reads 1e-3 as a string: the override keeps it (the config reads it as a number), a listing shows it
    pts = launch.parse_sweep(("population.sigmas=[1e-3,[1e-3,2e-3]]",))
    assert pts == [['population.sigmas="1e-3"'], ['population.sigmas=["1e-3", "2e-3"]']]
    assert [launch.shown(p[0]) for p in pts] == ["population.sigmas=0.001", "population.sigmas=[0.001, 0.002]"]
    assert launch.point_dir("/r", 1, pts[1]) == "/r/001-sigmas-1e-3_2e-3"           # folders as before
    assert load_config(DEMO, pts[1], check_paths=False).population.sigmas == (1e-3, 2e-3)
    assert launch.shown('task.name="countdown_qa"') == 'task.name="countdown_qa"'


@pytest.mark.parametrize("args,message", [
    (("--sweep", "population.seed=3"), "--sweep 'population.seed=3': expected KEY=[v1,v2,...]"),
    (("--sweep", "population.seed=[]"), "expected KEY=[v1,v2,...]"),
    (("--sweep", "population.seed=[1]", "--sweep", "population.seed=[2]"), "--sweep population.seed: given twice"),
    (("--sweep", "population.sizes=[3]"), "population.sizes: unknown key"),
    (("--sweep", "population.size=[128,0]"), "population.size: must be in [1, 1,000,000], got 0"),
    (("--nodez", "2"), "No such option '--nodez'; valid options: --account,"),
    (("--site", "nowhere"), f"Invalid value for '--site': no site 'nowhere'; valid sites: {', '.join(SITES)}"),
    (("--nodes", "0"), "Invalid value for '--nodes'"),
    (("--gpu-gib", "nan"), "Invalid value for '--gpu-gib': 'nan' is not a finite number"),
    (("--max-requeues", "10" * 12), "Invalid value for '--max-requeues'"),
    (("--time", "5", "--signal-delay", "600"), "--signal-delay: 600 s is not less than the time limit (5 min)"),
    (("--folder", "configs/demo.yaml"), "configs/demo.yaml: exists and is not a folder"),
    (("--sweep", "slurm.nodes=[1,2]"), "--sweep slurm.nodes: a job array has one Slurm request"),
    (("slurm.account=a;b",), "slurm.account: 'a;b' would be written into an #SBATCH line"),
    (("--nodes", "40"), "slurm.nodes: 160 ranks (40 nodes × 4) for population.size 128: 32 ranks would have no "
                        "candidate"),
])
def test_bad_launches_fail_with_one_line_before_submitting(args, message, at_root, tmp_path, capsys):
    assert launch.main(["configs/demo.yaml", f"output.dir={tmp_path}/out", *args, "--dry-run"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("randopt_hpc.launch: error: ") and message in lines[0], err
    assert out == "" and not (tmp_path / "out").exists()


def test_the_process_exits_2_with_one_line_for_a_bad_site(tmp_path):
    p = run_launch("configs/demo.yaml", f"output.dir={tmp_path}/out", "--site", "nowhere")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == ["randopt_hpc.launch: error: Invalid value for '--site': no site 'nowhere'; "
                                     f"valid sites: {', '.join(SITES)}"]
    assert not (tmp_path / "out").exists()


def test_a_real_submission_without_slurm_is_one_line_and_clears_nothing(tmp_path):
    """output.overwrite=true would clear the folder: not before Slurm is known to be there."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.yaml").write_text(to_yaml(load_config(str(ROOT / "configs" / "demo.yaml"), [f"output.dir={out}"])))
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    p = run_launch("configs/demo.yaml", f"output.dir={out}", "output.overwrite=true", "--site", "local",
                   env={**os.environ, "PATH": str(empty)})
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == ["randopt_hpc.launch: error: sbatch and srun not found on PATH: submit from a "
                                     "Slurm login node (--dry-run prints the batch script anywhere)"]
    assert sorted(x.name for x in out.iterdir()) == ["run.yaml"]


def test_a_real_submission_needs_the_model_here(at_root, tmp_path, capsys):
    assert launch.main(["configs/gh200-countdown.yaml", f"output.dir={tmp_path}/out"]) == 2
    assert "model.path: not a directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_another_run_is_refused_before_submitting(at_root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    other = load_config(str(ROOT / "configs" / "demo.yaml"), ["population.seed=5", f"output.dir={out}"])
    (out / "run.yaml").write_text(to_yaml(other))
    assert launch.main(["configs/demo.yaml", f"output.dir={out}", "--site", "local"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run with another config (population.seed: 5 there, 0 here" in err
    assert sorted(x.name for x in out.iterdir()) == ["run.yaml"]          # nothing written, nothing submitted


def test_resolved_points_have_their_own_folders_and_never_overwrite(at_root):
    site = launch.Site.load("mpich")
    base, root, pts = launch.resolve_points("configs/demo.yaml", ("output.dir=runs/x", "output.overwrite=true"),
                                            ("population.seed=[4,5]",), site, check_paths=True)
    assert root == str(ROOT / "runs" / "x") and base.output.overwrite
    for i, (extra, cfg) in enumerate(pts):
        assert extra == [f"population.seed={4 + i}"] and cfg.population.seed == 4 + i
        assert cfg.output.dir == f"{root}/{i:03d}-seed-{4 + i}" and not cfg.output.overwrite
        assert cfg.model.path == "models/demo" and cfg.runtime.stage_dir == "$TMPDIR"   # as in the config
    with pytest.raises(ConfigError, match="--sweep"):
        launch.resolve_points("configs/demo.yaml", (), ("population.seed",), site, check_paths=True)


def test_requeue_is_asked_only_inside_slurm_and_within_the_limit():
    env = lambda **kw: Environment.from_os({k: str(v) for k, v in kw.items()})   # noqa: E731
    assert not env().should_requeue
    assert not env(RANDOPT_REQUEUE=3).should_requeue                          # not a Slurm job
    assert env(SLURM_JOB_ID=7, RANDOPT_REQUEUE=3).should_requeue
    assert env(SLURM_JOB_ID=7, RANDOPT_REQUEUE=3, SLURM_RESTART_COUNT=2).should_requeue
    assert not env(SLURM_JOB_ID=7, RANDOPT_REQUEUE=3, SLURM_RESTART_COUNT=3).should_requeue
    assert not env(SLURM_JOB_ID=7).should_requeue                             # plain sbatch without it
    assert env(SLURM_JOB_ID=7).requeue_id == "7"
    # the last array task has the array's own id: requeueing that would requeue every task
    assert env(SLURM_JOB_ID=32, SLURM_ARRAY_JOB_ID=32, SLURM_ARRAY_TASK_ID=2).requeue_id == "32_2"


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """A stand-in `scontrol` first on PATH (requeue runs it with subprocess, which reads PATH): it
    records its arguments and exits with the given status."""
    bin_, calls = tmp_path / "bin", tmp_path / "scontrol-calls"
    bin_.mkdir()
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")

    def make(rc: int = 0, stderr: str = "") -> Path:
        exe = bin_ / "scontrol"
        exe.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(calls))}\necho {shlex.quote(stderr)} >&2\n'
                       f"exit {rc}\n")
        exe.chmod(0o755)
        return calls
    return make


def test_requeue_step_passes_codes_through_and_asks_nothing_it_may_not(scontrol, capsys):
    calls = scontrol()
    assert requeue.main(["0"], {}) == 0 and requeue.main(["1"], {"SLURM_JOB_ID": "7", "RANDOPT_REQUEUE": "3"}) == 1
    assert requeue.main(["75"], {}) == 75
    assert "not requeued (RANDOPT_REQUEUE=0, restarts 0)" in capsys.readouterr().err
    assert requeue.main(["75"], {"SLURM_JOB_ID": "7", "RANDOPT_REQUEUE": "2", "SLURM_RESTART_COUNT": "2"}) == 75
    capsys.readouterr()
    for bad in (["x"], ["300"], ["9" * 20], ["\u0663"], [], ["75", "75"]):   # srun's status is 0..255, given once
        assert requeue.main(bad, {"SLURM_JOB_ID": "7", "RANDOPT_REQUEUE": "3"}) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("randopt_hpc.requeue: error: expected one argument"), err
    assert not calls.exists()


def test_requeue_step_requeues_a_stopped_slurm_job_and_then_exits_0(scontrol, capsys):
    calls = scontrol()
    assert requeue.main(["75"], {"SLURM_JOB_ID": "7", "RANDOPT_REQUEUE": "3"}) == 0
    assert requeue.main(["75"], {"SLURM_JOB_ID": "32", "SLURM_ARRAY_JOB_ID": "32", "SLURM_ARRAY_TASK_ID": "2",
                                 "RANDOPT_REQUEUE": "3", "SLURM_RESTART_COUNT": "1"}) == 0
    assert calls.read_text().splitlines() == ["requeue 7", "requeue 32_2"]
    err = capsys.readouterr().err
    assert "requeueing Slurm job 7 (restart 1 of at most 3)" in err and "(restart 2 of at most 3)" in err


def test_requeue_step_keeps_exit_75_when_scontrol_fails(scontrol, capsys):
    calls = scontrol(rc=1, stderr="scontrol: error: Invalid job id specified")
    assert requeue.main(["75"], {"SLURM_JOB_ID": "999", "RANDOPT_REQUEUE": "3"}) == 75
    assert calls.read_text().splitlines() == ["requeue 999"]
    assert ("scontrol requeue 999 failed (scontrol: error: Invalid job id specified); submit the same job again "
            "to resume") in capsys.readouterr().err


@pytest.mark.slow   # a fresh interpreter importing torch: seconds
def test_world_size_mismatch_is_refused(tmp_path):
    """srun without the MPI plugin: every task would be a one-rank world acting as rank 0."""
    env = {**os.environ, "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}
    env.pop("RANDOPT_FAULT", None)
    p = subprocess.run([sys.executable, "-m", "randopt_hpc.run", "configs/demo.yaml", f"output.dir={tmp_path}/o"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "randopt_hpc: error: the launcher started 2 tasks but MPI sees a world of 1; srun needs the --mpi plugin "
        "of this MPI (pmi2: MPICH, pmix: Open MPI; "), p.stderr
    assert "sites/*.env)" in lines[0]
    assert not (tmp_path / "o").exists()



# Values that reach a batch script: each is quoted (and the generated lines, run with bash and stand-ins
# for srun and python, start only the intended program) or refused in one line before anything is written.

DEMO = str(ROOT / "configs" / "demo.yaml")
INJECTIONS = [";touch pwned", "$(touch pwned)", "`touch pwned`"]


def stand_in(path: Path, log: Path, rc: int = 0) -> Path:
    """An executable at PATH that appends its argv (argv[0] as the path run) to LOG as a JSON line, then exits RC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport json, sys\nwith open({str(log)!r}, 'a') as f:\n"
                    f"    f.write(json.dumps(sys.argv) + '\\n')\nsys.exit({rc})\n")
    path.chmod(0o755)
    return path


def calls(log: Path) -> list[list[str]]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def script_of(out: str) -> str:
    """The batch script in a dry run's output, after the launcher's own comment lines."""
    return out[out.index("#!/bin/bash\n"):]


def run_script(script: str, tmp_path: Path, bin_: Path) -> subprocess.CompletedProcess:
    """The batch script run by bash in an empty folder, the stand-ins first on PATH and the system after them
    (so an injected `touch pwned` would run, and leave its file there)."""
    job = tmp_path / "job"
    job.mkdir()
    (tmp_path / "job.sh").write_text(script)
    p = subprocess.run(["bash", str(tmp_path / "job.sh")], cwd=job, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"})
    assert list(job.iterdir()) == [], "the script ran something that wrote here"
    return p


@pytest.mark.parametrize("where", ["on PATH", "a path"])
@pytest.mark.parametrize("name", ["my python", *(f"python{x}" for x in INJECTIONS)])
def test_python_is_one_quoted_word_and_the_script_runs_only_it(name, where, tmp_path, capsys):
    bin_, log, folder = tmp_path / "bin", tmp_path / "calls.jsonl", tmp_path / "s"
    srun = stand_in(bin_ / "srun", log, rc=75)
    py = stand_in(bin_ / name if where == "on PATH" else tmp_path / "my env" / name, log)
    given = name if where == "on PATH" else str(py)
    assert launch.main([DEMO, f"output.dir={tmp_path}/out", "--site", "local", "--folder", str(folder),
                        "--python", given, "--dry-run"]) == 0
    script = script_of(capsys.readouterr().out)
    p = run_script(script, tmp_path, bin_)           # first: it asserts that nothing injected ran
    assert p.returncode == 0, p.stderr
    assert calls(log) == [
        [str(srun), "--unbuffered", "--output", f"{folder}/%j/%j_%t_log.out", "--error", f"{folder}/%j/%j_%t_log.err",
         "--mpi=pmi2", "--kill-on-bad-exit=1", given, "-u", "-m", "submitit.core._submit", f"{folder}/%j"],
        [str(py), "-m", "randopt_hpc.requeue", "75"]]          # srun's status reaches the requeue step
    word = shlex.quote(given)
    assert word != given and f" {word} -u -m submitit.core._submit {folder}/%j\n" in script
    assert script.rstrip().splitlines()[-1] == f"{word} -m randopt_hpc.requeue $?"


def test_an_empty_python_is_refused(tmp_path, capsys):
    assert launch.main([DEMO, f"output.dir={tmp_path}/out", "--python", " ", "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "randopt_hpc.launch: error: Invalid value for '--python': an empty name; give the compute nodes' Python "
        "executable"]


@pytest.mark.parametrize("option", ["--job-name", "--account", "--partition", "--qos"])
@pytest.mark.parametrize("value", ["a b", *(f"x{i}" for i in INJECTIONS), "x\n#SBATCH --uid=0", "a\\b", "x'y"])
def test_sbatch_values_that_need_quoting_are_refused_in_one_line(option, value, tmp_path, capsys):
    """sbatch reads #SBATCH lines with its own parser: Slurm 22.05 drops backslashes even in single quotes,
    and a newline, quoted or not, ends the #SBATCH line and starts one that bash runs."""
    assert launch.main([DEMO, f"output.dir={tmp_path}/out", option, value, "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"randopt_hpc.launch: error: Invalid value for '{option}': {value!r} would be written into an #SBATCH line, "
        "which takes no shell quoting: use letters, digits and _@%+=:,./- only"]
    assert not (tmp_path / "out").exists()


def test_sbatch_values_that_need_no_quoting_are_written_as_given(tmp_path, no_slurm, capsys):
    values = {"--job-name": "rand-opt_v1.2@x+y%z", "--account": "proj:a=b", "--partition": "gpu,debug",
              "--qos": "high"}
    assert launch.main([DEMO, f"output.dir={tmp_path}/out", "--folder", str(tmp_path / "s"), "--dry-run",
                        *(x for kv in values.items() for x in kv)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for option, value in values.items():
        assert f"#SBATCH {option}={value}" in lines
    assert launch.main([DEMO, f"output.dir={tmp_path}/out", "--job-name", ""]) == 2      # a real submission
    assert "Invalid value for '--job-name': '' would be written" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "s").exists()


def test_a_site_partition_that_needs_quoting_is_refused_and_srun_mpi_is_quoted(tmp_path, monkeypatch, capsys):
    """Site profiles are trusted package files, yet what they give for #SBATCH and srun lines is checked or quoted
    the same way (MODULES and SETUP are shell by design and go in as written)."""
    sites, bin_, log = tmp_path / "sites", tmp_path / "bin", tmp_path / "calls.jsonl"
    sites.mkdir()
    (sites / "bad.env").write_text("PARTITION='gpu;touch pwned'\n")
    (sites / "odd.env").write_text("SRUN_MPI='pmi2;touch pwned'\nPARTITION=debug\n")
    monkeypatch.setattr(launch, "_sites", lambda: sites)
    assert launch.main([DEMO, f"output.dir={tmp_path}/out", "--site", "bad", "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "randopt_hpc.launch: error: Invalid value for '--site': randopt_hpc/sites/bad.env: PARTITION='gpu;touch pwned' "
        "would be written into an #SBATCH line, which takes no shell quoting: use letters, digits and _@%+=:,./- only"]
    assert launch.main([DEMO, f"output.dir={tmp_path}/out", "--site", "odd", "--python", "python", "--dry-run"]) == 0
    script = script_of(capsys.readouterr().out)
    assert "#SBATCH --partition=debug" in script and " '--mpi=pmi2;touch pwned' " in script
    srun, py = stand_in(bin_ / "srun", log), stand_in(bin_ / "python", log)
    assert run_script(script, tmp_path, bin_).returncode == 0
    srun_argv, py_argv = calls(log)
    assert srun_argv[0] == str(srun) and "--mpi=pmi2;touch pwned" in srun_argv and "pwned" not in srun_argv
    assert py_argv == [str(py), "-m", "randopt_hpc.requeue", "0"]


@pytest.mark.parametrize("name", ["my runs", "runs;touch pwned", "runs$(touch pwned)", "runs`id`", "100%j", "a\nb"])
def test_a_folder_that_sbatch_could_not_read_back_is_refused(name, tmp_path, capsys):
    """The folder goes into #SBATCH --output/--error (and % is Slurm's and submitit's pattern character): the dry
    run's text replacement of its stand-in folder is then faithful, since neither name is ever quoted."""
    folder = tmp_path / name
    assert launch.main([DEMO, f"output.dir={tmp_path}/out", "--folder", str(folder), "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"randopt_hpc.launch: error: --folder: {str(folder)!r} would be written into #SBATCH lines, which take no "
        "shell quoting: use a folder whose path has letters, digits and _@+=:,./- only (--folder sets it apart "
        "from output.dir)"]
    out = folder / "out"           # the default folder, OUTPUT.DIR/slurm: the same, and output.dir is named
    assert launch.main([DEMO, f"output.dir={json.dumps(str(out))}", "--site", "local"]) == 2     # a real submission
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"randopt_hpc.launch: error: --folder (default OUTPUT.DIR/slurm, from output.dir): {str(out / 'slurm')!r} "
        "would be written into #SBATCH lines"), err
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="cannot be written into #SBATCH lines"):
        dryrun.script(str(folder), {"time": 5}, "python", 1)


def test_config_path_overrides_and_output_dir_never_reach_the_script(tmp_path, capsys):
    """They go into the resolved config each job reads; with a plain --folder such an output.dir is fine."""
    config = tmp_path / "my configs $(touch pwned)" / "demo `touch pwned`.yaml"
    config.parent.mkdir()
    config.write_text(Path(DEMO).read_text())
    out = tmp_path / "my runs;touch pwned"
    assert launch.main([str(config), f"output.dir={json.dumps(str(out))}", 'task.template="Q: $(touch pwned) {numbers} '
                        '{target} A:"', "--sweep", "population.seed=[1,2]", "--site", "local", "--folder",
                        str(tmp_path / "s"), "--python", "python", "--dry-run"]) == 0
    script = script_of(capsys.readouterr().out)
    assert "#SBATCH --array=0-1%2" in script
    assert "my " not in script and "pwned" not in script and "Q:" not in script


def test_gh200_sbatch_takes_only_a_site_name(tmp_path):
    evil = tmp_path / "evil.env"
    evil.write_text("touch pwned\n")
    job = tmp_path / "job"
    job.mkdir()
    site = os.path.relpath(tmp_path / "evil", ROOT / "randopt_hpc" / "sites")
    p = subprocess.run(["bash", str(ROOT / "jobs" / "gh200.sbatch"), "configs/demo.yaml"], cwd=job, capture_output=True,
                       text=True, env={**os.environ, "SITE": site, "RANDOPT_REPO": str(ROOT)})
    assert p.returncode == 2 and f"SITE={site}: no " in p.stderr and list(job.iterdir()) == []


@pytest.mark.parametrize("site,python,repo", [("local", None, None), ("mpich", "my env/py;thon", "my repo")])
def test_gh200_sbatch_passes_config_overrides_and_python_as_given(site, python, repo, tmp_path):
    bin_, log, job = tmp_path / "bin", tmp_path / "calls.jsonl", tmp_path / "job"
    job.mkdir()
    srun = stand_in(bin_ / "srun", log, rc=75)
    py = stand_in(bin_ / "python" if python is None else tmp_path / python, log)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env.update(PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}", SITE=site, RANDOPT_REPO=str(ROOT), SLURM_JOB_ID="7",
               SLURM_JOB_NUM_NODES="1")
    if python:
        env["PYTHON"] = str(py)
    if repo:      # the checkout the profiles are read from, in a folder with a space
        (tmp_path / repo / "randopt_hpc").mkdir(parents=True)
        (tmp_path / repo / "randopt_hpc" / "sites").symlink_to(ROOT / "randopt_hpc" / "sites")
        env["RANDOPT_REPO"] = str(tmp_path / repo)
    config = str(tmp_path / "my configs" / "run 1;touch pwned.yaml")
    overrides = ["output.dir=out $(touch pwned)", "task.name=`touch pwned`;touch pwned", "population.seed=1"]
    p = subprocess.run(["bash", str(ROOT / "jobs" / "gh200.sbatch"), config, *overrides], cwd=job, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    stage = ["runtime.stage_dir=$TMPDIR"] if site == "mpich" else []          # expanded on the node, by the run
    word = "python" if python is None else str(py)
    assert calls(log) == [
        [str(srun), "--mpi=pmi2", "--kill-on-bad-exit=1", "--cpu-bind=cores", word, "-m", "randopt_hpc.run", config,
         *stage, *overrides],
        [str(py), "-m", "randopt_hpc.requeue", "75"]]
    assert list(job.iterdir()) == []


# randopt_hpc.check before every submission; the slurm: section and its flags; what a submission prints.

def test_a_model_the_backend_cannot_run_is_refused_before_anything_is_written(tmp_path_factory, tmp_path, no_slurm,
                                                                             capsys):
    from tests.unit.test_check import GPT2, gpt2_model

    out, model = tmp_path / "out", gpt2_model(tmp_path_factory)
    capsys.readouterr()      # what building the model printed
    args = [str(ROOT / "configs" / "gh200-countdown.yaml"), f"model.path={model}", "task.data=null",
            f"output.dir={out}"]
    for dry in (["--dry-run"], []):          # a real submission: refused before sbatch is looked for
        assert launch.main([*args, *dry]) == 2
        o, err = capsys.readouterr()
        assert o == "" and len(err.splitlines()) == 1, err
        assert err.startswith(f"randopt_hpc.launch: error: {GPT2} (supported: llama, ")
        assert not out.exists()


def test_the_slurm_section_is_the_request_and_flags_override_it(tmp_path, capsys):
    args = [DEMO, f"output.dir={tmp_path}/out", "--folder", str(tmp_path / "s"), "--dry-run",
            "slurm.nodes=2", "slurm.tasks_per_node=3", "slurm.time=30", "slurm.account=acct", "slurm.gpus_per_task=0"]
    assert launch.main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].endswith("one job, 6 MPI ranks each, site cray-mpich")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=3", "#SBATCH --time=30", "#SBATCH --account=acct",
                 "#SBATCH --cpus-per-task=72"):
        assert line in lines, line
    assert "--gpus-per-task" not in out
    assert any(x.startswith("# memory per rank: weights 4.") for x in lines)        # models/demo is here
    assert launch.main([*args, "--nodes", "5", "--account", "mine", "--gpus-per-task", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line in ("#SBATCH --nodes=5", "#SBATCH --ntasks-per-node=3", "#SBATCH --account=mine",
                 "#SBATCH --gpus-per-task=1"):
        assert line in lines, line
    assert launch.main([DEMO, f"output.dir={tmp_path}/out", "--dry-run", "--threads"]) == 2   # no such flag
    assert launch.main([DEMO, f"output.dir={tmp_path}/out", "--dry-run", "runtime.threads=73"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "randopt_hpc.launch: error: runtime.threads: 73 threads per rank, but slurm.cpus_per_task gives each rank 72 "
        "CPUs")
    assert not (tmp_path / "out").exists() and not (tmp_path / "s").exists()


def test_a_submission_prints_each_jobs_real_log_paths(tmp_path, monkeypatch, capsys):
    """sbatch and srun stand-ins on PATH: submitit's own submission, the job id the stand-in gives."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "sbatch").write_text('#!/bin/sh\necho "Submitted batch job 4242"\n')
    (bin_ / "srun").write_text("#!/bin/sh\nexit 1\n")
    for exe in bin_.iterdir():
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    assert launch.main([DEMO, f"output.dir={out}", "--site", "local", "--gpus-per-task", "0", "--python", "python",
                        "--sweep", "population.sigmas=[1e-2,[1e-2,2e-2]]"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"submitted job 4242_0: population.sigmas=0.01 -> {out}/000-sigmas-1e-2/results.h5",
        f"  logs: {out}/slurm/4242_0/4242_0_0_log.out  {out}/slurm/4242_0/4242_0_0_log.err",
        f"submitted job 4242_1: population.sigmas=[0.01, 0.02] -> {out}/001-sigmas-1e-2_2e-2/results.h5",
        f"  logs: {out}/slurm/4242_1/4242_1_0_log.out  {out}/slurm/4242_1/4242_1_0_log.err",
        f"progress: python -m randopt_hpc.status {out}"]
    resolved = load_config(str(out / "slurm" / "configs" / "001.yaml"))
    assert resolved.population.sigmas == (1e-2, 2e-2) and resolved.slurm.gpus_per_task == 0   # the request it ran

