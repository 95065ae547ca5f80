"""Kernel symbols: address → function/module from /proc/kallsyms and /proc/modules, read
once per process (`kallsyms()`). Function/module → subsystem and the classification of
page-allocation stacks are tracer/owners.py (re-exported here).

Light on purpose (stdlib only): imported by the recorder in early boot.
"""

from __future__ import annotations

import bisect
import os
from array import array
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import FootprintError
from .owners import (KIND_MARKERS, MODULE_SUBSYSTEMS, PREFIX_SUBSYSTEMS,  # noqa: F401  (re-exported)
                     classify_stack, frame_kind, normalize, subsystem_of)

__all__ = [
    "Kallsyms", "kallsyms", "NAMED_SYMBOLS", "normalize", "subsystem_of", "classify_stack", "frame_kind",
    "MODULE_SUBSYSTEMS", "PREFIX_SUBSYSTEMS", "KIND_MARKERS",
]

# Symbol types that can appear in a kernel stack (text; weak text).
_TEXT_TYPES = frozenset("tTwW")
# Symbols kept by name whatever their type, for those who need one address: the
# kernel baseline's super_blocks (a static variable, listed only with
# CONFIG_KALLSYMS_ALL) and _text (the start of the kernel image, against KASLR).
NAMED_SYMBOLS = frozenset({"super_blocks", "_text"})
# Beyond this distance from the nearest symbol an address is treated as unknown (an
# address past the end of the last symbol of vmlinux or of a module's text).
_MAX_OFFSET = 1 << 20


class Kallsyms:
    """Sorted text symbols from /proc/kallsyms, plus module address ranges from
    /proc/modules.

    Relies on: /proc/kallsyms printing `addr type name [module]` and showing zero
    addresses to readers without CAP_SYSLOG when kptr_restrict ≥ 1 (then every address
    is 0, which we refuse); /proc/modules printing `name size refs deps state addr`
    (the core text address; init text is freed after init and has no symbols).
    """

    def __init__(self, addrs: Sequence[int], names: Sequence[str], modules: Sequence[Optional[str]],
                 module_ranges: Optional[List[Tuple[int, int, str]]] = None,
                 named: Optional[Dict[str, int]] = None) -> None:
        # Compact on purpose: the recorder keeps this for its whole life, and 120k
        # symbols as Python lists cost ~30 MB; as arrays and one bytes blob ~4 MB.
        self.addrs = addrs if isinstance(addrs, array) else array("Q", addrs)
        self.names = names if isinstance(names, _Names) else _Names.of(names)
        self.modules = modules if isinstance(modules, _Modules) else _Modules.of(modules)
        self.module_ranges = sorted(module_ranges or [])
        self._mod_starts = [r[0] for r in self.module_ranges]
        self.named = dict(named or {})

    # -- loading --------------------------------------------------------------------

    @classmethod
    def from_lines(cls, lines: Iterable[str], modules_text: str = "") -> "Kallsyms":
        """Parse kallsyms lines (live file or a stored copy), streaming."""
        addrs, names, mods = array("Q"), _NamesBuilder(), _ModulesBuilder()
        nonzero = False
        named: Dict[str, int] = {}
        for line in lines:
            parts = line.split()
            if len(parts) >= 3 and parts[2] in NAMED_SYMBOLS and len(parts) == 3:
                named.setdefault(parts[2], int(parts[0], 16))
            if len(parts) < 3 or parts[1] not in _TEXT_TYPES:
                continue
            addr = int(parts[0], 16)
            nonzero = nonzero or addr != 0
            addrs.append(addr)
            names.append(parts[2])
            mods.append(parts[3][1:-1] if len(parts) > 3 else None)
        if addrs and not nonzero:
            raise FootprintError(
                "kernel symbol addresses are hidden (all zero in /proc/kallsyms): "
                "run as root, or set sysctl kernel.kptr_restrict=0")
        if not addrs:
            raise FootprintError("no text symbols in /proc/kallsyms: check that /proc is mounted "
                                 "and the kernel has CONFIG_KALLSYMS")
        names_, mods_ = names.build(), mods.build()
        # vmlinux symbols come sorted; module symbols follow unsorted by module load order.
        if any(addrs[i] > addrs[i + 1] for i in range(len(addrs) - 1)):
            order = sorted(range(len(addrs)), key=addrs.__getitem__)
            addrs = array("Q", (addrs[i] for i in order))
            names_ = _Names.of(names_[i] for i in order)
            mods_ = _Modules.of(mods_[i] for i in order)
        return cls(addrs, names_, mods_, parse_modules(modules_text), named)

    @classmethod
    def from_text(cls, kallsyms_text: str, modules_text: str = "") -> "Kallsyms":
        """From the text of /proc/kallsyms and /proc/modules (tests, saved copies)."""
        return cls.from_lines(kallsyms_text.splitlines(), modules_text)

    @classmethod
    def load(cls, proc: str = "/proc") -> "Kallsyms":
        """Read /proc/kallsyms and /proc/modules (the latter is absent on kernels built
        without module support, like this host's)."""
        try:
            with open(os.path.join(proc, "modules"), "r", encoding="ascii", errors="replace") as f:
                mods = f.read()
        except OSError:
            mods = ""
        with open(os.path.join(proc, "kallsyms"), "r", encoding="ascii", errors="replace") as f:
            return cls.from_lines(f, mods)

    def __len__(self) -> int:
        return len(self.addrs)

    def address(self, name: str) -> Optional[int]:
        """The address of a symbol of NAMED_SYMBOLS (of vmlinux, whatever its type), or
        None where /proc/kallsyms does not list it."""
        return self.named.get(name)

    # -- lookups --------------------------------------------------------------------

    def module_at(self, addr: int) -> Optional[str]:
        """The module whose core text range [addr, addr+size) holds addr, if any."""
        i = bisect.bisect_right(self._mod_starts, addr) - 1
        if i >= 0:
            start, end, name = self.module_ranges[i]
            if start <= addr < end:
                return name
        return None

    def lookup(self, addr: int) -> Tuple[Optional[str], Optional[str], int]:
        """addr → (symbol, module or None, offset). (None, module-or-None, 0) when no
        symbol covers it (e.g. a module's freed init text)."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        range_mod = self.module_at(addr) if self.module_ranges else None
        if i < 0:
            return None, range_mod, 0
        off = addr - self.addrs[i]
        mod = self.modules[i]
        if off > _MAX_OFFSET or (range_mod is not None and mod != range_mod):
            return None, range_mod, 0
        return self.names[i], mod, off

    def symbolize(self, addr: int) -> str:
        """`func+0x1a [mod]` or `0x...` — for humans."""
        sym, mod, off = self.lookup(addr)
        if sym is None:
            return f"0x{addr:x}" + (f" [{mod}]" if mod else "")
        return f"{sym}+0x{off:x}" + (f" [{mod}]" if mod else "")


_LOADED: Optional[Kallsyms] = None


def kallsyms(reload: bool = False) -> Kallsyms:
    """The running kernel's symbols, read from /proc once per process (parsing 120k
    lines takes 0.15 s on a host, seconds under emulation) and shared by the recorder's
    stack naming and the kernel baseline; `reload` re-reads them (a module loaded
    since). Raises FootprintError as `Kallsyms.load`, OSError when /proc is unreadable."""
    global _LOADED
    if _LOADED is None or reload:
        _LOADED = Kallsyms.load()
    return _LOADED


class _Names:
    """Symbol names packed into one bytes blob with an offsets array."""

    def __init__(self, blob: bytes, offsets: array):
        self.blob, self.offsets = blob, offsets

    @classmethod
    def of(cls, names: Iterable[str]) -> "_Names":
        b = _NamesBuilder()
        for n in names:
            b.append(n)
        return b.build()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].decode("ascii", "replace")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def index(self, name: str) -> int:
        for i, n in enumerate(self):
            if n == name:
                return i
        raise ValueError(f"{name!r} is not a symbol")


class _NamesBuilder:
    def __init__(self):
        self.parts: List[bytes] = []
        self.offsets = array("I", [0])

    def append(self, name: str) -> None:
        b = name.encode("ascii", "replace")
        self.parts.append(b)
        self.offsets.append(self.offsets[-1] + len(b))

    def build(self) -> _Names:
        return _Names(b"".join(self.parts), self.offsets)


class _Modules:
    """Per-symbol module as a small index into the list of module names (0: vmlinux)."""

    def __init__(self, index: array, names: List[Optional[str]]):
        self.index, self.names = index, names

    @classmethod
    def of(cls, mods: Iterable[Optional[str]]) -> "_Modules":
        b = _ModulesBuilder()
        for m in mods:
            b.append(m)
        return b.build()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Optional[str]:
        return self.names[self.index[i]]


class _ModulesBuilder:
    def __init__(self):
        self.index = array("H")
        self.names: List[Optional[str]] = [None]
        self.ids: Dict[Optional[str], int] = {None: 0}

    def append(self, mod: Optional[str]) -> None:
        i = self.ids.get(mod)
        if i is None:
            i = self.ids[mod] = len(self.names)
            self.names.append(mod)
        self.index.append(i)

    def build(self) -> _Modules:
        return _Modules(self.index, self.names)


def parse_modules(text: str) -> List[Tuple[int, int, str]]:
    """/proc/modules → [(start, end, name)] of each module's core text."""
    out: List[Tuple[int, int, str]] = []
    for line in text.splitlines():
        f = line.split()
        # `name size refcnt deps state 0xaddr [(taints)]`
        if len(f) >= 6 and f[5].startswith("0x"):
            start = int(f[5], 16)
            if start:
                out.append((start, start + int(f[1]), f[0]))
    return out


def symbolize_stack(addrs: Iterable[int], kallsyms: Kallsyms) -> List[str]:
    """Human-readable frames, innermost first."""
    return [kallsyms.symbolize(a) for a in addrs if a]
