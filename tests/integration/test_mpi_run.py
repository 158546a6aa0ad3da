"""The main job under real mpiexec: determinism across rank counts, resume after SIGKILL, fault abort."""
import json
import os
import re
import signal
import time

import h5py
import pytest

from randopt_hpc.runfolder import RunFolder
from tests.conftest import assert_same_results, launch, write_config
from tests.integration.conftest import rank_pid

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """The same config on 1, 2 and 3 ranks and as a plain process, and on 2 and 3 ranks with candidates and test
    parts dealt by the shared counter (runtime.schedule: dynamic)."""
    tmp = tmp_path_factory.mktemp("runs")
    out = {}
    for name, nproc in (("np1", 1), ("np2", 2), ("np3", 3), ("serial", None), ("dyn2", 2), ("dyn3", 3)):
        cfg = write_config(tmp / f"{name}.yaml", tiny_model, tmp / name,
                           runtime={"schedule": "dynamic" if name.startswith("dyn") else "strided"})
        p = launch(cfg, nproc)
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = (tmp / name / "results.h5", p.stderr, p.stdout)
    return out


def test_identical_results_on_1_2_3_ranks(runs):
    ref = str(runs["np1"][0])
    for name in ("np2", "np3", "serial", "dyn2", "dyn3"):
        assert_same_results(ref, str(runs[name][0]))
    with h5py.File(ref) as f:
        scores = f["population/train_score"][()]
        assert len(set(scores.tolist())) > 1, "all candidates scored alike: the test would prove nothing"
        assert f["ensemble/selected/members"][0] == f["selection/ranking"][0]
    with h5py.File(runs["np3"][0]) as f:
        assert sorted(set(f["population/rank"][()].tolist())) == [0, 1, 2]
        assert f.attrs["world_size"] == 3


def test_test_answers_in_parts_equal_whole_members(runs, tiny_model, tmp_path):
    """Few members for 3 ranks: each member's test split is cut into parts of whole batches that different
    ranks answer (randopt_hpc.jobs.test_parts); every answer equals the 1-rank run's, where a member is one job."""
    out = tmp_path / "parts"
    cfg = write_config(tmp_path / "parts.yaml", tiny_model, out, selection={"top_k": [1, 3], "control": False},
                       generation={"samples": 0}, runtime={"schedule": "dynamic"})
    p = launch(cfg, 3)
    assert p.returncode == 0, p.stderr[-3000:]
    from randopt_hpc import results

    mine, ref = results.comparable(str(out / "results.h5")), results.comparable(str(runs["np1"][0]))
    assert "ensemble/selected/member_test_key" in mine or any(k.startswith("ensemble/selected/") for k in mine)
    assert results.differences({k: ref[k] for k in mine if k in ref}, {k: v for k, v in mine.items() if k in ref}) == []
    assert {k for k in mine if k not in ref} <= {"config"}, sorted(k for k in mine if k not in ref)
    with h5py.File(out / "results.h5") as f:
        kind = [x.decode() for x in f["jobs/kind"][()]]
        members = set(f["ensemble/selected/members"][()].tolist())
        assert kind.count("member") == 2 * len(members)   # 2 batches of 4 of the 6 test problems: 2 parts each


def test_dynamic_schedule_records_who_did_what(runs):
    """Under the shared counter every candidate is computed once, by some rank, each member's test answers are
    recorded with who gave them and how long it took, and the phases' wall times are in timing/."""
    with h5py.File(runs["dyn3"][0]) as f:
        ranks = f["population/rank"][()].tolist()
        assert len(ranks) == 12 and set(ranks) <= {0, 1, 2}
        assert sum(f["timing/candidates"][()].tolist()) == 12
        kind, key = [x.decode() for x in f["jobs/kind"][()]], [x.decode() for x in f["jobs/key"][()]]
        members = {m for m in f["ensemble/selected/members"][()].tolist()}
        member_rows = [i for i, k in enumerate(kind) if k == "member"]
        assert {int(key[i]) for i in member_rows} >= members
        per_member = {m: sum(int(f["jobs/prompts"][i]) for i in member_rows if int(key[i]) == m) for m in members}
        assert set(per_member.values()) == {f["data/test_ids"].shape[0]}   # the parts cover the split once
        assert len({int(f["jobs/rank"][i]) for i in member_rows}) > 1
        assert (f["jobs/seconds"][()] > 0).all() and (f["timing/test"][()] > 0).all()
    with h5py.File(runs["np1"][0]) as f:   # one rank: a member is one job
        assert [x.decode() for x in f["jobs/kind"][()]].count("member") == len(set(
            f["ensemble/selected/members"][()].tolist()) | set(f["ensemble/control/members"][()].tolist()))


def test_results_file_contract(runs):
    """What only a real multi-process run shows: provenance of the world that wrote it, one log prefix per
    rank, the summary table. The meaning of every dataset is tested in-process (tests/unit/test_run.py)."""
    path, stderr, stdout = runs["np2"]
    with h5py.File(path) as f:
        assert f.attrs["schema_version"] == 2 and f.attrs["world_size"] == 2
        for key in ("package_version", "git_commit", "created", "config", "config_fingerprint", "versions"):
            assert key in f.attrs
        assert "MPICH" in json.loads(f.attrs["versions"])["mpi"]
        assert len(json.loads(f.attrs["hostnames"])) == 2
        assert f["population/train_correct"].shape == (12, 6) and f["timing/busy"].shape == (2,)
        assert (f["timing/busy"][()] > 0).all() and f["timing/candidates"][()].tolist() == [6, 6]
    for line in ("[rank 0/2]", "[rank 1/2]", "base model on train", "base model on test", "population: candidates",
                 "test answers: jobs", "vote: ", "write: ", "results: "):
        assert line in stderr
    # The summary is the run's output: on stdout, which holds nothing else.
    assert stdout.startswith("summary of ") and "[rank" not in stdout
    for line in ("top-3 vote", "control-3 vote", "best single"):
        assert line in stdout and line not in stderr


def _signal_mid_run(cfg, out, ranks, sig):
    """Start a 2-rank run, send `sig` to the given ranks once 3 candidates are done; (proc, stderr, seconds
    from the signal to the job's end)."""
    proc = launch(cfg, 2, popen=True)
    pids = []
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if RunFolder(str(out)).count_done() >= 3:
            pids = [p for p in (rank_pid(str(cfg), r) for r in ranks) if p]
            if len(pids) == len(ranks):
                t0 = time.time()
                for pid in pids:
                    os.kill(pid, sig)
                break
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=120)
    assert len(pids) == len(ranks), "the run ended before the ranks could be signalled"
    assert not (out / "results.h5").exists()
    return proc, stderr, time.time() - t0


def _rerun_equals_uninterrupted(cfg, out, runs):
    done_before = RunFolder(str(out)).count_done()
    assert 3 <= done_before < 12
    again = launch(cfg, 2)
    assert again.returncode == 0, again.stderr[-3000:]
    # Every rank reads every shard: each reports everything the interrupted run finished.
    assert [int(k) for k in re.findall(r"(\d+) with train answers already", again.stderr)] == [done_before] * 2
    assert_same_results(str(runs["np2"][0]), str(out / "results.h5"))
    indices = [r.index for r in RunFolder(str(out)).records() if r.kind == "candidate"]
    assert sorted(indices) == list(range(12))         # every candidate exactly once across the shards


def test_sigkill_one_rank_then_rerun_equals_uninterrupted(runs, tiny_model, tmp_path):
    out = tmp_path / "killed"
    cfg = write_config(tmp_path / "killed.yaml", tiny_model, out)
    proc, _, _ = _signal_mid_run(cfg, out, [1], signal.SIGKILL)
    assert proc.returncode != 0
    _rerun_equals_uninterrupted(cfg, out, runs)


def test_sigkill_one_rank_under_the_dynamic_schedule_then_rerun_equals_uninterrupted(runs, tiny_model, tmp_path):
    out = tmp_path / "killed-dynamic"
    cfg = write_config(tmp_path / "killed-dynamic.yaml", tiny_model, out, runtime={"schedule": "dynamic"})
    proc, _, _ = _signal_mid_run(cfg, out, [1], signal.SIGKILL)
    assert proc.returncode != 0
    _rerun_equals_uninterrupted(cfg, out, runs)


@pytest.mark.parametrize("schedule", ["strided", "dynamic"])
def test_sigterm_stops_every_rank_at_a_boundary_and_a_rerun_resumes(runs, tiny_model, tmp_path, schedule):
    """Slurm preemption / time limit: SIGTERM to every task. Each rank stops between candidates, the
    job exits with EXIT_PREEMPTED (75), and the rerun completes with nothing lost or evaluated twice; under
    either schedule (dynamic: a rank stops after taking a candidate from the counter, which the rerun
    computes)."""
    out = tmp_path / "preempted"
    cfg = write_config(tmp_path / "preempted.yaml", tiny_model, out, runtime={"schedule": schedule})
    proc, stderr, seconds = _signal_mid_run(cfg, out, [0, 1], signal.SIGTERM)
    assert proc.returncode == 75, stderr[-3000:]
    assert seconds < 30
    assert "SIGTERM received; stopped before" in stderr and "Rerun the same command" in stderr
    _rerun_equals_uninterrupted(cfg, out, runs)


def test_staged_model_gives_the_same_results(runs, tiny_model, tmp_path):
    """runtime.stage_dir: one copy per node (here: local rank 0 of mpiexec), read by every rank."""
    out = tmp_path / "staged"
    cfg = write_config(tmp_path / "staged.yaml", tiny_model, out)
    p = launch(cfg, 2, f"runtime.stage_dir={tmp_path}/node-local")
    assert p.returncode == 0, p.stderr[-3000:]
    copies = list((tmp_path / "node-local" / f"randopt_hpc-models-{os.geteuid()}").iterdir())
    assert len(copies) == 1 and (copies[0] / ".randopt_staged").exists()
    assert p.stderr.count(f"model staged at {copies[0]}") == 2
    assert_same_results(str(runs["np2"][0]), str(out / "results.h5"))


def _status(out) -> dict:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "randopt_hpc.status", str(out), "--json"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_resume_with_another_rank_count(runs, tiny_model, tmp_path):
    """Candidates finished by 3 ranks are reused by 2; the result is the same."""
    out = tmp_path / "regrow"
    cfg = write_config(tmp_path / "regrow.yaml", tiny_model, out)
    first = launch(cfg, 3, env={"RANDOPT_FAULT": "rank:2:candidate:8"})
    assert first.returncode != 0
    done = RunFolder(str(out)).count_done()
    assert done >= 1
    # The status command reads the interrupted run's folder as it is.
    status = _status(out)
    cands = [r for r in RunFolder(str(out)).records() if r.kind == "candidate"]
    assert (status["population"], status["done"], status["left"], status["finished"]) == (12, done, 12 - done, False)
    assert {s["rank"]: s["done"] for s in status["shards"]} == \
        {rank: sum(r.rank == rank for r in cands) for rank in range(3)}
    assert status["rate"] > 0 and status["eta_s"] > 0
    second = launch(cfg, 2)
    assert second.returncode == 0, second.stderr[-3000:]
    status = _status(out)
    assert (status["done"], status["left"], status["finished"]) == (12, 0, True)
    assert_same_results(str(runs["np2"][0]), str(out / "results.h5"))
    indices = [r.index for r in RunFolder(str(out)).records() if r.kind == "candidate"]
    assert sorted(indices) == list(range(12))


def test_fault_on_one_rank_aborts_the_job(tiny_model, tmp_path):
    cfg = write_config(tmp_path / "fault.yaml", tiny_model, tmp_path / "fault")
    t0 = time.time()
    p = launch(cfg, 2, env={"RANDOPT_FAULT": "rank:1:candidate:5"}, timeout=120)
    elapsed = time.time() - t0
    assert p.returncode != 0
    assert "[rank 1/2]" in p.stderr and "RANDOPT_FAULT: injected failure at candidate 5" in p.stderr
    assert elapsed < 90, f"took {elapsed:.0f} s: a hang, not an abort"
    print(f"fault run ended with exit {p.returncode} after {elapsed:.1f} s")


def test_fault_in_a_plain_process_exits_nonzero(tiny_model, tmp_path):
    cfg = write_config(tmp_path / "fault1.yaml", tiny_model, tmp_path / "fault1")
    p = launch(cfg, None, env={"RANDOPT_FAULT": "rank:0:candidate:2"}, timeout=120)
    assert p.returncode != 0 and "injected failure at candidate 2" in p.stderr
