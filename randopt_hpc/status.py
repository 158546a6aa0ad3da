"""Progress of a running or interrupted run, from its folder alone: `python -m randopt_hpc.status OUTPUT_DIR`.

Reads run.yaml and the shards (no MPI, no model), so it works on a login node while the job runs,
after a crash, or before a requeue. Per shard (one per rank of every launch that wrote to the
folder): candidates done, busy seconds, candidates/s, and how long ago it last wrote. On a sweep's
folder (launch.yaml from randopt_hpc.launch, no run.yaml) it shows one line per point; on the folder of a
run with `rounds: R` (round-1/, round-2/, ...), each round's table and whether its distilled model is written.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

import click

from randopt_hpc.cli import Command, fail
from randopt_hpc.config import ConfigError
from randopt_hpc.runfolder import LAUNCH_YAML, RUN_YAML, RunFolder


def summarize(out_dir: str, now: float | None = None) -> dict:
    """Done/N per shard and overall, rate (sum of the shards' busy rates) and ETA."""
    folder = RunFolder(out_dir)
    if not folder.started:
        raise FileNotFoundError(f"{out_dir}: no {RUN_YAML}; not a randopt_hpc run folder")
    damaged = folder.layout_problem()
    if damaged:
        raise ValueError(f"{out_dir}: {damaged}; the folder is damaged (a rerun refuses it)")
    cfg = folder.config()
    n = cfg.population.size * (cfg.es.iterations if cfg.algorithm == "es" else 1)   # ES: candidates of every iteration
    now = time.time() if now is None else now
    done: set[int] = set()
    shards = []
    for path, scan in folder.scan().items():
        mine = [r for r in scan.records if r.kind == "candidate"]
        done |= {r.index for r in mine}
        busy = sum(r.seconds for r in mine)
        shards.append({"rank": folder.shard_rank(path), "done": len(mine), "busy_s": round(busy, 2),
                       "rate": len(mine) / busy if busy > 0 else 0.0,
                       "last_write_s_ago": round(now - os.path.getmtime(path), 1),
                       "damaged_lines": [number for number, _ in scan.damaged]})
    rate = sum(s["rate"] for s in shards)
    done &= set(range(n))   # a shrunk run's shards hold candidates past its N
    left = n - len(done)
    answers = planned_answers = None
    if cfg.selection.schedule != "full":   # a candidate's records come rung by rung: count answers, not records
        answers, planned_answers = train_answers(folder, cfg)
        busy = sum(sh["busy_s"] for sh in shards)
        left = planned_answers - min(answers, planned_answers)
        rate = answers / busy * len(shards) if busy > 0 else 0.0
    planned, answered = folder.test_jobs(n), 0
    jobs = planned[0] if planned else None
    if planned:
        answered = sum(folder.count(kind, [key for k, key in jobs if k == kind], planned[1])[0]
                       for kind in dict.fromkeys(k for k, _ in jobs))
    damage = folder.results_damage(cfg)
    holder = folder.lock.holder()
    return {"dir": out_dir, "population": n, "done": len(done), "left": left, "finished": damage is None,
            "results_damage": None if damage in (None, "missing") else damage,
            "locked_by": holder.describe() if holder else None,
            "test_jobs": len(jobs) if jobs else None, "test_answered": answered,
            "schedule": cfg.selection.schedule, "train_answers": answers, "train_answers_planned": planned_answers,
            "rate": rate, "eta_s": (left / rate if rate > 0 else None) if left else (0.0 if damage is None else None),
            "shards": shards}


def train_answers(folder: RunFolder, cfg) -> tuple[int, int]:
    """(train answers the shards hold, those the schedule asks for: every rung's candidates on its examples new
    to them), counted per (candidate, example); the split's layout from the config (tasks in order)."""
    from randopt_hpc import halving

    sizes = [t.train_size for t in cfg.all_tasks]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    columns = [list(range(a, a + m)) for a, m in zip(starts, sizes)]
    n, n_train = cfg.population.size, sum(sizes)
    plan = halving.rungs(cfg.selection.schedule, n, n_train, cfg.k_max, cfg.selection.halving)
    planned = halving.planned_answers(plan, halving.asked(plan, columns, n_train))
    held = {(r.index, x) for r in folder.records() if r.kind == "candidate" and r.index < n
            for x in (r.answers.ids or range(len(r.answers.rewards)))}
    return len(held), planned


def summarize_sweep(root: str, now: float | None = None) -> list[dict]:
    """One summary per point of launch.yaml, or {'dir', 'job_id', 'started': False} for a point whose
    job has not written its folder yet."""
    import yaml

    with open(os.path.join(root, LAUNCH_YAML), encoding="utf-8") as f:
        points = yaml.safe_load(f)
    out = []
    for p in points:
        started = RunFolder(p["output_dir"]).started
        s = summarize(p["output_dir"], now) if started else {"dir": p["output_dir"]}
        out.append({**s, "job_id": p["job_id"], "overrides": p["overrides"], "started": started})
    return out


def render_sweep(points: list[dict]) -> str:
    lines = [f"{'job':>12}  {'done':>11}  {'state':<13} {'cand/s':>7} {'ETA s':>7}  point"]
    for p in points:
        if not p["started"]:
            lines.append(f"{p['job_id']:>12}  {'-':>11}  {'not started':<13} {'':>7} {'':>7}  {p['dir']}")
            continue
        state = "finished" if p["finished"] else ("test answers" if not p["left"] else "running/stopped")
        eta = "?" if p["eta_s"] is None else f"{p['eta_s']:.0f}"
        lines.append(f"{p['job_id']:>12}  {p['done']:>5}/{p['population']:<5}  {state:<13} {p['rate']:>7.2f} "
                     f"{eta:>7}  {p['dir']}")
    done = sum(p["started"] and p["finished"] for p in points)
    lines.append(f"{done}/{len(points)} points finished")
    return "\n".join(lines)


def render(s: dict) -> str:
    test = f"test answers {s['test_answered']}/{s['test_jobs']} jobs" if s["test_jobs"] else "test answers"
    state = "finished (results.h5 written)" if s["finished"] else (f"all candidates done, {test}, then the vote"
                                                                    if not s["left"] else "not finished")
    eta = "?" if s["eta_s"] is None else f"{s['eta_s']:.0f} s"
    unit = "candidates" if s["schedule"] == "full" else "train answers"
    lines = [f"{s['dir']}: {s['done']}/{s['population']} candidates ({100 * s['done'] / s['population']:.0f}%), "
             f"{state}; {s['rate']:.2f} {unit}/s while busy, ETA {eta}",
             f"{'shard':>6} {'done':>6} {'busy s':>9} {'cand/s':>7} {'last write':>11}"]
    for sh in s["shards"]:
        bad = sh["damaged_lines"]
        lines.append(f"{sh['rank']:>6} {sh['done']:>6} {sh['busy_s']:>9.1f} {sh['rate']:>7.2f} "
                     f"{sh['last_write_s_ago']:>9.0f} s" + (f"  {len(bad)} damaged line(s) skipped: "
                                                            f"{', '.join(map(str, bad[:5]))}" if bad else ""))
    if s["train_answers"] is not None:
        lines.insert(1, f"schedule {s['schedule']}: {s['train_answers']}/{s['train_answers_planned']} train answers")
    if s["results_damage"]:
        lines.append(f"results.h5 is damaged ({s['results_damage']}): the next run rebuilds it from the shards")
    if s["locked_by"]:
        lines.append(f"locked by {s['locked_by']}")
    return "\n".join(lines)


def round_dirs(out_dir: str) -> list[str]:
    """The round-r run folders of a `rounds:` run's output.dir, in round order ([] for any other folder)."""
    try:
        names = os.listdir(out_dir)
    except OSError:
        return []
    rounds = sorted((int(m.group(1)), name) for name in names if (m := re.fullmatch(r"round-([1-9]\d{0,3})", name)))
    return [os.path.join(out_dir, name) for _, name in rounds if RunFolder(os.path.join(out_dir, name)).started]


def summarize_rounds(out_dir: str, now: float | None = None) -> dict:
    rounds = []
    for path in round_dirs(out_dir):
        info = os.path.join(path, "distilled", "distill.json")
        rounds.append({**summarize(path, now), "round": int(os.path.basename(path).split("-")[1]),
                       "distilled": os.path.isfile(info) and os.path.join(path, "distilled")})
    return {"dir": out_dir, "rounds": rounds, "finished": os.path.isfile(os.path.join(out_dir, "rounds.json"))}


def render_rounds(s: dict) -> str:
    lines = []
    for one in s["rounds"]:
        lines += [f"round {one['round']}: " + render(one).replace("\n", "\n  ")]
        if one["distilled"]:
            lines.append(f"  distilled into {one['distilled']} (the next round's model)")
    state = "finished (rounds.md written)" if s["finished"] else "not finished"
    lines.append(f"{s['dir']}: {len(s['rounds'])} round(s) started, {state}")
    return "\n".join(lines)


@click.command(cls=Command, error_name="randopt_hpc.status", help=__doc__.splitlines()[0])
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of a table")
def main(out_dir: str, as_json: bool) -> None:
    plain = RunFolder(out_dir).started
    kind = "run" if plain else "sweep" if os.path.exists(os.path.join(out_dir, LAUNCH_YAML)) else \
        "rounds" if round_dirs(out_dir) else "run"
    summary, show = {"run": (summarize, render), "sweep": (summarize_sweep, render_sweep),
                     "rounds": (summarize_rounds, render_rounds)}[kind]
    try:
        s = summary(out_dir)
    except (OSError, ConfigError, KeyError, ValueError, TypeError) as e:
        sys.exit(fail("randopt_hpc.status", str(e)))
    click.echo(json.dumps(s) if as_json else show(s))


if __name__ == "__main__":
    main(prog_name="python -m randopt_hpc.status")
