import hashlib
import json
import os
import subprocess
import sys

import pytest
import yaml

from randopt_hpc.config import ConfigError, load_config
from randopt_hpc.fingerprint import result_fingerprint
from randopt_hpc.textio import parse_override

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def base_cfg(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "five.jsonl"
    data.write_text("".join(json.dumps({"numbers": [1, 2, 3], "target": 6}) + "\n" for _ in range(5)))
    cfg = {"model": {"path": str(model)}, "task": {"name": "countdown", "data": None, "train_size": 4, "test_size": 4},
           "population": {"size": 8, "sigmas": [1e-3]}, "selection": {"top_k": [1, 4]},
           "output": {"dir": str(tmp_path / "out")}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path


def test_overrides_are_typed():
    assert parse_override("population.sigmas=1e-3") == (["population", "sigmas"], 1e-3)
    assert parse_override("population.sigmas=[1e-3, 2e-3]")[1] == [1e-3, 2e-3]
    assert parse_override("selection.top_k=[1,5]")[1] == [1, 5]
    assert parse_override("output.overwrite=true")[1] is True
    assert parse_override("task.data=null")[1] is None
    assert parse_override("population.size=64")[1] == 64


def test_load_with_overrides(base_cfg):
    path, _ = base_cfg
    cfg = load_config(str(path), ["population.sigmas=[5e-3, 1e-2]", "population.size=16", "selection.top_k=2"])
    assert cfg.population.sigmas == (5e-3, 1e-2)
    assert cfg.population.size == 16
    assert cfg.selection.top_k == (2,)
    with pytest.raises(ConfigError, match=r"^population.bogus: unknown key; valid keys: population.size"):
        load_config(str(path), ["population.bogus=1"])


def test_fingerprint_ignores_only_non_result_fields(base_cfg):
    path, _ = base_cfg
    a = result_fingerprint(load_config(str(path)))
    assert a == result_fingerprint(load_config(str(path), ["output.overwrite=true", "runtime.comm=serial"]))
    assert a != result_fingerprint(load_config(str(path), ["population.seed=1"]))
    # What a candidate answers.
    for changed in ("population.noise=table16", "population.noise=window", "generation.stop_strings=false"):
        assert a != result_fingerprint(load_config(str(path), [changed]))


BAD = [
    (["foo=1"], "foo"),
    (["population.sizee=3"], "population.sizee"),
    (["population.size=0"], "population.size"),
    (["population.size=abc"], "population.size"),
    (["population.size=1.5"], "population.size"),
    (["selection.top_k=[1, 100]"], "selection.top_k"),
    (["selection.top_k=[]"], "selection.top_k"),
    (["selection.top_k=[2, 2]"], "selection.top_k"),
    (["population.sigmas=[0.0]"], "population.sigmas"),
    (["runtime.stop_grace_s=.inf"], "runtime.stop_grace_s"),        # YAML's infinity: no wait is endless
    (["runtime.stop_grace_s=1e309"], "runtime.stop_grace_s"),
    (["runtime.stop_grace_s=1e300"], "runtime.stop_grace_s"),
    (["runtime.progress_every_s=" + "9" * 400], "runtime.progress_every_s"),   # an int past float's range
    (["es.lr=.inf"], "es.lr"),
    (["population.sigmas=[-1e-3]"], "population.sigmas"),
    (["population.sigmas=abc"], "population.sigmas"),
    (["population.sigma_assignment=striped"], "population.sigma_assignment"),
    (["population.include=['(']"], "population.include"),
    (["model.path=/nonexistent/model"], "model.path"),
    (["model.dtype=float64"], "model.dtype"),
    (["backend=tpu"], "backend"),
    (["task.name=gsm9k"], "task.name"),
    (["task.data=/nonexistent.json"], "task.data"),
    (["task.train_size=0"], "task.train_size"),
    (["task.template=x {numbers} {target}"], "task.template"),            # countdown takes none
    (["task.name=countdown_qa", "task.template=x {numbers}"], "task.template"),
    (["task.name=countdown_qa", "task.template=x {numbers} {target} {z}"], "task.template"),
    (["task.template=Q: {numbers} {target} A:"], "task.template"),        # unquoted YAML mapping
    (["generation.max_new_tokens=0"], "generation.max_new_tokens"),
    (["generation.batch_size=-1"], "generation.batch_size"),
    (["runtime.comm=tcp"], "runtime.comm"),
    (["vllm.tensor_parallel_size=0"], "vllm.tensor_parallel_size"),
    (["vllm.gpu_memory_utilization=1.5"], "vllm.gpu_memory_utilization"),
    (["vllm.max_model_len=abc"], "vllm.max_model_len"),
    (["vllm.enforce_eager=2"], "vllm.enforce_eager"),
    (["runtime.stop_grace_s=-1"], "runtime.stop_grace_s"),
    (["population.noise=box"], "population.noise"),
    (["backend=vllm", "population.noise=table16"], "population.noise"),   # the hf backend's only
    (["backend=vllm", "population.noise=window"], "population.noise"),
    (["generation.stop_strings=maybe"], "generation.stop_strings"),
    (["selection.schedule=half"], "selection.schedule"),
    (["selection.halving.eta=1"], "selection.halving.eta"),
    (["runtime.stage_dir=''"], "runtime.stage_dir"),
    (["output.overwrite=maybe"], "output.overwrite"),
    (["population=3"], "population"),
    (["noequals"], "noequals"),
    (["population.seed=7"], "output.dir"),             # the folder holds a run of another config
    (["task.data={data}", "task.train_size=4", "task.test_size=4"], "task"),   # 5 rows < 8
]


def _finished_run(path, tmp):
    """output.dir holds a finished run of the good config; returns a digest of its results file."""
    from randopt_hpc.config import to_yaml

    out = tmp / "out"
    out.mkdir()
    (out / "run.yaml").write_text(to_yaml(load_config(str(path))))
    (out / "results.h5").write_bytes(os.urandom(4096))
    return out, hashlib.sha256((out / "results.h5").read_bytes()).hexdigest()


@pytest.mark.parametrize("overrides,field", BAD, ids=[b[0][0] for b in BAD])
def test_bad_config_exits_2_with_one_line_and_keeps_results(base_cfg, overrides, field, capsys):
    from randopt_hpc import run

    path, tmp = base_cfg
    out, before = _finished_run(path, tmp)
    overrides = [o.replace("{data}", str(tmp / "five.jsonl")) for o in overrides]
    assert run.main([str(path), *overrides]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("randopt_hpc: error: ") and field in lines[0], lines
    assert hashlib.sha256((out / "results.h5").read_bytes()).hexdigest() == before


@pytest.mark.parametrize("argv", [["population.size=3"], []])
def test_a_config_file_comes_first(argv, capsys):
    from randopt_hpc import run

    assert run.main(argv) == 2
    assert capsys.readouterr().err.strip() == ("randopt_hpc: error: config: a config file comes first; usage: "
                                               "python -m randopt_hpc.run CONFIG.yaml [key=value ...]")


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_run_help_is_no_error(flag, capsys):
    from randopt_hpc import run

    assert run.main([flag]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: python -m randopt_hpc.run CONFIG.yaml [key=value ...]\n") and err == ""
    assert "python -m randopt_hpc.config" in out


def test_the_command_line_contract_in_a_real_process(base_cfg, tmp_path):
    """The two things only a new interpreter shows: the exit status and stderr of `python -m`."""
    path, tmp = base_cfg
    out, before = _finished_run(path, tmp)
    for args in ([str(path), "population.size=0"], [str(tmp_path / "nope.yaml")]):
        p = subprocess.run([sys.executable, "-m", "randopt_hpc.run", *args], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert p.stdout == ""
    assert "population.size: must be >= 1, got 0" in p.stderr or "no such file" in p.stderr
    assert hashlib.sha256((out / "results.h5").read_bytes()).hexdigest() == before


def test_template_validation_is_the_tasks(base_cfg):
    path, _ = base_cfg
    cfg = load_config(str(path), ["task.name=countdown_qa", 'task.template="Q: use {numbers} and make {target} A:"'])
    assert cfg.task.template == "Q: use {numbers} and make {target} A:"
    with pytest.raises(ConfigError, match=r"^task.template: task countdown takes no prompt template$"):
        load_config(str(path), ["task.template=x {numbers} {target}"])
