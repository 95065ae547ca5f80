"""`python -S -m tracer.boot record ...`: the recorder as the initramfs starts it.

The dracut module's start script runs this instead of the `footprint` command: the same
recorder (tracer.recorder) with the options the start script passes, parsed by argparse,
so early boot imports neither click nor importlib.metadata (the entry-point lookup reads
every installed distribution's metadata: ~0.1 s here, about ten times that under TCG) and
the initramfs needs none of their files. Errors are one line and exit 2 as everywhere.
"""

from __future__ import annotations

import argparse
import sys

from .errors import EX_SOFTWARE, EXIT_USAGE, FootprintError
from .safe import inert


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage errors raise (one line, our exit status) instead of printing usage."""

    def error(self, message):
        raise _Usage(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="footprint-boot", add_help=False)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("record", add_help=False)
    r.add_argument("-o", "--output", required=True)
    r.add_argument("--interval", type=float, default=1.0)
    r.add_argument("--slab", choices=("off", "kmalloc", "all"), default="kmalloc")
    r.add_argument("--marks", default="/run/footprint/marks")
    r.add_argument("--stop-file", default=None)
    r.add_argument("--loader", choices=("auto", "libbpf", "bcc"), default="auto")
    r.add_argument("--baseline", choices=("auto", "kernel", "walk", "none"), default="auto")
    r.add_argument("--pin", action="store_true")
    r.add_argument("--ready-file", default=None)
    r.add_argument("--ns", default=None, metavar="ROOT")
    return p


def main(argv: list[str] | None = None) -> int:
    """Record as `footprint record` would with these options; returns the exit status."""
    import time

    up = time.clock_gettime(time.CLOCK_BOOTTIME)  # python's first line (the break-down)
    try:
        args = _parser().parse_args(argv)
    except _Usage as err:
        return _die(f"{err}: the dracut module's start script passes these options", EXIT_USAGE)
    _own_session_and_root(args.ns)
    from .procfs import no_huge_pages

    no_huge_pages()  # first: the kallsyms peak below is released later (tracer.procfs)
    # /proc/kallsyms read while the recorder is imported, and parsed while its programs
    # load, not after (the boot waits for the recorder: footprint-start.sh); not parsed
    # during the imports, which it would slow down (it holds the GIL through its splits)
    from . import symbols

    symbols.prefetch(parse_later=True)
    from . import recorder

    symbols.parse_prefetched()

    if args.ready_file:  # started by footprint-start: the attach time's break-down
        sys.stderr.write(f"footprint: {_started(up)}\n")

    if not (args.interval > 0.0 and args.interval < 1e6):
        return _die(f"--interval {args.interval} is not a number of seconds above 0", EXIT_USAGE)
    try:
        reason = recorder.record(recorder.Options(
            output=args.output, interval=args.interval, slab=args.slab, marks=args.marks,
            stop_file=args.stop_file, loader=args.loader, baseline=args.baseline,
            inventory=args.baseline != "none", pin=args.pin, ready_file=args.ready_file,
            # One kernel walk, after attaching (the inventory): the table of files is
            # sized by the in-core inodes (an initramfs has a few hundred files cached,
            # under the table's floor), not by a walk of its own (~1 s under TCG).
            presize_files=False,
            # The exec into the sampler sheds bcc and LLVM, which early boot never loads
            # (libbpf: the initramfs has no compiler); the start script already named this
            # process @footprint. Staying saves a second python start (~1-3 s under TCG).
            exec=False))
    except FootprintError as err:
        return _die(str(err), err.status)
    except KeyboardInterrupt:
        return _die("interrupted", 130)
    except MemoryError:
        return _die("out of memory while recording", EX_SOFTWARE)
    except Exception as err:  # noqa: BLE001 - the last resort: a bug of ours, one line
        return _die(f"internal error in the recorder ({type(err).__name__}: "
                    f"{inert(str(err))[:200]}): please report this bug", EX_SOFTWARE)
    sys.stderr.write(f"footprint: recording {args.output} written ({reason})\n")
    return 0


def _own_session_and_root(root: str | None) -> None:
    """A session of its own (as setsid(1) gave it: nothing sent to the start script's
    process group reaches the recorder) and, with --ns ROOT, its own mount namespace and
    root (tracer/bootns.py). A namespace that cannot be made is one line in the log and
    the recording goes on from the initramfs's root (it then loses /proc at switch_root,
    as with rd.footprint.ns=0)."""
    import os

    try:
        os.setsid()
    except OSError:  # already a process group leader
        pass
    if root is None:
        return
    from . import bootns

    try:
        bootns.enter(root)
    except Exception as err:  # noqa: BLE001 - tracing goes on without it, said in one line
        why = getattr(err, "strerror", None) or f"{type(err).__name__}: {err}"
        sys.stderr.write(f"footprint: no namespace of its own ({inert(why)[:200]}): "
                         "recording from the initramfs's root\n")


def _started(up: float) -> str:
    """When python started and when the recorder's imports were done (boottime seconds),
    for the attach time's break-down in recorder.log (footprint-start reports its last
    line when the recorder fails)."""
    import os
    import time

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # starttime (field 22)
        started = f"{ticks / os.sysconf('SC_CLK_TCK'):.2f}"
    except (OSError, ValueError, IndexError):
        started = "?"
    return (f"python started at {started} s, up at {up:.2f} s, recorder imported at "
            f"{time.clock_gettime(time.CLOCK_BOOTTIME):.2f} s")


def _die(message: str, status: int) -> int:
    sys.stderr.write(f"footprint: {message}\n")
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
