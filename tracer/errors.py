"""One error type for everything a user can fix.

The CLI prints its message as one line and exits with status 2, no traceback. A message
names the problem and the fix: "recording is truncated: re-record it".
"""

import signal

EXIT_USAGE = 2
EX_SOFTWARE = 70  # sysexits.h: an internal error (a bug of ours), told apart from bad input


class FootprintError(Exception):
    """A problem the user can fix; the message says how. `status` is the exit status."""

    status = EXIT_USAGE


class Interrupted(FootprintError):
    """A signal ended the command before it had anything to show (exit 130, as a shell
    reports SIGINT)."""

    status = 130


# The signals that stop a recording (its last sample is taken), or, before it started,
# end it with Interrupted. Blocked across the exec into the sampler, whose handlers take
# one that came meanwhile as soon as they are installed.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def require_root(what: str) -> None:
    """Raise the one-line error for `what` unless the effective user is root (loading BPF
    programs needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN before 5.8)."""
    import os

    if os.geteuid() != 0:
        raise FootprintError(f"{what} needs root: run it as root (sudo footprint ...)")
