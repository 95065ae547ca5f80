"""The BPF program loaded and attached, by libbpf (CO-RE object) or bcc (compiled here).

Both classes take a loader.Plan (what this kernel offers, the map sizes) and offer what
the recorder uses: map fds by name, the programs' fds (for their recursion-miss counters,
kernel 5.12+), and the fds whose being open keeps the programs attached (BPF links for
libbpf, perf events for bcc) so that they survive the exec into the sampler.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

from .errors import FootprintError, require_root
from .loader import MIGRATE_MOVABLE, OOM_SLOTS, Plan, bpf_source
from .progkinds import TWINNED_EVENTS


@contextlib.contextmanager
def _stderr_captured():
    """Redirect fd 2 (where libbcc/clang write) to a temp file; yields a reader."""
    import tempfile  # bcc only: the sampler, which imports this module, needs none

    sys.stderr.flush()
    saved = os.dup(2)
    tmp = tempfile.TemporaryFile()
    os.dup2(tmp.fileno(), 2)

    def text() -> str:
        tmp.seek(0)
        return tmp.read().decode("utf-8", "replace")

    try:
        yield text
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def Program(p: Plan):
    """The loaded, attached program, by the plan's loader; both offer what the recorder
    uses: map fds by name (program[name].map_fd), prog_fds(), attach_fds(), close()."""
    if p.loader == "libbpf":
        return LibbpfProgram(p)
    return BccProgram(p)


class LibbpfProgram:
    """The CO-RE object loaded and attached by libbpf: sized, configured and trimmed to
    this kernel before load (tracer/libbpf.py). No compiler, no bcc."""

    KPROBE_PROGS = {"shmem_add_to_page_cache": "kprobe__shmem_add_to_page_cache",
                    "__get_vm_area_node": "kretprobe__get_vm_area_node",
                    "remove_vm_area": "kprobe__remove_vm_area"}

    def __init__(self, p: Plan):
        require_root("loading BPF programs")
        self.plan = p
        self.obj = self._load_trimming(p)
        try:
            self.links = {name: self.obj.attach(name) for name in self._wanted(p, kprobes=False)}
            for f in list(p.kprobes):  # extras: one that does not attach is named, not fatal
                try:
                    self.links[self.KPROBE_PROGS[f]] = self.obj.attach(self.KPROBE_PROGS[f])
                except FootprintError as err:
                    p.kprobes.remove(f)
                    p.kprobes_missing.append((f, f"failed to attach: {err}"))
        except FootprintError:
            self.obj.close()
            raise

    def _load_trimming(self, p: Plan):
        """Load what the plan asks; where that is refused, without the tp_btf programs
        (--programs auto: the classic tracepoints read only the trace record), without the
        kprobe extras, or without both, whichever loads first: each optional part reads
        kernel structs that an older or odd kernel may lay out otherwise. What was left
        out is named in the plan."""
        btf, kprobes, btf_fallback = list(p.btf_events), list(p.kprobes), p.btf_fallback
        tries = [(True, True)]
        if btf and p.programs == "auto":
            tries.append((False, True))
        if kprobes:
            tries.append((True, False))
            if btf and p.programs == "auto":
                tries.append((False, False))
        first = None
        for use_btf, use_kprobes in tries:
            p.btf_events = btf if use_btf else []
            p.kprobes = kprobes if use_kprobes else []
            try:
                obj = self._load(p)
            except FootprintError as err:
                first = first or err
                continue
            if btf and not use_btf:
                p.btf_fallback = f"failed to load: {first}"[:300]
            else:
                p.btf_fallback = btf_fallback
            if kprobes and not use_kprobes:
                p.kprobes_missing += [(f, f"failed to load: {first}") for f in kprobes]
            return obj
        raise first

    @staticmethod
    def _wanted(p: Plan, kprobes: bool = True) -> list[str]:
        """The programs to load: each event's tp_btf or classic tracepoint (the plan's
        choice, tracer/progkinds.py), each tp_btf one's nested twins, then the kprobe
        extras."""
        return ([f"{'tp_btf' if (g, e) in p.btf_events else 'tracepoint'}__{g}__{e}"
                 for g, e in p.tracepoints]
                + [f"{twin}__{g}__{e}" for twin in ("tp_btf_nested", "tp_btf_nested2")
                   for g, e in p.btf_events if e in TWINNED_EVENTS]  # (bpf/footprint.bpf.c)
                + ([LibbpfProgram.KPROBE_PROGS[f] for f in p.kprobes] if kprobes else []))

    def _load(self, p: Plan):
        import struct

        from .libbpf import Object

        obj = Object(p.bpf_object)
        try:
            for name, entries in p.map_entries().items():
                obj.set_max_entries(name, entries)
            obj.set_value_size("stacks", 8 * p.sizes.stack_depth)
            obj.set_value_size("stacks_alt", 8 * p.sizes.stack_depth)
            # struct fp_config in bpf/footprint.bpf.c, field by field.
            obj.set_rodata(struct.pack("<4Q", p.max_pfn, p.sizes.stacks_per_map,
                                       MIGRATE_MOVABLE, OOM_SLOTS))
            wanted = set(self._wanted(p))
            for prog in obj.programs():
                obj.set_autoload(prog, prog in wanted)
            missing = wanted - set(obj.programs())
            if missing:
                raise FootprintError(f"the BPF object lacks {', '.join(sorted(missing))}: it is "
                                     "out of date, rebuild it with scripts/build-bpf")
            obj.load()
        except BaseException:
            obj.close()
            raise
        return obj

    def prog_fds(self) -> dict[str, int]:
        """The loaded programs' fds (for their recursion-miss counters: lost events)."""
        return {name: self.obj.prog_fd(name) for name in self.links}

    def attach_fds(self) -> list[int]:
        """The links' fds: each alone keeps its program attached (inherited across exec)."""
        return list(self.links.values())

    def __getitem__(self, name):
        return _MapRef(self.obj.map_fd(name))

    def close(self) -> None:
        """Detach and unload (the links and maps go with the object)."""
        self.obj.close()


@dataclass
class _MapRef:
    map_fd: int


class BccProgram:
    """The compiled, attached program; a thin owner of the bcc object and its maps."""

    def __init__(self, p: Plan):
        require_root("loading BPF programs")
        self.plan = p
        try:
            from bcc import BPF  # noqa: WPS433 (imported late: early boot may lack bcc)
        except ImportError as err:
            raise FootprintError(f"bcc is not importable ({err}): install python3-bpfcc "
                                 "and run scripts/setup") from None
        if p.headers.path:
            os.environ["BCC_KERNEL_SOURCE"] = p.headers.path
        err = self._load(BPF, p)
        if err is not None and p.kprobes:
            # The extras read kernel structs: if they do not compile here, go without.
            why = f"failed to load: {self._last_error(err)}"
            p.kprobes_missing += [(f, why) for f in p.kprobes]
            p.kprobes = []
            err = self._load(BPF, p)
        if err is not None:
            msg = self._last_error(err)
            raise FootprintError(f"BPF program failed to load ({msg}): check the kernel "
                                 "headers (--kernel-headers) and that BPF is enabled")

    def _load(self, BPF, p: Plan):
        """Compile and attach; returns the exception (clang's chatter kept in _stderr:
        a header tree that is not the running kernel's gives pages of warnings)."""
        with _stderr_captured() as captured:
            try:
                self.bpf = BPF(text=bpf_source(), cflags=p.cflags())
                err = None
            except Exception as exc:  # bcc raises plain Exception on compile/load failure
                err = exc
            self._stderr = captured()
        return err

    def _last_error(self, err: Exception) -> str:
        lines = [ln for ln in self._stderr.splitlines() if "error" in ln.lower()]
        return (lines[-1] if lines else (str(err).strip().splitlines() or ["?"])[-1]).strip()[:300]

    def prog_fds(self) -> dict[str, int]:
        """The loaded programs' fds (for their recursion-miss counters: lost events)."""
        return {name.decode() if isinstance(name, bytes) else name: fn.fd
                for name, fn in self.bpf.funcs.items()}

    def attach_fds(self) -> list[int]:
        """The perf-event fds that keep the programs attached (inherited across exec)."""
        fds = list(self.bpf.tracepoint_fds.values())
        for per_event in self.bpf.kprobe_fds.values():
            fds += list(per_event.values())
        return fds

    def __getitem__(self, name):
        return self.bpf[name]

    def close(self) -> None:
        """Detach and unload (bcc's cleanup closes the perf events and maps)."""
        self.bpf.cleanup()
