"""The main job: `python -m randopt_hpc.run CONFIG [key=value ...]` (under mpiexec/srun or alone).

Reads top to bottom as the algorithm: evaluate my candidates -> allgather scores -> one ranking ->
members answer the test set -> vote -> results.h5. Helpers below keep each step short.
"""
from __future__ import annotations

import os
import sys
import time

from randopt_hpc import population as pop
from randopt_hpc import results, select
from randopt_hpc.comm import EXIT_PREEMPTED, Environment, Preempted, StopSignals, make_comm, setup_logging
from randopt_hpc.config import ConfigError, fingerprint_hash, from_dict, load_config, result_fingerprint, to_yaml
from randopt_hpc.progress import Progress, Timer

USAGE = "usage: python -m randopt_hpc.run CONFIG.yaml [key=value ...]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = Environment.from_os()
    try:
        if not argv or argv[0] in ("-h", "--help") or "=" in argv[0]:
            raise ConfigError(f"config: a config file comes first; {USAGE}")
        cfg = load_config(argv[0], argv[1:])
        from randopt_hpc.data import load_examples

        train, test = load_examples(cfg)
        if check_output_dir(cfg) == "finished":
            if env.is_first:
                print(f"randopt_hpc: {os.path.join(cfg.output.dir, results.RESULTS)} is already finished for "
                      "this config; nothing to do (output.overwrite=true starts afresh)", file=sys.stderr)
            return 0
    except ConfigError as e:
        if env.is_first:   # every rank validates alike; one line is enough
            print(f"randopt_hpc: error: {e}", file=sys.stderr)
        return 2
    comm = make_comm(cfg.runtime.comm, env)
    if cfg.runtime.comm != "serial" and env.launched_size not in (None, comm.size):
        # srun without the right --mpi plugin starts N one-rank worlds that would all act as rank 0.
        if env.is_first:
            print(f"randopt_hpc: error: the launcher started {env.launched_size} tasks but MPI sees a world of "
                  f"{comm.size}; srun needs the --mpi plugin of this MPI (pmi2: MPICH, pmix: Open MPI; "
                  "jobs/sites/*.env)", file=sys.stderr)
        return 2
    log = setup_logging(comm.rank, comm.size)
    stop = StopSignals()
    try:
        run(cfg, comm, env, log, train, test, stop)
    except Preempted as e:
        log.warning("%s; shard flushed. Rerun the same command (or requeue) to resume.", e)
        # Launchers signal every rank: wait up to stop_grace_s for the others to finish their candidate
        # too, so that no evaluation is thrown away, then every rank exits 75 normally (srun passes 75
        # on; an MPI abort would turn it into 137) and the batch script may requeue (randopt_hpc.requeue).
        # A rank that never stops (blocked in a collective that a stopped rank will not enter) is ended
        # by the abort instead of hanging the job.
        if not comm.wait_all(cfg.runtime.stop_grace_s):
            comm.abort(EXIT_PREEMPTED)
        return EXIT_PREEMPTED
    except BaseException:
        log.exception("failed")
        comm.abort(1)   # MPI: ends every rank, never a hang in a collective
        raise
    return 0


def check_output_dir(cfg) -> str:
    """'fresh', 'resume' or 'finished'; a folder holding another config's run is an error."""
    out = cfg.output.dir
    if cfg.output.overwrite or not os.path.isdir(out):
        return "fresh"
    run_yaml = os.path.join(out, results.RUN_YAML)
    has_results = os.path.exists(os.path.join(out, results.RESULTS))
    if not os.path.exists(run_yaml):
        if has_results or os.path.isdir(os.path.join(out, "shards")):
            raise ConfigError(f"output.dir: {out} holds results of an unknown config; "
                              "choose another output.dir or set output.overwrite=true")
        return "fresh"
    import yaml

    with open(run_yaml, encoding="utf-8") as f:
        old = result_fingerprint(from_dict(yaml.safe_load(f)))
    new = result_fingerprint(cfg)
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        k = diff[0]
        raise ConfigError(f"output.dir: {out} holds a run with another config ({k}: {old.get(k)!r} there, "
                          f"{new[k]!r} here); choose another output.dir or set output.overwrite=true")
    return "finished" if has_results else "resume"


def run(cfg, comm, env, log, train, test, stop=None) -> None:
    # numba's pool and torch's both get this rank's share of cores (one rank per core is the norm).
    os.environ.setdefault("NUMBA_NUM_THREADS", str(cfg.runtime.threads))
    import torch

    from randopt_hpc.backends import make_backend
    from randopt_hpc.tasks import get_task

    torch.set_num_threads(cfg.runtime.threads)
    if cfg.runtime.device.startswith("cuda"):
        # Before anything touches CUDA: this rank's GPU(s), from Slurm's binding or its local rank.
        gpus = env.rank_gpus(cfg.vllm.tensor_parallel_size if cfg.backend == "vllm" else 1)
        if gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus
            log.info("GPUs for this rank: CUDA_VISIBLE_DEVICES=%s", gpus)
    timer = Timer()
    out, rank, size, n = cfg.output.dir, comm.rank, comm.size, cfg.population.size
    if rank == 0:
        if cfg.output.overwrite and env.restart_count:
            log.warning("output.overwrite ignored: this is a requeued Slurm job (restart %d) resuming its "
                        "own run", env.restart_count)
        elif cfg.output.overwrite:
            results.clear_run(out)
        os.makedirs(out, exist_ok=True)
        if not os.path.exists(os.path.join(out, results.RUN_YAML)):
            with open(os.path.join(out, results.RUN_YAML), "w", encoding="utf-8") as f:
                f.write(to_yaml(cfg))
    comm.barrier()

    records = results.read_shards(out)
    done = results.index_records(records, "candidate")
    cands = pop.population(cfg.population.seed, n, cfg.population.sigmas, cfg.population.sigma_assignment)
    mine = pop.owned(range(n), rank, size)
    todo = [i for i in mine if i not in done]
    log.info("%d candidates of %d are mine, %d already done; %d train / %d test examples",
             len(mine), n, len(mine) - len(todo), len(train), len(test))

    with timer("load"):
        model_path = cfg.model.path
        if cfg.runtime.stage_dir:
            from randopt_hpc.stage import stage_model, staged_path

            if env.local_rank == 0:   # one copy per node; the node's other ranks wait for it
                stage_model(cfg.model.path, cfg.runtime.stage_dir)
            comm.barrier()
            model_path = staged_path(cfg.model.path, cfg.runtime.stage_dir)
            log.info("model staged at %s", model_path)
        backend = make_backend(cfg, model_path)
        task = get_task(cfg.task.name)
    shard = results.Shard(out, rank)

    def answer(examples, cand=None):
        """Greedy answers of the base model (cand None) or of a perturbed candidate, scored."""
        if cand is not None:
            with timer("perturb"):
                backend.perturb(cand.seed, cand.sigma)
        with timer("generate"):
            texts = backend.generate(examples)
        with timer("score"):
            scored = [task.score(t, ex) for t, ex in zip(texts, examples)]
        if cand is not None:
            with timer("restore"):
                backend.restore()
        return texts, {"rewards": [s.reward for s in scored], "correct": [bool(s.correct) for s in scored],
                       "keys": [s.key for s in scored], "answers": [s.answer for s in scored]}

    # Population: perturb -> answer the train set -> score -> restore, one candidate at a time.
    progress = Progress(out, n, len(done), cfg.runtime.progress_every_s, log) if rank == 0 else None
    for i in todo:
        if stop:
            stop.check(f"candidate {i}")
        if env.fault and env.fault.rank == rank and env.fault.candidate == i:
            raise RuntimeError(f"RANDOPT_FAULT: injected failure at candidate {i}")
        c = cands[i]
        t0 = time.perf_counter()
        texts, rec = answer(train, c)
        done[i] = {"type": "candidate", "index": i, "seed": c.seed, "sigma": c.sigma,
                   "score": _mean(rec["rewards"]), "accuracy": _mean(rec["correct"]), **rec,
                   "texts": texts if cfg.output.save_text else None,
                   "rank": rank, "seconds": time.perf_counter() - t0}
        shard.append(done[i])
        timer.count("candidates")

    # One global ranking from everyone's scores; every top-K is a prefix of it.
    with timer("wait"):
        pairs = [p for part in comm.allgather([(i, done[i]["score"]) for i in mine]) for p in part]
    if progress:
        progress.stop()
    order = select.ranking([i for i, _ in pairs], [s for _, s in pairs])
    best_score = dict(pairs)[order[0]]
    selected = order[:cfg.k_max]
    control = select.control_members(n, cfg.k_max) if cfg.selection.control else []
    members = list(dict.fromkeys(selected + control))
    log.info("ranking done: best candidate %d (score %.4f); %d members answer the test set",
             order[0], best_score, len(members))

    # The base model (both splits) and the members (test split) answer, spread over the ranks.
    base = results.index_records(records, "base")
    member_recs = results.index_records(records, "member")
    jobs = [("base", "train"), ("base", "test")] + [("member", m) for m in members]
    my_jobs = [job for j, job in enumerate(jobs) if j % size == rank]
    for kind, key in my_jobs:
        if key in (base if kind == "base" else member_recs):
            continue
        if stop:
            stop.check(f"{kind} {key} on the test set" if kind == "member" else f"the base model on {key}")
        if kind == "base":
            texts, rec = answer(train if key == "train" else test)
            base[key] = {"type": "base", "split": key, **rec, "texts": texts}   # one model: always keep text
            shard.append(base[key])
            continue
        texts, rec = answer(test, cands[key])
        member_recs[key] = {"type": "member", "index": key, **rec, "texts": texts if cfg.output.save_text else None}
        shard.append(member_recs[key])
    shard.close()

    with timer("wait"):
        gathered = comm.gather({(kind, key): (base if kind == "base" else member_recs)[key]
                                   for kind, key in my_jobs})
        cand_parts = comm.gather([done[i] for i in mine])
        timings = comm.gather({"rank": rank, "hostname": env.hostname, **timer.totals()})
        hostnames = comm.gather(env.hostname)
    if rank == 0:
        from randopt_hpc.report import build_tree, provenance, summary_table

        answered = {job: r for part in gathered for job, r in part.items()}
        base = {split: answered[("base", split)] for split in ("train", "test")}
        all_members = {m: answered[("member", m)] for m in members}
        log.info("base model: train accuracy %.3f, test accuracy %.3f",
                 _mean(base["train"]["correct"]), _mean(base["test"]["correct"]))
        population = sorted((r for part in cand_parts for r in part), key=lambda r: r["index"])
        tree, summary = build_tree(cfg, train, test, base, population, order, selected, control,
                                   all_members, timings)
        attrs = provenance(cfg, comm, hostnames, to_yaml(cfg), fingerprint_hash(cfg))
        path = results.write_results(out, tree, attrs)
        log.info("summary (N=%d, K=%s, sigmas=%s):\n%s", n, list(cfg.selection.top_k),
                 list(cfg.population.sigmas), summary_table(summary))
        log.info("results: %s", os.path.abspath(path))
    comm.barrier()


def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs)) / len(xs) if xs else float("nan")


if __name__ == "__main__":
    sys.exit(main())
