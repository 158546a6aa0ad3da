"""`analyze scale`: replay a run's recorded job times on R ranks under either schedule (runtime.schedule), and
predict the makespan, the efficiency and the member phase's share at another N, R or test size.

The model (docs/analysis.md, "Scaling"): a rank does one job at a time, back to back, and a phase ends when
its slowest rank ends (the collective at its end); a job's time is what the run recorded for it.
- Start-up: each rank's recorded model load (timing/load; at another rank count their median); then rank 0
  answers the base model's train split (its recorded time) before the population.
- Population: N candidates, each its recorded population/seconds (perturb, answer, score, restore); at
  another N, drawn with replacement from the recorded ones (seeded). `slow_share` makes that share of them
  `slow_factor` times slower (runaway answers to max_new_tokens, which a demo run does not show).
  strided: rank r takes candidates r, r + R, ...; dynamic: each candidate, in index order, goes to the rank
  that is free first (the shared counter), plus `take_s` per candidate taken.
- Test answers: the base model's, then each member job (a distinct member, or a base-model sample) answers the
  test split at its recorded seconds per test prompt (a member's own rate, drawn with replacement at another
  member count),
  cut into parts of whole batches as randopt_hpc.jobs.test_parts cuts them, each part paying one recorded
  perturb + restore; the parts go to ranks as the candidates do.
Not modelled: collectives' own cost, a rank's start-up (model load), contention between ranks.
"""
from __future__ import annotations

import heapq

import numpy as np

from randopt_hpc.jobs import test_parts
from tools import runfile


def deal(times: list[float], ranks: int, schedule: str, start: list[float] | None = None,
         take_s: float = 0.0) -> list[float]:
    """Each rank's finishing time when `times` (jobs in order) are dealt to `ranks` ranks free from `start`."""
    free = list(start) if start else [0.0] * ranks
    if schedule == "strided":
        for j, t in enumerate(times):
            free[j % ranks] += t
        return free
    heap = [(f, r) for r, f in enumerate(free)]
    heapq.heapify(heap)
    for t in times:
        f, r = heapq.heappop(heap)
        heapq.heappush(heap, (f + take_s + t, r))
    return [f for f, _ in sorted(heap, key=lambda x: x[1])]


def recorded(f, path: str) -> dict:
    """The job times a results file holds."""
    runfile.require_full_train(f, path, "a replay of its schedule")
    cfg = runfile.config(f)
    if "jobs" not in f:
        raise runfile.ResultsError(f"{path}: no jobs/ group (written before job times were "
                                   "recorded); rerun it to record them")
    kind, key = runfile.strings(f, "jobs/kind").tolist(), runfile.strings(f, "jobs/key").tolist()
    seconds, prompts = f["jobs/seconds"][()], f["jobs/prompts"][()]
    base_train = sum(float(s) for kd, k, s in zip(kind, key, seconds) if (kd, k) == ("base", "train"))
    rate: dict = {}
    for kd, k, s, p in zip(kind, key, seconds, prompts):
        if (kd, k) != ("base", "train") and p > 0:
            got = rate.setdefault((kd, k), [0.0, 0, 0])
            got[0] += float(s)
            got[1] += int(p)
            got[2] += 1
    # The run's job order (randopt_hpc.jobs.answer_jobs): the base samples, then each member once, group by group.
    members = [int(m) for g in ("selected", "control", "control_sigma") if f"ensemble/{g}/members" in f
               for m in f[f"ensemble/{g}/members"][()]]
    order = [("sample", k) for kd, k in rate if kd == "sample"] + [("member", str(m)) for m in dict.fromkeys(members)]
    order += [job for job in rate if job not in order and job != ("base", "test")]
    t = {name: f[f"timing/{name}"][()] for name in f["timing"]}
    # One perturb + restore per candidate and per member part (a member's recorded seconds include its own).
    perturb_s = float((t["perturb"].sum() + t["restore"].sum()) /
                      max(1, int(t["candidates"].sum()) + sum(kd == "member" for kd in kind)))

    def per_prompt(job) -> float:
        s, p, parts = rate[job]
        return max(0.0, s - parts * perturb_s * (job[0] == "member")) / p
    return {"candidates": f["population/seconds"][()].astype(float).tolist(),
            "base_train": base_train,
            "base_rate": per_prompt(("base", "test")) if ("base", "test") in rate else 0.0,
            "per_prompt": [per_prompt(job) for job in order if job in rate],
            "members": len([job for job in order if job in rate]), "test_size": int(f["data/test_ids"].shape[0]),
            "batch_size": int((cfg.get("generation") or {}).get("batch_size", 1)),
            "perturb_s": perturb_s,
            "world_size": int(f.attrs["world_size"]), "load": [float(x) for x in t["load"]],
            "schedule": (cfg.get("runtime") or {}).get("schedule", "strided"),
            "measured": {"population": float(t["population"].max()),
                         "test": float(t["test"].max()) if "test" in t else float("nan")}}


def simulate(rec: dict, ranks: int, schedule: str, n: int | None = None, members: int | None = None,
             test_size: int | None = None, slow_share: float = 0.0, slow_factor: float = 5.0, take_s: float = 0.0,
             seed: int = 0) -> dict:
    """One replay (see the module's docstring): the phases' makespans (s), the member phase's share of the whole,
    and efficiencies: the population's (candidates' time over the ranks' time from when each was ready, its
    model loaded and, on rank 0, the base answered, to the phase's end) and the whole run's (every job and
    load over ranks × makespan)."""
    rng = np.random.default_rng(seed)
    cands = np.asarray(rec["candidates"], dtype=float)
    if n is not None and n != len(cands):
        cands = rng.choice(cands, size=n, replace=True)
    if slow_share > 0:
        cands = np.where(rng.random(len(cands)) < slow_share, cands * slow_factor, cands)
    t_size = rec["test_size"] if test_size is None else test_size
    # Each rank loads the model first (rank 0 then answers the base model's train split); the population phase
    # starts on the other ranks at once, their load inside it.
    loads = rec["load"] if ranks == len(rec["load"]) else [float(np.median(rec["load"]))] * ranks
    free = [load + (rec["base_train"] if r == 0 else 0.0) for r, load in enumerate(loads)]
    phase_start = free[0] if ranks == 1 else 0.0
    ends = deal(cands.tolist(), ranks, schedule, free, take_s)
    population = max(ends) - phase_start
    rates = np.asarray(rec["per_prompt"] or [0.0])
    m = rec["members"] if members is None else members
    rates = rates if m == len(rates) else rng.choice(rates, size=m, replace=True)
    parts = test_parts([("base", -1)] + [("member", i) for i in range(m)], t_size, rec["batch_size"], ranks)
    part_times = [rec["base_rate"] * (hi - lo) if kind == "base" else rec["perturb_s"] + rates[key] * (hi - lo)
                  for kind, key, lo, hi in parts]
    test = max(deal(part_times, ranks, schedule, None, take_s)) if part_times else 0.0
    busy = rec["base_train"] + float(cands.sum()) + sum(part_times) + take_s * (len(cands) + len(parts)) * \
        (schedule == "dynamic")
    total = max(ends) + test
    return {"n": len(cands), "ranks": ranks, "schedule": schedule, "population_s": population, "test_s": test,
            "total_s": total, "efficiency": (busy + sum(loads)) / (ranks * total), "population_efficiency":
                float(cands.sum()) / sum(max(ends) - f for f in free),
            "member_share": test / total, "parts": len(parts)}


def report(f, path: str, ranks: list[int], schedules: list[str], ns: list[int | None], **kw) -> dict:
    rec = recorded(f, path)
    rows = [simulate(rec, r, s, n, **kw) for n in ns for r in ranks for s in schedules]
    own = simulate(rec, rec["world_size"], rec["schedule"])
    return {"path": path, "rows": rows, "recorded": {k: rec[k] for k in ("world_size", "schedule", "members",
                                                                         "test_size", "measured")},
            "replay": {"population_s": own["population_s"], "test_s": own["test_s"]}}


def render(out: dict) -> str:
    r, own = out["recorded"], out["replay"]
    m = r["measured"]
    lines = [f"recorded: {r['world_size']} ranks, {r['schedule']}; population {m['population']:.1f} s measured, "
             f"{own['population_s']:.1f} s replayed ({100 * (own['population_s'] / m['population'] - 1):+.1f}%); "
             f"test answers {m['test']:.1f} s measured, {own['test_s']:.1f} s replayed"
             + (f" ({100 * (own['test_s'] / m['test'] - 1):+.1f}%)" if m["test"] > 0 else ""),
             "| N | ranks | schedule | population s | efficiency | member phase s | member share | total s | "
             "efficiency (all) |", "|---|---|---|---|---|---|---|---|---|"]
    for x in out["rows"]:
        lines.append(f"| {x['n']} | {x['ranks']} | {x['schedule']} | {x['population_s']:.1f} | "
                     f"{x['population_efficiency']:.2f} | {x['test_s']:.1f} | {100 * x['member_share']:.0f}% | "
                     f"{x['total_s']:.1f} | {x['efficiency']:.2f} |")
    return "\n".join(lines)
