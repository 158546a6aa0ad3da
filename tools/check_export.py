"""Export a finished run's member (or an ES run's final θ) and answer the run's test split with it through a
backend, against the run's stored answers: `python -m tools.check_export RUN_DIR [--backend hf|vllm]
[--rank R | --final]`.

Prints how many of the stored test keys the exported folder reproduces (docs/export.md); exit 1 when any
differs, 2 for bad input. The folder is written to a temporary directory and removed at the end.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile

import click

from randopt_hpc.cli import Command, fail

NAME = "check_export"


def stored_keys(run_dir: str, rank: int, final: bool) -> tuple:
    """(config, what was exported in words, the stored test keys it must reproduce), or Refused."""
    import h5py

    from randopt_hpc.export import Refused, read_run, strs

    cfg, info, _ = read_run(run_dir, None, None if final else rank, final)
    with h5py.File(os.path.join(run_dir, "results.h5"), "r") as f:
        if final:
            return cfg, f"final θ (iteration {info['iteration']})", strs(f["es/test_key"][-1])
        index = info["index"]
        members = [int(x) for x in f["ensemble/selected/members"][()]]
        if index not in members:
            raise Refused(f"--rank {rank}: candidate {index} is not in the selected ensemble, so the run stored "
                          f"no test answers for it (give a rank up to {len(members)})")
        keys = strs(f["ensemble/selected/test_key"][members.index(index)])
    return cfg, f"member {index}", keys


def answer(cfg, folder: str, backend_name: str) -> list:
    """The test split's keys from the exported folder on its own: its config, the run's generation settings."""
    from randopt_hpc.backends import make_backend
    from randopt_hpc.data import load_examples, make_task
    from randopt_hpc.environment import Environment, setup_process
    from randopt_hpc.evaluate import Evaluator
    from randopt_hpc.export import on_this_machine

    R = dataclasses.replace
    cfg = on_this_machine(R(cfg, backend=backend_name, model=R(cfg.model, path=folder),
                            vllm=R(cfg.vllm, kv_cache_gib=cfg.vllm.kv_cache_gib or 0.25)))  # one model: a small cache
    setup_process(cfg, Environment.from_os())
    return Evaluator(make_backend(cfg), make_task(cfg)).answers(load_examples(cfg)[1]).keys


@click.command(cls=Command, error_name=NAME, help=__doc__.splitlines()[0])
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--backend", type=click.Choice(["vllm", "hf"]), default="vllm", show_default=True)
@click.option("--rank", type=click.IntRange(min=1), default=1, show_default=True,
              help="the member at this position of the ranking (1 = best)")
@click.option("--final", is_flag=True, help="an ES run (algorithm: es): its final θ")
def main(run_dir: str, backend: str, rank: int, final: bool) -> None:
    from randopt_hpc.export import Refused

    try:
        cfg, what, keys = stored_keys(run_dir, rank, final)
    except Refused as e:
        sys.exit(fail(NAME, str(e)))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "export")
        pick = ["--final"] if final else ["--rank", str(rank)]
        p = subprocess.run([sys.executable, "-m", "randopt_hpc.export", run_dir, *pick, "--out", out],
                           capture_output=True, text=True)
        if p.returncode:
            sys.exit(fail(NAME, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"export: exit "
                          f"{p.returncode}"))
        click.echo(p.stdout.strip())
        got = answer(cfg, out, backend)
    same = sum((k or "") == want for k, want in zip(got, keys))
    click.echo(f"{backend} backend on the exported {what}: {same}/{len(keys)} test keys equal the run's stored keys")
    sys.exit(0 if same == len(keys) == len(got) else 1)


if __name__ == "__main__":
    main()
