"""The project's click commands (launch, status, tools.analyze) report errors one way: a usage error is
one line `NAME: error: ...` on stderr with exit status 2, like a config error, instead of click's usage
block; an unknown option lists the valid ones; a group's unknown command lists its commands.

Use `@click.command(cls=Command, error_name="randopt_hpc.launch")` (or `Group`); the command raises
`SystemExit(fail(...))` for its own errors.
"""
from __future__ import annotations

import math
import os
import sys

import click


def fail(name: str, message: str) -> int:
    click.echo(f"{name}: error: {' '.join(str(message).split())}", err=True)
    return 2


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


class _OneLineErrors:
    def __init__(self, *args, error_name: str = "randopt_hpc", **kwargs):
        super().__init__(*args, **kwargs)
        self.error_name = error_name

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help(), err=True)     # a bare group asks nothing wrong: show its help
            code = 2
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

    def _hint(self, e: click.UsageError) -> str:
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
