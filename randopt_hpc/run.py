"""The main job: `python -m randopt_hpc.run CONFIG [key=value ...]` (under mpiexec/srun or alone).

`run()` is the algorithm, top to bottom; `main()` turns a command line into a validated config, sets the
process up and always tears down (one failing rank aborts the world); helpers sit below both.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterable

from randopt_hpc import halving, select, vote
from randopt_hpc import jobs as J
from randopt_hpc import population as pop
from randopt_hpc.backends import run_backend
from randopt_hpc.comm import EXIT_INTERRUPTED, Preempted, StopFlag, exit_code, install_signals, make_comm, setup_logging
from randopt_hpc.config import ConfigError, load_config
from randopt_hpc.data import make_task
from randopt_hpc.environment import Environment, device_problem, setup_process
from randopt_hpc.es_run import run_es
from randopt_hpc.evaluate import Evaluator
from randopt_hpc.fingerprint import settings
from randopt_hpc.lock import LockError
from randopt_hpc.progress import Progress, Timer
from randopt_hpc.records import assemble, spread
from randopt_hpc.rounds import run_rounds
from randopt_hpc.runfolder import FINISHED, FRESH, RunFolder
from randopt_hpc.sampling import Sampling
from randopt_hpc.tasks.multi import Objective

USAGE = "usage: python -m randopt_hpc.run CONFIG.yaml [key=value ...]"


def run(cfg, comm, env, log, train, test, stop: StopFlag, *, backend=None, on_candidate=None) -> None:
    """RandOpt on every rank of `comm`; rank 0 writes results.h5. `backend` (default: the configured one)
    and `on_candidate(rank, index)`, called before each candidate, are seams for tests."""
    rank, size, n = comm.rank, comm.size, cfg.population.size
    folder = RunFolder(cfg.output.dir)
    if rank == 0:
        folder.prepare(cfg, env.restart_count, log)
    comm.barrier()
    done = folder.done(log)
    cands = pop.Population(cfg.population.seed, n, cfg.population.sigmas, cfg.population.sigma_assignment)
    plan = halving.rungs(cfg.selection.schedule, n, len(train), cfg.k_max, cfg.selection.halving)
    log.info("%d candidates, %d with train answers already; schedule %s: %s; %d train / %d test examples", n,
             sum(i < n for i in done.candidates), cfg.selection.schedule,
             " -> ".join(f"{r.candidates} on {r.examples}" for r in plan), len(train), len(test))
    timer = Timer()
    task = make_task(cfg)
    objective = Objective.of(train, [t.name for t in cfg.all_tasks], cfg.selection.task)
    ev = Evaluator(backend or run_backend(cfg, comm, env, log, timer), task, timer, cfg.output.save_text,
                   settings(cfg), rank=rank, pause=env.slow.pause if env.slow else None)
    shard = folder.writer(rank)
    progress = Progress(folder, cfg.runtime.progress_every_s, log) if rank == 0 else None

    def examples(kind, key):
        return train if (kind, key) == ("base", "train") else test

    def missing(job) -> list:   # what the shards lack of a job's examples (a grown test split: its new ones)
        kind, key, lo, hi = job
        return done.missing(kind, key, examples(kind, key)[lo:hi])

    # runtime.schedule: dynamic deals from one counter shared by the ranks (collective to create and close).
    dealer = J.Dealer(comm.counter(), size) if cfg.runtime.schedule == "dynamic" else None

    def mine(items: list, todo) -> Iterable:
        return J.share(items, todo, rank, size, dealer)

    answered = []     # this run's base, member and sample records, gathered on rank 0 at the end

    def answer(parts) -> None:
        for job in parts:
            kind, key, _, _ = job
            ask = missing(job)
            if ask:
                stop.check(f"{kind} {key} on the test set" if kind != "base" else f"the base model on {key}")
                record = (ev.member(cands[key], ask) if kind == "member" else
                          ev.sample(sampling(cfg, key), ask) if kind == "sample" else ev.base(key, ask))
                done.add(record)
                shard.append(record)
                answered.append(record)

    # The base model on the train split first (rank 0): a broken prompt shows now, not at the end.
    my_base = [(kind, key, 0, len(examples(kind, key))) for kind, key in pop.owned(J.BASE_JOBS, rank, size)]
    answer(my_base)
    for _, split, _, _ in my_base:
        a = done.answers("base", split, examples("base", split))
        log.info("base model on %s: accuracy %.3f, mean reward %.4f (%d examples)", split, a.accuracy, a.score,
                 len(a.rewards))

    # Population: perturb -> answer the train examples -> score -> restore, one candidate at a time, each appended;
    # rung by rung (randopt_hpc.halving: the full schedule is one rung), each rung's survivors spread over the ranks.
    at = {ex.id: p for p, ex in enumerate(train)}
    # Every rank keeps every candidate's train rewards by position: a rung's ranking needs the others' too.
    rewards = {i: {p: x for p, x in zip(positions_of(r.answers, at), r.answers.rewards) if p is not None}
               for i, r in done.candidates.items()}
    computed = []     # this run's candidate records, gathered on rank 0 at the end

    def rung(r: int, current: list[int], pos: list[int]) -> None:
        if progress:
            progress.phase("population" + (f" rung {r + 1}/{len(plan)}" if len(plan) > 1 else ""), "candidates",
                           {"candidate": current}, [train[p].id for p in pos] if len(plan) > 1 else None)
        fresh = []
        for i in mine(current, lambda i: any(p not in rewards.get(i, ()) for p in pos)):
            stop.check(f"candidate {i}")
            if on_candidate:
                on_candidate(rank, i)
            record = ev.candidate(cands[i], [train[p] for p in pos if p not in rewards.get(i, ())], rank)
            done.add(record)
            shard.append(record)
            computed.append(record)
            fresh.append((i, positions_of(record.answers, at), record.answers.rewards))
        with timer("wait"):
            for part in comm.allgather(fresh):
                for i, ps, rs in part:
                    rewards.setdefault(i, {}).update(zip(ps, rs))

    def score(i: int, pos: list[int]):   # exact: ties are ties on every rank count
        if len(pos) not in on:
            on[len(pos)] = objective.on(pos)
        return on[len(pos)].exact(rewards[i])

    # One global ranking from everyone's exact scores (the last rung's, then the earlier rungs' for those they
    # dropped); every top-K is a prefix of it.
    on: dict = {}
    rung_positions = halving.asked(plan, objective.columns, len(train))
    with timer("population"):   # the phase's wall time on this rank, its waits included
        history = halving.walk(plan, rung_positions, score, rung)
    if progress:
        progress.end_phase()
    order, k = halving.final_order(history), cfg.k_max
    groups = ensembles(cfg, order[:k], cands)
    every_member = [m for g in groups.values() for m in g]
    log.info("ranking done: best candidate %d (score %.4f); %d members answer the test set",
             order[0], objective.exact(rewards[order[0]]), len(set(every_member)))

    # The base model's test samples and the members (test split), in parts spread over the ranks (randopt_hpc.jobs).
    jobs = J.answer_jobs(every_member, cfg.generation.samples)
    if progress:
        folder.write_test_jobs(n, jobs, [ex.id for ex in test])
        progress.phase("test answers", "jobs", {"base": ["test"], "sample": range(cfg.generation.samples),
                                                "member": set(every_member)}, [ex.id for ex in test])
    with timer("test"):
        answer(mine(J.test_parts(jobs, len(test), cfg.generation.batch_size, size), missing))
        if dealer:
            with timer("wait"):
                dealer.close()
    shard.close()

    # One gather: rank 0 gets every candidate, every answer set and every rank's timing.
    with timer("wait"):
        parts = comm.gather({"candidates": computed, "answered": answered,
                             "timing": {"rank": rank, "hostname": env.hostname, **timer.totals()}})
    if rank == 0:
        progress.stop()
        population, base, members, samples = collect(parts, done, n, every_member, cfg.generation.samples, train,
                                                     test)
        log.info("base model on test: accuracy %.3f, mean reward %.4f (%d examples)", base["test"].accuracy,
                 base["test"].score, len(test))
        # What the schedule asked of each candidate, and no more: a folder that held a full run's answers
        # writes what a fresh run of this schedule writes.
        asked = [[train[p].id for p in pos] for pos in rung_positions]
        population = [dataclasses.replace(c, answers=assemble([c.answers], asked[r]))
                      for c, r in zip(population, halving.last_rungs(plan, history))]
        ks, train_ids = sorted(cfg.selection.top_k), [ex.id for ex in train]
        on_train = {r.index: spread(r.answers, train_ids) for r in population}
        judges = (vote.judge_with(task, test), vote.judge_with(task, train))
        t0 = time.perf_counter()
        combine = getattr(task, "combine", None)   # a regression task averages; the others vote
        votes = {name: vote.vote_ensemble(group, ks, members, {m: a for m, (a, _) in on_train.items()}, judges,
                                          {m: seen for m, (_, seen) in on_train.items()}, combine)
                 for name, group in groups.items()}
        log.info("vote: %d groups x %d K on %d test examples in %.2f s", len(votes), len(ks), len(test),
                 time.perf_counter() - t0)
        write_results(cfg, comm, log, folder, train, test, base, population, order, votes, members, samples,
                      [p["timing"] for p in parts], objective, judges[0], done.jobs)
    comm.barrier()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        from randopt_hpc.confighelp import run_help

        print(run_help())
        return 0
    env = None
    try:
        env = Environment.from_os()
        loaded = load(argv, env)
    except (ConfigError, ValueError) as e:   # ValueError: a malformed RANDOPT_FAULT, a refused stage_dir
        if env is None or env.is_first:      # every rank validates alike; one line is enough
            print(f"randopt_hpc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if env is None or env.is_first:
            print("randopt_hpc: interrupted before the run started; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if loaded is None:
        return 0
    cfg, train, test, problem = loaded
    if problem and not env.under_launcher:
        print(f"randopt_hpc: error: {problem}", file=sys.stderr)
        return 2
    stop = install_signals(StopFlag())
    try:
        assigned = setup_process(cfg, env)
    except RuntimeError as e:   # fewer GPUs on this node than its ranks need: agreed on below, as the others
        assigned, problem = {}, problem or f"runtime.device: {e}"
    comm = make_comm(cfg.runtime.comm, env)
    if cfg.runtime.comm != "serial" and env.launched_size not in (None, comm.size):
        # srun without the right --mpi plugin starts N one-rank worlds that would all act as rank 0.
        if env.is_first:
            print(f"randopt_hpc: error: the launcher started {env.launched_size} tasks but MPI sees a world of "
                  f"{comm.size}; srun needs the --mpi plugin of this MPI (pmi2: MPICH, pmix: Open MPI; "
                  "randopt_hpc/sites/*.env)", file=sys.stderr)
        return 2
    log = setup_logging(comm.rank, comm.size)
    if env.fault:
        env.fault.install(comm.rank)
    folder = RunFolder(cfg.output.dir)
    problem = problem or device_problem(cfg)
    refused = next((p for p in comm.allgather(problem) if p), None)   # every rank's preflight, agreed on
    if refused is None:
        refused = comm.bcast(take_lock(folder, env, log) if comm.rank == 0 else None)
    if refused:
        if comm.rank == 0:
            print(f"randopt_hpc: error: {refused}", file=sys.stderr)
        return 2
    for name, value in assigned.items():
        log.info("%s=%s for this rank", name, value)
    try:
        algorithm = run_rounds if cfg.rounds > 1 else run if cfg.algorithm == "randopt" else run_es
        algorithm(cfg, comm, env, log, train, test, stop, on_candidate=env.fault.hook if env.fault else None)
    except Preempted as e:
        log.warning("%s; shard flushed. Rerun the same command (or requeue) to resume.", e)
        # Launchers signal every rank: wait up to stop_grace_s for the others to finish their candidate
        # too, so that no evaluation is thrown away, then every rank exits 75 normally (srun passes 75
        # on; an MPI abort would turn it into 137) and the batch script may requeue (randopt_hpc.requeue).
        # A rank that never stops (blocked in a collective that a stopped rank will not enter) is ended
        # by the abort instead of hanging the job.
        if not comm.wait_all(cfg.runtime.stop_grace_s):
            comm.abort(exit_code(stop))
        return exit_code(stop)
    except ConfigError as e:
        # Found only once the run started (a vLLM engine that cannot fit): one line, and a config error's
        # exit status. A rank that finds it alone still ends every rank: the others wait in a collective.
        print(f"randopt_hpc: error: [rank {comm.rank}/{comm.size}] {e}", file=sys.stderr, flush=True)
        comm.abort(2)
        return 2
    except KeyboardInterrupt:   # Ctrl-C twice: no waiting for the candidate in hand
        log.error("interrupted again: stopping now; finished candidates are in the shards")
        comm.abort(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except BaseException:
        log.exception("failed")
        comm.abort(1)   # MPI: ends every rank, never a hang in a collective
        raise
    finally:
        folder.lock.release()
    return 0


def load(argv: list[str], env) -> tuple | None:
    """The command line -> (config, train, test, problem), or None when the folder already holds this
    run's results. What every rank judges alike (the config, the data, the folder's state) raises
    ConfigError: one line, exit 2, on every rank at once. `problem` is the first of the checks a rank may
    judge alone (its node's CPUs, disks and staging folder; a lock taken meanwhile): under an MPI launcher
    the ranks agree on those after MPI starts, since a rank leaving alone would leave the others waiting
    in MPI_Init for good."""
    if not argv or "=" in argv[0]:
        raise ConfigError(f"config: a config file comes first; {USAGE}")
    cfg = load_config(argv[0], argv[1:])
    from randopt_hpc.data import load_examples

    train, test = load_examples(cfg)
    folder = RunFolder(cfg.output.dir)
    state = folder.state(cfg)
    answered = folder.first_candidate() if state != FRESH else None
    if answered is not None and answered.answers.ids is not None and \
            not set(answered.answers.ids) <= {ex.id for ex in train}:
        # Every candidate record answered the train split as it was: it must not have moved (a data file
        # edited under the run, or a task.test_size whose task draws its problems for both splits at once).
        raise ConfigError("task.data: the train split is not the one this run's candidates answered (its data "
                          "changed, or task.test_size moved it); start a new output.dir")
    if state == FINISHED:
        if env.is_first:
            print(f"randopt_hpc: {folder.results} is already finished for this config; nothing to do "
                  "(output.overwrite=true starts afresh)", file=sys.stderr)
        return None
    from randopt_hpc.check import preflight

    return cfg, train, test, preflight(cfg, folder, env)


def take_lock(folder: RunFolder, env, log) -> str | None:
    """Rank 0: hold the run folder for this run; the reason it cannot, or None."""
    try:
        stale = folder.lock.acquire(env)
    except LockError as e:
        return str(e)
    except OSError as e:
        return f"output.dir: cannot lock {folder.lock.path}: {e.strerror or e}"
    if stale:
        log.warning("took over the lock of a run that is gone (%s)", stale)
    return None


def ensembles(cfg, selected: list[int], cands) -> dict[str, list[int]]:
    """The voted groups, by name: the selected top K, and with selection.control the unselected controls,
    K (or selection.control_size) candidates in a seeded random order and K with the selected σ histogram."""
    groups = {"selected": selected}
    if cfg.selection.control:
        n = cfg.population.size
        order = select.control_order(n, cfg.population.seed)
        groups["control"] = order[:cfg.selection.control_size or len(selected)]
        groups["control_sigma"] = select.sigma_matched(selected, [cands[i].sigma for i in range(n)], order)
    return groups


def sampling(cfg, index: int) -> Sampling:
    g = cfg.generation
    return Sampling(temperature=g.temperature, top_p=g.top_p, seed=g.seed, index=index)


def positions_of(a, at: dict) -> list:
    """The train positions an answer set answers (a record from before ids were recorded: the whole split);
    None for an id the split does not hold."""
    return list(range(len(a.rewards))) if a.ids is None else [at.get(x) for x in a.ids]


def collect(parts: list[dict], done, n: int, members: list[int], samples: int, train, test) -> tuple:
    """Rank 0: the gathered parts (rank 0's own first, already in `done`) with what the shards held (`done`) as
    (every candidate record by index, the base model's answers by split, each member's test answers, the base
    model's test samples in order)."""
    for p in parts:
        for r in p["candidates"]:
            done.add(r)
    for p in parts[1:]:
        for r in p["answered"]:
            done.add(r)
    population = [done.candidates[i] for i in range(n)]
    return (population, {"train": done.answers("base", "train", train), "test": done.answers("base", "test", test)},
            {m: done.answers("member", m, test) for m in dict.fromkeys(members)},
            [done.answers("sample", s, test) for s in range(samples)])


def model_parameters(path: str) -> int:
    """P, the model's parameter count from its safetensors headers (a generated token costs about 2·P FLOPs);
    0 when the folder has no safetensors to read it from."""
    from randopt_hpc.backends.vllm_checkpoint import weight_bytes

    try:
        return weight_bytes(path, 1)
    except (ValueError, OSError):
        return 0


def write_results(cfg, comm, log, folder, train, test, base, population, order, votes, members, samples, timings,
                  objective, judge, jobs) -> None:
    """Rank 0: serialise everything to results.h5 and log the summary."""
    from randopt_hpc.report import build_tree, provenance, task_table
    from randopt_hpc.summary import render, summarize

    t0 = time.perf_counter()
    tree = build_tree(cfg, train, test, base, population, order, votes, members, samples, timings, objective, judge,
                      jobs)
    attrs = provenance(cfg, comm, [t["hostname"] for t in timings], model_parameters(cfg.model.path))
    path = folder.write_results(tree, attrs)
    log.info("write: %s in %.2f s; the summary goes to stdout", path, time.perf_counter() - t0)
    # The summary is the run's output, the log its diagnostics: a batch job's .out holds the one, .err the other.
    print(f"summary of {os.path.abspath(path)} (N={cfg.population.size}, K={list(cfg.selection.top_k)}, "
          f"sigmas={list(cfg.population.sigmas)}):\n{render(summarize(tree, attrs))}", flush=True)
    if len(objective.names) > 1:
        log.info("by task:\n%s", task_table(list(objective.names), tree["base"]["test_accuracy_by_task"].tolist(),
                                             votes, test))
    log.info("results: %s", os.path.abspath(path))


if __name__ == "__main__":
    sys.exit(main())
