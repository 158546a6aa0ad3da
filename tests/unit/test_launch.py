"""The Slurm launcher without Slurm: sweeps, site profiles, the batch script (golden file), staging,
and the pieces of the requeue path that need no scheduler."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from randopt_hpc import launch
from randopt_hpc.comm import Environment
from randopt_hpc.config import ConfigError
from randopt_hpc.stage import MARKER, stage_model, staged_path
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden" / "launch_gh200_dry_run.txt"
GOLDEN_CMD = ["configs/gh200-countdown.yaml", "--sweep", "population.seed=[0,1,2]", "--nodes", "8",
              "--account", "a123", "--dry-run", "--python", "python"]


def run_launch(*args):
    return subprocess.run([sys.executable, "-m", "randopt_hpc.launch", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_dry_run_for_gh200_matches_golden_file():
    """The batch script users submit is pinned: set UPDATE_GOLDEN=1 to rewrite it after a deliberate change."""
    p = run_launch(*GOLDEN_CMD)
    assert p.returncode == 0, p.stderr
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(p.stdout)
    assert p.stdout == GOLDEN.read_text()
    # The GH200 shape and the preemption wiring, spelled out so a golden rewrite cannot drop them unseen.
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --nodes=8", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --cpus-per-task=72", "#SBATCH --requeue",
                 "#SBATCH --signal=USR2@180", "#SBATCH --account=a123", "export RANDOPT_REQUEUE=10",
                 "python -m randopt_hpc.requeue $?"):
        assert line in p.stdout.splitlines() or any(x.startswith(line) for x in p.stdout.splitlines()), line
    assert "--kill-on-bad-exit=1" in p.stdout and "--mpi=" not in p.stdout       # Cray MPICH: Slurm's default
    assert "model.path /scratch/models/Qwen2.5-3B-Instruct is not on this machine" in p.stderr


@pytest.mark.parametrize("site,flag", [("openmpi", "--mpi=pmix"), ("mpich", "--mpi=pmi2"), ("local", "--mpi=pmi2")])
def test_site_profiles_choose_the_mpi_plugin(site, flag):
    p = run_launch("configs/gh200-countdown.yaml", "--site", site, "--dry-run")
    assert p.returncode == 0, p.stderr
    srun = [x for x in p.stdout.splitlines() if x.startswith("srun ")]
    assert len(srun) == 1 and flag in srun[0]
    assert ("#SBATCH --overcommit" in p.stdout) == (site == "local")
    assert "#SBATCH --array" not in p.stdout          # one run: one job, not an array


def test_every_site_file_loads_and_the_sbatch_script_knows_them():
    names = launch.site_names()
    assert {"cray-mpich", "openmpi", "mpich", "local"} <= set(names)
    for name in names:
        site = launch.Site.load(name)
        assert site.srun_mpi in ("", "pmix", "pmi2")
    assert launch.Site.load("openmpi").stage_dir == "$TMPDIR"     # expanded on the node, not here
    # jobs/gh200.sbatch sources the same files: bash must accept them as they are.
    for name in names:
        p = subprocess.run(["bash", "-c", f"set -eu; source jobs/sites/{name}.env; echo \"[$SRUN_MPI]\""],
                           cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout.strip() == f"[{launch.Site.load(name).srun_mpi}]", p.stderr


def test_sweep_is_the_product_with_the_first_key_slowest():
    pts = launch.parse_sweep(("population.seed=[0,1]", "population.sigmas=[[0.001],[0.001,0.002]]"))
    assert pts == [["population.seed=0", "population.sigmas=[0.001]"],
                   ["population.seed=0", "population.sigmas=[0.001, 0.002]"],
                   ["population.seed=1", "population.sigmas=[0.001]"],
                   ["population.seed=1", "population.sigmas=[0.001, 0.002]"]]
    assert launch.point_dir("/r", 3, pts[3]) == "/r/003-seed-1_sigmas-0.001_0.002"
    assert launch.point_dir("/r", 0, ['task.name="countdown_qa"']) == "/r/000-name-countdown_qa"


@pytest.mark.parametrize("args,message", [
    (("--sweep", "population.seed=3"), "--sweep 'population.seed=3': expected KEY=[v1,v2,...]"),
    (("--sweep", "population.seed=[]"), "expected KEY=[v1,v2,...]"),
    (("--sweep", "population.seed=[1]", "--sweep", "population.seed=[2]"), "--sweep population.seed: given twice"),
    (("--sweep", "population.sizes=[3]"), "population.sizes: unknown key; valid keys: population.size"),
    (("--sweep", "population.size=[128,0]"), "population.size: must be >= 1, got 0"),
    (("--nodez", "2"), "No such option '--nodez'; valid options: --account,"),
    (("--site", "nowhere"), "Invalid value for '--site'"),
    (("--nodes", "0"), "Invalid value for '--nodes'"),
])
def test_bad_launches_fail_with_one_line_before_submitting(args, message, tmp_path):
    p = run_launch("configs/demo.yaml", f"output.dir={tmp_path}/out", *args, "--dry-run")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("randopt_hpc.launch: error: ") and message in lines[0], p.stderr
    assert not (tmp_path / "out").exists()


def test_a_real_submission_needs_the_model_here(tmp_path):
    p = run_launch("configs/gh200-countdown.yaml", f"output.dir={tmp_path}/out")
    assert p.returncode == 2 and "model.path: not a directory" in p.stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_another_run_is_refused_before_submitting(tmp_path):
    from randopt_hpc.config import load_config, to_yaml

    out = tmp_path / "out"
    out.mkdir()
    other = load_config(str(ROOT / "configs" / "demo.yaml"), ["population.seed=5", f"output.dir={out}"])
    (out / "run.yaml").write_text(to_yaml(other))
    p = run_launch("configs/demo.yaml", f"output.dir={out}", "--site", "local")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "holds a run with another config (population.seed: 5 there, 0 here)" in p.stderr
    assert sorted(x.name for x in out.iterdir()) == ["run.yaml"]          # nothing written, nothing submitted


def test_resolved_points_have_their_own_folders_and_never_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
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


def test_requeue_step_passes_codes_through_and_requeues_only_a_stopped_slurm_job(capsys):
    from randopt_hpc import requeue

    assert requeue.main(["0"], {}) == 0 and requeue.main(["1"], {"SLURM_JOB_ID": "7", "RANDOPT_REQUEUE": "3"}) == 1
    assert requeue.main(["75"], {}) == 75
    assert "not requeued (RANDOPT_REQUEUE=0, restarts 0)" in capsys.readouterr().err
    spent = {"SLURM_JOB_ID": "7", "RANDOPT_REQUEUE": "2", "SLURM_RESTART_COUNT": "2"}
    assert requeue.main(["75"], spent) == 75
    # Asked to requeue, scontrol fails (no such job here, or no Slurm at all): say so, keep exit 75.
    assert requeue.main(["75"], {"SLURM_JOB_ID": "999999999", "RANDOPT_REQUEUE": "3", "PATH": os.environ["PATH"]}) == 75
    err = capsys.readouterr().err
    assert "requeueing Slurm job 999999999 (restart 1 of at most 3)" in err
    assert "scontrol requeue 999999999 failed" in err and "submit the same job again" in err
    assert requeue.main(["x"], {}) == 2


def test_world_size_mismatch_is_refused(tmp_path):
    """srun without the MPI plugin: every task would be a one-rank world acting as rank 0."""
    env = {**os.environ, "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}
    env.pop("RANDOPT_FAULT", None)
    p = subprocess.run([sys.executable, "-m", "randopt_hpc.run", "configs/demo.yaml", f"output.dir={tmp_path}/o"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "randopt_hpc: error: the launcher started 2 tasks but MPI sees a world of 1; srun needs the --mpi plugin "
        "of this MPI (pmi2: MPICH, pmix: Open MPI; jobs/sites/*.env)"]
    assert not (tmp_path / "o").exists()


def test_staging_copies_once_and_again_when_the_model_changes(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "weights.bin").write_bytes(b"\x01" * 1000)
    stage = tmp_path / "local"
    a = stage_model(str(src), str(stage))
    assert a == staged_path(str(src), str(stage)) and Path(a, MARKER).exists()
    assert Path(a, "weights.bin").read_bytes() == b"\x01" * 1000
    mtime = Path(a, "weights.bin").stat().st_mtime_ns
    assert stage_model(str(src), str(stage)) == a and Path(a, "weights.bin").stat().st_mtime_ns == mtime
    (src / "weights.bin").write_bytes(b"\x02" * 1001)
    b = stage_model(str(src), str(stage))
    assert b != a and Path(b, "weights.bin").read_bytes() == b"\x02" * 1001
    assert sorted(p.name for p in (stage / "randopt_hpc-models").iterdir()) == sorted([Path(a).name, Path(b).name])


def test_staging_folder_names_expand_environment_variables(tmp_path, monkeypatch):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    monkeypatch.setenv("NODE_SCRATCH", str(tmp_path / "scratch"))
    assert stage_model(str(src), "$NODE_SCRATCH").startswith(str(tmp_path / "scratch") + "/randopt_hpc-models/model-")
