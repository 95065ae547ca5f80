"""`footprint record`: attach, take the baseline, then sample the in-kernel account.

The BPF program keeps the live state; this loop only copies the counters that changed
into the recording, once per interval, together with /proc/meminfo, slab and vmalloc
totals, uevents (re-reading the topology when a block device appears or changes) and
phase marks. Every record is flushed as written: a killed recorder leaves a readable,
partial recording.

`Recorder` owns the writer and the loop; each job is a unit of its own that returns
records: tracer/attacher.py loads, attaches and execs the sampler, tracer/attach_baseline.py takes the
baseline, tracer/mapsampler.py reads and diffs the maps, tracer/symbolizer.py names
stacks and call sites, tracer/following.py follows the topology and names files.

Long because the set-up, the hand-off to the sampler and the loop share one Recorder's
state (the writer, the fds, the marks' lock), and each step is a few lines of it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable

from . import attach_baseline, errors, libbpf, marks, slabfilter
from .bpfmaps import Maps
from .errors import STOP_SIGNALS, FootprintError, require_root
from .following import TopologyFollower
from .mapsampler import STAT_NAMES, MapSampler
from .shmemsampler import ShmemSampler
from .procfs import boottime, no_huge_pages, release_memory, tracer_files
from .symbolizer import Symbolizer
from .writer import Writer

__all__ = ["Options", "Recorder", "Interrupted", "STOP_SIGNALS", "STAT_NAMES", "record",
           "sample_main", "tracer_files"]

DEFAULT_MARKS = "/run/footprint/marks"


class _Stop(BaseException):  # not an Exception: no `except Exception` may swallow it
    pass


class Interrupted(errors.Interrupted):
    """A signal came before the recording was started: nothing was recorded (a file
    this recorder created is removed again; one that was there is left untouched)."""


class Options:
    """What `footprint record` was asked for (its command-line options). A plain class,
    not a dataclass: the resident sampler imports this module (see tests/test_structure.py
    on the sampler's imports)."""

    def __init__(self, output: str, duration: float | None = None, interval: float = 1.0,
                 inventory: bool = True, inventory_seconds: float = 10.0, baseline: str = "auto",
                 marks: str | None = DEFAULT_MARKS, stop_file: str | None = None,
                 slab: str = "kmalloc", kernel_headers: str | None = None, loader: str = "auto",
                 programs: str = "auto", sizes: "MapSizes | None" = None, exec: bool = True,
                 pin: bool = False, presize_files: bool = True, ready_file: str | None = None):
        self.output = output
        self.duration = duration
        self.interval = interval
        self.inventory = inventory
        self.inventory_seconds = inventory_seconds  # the walk's time budget (it says what it skipped)
        self.baseline = baseline  # kernel | walk | none | auto (kernel where it runs, else walk)
        self.marks = marks
        self.stop_file = stop_file  # recording ends when this file appears
        self.slab = slab
        self.kernel_headers = kernel_headers
        self.loader = loader  # auto | libbpf | bcc (loader.choose_loader)
        self.programs = programs  # auto | tp_btf | tracepoint (progkinds.plan_program_kinds)
        self.sizes = sizes  # loader.MapSizes
        self.exec = exec  # hand off to the lean sampler after attaching
        self.pin = pin  # pin links and maps in bpffs: the account outlives the recorder
        self.presize_files = presize_files  # a kernel walk sizes the files table (else the guess)
        self.ready_file = ready_file  # created once attached and following devices (_at)


class Recorder:
    """One recording: attach (or resume as the sampler after the exec), the baseline,
    then a sample every interval until the duration, a signal or the stop file."""

    def __init__(self, opts: Options, log: Callable[[str], None] = lambda m: None):
        self.opts = opts
        self.log = log
        self.writer: Writer | None = None
        self.plan = None  # loader.Plan, in the process that attached
        self.program = None  # programs.Program, in the process that attached
        self.attached = 0.0  # boottime of the attach
        self.map_fds: dict[str, int] = {}
        self.attach_fds: list[int] = []  # each keeps a program attached
        self.prog_fds: dict[str, int] = {}
        self.maps: Maps | None = None
        self.sampler: MapSampler | None = None  # once the maps are known (use_maps)
        self.symbols = Symbolizer()
        self.shmem = ShmemSampler(log, on=opts.baseline in ("auto", "kernel"))
        self.follow = TopologyFollower(log)
        self.unnamed_baseline: dict[str, int] = {}  # "dev:ino" → pages, for name_top_files
        self.marks_fd: int | None = None  # the marks file, held (shared lock) while recording
        self.marks_pos = 0

    def use_maps(self, map_fds: dict[str, int], prog_fds: dict[str, int],
                 own_process: bool = True) -> None:
        """Read the account from these maps (and programs' fds, for lost events) from now
        on; `own_process` False for a reader that is not the tracer (a snapshot)."""
        self.map_fds, self.prog_fds = map_fds, prog_fds
        self.maps = Maps(map_fds)
        self.sampler = MapSampler(self.maps, prog_fds, own_process=own_process)

    # -- set-up ------------------------------------------------------------------
    def attach(self) -> None:
        """Claim the output, load and attach the program (libbpf or bcc), write the
        header; the maps are read by fd."""
        require_root("footprint record")
        # The loader's side is imported here: the sampler exec'd after the attach never
        # needs it (its modules and dataclasses would stay in its memory).
        from . import attacher, loader

        opts = self.opts
        if opts.pin:  # one line before anything is claimed or loaded
            from .pinned import check_free

            check_free()
        # Claimed (locked, not yet truncated) first: a second recorder on the same file
        # is refused before it compiles anything, and the first one's file is untouched.
        self.writer = Writer(opts.output)
        files_now = attach_baseline.files_with_pages(
            opts.baseline, bool(opts.sizes and opts.sizes.files) or not opts.presize_files)
        self.plan = loader.plan(sizes=opts.sizes, kernel_headers=opts.kernel_headers, slab=opts.slab,
                                loader=opts.loader, files_now=files_now, programs=opts.programs)
        self._at("planned")
        done = attacher.attach(self.plan, pin_as=opts.output if opts.pin else None)
        self.program, self.attached = done.program, done.t0
        self.attach_fds = done.attach_fds
        self.use_maps(done.map_fds, done.prog_fds)
        self._hold_marks()
        self.writer.start(done.header({"interval": opts.interval, "inventory": opts.inventory,
                                       "baseline": opts.baseline}))
        self.log(done.summary())

    def _hold_marks(self) -> None:
        """Take the marks file (created if absent, shared lock: "a recording is running")
        and its size now: marks are read from there on, older ones are not replayed."""
        if not self.opts.marks:
            return
        try:
            self.marks_fd, self.marks_pos = marks.hold(self.opts.marks)
        except (FootprintError, OSError) as err:  # record without marks, and say so
            self.log(f"marks not followed: {getattr(err, 'strerror', None) or err}")

    def handoff(self) -> None:
        """Exec into the lean sampler: same pid, the maps and the perf-event fds that keep
        the programs attached are inherited; bcc, LLVM and clang leave memory. argv[0]
        starts with '@' so that systemd spares the process at switch_root
        (ROOT_STORAGE_DAEMONS). The recording goes over as its open fd, still locked.
        Returns only if exec failed (then sampling goes on here)."""
        # From here until the sampler's handlers are in place a signal waits (pending,
        # inherited across exec) instead of landing in the sampler's imports. A signal
        # already caught but not yet handled is raised by this call, before anything
        # was handed over.
        from .attacher import exec_sampler

        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        fds = list(self.map_fds.values()) + self.attach_fds + list(self.prog_fds.values())
        if self.marks_fd is not None:
            fds.append(self.marks_fd)  # and its lock with it
        output_fd = self.writer.detach()
        state = {"opts": {k: v for k, v in vars(self.opts).items() if k not in ("sizes", "pin")},
                 "map_fds": self.map_fds, "attach_fds": self.attach_fds,
                 "prog_fds": self.prog_fds, "output_fd": output_fd,
                 "marks_fd": self.marks_fd, "marks_pos": self.marks_pos,
                 "attached": self.attached, "log_prefix": "footprint",
                 "unnamed_baseline": self.unnamed_baseline}
        err = exec_sampler(state, fds)
        self.log(f"staying in-process (exec of the sampler failed: {err.strerror})")
        self.writer = Writer.append(self.opts.output, fd=output_fd)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a pending one: now

    @classmethod
    def resume(cls, state: dict, log: Callable[[str], None]) -> "Recorder":
        """The sampler side of handoff()."""
        rec = cls(Options(**state["opts"]), log=log)
        rec.attach_fds = state["attach_fds"]
        rec.attached = state["attached"]
        rec.unnamed_baseline = state.get("unnamed_baseline", {})
        rec.use_maps(state["map_fds"], state.get("prog_fds", {}))
        rec.marks_fd = state.get("marks_fd")
        rec.marks_pos = state.get("marks_pos", 0)
        if rec.marks_fd is not None:
            try:
                os.set_inheritable(rec.marks_fd, False)
            except OSError:
                rec.marks_fd = None
        rec.writer = Writer.append(rec.opts.output, fd=state["output_fd"])
        rec.writer.write({"type": "tracer", "t": boottime(), "stage": "sampler",
                          "pid": os.getpid(), "files": tracer_files()})
        return rec

    def begin(self) -> None:
        """What needs no bcc: symbols, topology, uevents, the inventory."""
        self.symbols.load()  # read once: the kernel baseline asks the same copy
        self._at("symbols loaded")
        self._set_slab_filter()
        # No device opened to learn its file system before the kernel baseline has had
        # the chance to name every superblock (blockdev.probe_fstype is a last resort).
        self.write_topology(probe=False)
        self.follow.open_uevents()
        self._at("ready")
        sb_fstypes = self.take_inventory() if self.opts.inventory else None
        self.write_topology(sb_fstypes=sb_fstypes, probe=sb_fstypes is None)
        release_memory()

    def _at(self, what: str) -> None:
        """Early boot (opts.ready_file): log when each step was done (the attach time's
        break-down, in recorder.log); at "ready" (attached, the devices followed) create
        the ready file: footprint-start lets the boot go on then."""
        if not self.opts.ready_file:
            return
        self.log(f"{what} at {boottime():.2f} s")
        if what == "ready":
            try:
                with open(self.opts.ready_file, "w") as f:
                    f.write(f"{boottime():.3f}\n")
            except OSError as err:  # footprint-start then waits for the first sample
                self.log(f"ready file not written: {err.strerror}")

    def _set_slab_filter(self) -> None:
        """--slab kmalloc: from here on the program follows kmalloc objects only from
        modules and the storage stack's built-in code (until now: every one)."""
        if self.opts.slab != "kmalloc" or "slab_filter" not in self.maps.maps:
            return
        try:
            text, ranges = slabfilter.slab_ranges(self.symbols.table)
            self.maps.set_slab_filter(text, ranges, slabfilter.library_ranges(self.symbols.table))
        except OSError as err:
            self.log(f"slab filter not set (every kmalloc object followed): {err.strerror}")

    def _write(self, records) -> None:
        for rec in records:
            if rec is not None:
                self.writer.write(rec)

    def write_topology(self, **how) -> None:
        """Write the topology as read now (topology.read_topology(**how))."""
        self._write([self.follow.topology_record(**how)])

    def take_inventory(self) -> dict | None:
        """Write the baseline (tracer/attach_baseline.py) and keep what the sampler needs;
        returns the superblocks' file system types the kernel walk found, if any."""
        taken = attach_baseline.take(self.maps, self.opts.baseline, self.opts.inventory_seconds,
                                     log=self.log)
        if taken is None:
            return None
        self.follow.named_files = taken.named_files
        self.unnamed_baseline = taken.unnamed_baseline
        self.writer.write(taken.record)
        return taken.superblock_fstypes

    # -- sampling ----------------------------------------------------------------
    def sample(self) -> None:
        """One sample, written (take_sample)."""
        self._write(self.take_sample())

    def take_sample(self) -> list[dict]:
        """One sample's records, read now and not yet written: the names of stacks and
        call sites seen for the first time, the OOM killer's victims since the last
        sample, then the sample itself."""
        return self.records_of(self.sampler.read(also=self.shmem.read))

    def records_of(self, reading) -> list[dict]:
        """A sampler's Reading as records: the new stacks' and call sites' names, the OOM
        victims, then the sample."""
        out = list(self.symbols.records(reading.new_stacks, reading.new_sites))
        for v in reading.oom_victims:
            out.append({"type": "oom", **v})
            self.log(f"OOM killer chose pid {v['pid']} ({v['comm'] or '?'}; "
                     f"{v['trigger']} ran out)")
        return out + [reading.record]

    def name_top_files(self, count: int = 64, seconds: float = 5.0) -> None:
        """Paths for the biggest files the tracer knows only as (dev, ino), found here
        where the files are (a report may be read on another machine)."""
        # Files known only from the kernel baseline (no path, never traced) compete too.
        resident = self.sampler.resident_files() + [(n, k) for k, n in self.unnamed_baseline.items()]
        resident += [(n, k) for k, n in self.shmem.last.items()]
        self._write([self.follow.paths_record(resident, count, seconds)])

    def _release_marks(self) -> None:
        """The recording takes no more marks: close the marks file (and its lock)."""
        if self.marks_fd is not None:
            try:
                os.close(self.marks_fd)
            except OSError:
                pass
            self.marks_fd = None

    def poll_marks(self) -> None:
        """Phase marks appended by `footprint mark NAME` (or a dracut hook) since the last
        poll; a malformed line is skipped (tracer/marks.py says which)."""
        if self.marks_fd is None:
            return
        try:
            lines, self.marks_pos = marks.read(self.marks_fd, self.marks_pos)
        except OSError:
            return
        for t, name in marks.parse(lines):
            self.writer.write({"type": "phase", "t": t, "name": name})

    # -- the loop ------------------------------------------------------------------
    def run(self, stage: str = "attach") -> str:
        """Record until the duration, a signal or the stop file. stage "attach" compiles
        and attaches, then hands off to the sampler (exec) unless opts.exec is False;
        stage "sample" is the sampler's side. Raises Interrupted when a signal came
        before the recording was started."""
        opts = self.opts
        armed = [True]

        def stop(signum, frame):
            # The first signal stops the recording; later ones would cut its last word.
            if armed[0]:
                armed[0] = False
                err = _Stop(signal.Signals(signum).name)
                if libbpf.raise_after_call(frame, err):  # raised once libbpf returns
                    return
                raise err

        old = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
        reason = "stopped"
        try:
            try:
                if stage == "sample":
                    # Blocked by the recorder across the exec: one that came meanwhile
                    # is delivered here, to stop().
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                else:
                    self.attach()
                    if opts.exec:
                        self.handoff()
                self.begin()
                reason = self._loop()
                armed[0] = False
            except _Stop as sig:
                reason = f"signal {sig}"
            # The last word: one more sample so the end state is exact.
            if self.writer is not None and self.writer.started:
                reason = self._last_word(reason)
            else:  # stopped before the header: nothing to show for it
                if self.writer is not None:
                    self.writer.abandon()
                    self.writer = None
                raise Interrupted("interrupted before anything was recorded")
        except BaseException:
            if self.writer is not None and not self.writer.started:
                self.writer.abandon()
                if self.opts.pin and self.program is not None:  # our pins, no recording
                    from . import pinned

                    pinned.unpin(quiet=True)
            raise
        finally:
            armed[0] = False
            self._release_marks()
            self.shmem.close()
            # Ignoring discards a signal still pending (blocked since a hand-off that
            # did not happen), then the caller's handlers and mask come back.
            for s in STOP_SIGNALS:
                signal.signal(s, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            if stage != "sample":  # the sampler exits next: it keeps ignoring them
                for s, h in old.items():
                    signal.signal(s, h)
        return reason

    def _loop(self) -> str:
        opts = self.opts
        # --duration counts from here: attaching takes a minute under emulation.
        deadline = boottime() + opts.duration if opts.duration is not None else None
        next_sample = boottime()
        while True:
            now = boottime()
            if now >= next_sample:
                self.poll_marks()
                # A mount is recorded before the sample that sees its pages (an account
                # at that sample must know it), its new files are named after it.
                mounts_changed = self.follow.mounts_changed()
                if mounts_changed:  # a new mount names its own file system
                    self.write_topology(probe=False)
                self.sample()
                # Now and then, and after a mount, the biggest files not yet named get
                # paths (briefly: a running recording read with `--at` shows them).
                if self.follow.naming_due(mounts_changed):
                    self.name_top_files(seconds=0.3)
                    release_memory()  # the walk's transient peak: back to the kernel
                next_sample = now + opts.interval
            if deadline is not None and now >= deadline:
                return "duration"
            if opts.stop_file and os.path.exists(opts.stop_file):
                return "stop-file"
            wait = next_sample - boottime()
            if deadline is not None:
                wait = min(wait, deadline - boottime())
            self._write(self.follow.uevent_records(wait))  # a device's topology with it

    def _last_word(self, reason: str) -> str:
        """A last sample and the names of the biggest files, then the end record; returns
        the reason it gives. Signals no longer interrupt (stop() is disarmed)."""
        try:
            self.poll_marks()
            self._release_marks()  # from here on `footprint mark` refuses: no mark is lost
            self.sample()
            self.name_top_files()
        except Exception as err:  # the recording stays readable; say what failed
            self.log(f"last sample failed: {err}")
            reason += f"; last sample failed: {err}"
        finally:
            self.writer.close(reason)
        return reason


def _log(msg: str) -> None:
    # One write with its newline: a signal handled between print()'s two writes would
    # glue the next line (the summary) onto this one.
    sys.stderr.write(f"footprint: {msg}\n")
    sys.stderr.flush()


def record(opts: Options) -> str:
    """Record until the duration, a signal or the stop file; returns why it stopped."""
    no_huge_pages()  # before the start-up peaks: their release must free memory
    return Recorder(opts, log=_log).run()


def sample_main() -> int:
    """Entry of the lean sampler (python -m tracer.sampler), exec'd by handoff()."""
    try:
        state = json.loads(os.environ.pop("FOOTPRINT_SAMPLER"))
    except (KeyError, ValueError):
        _log("the sampler is started by `footprint record`, not by hand")
        return 2
    try:
        reason = Recorder.resume(state, log=_log).run(stage="sample")
    except FootprintError as err:
        _log(str(err))
        return 2
    _log(f"recording {state['opts']['output']} written ({reason})")
    return 0
