"""The Slurm path against a real single-node Slurm (jobs/local-slurm.sh): the plain batch script,
a submitit job array from the launcher, and a job stopped by its warning signal that requeues itself."""
import os
import re
import subprocess
import sys
import time

import h5py
import pytest
import yaml

from randopt_hpc import results
from randopt_hpc.runfolder import LAUNCH_YAML, RunFolder
from tests.conftest import IN_CI, ROOT, assert_same_results, child_env, launch, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# Two ranks per job on the local node, no GPUs: what the launcher's GH200 defaults become here.
LOCAL = ["--site", "local", "--tasks-per-node", "2", "--gpus-per-task", "0", "--cpus-per-task", "1", "--time", "20"]


@pytest.fixture(scope="module")
def slurm():
    p = subprocess.run([str(ROOT / "jobs" / "local-slurm.sh"), "up"], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        message = f"no local Slurm (jobs/local-slurm.sh up: {(p.stderr or p.stdout).strip()[-500:]})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    """The config every Slurm test runs, and its results under `mpiexec -n 2`."""
    tmp = tmp_path_factory.mktemp("slurm")
    cfg = write_config(tmp / "run.yaml", tiny_model, tmp / "mpiexec", population={"size": 16})
    p = launch(cfg, 2)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp, cfg, tmp / "mpiexec" / "results.h5"


def run_launcher(*args, popen=False):
    cmd = [sys.executable, "-m", "randopt_hpc.launch", *args]
    env = child_env()
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def candidate_indices(out) -> list[int]:
    """Every candidate record across the shards, repeats included."""
    return sorted(r.index for r in RunFolder(str(out)).records() if r.kind == "candidate")


def sbatch(tmp, cfg, out, *flags):
    """jobs/gh200.sbatch with the local site's shape: 2 ranks, no GPUs."""
    env = child_env(SITE="local", PYTHON=sys.executable, RANDOPT_REPO=str(ROOT))
    return subprocess.run(["sbatch", *flags, "--parsable", "--partition=debug", "--ntasks-per-node=2",
                           "--cpus-per-task=1", "--gpus-per-task=0", "--overcommit", f"--output={tmp}/sbatch-%j.out",
                           "jobs/gh200.sbatch", str(cfg), f"output.dir={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_sbatch_two_ranks_equals_mpiexec(slurm, reference):
    tmp, cfg, ref = reference
    out = tmp / "sbatch"
    p = sbatch(tmp, cfg, out, "--wait")
    job = p.stdout.strip().split(";")[0]
    log = (tmp / f"sbatch-{job}.out").read_text() if job else ""
    assert p.returncode == 0, (p.stderr, log[-3000:])
    assert "[rank 0/2]" in log and "[rank 1/2]" in log and f"randopt: job {job} restart 0" in log
    assert_same_results(str(ref), str(out / "results.h5"))
    with h5py.File(out / "results.h5") as f:
        assert f.attrs["world_size"] == 2


def test_submitit_array_of_three_sweep_points(slurm, reference):
    tmp, cfg, _ = reference
    root = tmp / "sweep"
    p = run_launcher(str(cfg), f"output.dir={root}", *LOCAL, "--sweep", "population.seed=[1,2,3]", "--wait")
    assert p.returncode == 0, (p.stdout, p.stderr[-3000:])
    jobs = re.findall(r"submitted job (\d+_\d)", p.stdout)
    assert [j.split("_")[1] for j in jobs] == ["0", "1", "2"] and len({j.split("_")[0] for j in jobs}) == 1
    record = yaml.safe_load((root / LAUNCH_YAML).read_text())
    assert [r["job_id"] for r in record] == jobs
    seeds = []
    for i, r in enumerate(record):
        assert r["overrides"] == [f"population.seed={i + 1}"]
        path = os.path.join(r["output_dir"], "results.h5")
        assert f"job {jobs[i]} finished: {path}" in p.stdout
        with h5py.File(path) as f:
            results.check_schema(f, path)
            assert f.attrs["world_size"] == 2 and f["population/index"].shape == (16,)
            seeds.append(f["population/seed"][0])
    assert len(set(seeds)) == 3, "each point ran its own population"
    st = subprocess.run([sys.executable, "-m", "randopt_hpc.status", str(root)], capture_output=True, text=True,
                        timeout=60)
    assert st.returncode == 0 and "3/3 points finished" in st.stdout and st.stdout.count("16/16") == 3, st.stdout
    # The same sweep again (say, after some points failed): finished points are not submitted twice.
    again = run_launcher(str(cfg), f"output.dir={root}", *LOCAL, "--sweep", "population.seed=[1,2,3]")
    assert again.returncode == 0 and again.stdout.count("already finished, not submitted") == 3, again.stdout
    assert "submitted job" not in again.stdout


def test_warning_signal_requeues_and_the_result_equals_uninterrupted(slurm, reference):
    """The time-limit path end to end: USR2 (submitit's warning) reaches every rank mid-run; each
    stops at a candidate boundary, rank 0 runs `scontrol requeue`, the requeued job resumes from the
    shards and finishes with the uninterrupted result, every candidate evaluated once."""
    tmp, cfg, ref = reference
    out = tmp / "requeued"
    proc = run_launcher(str(cfg), f"output.dir={out}", *LOCAL, "--wait", popen=True)
    job, folder = None, RunFolder(str(out))
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and folder.count_done() >= 3:
            job = _job_id(out)
            subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=600)
    assert job, f"the run ended before it could be signalled: {stdout} {stderr[-2000:]}"
    assert proc.returncode == 0, (stdout, stderr[-3000:])
    logs = [p.read_text() for p in sorted((out / "slurm" / job).glob(f"{job}_[01]_log.err"))]   # one per rank
    assert len(logs) == 2 and all("SIGUSR2 received; stopped before candidate" in log for log in logs)
    assert f"requeueing Slurm job {job} (restart 1 of at most 10)" in logs[0]
    # Each rank ran twice: nothing done at the first start, at the second every rank's finished candidates.
    found = [[int(n) for n in re.findall(r"(\d+) with train answers already", log)] for log in logs]
    assert [f[0] for f in found] == [0, 0] and found[0][1] == found[1][1] >= 3, found
    assert_same_results(str(ref), str(out / "results.h5"))
    assert candidate_indices(out) == list(range(16))     # each once across the shards: nothing redone


def _job_id(out) -> str:
    return yaml.safe_load((out / LAUNCH_YAML).read_text())[0]["job_id"]


def test_scontrol_requeue_of_the_batch_script_resumes_and_equals_uninterrupted(slurm, reference):
    """Slurm's own requeue (as an admin or a preempting job would): SIGTERM to every task, each rank
    stops at a candidate boundary and exits 75, Slurm starts the job again, and it resumes."""
    tmp, cfg, ref = reference
    out = tmp / "scontrol"
    job = sbatch(tmp, cfg, out).stdout.strip().split(";")[0]
    assert job.isdigit()
    folder = RunFolder(str(out))
    deadline, asked = time.time() + 600, 0.0
    while time.time() < deadline and not (out.exists() and folder.count_done() >= 3):
        if time.time() - asked > 1:    # an RPC to slurmctld: not twenty a second on a two-core machine
            assert _state(job) in ("PENDING", "CONFIGURING", "RUNNING"), (tmp / f"sbatch-{job}.out").read_text()[-3000:]
            asked = time.time()
        time.sleep(0.05)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    while time.time() < deadline and _state(job) not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        time.sleep(1)
    log = (tmp / f"sbatch-{job}.out").read_text()
    assert _state(job) == "COMPLETED", log[-3000:]
    assert f"randopt: job {job} restart 0" in log and f"randopt: job {job} restart 1" in log
    assert log.count("SIGTERM received; stopped before candidate") == 2 and "Exited with exit code 75" in log
    assert_same_results(str(ref), str(out / "results.h5"))
    assert candidate_indices(out) == list(range(16))


def _state(job: str) -> str:
    """The job's state, asked up to five times: a busy slurmctld drops an RPC now and then ("Zero Bytes were
    transmitted or received"), which is no news about the job."""
    for _ in range(5):
        p = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60)
        found = re.search(r"JobState=(\w+)", p.stdout)
        if found:
            return found.group(1)
        time.sleep(1)
    return "UNKNOWN"
