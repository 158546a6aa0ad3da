"""The ES job (`algorithm: es`): run_es() is run() for evolution strategies, on the same parts.

Iteration t, on every rank: θ_t (the backend's pristine copy) answers the test split in parts when it is an
evaluation point; the iteration's N candidates are scored on the train split exactly as RandOpt scores its
population (Evaluator, shards, strided or dynamic deal); an allgather brings every rank every score; every
rank applies the same update (randopt_hpc.es), so θ_(t+1) is bitwise the same everywhere. Rank 0 saves θ every
es.checkpoint_every iterations (es/theta-TTTTT.safetensors, with the sha256 of every θ so far) and θ_T at the
end; results.h5 holds every candidate, every update's inputs and every evaluation.

Resume: the shards hold every scored candidate and every answered test part; a rerun starts from the newest
checkpoint no later than the first unfinished iteration and replays the updates after it from the recorded
scores (no generation), which gives θ bitwise (the update is a pure function of θ_t and the scores).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re

from randopt_hpc import es as E
from randopt_hpc import jobs as J
from randopt_hpc.backends import run_backend
from randopt_hpc.data import make_task
from randopt_hpc.evaluate import Evaluator
from randopt_hpc.fingerprint import settings, theta_fingerprint
from randopt_hpc.progress import Timer
from randopt_hpc.runfolder import RunFolder
from randopt_hpc.tasks.multi import Objective

CHECKPOINTS = "es"


def checkpoint_path(run_dir: str, t: int) -> str:
    return os.path.join(run_dir, CHECKPOINTS, f"theta-{t:05d}.safetensors")


def theta_hash(tensors: dict) -> str:
    """sha256 of θ's perturbed tensors by name, in sorted name order (each backend lists them in its own), as
    raw bytes."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(run_dir: str, t: int, tensors: dict, hashes: list[str], fingerprint: str, keep: int = 2) -> None:
    """θ_t with its hash chain, whole or absent; then only the `keep` newest checkpoints stay (a model's size
    each): a resume needs one no later than its first unfinished iteration, and replays from θ_0 without."""
    from safetensors.torch import save

    from randopt_hpc import atomic

    os.makedirs(os.path.join(run_dir, CHECKPOINTS), exist_ok=True)
    data = save({n: x.detach().contiguous() for n, x in tensors.items()},
                metadata={"iteration": str(t), "hashes": json.dumps(hashes), "fingerprint": fingerprint})
    atomic.write_bytes(checkpoint_path(run_dir, t), data, fault_point="write:checkpoint")
    for old in checkpoints(run_dir)[:-keep]:
        os.remove(old)


def checkpoints(run_dir: str) -> list[str]:
    """The checkpoint files, oldest first (other names in the folder are not ours: left alone)."""
    found = []
    for path in glob.glob(os.path.join(run_dir, CHECKPOINTS, "theta-*.safetensors")):
        m = re.fullmatch(r"theta-(\d+)\.safetensors", os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return [path for _, path in sorted(found)]


def load_checkpoint(run_dir: str, upto: int, names: list[str], fingerprint: str, log=None):
    """(t, tensors, hashes) of the newest readable checkpoint of this config at t <= upto, or None."""
    from safetensors import safe_open

    for path in reversed(checkpoints(run_dir)):
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                t = int(meta["iteration"])
                if t > upto or meta.get("fingerprint") != fingerprint:
                    continue
                tensors = {n: f.get_tensor(n) for n in names}
                hashes = json.loads(meta["hashes"])
            if len(hashes) == t + 1 and theta_hash(tensors) == hashes[-1]:
                return t, tensors, hashes
        except Exception as e:   # torn, foreign or damaged: the shards' scores rebuild what it held
            if log:
                log.warning("%s skipped: %s", path, " ".join(str(e).split())[:160])
    return None


def eval_points(es: E.EsConfig) -> list[int]:
    return sorted({*range(0, es.iterations, es.eval_every), es.iterations})


def run_es(cfg, comm, env, log, train, test, stop, *, backend=None, on_candidate=None) -> None:
    rank, size, n, T = comm.rank, comm.size, cfg.population.size, cfg.es.iterations
    folder = RunFolder(cfg.output.dir)
    if rank == 0:
        folder.prepare(cfg, env.restart_count, log)
    comm.barrier()
    done = folder.done(log)
    timer, task = Timer(), make_task(cfg)
    objective = Objective.of(train, [cfg.task.name], None)
    ev = Evaluator(backend or run_backend(cfg, comm, env, log, timer), task, timer, cfg.output.save_text,
                   settings(cfg), rank=rank, pause=env.slow.pause if env.slow else None)
    shard = folder.writer(rank)
    dealer = J.Dealer(comm.counter(), size) if cfg.runtime.schedule == "dynamic" else None
    fingerprint, sigma0, evals = theta_fingerprint(cfg), cfg.population.sigmas[0], eval_points(cfg.es)
    iters = [E.candidates(cfg.es, cfg.population.seed, sigma0, n, t) for t in range(T)]
    first_open = next((t for t in range(T) if any(c.index not in done.candidates for c in iters[t])), T)
    # A checkpoint no later than the first θ with work left: a missing candidate, or a missing evaluation (a run
    # grown with another es.eval_every asks for θ_t it did not evaluate).
    upto = min([first_open] + [t for t in evals if done.missing("member", t, test)])
    ev.loaded()
    names = list(ev.backend.names)
    start = load_checkpoint(cfg.output.dir, upto, names, fingerprint, log)
    # Rank 0 hashes every θ_t for the results; the others only their θ_T, which rank 0 checks against its own.
    if start:
        t0, tensors, hashes = start
        ev.backend.load_base(tensors)
    else:
        t0, hashes = 0, [theta_hash(ev.backend.base_tensors()) if rank == 0 else ""]
    log.info("es: %d iterations of %d candidates, %d finished; from θ_%d (%s); %d train / %d test examples",
             T, n, first_open, t0, "checkpoint" if start else "the model", len(train), len(test))
    answered = []
    for t in range(t0, T + 1):
        parts = J.test_parts([("member", t)], len(test), cfg.generation.batch_size, size) if t in evals else []
        items = list(parts) + (iters[t] if t < T else [])
        fresh = []
        with timer("population"):
            for item in J.share(items, lambda x: _todo(x, done, test), rank, size, dealer):
                if isinstance(item, tuple):
                    stop.check(f"θ_{t} on the test set")
                    _, key, lo, hi = item
                    record = ev.model(key, done.missing("member", key, test[lo:hi]))
                    answered.append(record)
                else:
                    stop.check(f"candidate {item.index} (iteration {t})")
                    if on_candidate:
                        on_candidate(rank, item.index)
                    record = ev.candidate(item, train, rank)
                    fresh.append(record)
                done.add(record)
                shard.append(record)
            with timer("wait"):
                for part in comm.allgather(fresh):
                    for record in part:
                        done.add(record)
        if t == T:
            break
        scores = [objective.exact(done.candidates[c.index].answers.rewards) for c in iters[t]]
        with timer("update"):
            ev.backend.shift(E.update_terms(cfg.es, iters[t], scores, abs(iters[t][0].sigma)))
        # θ read once per iteration (on vLLM a gather from the workers), for its hash and any checkpoint.
        theta = ev.backend.base_tensors() if rank == 0 or t + 1 == T else None
        hashes.append(theta_hash(theta) if theta is not None else "")
        if rank == 0 and ((t + 1) % cfg.es.checkpoint_every == 0 or t + 1 == T):
            save_checkpoint(cfg.output.dir, t + 1, theta, hashes, fingerprint)
        if rank == 0:
            mean = sum(float(s) for s in scores) / n
            log.info("es: iteration %d/%d: mean train score %.4f, best %.4f", t + 1, T, mean, float(max(scores)))
    if dealer:
        dealer.close()
    shard.close()
    with timer("wait"):
        gathered = comm.gather({"answered": answered, "theta": hashes[-1],
                                "timing": {"rank": rank, "hostname": env.hostname, **timer.totals()}})
    if rank == 0:
        differ = [p["timing"]["rank"] for p in gathered if p["theta"] != hashes[-1]]
        if differ:   # the update is meant to be bitwise alike on every rank: a rank that disagrees is a bug
            raise RuntimeError(f"es: θ_{T} on rank(s) {differ} differs from rank 0's")
        for p in gathered[1:]:
            for record in p["answered"]:
                done.add(record)
        from randopt_hpc.es_results import write_es_results

        write_es_results(cfg, comm, log, folder, train, test, done, iters, evals, hashes,
                         [p["timing"] for p in gathered], objective)
    comm.barrier()


def _todo(item, done, test) -> bool:
    if isinstance(item, tuple):
        _, key, lo, hi = item
        return bool(done.missing("member", key, test[lo:hi]))
    return item.index not in done.candidates
