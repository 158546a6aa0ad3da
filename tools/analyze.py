"""Offline analysis of RandOpt results files: `python -m tools.analyze COMMAND FILES... [--json]`.

Needs numpy, h5py, pyyaml and click; `plot` also needs matplotlib. No MPI, no torch, no GPU: results
files copied off a cluster can be read anywhere. Files from any rank count read the same.
"""
from __future__ import annotations

import json
import os
from contextlib import ExitStack

import click

from randopt_hpc.cli import DPI, Finite, Group, listed, out_dir
from randopt_hpc.population import DEALS
from tools import metrics, render, reports, runfile, schedules, sweep, tables
from tools.runfile import ResultsError

PROG = "python -m tools.analyze"


def _fail(e: Exception):
    raise click.ClickException(str(e))


def _each(paths, build, *args, algorithms=("randopt",), **kw) -> list[dict]:
    """build(f, path, *args, **kw) for every file; any unreadable file ends the command with one error line."""
    out = []
    for path in paths:
        try:
            with runfile.open_results(path, algorithms) as f:
                out.append(build(f, path, *args, **kw))
        except (ResultsError, ValueError, OSError) as e:
            _fail(e)
    return out


def _emit(data, as_json: bool, render) -> None:
    if as_json:
        click.echo(json.dumps(tables.jsonable(data), indent=1, allow_nan=False))
    else:
        items = data if isinstance(data, list) else [data]
        for i, item in enumerate(items):
            if len(items) > 1:
                click.echo(("\n" if i else "") + f"== {item['path']} ==")
            click.echo(render(item))


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Machine-readable JSON on stdout (a list, one object per file).")
files_arg = click.argument("files", nargs=-1, required=True, metavar="FILES...")


@click.group(cls=Group, error_name="analyze", context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Offline analysis of results.h5 files (docs/analysis.md). Errors: one line on stderr, exit 2."""


# ------------------------------------------------------------------------------------------ summary

@cli.command()
@files_arg
@json_option
def summary(files, as_json):
    """Config, sizes, accuracies with 95% intervals (base, samples, best single, top-K, controls), paired
    differences, tokens and FLOPs, and per-rank timing."""
    _emit(_each(files, reports.summary), as_json, render.summary)


# ------------------------------------------------------------------------------------------- kcurve

@cli.command()
@files_arg
@json_option
def kcurve(files, as_json):
    """Vote accuracy and coverage for every k = 1..K, selected and control, re-voted from the stored member answers.

    Vote: majority voting key per item, ties to the first member in rank order, '' abstains
    (randopt_hpc.vote). Coverage at k: share of items that at least one of the first k members gets right.
    """
    _emit(_each(files, reports.kcurve), as_json, render.kcurve)


# -------------------------------------------------------------------------------------------- sigma

@cli.command()
@files_arg
@json_option
def sigma(files, as_json):
    """Train-score distribution per σ: count, mean, std, quantiles, share above / at least the base."""
    _emit(_each(files, reports.sigma), as_json, render.sigma)


# ------------------------------------------------------------------------------------------ density

@cli.command()
@files_arg
@click.option("--margins", callback=listed(float, "numbers in [-100, 100]", -100, high=100), metavar="M1,M2,...",
              help="Margins m over the base, in accuracy points (default: "
                   f"{','.join(f'{m:g}' for m in metrics.ACCURACY_MARGINS)}; may be negative). With --on score: over "
                   "the base train score (default: an even grid from the worst to the best candidate, with 0).")
@click.option("--on", "on", type=click.Choice(["accuracy", "score"]), default="accuracy", show_default=True,
              help="accuracy: per σ, from stored correctness (the paper's δ). score: the mean train reward "
                   "(with format bonus), all σ pooled, as before.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="test: the control members' test accuracy (ensemble/control) against the base's.")
@click.option("--steps", type=click.IntRange(2, 10_000), default=11, show_default=True,
              help="Points of the default grid of --on score.")
@json_option
def density(files, margins, on, split, steps, as_json):
    """Solution density δ(m) = share of candidates with accuracy ≥ base accuracy + m, per σ, with 95% Wilson
    intervals (docs/analysis.md, "density")."""
    _emit(_each(files, reports.density, margins, steps, on, split), as_json, render.density)


# ------------------------------------------------------------------------------------------ thicket

@cli.command()
@files_arg
@json_option
def thicket(files, as_json):
    """The thicket on the test set, per σ: share of candidates at least as accurate as the base, best − base, and
    how well the train score predicts test accuracy (Pearson r with a 95% Fisher interval, Spearman ρ;
    docs/analysis.md, "thicket")."""
    _emit(_each(files, reports.thicket), as_json, render.thicket)


# -------------------------------------------------------------------------------------- discordance

@cli.command()
@files_arg
@click.option("--splits", type=click.IntRange(min=2), default=None, metavar="M",
              help="One file: a reliability diagnostic, not a discordance: cut its train examples into M contiguous "
                   "blocks and report their mean rank correlation and the full score's reliability.")
@json_option
def discordance(files, splits, as_json):
    """Spectral discordance D = 1 − mean off-diagonal Pearson correlation of the candidates' percentile ranks
    (docs/analysis.md, "discordance")."""
    try:
        with ExitStack() as stack:
            opened = [(p, stack.enter_context(runfile.open_results(p))) for p in files]
            data = reports.discordance(opened, splits)
    except (ResultsError, ValueError, OSError) as e:
        _fail(e)
    _emit({**data, "path": ", ".join(files)}, as_json, render.discordance)


# -------------------------------------------------------------------------------------------- passk

@cli.command()
@files_arg
@json_option
def passk(files, as_json):
    """The limit-of-RLVR table: base pass@k and TT-MV@k against each ensemble's coverage and vote, for every k
    (docs/analysis.md, "passk")."""
    _emit(_each(files, reports.passk), as_json, render.passk)


# ------------------------------------------------------------------------------------------ halving

@cli.command()
@files_arg
@click.option("--schedule", type=click.Choice(["halving", "full"]), default="halving", show_default=True)
@click.option("--first", type=click.IntRange(min=1), default=None, help="Examples of the first rung (default: "
              "the run's selection.halving.first, else the config default).")
@click.option("--eta", type=click.IntRange(min=2), default=None, help="Keep 1/eta per rung, eta times the examples.")
@click.option("--keep", type=Finite(min=1), default=None, help="Never fewer survivors than keep × max K.")
@click.option("--k", "ks", type=click.IntRange(min=1), multiple=True, help="K values (default: the run's top_k).")
@click.option("--live", default=None, metavar="FILE", help="A live run of the schedule: whether its top K (its "
              "selection/ranking) are the replay's, in order.")
@json_option
def halving(files, schedule, first, eta, keep, ks, live, as_json):
    """Replay a selection schedule on each run's stored per-example train rewards: its rungs, the train examples
    and generated tokens it costs against the file's, and how many of its top-K members are the file's top K.
    A live run with the same schedule selects exactly these members (randopt_hpc.halving, one code)."""
    def build(f, path):
        stored = (runfile.config(f).get("selection") or {}).get("halving") or {}
        hc = schedules.halving_config(stored, first=first, eta=eta, keep=keep)
        out = schedules.replay(f, path, schedule, hc, list(ks) or None)
        if live:
            with runfile.open_results(live) as g:
                ranking = g["selection/ranking"][()].tolist()
            for t in out["top"]:
                t["live_equal"] = ranking[:t["k"]] == t["members"]
        return out
    _emit(_each(files, build), as_json, schedules.render)


# -------------------------------------------------------------------------------------------- scale

@cli.command()
@files_arg
@click.option("--ranks", default="8,200,800", show_default=True,
              callback=listed(int, "integers in [1, 100000]", 1, high=100_000),
              help="Rank counts to replay on, comma-separated.")
@click.option("--schedule", "schedules", default=",".join(DEALS), show_default=True,
              callback=listed(str, f"values of {', '.join(DEALS)}", choices=DEALS),
              help="runtime.schedule values, comma-separated.")
@click.option("--n", "ns", default=None, callback=listed(int, "integers in [1, 10000000]", 1, high=10_000_000),
              help="Population sizes, comma-separated (default: the run's N); candidate times are drawn with "
              "replacement from the recorded ones.")
@click.option("--members", type=click.IntRange(0, 1_000_000), default=None,
              help="Member jobs after the ranking (default: the run's).")
@click.option("--test-size", type=click.IntRange(0, 1_000_000), default=None,
              help="Test problems per member.")
@click.option("--slow-share", type=Finite(0, 1), default=0.0, show_default=True,
              help="Share of candidates made --slow-factor times slower (runaway answers).")
@click.option("--slow-factor", type=Finite(min=1), default=5.0, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of the resampling.")
@json_option
def scale(files, ranks, schedules, ns, members, test_size, slow_share, slow_factor, seed, as_json):
    """Replay each run's recorded job times (population/seconds, jobs/) on R ranks under the strided and dynamic
    schedules: makespan, efficiency and the member phase's share, and how the replay of the run's own ranks
    and schedule compares with its measured phases (docs/analysis.md, "scale")."""
    from tools import scale as S

    kw = {"members": members, "test_size": test_size, "slow_share": slow_share, "slow_factor": slow_factor,
          "seed": seed}
    _emit(_each(files, S.report, ranks, schedules, ns or [None], **kw), as_json, S.render)


# -------------------------------------------------------------------------------------------- merge

def _merge_row(f, path):
    return reports.merge_row(f, path), sweep.record(f, path)


@cli.command()
@files_arg
@click.option("--csv", "as_csv", is_flag=True, help="CSV instead of a markdown table.")
@click.option("--over-seeds", is_flag=True,
              help="Only the table over population seeds (with --csv: that table as CSV, one row per group and "
                   "quantity).")
@json_option
def merge(files, as_csv, over_seeds, as_json):
    """One table of several runs (e.g. a sweep: runs/sweep/*/results.h5): the config keys that differ, N, accuracies;
    then the runs grouped over population seeds (configs equal but for population.seed and fields that change no
    result): per test accuracy n, mean, std, min, max and the 95% t-interval (docs/analysis.md, "merge")."""
    both = _each(files, _merge_row)
    data = reports.merge([row for row, _ in both])
    groups = sweep.group([rec for _, rec in both])
    if as_json:
        keep = ("differing_keys", "keys_not_in_every_file", "runs")
        click.echo(json.dumps(tables.jsonable({**{k: data[k] for k in keep}, "over_seeds": sweep.jsonable(groups)}),
                              indent=1, allow_nan=False))
    elif as_csv:
        click.echo(tables.csv_text(*(sweep.table(groups) if over_seeds else (data["headers"], data["rows"]))))
    else:
        if not over_seeds:
            click.echo(tables.markdown(data["headers"], data["rows"]))
            if data["keys_not_in_every_file"]:
                click.echo(f"\nconfig keys not in every file (files from different package versions; not compared): "
                           f"{', '.join(data['keys_not_in_every_file'])}")
        if over_seeds or any(len(grp["paths"]) > 1 for grp in groups["groups"]):
            click.echo(("" if over_seeds else "\n") + render.over_seeds(groups))


# ------------------------------------------------------------------------------------------ compare

@cli.command()
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@json_option
def compare(a, b, as_json):
    """Whether two files hold the same results (every dataset but timing and provenance), and where not.

    For runs that should agree: another rank count, a restart, the other backend. Exit 0 when they are
    equal, 1 when they differ (as cmp does), 2 when a file cannot be read.
    """
    try:
        for path in (a, b):
            with runfile.open_results(path):
                pass
        data = reports.compare(a, b)
    except (ResultsError, ValueError, OSError) as e:
        _fail(e)
    _emit(data, as_json, render.compare)
    if data["differing"] or data["only_in_one"]:
        raise click.exceptions.Exit(1)


# ----------------------------------------------------------------------------------------------- es

@cli.command("es")
@files_arg
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="The RandOpt vote's K.")
@click.option("--tolerance", type=Finite(0, 1), default=0.05, show_default=True,
              help="A RandOpt run matches an ES point when their train tokens differ by at most this share.")
@click.option("--out", "out_dir", metavar="DIR", callback=out_dir,
              help="Also write es-vs-randopt.png into DIR (created).")
@click.option("--dpi", type=DPI, default=100, show_default=True)
@json_option
def es_command(files, k, tolerance, out_dir, dpi, as_json):
    """RandOpt against ES at equal generated train tokens: RandOpt runs of growing N (their top-K vote) and ES runs
    (θ_t after each iteration), paired by population.seed; a table per seed and the means (docs/es.md)."""
    from tools import escompare as C

    try:
        data = C.compare(_each(files, C.read, k, algorithms=("randopt", "es")), k, tolerance)
        data["plots"] = C.plot(data, out_dir, dpi) if out_dir else []
    except (ResultsError, OSError) as e:
        _fail(e)
    _emit(data, as_json, C.render)


# --------------------------------------------------------------------------------------------- plot

def _sweep_data(files, band: str) -> dict:
    """What plots.write_sweeps draws from several files (one task, one model)."""
    records = _each(files, sweep.record, True)
    try:
        sweep.check_plottable(records)
    except ResultsError as e:
        _fail(e)
    g = sweep.group(records)
    return {"title": sweep.describe(records), "band": band, "groups": g, "kcurves": sweep.overlay(g),
            "nscale": sweep.sweep(g, sweep.SIZE), "sigma": sweep.sweep(g, sweep.SIGMAS)}


@cli.command()
@files_arg
@click.option("--out", "out_dir", required=True, metavar="DIR", callback=out_dir,
              help="Folder for the PNGs (created).")
@click.option("--samples-from", "more", multiple=True, metavar="FILE",
              help="One FILE only: another run's results on the same test set (e.g. another "
                   "generation.temperature): its base pass@k joins passk.png. Repeatable.")
@click.option("--band", type=click.Choice(["range", "ci"]), default="range", show_default=True,
              help="Several files: the band around the mean over seeds, min–max or the 95% t-interval.")
@click.option("--dpi", type=DPI, default=100, show_default=True)
@json_option
def plot(files, out_dir, more, band, dpi, as_json):
    """PNGs. One file: train-score histogram, K-curve, σ box plots, density with its interval band, and (with base
    samples) passk.png: base pass@k and TT-MV against each ensemble's coverage and vote, the limit-of-RLVR figure.

    Several files (one task, one model; grouped over population seeds as in merge): nscale.png (test accuracy
    against N on a log2 axis) when they differ in population.size, sigma.png (against the σ set) when they
    differ in population.sigmas, and kcurves.png (each group's K-curve overlaid). Lines: mean over seeds,
    band min–max (--band ci: the 95% t-interval), dots: each seed. Titles: model, task, N, σ and seeds.
    """
    if len(files) > 1:
        if more:
            _fail(ResultsError("--samples-from goes with one FILE (several files make the sweep figures)"))
        _write_plots("write_sweeps", _sweep_data(files, band), out_dir, dpi, as_json)
        return
    file = files[0]
    try:
        extra = []
        for other in more:
            with runfile.open_results(other) as g:
                extra.append(reports.passk(g, other))
        with runfile.open_results(file) as f:
            ids = runfile.strings(f, "data/test_ids").tolist()
            for other in more:
                with runfile.open_results(other) as g:
                    if runfile.strings(g, "data/test_ids").tolist() != ids:
                        raise ResultsError(f"{other}: not the test set of {file} (data/test_ids differ)")
            scores, base = runfile.train_scores(f, file)
            data = {"title": runfile.title(f, file), "scores": scores, "base": base,
                    "sigmas": f["population/sigma"][()], "kcurve": reports.kcurve(f, file),
                    # δ(m) on train accuracy per σ at every candidate's margin: the step curves are exact.
                    "density": reports.density(f, file, None, exact=True),
                    "passk": reports.passk(f, file), "passk_more": extra}
    except (ResultsError, ValueError, OSError) as e:
        _fail(e)
    _write_plots("write_all", data, out_dir, dpi, as_json)


def _write_plots(writer: str, data, out_dir: str, dpi: int, as_json: bool) -> None:
    from tools import plots  # matplotlib only here: every other command works without it

    try:
        os.makedirs(out_dir, exist_ok=True)
        paths = getattr(plots, writer)(data, out_dir, dpi)
    except OSError as e:
        _fail(e)
    click.echo(json.dumps(paths) if as_json else "\n".join(paths))


def main() -> None:
    # Every error one line `analyze: error: ...`, exit 2, so scripts can grep it (randopt_hpc.cli.Group).
    cli(prog_name=PROG)


if __name__ == "__main__":
    main()
