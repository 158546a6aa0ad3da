"""The run folder against damage and hostile input, in-process: damaged shard lines anywhere, damaged
results files, the lock's judgement of holders, bounds and hostile files refused in one line before any
work, model folder faults, and status on broken folders. (Under mpiexec: tests/integration/
test_run_folder_faults.py.)"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter

import h5py
import pytest

from randopt_hpc import run
from randopt_hpc.config import load_config
from randopt_hpc.environment import Environment
from randopt_hpc.lock import Holder, LockError, RunLock, stale
from randopt_hpc.runfolder import FINISHED, RESUME, RunFolder
from tests.conftest import ROOT, assert_same_results
from tests.fakes import FakeBackend, fake_config
from tests.unit.test_run import start

DEMO = ROOT / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    start(fake_config(tmp))
    return tmp / "out" / "results.h5"


# ----------------------------------------------------------------------------- shards

DAMAGE = {
    "garbage": b"%%% not json %%%\n",
    "not UTF-8": b'{"type":"candidate","index":\xff}\n',
    "a JSON array": b"[1, 2, 3]\n",
    "an unknown type": b'{"type":"checkpoint","index":3}\n',
    "a record missing fields": b'{"type":"candidate","index":3,"seed":1}\n',
}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_a_damaged_line_anywhere_is_skipped_reported_and_its_record_recomputed_once(what, reference, tmp_path):
    cfg_path = fake_config(tmp_path)
    start(cfg_path)
    folder = RunFolder(str(tmp_path / "out"))
    shard = folder.shard_path(0)
    lines = open(shard, "rb").read().splitlines(keepends=True)
    lines[5] = DAMAGE[what]                     # candidate 5's line, with records after it
    open(shard, "wb").write(b"".join(lines))
    (tmp_path / "out" / "results.h5").unlink()
    from randopt_hpc import status

    s = status.summarize(folder.path)
    assert s["shards"][0]["damaged_lines"] == [6] and s["done"] == 15
    assert "1 damaged line(s) skipped: 6" in status.render(s)
    backend = FakeBackend()
    start(cfg_path, backend=backend)
    assert backend.generated == 8                  # one candidate's 8 train examples: candidate 5 only
    assert_same_results(reference, tmp_path / "out" / "results.h5")
    kinds = Counter(r.kind for r in folder.records())
    assert kinds["candidate"] == 16 and sorted(r.index for r in folder.records() if r.kind == "candidate") == \
        list(range(16))
    assert folder.count_done() == 16
    assert RunFolder(folder.path).state(load_config(str(cfg_path))) == FINISHED


# ----------------------------------------------------------------------------- results.h5

def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _empty(path):
    open(path, "wb").close()


def _garbage(path):
    open(path, "wb").write(os.urandom(4096))


def _drop_a_dataset(path):
    with h5py.File(path, "a") as f:
        del f["ensemble/selected/voted_correct"]


def _another_schema(path):
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99


@pytest.mark.parametrize("damage", [_truncate, _empty, _garbage, _drop_a_dataset, _another_schema])
def test_a_damaged_results_file_is_not_finished_and_is_rebuilt_from_the_shards(damage, reference, tmp_path):
    cfg_path = fake_config(tmp_path)
    start(cfg_path)
    cfg = load_config(str(cfg_path))
    folder = RunFolder(str(tmp_path / "out"))
    assert folder.state(cfg) == FINISHED
    damage(folder.results)
    assert folder.state(cfg) == RESUME and folder.results_damage(cfg)
    from randopt_hpc import status

    assert status.summarize(folder.path)["results_damage"]
    backend = FakeBackend()
    start(cfg_path, backend=backend)
    assert backend.generated == 0                 # every answer was in the shards
    assert_same_results(reference, folder.results)
    assert folder.state(cfg) == FINISHED


def test_stale_temporaries_are_removed_at_start(reference, tmp_path):
    cfg_path = fake_config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("run.yaml.tmp-vm-1", "results.h5.tmp-other-77"):
        (out / name).write_bytes(b"half")
    start(cfg_path)
    assert sorted(p.name for p in out.iterdir()) == ["results.h5", "run.yaml", "shards", "test-jobs.json"]
    assert_same_results(reference, out / "results.h5")


# ----------------------------------------------------------------------------- the lock

def _wait_until(predicate, seconds=10.0):
    import time

    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _env(**kw):
    return Environment.from_os({k: str(v) for k, v in kw.items()})


def _holder(**kw):
    base = dict(host=socket.gethostname(), pid=os.getpid(), pid_start=None, slurm_job=None, restart=0, since="t")
    return Holder(**{**base, **kw})


def test_which_holders_are_stale():
    here = _env()
    assert not stale(Holder.me(here), here)                                  # this very process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert stale(_holder(pid=int(dead.stdout)), here)                        # a pid that ended
    me = Holder.me(here)
    assert stale(_holder(pid=os.getpid(), pid_start=str(int(me.pid_start) + 1)), here)   # a reused pid
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])           # exits; not reaped until wait()
    _wait_until(lambda: open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z")
    assert stale(_holder(pid=zombie.pid), here)                              # an MPI abort's ranks linger so
    zombie.wait()
    assert not stale(_holder(host="elsewhere"), here)                       # cannot check: presumed alive
    job = _env(SLURM_JOB_ID=41, SLURM_RESTART_COUNT=2)
    assert stale(_holder(host="elsewhere", slurm_job="41", restart=1), job)  # this job's earlier life
    assert not stale(_holder(host="elsewhere", slurm_job="41", restart=2), job)


def test_the_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    env = _env()
    a, b = RunLock(str(tmp_path)), RunLock(str(tmp_path))
    assert a.acquire(env) is None and a.held
    with pytest.raises(LockError, match=r"is in use by another run \(pid \d+ on .*remove .*\.lock if you know"):
        b.check(env)
    with pytest.raises(LockError):
        b.acquire(env)
    a.release()
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text(json.dumps({**_holder(pid=2**22 + 7).__dict__}))   # no such pid
    assert "pid 4194311" in b.acquire(env)
    assert b.holder().pid == os.getpid()
    b.release()
    (tmp_path / ".lock").write_text('{"host": "vm", "pi')          # torn by a crash long ago
    os.utime(tmp_path / ".lock", (1, 1))
    assert RunLock(str(tmp_path)).acquire(env) == "an unreadable lock file"


# ----------------------------------------------------------------------------- bounds and hostile input

def _bad_files(tmp):
    bomb = tmp / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh")))
    (tmp / "big.yaml").write_text("# padding\n" * 200_000)
    (tmp / "binary.yaml").write_bytes(bytes(range(256)) * 64)
    (tmp / "deep.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    (tmp / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    row = json.dumps({"numbers": [1, 2, 3], "target": 6})
    (tmp / "bigint.jsonl").write_text(f"{row}\n" + '{"numbers": [1, 2, 3], "target": ' + "9" * 5000 + "}\n")
    (tmp / "bigtarget.jsonl").write_text(f"{row}\n" * 3 + '{"numbers": [1, 2, 3], "target": ' + "9" * 400 + "}\n")
    (tmp / "bignumber.jsonl").write_text(f"{row}\n" * 3 + '{"numbers": [1, 2, 123456789012], "target": 6}\n')
    (tmp / "binary.jsonl").write_bytes(b"\xff\xfe\x00" * 100)


HOSTILE = [
    ("{tmp}/bomb.yaml", [], "config: "), ("{tmp}/big.yaml", [], "config: "), ("{tmp}/binary.yaml", [], "config: "),
    ("{tmp}/deep.yaml", [], "config: "),
    ("{demo}", ["population.size=1e9"], "population.size"), ("{demo}", ["population.seed=" + "9" * 5000],
                                                             "population.seed"),
    ("{demo}", ["population.size=" + "9" * 30], "population.size"),
    ("{demo}", ["runtime.threads=100000"], "runtime.threads"), ("{demo}", ["runtime.threads=4000"], "runtime.threads"),
    ("{demo}", ["task.train_size=1e9"], "task.train_size"), ("{demo}", ["task.test_size=15000"], "task.test_size"),
    ("{demo}", ["generation.max_new_tokens=1e12"], "generation.max_new_tokens"),
    ("{demo}", ["task.data={tmp}/nested.json"], "task.data"), ("{demo}", ["task.data={tmp}/bigint.jsonl"], "task.data"),
    ("{demo}", ["task.data={tmp}/bigtarget.jsonl", "task.train_size=2", "task.test_size=2"], "task.data"),
    ("{demo}", ["task.data={tmp}/bignumber.jsonl", "task.train_size=2", "task.test_size=2"], "task.data"),
    ("{demo}", ["task.data={tmp}/binary.jsonl"], "task.data"),
    ("{demo}", ["output.dir=/proc/randopt-out"], "output.dir"), ("{demo}", ["output.dir=/etc/hostname/out"],
                                                                 "output.dir"),
    ("{demo}", ["output.dir={tmp}/held"], "output.dir"),
    ("{demo}", ["runtime.stage_dir={tmp}/open"], "runtime.stage_dir"),
]


@pytest.mark.parametrize("config,overrides,field", HOSTILE, ids=[f"{i}-{h[2]}" for i, h in enumerate(HOSTILE)])
def test_bounds_and_hostile_files_are_one_line_before_any_work(config, overrides, field, tmp_path, capsys,
                                                                monkeypatch):
    _bad_files(tmp_path)
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)             # anyone may replace our staged copy: refused
    held = RunLock(str(tmp_path / "held"))
    held.acquire(_env())                          # a live run (this process) holds the folder
    monkeypatch.chdir(ROOT)
    fill = {"tmp": str(tmp_path), "demo": str(DEMO)}
    argv = [config.format(**fill), f"output.dir={tmp_path}/out"] + [o.format(**fill) for o in overrides]
    assert run.main(argv) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"randopt_hpc: error: {field}"), lines
    assert len(lines[0]) < 400
    assert not (tmp_path / "out").exists()        # nothing was started
    held.release()


# ----------------------------------------------------------------------------- model folder faults

def _cut(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-1000])


@pytest.mark.parametrize("fault,named", [
    (lambda m: _cut(m / "model.safetensors"), "model.safetensors"),
    (lambda m: (m / "config.json").write_text("{broken"), "config.json"),
    (lambda m: (m / "config.json").unlink(), "config.json"),
    (lambda m: (m / "tokenizer.json").unlink(), "tokenizer"),
    (lambda m: (m / "tokenizer.json").write_bytes(b"\xff" * 64), "tokenizer.json"),
])
def test_a_broken_model_folder_is_one_line_and_leaves_nothing(fault, named, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(ROOT / "models" / "demo", model)
    fault(model)
    out = tmp_path / "out"
    assert run.main([str(DEMO), f"model.path={model}", f"output.dir={out}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("randopt_hpc: error: model.path: ") and named in lines[0], lines
    assert not out.exists()                       # no run.yaml, no lock, no folder


# ----------------------------------------------------------------------------- status on broken folders

@pytest.mark.parametrize("run_yaml,why", [("", "holds no config mapping"), ("population: {size: 0}\n", "damaged"),
                                          ("model: {path: m\n", "not valid YAML")])
def test_status_answers_a_broken_folder_in_one_line(run_yaml, why, tmp_path):
    (tmp_path / "run.yaml").write_text(run_yaml)
    p = subprocess.run([sys.executable, "-m", "randopt_hpc.status", str(tmp_path)], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and why in p.stderr, p.stderr


# ----------------------------------------------------------------------------- hostile text in results.h5

def test_nul_and_lone_surrogates_in_model_output_reach_results_h5(tmp_path):
    """HDF5 refuses NUL in its strings and lone surrogates in UTF-8; a model may write either. The run
    finishes, results.h5 holds U+FFFD there, and the shards keep the text as it was."""
    import h5py

    from tests.fakes import FakeBackend, fake_config
    from tests.unit.test_run import start

    class Hostile(FakeBackend):
        def complete(self, examples, sampling=None):
            return [dataclasses.replace(c, text=c.text.replace("\nQ:", "\x00\ud800\nQ:"))
                    for c in super().complete(examples, sampling)]

    start(fake_config(tmp_path, output={"dir": str(tmp_path / "out"), "save_text": True}), backend=Hostile())
    with h5py.File(tmp_path / "out" / "results.h5") as f:
        texts = f["population/train_text"].asstr()[()]
    assert all(t.endswith("\ufffd\ufffd\nQ:") for t in texts.ravel())
    shard = next((tmp_path / "out").glob("shards/*.jsonl")).read_text()
    assert "\\u0000\\ud800" in shard
