"""One candidate of a finished run, or an ES run's final θ, as a Hugging Face model folder:
`python -m randopt_hpc.export RUN_DIR (--member I | --rank R | --final) --out DIR`.

The folder holds exactly the weights candidate I was evaluated with (the run's config: model.path, dtype,
population.include/exclude and population.noise; θ0 + σ·ε(seed) by the hf backend, which a vllm run's
perturbation equals), config.json, the base folder's tokenizer files and generation_config.json, and a
README.md model card. Everything is checked before anything is written; the folder is written under a
temporary name beside --out and renamed at the end. docs/export.md.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile

import click

from randopt_hpc.cli import Command, fail

NAME = "randopt_hpc.export"
CHECKED = 16   # at most this many train examples re-answered by the base model (the first batch)
# Files of the base folder not copied: the weights (written anew), what save_pretrained writes, the card.
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf", ".onnx")
NOT_COPIED = ("config.json", "README.md", "model.safetensors.index.json", "pytorch_model.bin.index.json")


class Refused(Exception):
    """One line for stderr, exit 2."""


def strs(ds) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in ds[()]]


def finished(run_dir: str):
    """(config, RunFolder) of a finished run, or Refused."""
    from randopt_hpc.config import ConfigError
    from randopt_hpc.runfolder import RunFolder

    folder = RunFolder(run_dir)
    if not folder.started:
        raise Refused(f"{run_dir}: no run.yaml; not a randopt_hpc run folder")
    try:
        cfg = folder.config()
    except ConfigError as e:
        raise Refused(str(e)) from None
    damage = folder.results_damage(cfg)
    if damage is not None:
        raise Refused(f"{run_dir}: the run is not finished (results.h5 {damage})")
    return cfg, folder


def read_run(run_dir: str, member: int | None, rank: int | None, final: bool = False):
    """(config, the candidate's facts for the card, the base's stored answers to check it by) of a finished run,
    or Refused. final: an ES run's θ_T."""
    import h5py

    from randopt_hpc.population import Population

    cfg, folder = finished(run_dir)
    if (cfg.algorithm == "es") != final:
        raise Refused("an ES run: export its final θ with --final" if final is False else
                      "--final: only an ES run (algorithm: es) has a final θ; give a member by --rank R")
    if final:
        return (cfg, *read_es(folder.results, cfg))
    with h5py.File(folder.results, "r") as f:
        ranking = [int(x) for x in f["selection/ranking"][()]]
        n = len(ranking)
        if rank is not None and not 1 <= rank <= n:
            raise Refused(f"--rank {rank}: outside 1..{n} (the run's ranking of {n} candidates)")
        if member is not None and not 0 <= member < n:
            raise Refused(f"--member {member}: outside 0..{n - 1} (the run's {n} candidates)")
        index = ranking[rank - 1] if rank is not None else member
        cand = Population(cfg.population.seed, n, cfg.population.sigmas, cfg.population.sigma_assignment)[index]
        if int(f["population/seed"][index]) != cand.seed or float(f["population/sigma"][index]) != cand.sigma:
            raise Refused(f"{folder.results}: candidate {index}'s seed or sigma is not what its config gives")
        info = {"index": index, "seed": cand.seed, "sigma": cand.sigma, "position": ranking.index(index) + 1,
                "population": n, "fingerprint": str(f.attrs["config_fingerprint"]),
                "train_score": float(f["population/train_score"][index]),
                "train_accuracy": float(f["population/train_accuracy"][index]), "test_accuracy": None}
        for group in f["ensemble"].values():
            members = [int(x) for x in group["members"][()]]
            if index in members:
                info["test_accuracy"] = float(group["test_correct"][members.index(index)].mean())
                break
        base = stored_base(f)
    return cfg, info, base


def stored_base(f) -> dict:
    """The base model's stored train answers in an open RandOpt results file: what base_backend checks by."""
    return {"ids": strs(f["data/train_ids"]), "keys": strs(f["base/train_key"]), "texts": strs(f["base/train_text"])}


def read_es(path: str, cfg) -> tuple[dict, dict]:
    """An ES run's θ_T facts, and θ_0's stored test keys to check the base model by."""
    import h5py

    with h5py.File(path, "r") as f:
        es = f["es"]
        info = {"iteration": cfg.es.iterations, "theta_sha256": strs(es["theta_sha256"])[-1],
                "population": cfg.population.size, "fingerprint": str(f.attrs["config_fingerprint"]),
                "train_tokens": int(es["train_tokens"][-1]), "test_accuracy": float(es["test_accuracy"][-1])}
        base = {"split": "test", "ids": strs(f["data/test_ids"]), "keys": strs(es["test_key"][0]),
                "texts": None}
    return info, base


def on_this_machine(cfg):
    """cfg with runtime.device cpu where this machine has no GPU (a GPU run read on a login node: the same
    noise on the CPU)."""
    if cfg.runtime.device == "cpu":
        return cfg
    import torch

    return cfg if torch.cuda.is_available() else dataclasses.replace(
        cfg, runtime=dataclasses.replace(cfg.runtime, device="cpu"))


def base_backend(cfg, base: dict):
    """The hf backend on the run's model.path, the unperturbed model checked against the run's base answers."""
    from randopt_hpc.backends.hf import HFBackend
    from randopt_hpc.config import ConfigError
    from randopt_hpc.data import load_examples, make_task
    from randopt_hpc.evaluate import Evaluator
    from randopt_hpc.results import storable

    path = cfg.model.path
    if cfg.backend == "mlp":
        raise Refused("backend mlp: the toy MLP is not a Hugging Face model; nothing to export")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise Refused(f"model.path: {path} is not a Hugging Face model folder (no config.json)")
    cfg = on_this_machine(cfg)
    split = base.get("split", "train")   # the stored answers it is checked by: train (texts too), or ES's θ_0 test keys
    try:
        examples = load_examples(cfg)[split == "test"][:min(cfg.generation.batch_size, CHECKED)]
        backend = HFBackend.from_config(cfg, path)
        backend.set_chat(cfg.model.chat, path)
    except (ConfigError, ValueError, OSError) as e:
        raise Refused(" ".join(str(e).split())) from None
    if [ex.id for ex in examples] != base["ids"][:len(examples)]:
        raise Refused(f"task: the {split} split is not the one this run answered (its data changed)")
    got = Evaluator(backend, make_task(cfg), keep_text=True).answers(examples)
    texts = base["texts"] or [None] * len(examples)
    differ = sum((bt is not None and storable(t) != bt) or (k or "") != bk for t, k, bt, bk
                 in zip(got.texts, got.keys, texts, base["keys"]))
    if differ:
        raise Refused(f"model.path: {path} does not answer as the run's base model did ({differ} of {len(examples)} "
                      f"{split} answers differ)")
    return backend


def card(cfg, info: dict, run_dir: str) -> str:
    if "seed" not in info:
        return f"""# ES θ_{info['iteration']}

`{cfg.model.path}` after {info['iteration']} iterations of evolution strategies (N={info['population']}
per iteration, lr {cfg.es.lr!r}, σ_0 {cfg.population.sigmas[0]!r}, noise {cfg.population.noise}, dtype
{cfg.model.dtype}), exported by `python -m randopt_hpc.export --final` from the finished run
`{os.path.abspath(run_dir)}` (config fingerprint {info['fingerprint']}).

| | |
|---|---|
| θ sha256 (the perturbed tensors, as results.h5 records it) | {info['theta_sha256']} |
| generated train tokens spent | {info['train_tokens']:,} |
| test accuracy | {info['test_accuracy']:.4f} |
"""
    test = "not answered (the candidate was in no voted group)" if info["test_accuracy"] is None \
        else f"{info['test_accuracy']:.4f}"
    tasks = "+".join(t.name for t in cfg.all_tasks)
    return f"""# RandOpt candidate {info['index']}

θ0 + σ·ε(seed) of `{cfg.model.path}`, exported by `python -m randopt_hpc.export` from the finished run
`{os.path.abspath(run_dir)}` (randopt_hpc: {tasks}, N={info['population']}).

| | |
|---|---|
| candidate index | {info['index']} |
| ranking position | {info['position']} of {info['population']} |
| seed | {info['seed']} |
| σ | {info['sigma']!r} |
| noise | {cfg.population.noise}, dtype {cfg.model.dtype} |
| config fingerprint | {info['fingerprint']} |
| train score (mean reward) | {info['train_score']!r} |
| train accuracy | {info['train_accuracy']:.4f} |
| test accuracy | {test} |

The run answered greedily with at most {cfg.generation.max_new_tokens} new tokens, stopping at EOS (and the
task's stop strings); generation_config.json is the base model's.
"""


def export(run_dir: str, out: str, member: int | None, rank: int | None, final: bool = False) -> dict:
    if (member is not None) + (rank is not None) + final != 1:
        raise Refused("give exactly one of --member I, --rank R and --final")
    check_out(out)
    cfg, info, base = read_run(run_dir, member, rank, final)
    backend = base_backend(cfg, base)
    if final:
        load_final(backend, run_dir, cfg, info)
    publish(out, lambda tmp: write(backend, cfg, info, run_dir, tmp))
    return info


def check_out(out: str) -> None:
    """Refused unless `out` is absent or an empty folder (not a link: it would be renamed over, not into), and a
    folder can be made where it goes."""
    from randopt_hpc.atomic import folder_problem

    path = os.path.abspath(out)
    try:
        taken = os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path) or os.listdir(path))
    except OSError as e:
        raise Refused(f"--out {out}: cannot read it ({e.strerror or e})") from None
    if taken:
        raise Refused(f"--out {out}: exists and is not an empty folder")
    problem = folder_problem(out)
    if problem:
        raise Refused(f"--out {out}: {problem}")


def publish(out: str, fill) -> None:
    """fill(tmp) writes the folder under a temporary name beside `out`, which is then renamed to `out` (absent
    or empty: checked by the caller): a folder is whole or absent."""
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.tmp-", dir=parent)
    except OSError as e:
        raise Refused(f"--out {out}: cannot write there ({e.strerror or e})") from None
    try:
        fill(tmp)
        mask = os.umask(0)
        os.umask(mask)
        for name in os.listdir(tmp):   # mkdtemp's folder is private: the output gets the usual modes
            os.chmod(os.path.join(tmp, name), 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        if os.path.isdir(out):
            os.rmdir(out)   # empty (checked); a folder made meanwhile stops the rename
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_base_files(src: str, dst: str) -> None:
    """The base folder's tokenizer files, generation_config.json and the like: everything but its weights, its
    config.json (save_pretrained writes it) and its card."""
    for name in sorted(os.listdir(src)):
        full = os.path.join(src, name)
        if os.path.isfile(full) and not name.startswith(".") and name not in NOT_COPIED \
                and not name.endswith(WEIGHTS):
            shutil.copy2(full, os.path.join(dst, name))


def load_final(backend, run_dir: str, cfg, info: dict) -> None:
    """The backend's θ0 <- the ES run's θ_T checkpoint, checked against the hash its results recorded."""
    from randopt_hpc.es_run import load_checkpoint
    from randopt_hpc.fingerprint import theta_fingerprint

    found = load_checkpoint(run_dir, cfg.es.iterations, list(backend.names), theta_fingerprint(cfg))
    if found is None or found[0] != cfg.es.iterations or found[2][-1] != info["theta_sha256"]:
        raise Refused(f"{run_dir}: no readable checkpoint of θ_{cfg.es.iterations} with the hash results.h5 records")
    backend.load_base(found[1])


def write(backend, cfg, info: dict, run_dir: str, tmp: str) -> None:
    import torch

    if "seed" in info:   # a RandOpt candidate; an ES run's θ_T is the backend's base already
        backend.perturb(info["seed"], info["sigma"])
    model = backend.model
    with torch.no_grad():
        for p in model.parameters():   # the perturbed tensors are views of one flat buffer: one storage each
            p.data = p.data.clone()
    model.save_pretrained(tmp, safe_serialization=True)
    gen = os.path.join(tmp, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)   # the backend's greedy settings: the base folder's file (if any) is copied instead
    copy_base_files(cfg.model.path, tmp)
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
        f.write(card(cfg, info, run_dir))


@click.command(cls=Command, error_name=NAME, help=__doc__.splitlines()[0])
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--member", type=int, help="the candidate's index, 0..N-1")
@click.option("--rank", type=int, help="the candidate at this position of the run's ranking, 1 = best")
@click.option("--final", is_flag=True, help="an ES run (algorithm: es): its final θ")
@click.option("--out", required=True, type=click.Path(), help="the folder to write (absent or empty)")
def main(run_dir: str, member: int | None, rank: int | None, final: bool, out: str) -> None:
    try:
        info = export(run_dir, out, member, rank, final)
    except Refused as e:
        sys.exit(fail(NAME, str(e)))
    if final:
        click.echo(f"{out}: θ_{info['iteration']} (sha256 {info['theta_sha256'][:16]}, test accuracy "
                   f"{info['test_accuracy']:.4f})")
        return
    click.echo(f"{out}: candidate {info['index']} (rank {info['position']}/{info['population']}, seed {info['seed']}, "
               f"sigma {info['sigma']!r}, train score {info['train_score']:.4f})")


if __name__ == "__main__":
    main(prog_name="python -m randopt_hpc.export")
