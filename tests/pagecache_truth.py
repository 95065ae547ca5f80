"""Ground truth for tests: every superblock's page cache, read from kernel memory.

Independent of footprint on purpose (it imports nothing of tracer/ and shares no code
with it): a reader of /proc/kcore (an ELF core of the running kernel, CONFIG_PROC_KCORE)
that walks fs/super.c's `super_blocks` list and, for each superblock, its `s_inodes`
list, summing each inode's own `i_data.nrpages` (the pages its address_space holds in the
page cache: mm/filemap.c and mm/shmem.c keep it; a device node's i_mapping points at the
block device's mapping, so i_data counts every page once). Struct layouts come from the
kernel's BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF), addresses from
/proc/kallsyms (`super_blocks` is listed only with CONFIG_KALLSYMS_ALL: Debian's 6.1 has
it; where it lacks, pass `head=`). Root only. Stdlib only, Python 3.7+, one file: copy it
into a guest and run it there.

The lists are read while the kernel changes them, without its locks: a read is a
snapshot good to a few pages on a quiet system; a torn walk (a pointer that leaves
kernel memory, a list longer than any real one) is retried, and said.

API
  superblocks(head=None, inodes=False) -> {"time": CLOCK_BOOTTIME s,
      "superblocks": {"maj:min": {"fstype": str, "pages": int, "inodes": int,
                                  "cached_inodes": int, "files": {ino: pages} (inodes=True)}},
      "pages": total, "meminfo": {"Cached": pages, "Buffers": pages, "Shmem": pages},
      "retries": int}
  compare(ours, truth, pct=1.0, slack=64) -> [(dev, ours, truth)] of superblocks off
      by more than pct % and slack pages (a superblock missing on one side counts as 0).

Command line: `python3 pagecache_truth.py [--inodes] [--head 0xADDR]` prints the JSON.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
_MINORBITS = 20  # include/linux/kdev_t.h
_KERNEL_LO = 0xFFFF800000000000  # x86_64/arm64: kernel addresses are in the upper half
_MAX_SBS, _MAX_INODES = 1 << 16, 1 << 24


class Kcore:
    """Reads kernel virtual memory through /proc/kcore's PT_LOAD segments."""

    def __init__(self, path="/proc/kcore"):
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        hdr = os.pread(self.fd, 64, 0)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
            raise OSError(f"{path} is not a 64-bit ELF core")
        phoff, = struct.unpack_from("<Q", hdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", hdr, 54)
        ph = os.pread(self.fd, phentsize * phnum, phoff)
        self.segs = []
        for i in range(phnum):
            p_type, _fl, off, vaddr, _pa, filesz, _memsz, _al = struct.unpack_from(
                "<IIQQQQQQ", ph, i * phentsize)
            if p_type == 1:  # PT_LOAD
                self.segs.append((vaddr, vaddr + filesz, off))
        self.segs.sort()

    def read(self, addr, n):
        for lo, hi, off in self.segs:
            if lo <= addr and addr + n <= hi:
                b = os.pread(self.fd, n, off + addr - lo)
                if len(b) == n:
                    return b
                break
        raise ValueError(f"kernel address {addr:#x} not readable")

    def u64(self, addr):
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def u32(self, addr):
        return struct.unpack("<I", self.read(addr, 4))[0]

    def close(self):
        os.close(self.fd)


class Btf:
    """Struct member offsets from a BTF blob (Documentation/bpf/btf.rst)."""

    # bytes following struct btf_type, per kind (fixed part, per-vlen part)
    _EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
              15: (0, 12), 17: (4, 0), 19: (0, 12)}

    def __init__(self, path="/sys/kernel/btf/vmlinux"):
        with open(path, "rb") as f:
            data = f.read()
        magic, _ver, _fl, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from(
            "<HBBIIIII", data, 0)
        if magic != 0xEB9F:
            raise OSError(f"{path} is not BTF")
        self.strs = data[hdr_len + str_off:]
        self.types = [None]  # ids start at 1
        self.structs = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_type = struct.unpack_from("<III", data, pos)
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            pos += 12
            fixed, per = self._EXTRA.get(kind, (0, 0))
            members = []
            if kind in (4, 5):
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                    members.append((self._str(m_name), m_type, (m_off & 0xFFFFFF) if kflag else m_off))
            self.types.append((kind, self._str(name_off), size_type, members))
            if kind == 4 and size_type and self._str(name_off) not in self.structs:
                self.structs[self._str(name_off)] = len(self.types) - 1
            pos += fixed + per * vlen

    def _str(self, off):
        return self.strs[off:self.strs.index(b"\0", off)].decode()

    def _strip(self, tid):
        while self.types[tid][0] in (8, 9, 10, 11, 18):  # typedef, volatile, const, restrict, type_tag
            tid = self.types[tid][2]
        return tid

    def _member(self, tid, name):
        """(byte offset, type id) of `name` in struct/union `tid`, through anonymous members."""
        for m_name, m_type, bits in self.types[tid][3]:
            if m_name == name:
                return bits // 8, m_type
            if not m_name:
                inner = self._strip(m_type)
                if self.types[inner][0] in (4, 5):
                    found = self._member(inner, name)
                    if found:
                        return bits // 8 + found[0], found[1]
        return None

    def offset(self, struct_name, path):
        """Byte offset of `path` ("i_data.nrpages") in struct `struct_name`."""
        tid, off = self.structs[struct_name], 0
        for part in path.split("."):
            found = self._member(self._strip(tid), part)
            if found is None:
                raise KeyError(f"struct {struct_name} has no {path}")
            off += found[0]
            tid = found[1]
        return off


def _kallsyms(name):
    with open("/proc/kallsyms") as f:
        for line in f:
            a, _t, n = line.split()[:3]
            if n == name:
                addr = int(a, 16)
                return addr or None
    return None


def _meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in ("Cached", "Buffers", "Shmem"):
                out[k] = int(v.split()[0]) * 1024 // PAGE
    return out


class Torn(Exception):
    pass


def _walk(mem, off, head, inodes):
    def kptr(p):
        if p < _KERNEL_LO:
            raise Torn(f"pointer {p:#x} outside the kernel")
        return p

    sbs = {}
    node = kptr(mem.u64(head))
    n_sbs = 0
    while node != head:
        n_sbs += 1
        if n_sbs > _MAX_SBS:
            raise Torn("superblock list does not end")
        sb = node - off["sb_list"]
        dev = mem.u32(sb + off["s_dev"])
        fst = kptr(mem.u64(sb + off["s_type"]))
        name = mem.read(kptr(mem.u64(fst + off["fs_name"])), 32).split(b"\0", 1)[0].decode(errors="replace")
        entry = {"fstype": name, "pages": 0, "inodes": 0, "cached_inodes": 0}
        if inodes:
            entry["files"] = {}
        ihead = sb + off["s_inodes"]
        inode_node = kptr(mem.u64(ihead))
        while inode_node != ihead:
            entry["inodes"] += 1
            if entry["inodes"] > _MAX_INODES:
                raise Torn("inode list does not end")
            inode = inode_node - off["i_sb_list"]
            pages = mem.u64(inode + off["nrpages"])
            if pages:
                entry["pages"] += pages
                entry["cached_inodes"] += 1
                if inodes:
                    entry["files"][mem.u64(inode + off["i_ino"])] = pages
            inode_node = kptr(mem.u64(inode_node))
        key = f"{dev >> _MINORBITS}:{dev & ((1 << _MINORBITS) - 1)}"
        if key in sbs:  # two superblocks with one s_dev: cannot be; keep both counted
            sbs[key]["pages"] += entry["pages"]
        else:
            sbs[key] = entry
        node = kptr(mem.u64(node))
    return sbs


def superblocks(head=None, inodes=False, tries=5):
    """Every superblock's page cache as the kernel holds it at this moment (see the
    module's docstring for the shape)."""
    btf = Btf()
    off = {"sb_list": btf.offset("super_block", "s_list"),
           "s_dev": btf.offset("super_block", "s_dev"),
           "s_type": btf.offset("super_block", "s_type"),
           "s_inodes": btf.offset("super_block", "s_inodes"),
           "fs_name": btf.offset("file_system_type", "name"),
           "i_sb_list": btf.offset("inode", "i_sb_list"),
           "i_ino": btf.offset("inode", "i_ino"),
           "nrpages": btf.offset("inode", "i_data.nrpages")}
    head = head or _kallsyms("super_blocks")
    if not head:
        raise LookupError("super_blocks is not in /proc/kallsyms (CONFIG_KALLSYMS_ALL): pass head=")
    mem = Kcore()
    try:
        last = None
        for attempt in range(tries):
            try:
                t = time.clock_gettime(time.CLOCK_BOOTTIME)
                sbs = _walk(mem, off, head, inodes)
                mi = _meminfo()
                return {"time": t, "superblocks": sbs, "meminfo": mi, "retries": attempt,
                        "pages": sum(s["pages"] for s in sbs.values())}
            except (Torn, ValueError) as e:  # a list changed under us: walk again
                last = e
        raise RuntimeError(f"kernel lists kept changing under the walk: {last}")
    finally:
        mem.close()


def compare(ours, truth, pct=1.0, slack=64):
    """Superblocks whose page counts differ by more than `pct` % of the truth and more
    than `slack` pages: [(dev, ours, truth)]. `ours` and `truth` are {dev: pages}."""
    bad = []
    for dev in sorted(set(ours) | set(truth)):
        a, b = ours.get(dev, 0), truth.get(dev, 0)
        if abs(a - b) > max(slack, b * pct / 100):
            bad.append((dev, a, b))
    return bad


def main(argv):
    inodes = "--inodes" in argv
    head = None
    if "--head" in argv:
        head = int(argv[argv.index("--head") + 1], 0)
    r = superblocks(head=head, inodes=inodes)
    json.dump(r, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
