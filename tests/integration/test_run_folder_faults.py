"""The run folder under real mpiexec when things go wrong: a second run into a busy folder, kill -9 in the
middle of writing run.yaml, a shard line and results.h5, a stale lock, Ctrl-C, bad input on every rank.
Every rerun must equal an undisturbed run, leave no temporaries and hold each candidate once."""
from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from randopt_hpc.runfolder import RunFolder
from tests.conftest import assert_same_results, launch, write_config
from tests.integration.conftest import rank_pid

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference(two_rank_results):
    return two_rank_results


def _clean_and_whole(out, reference) -> None:
    """The folder after a successful rerun: the undisturbed results, no temporaries, no lock, each
    candidate once, no damaged shard line."""
    assert_same_results(reference, out / "results.h5")
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or p.name.startswith(".lock")], list(out.rglob("*"))
    folder = RunFolder(str(out))
    indices = sorted(r.index for r in folder.records() if r.kind == "candidate")
    assert indices == list(range(12))
    assert not any(scan.damaged for scan in folder.scan().values())


def _wait_for(predicate, seconds=240.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_second_run_into_a_busy_folder_exits_2_and_the_first_is_undisturbed(reference, tiny_model, tmp_path):
    out = tmp_path / "busy"
    cfg = write_config(tmp_path / "busy.yaml", tiny_model, out)
    first = launch(cfg, 2, popen=True)
    _wait_for(lambda: out.exists() and RunFolder(str(out)).count_done() >= 2)
    t0 = time.time()
    second = launch(cfg, 2, timeout=120)
    seconds = time.time() - t0
    assert second.returncode == 2, second.stderr[-2000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is in use by another run (pid" in lines[0], second.stderr
    assert seconds < 20, f"the second run took {seconds:.1f} s to refuse"
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err[-3000:]
    _clean_and_whole(out, reference)
    # The same config as a plain process is refused alike while a run holds the folder (one with every
    # candidate to evaluate again: with only the vote left it would load no model and be done in seconds).
    (out / "results.h5").unlink()
    shutil.rmtree(out / "shards")
    holder = launch(cfg, 2, popen=True)
    _wait_for(lambda: (out / ".lock").exists())
    serial = launch(cfg, None, timeout=120)
    assert serial.returncode == 2 and "is in use by another run" in serial.stderr
    holder.communicate(timeout=240)
    assert holder.returncode == 0
    _clean_and_whole(out, reference)


@pytest.mark.parametrize("fault", ["rank:0:kill:run.yaml", "rank:1:kill:shard", "rank:0:kill:results.h5"])
def test_kill_9_in_the_middle_of_a_write_then_rerun(fault, reference, tiny_model, tmp_path):
    out = tmp_path / "killed"
    cfg = write_config(tmp_path / "killed.yaml", tiny_model, out)
    p = launch(cfg, 2, env={"RANDOPT_FAULT": fault}, timeout=240)
    assert p.returncode != 0
    point = fault.rsplit(":", 1)[1]
    leftovers = sorted(x.name for x in out.rglob("*"))
    if point == "run.yaml":
        assert "run.yaml" not in leftovers and any(x.startswith("run.yaml.tmp-") for x in leftovers), leftovers
    elif point == "results.h5":
        assert "results.h5" not in leftovers and any(x.startswith("results.h5.tmp-") for x in leftovers), leftovers
    else:
        assert any(scan.damaged for scan in RunFolder(str(out)).scan().values())   # a torn line
    assert ".lock" in leftovers                     # rank 0's lock outlived the job: stale now
    again = launch(cfg, 2, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "took over the lock of a run that is gone" in again.stderr
    _clean_and_whole(out, reference)


@pytest.mark.parametrize("nproc", [2, None], ids=["mpiexec-2", "plain"])
def test_ctrl_c_stops_every_rank_at_a_boundary_with_130_and_a_rerun_resumes(nproc, reference, tiny_model, tmp_path):
    out = tmp_path / "ctrl-c"
    cfg = write_config(tmp_path / "ctrl-c.yaml", tiny_model, out)
    proc = launch(cfg, nproc, popen=True)
    _wait_for(lambda: out.exists() and RunFolder(str(out)).count_done() >= 3)
    pids = [rank_pid(str(cfg), r) for r in (0, 1)] if nproc else [proc.pid]
    for pid in pids:                                  # what a terminal's Ctrl-C sends to the job's processes
        os.kill(pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.count("SIGINT received; stopped before") == len(pids) and "Traceback" not in err
    assert not (out / ".lock").exists()               # a clean stop releases the folder
    again = launch(cfg, 2, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    _clean_and_whole(out, reference)


@pytest.mark.parametrize("overrides,field", [
    (["population.size=1e9"], "population.size"),
    (["runtime.threads=100000"], "runtime.threads"),
    (["task.train_size=1e9"], "task.train_size"),
    (["output.dir=/proc/randopt"], "output.dir"),
    (["runtime.stage_dir=/proc/randopt"], "runtime.stage_dir"),   # staging would have failed after MPI started
    (["runtime.device=cuda:63"], "runtime.device"),               # found by each rank once MPI runs: agreed on
])
def test_bad_input_on_every_rank_is_one_line_and_exit_2_before_mpi(overrides, field, tiny_model, tmp_path):
    cfg = write_config(tmp_path / "bad.yaml", tiny_model, tmp_path / "out")
    t0 = time.time()
    p = launch(cfg, 2, *overrides, timeout=60)
    assert p.returncode == 2 and time.time() - t0 < 30
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"randopt_hpc: error: {field}"), p.stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_where_the_results_go_is_refused_before_the_run(tiny_model, tmp_path):
    """results.h5 (written last) a folder: refused in one line before any candidate, not after all of them."""
    out = tmp_path / "out"
    (out / "results.h5").mkdir(parents=True)
    cfg = write_config(tmp_path / "dir.yaml", tiny_model, out)
    p = launch(cfg, 2, "output.overwrite=true", timeout=120)
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert lines[0] == f"randopt_hpc: error: output.dir: {out / 'results.h5'} is not a file; remove it or choose " \
                       "another output.dir"
    assert sorted(os.listdir(out)) == ["results.h5"]


def test_a_problem_on_one_rank_only_ends_every_rank_with_one_line(tiny_model, tmp_path):
    """A node-local check that fails on one rank alone (here its staging folder's variable is unset)
    must not leave the other ranks waiting in MPI_Init: the ranks agree after MPI starts, then all exit 2."""
    import subprocess
    import sys

    from tests.conftest import ROOT, child_env, mpiexec

    cfg = write_config(tmp_path / "one.yaml", tiny_model, tmp_path / "out")
    run = [sys.executable, "-m", "randopt_hpc.run", str(cfg), "runtime.stage_dir=$NODE_SCRATCH"]
    env = child_env(drop=("NODE_SCRATCH",))
    cmd = [mpiexec(), "-n", "1", "-env", "NODE_SCRATCH", str(tmp_path / "scratch"), *run, ":", "-n", "1", *run]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert time.time() - t0 < 60
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("randopt_hpc: error: runtime.stage_dir: ") and \
        "NODE_SCRATCH" in lines[0], p.stderr
    assert not (tmp_path / "out" / "run.yaml").exists() and not (tmp_path / "out" / ".lock").exists()
