"""run_es in-process on the shipped demo model (serial): a run grown to more iterations and more evaluations equals
a fresh run of the grown config, checkpoints are pruned to the newest two, and stray files beside them are
left alone."""
import logging
import os

import pytest

from randopt_hpc import results
from randopt_hpc.comm import SerialComm, StopFlag
from randopt_hpc.config import load_config
from randopt_hpc.data import load_examples
from randopt_hpc.environment import Environment
from randopt_hpc.es_run import checkpoints, run_es
from tests.conftest import ROOT, write_config
from tests.fakes import quiet_log

TASK = {"name": "countdown_qa", "template": "Q: use {numbers} and make {target} A:", "train_size": 8,
        "test_size": 8, "seed": 0}


def es_run(tmp, name, out, log=None, **es):
    cfg = load_config(str(write_config(tmp / f"{name}.yaml", ROOT / "models" / "demo", out, task=TASK,
                                       algorithm="es", population={"size": 4, "sigmas": [1e-2]},
                                       generation={"samples": 0, "max_new_tokens": 12, "batch_size": 8},
                                       es={"lr": 5e-4, "checkpoint_every": 1, **es})))
    run_es(cfg, SerialComm(), Environment.from_os({}), log or quiet_log(), *load_examples(cfg), StopFlag())
    return out / "results.h5"


class Said(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("es-run")
    es_run(tmp, "small", tmp / "grown", iterations=2, eval_every=2)
    (tmp / "grown" / "es" / "theta-notes.safetensors").write_text("not ours")
    log, said = logging.getLogger("randopt_hpc.tests.es-grown"), Said()
    log.setLevel(logging.INFO)
    log.addHandler(said)
    path = es_run(tmp, "big", tmp / "grown", log, iterations=4, eval_every=1)
    log.removeHandler(said)
    return tmp, path, said.lines


def test_a_grown_run_starts_from_a_checkpoint_written_before_it_grew(grown):
    """θ_1, written by the 2-iteration run, serves the 4-iteration one (θ_1 is evaluated now, so it starts
    there): a checkpoint names what θ depends on, and the number of iterations is not part of it."""
    _, _, lines = grown
    assert any("from θ_1 (checkpoint)" in line for line in lines), lines


def test_a_grown_run_equals_a_fresh_run_of_its_config(grown):
    tmp, path, _ = grown
    fresh = es_run(tmp, "fresh", tmp / "fresh", iterations=4, eval_every=1)
    a, b = results.comparable(str(path)), results.comparable(str(fresh))
    assert results.differences(a, b) == []
    assert a["es/eval_iteration"].tolist() == [0, 1, 2, 3, 4]   # θ_1 and θ_3: evaluated when the run grew


def test_only_the_newest_two_checkpoints_stay_and_strays_are_left_alone(grown):
    tmp, _, _ = grown
    names = [os.path.basename(p) for p in checkpoints(str(tmp / "grown"))]
    assert names == ["theta-00003.safetensors", "theta-00004.safetensors"]
    assert (tmp / "grown" / "es" / "theta-notes.safetensors").read_text() == "not ours"
