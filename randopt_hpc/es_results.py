"""results.h5 of an ES run (docs/results-schema.md, "ES runs"), and the summary it prints.

population/*: every candidate of every iteration, run candidate t·N + i at row t·N + i (sigma signed);
es/*: per iteration σ_t, the fitness and the update's hash chain (θ_0 .. θ_T), the generated train tokens
spent before each θ_t, and each evaluated θ_t's test answers; base/*: θ_0 on the test split.
"""
from __future__ import annotations

import os
import time

import numpy as np

from randopt_hpc import es as E
from randopt_hpc.report import _gen_tokens, _keys, _prompt_tokens, job_table, provenance


def build_es_tree(cfg, train, test, done, iters, evals, hashes, timings, objective) -> dict:
    n, T = cfg.population.size, cfg.es.iterations
    cands = [c for it in iters for c in it]
    recs = [done.candidates[c.index] for c in cands]
    scores = [objective.exact(r.answers.rewards) for r in recs]
    tokens = _gen_tokens([r.answers for r in recs])
    per_iter = [int(np.where(row >= 0, row, 0).sum()) for row in tokens.reshape(T, n, -1)] if T else []
    evaluated = {t: done.answers("member", t, test) for t in evals}
    return {
        "population": {
            "index": np.arange(len(cands), dtype=np.int64),
            "iteration": np.repeat(np.arange(T, dtype=np.int64), n),
            "seed": np.array([c.seed for c in cands], dtype=np.int64),
            "sigma": np.array([c.sigma for c in cands]),
            "train_score": np.array([float(s) for s in scores]),
            "train_accuracy": np.array([r.answers.accuracy for r in recs]),
            "train_reward": np.array([r.answers.rewards for r in recs], dtype=np.float32),
            "train_correct": np.array([r.answers.correct for r in recs], dtype=bool),
            "train_key": _keys([r.answers.keys for r in recs]),
            "train_gen_tokens": tokens,
            "rank": np.array([r.rank for r in recs], dtype=np.int32),
            "seconds": np.array([r.seconds for r in recs]),
        },
        "es": {
            "sigma": np.array([E.sigma_at(cfg.population.sigmas[0], cfg.es.sigma_decay, t) for t in range(T)]),
            "fitness": np.array([[float(f) for f in E.centered_ranks(scores[t * n:(t + 1) * n])] for t in range(T)],
                                dtype=np.float64).reshape(T, n),
            "mean_train_score": np.array([float(sum(scores[t * n:(t + 1) * n])) / n for t in range(T)]),
            "theta_sha256": np.array(hashes, dtype=object),
            "train_tokens": np.concatenate([[0], np.cumsum(per_iter)]).astype(np.int64),
            "eval_iteration": np.array(evals, dtype=np.int64),
            "test_accuracy": np.array([evaluated[t].accuracy for t in evals]),
            "test_correct": np.array([evaluated[t].correct for t in evals], dtype=bool),
            "test_key": _keys([evaluated[t].keys for t in evals]),
            "test_gen_tokens": _gen_tokens([evaluated[t] for t in evals]),
        },
        "base": {"test_correct": np.array(evaluated[0].correct, dtype=bool),
                 "test_accuracy": np.array(evaluated[0].accuracy)},
        "data": {"task": np.array(cfg.task.name, dtype=object),
                 "train_ids": np.array([ex.id for ex in train], dtype=object),
                 "test_ids": np.array([ex.id for ex in test], dtype=object),
                 "test_prompt_tokens": _prompt_tokens(evaluated[0])},
        "timing": {name: np.array([t[name] for t in timings], dtype=object if name == "hostname" else None)
                   for name in timings[0]},
        "jobs": job_table(done.jobs),
    }


def expected_shapes(cfg) -> dict:
    """The datasets an ES results file of cfg must hold, with their shapes (randopt_hpc.results.damage)."""
    from randopt_hpc.es_run import eval_points

    n, T, t = cfg.population.size, cfg.es.iterations, cfg.task.test_size
    e = len(eval_points(cfg.es))
    return {"population/seed": (T * n,), "population/train_score": (T * n,), "es/theta_sha256": (T + 1,),
            "es/fitness": (T, n), "es/train_tokens": (T + 1,), "es/eval_iteration": (e,), "es/test_correct": (e, t),
            "base/test_correct": (t,)}


def render(tree: dict) -> str:
    es = tree["es"]
    lines = [f"{'θ_t':>6} {'σ_t':>9} {'train tokens':>13} {'test acc':>9}"]
    at = dict(zip(es["eval_iteration"].tolist(), es["test_accuracy"].tolist()))
    for t in range(len(es["theta_sha256"])):
        sigma = f"{es['sigma'][t]:.3g}" if t < len(es["sigma"]) else ""
        acc = f"{at[t]:.3f}" if t in at else ""
        lines.append(f"{t:>6} {sigma:>9} {int(es['train_tokens'][t]):>13,} {acc:>9}")
    lines.append(f"θ_T sha256 {es['theta_sha256'][-1]}")
    return "\n".join(lines)


def write_es_results(cfg, comm, log, folder, train, test, done, iters, evals, hashes, timings, objective) -> None:
    from randopt_hpc.run import model_parameters

    t0 = time.perf_counter()
    tree = build_es_tree(cfg, train, test, done, iters, evals, hashes, timings, objective)
    attrs = {**provenance(cfg, comm, [t["hostname"] for t in timings], model_parameters(cfg.model.path)),
             "algorithm": "es"}
    path = folder.write_results(tree, attrs)
    log.info("write: %s in %.2f s; the summary goes to stdout", path, time.perf_counter() - t0)
    print(f"summary of {os.path.abspath(path)} (ES: T={cfg.es.iterations}, N={cfg.population.size}, "
          f"lr={cfg.es.lr}, sigma_0={cfg.population.sigmas[0]}):\n{render(tree)}", flush=True)
