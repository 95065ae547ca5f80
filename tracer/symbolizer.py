"""Names for the kernel addresses a recording carries: stacks and kmalloc/percpu call sites.

Relies on /proc/kallsyms (addresses shown to root; kptr_restrict) read once per process
through symbols.kallsyms(), and on /proc/modules to notice a module loaded after that
read: its addresses are unknown to the table, which is then read again.
"""

from __future__ import annotations

from .owners import stack_library
from .procfs import release_memory
from .symbols import Kallsyms, classify_stack, kallsyms, parse_modules, subsystem_of


class Symbolizer:
    """Turns new stack ids and call-site keys into "stack" and "site" records. `table`:
    a symbol table already read (else symbols.kallsyms() is asked on first use)."""

    def __init__(self, table: Kallsyms | None = None):
        self._table = table
        self._stack_owner: dict[int, tuple] = {}  # id -> (owner, library, caller)
        self._samples = 0

    def load(self) -> Kallsyms:
        """The symbol table, read now if it was not yet."""
        if self._table is None:
            self._table = kallsyms()
        return self._table

    @property
    def table(self) -> Kallsyms:
        """The symbol table, read on first use."""
        return self.load()

    def cover(self, addrs: list[int]) -> None:
        """Reload kallsyms if one of `addrs` lies in a module loaded after it was read: a
        stack or call site there must still be named. Only then: a boot loads a module
        every few seconds, and a reload parses ~100k symbols."""
        try:
            with open("/proc/modules") as f:
                ranges = parse_modules(f.read())
        except OSError:
            return
        known = set(self.table.module_ranges)
        unknown = [r for r in ranges if r not in known]
        if unknown and any(lo <= a < hi for lo, hi, _ in unknown for a in addrs):
            self._table = kallsyms(reload=True)
            release_memory()  # the old table's arrays: back to the kernel

    def stack_record(self, sid: int, frames: list[int]) -> dict:
        """A "stack" record: the stack's frames named, and who it charges (kind, owner)."""
        kind, owner = classify_stack(frames, self.table) if frames else ("pages", "unknown")
        self._stack_owner[sid] = (owner, *stack_library(frames, self.table))
        return {"type": "stack", "id": sid, "kind": kind, "owner": owner,
                "frames": [self.table.symbolize(a) for a in frames]}

    def site_record(self, key: str) -> dict:
        """A "site" record for a call site key ("slab:0x...", "percpu:0x...", or "vmap:0x<id>",
        "kstack:0x<id>": a vmalloc area's or a library kmalloc's stack, described by stack_record first, owner and library from it)."""
        kind, addr = key.split(":", 1)
        if kind in ("vmap", "kstack"):  # a stack id: the owner is the stack's
            owner, library, caller = self._stack_owner.get(int(addr, 16), ("unknown", None, None))
            return {"type": "site", "key": key, "kind": kind, "symbol": caller, "module": None,
                    "owner": owner, "library": library, "stack": int(addr, 16)}
        sym, mod, _off = self.table.lookup(int(addr, 16))
        owner = subsystem_of(sym, mod) or (f"kernel:{sym}" if sym else "kernel")
        return {"type": "site", "key": key, "kind": kind, "symbol": sym,
                "module": mod, "owner": owner}

    def records(self, stacks: dict[int, list[int]], sites: list[str]) -> list[dict]:
        """The records of stacks (id -> frames) and call sites seen for the first time,
        stacks first; the table is reloaded first if a module came since."""
        if stacks or sites:
            self.cover([a for f in stacks.values() for a in f]
                       + [int(k.split(":", 1)[1], 16) for k in sites
                          if not k.startswith(("vmap:", "kstack:"))])
        out = ([self.stack_record(sid, frames) for sid, frames in stacks.items()]
               + [self.site_record(key) for key in sites])
        self._samples += 1
        if self._samples >= 2 and self._table is not None and not self._table.names.compacted:
            # From the second sample on (the boot waits for the first): the names the
            # recorder keeps for its life, compressed (~2 MB less resident).
            self._table.compact()
            release_memory()
        return out
