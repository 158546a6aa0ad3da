"""Several tasks on one population: the config's task list, the Objective, routing scores to each task,
the vote's task verdicts, and run() on the fake backend writing the N × M score matrix that the ranking
and tools.analyze discordance use."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml

from randopt_hpc import vote
from randopt_hpc.config import ConfigError, from_dict, load_config, to_yaml
from randopt_hpc.data import load_examples, make_task
from randopt_hpc.tasks.countdown import Countdown
from randopt_hpc.tasks.countdown_qa import CountdownQA
from randopt_hpc.tasks.multi import MultiTask, Objective
from tests.fakes import fake_config
from tests.unit.test_run import start


def two_tasks(tmp, **selection):
    """The fake config with countdown_qa and countdown on the same problems."""
    path = fake_config(tmp, selection=selection) if selection else fake_config(tmp)
    cfg = yaml.safe_load(path.read_text())
    one = cfg["task"]
    cfg["task"] = [one, {**one, "name": "countdown", "train_size": 6, "test_size": 10}]
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_task_list_builds_validates_and_round_trips(tmp_path):
    cfg = load_config(str(two_tasks(tmp_path)))
    assert [t.name for t in cfg.all_tasks] == ["countdown_qa", "countdown"] and cfg.task == cfg.tasks[0]
    assert from_dict(yaml.safe_load(to_yaml(cfg))).validate() == cfg
    single = load_config(str(fake_config(tmp_path, out="one")))
    assert single.tasks == () and single.all_tasks == (single.task,)
    for overrides, message in [
        (["selection.task=countdown_qa"], "selection.task: names a task only when `task` lists several"),
        (["task=[]"], "task: an empty list"),
        (["task=[{name: countdown}, {name: countdown}]"], "task: task countdown is listed twice"),
        (["task=[{name: countdown}, {name: nope}]"], "task[1].name: must be one of"),
        (["task=[{name: countdown, prompt_style: chatty}]"], "task[0].prompt_style: must be one of reference, es"),
        (["task=[{name: countdown_qa, prompt_style: es}]"], "task[0].prompt_style: task countdown_qa has one"),
        (["model.chat=maybe"], "model.chat: must be one of auto, true, false"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(str(fake_config(tmp_path, out="bad")), overrides)
    with pytest.raises(ConfigError, match=r"selection\.task: must be one of countdown_qa, countdown"):
        load_config(str(two_tasks(tmp_path)), ["selection.task=gsm8k"])
    assert load_config(str(fake_config(tmp_path, out="chat")), ["model.chat=true"]).model.chat is True


def test_examples_are_tagged_and_scored_by_their_own_task(tmp_path):
    cfg = load_config(str(two_tasks(tmp_path)))
    train, test = load_examples(cfg)
    assert [ex.task for ex in train] == ["countdown_qa"] * 8 + ["countdown"] * 6
    assert len(test) == 22 and len({ex.id for ex in train + test}) == 36
    assert train[0].id.startswith("countdown_qa/") and train[8].id.startswith("countdown/")
    task = make_task(cfg)
    assert isinstance(task, MultiTask) and isinstance(task.tasks["countdown"], Countdown)
    a, b, c = train[8].numbers
    tagged = f"x</think>\n<answer>{a}+{b}+{c}</answer>"
    plain = f"{a}+{b}+{c}\n"
    assert task.score(tagged, train[8]).correct and not task.score(plain, train[8]).correct
    assert task.score(plain, train[0]).correct is CountdownQA().score(plain, train[0]).correct
    many = task.score_many([plain, tagged], [train[0], train[8]])
    assert many == [task.score(plain, train[0]), task.score(tagged, train[8])]
    # countdown judges a voted key by its value; countdown_qa leaves it to the first member's answer.
    assert task.key_correct(str(a + b + c), train[8]) is True and task.key_correct("1", train[0]) is None


def test_objective_weighs_each_task_once():
    class Ex:
        def __init__(self, task):
            self.task = task
    train = [Ex("a")] * 3 + [Ex("b")]
    rewards = [1.0, 1.0, 1.0, 0.0]
    both = Objective.of(train, ["a", "b"])
    assert both.by_task(rewards) == [1.0, 0.0] and both(rewards) == 0.5   # not the example mean 0.75
    assert Objective.of(train, ["a", "b"], "b")(rewards) == 0.0
    assert Objective.of(train, ["only"])(rewards) == 0.75


def test_vote_takes_the_tasks_verdict_on_the_key():
    keys, correct = [["9"], ["9"], ["8"]], [[False], [False], [True]]
    assert vote.vote(keys, correct, 3) == (["9"], [False])            # the first holder's flag
    assert vote.key_verdicts(keys, correct, lambda t, key: key == "9") == [[True], [True], [False]]
    assert vote.vote(keys, vote.key_verdicts(keys, correct, lambda t, key: key == "9"), 3) == (["9"], [True])
    assert vote.key_verdicts(keys, correct, lambda t, key: None) == correct   # no verdict: the answer's own
    assert vote.key_verdicts([[None]], [[True]], lambda t, key: True) == [[True]]   # an abstention is not judged
    assert vote.vote([[None]], [[True]], 1) == ([None], [False])                    # and never wins a vote


@pytest.mark.parametrize("selection_task", [None, "countdown"])
def test_run_writes_the_score_matrix_and_ranks_by_the_objective(tmp_path, selection_task):
    path = two_tasks(tmp_path, task=selection_task) if selection_task else two_tasks(tmp_path)
    cfg, train, test, _ = start(path)
    with h5py.File(tmp_path / "out" / "results.h5") as f:
        names = f["data/task_names"].asstr()[()].tolist()
        by_task = f["population/train_score_by_task"][()]
        rewards = f["population/train_reward"][()].astype(np.float64)
        tasks = np.array(f["data/train_task"].asstr()[()])
        score, ranking = f["population/train_score"][()], f["selection/ranking"][()]
        acc = f["ensemble/selected/accuracy_by_task"][()]
        key_ok = f["ensemble/selected/test_key_correct"][()]
        member_ok = f["ensemble/selected/test_correct"][()]
        voted = f["ensemble/selected/voted_correct"][()]
        test_tasks = np.array(f["data/test_task"].asstr()[()])
    assert names == ["countdown_qa", "countdown"] and by_task.shape == (cfg.population.size, 2)
    for j, name in enumerate(names):
        np.testing.assert_allclose(by_task[:, j], rewards[:, tasks == name].mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(acc[:, j], voted[:, test_tasks == name].mean(axis=1))
    want = by_task[:, 1] if selection_task else by_task.mean(axis=1)
    np.testing.assert_allclose(score, want)
    assert ranking.tolist() == sorted(range(len(score)), key=lambda i: (-score[i], i))
    assert not np.allclose(by_task[:, 0], by_task[:, 1])   # the two columns rank differently: a real test
    # countdown's keys were judged by value; countdown_qa's verdicts are the members' own correctness.
    qa = test_tasks == "countdown_qa"
    np.testing.assert_array_equal(key_ok[:, qa], member_ok[:, qa])


def test_kcurve_revotes_as_the_run_voted(tmp_path):
    from tools import reports, runfile

    start(two_tasks(tmp_path))
    path = str(tmp_path / "out" / "results.h5")
    with runfile.open_results(path) as f:
        d = reports.kcurve(f, path)
    assert d["selected"]["matches_stored"] and d["control"]["matches_stored"]


def test_analyze_discordance_reads_the_tasks_of_one_run(tmp_path):
    import json

    from click.testing import CliRunner

    from tools.analyze import cli
    from tools.metrics import discordance

    start(two_tasks(tmp_path))
    path = str(tmp_path / "out" / "results.h5")
    r = CliRunner().invoke(cli, ["discordance", path, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    with h5py.File(path) as f:     # 𝒟 on each task's train accuracy
        ok, tasks = f["population/train_correct"][()], f["data/train_task"].asstr()[()]
        want = discordance(np.column_stack([ok[:, tasks == t].mean(axis=1) for t in ("countdown_qa", "countdown")]))
    assert d["M"] == 2 and [c.split(" (")[0] for c in d["columns"]] == ["countdown_qa", "countdown"]
    assert d["D"] == pytest.approx(want["D"]) and 0 < d["D"] <= 2.0
