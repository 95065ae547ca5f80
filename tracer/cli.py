"""The `footprint` command."""

from __future__ import annotations

import sys

import click

from . import __version__
# Up front: the last resort must not need a file (the package may be unreadable by then,
# e.g. after a privilege drop).
from .safe import inert
from .errors import EX_SOFTWARE, EXIT_USAGE, FootprintError


class _Group(click.Group):
    """Every way out is one line on stderr: bad input or a usage error (exit 2), Ctrl-C
    (130), and, as a last resort, an error of footprint's own (70). Never a traceback."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.UsageError as err:
            cmd = err.ctx.command_path if err.ctx else "footprint"
            _die(f"{err.format_message().rstrip('.')}: see `{cmd} --help`", EXIT_USAGE)
        except click.ClickException as err:
            _die(err.format_message(), EXIT_USAGE)
        except (click.Abort, KeyboardInterrupt):
            _die("interrupted", 130)
        except FootprintError as err:
            _die(str(err), err.status)
        except BrokenPipeError:  # `footprint report | head`: the reader has what it wanted
            _quiet_stdout()
            sys.exit(0)
        except MemoryError:
            _die("out of memory: give footprint more memory, or a smaller recording", EX_SOFTWARE)
        except Exception as err:  # noqa: BLE001 - the last resort: a bug of ours
            cmd = " ".join(["footprint", *(a for a in (args or sys.argv[1:])[:1] if not a.startswith("-"))])
            _die(f"internal error in `{cmd}` ({type(err).__name__}: {_one_line(err)}): "
                 "please report this bug", EX_SOFTWARE)
        sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(err: BaseException) -> str:
    return inert(str(err))[:200]


def _die(message: str, status: int):
    try:
        click.echo(f"footprint: {message}", err=True)
    except OSError:
        pass
    _quiet_stdout()
    sys.exit(status)


def _quiet_stdout() -> None:
    """Nothing more to say: a closed stdout must not raise again when Python flushes it."""
    import os

    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="footprint")
def main() -> None:
    """Where did the memory go? An eBPF account of a booted system's memory,
    per subsystem and per storage layer (squashfs, device-mapper, loop, page caches)."""


def _register_commands() -> None:
    """footprint's own commands, then those other packages add through the
    "footprint.commands" entry point (the lab's `experiment`). Each command imports what
    it needs when it runs, so a missing optional dependency fails only that command; so
    does an entry point that does not load."""
    from importlib.metadata import entry_points

    from .commands import group

    for cmd in group.commands.values():
        main.add_command(cmd)
    for ep in entry_points(group="footprint.commands"):
        try:
            cmd = ep.load()
        except Exception as err:  # noqa: BLE001 - another package's bug: that command says so
            cmd = _unloadable(ep, err)
        main.add_command(cmd, ep.name)


def _unloadable(ep, err: Exception) -> click.Command:
    def fail():
        raise FootprintError(f"`footprint {ep.name}` could not be loaded from {ep.value} "
                             f"({type(err).__name__}: {_one_line(err)}): reinstall what provides it")

    return click.Command(ep.name, callback=fail, help=f"(could not be loaded from {ep.value})",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


_register_commands()
