"""The top-K ensemble of a finished run distilled into one model: `python -m randopt_hpc.distill RUN_DIR --out DIR`.

Each of the top-K members answers the run's train prompts and some unlabeled prompts of the task (rows in
neither split); per train prompt the shortest correct answer is kept, per unlabeled prompt the shortest
answer that agrees with the K members' vote; the base model is then fine-tuned on those (prompt, answer)
pairs (randopt_hpc.sft) and written as a Hugging Face folder with traces.jsonl, distill.json and a card.
Everything is checked before anything is written; the folder is written under a temporary name beside
--out and renamed at the end, as export does. docs/distill.md.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
from dataclasses import dataclass

import click

from randopt_hpc.cli import Command, Finite, fail, threads_option
from randopt_hpc.export import (
    Refused,
    base_backend,
    check_out,
    copy_base_files,
    finished,
    on_this_machine,
    publish,
    stored_base,
    strs,
)
from randopt_hpc.rounds import LORA, TRACES, DistillConfig

NAME = "randopt_hpc.distill"
D = DistillConfig()   # the options' defaults: a config's `distill:` section has the same
LORA_ABOVE = 1_000_000_000   # --lora auto: full fine-tuning in float32 (16 bytes a parameter with AdamW) below


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- which traces are kept (pure)
@dataclass(frozen=True)
class Trace:
    member: int             # position of the member in the ranking, 0 = best
    response: str           # the completion as the backend returned it (its stop string kept)
    key: str | None         # the task's voting key; None: no valid answer (the task's format absent)
    correct: bool           # the task's verdict


def _shortest(traces: list[Trace], every: bool) -> list[Trace]:
    """All of `traces` without repeated texts (every), else the shortest in characters, ties to the better-ranked
    member, as the reference keeps the shortest correct trace."""
    if every:
        seen: set[str] = set()
        return [t for t in traces if not (t.response in seen or seen.add(t.response))]
    return [min(traces, key=lambda t: (len(t.response), t.member))] if traces else []


def keep_correct(traces: list[Trace], every: bool = False) -> list[Trace]:
    """A labeled prompt: the correct answers that carry the task's format (a voting key)."""
    return _shortest([t for t in traces if t.correct and t.key], every)


def keep_majority(traces: list[Trace], every: bool = False) -> list[Trace]:
    """An unlabeled prompt: the answers whose key is the members' vote (the run's rule: the most common key,
    a tie to the first in ranking order); none when every member abstains. `traces` in ranking order."""
    from randopt_hpc.vote import vote_item

    key, _ = vote_item([t.key for t in traces])
    return [] if key is None else _shortest([t for t in traces if t.key == key], every)


# ---------------------------------------------------------------- the run and its prompts
def read_members(run_dir: str, k: int | None):
    """(config, base answers for the check, facts of the run and its top-K) of a finished run, or Refused."""
    import h5py
    import numpy as np

    from randopt_hpc.population import Population
    from randopt_hpc.vote import vote

    cfg, folder = finished(run_dir)   # the finished-run checks, shared with export
    if cfg.algorithm == "es":
        raise Refused(f"{run_dir}: an ES run (algorithm: es) has no top-K ensemble to distil; export its final "
                      "θ with python -m randopt_hpc.export --final")
    with h5py.File(folder.results, "r") as f:
        base = stored_base(f)   # the base model's stored train answers, for export's check
        ranking = [int(x) for x in f["selection/ranking"][()]]
        n = len(ranking)
        k = max(cfg.selection.top_k) if k is None else k
        if not 1 <= k <= n:
            raise Refused(f"--k {k}: outside 1..{n} (the run's {n} candidates)")
        pop = Population(cfg.population.seed, n, cfg.population.sigmas, cfg.population.sigma_assignment)
        members = []
        for pos, index in enumerate(ranking[:k]):
            c = pop[index]
            if int(f["population/seed"][index]) != c.seed or float(f["population/sigma"][index]) != c.sigma:
                raise Refused(f"{run_dir}: candidate {index}'s seed or sigma is not what its config gives")
            members.append({"index": index, "position": pos + 1, "seed": c.seed, "sigma": c.sigma,
                            "train_score": float(f["population/train_score"][index]),
                            # the run's train keys, None where it did not answer (halving's early drops)
                            "train_key": [None if r != r else key for key, r in
                                          zip(strs(f["population/train_key"][index]),
                                              f["population/train_reward"][index].tolist())]})
        sel = f["ensemble/selected"]
        voted = None
        if k <= len(sel["members"]):   # the top-K vote on test, as the run voted it
            keys = [[x or None for x in strs(row)] for row in sel["test_key"][:k]]
            voted = float(np.mean(vote(keys, sel["test_key_correct"][:k].tolist(), k)[1]))
        facts = {"run_dir": os.path.abspath(run_dir), "population": n, "k": k,
                 "fingerprint": str(f.attrs["config_fingerprint"]),
                 "base_test_accuracy": float(np.mean(f["base/test_correct"][()])), "vote_test_accuracy": voted}
    return cfg, base, facts, members


def unlabeled_examples(cfg, per_task: int) -> list:
    """Up to `per_task` prompts of each task that are in neither of the run's splits, in the data's order: the
    rows between train (the first) and test (the last) of a data file, or the synthetic stream's next rows."""
    import dataclasses

    from randopt_hpc.data import load_examples, task_of, task_records

    if per_task <= 0:
        return []
    train, test = load_examples(cfg)
    taken = {ex.id for ex in train + test} | {ex.prompt for ex in train + test}
    out = []
    for t in (cfg.tasks or [cfg.task]):
        task = task_of(t)
        labeled = t.train_size + t.test_size
        if t.data or getattr(task, "packaged_records", None) is not None:
            rows = task_records(task, t)
            pool = task.examples_from_records(rows)[t.train_size:len(rows) - t.test_size]
        else:   # a synthetic stream: each longer stream extends the shorter, so rows past the run's are new
            limit = task.synthetic_limit
            n = labeled + per_task if limit is None else min(limit, labeled + per_task)
            pool = task.examples_from_records(task.synthetic_records(n, t.seed))[labeled:]
        if cfg.tasks:
            pool = [dataclasses.replace(ex, task=t.name, id=f"{t.name}/{ex.id}") for ex in pool]
        out += [ex for ex in pool if ex.id not in taken and ex.prompt not in taken][:per_task]
    return out


def member_answers(backend, task, members: list[dict], examples: list, log=_say) -> list:
    """Each member's Answers to `examples`, in member order."""
    from randopt_hpc.evaluate import Evaluator
    from randopt_hpc.population import Candidate

    ev = Evaluator(backend, task, keep_text=True)
    answers, t0 = [], time.perf_counter()
    for i, m in enumerate(members):
        answers.append(ev.answers(examples, Candidate(m["index"], m["seed"], m["sigma"])))
        elapsed = time.perf_counter() - t0
        log(f"distill: traces member {i + 1}/{len(members)} elapsed {elapsed:.0f} s "
            f"ETA {elapsed / (i + 1) * (len(members) - i - 1):.0f} s")
    return answers


def shared_answers(comm):
    """member_answers dealt over the ranks of `comm` (randopt_hpc.rounds): rank r answers members r, r + size, ...
    (the same Answers whichever rank computes them); rank 0 gets them all in member order, the others None."""
    def answer(backend, task, members, examples, log=_say):
        parts = comm.gather(member_answers(backend, task, members[comm.rank::comm.size], examples, log))
        return None if comm.rank else [parts[i % comm.size][i // comm.size] for i in range(len(members))]
    return answer


def answer_share(run_dir: str, k: int | None, n_unlabeled: int, answer, log=_say) -> None:
    """A rank other than 0 in a distillation dealt over the ranks: its share of distill()'s member answers."""
    from randopt_hpc.data import load_examples, make_task

    cfg, base, _, members = read_members(run_dir, k)
    answer(base_backend(cfg, base), make_task(cfg), members, load_examples(cfg)[0] +
           unlabeled_examples(cfg, n_unlabeled), log)


def collect(backend, task, members: list[dict], train: list, unlabeled: list, every: bool, log=_say,
            answer=member_answers):
    """Every member answers train + unlabeled (`answer`: here, or dealt over ranks); (kept trace rows, per-split
    counts, train keys that differ from the run's stored ones)."""
    examples = train + unlabeled
    answers = answer(backend, task, members, examples, log)
    differ = sum((key or "") != stored for m, a in zip(members, answers)
                 for key, stored in zip(a.keys[:len(train)], m["train_key"]) if stored is not None)
    rows, counts = [], {}
    for split, lo, hi, rule in (("train", 0, len(train), keep_correct),
                                ("unlabeled", len(train), len(examples), keep_majority)):
        c = counts[split] = {"prompts": hi - lo, "kept": 0, "skipped": 0, "traces": 0, "traces_correct": 0}
        for j in range(lo, hi):
            kept = rule([Trace(m, a.texts[j], a.keys[j], bool(a.correct[j])) for m, a in enumerate(answers)], every)
            c["kept" if kept else "skipped"] += 1
            c["traces"] += len(kept)
            c["traces_correct"] += sum(t.correct for t in kept)
            ex = examples[j]
            rows += [{"id": ex.id, "split": split, "member": members[t.member]["index"], "position": t.member + 1,
                      "seed": members[t.member]["seed"], "sigma": members[t.member]["sigma"],
                      "prompt": backend.prompt_text(ex), "response": t.response, "key": t.key,
                      "correct": t.correct} for t in kept]
    return rows, counts, differ


# ---------------------------------------------------------------- the command
def need_peft() -> None:
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise Refused("--lora: LoRA needs the peft package (pip install peft), or --lora off")


def distill(run_dir: str, out: str, k: int | None, every: bool, n_unlabeled: int, settings, lora: str,
            threads: int, log=_say, setup: bool = True, answer=member_answers) -> dict:
    """The command's work; setup=False inside a run's process (randopt_hpc.rounds), which is set up already, and
    `answer` there deals the members' answers over the ranks (shared_answers)."""
    import dataclasses

    from randopt_hpc.config import ConfigError
    from randopt_hpc.data import load_examples, make_task
    from randopt_hpc.environment import Environment, setup_process

    check_out(out)
    if lora == "on":
        need_peft()
    cfg, base, facts, members = read_members(run_dir, k)
    # As a run's process: numba's and torch's pools sized to --threads (an unsized numba pool keeps spinning
    # beside torch's on a shared node), one GPU, no hub.
    if setup:
        setup_process(dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, threads=threads)),
                      Environment.from_os())
    backend = base_backend(cfg, base)
    try:
        train = load_examples(cfg)[0]
        unlabeled = unlabeled_examples(cfg, n_unlabeled)
    except (ConfigError, ValueError) as e:
        raise Refused(" ".join(str(e).split())) from None
    t0 = time.perf_counter()
    rows, counts, differ = collect(backend, make_task(cfg), members, train, unlabeled, every, log, answer)
    seconds = {"traces": time.perf_counter() - t0}
    if not rows:
        raise Refused(f"nothing to distil: no member answered a train prompt correctly and no unlabeled prompt "
                      f"got a vote (K={facts['k']}, {len(train)} train, {len(unlabeled)} unlabeled prompts)")
    params = sum(p.numel() for p in backend.model.parameters())
    use_lora = lora == "on" or (lora == "auto" and params > LORA_ABOVE)
    if use_lora:
        need_peft()
    settings = dataclasses.replace(settings, lora=use_lora)
    chat, device, tok = backend.chat, backend.device, backend.tokenizer
    eos = tok.eos_token_id if tok.eos_token_id is not None else (backend.stop_ids or [None])[0]
    if eos is None:
        raise Refused(f"model.path: {cfg.model.path}: the tokenizer has no EOS token and the model no stop id")
    del backend   # its weights and their pristine copy are not needed for training
    gc.collect()
    model, stats = fine_tune(cfg, tok, chat, device, rows, settings, eos, log)
    seconds["training"] = stats["seconds"]
    info = {**facts, "traces": "all" if every else "shortest", "unlabeled_per_task": n_unlabeled,
            "counts": counts, "member_train_keys_differ": differ, "parameters": params,
            "sft": settings.as_dict(), "threads": threads, "steps": stats["steps"],
            "loss_by_epoch": stats["loss_by_epoch"], "final_train_loss": stats["loss_by_epoch"][-1],
            "members": [{k: v for k, v in m.items() if k != "train_key"} for m in members]}
    held = [model]   # write() lets go of the trained model before it loads the written folder for the test
    del model
    publish(out, lambda tmp: write(cfg, held, chat, rows, info, seconds, tmp))
    return info


def fine_tune(cfg, tok, chat: bool, device, rows: list[dict], settings, eos: int, log):
    """The base model, fresh from model.path (float32 for full fine-tuning, the run's dtype under LoRA),
    trained on the kept traces."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from randopt_hpc import sft

    config = AutoConfig.from_pretrained(cfg.model.path, local_files_only=True)
    attn = "eager" if getattr(config, "attn_logit_softcapping", None) else None   # as the hf backend
    dtype = getattr(torch, cfg.model.dtype) if settings.lora else torch.float32
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, config=config, dtype=dtype, local_files_only=True,
                                                 attn_implementation=attn).to(device)
    pairs = [sft.encode_pair(tok, r["prompt"], r["response"], not chat, eos) for r in rows]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return sft.train(model, pairs, settings, pad, log)


def write(cfg, held: list, chat: bool, rows: list[dict], info: dict, seconds: dict, tmp: str) -> None:
    import torch

    held.pop().to(dtype=getattr(torch, cfg.model.dtype)).save_pretrained(tmp, safe_serialization=True)
    gc.collect()
    gen = os.path.join(tmp, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)   # the base folder's file (if any) is copied instead, as export does
    copy_base_files(cfg.model.path, tmp)
    with open(os.path.join(tmp, "traces.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    t0 = time.perf_counter()
    info["distilled_test_accuracy"] = test_accuracy(cfg, tmp, chat)
    seconds["evaluation"] = time.perf_counter() - t0
    info["seconds"] = seconds
    with open(os.path.join(tmp, "distill.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
        f.write(card(cfg, info))


def card(cfg, info: dict) -> str:
    tr, un, sft = info["counts"]["train"], info["counts"]["unlabeled"], info["sft"]
    vote = "n/a (K above the run's largest top_k)" if info["vote_test_accuracy"] is None \
        else f"{info['vote_test_accuracy']:.4f}"
    how = f"LoRA rank {sft['lora_rank']}, merged" if sft["lora"] else "full fine-tuning in float32"
    return f"""# RandOpt top-{info['k']} ensemble, distilled

`{cfg.model.path}` fine-tuned on the answers of the top {info['k']} of {info['population']} perturbations of the
finished run `{info['run_dir']}` (config fingerprint {info['fingerprint']}), by `python -m randopt_hpc.distill`.

| | |
|---|---|
| train prompts kept | {tr['kept']} of {tr['prompts']} ({tr['traces']} traces: correct, {info['traces']}) |
| unlabeled prompts kept | {un['kept']} of {un['prompts']} ({un['traces']} traces agreeing with the vote) |
| training | {how}; {sft['epochs']} epochs, lr {sft['lr']!r}, batch {sft['batch_size']}, seed {sft['seed']} |
| final train loss | {info['final_train_loss']:.4f} |
| test accuracy, base model | {info['base_test_accuracy']:.4f} |
| test accuracy, top-{info['k']} vote | {vote} |
| test accuracy, this model | {info['distilled_test_accuracy']:.4f} |

Test accuracy is greedy, at most {cfg.generation.max_new_tokens} new tokens, on the run's test split. The members,
the traces and every setting are in distill.json and traces.jsonl beside this card.
"""


def test_accuracy(cfg, folder: str, chat: bool) -> float:
    """Greedy exact accuracy of the model in `folder` on the run's test split, answered by the hf backend with
    the run's generation settings and scored by the task."""
    from randopt_hpc.backends.hf import HFBackend
    from randopt_hpc.data import load_examples, make_task
    from randopt_hpc.evaluate import Evaluator

    cfg = on_this_machine(cfg)
    backend = HFBackend.from_config(cfg, folder)
    backend.set_chat(chat, folder)   # what the run's backend decided, whatever --out is named
    return Evaluator(backend, make_task(cfg)).answers(load_examples(cfg)[1]).accuracy


@click.command(cls=Command, error_name=NAME, help=__doc__.splitlines()[0])
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="the folder to write (absent or empty)")
@click.option("--k", type=click.IntRange(min=1), help="members distilled: the top K (default: the largest "
              "selection.top_k)")
@click.option("--traces", type=click.Choice(TRACES), default=D.traces, show_default=True,
              help="per prompt, the shortest kept answer or every distinct one")
@click.option("--unlabeled", type=click.IntRange(min=0), default=D.unlabeled, show_default=True,
              help="unlabeled prompts per task (rows in neither split), answered by the vote; 0: none")
@click.option("--epochs", type=click.IntRange(min=1), default=D.epochs, show_default=True,
              help="passes over the traces")
@click.option("--lr", type=Finite(min=0, min_open=True), default=D.lr, show_default=True,
              help="peak AdamW rate: linear warm-up over the first 10% of steps, then cosine to 0")
@click.option("--batch-size", type=click.IntRange(min=1), default=D.batch_size, show_default=True,
              help="traces per optimizer step")
@click.option("--seed", type=click.IntRange(min=0), default=D.seed, show_default=True,
              help="LoRA initialisation and shuffling")
@click.option("--lora", type=click.Choice(LORA), default=D.lora, show_default=True,
              help=f"auto: LoRA above {LORA_ABOVE:.0e} parameters, full fine-tuning below")
@click.option("--lora-rank", type=click.IntRange(min=1), default=D.lora_rank, show_default=True,
              help="rank of the LoRA adapters (alpha = 2 x rank)")
@threads_option("torch and numba CPU threads (the same count gives the same weights)")
def main(run_dir: str, out: str, k: int | None, traces: str, unlabeled: int, epochs: int, lr: float,
         batch_size: int, seed: int, lora: str, lora_rank: int, threads: int) -> None:
    from randopt_hpc.config import ConfigError
    from randopt_hpc.sft import Settings

    try:   # the bounds of a config's `distill:` section, named as options (k: against the run, later)
        DistillConfig(traces=traces, unlabeled=unlabeled, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      lora=lora, lora_rank=lora_rank).validate(1)
    except ConfigError as e:
        key, _, why = str(e).partition(": ")
        sys.exit(fail(NAME, f"--{key.removeprefix('distill.').replace('_', '-')}: {why}"))
    settings = Settings(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, lora_rank=lora_rank)
    try:
        info = distill(run_dir, out, k, traces == "all", unlabeled, settings, lora, threads)
    except Refused as e:
        sys.exit(fail(NAME, str(e)))
    c = info["counts"]
    vote = "n/a" if info["vote_test_accuracy"] is None else f"{info['vote_test_accuracy']:.4f}"
    click.echo(f"{out}: top-{info['k']} of {info['population']} distilled from {c['train']['traces']} train traces "
               f"({c['train']['kept']}/{c['train']['prompts']} prompts) and {c['unlabeled']['traces']} unlabeled "
               f"({c['unlabeled']['kept']}/{c['unlabeled']['prompts']}); final train loss "
               f"{info['final_train_loss']:.4f}")
    click.echo(f"test accuracy: base {info['base_test_accuracy']:.4f}, top-{info['k']} vote {vote}, "
               f"distilled {info['distilled_test_accuracy']:.4f}")
    s = info["seconds"]
    click.echo(f"seconds: traces {s['traces']:.1f}, training {s['training']:.1f}, evaluation {s['evaluation']:.1f}")


if __name__ == "__main__":
    main(prog_name="python -m randopt_hpc.distill")
