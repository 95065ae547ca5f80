"""footprint: where a booted Linux system's memory went, per subsystem and storage layer."""

__version__ = "0.1.0"


def _early_signal(signum, frame):
    """Ctrl-C, SIGTERM or SIGHUP while the CLI is still being imported (click and the
    commands take a fraction of a second, more under load): one line and exit status
    130, not a traceback from inside an import. Once the CLI is loaded, the default:
    KeyboardInterrupt for SIGINT (the CLI turns it into one line), else the signal's
    default action."""
    import os
    import signal
    import sys

    cli = sys.modules.get("tracer.cli")
    loading = cli is None or getattr(getattr(cli, "__spec__", None), "_initializing", False)
    if loading:
        what = " before anything was recorded" if "record" in sys.argv[1:] else ""
        sys.stderr.write(f"footprint: interrupted{what}\n")
        sys.stderr.flush()
        raise SystemExit(130)
    if signum == signal.SIGINT:
        signal.signal(signum, signal.default_int_handler)
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def guard_cli_start() -> None:
    """Install _early_signal for the signals still at their defaults (an ignored one, as
    under nohup, stays ignored). Called by the `footprint` command before it imports
    the CLI; not by anything that merely imports this package."""
    import signal

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(s, _early_signal)


def _started_as_footprint() -> bool:
    import os
    import sys

    return bool(sys.argv) and os.path.basename(sys.argv[0] or "") == "footprint"


if _started_as_footprint():  # the console script: `from tracer.cli import main` comes next
    guard_cli_start()
