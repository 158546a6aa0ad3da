"""The 1-D toy (issue 19) under real mpiexec: a toy_signal run on backend mlp gives the same results on 1 and 2
ranks, and its ensembles' answers are the mean rollouts of their members (the task's combine)."""
import json

import h5py
import numpy as np
import pytest
import yaml

from tests.conftest import assert_same_results, launch

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    from tools.pretrain_toy import pretrain

    tmp = tmp_path_factory.mktemp("toy")
    pretrain(str(tmp / "model"), "mixed", seed=0, steps=30, log=lambda *a: None)   # a few steps: rollouts differ
    out = {}
    for name, nproc in (("np1", 1), ("np2", 2)):
        cfg = {"model": {"path": str(tmp / "model"), "dtype": "float32"}, "backend": "mlp",
               "task": {"name": "toy_signal", "template": "family=mixed ctx=10 fut=20", "data": None,
                        "train_size": 6, "test_size": 5, "seed": 1},
               "population": {"size": 16, "seed": 3, "sigmas": [2e-3, 1e-2], "sigma_assignment": "random"},
               "selection": {"top_k": [1, 4], "control": True},
               # batch 4: the splits span batches, and 2 ranks answer a member's test split in parts
               "generation": {"max_new_tokens": 20, "batch_size": 4, "samples": 0},
               "output": {"dir": str(tmp / name)}, "runtime": {"threads": 1, "progress_every_s": 60.0}}
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        p = launch(path, nproc, timeout=120)
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = tmp / name / "results.h5"
    return out


def test_toy_results_identical_on_1_and_2_ranks(toy_runs):
    assert_same_results(toy_runs["np1"], toy_runs["np2"])
    with h5py.File(toy_runs["np2"]) as f:
        assert f.attrs["world_size"] == 2 and sorted(set(f["population/rank"][()].tolist())) == [0, 1]
        scores = f["population/train_score"][()]
        assert len(set(scores.tolist())) > 1, "all candidates scored alike: the test would prove nothing"
        assert (scores > -1e6).all(), "a candidate's rollout was junk"


def test_toy_ensembles_average_their_members_rollouts(toy_runs):
    with h5py.File(toy_runs["np2"]) as f:
        for group in ("selected", "control"):
            keys = f[f"ensemble/{group}/test_key"].asstr()[()]
            voted = f[f"ensemble/{group}/voted_key"].asstr()[()]
            for i, k in enumerate(f[f"ensemble/{group}/k"][()]):
                for t in range(keys.shape[1]):
                    members = np.array([json.loads(keys[m, t]) for m in range(k)])
                    assert np.allclose(json.loads(voted[i, t]), members.mean(axis=0), rtol=0, atol=1e-12)
