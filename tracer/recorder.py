"""`footprint record`: attach, take the baseline, then sample the in-kernel account.

The BPF program keeps the live state; this loop only copies the counters that changed
into the recording, once per interval, together with /proc/meminfo, slab and vmalloc
totals, uevents (re-reading the topology when a block device appears or changes) and
phase marks. Every record is flushed as written: a killed recorder leaves a readable,
partial recording.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from . import loader, procfs, programs, recording, slabfilter
from .bpfmaps import Maps, prog_misses
from . import errors
from .errors import FootprintError, require_root
from .procfs import boottime
from .symbols import classify_stack, kallsyms, parse_modules, subsystem_of
from .topology import devstr

from . import marks

STAT_NAMES = (
    "pagecache_added", "pagecache_deleted", "pagecache_deleted_untracked",
    "pagecache_freed_without_delete", "kernel_pages_allocated", "kernel_pages_freed",
    "stack_lost", "files_full", "pfn_out_of_range", "objects_allocated",
    "objects_freed", "objects_full", "sites_full", "percpu_full", "oom_kills",
)
DEFAULT_MARKS = "/run/footprint/marks"


def _as_dict(obj):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    return obj


MANIFEST = "/usr/lib/footprint/manifest"  # in an initramfs built with the dracut module


def tracer_files() -> list[list]:
    """(dev, ino, path) of the files this process maps (python, libbpf or bcc and LLVM)
    and, in an initramfs built with footprint's dracut module, of every file the module
    put there (its manifest: python's modules it imported once, the objects, the scripts).
    Their page cache is the tracer's own cost, not the storage stack's."""
    seen = {}
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or parts[4] == "0":
                    continue
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                key = (f"{major}:{minor}", int(parts[4]))
                seen.setdefault(key, parts[5].strip())
    except OSError:
        pass
    try:
        with open(MANIFEST) as f:
            listed = [line.rstrip("\n") for line in f if line.startswith("/")]
    except OSError:
        listed = []
    for path in listed[:100_000]:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_mode & 0o170000 == 0o100000:  # regular files: links hold no pages
            seen.setdefault((f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino), path)
    return [[d, i, p] for (d, i), p in seen.items()]


class _Stop(BaseException):  # not an Exception: no `except Exception` may swallow it
    pass


class Interrupted(errors.Interrupted):
    """A signal came before the recording was started: nothing was recorded (a file
    this recorder created is removed again; one that was there is left untouched)."""


# The signals that end a recording. Blocked across the exec into the sampler, whose
# handlers take one that came meanwhile as soon as they are installed.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class Options:
    output: str
    duration: float | None = None
    interval: float = 1.0
    inventory: bool = True
    inventory_seconds: float = 10.0  # the walk's time budget (it says what it skipped)
    baseline: str = "auto"  # kernel | walk | none | auto (kernel where it runs, else walk)
    marks: str | None = DEFAULT_MARKS
    stop_file: str | None = None  # recording ends when this file appears
    slab: str = "kmalloc"
    kernel_headers: str | None = None
    loader: str = "auto"  # auto | libbpf | bcc (loader.choose_loader)
    sizes: loader.MapSizes | None = None
    exec: bool = True  # hand off to the lean sampler after attaching
    pin: bool = False  # pin links and maps in bpffs: the account outlives the recorder


class Recorder:
    def __init__(self, opts: Options, log: Callable[[str], None] = lambda m: None):
        self.opts = opts
        self.log = log
        self.last: dict[str, dict] = {}  # slab, vmalloc: as last written
        self.last_raw: dict[str, dict[bytes, bytes]] = {"files": {}, "stack_pages": {}, "sites": {}}
        self.writer = None
        self.maps = None
        self.named_files: set[str] = set()  # "dev:ino" the inventory already has a path for
        self.prog_fds: dict[str, int] = {}
        self.uevents = None
        self.known_stacks: set[int] = set()
        self.known_sites: set[str] = set()
        self.baseline_untracked: dict[str, int] = {}
        self.unnamed_baseline: dict[str, int] = {}  # "dev:ino" → pages, for name_top_files
        self.marks_fd: int | None = None  # the marks file, held (shared lock) while recording
        self.marks_pos = 0
        self.oom_seen = 0
        self.last_mountinfo: bytes | None = None  # as last looked at (poll_mounts)
        self.last_named = 0.0  # boottime of the last naming of files while recording
        self.own_process = True  # the sampler is the tracer's process (not a snapshot's reader)

    # -- set-up ------------------------------------------------------------------
    def attach(self) -> None:
        """Claim the output, compile and attach with bcc, write the header; the maps are
        read by fd."""
        require_root("footprint record")
        opts = self.opts
        # Claimed (locked, not yet truncated) first: a second recorder on the same file
        # is refused before it compiles anything, and the first one's file is untouched.
        self.writer = recording.Writer(opts.output)
        self.plan = loader.plan(sizes=opts.sizes, kernel_headers=opts.kernel_headers, slab=opts.slab,
                                loader=opts.loader, files_now=_files_with_pages(opts))
        if opts.pin:
            from . import pinned

            pinned.check_free()
        t0 = boottime()
        # libbpf reports through a Python callback (tracer/libbpf.py): a stop signal
        # handled inside it would raise there, where ctypes swallows the exception, and
        # the disarmed handler would never stop us. Blocked, it waits for the load's end.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.program = programs.Program(self.plan)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        attach_s = boottime() - t0
        self.attached = t0
        self.map_fds = {name: self.program[name].map_fd for name in Maps.NAMES}
        for name in Maps.OPTIONAL:
            try:
                self.map_fds[name] = self.program[name].map_fd
            except KeyError:  # its tracepoint is absent here: the map was not compiled
                pass
        self.attach_fds = self.program.attach_fds()
        self.prog_fds = self.program.prog_fds()
        self.maps = Maps(self.map_fds)
        if opts.pin:
            from . import pinned

            mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # as above
            try:
                pinned.pin(self.program, opts.output, sorted(self.map_fds))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._hold_marks()
        self.writer.start({
            "plan": {
                "probes": self.plan.probes(),
                "loader": self.plan.loader,
                "headers": self.plan.headers.describe(),
                "headers_match_kernel": self.plan.headers.matches_kernel,
                "max_pfn": self.plan.max_pfn,
                "map_sizes": asdict(self.plan.sizes),
                "slab": self.plan.slab,
                "attach_seconds": round(attach_s, 3),
            },
            "attached": t0,
            "options": {"interval": opts.interval, "inventory": opts.inventory,
                        "baseline": opts.baseline},
            "tracer": {"pid": os.getpid(), "files": tracer_files()},
            "stat_names": list(STAT_NAMES),
        })
        self.log(f"attached {len(self.plan.tracepoints)} tracepoints"
                 + (f" and kprobes {', '.join(self.plan.kprobes)}" if self.plan.kprobes else "")
                 + f" in {attach_s:.1f} s; "
                 f"headers: {self.plan.headers.describe()}")

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
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        fds = list(self.map_fds.values()) + self.attach_fds + list(self.prog_fds.values())
        for fd in fds:
            os.set_inheritable(fd, True)
        if self.marks_fd is not None:
            os.set_inheritable(self.marks_fd, True)  # and its lock with it
        output_fd = self.writer.detach()
        state = {"opts": {k: v for k, v in asdict(self.opts).items() if k not in ("sizes", "pin")},
                 "map_fds": self.map_fds, "attach_fds": self.attach_fds,
                 "prog_fds": self.prog_fds, "output_fd": output_fd,
                 "marks_fd": self.marks_fd, "marks_pos": self.marks_pos,
                 "attached": self.attached, "log_prefix": "footprint",
                 "unnamed_baseline": self.unnamed_baseline}
        env = dict(os.environ, FOOTPRINT_SAMPLER=json.dumps(state))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            # sys.executable is empty when our own argv[0] was "@footprint" (early boot).
            python = sys.executable or os.readlink("/proc/self/exe")
            os.execve(python, sampler_argv(), env)
        except OSError as err:
            self.log(f"staying in-process (exec of the sampler failed: {err.strerror})")
            self.writer = recording.Writer.append(self.opts.output, fd=output_fd)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a pending one: now

    @classmethod
    def resume(cls, state: dict, log: Callable[[str], None]) -> "Recorder":
        """The sampler side of handoff()."""
        rec = cls(Options(**state["opts"]), log=log)
        rec.map_fds = state["map_fds"]
        rec.attach_fds = state["attach_fds"]
        rec.prog_fds = state.get("prog_fds", {})
        rec.attached = state["attached"]
        rec.unnamed_baseline = state.get("unnamed_baseline", {})
        rec.maps = Maps(rec.map_fds)
        rec.marks_fd = state.get("marks_fd")
        rec.marks_pos = state.get("marks_pos", 0)
        if rec.marks_fd is not None:
            try:
                os.set_inheritable(rec.marks_fd, False)
            except OSError:
                rec.marks_fd = None
        rec.writer = recording.Writer.append(rec.opts.output, fd=state["output_fd"])
        rec.writer.write({"type": "tracer", "t": boottime(), "stage": "sampler",
                          "pid": os.getpid(), "files": tracer_files()})
        return rec

    def begin(self) -> None:
        """What needs no bcc: symbols, topology, uevents, the inventory."""
        self.kallsyms = kallsyms()  # read once: the kernel baseline asks the same copy
        self._set_slab_filter()
        # No device opened to learn its file system before the kernel baseline has had
        # the chance to name every superblock (blockdev.probe_fstype is a last resort).
        self.write_topology(probe=False)
        self.uevents = self._uevent_watcher()
        sb_fstypes = self.take_inventory() if self.opts.inventory else None
        self.write_topology(sb_fstypes=sb_fstypes, probe=sb_fstypes is None)
        _release_memory()

    def _set_slab_filter(self) -> None:
        """--slab kmalloc: from here on the program follows kmalloc objects only from
        modules and the storage stack's built-in code (until now: every one)."""
        if self.opts.slab != "kmalloc" or "slab_filter" not in self.maps.maps:
            return
        try:
            text, ranges = slabfilter.slab_ranges(self.kallsyms)
            self.maps.set_slab_filter(text, ranges)
        except OSError as err:
            self.log(f"slab filter not set (every kmalloc object followed): {err.strerror}")

    def _uevent_watcher(self):
        try:
            from .topology import UeventWatcher

            # The built-in parser, not pyroute2's: importing pyroute2 costs ~17 MiB in
            # the recorder, which is the tracer's own memory; both read the same format.
            return UeventWatcher(use_pyroute2=False)
        except Exception as err:  # pyroute2 missing or netlink refused: record without
            self.log(f"uevents not recorded: {err}")
            return None

    def write_topology(self, **how) -> None:
        try:
            from .topology import read_topology

            topo = _as_dict(read_topology(**how))
        except FootprintError:
            raise
        except Exception as err:  # a half-visible sysfs must not stop the recording
            self.log(f"topology not read: {err}")
            return
        self.writer.write({"type": "topology", "t": boottime(), "topology": topo})

    def take_inventory(self) -> Optional[dict]:
        """Pages resident before we attached. Taken after attaching, so pages added in
        between are both traced and seen by cachestat/mincore: a file's baseline is what
        the measurement saw beyond what the tracer counted for it at that instant, and
        deletes of untraced pages count against the baseline from that instant on."""
        from .baseline import take
        from .inventory import inventory
        from .topology import kdev, read_topology

        def traced_now(dev: str, ino: int) -> list[int]:
            return list(self.maps.file_counters(kdev(dev), ino) or (0, 0, 0, 0, 0))

        t0 = boottime()
        # Block devices have no (s_dev, ino) the walk can know (the bdev pseudo file
        # system's s_dev is learnt from the tracer's own pages): they are measured first,
        # against the counters of just before and just after the whole walk.
        before = self._read_files()
        # The kernel's own per-inode counts where it can (tracer/baseline.py), else the
        # walk of paths; rows without traced_at are matched against before/after.
        result = take(self.opts.baseline, lambda: inventory(
            read_topology(), budget=(1_000_000, self.opts.inventory_seconds), traced=traced_now),
            log=self.log)
        if result is None:
            return None
        rows = result["rows"]
        after = self._read_files()
        self.named_files = {f"{r['dev'] or 'bdev'}:{r['ino']}" for r in rows if r.get("path")}
        files = []
        for row in rows:
            key = f"{row['dev'] or 'bdev'}:{row['ino']}"
            at = row.get("traced_at")
            if at is None:
                at = list(before.get(key, (0, 0, 0, 0, 0)))
                at[4] = after[key][4] if key in after else 0
            baseline = row["resident_pages"] - at[0]
            if baseline <= 0:
                continue
            self.baseline_untracked[key] = at[4]
            # A block device's page cache lives on the bdev pseudo file system, whose
            # s_dev is only known once the tracer has seen one of its pages: "bdev".
            files.append([row["dev"] or "bdev", row["ino"], baseline, row.get("path")])
            if not row.get("path"):
                self.unnamed_baseline[key] = baseline
        # Only the biggest go over to the sampler (an environment string is <= 128 KiB).
        self.unnamed_baseline = dict(sorted(self.unnamed_baseline.items(), key=lambda kv: -kv[1])[:256])
        method = sorted({r.get("method", "?") for r in rows})
        self.writer.write({"type": "inventory", "t": boottime(), "method": ",".join(method),
                           "seconds": round(boottime() - t0, 3), "stats": result.get("stats", {}),
                           "untracked_at_inventory": self.baseline_untracked, "files": files})
        st = result.get("stats", {})
        self.log(f"inventory ({st.get('baseline')}): {len(files)} files with "
                 f"{sum(f[2] for f in files)} pages already resident, "
                 f"{100 * (st.get('completeness') or 0):.1f} % of Cached+Buffers "
                 f"({boottime() - t0:.1f} s)")
        return result.get("superblock_fstypes")

    # -- sampling ----------------------------------------------------------------
    def _read_files(self) -> dict[str, list[int]]:
        return {f"{devstr(dev, kernel=True)}:{ino}": list(c)
                for (dev, ino), c in self.maps.files().items()}

    def _changed(self, name: str) -> dict:
        """The entries of map `name` that changed since the last sample, decoded to the
        recording's keys; the raw read becomes the new reference."""
        now = self.maps.raw(name)
        before = self.last_raw[name]
        out = {}
        if name == "stack_pages":  # an array: ids never used are all zero (and stay out)
            now = {k: v for k, v in now.items() if v.count(0) != len(v)}
        for k, v in now.items():
            if before.get(k) == v:
                continue
            if name == "files":
                (dev, ino), c = self.maps.file_entry(k, v)
                out[f"{devstr(dev, kernel=True)}:{ino}"] = list(c)
            elif name == "stack_pages":
                sid, c = self.maps.stack_entry(k, v)
                out[sid] = list(c)
            else:
                (addr, kind), c = self.maps.site_entry(k, v)
                out[f"{'percpu' if kind else 'slab'}:{addr:#x}"] = list(c)
        self.last_raw[name] = now
        return out

    def _symbols_cover(self, addrs: list[int]) -> None:
        """Reload kallsyms if one of `addrs` lies in a module loaded after it was read: a
        stack or call site there must still be named. Only then: a boot loads a module
        every few seconds, and a reload parses ~100k symbols."""
        try:
            with open("/proc/modules") as f:
                ranges = parse_modules(f.read())
        except OSError:
            return
        known = set(self.kallsyms.module_ranges)
        unknown = [r for r in ranges if r not in known]
        if unknown and any(lo <= a < hi for lo, hi, _ in unknown for a in addrs):
            self.kallsyms = kallsyms(reload=True)
            _release_memory()  # the old table's arrays: back to the kernel

    def _describe_stack(self, sid: int, frames: list[int]) -> None:
        kind, owner = classify_stack(frames, self.kallsyms) if frames else ("pages", "unknown")
        self.writer.write({"type": "stack", "id": sid, "kind": kind, "owner": owner,
                           "frames": [self.kallsyms.symbolize(a) for a in frames]})

    def _describe_site(self, key: str) -> None:
        kind, addr = key.split(":", 1)
        sym, mod, _off = self.kallsyms.lookup(int(addr, 16))
        owner = subsystem_of(sym, mod) or (f"kernel:{sym}" if sym else "kernel")
        self.writer.write({"type": "site", "key": key, "kind": kind, "symbol": sym,
                           "module": mod, "owner": owner})

    def _lost_events(self) -> int:
        total = 0
        for fd in self.prog_fds.values():
            try:
                total += prog_misses(fd)
            except OSError:  # kernels before 5.12 do not count them
                pass
        return total

    def sample(self) -> None:
        t = boottime()
        files, stacks, sites = self._changed("files"), self._changed("stack_pages"), self._changed("sites")
        new_stacks = [sid for sid in stacks if sid not in self.known_stacks]
        new_sites = [key for key in sites if key not in self.known_sites]
        frames = {sid: self.maps.stack(sid) for sid in new_stacks}
        if new_stacks or new_sites:
            self._symbols_cover([a for f in frames.values() for a in f]
                                + [int(k.split(":", 1)[1], 16) for k in new_sites])
        for sid in new_stacks:
            self._describe_stack(sid, frames[sid])
            self.known_stacks.add(sid)
        for key in new_sites:
            self._describe_site(key)
            self.known_sites.add(key)
        stats = dict(zip(STAT_NAMES, self.maps.stats(len(STAT_NAMES))))
        stats["lost_events"] = self._lost_events()
        if stats["oom_kills"] > self.oom_seen:
            self._record_oom_victims(stats["oom_kills"])
        rec = {"type": "sample", "t": t, "meminfo": procfs.meminfo(), "stats": stats,
               "pcp_pages": procfs.zone_pcp_pages(),
               "files": files, "stacks": {str(k): v for k, v in stacks.items()}, "sites": sites,
               "tracer": _own_memory() if self.own_process else {}}
        # Slab and vmalloc totals are written whole, and only when they changed.
        for name, now in (("slab", _slab_summary()), ("vmalloc", _vmalloc_summary())):
            if now != self.last.get(name):
                rec[name] = now
                self.last[name] = now
        self.writer.write(rec)

    def _record_oom_victims(self, count: int) -> None:
        """The OOM killer's victims since the last sample, named while /proc may still
        have them (6.1's event carries only the pid, 6.18's the name too)."""
        for v in self.maps.oom_victims(self.oom_seen, count):
            if not v["comm"]:
                try:
                    with open(f"/proc/{v['pid']}/comm") as f:
                        v["comm"] = f.read().strip()
                except OSError:
                    pass
            self.writer.write({"type": "oom", **v})
            self.log(f"OOM killer chose pid {v['pid']} ({v['comm'] or '?'}; "
                     f"{v['trigger']} ran out)")
        self.oom_seen = count

    def name_top_files(self, count: int = 64, seconds: float = 5.0) -> None:
        """Paths for the biggest files the tracer knows only as (dev, ino), found here
        where the files are (a report may be read on another machine)."""
        from .topology import paths_of, read_topology

        resident = ((c[0], f"{devstr(dev, kernel=True)}:{ino}") for (dev, ino), c in
                    (self.maps.file_entry(k, v) for k, v in self.last_raw["files"].items()))
        # Files known only from the kernel baseline (no path, never traced) compete too.
        resident = list(resident) + [(n, k) for k, n in self.unnamed_baseline.items()]
        top = sorted(((n, k) for n, k in resident if k not in self.named_files), reverse=True)[:count]
        wanted: dict[str, set] = {}
        for pages, key in top:
            dev, ino = key.rsplit(":", 1)
            if pages > 0:
                wanted.setdefault(dev, set()).add(int(ino))
        if not wanted:
            return
        found = paths_of(read_topology(probe=False), wanted, budget=(300_000, seconds))
        self.named_files.update(f"{d}:{i}" for d, i in found)  # not looked for again
        if found:
            self.writer.write({"type": "paths", "t": boottime(),
                               "paths": [[d, i, p] for (d, i), p in found.items()]})

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

    def poll_uevents(self, timeout: float) -> None:
        if self.uevents is None:
            time.sleep(max(timeout, 0))
            return
        ready, _, _ = select.select([self.uevents.fileno()], [], [], max(timeout, 0))
        if not ready:
            return
        topology_changed = False
        for ev in self.uevents.poll():
            fields = {k: v for k, v in ev.items() if k not in ("type", "time")}
            self.writer.write({"type": "uevent", "t": ev.get("time", boottime()), **fields})
            topology_changed = True
        if topology_changed:
            self.write_topology()

    # -- the loop ------------------------------------------------------------------
    def run(self, stage: str = "attach") -> str:
        """Record until the duration, a signal or the stop file. stage "attach" compiles
        and attaches, then hands off to the sampler (exec) unless opts.exec is False;
        stage "sample" is the sampler's side. Raises Interrupted when a signal came
        before the recording was started."""
        opts = self.opts
        armed = [True]

        def stop(signum, _frame):
            # The first signal stops the recording; later ones would cut its last word.
            if armed[0]:
                armed[0] = False
                raise _Stop(signal.Signals(signum).name)

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
            raise
        finally:
            armed[0] = False
            self._release_marks()
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
                mounts_changed = self.poll_mounts()
                self.sample()
                self.name_new_files(mounts_changed)
                next_sample = now + opts.interval
            if deadline is not None and now >= deadline:
                return "duration"
            if opts.stop_file and os.path.exists(opts.stop_file):
                return "stop-file"
            wait = next_sample - boottime()
            if deadline is not None:
                wait = min(wait, deadline - boottime())
            self.poll_uevents(wait)

    # Seconds between namings of new big files while recording; each walk is held to
    # 0.3 s (at most 2 % of a CPU).
    NAME_EVERY = 15.0

    def poll_mounts(self) -> bool:
        """Follow mounts while recording: a file system mounted (or unmounted) since the
        last look goes into the recording at once, so it is named while mounted. Returns
        whether mounts changed."""
        mi = None
        for who in ("1", "self"):  # as topology.read_mounts looks
            try:
                with open(f"/proc/{who}/mountinfo", "rb") as f:
                    mi = f.read()
                break
            except OSError:
                continue
        changed = mi is not None and self.last_mountinfo is not None and mi != self.last_mountinfo
        if mi is not None:
            self.last_mountinfo = mi
        if changed:
            self.write_topology(probe=False)  # a new mount names its own file system
        return changed

    def name_new_files(self, mounts_changed: bool) -> None:
        """Every NAME_EVERY seconds, or when mounts changed, the biggest files not yet
        named get paths (briefly: a running recording read with `--at` shows them)."""
        now = boottime()
        if mounts_changed or now - self.last_named >= self.NAME_EVERY:
            if self.last_named:  # not at the first sample: the baseline just named them
                self.name_top_files(seconds=0.3)
            self.last_named = now

    def _last_word(self, reason: str) -> str:
        """A last sample and the names of the biggest files, then the end record; returns
        the reason it gives. Signals no longer interrupt (stop() is disarmed)."""
        try:
            if not hasattr(self, "kallsyms"):
                self.kallsyms = kallsyms()
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


def _files_with_pages(opts: Options) -> int | None:
    """How many files have page cache now, to size the files table: the kernel
    baseline's walk (tracer/baseline.py: tens of milliseconds) where it runs and the
    table is not sized by hand; None (the loader guesses) otherwise."""
    if (opts.sizes and opts.sizes.files) or opts.baseline not in ("auto", "kernel"):
        return None
    from . import baseline

    if baseline.unavailable() is not None:
        return None
    try:
        return len(baseline.kernel_walk()["inodes"])
    except FootprintError:
        return None


def _release_memory() -> None:
    """Hand the transient peaks of start-up (kallsyms parsing, the inventory walk) back to
    the kernel: the recorder's resident memory is the tracer's own cost."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _own_memory() -> dict:
    """The recorder's own resident memory (kB) from /proc/self/status."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    out[key.lower().replace("rss", "") + "_kb"] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def _slab_summary() -> dict:
    try:
        return {r["name"]: [r["active_objs"], r["objsize"], r["pages"]] for r in procfs.slabinfo()}
    except (FootprintError, OSError, KeyError):
        return {}


def _vmalloc_summary() -> dict:
    try:
        return {caller: v["pages"] for caller, v in procfs.vmallocinfo().items() if v["pages"]}
    except (FootprintError, OSError):
        return {}


def _log(msg: str) -> None:
    # One write with its newline: a signal handled between print()'s two writes would
    # glue the next line (the summary) onto this one.
    sys.stderr.write(f"footprint: {msg}\n")
    sys.stderr.flush()


def record(opts: Options) -> str:
    """Record until the duration, a signal or the stop file; returns why it stopped."""
    return Recorder(opts, log=_log).run()


# Run as argv[0] "@footprint", python cannot tell which venv (if any) it belongs to: it
# falls back to the base interpreter's prefix, whose site-packages may not hold this
# package (a venv, an editable install, a checkout run from elsewhere). So the sampler is
# told where its package is: the directory this `tracer` was imported from goes first on
# its sys.path, and it imports the same code as the recorder that attached.
_SAMPLER_CODE = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                 "from tracer.sampler import main; sys.exit(main())")


def sampler_argv() -> list[str]:
    """argv of the lean sampler: '@footprint' (spared at switch_root), python code that
    puts this package's parent directory on sys.path, and that directory."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return ["@footprint", "-c", _SAMPLER_CODE, package_parent]


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
