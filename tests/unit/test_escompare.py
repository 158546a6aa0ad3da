"""`python -m tools.analyze es` on real results files: a RandOpt run of the demo model grown N = 4 -> 8 and an
ES run of 2 iterations of 4 candidates (in-process, serial): the matched rows read the files' numbers, the
figure is written, and an ES file given to a RandOpt command is one line, exit 2."""
import json
import shutil
import subprocess
import sys

import h5py
import pytest

from randopt_hpc.comm import SerialComm, StopFlag
from randopt_hpc.config import load_config
from randopt_hpc.data import load_examples
from randopt_hpc.environment import Environment
from randopt_hpc.es_run import run_es
from randopt_hpc.run import run
from tests.conftest import ROOT, write_config
from tests.fakes import quiet_log

TASK = {"name": "countdown_qa", "template": "Q: use {numbers} and make {target} A:", "train_size": 10,
        "test_size": 10, "seed": 0}
GEN = {"samples": 0, "max_new_tokens": 12, "batch_size": 10}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("escompare")
    model = ROOT / "models" / "demo"
    out = []
    for n in (4, 8):   # one folder grown, each size's file kept
        cfg = load_config(str(write_config(tmp / f"ro{n}.yaml", model, tmp / "ro", task=TASK, generation=GEN,
                                           population={"size": n, "sigmas": [1e-2]},
                                           selection={"top_k": [1, 2], "control": False})))
        run(cfg, SerialComm(), Environment.from_os({}), quiet_log(), *load_examples(cfg), StopFlag())
        shutil.copy(tmp / "ro" / "results.h5", tmp / f"ro-n{n}.h5")
        out.append(tmp / f"ro-n{n}.h5")
    cfg = load_config(str(write_config(tmp / "es.yaml", model, tmp / "es", task=TASK, generation=GEN, algorithm="es",
                                       population={"size": 4, "sigmas": [1e-2]}, es={"iterations": 2, "lr": 5e-4})))
    run_es(cfg, SerialComm(), Environment.from_os({}), quiet_log(), *load_examples(cfg), StopFlag())
    return out + [tmp / "es" / "results.h5"]


def analyze(*args):
    return subprocess.run([sys.executable, "-m", "tools.analyze", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_rows_are_the_files_numbers_at_matched_tokens(files, tmp_path):
    p = analyze("es", *files, "--k", 2, "--json", "--out", tmp_path / "plots")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert (tmp_path / "plots" / "es-vs-randopt.png").stat().st_size > 0 and d["plots"]
    with h5py.File(files[2]) as f:
        tokens, acc = f["es/train_tokens"][()], f["es/test_accuracy"][()]
    assert [r["iteration"] for r in d["rows"]] == [1, 2] and [r["randopt_n"] for r in d["rows"]] == [4, 8]
    for row, ro in zip(d["rows"], files[:2]):
        with h5py.File(ro) as f:
            gen = f["population/train_gen_tokens"][()]
            k = list(f["ensemble/selected/k"][()]).index(2)
            assert row["randopt_tokens"] == int(gen[gen >= 0].sum())
            assert row["randopt_vote"] == pytest.approx(float(f["ensemble/selected/accuracy"][k]))
        assert row["es_tokens"] == int(tokens[row["iteration"]]) and row["es_accuracy"] == pytest.approx(
            float(acc[row["iteration"]]))
        assert abs(row["es_tokens"] - row["randopt_tokens"]) <= 0.05 * row["es_tokens"]
    assert d["means"][0]["es_accuracy"] == pytest.approx(d["rows"][0]["es_accuracy"])
    text = analyze("es", *files, "--k", 2).stdout
    assert "| 11 | 1 |" in text and "| 11 | 2 |" in text and "mean over seeds" in text
    # No tolerance: the token counts differ a little (other candidates answer at other lengths), nothing matches.
    assert d["rows"][0]["es_tokens"] != d["rows"][0]["randopt_tokens"]
    assert json.loads(analyze("es", *files, "--k", 2, "--json", "--tolerance", 0).stdout)["rows"] == []


@pytest.mark.parametrize("args, match", [
    (("summary", "ES"), "a run of algorithm es; `python -m tools.analyze es`"),
    (("es", "ES"), "give RandOpt and ES results files"),
    (("es", "RO", "ES", "--k", 5), "no top-5 vote"),
])
def test_refusals_are_one_line(files, args, match):
    names = {"ES": files[2], "RO": files[0]}
    p = analyze(*(names.get(a, a) for a in args))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and match in p.stderr, p.stderr
