"""The `footprint` command."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import EXIT_USAGE, FootprintError


class _Group(click.Group):
    """Turns every FootprintError (and Ctrl-C) into one line and exit status 2."""

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
