"""selection.schedule: halving under real mpiexec on the tiny model: 1, 2 and 3 ranks (strided, and dynamic on 3)
write equal results, and a rank killed in the middle of a rung leaves a folder whose rerun equals the
uninterrupted run, with no (candidate, example) answered twice."""

import h5py
import pytest

from randopt_hpc.runfolder import RunFolder
from tests.conftest import assert_same_results, launch, write_config
from tests.integration.conftest import kill_rank_when

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# N = 12 on 6 train examples, K up to 3: 12 on 2 -> 6 on 4 -> 3 on 6.
HALVING = {"schedule": "halving", "halving": {"first": 2, "eta": 2, "keep": 1}}


def _config(tmp, model, name, schedule="strided"):
    return write_config(tmp / f"{name}.yaml", model, tmp / name, selection=HALVING,
                        generation={"samples": 0}, runtime={"schedule": schedule})


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """1, 2 and 3 ranks, and 3 ranks taking each rung's candidates from the shared counter."""
    tmp = tmp_path_factory.mktemp("halving")
    out = {}
    for name, nproc in (("np1", 1), ("np2", 2), ("np3", 3), ("dyn3", 3)):
        p = launch(_config(tmp, tiny_model, name, "dynamic" if name == "dyn3" else "strided"), nproc)
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = tmp / name / "results.h5"
    return out


def test_halving_results_are_the_same_on_1_2_3_ranks(runs):
    for name in ("np2", "np3", "dyn3"):
        assert_same_results(runs["np1"], runs[name])
    with h5py.File(runs["np3"]) as f:
        assert sorted(f["population/train_examples"][()].tolist()) == [2] * 6 + [4] * 3 + [6] * 3
        assert len(set(f["population/train_score"][()].tolist())) > 1


def _parts(out) -> list:
    return [(r.index, r.answers.ids) for r in RunFolder(str(out)).records() if r.kind == "candidate"]


def test_a_rank_killed_mid_rung_then_rerun_equals_the_uninterrupted_run(runs, tiny_model, tmp_path):
    cfg = _config(tmp_path, tiny_model, "killed")
    out = tmp_path / "killed"
    # Each candidate's first part is its first rung's: a 13th part is the second rung's.
    proc = kill_rank_when(cfg, 1, lambda: (out / "shards").exists() and len(_parts(out)) > 12)
    assert proc.returncode != 0 and not (out / "results.h5").exists()
    before = len(_parts(out))
    assert 12 < before < 12 + 6 + 3    # the first rung done, the run stopped before its end
    again = launch(cfg, 2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_results(runs["np2"], out / "results.h5")
    asked = [(i, x) for i, ids in _parts(out) for x in ids]
    assert len(asked) == len(set(asked)) == 12 * 2 + 6 * 2 + 3 * 2
