"""The run folder and its records: states, preparation, shard lines written and read back, torn and
foreign lines, the incremental count; and the process environment's choices."""
from __future__ import annotations

import json

import pytest

from randopt_hpc import records
from randopt_hpc.config import ConfigError, from_dict, to_yaml
from randopt_hpc.environment import Environment, process_variables
from randopt_hpc.records import Answers, BaseRecord, CandidateRecord, MemberRecord
from randopt_hpc.runfolder import FRESH, RESUME, RunFolder, read_shard

ANS = Answers(rewards=(1.1, 0.0, 0.1), correct=(True, False, False), keys=("6.00000", None, "2.00000"),
              answers=("1+2+3", None, "1*2"), texts=None)


def cfg(tmp_path, **over):
    d = {"model": {"path": "m"}, "output": {"dir": str(tmp_path / "out")}, "population": {"size": 4},
         "selection": {"top_k": [1, 2]}}
    for k, v in over.items():
        section, key = k.split("__")
        d.setdefault(section, {})[key] = v
    return from_dict(d)


def cand(i, rank=0):
    return CandidateRecord(index=i, seed=100 + i, sigma=1e-3, answers=ANS, rank=rank, seconds=0.5)


def test_records_round_trip_in_the_schema_1_layout():
    texts = Answers(**{**ANS.__dict__, "texts": ("a", "b", "c")})
    for rec in (cand(3), BaseRecord("test", texts), MemberRecord(7, ANS)):
        line = records.to_json(rec)
        assert line.startswith(f'{{"type":"{rec.kind}"') and "\n" not in line
        assert records.from_json(line) == rec
    d = json.loads(records.to_json(cand(3)))
    # The keys older readers (and older shards) use, with score and accuracy as the plain means.
    assert d == {"type": "candidate", "index": 3, "seed": 103, "sigma": 1e-3, "score": (1.1 + 0.0 + 0.1) / 3,
                 "accuracy": 1 / 3, "rewards": [1.1, 0.0, 0.1], "correct": [True, False, False],
                 "keys": ["6.00000", None, "2.00000"], "answers": ["1+2+3", None, "1*2"], "texts": None,
                 "rank": 0, "seconds": 0.5}


@pytest.mark.parametrize("line", [
    "not json", "[]", '{"type":"candidate"}', '{"type":"bogus","index":1}',
    '{"type":"member","index":-1,"rewards":[],"correct":[],"keys":[],"answers":[],"texts":null}',
    '{"type":"member","index":1,"rewards":[1.0],"correct":[true,false],"keys":[null],"answers":[null]}',
    '{"type":"member","index":1,"rewards":[true],"correct":[true],"keys":[null],"answers":[null]}',
    '{"type":"base","split":"dev","rewards":[],"correct":[],"keys":[],"answers":[],"texts":[]}',
    '{"type":"candidate","index":1,"seed":2,"sigma":0,"rank":0,"seconds":1,"rewards":[],"correct":[],'
    '"keys":[],"answers":[]}',
])
def test_malformed_lines_are_refused(line):
    with pytest.raises(ValueError):
        records.from_json(line)


def test_states_of_a_folder(tmp_path):
    c = cfg(tmp_path)
    folder = RunFolder(c.output.dir)
    assert folder.state(c) == FRESH
    folder.prepare(c)
    assert folder.state(c) == RESUME
    assert from_dict(folder.read_config()) == c
    with pytest.raises(ConfigError, match=r"holds a run with another config \(population.seed: 0 there, 5 here;"):
        folder.state(cfg(tmp_path, population__seed=5))
    # Only a results file that reads back as this config's counts as finished (tests/unit/test_run.py
    # writes real ones); an empty one is rebuilt.
    open(folder.results, "wb").close()
    assert folder.state(c) == RESUME and folder.results_damage(c) == "not an HDF5 file"
    assert folder.state(cfg(tmp_path, output__overwrite=True)) == FRESH


@pytest.mark.parametrize("text,why", [("", "holds no config mapping"), ("population: [1,\n", "not valid YAML"),
                                      ("- 1\n- 2\n", "holds no config mapping"),
                                      ("population:\n  size: 0\nmodel:\n  path: m\n", "population.size"),
                                      ("a: &x [1]\nb: *x\n", "aliases"), (b"\xff\xfe", "not UTF-8")])
def test_a_damaged_run_yaml_is_one_line(tmp_path, text, why):
    c = cfg(tmp_path)
    folder = RunFolder(c.output.dir)
    folder.prepare(c)
    with open(folder.run_yaml, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as e:
        folder.state(c)
    assert str(e.value).startswith("output.dir: ") and why in str(e.value) and "\n" not in str(e.value)


def test_results_without_a_config_are_refused(tmp_path):
    c = cfg(tmp_path)
    folder = RunFolder(c.output.dir)
    folder.writer(0).close()
    with pytest.raises(ConfigError, match="holds results of an unknown config"):
        folder.state(c)


def test_prepare_overwrites_unless_a_requeued_job_resumes(tmp_path):
    c = cfg(tmp_path, output__overwrite=True)
    folder = RunFolder(c.output.dir)
    folder.prepare(c)
    w = folder.writer(0)
    w.append(cand(0))
    w.close()
    folder.prepare(c, restart_count=1)          # requeued: its own shards are kept
    assert [r.index for r in folder.records()] == [0]
    folder.prepare(c)
    assert folder.records() == [] and open(folder.run_yaml).read() == to_yaml(c)


def test_torn_and_foreign_lines(tmp_path):
    folder = RunFolder(str(tmp_path))
    w = folder.writer(2)
    for i in (0, 3):
        w.append(cand(i, rank=2))
    w.close()
    path = folder.shard_path(2)
    with open(path, "a") as f:
        f.write(records.to_json(cand(6))[:30])      # killed mid-write
    assert [r.index for r in read_shard(path)] == [0, 3] and folder.count_done() == 2
    w = folder.writer(2)                            # the next writer cuts the torn tail first
    w.append(cand(6, rank=2))
    w.close()
    assert [r.index for r in read_shard(path)] == [0, 3, 6]
    assert folder.count_done() == 3                 # incremental: reads on from where it stopped
    w = folder.writer(5)
    w.append(cand(3, rank=5))                       # a duplicate from a later launch counts once
    w.close()
    assert folder.count_done() == 3 and RunFolder(str(tmp_path)).count_done() == 3
    assert [folder.shard_rank(p) for p in folder.shard_files()] == [2, 5]


def test_process_variables():
    env = Environment.from_os({"MPI_LOCALRANKID": "1", "PMI_RANK": "1", "PMI_SIZE": "2"})
    defaults, assign = process_variables(from_dict({"runtime": {"threads": 3}}), env)
    assert defaults == {"NUMBA_NUM_THREADS": "3", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert assign == {}
    defaults, assign = process_variables(from_dict({"backend": "vllm", "runtime": {"device": "cuda"}}), env)
    assert defaults["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and assign == {"CUDA_VISIBLE_DEVICES": "1"}
