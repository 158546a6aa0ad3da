"""Model staging on real files: reuse and restaging, refusal of folders others could have planted or
changed, verification of a copy against model.path before it is used, atomic placement, concurrent
stagers. Root bypasses permission checks, so ownership is tested by chown, not by access failing."""
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from randopt_hpc import stage
from randopt_hpc.stage import MARKER, check_stage_dir, manifest, stage_model, staged_path, user_dir
from tests.conftest import ROOT

NOBODY = 65534
BIG = stage.FULL_HASH_MAX + (1 << 20)     # hashed by header and samples, not whole


def safetensors(n_floats: int) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(range(256)) * (4 * n_floats // 256)


def make_model(path: Path, big: bool = False) -> Path:
    path.mkdir()
    (path / "config.json").write_text('{"hidden_size": 8}')
    (path / "tokenizer.json").write_text('{"vocab": ["a", "b"]}')
    (path / "model.safetensors").write_bytes(safetensors(BIG // 4 if big else 256))
    if big:
        (path / "pytorch_model.bin").write_bytes(b"\x07" * BIG)
    return path


@pytest.fixture
def src(tmp_path):
    return make_model(tmp_path / "model")


@pytest.fixture
def local(tmp_path):
    return str(tmp_path / "local")


def refusal(call, *args) -> str:
    with pytest.raises(ValueError) as e:
        call(*args)
    msg = str(e.value)
    assert msg.startswith("runtime.stage_dir: ") and "\n" not in msg, msg
    return msg


def tree(path) -> dict:
    """Every path under path with its bytes (folders: None): to show a refusal touched nothing."""
    return {str(p): (None if p.is_dir() else p.read_bytes()) for p in sorted(Path(path).rglob("*"))}


def assert_one_verified_copy(src, local, path):
    assert path == staged_path(str(src), local)
    assert stage._verify(path, manifest(str(src))) is None
    assert os.listdir(user_dir(local)) == [os.path.basename(path)]     # no temporaries, no old copies


def test_staging_copies_once_and_again_when_the_model_changes(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "weights.bin").write_bytes(b"\x01" * 1000)
    stage_dir = tmp_path / "local"
    a = stage_model(str(src), str(stage_dir))
    assert a == staged_path(str(src), str(stage_dir)) and Path(a, MARKER).exists()
    assert Path(a, "weights.bin").read_bytes() == b"\x01" * 1000
    mtime = Path(a, "weights.bin").stat().st_mtime_ns
    assert stage_model(str(src), str(stage_dir)) == a and Path(a, "weights.bin").stat().st_mtime_ns == mtime
    (src / "weights.bin").write_bytes(b"\x02" * 1001)
    b = stage_model(str(src), str(stage_dir))
    assert b != a and Path(b, "weights.bin").read_bytes() == b"\x02" * 1001
    mine = stage_dir / f"randopt_hpc-models-{os.geteuid()}"
    assert sorted(p.name for p in mine.iterdir()) == sorted([Path(a).name, Path(b).name])
    assert mine.stat().st_mode & 0o777 == 0o700


def test_staging_folder_names_expand_environment_variables(tmp_path, monkeypatch):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    monkeypatch.setenv("NODE_SCRATCH", str(tmp_path / "scratch"))
    assert stage_model(str(src), "$NODE_SCRATCH").startswith(
        f"{tmp_path}/scratch/randopt_hpc-models-{os.geteuid()}/model-")
    assert stage_model(str(src), "${NODE_SCRATCH}/x").startswith(f"{tmp_path}/scratch/x/randopt_hpc-models-")


@pytest.mark.parametrize("stage_dir", ["$RANDOPT_TEST_UNSET", "${RANDOPT_TEST_UNSET}/jobs"])
def test_an_unset_variable_in_stage_dir_is_refused_not_made_a_folder(src, stage_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("RANDOPT_TEST_UNSET", raising=False)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    for call in (check_stage_dir, lambda d: stage_model(str(src), d)):
        assert "RANDOPT_TEST_UNSET" in refusal(call, stage_dir)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("planted", ["empty", "a copy with other weights"])
def test_a_per_user_folder_owned_by_someone_else_is_refused(src, local, planted, capsys):
    mine = Path(user_dir(local))
    if planted == "empty":
        mine.mkdir(parents=True, mode=0o700)
    else:   # the attack: a complete copy under the predictable name, with its marker, different weights
        dest = Path(stage_model(str(src), local))
        (dest / "model.safetensors").write_bytes(safetensors(256)[:-1] + b"\xff")
        subprocess.run(["chown", "-R", str(NOBODY), str(mine)], check=True)
    os.chown(mine, NOBODY, -1)
    before = tree(mine)
    for call in (check_stage_dir, lambda d: stage_model(str(src), d)):
        msg = refusal(call, local)
        assert f"{mine} is owned by uid {NOBODY}, not by you (uid {os.geteuid()})" in msg
    assert tree(mine) == before


@pytest.mark.parametrize("mode", [0o770, 0o703])
def test_a_per_user_folder_writable_by_group_or_others_is_refused(src, local, mode):
    mine = Path(user_dir(local))
    mine.mkdir(parents=True)
    mine.chmod(mode)
    for call in (check_stage_dir, lambda d: stage_model(str(src), d)):
        assert f"is writable by group or others (mode {mode:04o})" in refusal(call, local)
    assert list(mine.iterdir()) == []


@pytest.mark.parametrize("target", ["a folder of mine", "nowhere yet"])
def test_a_symlinked_per_user_folder_is_refused(src, local, target, tmp_path):
    mine, elsewhere = Path(user_dir(local)), tmp_path / "elsewhere"
    if target == "a folder of mine":
        elsewhere.mkdir(mode=0o700)
    mine.parent.mkdir(parents=True)
    mine.symlink_to(elsewhere)
    for call in (check_stage_dir, lambda d: stage_model(str(src), d)):
        assert f"{mine} is a symlink" in refusal(call, local)
    assert (list(elsewhere.iterdir()) == []) if elsewhere.exists() else not os.path.lexists(elsewhere)


@pytest.mark.parametrize("mode", [0o777, 0o757])
def test_a_stage_dir_anyone_can_write_needs_the_sticky_bit(src, local, mode):
    Path(local).mkdir()
    os.chmod(local, mode)
    for call in (check_stage_dir, lambda d: stage_model(str(src), d)):
        assert f"is writable by everyone and not sticky (mode {mode:04o})" in refusal(call, local)
    assert os.listdir(local) == []
    os.chmod(local, mode | 0o1000)          # /dev/shm and /tmp: others cannot rename our folder away
    assert_one_verified_copy(src, local, stage_model(str(src), local))


def test_check_stage_dir_creates_nothing_and_the_per_user_folder_is_0700_whatever_the_umask(src, local):
    check_stage_dir(local)
    assert not os.path.exists(local)
    old = os.umask(0)
    try:
        dest = stage_model(str(src), local)
    finally:
        os.umask(old)
    assert os.stat(user_dir(local)).st_mode & 0o7777 == 0o700 and os.stat(dest).st_mode & 0o777 == 0o700
    check_stage_dir(local)


def _flip_last_byte(p: Path):
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))


def _retype_header(p: Path):        # same length, another dtype: the tensors would be read as integers
    with open(p, "r+b") as f:
        data = f.read(200)
        f.seek(data.index(b'"F32"'))
        f.write(b'"I32"')


@pytest.mark.parametrize("big,name,tamper", [
    (False, "model.safetensors", _flip_last_byte),
    (False, "config.json", lambda p: p.write_text('{"hidden_size": 9}')),
    (True, "model.safetensors", _retype_header),
    (True, "pytorch_model.bin", _flip_last_byte),       # large, not safetensors: its sampled blocks
])
def test_a_copy_modified_with_the_same_size_is_replaced(big, name, tamper, tmp_path, local):
    src = make_model(tmp_path / "model", big=big)
    dest = Path(stage_model(str(src), local))
    size = (dest / name).stat().st_size
    tamper(dest / name)
    assert (dest / name).stat().st_size == size and (dest / name).read_bytes() != (src / name).read_bytes()
    lines = []
    assert stage_model(str(src), local, log=lines.append) == str(dest)
    assert lines == [f"staging: the copy at {dest} did not match model.path ({name} differs in content); "
                     "replaced it with a fresh copy"]
    assert (dest / name).read_bytes() == (src / name).read_bytes()
    assert_one_verified_copy(src, local, str(dest))


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json"])
def test_a_truncated_copy_is_replaced(src, local, name):
    dest = Path(stage_model(str(src), local))
    full = (src / name).stat().st_size
    os.truncate(dest / name, full // 2)
    lines = []
    stage_model(str(src), local, log=lines.append)
    assert f"({name} has {full // 2} bytes, not {full})" in lines[0]
    assert_one_verified_copy(src, local, str(dest))


@pytest.mark.parametrize("change,reason", [
    (lambda d, s: (d / "extra.safetensors").write_bytes(b"x"), "extra file extra.safetensors"),
    (lambda d, s: (d / "tokenizer.json").unlink(), "missing file tokenizer.json"),
    (lambda d, s: ((d / "sub").mkdir(), (d / "sub" / "x").write_text("")), "extra file sub/x"),
    # the same bytes, but through a link another process could retarget while ranks read it
    (lambda d, s: ((d / "config.json").unlink(), (d / "config.json").symlink_to(s / "config.json")),
     "config.json is a symlink"),
    (lambda d, s: os.chown(d / "config.json", NOBODY, -1), f"config.json is owned by uid {NOBODY}"),
])
def test_a_copy_with_extra_missing_or_foreign_files_is_replaced(src, local, change, reason):
    dest = Path(stage_model(str(src), local))
    change(dest, src)
    lines = []
    stage_model(str(src), local, log=lines.append)
    assert f"did not match model.path ({reason})" in lines[0]
    assert_one_verified_copy(src, local, str(dest))


def _rewrite_marker_to_match(dest: Path):
    """A consistent lie: tampered files and a marker recording them. Only the source can tell."""
    (dest / "config.json").write_text('{"hidden_size": 9}')
    (dest / MARKER).write_text(json.dumps({"format": 1, "files": manifest(str(dest), staged=True)}))


@pytest.mark.parametrize("change,reason", [
    (_rewrite_marker_to_match, "config.json differs in content"),
    (lambda d: (d / MARKER).write_text("{not json"), "no readable marker"),
    (lambda d: (d / MARKER).unlink(), "no readable marker"),
    (lambda d: (d / MARKER).write_text(json.dumps({"format": 1, "files": {}})), "its marker records other files"),
])
def test_the_marker_alone_is_never_trusted(src, local, change, reason):
    dest = Path(stage_model(str(src), local))
    change(dest)
    lines = []
    stage_model(str(src), local, log=lines.append)
    assert f"did not match model.path ({reason}" in lines[0]
    assert_one_verified_copy(src, local, str(dest))
    assert json.loads((dest / MARKER).read_text())["files"] == manifest(str(src))


def test_a_source_changed_in_place_keeping_sizes_and_mtimes_is_restaged(src, local):
    """The folder name cannot see this change (it hashes sizes and mtimes); the verification does."""
    dest = stage_model(str(src), local)
    st = (src / "config.json").stat()
    (src / "config.json").write_text('{"hidden_size": 9}')
    os.utime(src / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert staged_path(str(src), local) == dest
    lines = []
    stage_model(str(src), local, log=lines.append)
    assert "(config.json differs in content)" in lines[0]
    assert Path(dest, "config.json").read_text() == '{"hidden_size": 9}'


def test_concurrent_stagers_in_threads_keep_the_first_rename_and_verify_it(src, local, monkeypatch):
    both_copied, copy = threading.Barrier(2, timeout=30), stage._copy

    def copy_then_wait(*a):
        tmp = copy(*a)
        both_copied.wait()      # both hold a full copy before either renames: one rename must lose
        return tmp

    monkeypatch.setattr(stage, "_copy", copy_then_wait)
    lines, paths = [], []
    threads = [threading.Thread(target=lambda: paths.append(stage_model(str(src), local, log=lines.append)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(paths) == 2 and paths[0] == paths[1]
    assert sorted(x.split(" ")[1] for x in lines) == ["another", "copied"], lines
    assert_one_verified_copy(src, local, paths[0])


def test_concurrent_stagers_in_processes_end_with_one_verified_copy(tmp_path, local):
    src = make_model(tmp_path / "model", big=True)
    code = "import sys; from randopt_hpc.stage import stage_model; print(stage_model(sys.argv[1], sys.argv[2]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src), local], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert len({o.strip() for o, _ in outs}) == 1
    assert_one_verified_copy(src, local, outs[0][0].strip())


def test_a_bad_copy_landing_first_is_judged_and_replaced(src, local, monkeypatch):
    copy, planted = stage._copy, []

    def copy_while_another_lands_a_truncated_one(model_path, dest, want):
        tmp = copy(model_path, dest, want)
        if not planted:
            bad = copy(model_path, dest, want)
            os.truncate(Path(bad, "model.safetensors"), 10)
            os.rename(bad, dest)
            planted.append(dest)
        return tmp

    monkeypatch.setattr(stage, "_copy", copy_while_another_lands_a_truncated_one)
    lines = []
    dest = stage_model(str(src), local, log=lines.append)
    assert planted == [dest] and len(lines) == 1 and "(model.safetensors has 10 bytes, not " in lines[0]
    assert_one_verified_copy(src, local, dest)


def test_stale_temporaries_of_dead_processes_on_this_host_are_removed(src, local):
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = Path(user_dir(local))
    mine.mkdir(parents=True, mode=0o700)
    name, host = Path(staged_path(str(src), local)).name, socket.gethostname()
    gone = [mine / f"{name}.tmp-{host}-{dead.pid}-k2j_x9aa", mine / f"{name}.old-{host}-{dead.pid}-0a1b2c3d"]
    kept = [mine / f"{name}.tmp-{host}-{os.getpid()}-abcdefgh",         # alive: maybe copying right now
            mine / f"{name}.tmp-othernode-{dead.pid}-abcdefgh"]         # a pid of another host says nothing
    for p in gone + kept:
        p.mkdir()
        (p / "config.json").write_text("{}")
    lines = []
    dest = stage_model(str(src), local, log=lines.append)
    assert sorted(p.name for p in mine.iterdir()) == sorted([Path(dest).name] + [p.name for p in kept])
    assert sorted(lines[:2]) == sorted(f"staging: removed {p}, left by process {dead.pid} on this host, which is gone"
                                       for p in gone)


def test_a_copy_is_fsynced_before_its_rename_and_the_folder_after(src, local, monkeypatch):
    events, fsync, rename = [], os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 fsync(fd)))
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", str(a), str(b))), rename(a, b)))
    dest = stage_model(str(src), local)
    renames = [e for e in events if e[0] == "rename"]
    assert len(renames) == 1 and renames[0][2] == dest
    tmp, at = renames[0][1], events.index(renames[0])
    synced_before = {e[1] for e in events[:at]}
    assert {os.path.join(tmp, n) for n in os.listdir(dest)} | {tmp} <= synced_before
    assert os.path.join(tmp, MARKER) in synced_before and len(os.listdir(dest)) == 4
    assert ("fsync", user_dir(local)) in events[at:]


def test_an_interrupted_copy_leaves_nothing_and_the_next_stager_copies(src, local, monkeypatch):
    real = stage.shutil.copytree

    def copy_then_fail(a, b, **kw):
        real(a, b, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stage.shutil, "copytree", copy_then_fail)
    with pytest.raises(OSError, match="No space left"):
        stage_model(str(src), local)
    assert os.listdir(user_dir(local)) == []
    monkeypatch.setattr(stage.shutil, "copytree", real)
    assert_one_verified_copy(src, local, stage_model(str(src), local))


def test_a_source_changing_during_the_copy_is_one_line_and_leaves_nothing(src, local, monkeypatch):
    real = stage.shutil.copytree

    def copy_while_it_changes(a, b, **kw):
        real(a, b, **kw)
        Path(b, "config.json").write_text('{"hidden_size": 9}')

    monkeypatch.setattr(stage.shutil, "copytree", copy_while_it_changes)
    with pytest.raises(RuntimeError) as e:
        stage_model(str(src), local)
    assert str(e.value).startswith(f"runtime.stage_dir: model.path {src} changed while it was being copied")
    assert "\n" not in str(e.value) and os.listdir(user_dir(local)) == []
