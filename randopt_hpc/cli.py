"""The project's click commands (launch, status, tools.analyze) report errors one way: a usage error is
one line `NAME: error: ...` on stderr with exit status 2, like a config error, instead of click's usage
block; an unknown option lists the valid ones; a group's unknown command lists its commands.

Use `@click.command(cls=Command, error_name="randopt_hpc.launch")` (or `Group`); the command raises
`SystemExit(fail(...))` for its own errors.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import click

from randopt_hpc.atomic import folder_problem


def fail(name: str, message: str) -> int:
    click.echo(f"{name}: error: {' '.join(str(message).split())}", err=True)
    return 2


def foreign_number(args) -> str | None:
    """int() and float() read any script's digits ('٣' is 3): a number on a command line is written with 0-9, as
    in a config. The complaint about the first argument that is not, or None."""
    for arg in args:
        value = arg.partition("=")[2] if arg.startswith("--") else arg
        if not value.isascii():
            try:
                float(value)
            except ValueError:
                continue
            return f"{arg!r}: a number with digits other than 0-9"
    return None


class _Plain(click.UsageError):
    """A usage error about the arguments themselves: no hint about options or commands."""


class Finite(click.FloatRange):
    """click's FloatRange lets nan past every bound (each comparison with nan is false): this one also
    refuses nan and ±inf."""
    name = "finite float range"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


def threads_option(help: str):
    """--threads, at most this machine's CPUs: OpenMP aborts the process when it cannot start its pool."""
    cpus = os.cpu_count() or 1
    return click.option("--threads", type=click.IntRange(1, cpus), default=1, show_default=True,
                        help=f"{help} (at most this machine's {cpus} CPUs)")


DPI = click.IntRange(10, 1200)     # beyond it a figure's pixels run to gigabytes


def listed(convert, what: str, low=None, choices=(), high=None):
    """A click callback for a comma-separated option: each value converted (finite), in [low, high], one of
    `choices`."""
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            vals = [convert(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            vals = []
        if not vals or not all(math.isfinite(v) for v in vals if isinstance(v, float)) or \
                (low is not None and min(vals) < low) or (high is not None and max(vals) > high) or \
                (choices and set(vals) - set(choices)):
            raise click.BadParameter(f"expected comma-separated {what}, got {value!r}")
        return vals
    return parse


def out_dir(ctx, param, value):
    """--out: a folder that can be made (or filled) here, checked before any work."""
    problem = None if value is None else folder_problem(value)
    if problem:
        raise click.BadParameter(f"{value!r}: {problem}" if not value else f"{value}: {problem}")
    return value


# ---------------------------------------------------------------- argparse scripts (tools/, bench/)
class ArgParser(argparse.ArgumentParser):
    """argparse for the scripts under tools/ and bench/, with the project's usage errors: one line
    `PROG: error: ...` on stderr and exit status 2, not argparse's usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")

    def parse_known_args(self, args=None, namespace=None):
        foreign = foreign_number(sys.argv[1:] if args is None else args)
        if foreign:
            self.error(foreign)
        return super().parse_known_args(args, namespace)


def integer(lo: int | None = None, hi: int | None = None):
    """An argparse type: an integer within [lo, hi] (either bound may be open)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is not in [{'-inf' if lo is None else lo}, "
                                             f"{'inf' if hi is None else hi}]")
        return v
    parse.__name__ = "integer"
    return parse


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """An argparse type: a finite float within [lo, hi] ((lo, hi] with lo_open)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        low_bad = lo is not None and (v <= lo if lo_open else v < lo)
        if not math.isfinite(v) or low_bad or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number in {'(' if lo_open else '['}"
                                             f"{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]")
        return v
    parse.__name__ = "number"
    return parse


def cpu_threads(text: str) -> int:
    """An argparse type: a thread count, at most this machine's CPUs."""
    return integer(1, os.cpu_count() or 1)(text)


def new_folder(text: str) -> str:
    """An argparse type: a folder the script may create or fill (folder_problem)."""
    problem = folder_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return text


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


class _OneLineErrors:
    def __init__(self, *args, error_name: str = "randopt_hpc", **kwargs):
        super().__init__(*args, **kwargs)
        self.error_name = error_name

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.NoArgsIsHelpError as e:   # a bare group: what is missing, and what it takes
            listed = f" (commands: {', '.join(self.list_commands(e.ctx))})" if isinstance(self, click.Group) else ""
            code = fail(self.error_name, f"missing command{listed}; see {e.ctx.command_path} --help")
        except click.UsageError as e:
            hint = self._hint(e)
            message = e.format_message()
            code = fail(self.error_name, (message.rstrip(".") if hint.startswith(";") else message) + hint)
        except click.ClickException as e:
            code = fail(self.error_name, e.format_message())
        except click.Abort:
            click.echo("Aborted!", err=True)
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code

    def parse_args(self, ctx, args):
        foreign = foreign_number(args)
        if foreign:
            raise _Plain(foreign, ctx)
        return super().parse_args(ctx, args)

    def _hint(self, e: click.UsageError) -> str:
        if isinstance(e, _Plain):
            return ""
        here = e.ctx.command if e.ctx else self
        if isinstance(e, click.NoSuchOption):
            valid = sorted(o for p in here.params for o in p.opts if o.startswith("--"))
            e.possibilities = None            # the full list replaces click's guesses
            return f"; valid options: {', '.join(valid)}"
        if isinstance(self, click.Group):
            if here is self:
                return f" (commands: {', '.join(self.list_commands(e.ctx))})"
            return f" (see {e.ctx.command_path} --help)"
        return ""


class Command(_OneLineErrors, click.Command):
    pass


class Group(_OneLineErrors, click.Group):
    pass
