"""The status command on a hand-made run folder (real shard files): counts, rates, ETA, torn lines, errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from randopt_hpc import status
from randopt_hpc.config import from_dict, to_yaml
from randopt_hpc.records import Answers, CandidateRecord
from randopt_hpc.runfolder import RunFolder


def _folder(tmp_path, n=10):
    folder = RunFolder(str(tmp_path))
    (tmp_path / "run.yaml").write_text(to_yaml(from_dict({"model": {"path": "m"}, "population": {"size": n}})))
    answers = Answers(rewards=(1.1,), correct=(True,), keys=("3.00000",), answers=("1+2",), texts=None)
    for rank, items in ((0, [(0, 1.0), (2, 1.0), (4, 2.0)]), (1, [(1, 0.5)])):
        shard = folder.writer(rank)
        for i, secs in items:
            shard.append(CandidateRecord(index=i, seed=i, sigma=1e-3, answers=answers, rank=rank, seconds=secs))
        shard.close()
    with open(folder.shard_path(1), "a") as f:
        f.write('{"type":"candidate","index":3,')      # a rank killed mid-write
    return tmp_path


def test_counts_rates_and_eta(tmp_path):
    s = status.summarize(str(_folder(tmp_path)), now=0.0)
    assert (s["population"], s["done"], s["left"], s["finished"]) == (10, 4, 6, False)
    assert [(sh["rank"], sh["done"], sh["busy_s"]) for sh in s["shards"]] == [(0, 3, 4.0), (1, 1, 0.5)]
    assert s["rate"] == pytest.approx(3 / 4.0 + 1 / 0.5)
    assert s["eta_s"] == pytest.approx(6 / (3 / 4.0 + 1 / 0.5))
    text = status.render(s)
    assert "4/10 candidates (40%)" in text and "not finished" in text


def test_cli_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "randopt_hpc.status", str(_folder(tmp_path))],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "4/10" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "randopt_hpc.status", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "run.yaml" in bad.stderr


def test_sweep_folder_shows_each_point(tmp_path):
    """A launcher's sweep root: launch.yaml lists the points; one has started, one has not."""
    import yaml

    a, b = tmp_path / "000-seed-1", tmp_path / "001-seed-2"
    a.mkdir()
    _folder(a)
    (tmp_path / "launch.yaml").write_text(yaml.safe_dump([
        {"job_id": "12_0", "overrides": ["population.seed=1"], "output_dir": str(a), "config": "x"},
        {"job_id": "12_1", "overrides": ["population.seed=2"], "output_dir": str(b), "config": "y"}]))
    points = status.summarize_sweep(str(tmp_path), now=0.0)
    assert [(p["job_id"], p["started"]) for p in points] == [("12_0", True), ("12_1", False)]
    assert (points[0]["done"], points[0]["population"]) == (4, 10)
    p = subprocess.run([sys.executable, "-m", "randopt_hpc.status", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert "4/10" in p.stdout and "not started" in p.stdout and "0/2 points finished" in p.stdout


@pytest.mark.parametrize("damage", ["shards a file", "results.h5 a folder", "results.h5 a link to itself"])
def test_a_damaged_layout_is_one_line_and_exit_2(tmp_path, damage):
    """A folder whose shards/ is a file reads as no candidates and a finished run; say what is wrong instead."""
    import shutil

    (tmp_path / "run").mkdir()
    run = _folder(tmp_path / "run")
    if damage == "shards a file":
        shutil.rmtree(run / "shards")
        (run / "shards").write_text("")
    elif damage == "results.h5 a folder":
        (run / "results.h5").mkdir()
    else:
        (run / "results.h5").symlink_to("results.h5")
    p = subprocess.run([sys.executable, "-m", "randopt_hpc.status", str(run)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"randopt_hpc.status: error: {run}: {run}/") and "the folder is damaged" in p.stderr
