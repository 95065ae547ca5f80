"""Read footprint's BPF maps by file descriptor, with the bpf(2) syscall through ctypes.

Why not bcc's tables: after the program is compiled and attached, the recorder execs
into a lean sampler (no bcc, no LLVM in memory: ~100 MB less of the tracer's own cost).
The maps and the perf-event fds that keep the programs attached are inherited across
exec; this module is all the sampler needs to read them. Layouts mirror bpf/footprint.c.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_MACHINE = os.uname().machine  # once: _bpf runs for every map access
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

COUNTER = struct.Struct("<qqQQq")          # struct counter
FILE_KEY = struct.Struct("<QII")           # struct file_key {ino, dev, pad}
FILE_VAL = struct.Struct("<iiIIiHH")       # struct fp_file_val {resident .. untracked, flags, epoch}
SLAB_FILTER = struct.Struct("<QQII64Q64QII8Q8Q")  # struct fp_slab_filter
SITE_KEY = struct.Struct("<QII")           # struct site_key {call_site, kind, pad}
OOM_VICTIM = struct.Struct("<QII16s16s")   # struct fp_oom_victim
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
ST_EPOCH = 19  # enum fp_stat in bpf/footprint_types.h: the sampler's read number


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


def obj_get(path: str) -> int:
    """An fd of the BPF object (map, program, link) pinned at `path` on bpffs (4.4+)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, _ObjAttr(pathname=ctypes.addressof(name)))


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


def _bpf(cmd: int, attr) -> int:
    nr = _NR_BPF.get(_MACHINE)
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown on {_MACHINE}")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


class Map:
    """One BPF map by fd: raw (key, value) bytes, batched where the kernel can (5.6+)."""

    def __init__(self, fd: int):
        self.fd = fd
        info = _MapInfo()
        attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
        _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        self.type, self.key_size, self.value_size = info.type, info.key_size, info.value_size
        self.max_entries = info.max_entries
        self.name = info.name.decode(errors="replace")
        self._batch_ok = True

    def lookup(self, key: bytes) -> bytes | None:
        """The value under `key` (BPF_MAP_LOOKUP_ELEM), None if absent (ENOENT)."""
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(self.value_size)
        attr = _ElemAttr(map_fd=self.fd, key=ctypes.addressof(k), value=ctypes.addressof(v))
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except OSError as err:
            if err.errno == errno.ENOENT:
                return None
            raise
        return v.raw

    def update(self, key: bytes, value: bytes) -> None:
        """Set `key` to `value` (BPF_MAP_UPDATE_ELEM, BPF_ANY)."""
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(value, self.value_size)
        _bpf(BPF_MAP_UPDATE_ELEM, _ElemAttr(map_fd=self.fd, key=ctypes.addressof(k),
                                            value=ctypes.addressof(v)))

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, value): BPF_MAP_LOOKUP_BATCH (5.6+) where the map type has it, else
        key by key with BPF_MAP_GET_NEXT_KEY."""
        return [(keys[i * self.key_size:(i + 1) * self.key_size],
                 values[i * self.value_size:(i + 1) * self.value_size])
                for keys, values, n in self.chunks() for i in range(n)]

    def chunks(self, chunk: int = 4096):
        """The map as (keys, values, n) pieces: n keys and n values each packed in one
        bytes object — a reader that wants a few entries of many thousands picks them out
        without an object per entry (Maps.files_touched)."""
        if self._batch_ok:
            try:
                yield from self._chunks_batch(chunk)
                return
            except OSError as err:
                # ENOTSUPP (524, kernel-internal): this map type has no batch ops.
                if err.errno not in (errno.EINVAL, 524, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._batch_ok = False
        pairs = self._items_iter()
        yield b"".join(k for k, _ in pairs), b"".join(v for _, v in pairs), len(pairs)

    def _chunks_batch(self, chunk: int):
        keys = ctypes.create_string_buffer(self.key_size * chunk)
        values = ctypes.create_string_buffer(self.value_size * chunk)
        token_in = ctypes.create_string_buffer(8)
        token_out = ctypes.create_string_buffer(8)
        first = True
        while True:
            attr = _BatchAttr(in_batch=0 if first else ctypes.addressof(token_in),
                              out_batch=ctypes.addressof(token_out), keys=ctypes.addressof(keys),
                              values=ctypes.addressof(values), count=chunk, map_fd=self.fd)
            done = False
            try:
                _bpf(BPF_MAP_LOOKUP_BATCH, attr)
            except OSError as err:
                if err.errno != errno.ENOENT:
                    raise
                done = True
            n = attr.count
            if n:
                yield keys.raw[:n * self.key_size], values.raw[:n * self.value_size], n
            if done:
                return
            ctypes.memmove(token_in, token_out, 8)
            first = False

    def _items_iter(self) -> list[tuple[bytes, bytes]]:
        out = []
        key = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        first = True
        while True:
            attr = _ElemAttr(map_fd=self.fd, key=0 if first else ctypes.addressof(key),
                             value=ctypes.addressof(nxt))
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except OSError as err:
                if err.errno == errno.ENOENT:
                    return out
                raise
            first = False
            ctypes.memmove(key, nxt, self.key_size)
            value = self.lookup(key.raw)
            if value is not None:
                out.append((key.raw, value))


class _ProgInfo(ctypes.Structure):
    # struct bpf_prog_info up to recursion_misses (offsets 192/200/208, uapi linux/bpf.h;
    # the kernel fills what it knows and zeroes the rest of a longer buffer).
    _fields_ = [("head", ctypes.c_uint8 * 192), ("run_time_ns", ctypes.c_uint64),
                ("run_cnt", ctypes.c_uint64), ("recursion_misses", ctypes.c_uint64),
                ("tail", ctypes.c_uint8 * 16)]


def prog_misses(fd: int) -> int:
    """Events a program did not run for because another BPF program was already running
    on that CPU (bpf_prog_active / recursion protection, Linux 5.12+): lost events."""
    info = _ProgInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return int(info.recursion_misses)


class Maps:
    """footprint's maps, decoded: the sampler's whole view of the kernel-side account."""

    NAMES = ("files", "stack_pages", "sites", "stacks", "stacks_alt", "stats", "slab_filter")
    OPTIONAL = ("oom_victims",)  # only where the kernel has the tracepoint

    def __init__(self, fds: dict[str, int]):
        self.maps = {name: Map(fd) for name, fd in fds.items()}

    # Only the entries that changed are decoded (a sample of 10k files decodes tens, not
    # 10k): the files by the epoch the program tags them with (files_touched), the small
    # maps read raw and compared as bytes with the previous read (MapSampler.changed).
    def raw(self, name: str) -> dict[bytes, bytes]:
        """Map `name` whole, undecoded (key bytes -> value bytes)."""
        return dict(self.maps[name].items())

    @staticmethod
    def file_counter(v: bytes) -> tuple:
        """A file's 5 counters as the recording keeps them (never negative). The
        program's resident count goes below zero when pages it did not count are
        deleted (one migrated before attach, a tmpfs page added where no kprobe saw it):
        that deficit is deletes of pages not traced in, which is what untracked_removed
        counts (they consume the file's baseline), so it is moved there."""
        resident, peak, added, removed, untracked, _flags, _epoch = FILE_VAL.unpack(v)
        if resident < 0:
            untracked -= resident
            resident = 0
        return resident, max(peak, 0), added, removed, max(untracked, 0)

    @classmethod
    def file_entry(cls, k: bytes, v: bytes) -> tuple[tuple[int, int], tuple]:
        """A files-map entry decoded: ((kernel dev_t, inode), its 5 counters)."""
        ino, dev, _ = FILE_KEY.unpack(k)
        return (dev, ino), cls.file_counter(v)

    @staticmethod
    def stack_entry(k: bytes, v: bytes) -> tuple[int, tuple]:
        """A stack_pages entry decoded: (stack id, its counters)."""
        return U32.unpack(k)[0], COUNTER.unpack(v)

    @staticmethod
    def site_entry(k: bytes, v: bytes) -> tuple[tuple[int, int], tuple]:
        """A sites entry decoded: ((call site address, kind: 0 slab, 1 percpu; 2 vmalloc
        area, 3 library kmalloc: the address is a stack id), counters)."""
        call_site, kind, _ = SITE_KEY.unpack(k)
        return (call_site, kind), COUNTER.unpack(v)

    def file_counters(self, dev: int, ino: int) -> tuple | None:
        """One file's counters (kernel dev_t, inode), None if the tracer has none."""
        raw = self.maps["files"].lookup(FILE_KEY.pack(ino, dev, 0))
        return None if raw is None else self.file_counter(raw)

    def files(self) -> dict[tuple[int, int], tuple]:
        """Every file the program counts: (kernel dev_t, inode) -> its 5 counters."""
        return dict(self.file_entry(k, v) for k, v in self.maps["files"].items())

    def files_touched(self, newest: int, back: int) -> list[tuple[bytes, bytes]]:
        """The raw entries of the files whose counters changed while the epoch (stats
        [ST_EPOCH], see set_epoch) was one of `newest` and the `back` before it (16 bits,
        as the program stores it)."""
        want = {(newest - i) & 0xFFFF for i in range(min(back, 0xFFFF) + 1)}
        ks, vs = FILE_KEY.size, FILE_VAL.size
        out = []
        for keys, values, _n in self.maps["files"].chunks():
            # a chunk's epochs in one go (the last u16 of each value), not a tuple per entry
            tags = memoryview(values).cast("H")[(vs - 2) // 2::vs // 2].tolist()
            out += [(keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs])
                    for i, tag in enumerate(tags) if tag in want]
        return out

    def epoch(self) -> int:
        """The sampler's read number as the program sees it (stats[ST_EPOCH])."""
        raw = self.maps["stats"].lookup(U32.pack(ST_EPOCH))
        return U64.unpack(raw[:8])[0] if raw else 0

    def set_epoch(self, value: int) -> None:
        """Set the read number the program tags changed files with (files_touched)."""
        self.maps["stats"].update(U32.pack(ST_EPOCH), U64.pack(value))

    def stack_pages(self) -> dict[int, tuple]:
        """Stacks that were ever charged (an array: entries never used are all zero)."""
        return dict(self.stack_entry(k, v) for k, v in self.maps["stack_pages"].items()
                    if v.count(0) != len(v))

    def sites(self) -> dict[tuple[int, int], tuple]:
        """Every kmalloc/percpu call site: (address, kind) -> its counters."""
        return dict(self.site_entry(k, v) for k, v in self.maps["sites"].items())

    def stack(self, sid: int) -> list[int]:
        """Frames of stack id `sid` as the program stores it: 1..N the first stack map,
        above N the second (see bpf/footprint.c), 0 none."""
        per_map = self.maps["stacks"].max_entries
        if sid <= 0:
            return []
        name, key = ("stacks", sid - 1) if sid <= per_map else ("stacks_alt", sid - 1 - per_map)
        if name not in self.maps:
            return []
        raw = self.maps[name].lookup(U32.pack(key))
        if raw is None:
            return []
        return [a for a in struct.unpack(f"<{len(raw) // 8}Q", raw) if a]

    def oom_victims(self, first: int, count: int) -> list[dict]:
        """Victims number first..count-1 (kept in a ring: older ones are overwritten),
        timed on CLOCK_BOOTTIME like everything else in a recording."""
        to_boot = time.clock_gettime(time.CLOCK_BOOTTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)
        m = self.maps.get("oom_victims")
        if m is None:
            return []
        out = []
        for i in range(max(first, count - m.max_entries), count):
            raw = m.lookup(U32.pack(i % m.max_entries))
            if raw is None:
                continue
            ns, pid, _, comm, trigger = OOM_VICTIM.unpack(raw[:OOM_VICTIM.size])
            out.append({"t": ns / 1e9 + to_boot, "pid": pid,
                        "comm": comm.split(b"\0", 1)[0].decode(errors="replace"),
                        "trigger": trigger.split(b"\0", 1)[0].decode(errors="replace")})
        return out

    def set_slab_filter(self, text: tuple[int, int], ranges: list[tuple[int, int]],
                        libs: list[tuple[int, int]] = ()) -> None:
        """Follow kmalloc objects only from modules and from these core-kernel ranges
        (sorted, disjoint, at most 64), and those from library code (`libs`, at most 8)
        with their stacks: bpf/footprint_types.h, struct fp_slab_filter."""
        ranges = sorted(ranges)[:64]
        lo = [r[0] for r in ranges] + [0] * (64 - len(ranges))
        hi = [r[1] for r in ranges] + [0] * (64 - len(ranges))
        libs = sorted(libs)[:8]
        llo = [r[0] for r in libs] + [0] * (8 - len(libs))
        lhi = [r[1] for r in libs] + [0] * (8 - len(libs))
        self.maps["slab_filter"].update(U32.pack(0), SLAB_FILTER.pack(
            text[0], text[1], 1, len(ranges), *lo, *hi, len(libs), 0, *llo, *lhi))

    def stats(self, count: int) -> list[int]:
        """The first `count` of the program's counters (enum fp_stat), 0 where unset."""
        m = self.maps["stats"]
        return [U64.unpack((m.lookup(U32.pack(i)) or b"\0" * 8)[:8])[0] for i in range(count)]
