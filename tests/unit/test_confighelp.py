"""The config key listing (randopt_hpc.confighelp) and the did-you-mean of config errors."""
import dataclasses
import os
import re
import subprocess
import sys
from typing import get_type_hints

import pytest
import yaml

from randopt_hpc import confighelp
from randopt_hpc.config import Config, ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def leaf_defaults(cls=Config, prefix=""):
    """Every leaf field of the config dataclasses (dotted name -> default), walked here, not by confighelp."""
    out = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if cls is Config and f.name == "tasks":   # only the internal form of a `task:` list
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(leaf_defaults(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return out


def cli(*args):
    return subprocess.run([sys.executable, "-m", "randopt_hpc.config", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_every_field_has_a_meaning_and_no_meaning_is_stale():
    leaves = leaf_defaults()
    missing = [name for name in leaves if not confighelp.MEANINGS.get(name, "").strip()]
    assert not missing, f"add a meaning to confighelp.MEANINGS for {missing}"
    assert set(confighelp.MEANINGS) - set(leaves) == {"task"}
    assert [k.name for k in confighelp.keys()] == ["model.path", "model.dtype", "model.chat", "backend",
                                                   "algorithm", "task", *list(leaves)[5:]]


def test_the_defaults_shown_are_the_dataclass_defaults():
    leaves = leaf_defaults()
    for key in confighelp.keys():
        if key.name in leaves:
            want = leaves[key.name]
            assert yaml.safe_load(key.default) == (list(want) if isinstance(want, tuple) else want), key


def test_types_read_as_yaml_values():
    types = {k.name: k.type for k in confighelp.keys()}
    assert types["population.size"] == "int" and types["runtime.progress_every_s"] == "float"
    assert types["population.sigmas"] == "list of float" and types["task.data"] == "str or null"
    assert types["model.chat"] == "auto, true or false" and types["output.save_text"] == "bool"
    assert types["backend"] == "hf, vllm or mlp" and types["population.sigma_assignment"] == "random or blocked"
    meaning = {k.name: k.meaning for k in confighelp.keys()}
    assert "one of countdown, countdown_qa," in meaning["task.name"]   # too many choices for the type column


@pytest.mark.parametrize("key,values", sorted(confighelp.choices().items()))
def test_the_listed_choices_are_what_validation_accepts(key, values):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.path=/m", f"{key}=zzzq"], check_paths=False)
    assert str(e.value).startswith(f"{key}: must be one of {', '.join(values)}; got 'zzzq'")


def test_the_listing_runs_as_a_module():
    p = cli()
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["key", "type", "default", "meaning"]
    assert any(line.startswith("runtime.progress_every_s ") and " 5.0 " in line for line in lines)
    assert any(line.startswith("slurm.nodes ") for line in lines)
    assert not any(line.startswith("tasks") for line in lines)


def test_the_readme_table_is_the_generated_one():
    p = cli("--markdown")
    assert p.returncode == 0, p.stderr
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    table = re.search(r"<!-- config-keys:begin -->\n(.*?)\n<!-- config-keys:end -->", readme, re.S)
    assert table, "README.md lost its config-keys markers"
    assert p.stdout.strip() == table.group(1).strip(), \
        "README's key table is stale: paste `python -m randopt_hpc.config --markdown` between its markers"


def test_a_prefix_narrows_the_listing(capsys):
    assert confighelp.main(["vllm"]) == 0
    body = capsys.readouterr().out.splitlines()[1:]
    assert body and all(line.startswith("vllm.") or line.startswith(" ") for line in body)
    assert confighelp.main(["--markdown", "population.size"]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == [confighelp.markdown(confighelp.keys()).splitlines()[
        [k.name for k in confighelp.keys()].index("population.size") + 2]]
    assert confighelp.main(["task"]) == 0
    assert "task.prompt_style" in capsys.readouterr().out


def test_an_unknown_prefix_is_one_line_and_exit_2():
    p = cli("population.sise")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and p.stdout == "" and len(lines) == 1, p.stderr
    assert lines[0].startswith("randopt_hpc.config: error: ") and "did you mean population.size?" in lines[0]
    assert "sections: model, backend, algorithm, task, population," in lines[0]


def test_help(capsys):
    assert confighelp.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith(confighelp.USAGE)
    assert confighelp.main(["--bogus"]) == 2
    assert "valid options: --markdown" in capsys.readouterr().err
    text = confighelp.run_help()
    assert text.startswith("usage: python -m randopt_hpc.run CONFIG.yaml [key=value ...]\n")
    assert "python -m randopt_hpc.config" in text and "population.size=256" in text
    assert all(s in text for s in ("model", "vllm", "slurm"))


def test_a_misspelt_key_gets_a_suggestion_in_a_file_and_in_an_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("population:\n  sise: 3\n")
    for args in ((str(path), []), (None, ["population.sise=3"])):
        with pytest.raises(ConfigError, match=r"^population\.sise: unknown key; did you mean population\.size\? "
                                              r"valid keys: population\.size, population\.seed"):
            load_config(*args)
    with pytest.raises(ConfigError, match=r"^popluation: unknown key; did you mean population\?"):
        load_config(None, ["popluation.size=3"])
    with pytest.raises(ConfigError, match=r"^population\.qqq: unknown key; valid keys: population\.size"):
        load_config(None, ["population.qqq=3"])


def test_a_misspelt_choice_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"^backend: must be one of hf, vllm, mlp; got 'vlm'; did you mean vllm\?$"):
        load_config(None, ["model.path=/m", "backend=vlm"], check_paths=False)
    with pytest.raises(ConfigError, match=r"^runtime\.comm: must be one of auto, mpi, serial; got 'tcp'$"):
        load_config(None, ["model.path=/m", "runtime.comm=tcp"], check_paths=False)
