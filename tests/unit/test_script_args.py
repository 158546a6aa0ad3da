"""The argparse scripts under tools/ and bench/ refuse a bad option value the project's way: one line
`PROG: error: ...` on stderr naming the option, exit status 2, nothing on stdout, nothing created, and all of
it before any heavy import (torch, numba, transformers, vllm and mpi4py are made unimportable here) or work.
"""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

HEAVY = ("torch", "numba", "transformers", "vllm", "mpi4py")

# script -> its prog in error messages (tools: `python -m tools.X`; bench: `python bench/X.py`)
PROG = {"tools.scratch_model": "python -m tools.scratch_model", "tools.make_tiny_model": "make_tiny_model.py",
        "tools.train_demo_model": "train_demo_model.py", "tools.pretrain_toy": "python -m tools.pretrain_toy",
        "tools.toy": "python -m tools.toy", "tools.memory_table": "memory_table.py"}

OUT = "{tmp}/out"          # a folder that must not appear
TOY = ["--out", "{tmp}/docs", "--runs", "{tmp}/runs"]   # never the repository's docs/ and runs/toy

# (script, arguments, what the error line must mention); {tmp} is the test's tmp_path, {tmp}/file an existing
# file and {tmp}/broken.yaml a config that is not valid YAML.
CASES = [
    # tools.scratch_model
    ("tools.scratch_model", ["/proc/nope"], "out"),
    ("tools.scratch_model", ["{tmp}/file"], "not a folder"),
    ("tools.scratch_model", [OUT, "--seed", "99999999999999999999999"], "--seed"),
    ("tools.scratch_model", [OUT, "--seed", "-1"], "--seed"),
    # tools.make_tiny_model
    ("tools.make_tiny_model", ["--out", OUT, "--train-steps", "-5"], "--train-steps"),
    ("tools.make_tiny_model", ["--out", OUT, "--train-steps", "10000000"], "--train-steps"),
    ("tools.make_tiny_model", ["--out", OUT, "--seed", "-1"], "--seed"),
    ("tools.make_tiny_model", ["--out", "/proc/nope"], "--out"),
    ("tools.make_tiny_model", ["--out", "configs/demo.yaml"], "--out"),
    ("tools.make_tiny_model", ["--out", OUT, "--arch", "llama", "--eos-ids", "abc"], "--eos-ids"),
    ("tools.make_tiny_model", ["--out", OUT, "--arch", "llama", "--eos-ids", "2", "100"], "--eos-ids"),
    # tools.train_demo_model
    ("tools.train_demo_model", ["--out", "/proc/nope"], "--out"),
    ("tools.train_demo_model", ["--out", OUT, "--log-every", "0"], "--log-every"),
    ("tools.train_demo_model", ["--out", OUT, "--lr", "nan"], "--lr"),
    ("tools.train_demo_model", ["--out", OUT, "--lr", "0"], "--lr"),
    ("tools.train_demo_model", ["--out", OUT, "--hidden", "0"], "--hidden"),
    ("tools.train_demo_model", ["--out", OUT, "--heads", "0"], "--heads"),
    ("tools.train_demo_model", ["--out", OUT, "--hidden", "10", "--heads", "3"], "--heads"),
    ("tools.train_demo_model", ["--out", OUT, "--hidden", "6", "--heads", "2"], "head_dim"),
    ("tools.train_demo_model", ["--out", OUT, "--threads", "0"], "--threads"),
    ("tools.train_demo_model", ["--out", OUT, "--batch", "-1"], "--batch"),
    ("tools.train_demo_model", ["--out", OUT, "--steps", "-1"], "--steps"),
    ("tools.train_demo_model", ["--out", OUT, "--warmup", "-1"], "--warmup"),
    ("tools.train_demo_model", ["--out", OUT, "--hidden", "65536", "--layers", "1024"], "--hidden"),
    # tools.pretrain_toy
    ("tools.pretrain_toy", ["/proc/nope", "--pretrain", "none"], "out"),
    ("tools.pretrain_toy", [OUT, "--pretrain", "bogus"], "--pretrain"),
    ("tools.pretrain_toy", [OUT, "--pretrain", "mixed", "--lr", "inf"], "--lr"),
    ("tools.pretrain_toy", [OUT, "--pretrain", "none", "--depth", "1"], "--depth"),
    ("tools.pretrain_toy", [OUT, "--pretrain", "none", "--width", "1000000"], "--width"),
    # tools.toy
    ("tools.toy", [*TOY, "--ranks", "0"], "--ranks"),
    ("tools.toy", [*TOY, "--ranks", "-1"], "--ranks"),
    ("tools.toy", [*TOY, "--seeds", "-1"], "--seeds"),
    ("tools.toy", ["--out", "/proc/nope", "--runs", "/proc/nope2"], "--out"),
    ("tools.toy", ["--out", "{tmp}/docs", "--runs", "{tmp}/file"], "--runs"),
    # tools.memory_table
    ("tools.memory_table", ["--gpu-gib", "nan"], "--gpu-gib"),
    ("tools.memory_table", ["--gpu-gib", "-1"], "--gpu-gib"),
    ("tools.memory_table", ["--utilization", "2"], "--utilization"),
    # bench/bench_perturb.py
    ("bench/bench_perturb.py", ["--reps", "-1"], "--reps"),
    ("bench/bench_perturb.py", ["--reps", "0"], "--reps"),
    ("bench/bench_perturb.py", ["--threads", "0"], "--threads"),
    ("bench/bench_perturb.py", ["--threads", str(100 * (os.cpu_count() or 1))], "--threads"),
    # bench/bench_schedules.py
    ("bench/bench_schedules.py", ["--candidates", "-1"], "--candidates"),
    ("bench/bench_schedules.py", ["--k", "0"], "--k"),
    ("bench/bench_schedules.py", ["--candidates", "8", "--k", "10"], "--k"),
    ("bench/bench_schedules.py", ["configs/demo.yaml", "bogus.key=1"], "bogus"),
    # bench/sandbox.py
    ("bench/sandbox.py", ["--programs", "-1"], "--programs"),
    ("bench/sandbox.py", ["--fresh", "-1"], "--fresh"),
    ("bench/sandbox.py", ["--fresh", "0"], "--fresh"),
    # bench/bench_scale.py
    ("bench/bench_scale.py", ["--slow-share", "2"], "--slow-share"),
    ("bench/bench_scale.py", ["--slow-share", "nan"], "--slow-share"),
    ("bench/bench_scale.py", ["--n", "-1"], "--n"),
    ("bench/bench_scale.py", ["--ranks", "0"], "--ranks"),
    ("bench/bench_scale.py", ["--keep", "/proc/nope"], "--keep"),
    ("bench/bench_scale.py", ["--keep", "{tmp}/out", "--test-size", "0"], "--test-size"),
    ("bench/bench_scale.py", ["--keep", "{tmp}/out", "/nonexistent.yaml"], "config"),
    # bench/bench_grow.py (--out is emptied first: always a tmp folder here)
    ("bench/bench_grow.py", ["--out", "/proc/nope"], "--out"),
    ("bench/bench_grow.py", ["--out", OUT, "--ranks", "0"], "--ranks"),
    ("bench/bench_grow.py", ["--out", OUT, "--add-k", "-1"], "--add-k"),
    ("bench/bench_grow.py", ["--out", OUT, "--n", "-1"], "--n"),
    ("bench/bench_grow.py", ["--out", "{tmp}"], "--out"),      # holds other files: never emptied
    ("bench/bench_grow.py", ["--out", OUT, "{tmp}/broken.yaml"], "config"),
    # bench/bench_halving.py
    ("bench/bench_halving.py", ["--out", OUT, "--ranks", "0"], "--ranks"),
    ("bench/bench_halving.py", ["--out", OUT, "--k", "-1"], "--k"),
    ("bench/bench_halving.py", ["--out", OUT, "--k", "7"], "--k"),   # not among configs/demo.yaml's top_k
    ("bench/bench_halving.py", ["--out", OUT, "--seeds", "-1"], "--seeds"),
    ("bench/bench_halving.py", ["--out", "{tmp}/file"], "--out"),
    # bench/bench_greedy.py
    ("bench/bench_greedy.py", ["--config", "/nonexistent.yaml"], "--config"),
    ("bench/bench_greedy.py", ["--config", "{tmp}/broken.yaml"], "config"),
    ("bench/bench_greedy.py", ["--seeds", "-1"], "--seeds"),
    ("bench/bench_greedy.py", ["--seeds", "0"], "--seeds"),
    # bench/bench_candidate.py
    ("bench/bench_candidate.py", ["configs/demo.yaml", "--candidates", "0"], "--candidates"),
    ("bench/bench_candidate.py", ["/nonexistent.yaml"], "config"),
    # bench/backend_agreement.py
    ("bench/backend_agreement.py", ["configs/demo.yaml", "--seeds", "-1"], "--seeds"),
    ("bench/backend_agreement.py", ["{tmp}/broken.yaml"], "config"),
]


@pytest.fixture(scope="module")
def no_heavy(tmp_path_factory):
    """A PYTHONPATH folder whose torch, numba, ... fail on import: a check made after one shows as a traceback."""
    folder = tmp_path_factory.mktemp("no-heavy")
    for name in HEAVY:
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} imported before the arguments were checked')\n")
    return str(folder)


def snapshot(root) -> list[str]:
    return sorted(str(p) for p in root.rglob("*"))


@pytest.mark.parametrize("script,args,mention", CASES, ids=[f"{s.split('/')[-1]}:{' '.join(a)}" for s, a, _ in CASES])
def test_a_bad_value_is_one_error_line_before_any_work(script, args, mention, tmp_path, no_heavy):
    (tmp_path / "file").write_text("not a folder\n")
    (tmp_path / "broken.yaml").write_text("population: [\n")
    before, demo_yaml = snapshot(tmp_path), (ROOT / "configs/demo.yaml").read_bytes()
    argv = [a.format(tmp=tmp_path) for a in args]
    if script.startswith("tools."):
        cmd, prog = [sys.executable, "-m", script], PROG[script]
    else:
        cmd, prog = [sys.executable, script], os.path.basename(script)
    path = os.pathsep.join(p for p in (no_heavy, os.environ.get("PYTHONPATH")) if p)
    p = subprocess.run([*cmd, *argv], cwd=ROOT, env=child_env(PYTHONPATH=path), capture_output=True, text=True,
                       timeout=60)
    lines = p.stderr.splitlines()
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stdout == ""
    assert len(lines) == 1, p.stderr[-3000:]
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert mention in lines[0], lines[0]
    assert snapshot(tmp_path) == before            # no output folder, log or probe left behind
    assert (ROOT / "configs/demo.yaml").read_bytes() == demo_yaml


def test_every_listed_script_is_covered():
    scripts = {s for s, _, _ in CASES}
    assert scripts == {*PROG, *(f"bench/{n}" for n in sorted(os.listdir(ROOT / "bench")) if n.endswith(".py"))}
