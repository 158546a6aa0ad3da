"""Iterative RandOpt (`rounds: R`): search → distil → search again from the distilled model, R searches in all.

Round r (1..R) is an ordinary RandOpt run in output.dir/round-r (its own run.yaml, shards and results.h5) whose
model is the base (r = 1) or round r−1's top-K ensemble distilled into one model (output.dir/round-(r−1)/
distilled, by randopt_hpc.distill with the `distill:` section). Every rank runs every search; the members'
traces are dealt over the ranks and gathered on rank 0, which fine-tunes alone while the others wait without
spinning (one model's training on a few hundred traces: small next to a search, and one process makes it
bitwise reproducible from its seed and threads).
A rerun skips every finished search and every distilled model already published (a folder is whole or
absent), so it resumes where the job stopped. At the end rank 0 writes output.dir/rounds.md (and .json):
each round's base, best single, top-K vote and the distilled model's test accuracy.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from randopt_hpc.configrules import ConfigError, choice, require, within

TRACES = ("shortest", "all")
LORA = ("auto", "on", "off")


@dataclass(frozen=True)
class DistillConfig:
    """How a run's top K becomes one model (`python -m randopt_hpc.distill` takes the same, as options)."""
    k: int | None = None           # members distilled; null: the largest selection.top_k
    traces: str = "shortest"       # per prompt the shortest kept answer, or every distinct one
    unlabeled: int = 200           # unlabeled prompts per task, answered by the members' vote
    epochs: int = 3
    lr: float = 3e-4
    batch_size: int = 16
    seed: int = 0
    lora: str = "auto"             # auto: LoRA above randopt_hpc.distill.LORA_ABOVE parameters
    lora_rank: int = 16

    def validate(self, population_size: int) -> None:
        require(self.k is None or 1 <= self.k <= population_size, "distill.k",
                f"must be in [1, population.size={population_size}] or null, got {self.k}")
        choice("distill.traces", self.traces, TRACES)
        within("distill.unlabeled", self.unlabeled, 0, 1_000_000)
        within("distill.epochs", self.epochs, 1, 100_000)
        require(0 < self.lr < 1e3, "distill.lr", f"must be in (0, 1000), got {self.lr}")
        within("distill.batch_size", self.batch_size, 1, 1_000_000)
        require(0 <= self.seed < 2**63, "distill.seed", f"must be in [0, 2**63), got {self.seed}")
        choice("distill.lora", self.lora, LORA)
        within("distill.lora_rank", self.lora_rank, 1, 65_536)


def validate_rounds(cfg) -> None:
    within("rounds", cfg.rounds, 1, 1000)
    if cfg.rounds > 1:
        require(cfg.algorithm == "randopt", "rounds", "iterates RandOpt; algorithm es iterates by itself")
        require(cfg.backend == "hf", "rounds", f"distils with the hf backend; backend {cfg.backend} cannot")
    cfg.distill.validate(cfg.population.size)


def round_dir(cfg, r: int) -> str:
    return os.path.join(cfg.output.dir, f"round-{r}")


def round_config(cfg, r: int):
    """Round r's run: the config with its own folder and, after the first, round r−1's distilled model."""
    model = cfg.model if r == 1 else dataclasses.replace(cfg.model, path=distilled_dir(cfg, r - 1))
    return dataclasses.replace(cfg, rounds=1, model=model,
                               output=dataclasses.replace(cfg.output, dir=round_dir(cfg, r)))


def distilled_dir(cfg, r: int) -> str:
    return os.path.join(round_dir(cfg, r), "distilled")


def run_rounds(cfg, comm, env, log, train, test, stop, on_candidate=None) -> None:
    """run()'s signature; each round loads its own examples (the same splits: only the model changes)."""
    from randopt_hpc.data import load_examples
    from randopt_hpc.run import run
    from randopt_hpc.runfolder import FINISHED, RunFolder

    if cfg.output.overwrite and not env.restart_count and comm.rank == 0:   # afresh: the distilled models too
        import shutil

        for r in range(1, cfg.rounds + 1):
            shutil.rmtree(distilled_dir(cfg, r), ignore_errors=True)
    comm.barrier()
    for r in range(1, cfg.rounds + 1):
        rc = round_config(cfg, r)
        log.info("round %d/%d: model %s, folder %s", r, cfg.rounds, rc.model.path, rc.output.dir)
        if RunFolder(rc.output.dir).state(rc) != FINISHED:
            run(rc, comm, env, log, *load_examples(rc), stop, on_candidate=on_candidate)
        if r == cfg.rounds:
            break
        out = distilled_dir(cfg, r)
        if comm.bcast(not os.path.isdir(out) if comm.rank == 0 else None):   # rank 0's view decides for all
            stop.check(f"distilling round {r}")
            distill_round(rc, out, log, comm)
        elif comm.rank == 0:
            other = distilled_otherwise(rc, out)
            if other:
                raise ConfigError(f"distill: {out} was distilled with {other}; remove it to distil again, or choose "
                                  "another output.dir")
        comm.wait_all(float("inf"))   # the others wait for rank 0's training without spinning in a barrier
    if comm.rank == 0:
        write_summary(cfg, log)
    comm.barrier()


def distilled_otherwise(rc, out: str) -> str | None:
    """What of the `distill:` section (and runtime.threads) the model in `out` was not distilled with; None: all."""
    try:
        with open(os.path.join(out, "distill.json"), encoding="utf-8") as f:
            info = json.load(f)
        d, sft, same = rc.distill, info["sft"], ("epochs", "lr", "batch_size", "seed", "lora_rank")
        was = {"distill.k": info["k"], "distill.traces": info["traces"],
               "distill.unlabeled": info["unlabeled_per_task"], **{f"distill.{k}": sft[k] for k in same},
               "runtime.threads": info["threads"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"settings it does not record ({type(e).__name__})"
    now = {"distill.k": d.k or max(rc.selection.top_k), "distill.traces": d.traces, "distill.unlabeled": d.unlabeled,
           **{f"distill.{k}": getattr(d, k) for k in same}, "runtime.threads": rc.runtime.threads}
    if d.lora != "auto":
        was["distill.lora"], now["distill.lora"] = sft.get("lora"), d.lora == "on"
    return next((f"{k} {was[k]!r}, not {now[k]!r}" for k in now if was.get(k) != now[k]), None)


def distill_round(rc, out: str, log, comm) -> None:
    """The members' answers dealt over every rank (the same traces on any number of ranks), then rank 0 trains
    and publishes while the others wait."""
    from randopt_hpc.distill import answer_share, distill, shared_answers
    from randopt_hpc.export import Refused
    from randopt_hpc.sft import Settings

    d = rc.distill
    settings = Settings(epochs=d.epochs, lr=d.lr, batch_size=d.batch_size, seed=d.seed, lora_rank=d.lora_rank)
    try:
        if comm.rank:
            answer_share(rc.output.dir, d.k, d.unlabeled, shared_answers(comm), log.info)
            return
        info = distill(rc.output.dir, out, d.k, d.traces == "all", d.unlabeled, settings, d.lora,
                       rc.runtime.threads, log=log.info, setup=False, answer=shared_answers(comm))
    except Refused as e:
        raise RuntimeError(f"distilling {rc.output.dir}: {e}") from None
    log.info("distilled round %s into %s: test accuracy %.4f (top-%d vote %s, base %.4f)", rc.output.dir, out,
             info["distilled_test_accuracy"], info["k"], info["vote_test_accuracy"], info["base_test_accuracy"])


def summary_rows(cfg) -> list[dict]:
    import h5py
    import numpy as np

    rows = []
    for r in range(1, cfg.rounds + 1):
        with h5py.File(os.path.join(round_dir(cfg, r), "results.h5"), "r") as f:
            sel, best = f["ensemble/selected"], int(f["selection/ranking"][0])
            members = [int(m) for m in sel["members"][()]]
            row = {"round": r, "model": round_config(cfg, r).model.path,
                   "base": float(np.mean(f["base/test_correct"][()])),
                   "best_single": float(sel["test_correct"][members.index(best)].mean()),
                   "votes": {int(k): float(a) for k, a in zip(sel["k"][()], sel["accuracy"][()])}}
        info = os.path.join(distilled_dir(cfg, r), "distill.json")
        if os.path.exists(info):
            with open(info, encoding="utf-8") as g:
                row["distilled"] = json.load(g)["distilled_test_accuracy"]
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    ks = sorted({k for r in rows for k in r["votes"]})
    head = ["round", "model", "base", "best single", *(f"top-{k} vote" for k in ks), "distilled"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["round"]), f"`{r['model']}`", f"{100 * r['base']:.1f}", f"{100 * r['best_single']:.1f}",
                 *(f"{100 * r['votes'][k]:.1f}" if k in r["votes"] else "" for k in ks),
                 f"{100 * r['distilled']:.1f}" if "distilled" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(cfg, log) -> None:
    from randopt_hpc import atomic

    rows = summary_rows(cfg)
    text = render(rows)
    atomic.write_text(os.path.join(cfg.output.dir, "rounds.json"), json.dumps(rows, indent=1) + "\n")
    atomic.write_text(os.path.join(cfg.output.dir, "rounds.md"),
                      f"Test accuracy (%) by round, {cfg.rounds} rounds of RandOpt (randopt_hpc.rounds):\n\n{text}\n")
    print(f"rounds of {os.path.abspath(cfg.output.dir)}:\n{text}", flush=True)
    log.info("rounds summary: %s", os.path.join(cfg.output.dir, "rounds.md"))
