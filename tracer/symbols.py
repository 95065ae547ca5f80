"""Kernel symbols: address → function/module from /proc/kallsyms and /proc/modules, read
once per process (`kallsyms()`). Function/module → subsystem and the classification of
page-allocation stacks are tracer/owners.py (re-exported here).

Light on purpose (stdlib only): imported by the recorder in early boot.

Long because the table, its fast parse and its loading once per process (read ahead in
a thread, or parsed in a child that sends the packed arrays back) share the table's
packed layout.
"""

from __future__ import annotations

import bisect
import operator
import os
import re
import sys
from array import array
from collections.abc import Iterable, Sequence
from itertools import accumulate, compress, islice, repeat

from .errors import FootprintError
from .names import PackedNames as _Names
from .owners import (KIND_MARKERS, MODULE_SUBSYSTEMS, PREFIX_SUBSYSTEMS,  # noqa: F401  (re-exported)
                     classify_stack, frame_kind, normalize, subsystem_of)

__all__ = [
    "Kallsyms", "kallsyms", "kernel_address", "prefetch", "NAMED_SYMBOLS", "normalize", "subsystem_of", "classify_stack", "frame_kind",
    "MODULE_SUBSYSTEMS", "PREFIX_SUBSYSTEMS", "KIND_MARKERS",
]

# `addr type name[\t[module]]` lines of a type that can appear in a kernel stack (text;
# weak text): kernel/kallsyms.c s_show() since 2.6 (the module in brackets after a tab).
_TEXT_LINE = re.compile(rb"^([0-9a-fA-F]+)[ \t]+[tTwW][ \t]+(\S+)(?:[ \t]+\[([^\]\s]*)\])?[ \t]*\r?$", re.M)
# Symbols kept by name whatever their type, for those who need one address: the
# kernel baseline's super_blocks (a static variable, listed only with
# CONFIG_KALLSYMS_ALL) and _text (the start of the kernel image, against KASLR).
NAMED_SYMBOLS = frozenset({"super_blocks", "_text"})
_ITEM = tuple(operator.itemgetter(i) for i in range(3))
_TEXT_TYPES = frozenset((b"t", b"T", b"w", b"W"))
_CLOSE = operator.itemgetter(slice(None, -1))  # module] -> module
_PIECE = 1 << 19  # bytes of /proc/kallsyms split at a time (~10k lines)
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

    def __init__(self, addrs: Sequence[int], names: Sequence[str], modules: Sequence[str | None],
                 module_ranges: list[tuple[int, int, str]] | None = None,
                 named: dict[str, int] | None = None) -> None:
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
    def from_bytes(cls, data: bytes, modules_text: str = "") -> "Kallsyms":
        """Parse the bytes of /proc/kallsyms (live file or a stored copy) in one pass.

        Fast on purpose: the early-boot recorder reads this before its first sample and
        the boot waits for that (footprint-start.sh). Splitting the text into tokens and
        C-level builders (no Python statement per line) take 0.11 s of CPU for 122k
        symbols here against 0.16-0.27 s line by line; 0.6 s for 59k under TCG.
        """
        cols = _columns(data) or _columns_by_line(data)
        if not len(cols[0]):
            raise FootprintError("no text symbols in /proc/kallsyms: check that /proc is mounted "
                                 "and the kernel has CONFIG_KALLSYMS")
        addrs, names, mods = cols
        # vmlinux symbols come sorted; module symbols follow unsorted by module load order.
        # A stable sort keeps the file's order between aliases (lookup names the last).
        if any(map(operator.gt, addrs, islice(addrs, 1, None))):
            order = sorted(range(len(addrs)), key=addrs.__getitem__)
            addrs = array("Q", map(addrs.__getitem__, order))
            names, mods = (list(map(c.__getitem__, order)) for c in (names, mods))
        if not any(addrs):
            raise FootprintError(
                "kernel symbol addresses are hidden (all zero in /proc/kallsyms): "
                "run as root, or set sysctl kernel.kptr_restrict=0")
        named = {n: a for n in sorted(NAMED_SYMBOLS) if (a := _named_address(data, n)) is not None}
        return cls(addrs, _Names.of_bytes(names), _Modules.of_bytes(mods),
                   parse_modules(modules_text), named)

    @classmethod
    def from_lines(cls, lines: Iterable[str], modules_text: str = "") -> "Kallsyms":
        """Parse kallsyms lines (e.g. a stored copy read line by line)."""
        return cls.from_text("\n".join(line.rstrip("\n") for line in lines), modules_text)

    @classmethod
    def from_text(cls, kallsyms_text: str, modules_text: str = "") -> "Kallsyms":
        """From the text of /proc/kallsyms and /proc/modules (tests, saved copies)."""
        return cls.from_bytes(kallsyms_text.encode("ascii", "replace"), modules_text)

    @classmethod
    def load(cls, proc: str = "/proc") -> "Kallsyms":
        """Read /proc/kallsyms and /proc/modules (the latter is absent on kernels built
        without module support, like this host's)."""
        return cls.from_bytes(*_read_proc(proc))

    def __len__(self) -> int:
        return len(self.addrs)

    def address(self, name: str) -> int | None:
        """The address of a symbol of NAMED_SYMBOLS (of vmlinux, whatever its type), or
        None where /proc/kallsyms does not list it."""
        return self.named.get(name)

    # -- lookups --------------------------------------------------------------------

    def module_at(self, addr: int) -> str | None:
        """The module whose core text range [addr, addr+size) holds addr, if any."""
        i = bisect.bisect_right(self._mod_starts, addr) - 1
        if i >= 0:
            start, end, name = self.module_ranges[i]
            if start <= addr < end:
                return name
        return None

    def compact(self) -> None:
        """Keep the names compressed (see _Names): for a table kept for a recorder's life."""
        self.names.compact()

    def lookup(self, addr: int) -> tuple[str | None, str | None, int]:
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


_LOADED: Kallsyms | None = None
_PENDING = None  # the thread prefetch() started, until kallsyms() joined it
_EARLY: dict[str, int] = {}  # NAMED_SYMBOLS as that thread found them before parsing
_EARLY_DONE = None  # set once _EARLY is filled or the thread gave up
_PARSE = None  # set when prefetch's thread may parse what it read (parse_prefetched)


def _read_proc(proc: str = "/proc") -> tuple[bytes, str]:
    """The bytes of /proc/kallsyms (one read into one buffer: the kernel formats ~5 MB of
    lines either way) and the text of /proc/modules ("" where there is none)."""
    try:
        with open(os.path.join(proc, "modules"), "r", encoding="ascii", errors="replace") as f:
            mods = f.read()
    except OSError:
        mods = ""
    with open(os.path.join(proc, "kallsyms"), "rb") as f:
        return f.read(), mods


def kallsyms(reload: bool = False) -> Kallsyms:
    """The running kernel's symbols, read from /proc once per process (~0.15 s on a host,
    about ten times that under emulation) and shared by the recorder's stack naming and
    the kernel baseline; `reload` re-reads them (a module loaded since). Waits for a
    read prefetch() started. Raises FootprintError as `Kallsyms.load`, OSError when /proc
    is unreadable."""
    global _LOADED, _PENDING
    if _PENDING is not None:
        parse_prefetched()
        _PENDING.join()  # a failed prefetch left _LOADED None: read again, raise here
        _PENDING = None
    if _LOADED is None or reload:
        _LOADED = _load_in_child()
        if _LOADED is None:
            _LOADED = Kallsyms.load()
    return _LOADED


_CHILD_MAX = 256 << 20  # a packed table is ~5 MB for 122k symbols


def _load_in_child() -> Kallsyms | None:
    """Kallsyms.load() in a forked child, the packed table sent back through a pipe; None
    where that did not work (the caller then parses here, and raises what the parse
    raises). Why: the parse makes tens of MB of short-lived tokens, and in a long-lived
    process their fragments stay resident — the sampler's table cost 5.6 MiB parsed
    in-process against 2.3 MiB received whole from a child (this 6.18 host, 122k
    symbols). The table of the moment the child read it, as Kallsyms.load()'s."""
    import json
    import signal

    try:
        r, w = os.pipe()
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:  # the child: parse, send, and leave without running the parent's exits
        status = 1
        try:
            os.close(r)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)  # the recorder's stop is the parent's
            t = Kallsyms.load()
            parts = [t.addrs.tobytes(), t.names.offsets.tobytes(), t.names.blob,
                     t.modules.index.tobytes()]
            head = {"sizes": [len(x) for x in parts], "modules": t.modules.names,
                    "ranges": t.module_ranges, "named": t.named}
            with os.fdopen(w, "wb") as f:
                f.write(json.dumps(head).encode() + b"\n")
                for x in parts:
                    f.write(x)
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            data = f.read(_CHILD_MAX + 1)
    except OSError:
        data = b""
    finally:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = -1
    if status != 0 or len(data) > _CHILD_MAX:
        return None
    try:
        line, _, rest = data.partition(b"\n")
        head = json.loads(line)
        sizes = head["sizes"]
        if len(sizes) != 4 or sum(sizes) != len(rest):
            return None
        cuts = list(accumulate(sizes, initial=0))
        addrs, offsets, blob, index = (rest[cuts[i]:cuts[i + 1]] for i in range(4))
        addrs_a, offsets_a, index_a = array("Q", addrs), array("I"), array("H")
        offsets_a.frombytes(offsets)
        index_a.frombytes(index)
        if not (len(addrs_a) == len(offsets_a) - 1 == len(index_a) and len(addrs_a)):
            return None
        return Kallsyms(addrs_a, _Names(blob, offsets_a), _Modules(index_a, head["modules"]),
                        [tuple(r) for r in head["ranges"]], head["named"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def kernel_address(name: str) -> int | None:
    """`kallsyms().address(name)` (a NAMED_SYMBOLS one), without waiting for the parse of
    the whole table where prefetch() already found it: the kernel baseline needs only
    these addresses before the recorder attaches. Raises as kallsyms()."""
    if _LOADED is None and _PENDING is not None and _EARLY_DONE is not None:
        _EARLY_DONE.wait()
        if _EARLY:
            return _EARLY.get(name)
    return kallsyms().address(name)


def prefetch(parse_later: bool = False) -> None:
    """Start reading the symbols in a thread and return; kallsyms() takes that copy.

    For the early-boot recorder (tracer.boot), whose boot waits for it to be ready: the
    kernel's formatting of /proc/kallsyms (read(2) releases the GIL) overlaps the
    recorder's imports. The parse holds the GIL through its C-speed splits: with
    `parse_later` it waits for parse_prefetched() — called once the imports are done —
    and overlaps libbpf's loads of programs instead (ctypes releases the GIL for the
    bpf(2) calls and the verifier), not the imports. The table is then the one of the
    moment before attaching, not after: modules the boot needs are loaded before python
    starts (footprint-start.sh), and reload=True reads a newer one."""
    global _PENDING, _EARLY_DONE, _PARSE
    if _LOADED is not None or _PENDING is not None:
        return
    import threading

    _EARLY_DONE = threading.Event()
    _PARSE = threading.Event()
    if not parse_later:
        _PARSE.set()
    parse = _PARSE

    def read() -> None:
        global _LOADED
        try:
            data, mods = _read_proc()
            found = {n: _named_address(data, n) for n in NAMED_SYMBOLS}
            if any(found.values()):  # all 0 or absent: hidden, kallsyms() says so
                _EARLY.update((n, a) for n, a in found.items() if a is not None)
            _EARLY_DONE.set()
            parse.wait()
            _LOADED = Kallsyms.from_bytes(data, mods)
        except BaseException:  # noqa: BLE001  kallsyms() reads again and raises it there
            pass
        finally:
            _EARLY_DONE.set()

    _PENDING = threading.Thread(target=read, name="footprint-kallsyms", daemon=True)
    _PENDING.start()


def parse_prefetched() -> None:
    """Let prefetch(parse_later=True)'s thread parse what it read (kallsyms() does too)."""
    if _PARSE is not None:
        _PARSE.set()


class _Modules:
    """Per-symbol module as a small index into the list of module names (0: vmlinux)."""

    def __init__(self, index: array, names: list[str | None]):
        self.index, self.names = index, names

    @classmethod
    def of(cls, mods: Iterable[str | None]) -> "_Modules":
        return cls.of_bytes([(m or "").encode("ascii", "replace") for m in mods])

    @classmethod
    def of_bytes(cls, mods: Sequence[bytes]) -> "_Modules":
        """From each symbol's module name, b"" for vmlinux."""
        names: list[str | None] = [None]
        ids = {b"": 0}
        for m in sorted(set(mods) - {b""}):
            ids[m] = len(names)
            names.append(m.decode("ascii", "replace"))
        return cls(array("H", map(ids.__getitem__, mods)), names)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> str | None:
        return self.names[self.index[i]]


def _columns(data: bytes) -> tuple[list, list, list] | None:
    """(addresses, names, modules) of the text symbols, b"" for vmlinux's module, from
    kallsyms's own layout: `addr type name` and `addr type name\t[module]`
    (kernel/kallsyms.c s_show(), since 2.6). None when a line is not of that layout (an
    edited copy): _columns_by_line reads those."""
    addrs = array("Q")
    names: list = []
    # By pieces of whole lines: the tokens of a piece live briefly, not those of all
    # 5 MB at once (a 16 MB peak more, and fragments the recorder keeps).
    start = 0
    while start < len(data):
        end = data.find(b"\n", min(start + _PIECE, len(data) - 1)) + 1 or len(data)
        glued = data[start:end].replace(b"\t[", b"[")  # name[module]: three tokens a line
        start = end
        tokens = glued.split()
        lines = glued.count(b"\n") + (not glued.endswith(b"\n"))
        types = tokens[1::3]
        if len(tokens) != 3 * lines or (tokens and set(map(len, types)) != {1}):
            return None  # a line of two or four tokens, a blank line: not aligned in threes
        text = list(map(_TEXT_TYPES.__contains__, types))
        addrs += _hex_array(list(compress(tokens[0::3], text)))  # as numbers: 8 B, not ~50
        names += compress(tokens[2::3], text)
        del glued, tokens, types, text
    # vmlinux's symbols come first and have no module: only the rest are split (a tail
    # name without one splits into itself and b"")
    first = _first_glued(names)
    tail = list(map(bytes.partition, islice(names, first, None), repeat(b"[")))
    names[first:] = map(_ITEM[0], tail)
    mods = [b""] * first
    mods += map(_CLOSE, map(_ITEM[2], tail))
    return addrs, names, mods


def _first_glued(names: list) -> int:
    """The index of the first `name[module]`, found by bisection where they all follow
    vmlinux's names (kallsyms lists vmlinux first), else 0."""
    lo, hi = 0, len(names)
    while lo < hi:
        mid = (lo + hi) // 2
        if b"[" in names[mid]:
            hi = mid
        else:
            lo = mid + 1
    return 0 if any(map(operator.contains, islice(names, 0, lo), repeat(b"["))) else lo


def _columns_by_line(data: bytes) -> tuple[list, list, list]:
    """As _columns, by a regular expression per line: blank lines, other spacing."""
    found = _TEXT_LINE.findall(data)
    return _hex_array([f[0] for f in found]), [f[1] for f in found], [f[2] for f in found]


def _named_address(data: bytes, name: str) -> int | None:
    """The address on vmlinux's `addr type name` line (any type) for name, or None.
    bytes.find, not a regular expression: it skips through 5 MB in about a millisecond."""
    needle, at = b" " + name.encode("ascii") + b"\n", 0
    data = data if data.endswith(b"\n") else data + b"\n"
    while (at := data.find(needle, at)) >= 0:
        line = data[data.rfind(b"\n", 0, at) + 1:at + len(needle)].split()
        at += len(needle)
        if len(line) == 3 and len(line[1]) == 1:
            try:
                return int(line[0], 16)
            except ValueError:
                continue
    return None


def _hex_array(hexes: Sequence[bytes]) -> array:
    """Hex addresses → array("Q"): one bytes.fromhex over them all where each has 16
    digits (a 64-bit kernel's %px), else int() each."""
    if set(map(len, hexes)) == {16}:
        a = array("Q", bytes.fromhex(b"".join(hexes).decode("ascii")))
        if sys.byteorder == "little":
            a.byteswap()  # fromhex is big-endian: most significant digit first
        return a
    return array("Q", map(int, hexes, repeat(16)))


def parse_modules(text: str) -> list[tuple[int, int, str]]:
    """/proc/modules → [(start, end, name)] of each module's core text."""
    out: list[tuple[int, int, str]] = []
    for line in text.splitlines():
        f = line.split()
        # `name size refcnt deps state 0xaddr [(taints)]`
        if len(f) >= 6 and f[5].startswith("0x"):
            start = int(f[5], 16)
            if start:
                out.append((start, start + int(f[1]), f[0]))
    return out


def symbolize_stack(addrs: Iterable[int], kallsyms: Kallsyms) -> list[str]:
    """Human-readable frames, innermost first."""
    return [kallsyms.symbolize(a) for a in addrs if a]
