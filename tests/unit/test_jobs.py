"""Who computes what (randopt_hpc.jobs, runtime.schedule): the test parts, the shared counter, and run() on
thread ranks under the dynamic schedule, with the fake backend."""
from __future__ import annotations

import threading

import h5py
import pytest

from randopt_hpc import jobs as J
from randopt_hpc.comm import SerialComm
from randopt_hpc.config import ConfigError, load_config
from randopt_hpc.environment import Slow
from randopt_hpc.runfolder import RunFolder, read_shard
from tests.conftest import assert_same_results
from tests.fakes import fake_config, run_threads
from tests.unit.test_run import start


@pytest.mark.parametrize("n_jobs,n_test,batch,size", [(1, 12, 4, 1), (3, 500, 100, 8), (36, 500, 100, 2),
                                                      (2, 7, 3, 5), (5, 0, 4, 3), (1, 2000, 64, 800)])
def test_parts_cover_each_job_once_in_whole_batches(n_jobs, n_test, batch, size):
    jobs = [("member", m) for m in range(n_jobs)]
    parts = J.test_parts(jobs, n_test, batch, size)
    for job in jobs:
        mine = [(lo, hi) for kind, key, lo, hi in parts if (kind, key) == job]
        assert [p for lo, hi in mine for p in range(lo, hi)] == list(range(n_test))   # in order, each once
        assert all(lo % batch == 0 for lo, _ in mine)                                # batches are not split
    # Parts only where there are fewer jobs than PARTS_PER_RANK per rank, and then about that many per rank.
    if n_jobs >= J.PARTS_PER_RANK * size or n_test <= batch:
        assert len(parts) == n_jobs
    else:
        assert n_jobs < len(parts) <= J.PARTS_PER_RANK * size + n_jobs


def test_a_shared_counter_hands_out_every_item_once_phase_after_phase():
    from tests.fakes import ThreadCounter

    class One:   # the shared counter without a world (ThreadCounter's take alone)
        def __init__(self):
            self.lock, self.next = threading.Lock(), 0
        take = ThreadCounter.take
    counter = One()
    dealers = [J.Dealer(counter, 3) for _ in range(3)]
    for items in (list("abcdefghij"), [], list("xy")):   # phases, each ended by a collective (the join)
        got = [[] for _ in range(3)]

        def worker(r, items=items, got=got):
            got[r].extend(dealers[r].deal(items))
        threads = [threading.Thread(target=worker, args=(r,)) for r in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(x for g in got for x in g) == items
    assert counter.next == 10 + 3 + 0 + 3 + 2 + 3     # each rank stops at its one value past each phase's end
    assert list(J.Dealer(SerialComm().counter(), 1).deal([])) == []


def test_dynamic_thread_ranks_equal_serial_and_compute_each_candidate_once(tmp_path):
    strided = fake_config(tmp_path, "strided")
    start(strided)
    dynamic = fake_config(tmp_path, "dynamic", runtime={"schedule": "dynamic"})
    run_threads(3, lambda comm: start(dynamic, comm=comm))
    assert_same_results(tmp_path / "strided" / "results.h5", tmp_path / "dynamic" / "results.h5")
    folder = RunFolder(str(tmp_path / "dynamic"))
    by_rank = {r: [x.index for x in read_shard(folder.shard_path(r)) if x.kind == "candidate"] for r in range(3)}
    assert sorted(i for v in by_rank.values() for i in v) == list(range(16))
    with h5py.File(tmp_path / "dynamic" / "results.h5") as f:
        assert [f["population/rank"][i] for i in range(16)] == \
            [next(r for r, v in by_rank.items() if i in v) for i in range(16)]


def test_a_member_answered_in_parts_equals_one_answered_whole(tmp_path, monkeypatch):
    whole = fake_config(tmp_path, "whole", selection={"top_k": [1], "control": False})
    start(whole)
    monkeypatch.setattr(J, "PARTS_PER_RANK", 6)    # the base and one member, one rank: 3 parts of a batch of 4
    parts = fake_config(tmp_path, "parts", selection={"top_k": [1], "control": False})
    start(parts)
    assert_same_results(tmp_path / "whole" / "results.h5", tmp_path / "parts" / "results.h5")
    members = [r for r in read_shard(RunFolder(str(tmp_path / "parts")).shard_path(0)) if r.kind == "member"]
    assert [len(r.answers.rewards) for r in members] == [4, 4, 4]
    assert all(r.rank == 0 and r.seconds >= 0 for r in members)
    with h5py.File(tmp_path / "parts" / "results.h5") as f:
        assert [x.decode() for x in f["jobs/kind"][()]] == ["base"] * 4 + ["member"] * 3
        assert f["jobs/prompts"][()].tolist() == [8] + [4] * 6     # the train split whole, the test split in parts


def test_schedule_and_slow_hook_refuse_bad_values(tmp_path):
    with pytest.raises(ConfigError, match=r"runtime.schedule: must be one of strided, dynamic; got 'dynamc'.*"
                                          r"did you mean dynamic"):
        load_config(str(fake_config(tmp_path)), ["runtime.schedule=dynamc"])
    for bad in ("x:1", "1:", "-1:3", "1:a", "inf:2", "2:-1"):
        with pytest.raises(ValueError, match="RANDOPT_SLOW"):
            Slow.parse(bad)
    assert Slow.parse("0.5:3, 7") == Slow(0.5, frozenset({3, 7}))
