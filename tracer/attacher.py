"""Attaching the program, and the exec into the lean sampler that keeps it attached.

The program is loaded by tracer/programs.py with the stop signals blocked (libbpf reports
through a ctypes callback, where a Python exception is swallowed). What keeps it attached
across the exec is a set of fds (BPF links, or bcc's perf events), made inheritable: the
kernel keeps a program attached while one of them is open, in the same pid after execve.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict, dataclass, field

from . import loader, programs
from .bpfmaps import Maps
from .errors import STOP_SIGNALS
from .mapsampler import STAT_NAMES
from .procfs import boottime, tracer_files


@dataclass
class Attached:
    """The loaded, attached program and its fds."""

    plan: loader.Plan
    program: object  # programs.LibbpfProgram or programs.BccProgram
    t0: float  # boottime when loading began (the header's "attached")
    seconds: float  # how long loading and attaching took
    map_fds: dict[str, int] = field(default_factory=dict)
    attach_fds: list[int] = field(default_factory=list)  # each keeps a program attached
    prog_fds: dict[str, int] = field(default_factory=dict)

    def header(self, options: dict) -> dict:
        """The recording's header: the plan as loaded, the options that shape the
        recording, the tracer's pid and files, the names of the kernel's counters."""
        plan = self.plan
        return {
            "plan": {
                "probes": plan.probes(),
                "loader": plan.loader,
                "btf_events": [list(ev) for ev in plan.btf_events],  # the rest: tracepoints
                "btf_fallback": plan.btf_fallback,
                "headers": plan.headers.describe(),
                "headers_match_kernel": plan.headers.matches_kernel,
                "max_pfn": plan.max_pfn,
                "map_sizes": asdict(plan.sizes),
                "slab": plan.slab,
                "attach_seconds": round(self.seconds, 3),
            },
            "attached": self.t0,
            "options": options,
            "tracer": {"pid": os.getpid(), "files": tracer_files()},
            "stat_names": list(STAT_NAMES),
        }

    def summary(self) -> str:
        """One log line: what was attached, how fast, with which headers."""
        plan = self.plan
        n_btf = len(plan.btf_events)
        return (f"attached {len(plan.tracepoints)} tracepoints"
                + (f" ({n_btf} as tp_btf)" if n_btf else "")
                + (f" and kprobes {', '.join(plan.kprobes)}" if plan.kprobes else "")
                + f" in {self.seconds:.1f} s; headers: {plan.headers.describe()}")


def _unstoppable(fn, *args):
    """fn(*args) with the stop signals blocked: one that comes meanwhile waits for its end."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return fn(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def attach(plan: loader.Plan, pin_as: str | None = None) -> Attached:
    """Load and attach by `plan`; pinned in bpffs (tracer/pinned.py) for recording
    `pin_as` when given (the caller checked pinned.check_free() before)."""
    t0 = boottime()
    # libbpf reports through a Python callback (tracer/libbpf.py): a stop signal
    # handled inside it would raise there, where ctypes swallows the exception, and
    # the disarmed handler would never stop us. Blocked, it waits for the load's end.
    program = _unstoppable(programs.Program, plan)
    out = Attached(plan, program, t0, boottime() - t0)
    out.map_fds = {name: program[name].map_fd for name in Maps.NAMES}
    for name in Maps.OPTIONAL:
        try:
            out.map_fds[name] = program[name].map_fd
        except KeyError:  # its tracepoint is absent here: the map was not compiled
            pass
    out.attach_fds = program.attach_fds()
    out.prog_fds = program.prog_fds()
    if pin_as is not None:
        from . import pinned

        _unstoppable(pinned.pin, program, pin_as, sorted(out.map_fds))
    return out


def exec_sampler(state: dict, fds: list[int]) -> OSError:
    """Exec into the lean sampler with `fds` inherited and `state` in its environment
    (FOOTPRINT_SAMPLER); returns only if the exec failed, with why."""
    for fd in fds:
        os.set_inheritable(fd, True)
    env = dict(os.environ, FOOTPRINT_SAMPLER=json.dumps(state))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # sys.executable is empty when our own argv[0] was "@footprint" (early boot).
        python = sys.executable or os.readlink("/proc/self/exe")
        os.execve(python, sampler_argv(), env)
    except OSError as err:
        return err
    raise AssertionError("execve returned")  # never: it replaces the process or raises


# Run as argv[0] "@footprint", python cannot tell which venv (if any) it belongs to: it
# falls back to the base interpreter's prefix, whose site-packages may not hold this
# package (a venv, an editable install, a checkout run from elsewhere). So the sampler is
# told where its package is: the directory this `tracer` was imported from goes first on
# its sys.path, and it imports the same code as the recorder that attached.
_SAMPLER_CODE = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                 "from tracer.sampler import main; sys.exit(main())")


def sampler_argv() -> list[str]:
    """argv of the lean sampler: '@footprint' (spared at switch_root), -S (it imports
    nothing from site-packages: the site module and .pth files cost it ~1.7 MB), python
    code that puts this package's parent directory on sys.path, and that directory."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return ["@footprint", "-S", "-c", _SAMPLER_CODE, package_parent]
