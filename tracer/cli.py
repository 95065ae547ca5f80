"""The `footprint` command."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import EXIT_USAGE, FootprintError


class _Group(click.Group):
    """Turns every FootprintError, usage error (and Ctrl-C) into one line; exit status 2."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.UsageError as err:
            cmd = err.ctx.command_path if err.ctx else "footprint"
            click.echo(f"footprint: {err.format_message().rstrip('.')}: see `{cmd} --help`", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as err:
            click.echo(f"footprint: {err.format_message()}", err=True)
            sys.exit(EXIT_USAGE)
        except click.Abort:
            click.echo("footprint: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FootprintError as err:
            click.echo(f"footprint: {err}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("footprint: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="footprint")
def main() -> None:
    """Where did the memory go? An eBPF account of a booted system's memory,
    per subsystem and per storage layer (squashfs, device-mapper, loop, page caches)."""


def _register_commands() -> None:
    # Each command module adds itself to `main`; imported lazily so that a missing
    # optional dependency (bcc, QEMU) only fails the command that needs it.
    from . import commands  # noqa: F401


_register_commands()
