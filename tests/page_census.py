"""A page-by-page census of anonymous memory, independent of the tracer (issue 15).

Reads /proc/kpageflags and /proc/kpagecount over every pfn and /proc/meminfo at the same
moment, and prints one JSON line: the anonymous pages by whether they sit in a huge page
(THP) and whether any page table maps them, next to meminfo's AnonPages and the anonymous
LRU. Unmapped subpages of anonymous THPs are memory in no /proc/meminfo category: the
kernel took them off NR_ANON_MAPPED when they were unmapped (page_remove_rmap) but the
huge page stays whole on the LRU, queued for the deferred_split shrinker, until memory
pressure or `echo 3 > /proc/sys/vm/drop_caches` splits it (mm/huge_memory.c, since 4.5).

Run as root in the guest: python3 page_census.py  (flag bits: include/uapi/linux/kernel-page-flags.h)."""

import json
import sys
from array import array

LRU, BUDDY, ANON, SWAPBACKED, HEAD, TAIL, THP, ZERO = 5, 10, 12, 14, 15, 16, 22, 24
CHUNK = 1 << 16  # pfns per read


def meminfo() -> dict:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = int(v.split()[0])
    return out


def census() -> dict:
    c = dict(anon=0, anon_mapped=0, anon_thp=0, anon_thp_unmapped=0, anon_small_unmapped=0,
             thp_heads=0, thp_partly_mapped=0, huge_zero=0, buddy=0)
    head_unmapped = 0
    head_has_map = False
    head = -1
    partly = {}  # head pfn -> unmapped subpages, for the owners' walk
    with open("/proc/kpageflags", "rb") as ff, open("/proc/kpagecount", "rb") as fc:
        while True:
            fl, cn = array("Q"), array("Q")
            bf, bc = ff.read(8 * CHUNK), fc.read(8 * CHUNK)
            if not bf:
                break
            fl.frombytes(bf)
            base = ff.tell() // 8 - len(fl)
            cn.frombytes(bc[: len(bf)])
            for pfn, f, n in zip(range(base, base + len(fl)), fl, cn):
                if f >> BUDDY & 1:
                    c["buddy"] += 1
                    continue
                if f >> ZERO & 1 and f >> THP & 1:
                    c["huge_zero"] += 1
                    continue
                if not f >> ANON & 1:
                    continue
                c["anon"] += 1
                mapped = n > 0
                c["anon_mapped"] += mapped
                if f >> THP & 1:
                    c["anon_thp"] += 1
                    if f >> HEAD & 1:  # close the previous huge page
                        if head_has_map and head_unmapped:
                            c["thp_partly_mapped"] += 1
                            partly[head] = head_unmapped
                        c["thp_heads"] += 1
                        head_unmapped, head_has_map = 0, False
                        head = pfn
                    if not mapped:
                        c["anon_thp_unmapped"] += 1
                        head_unmapped += 1
                    head_has_map |= mapped
                elif not mapped:
                    c["anon_small_unmapped"] += 1
    if head_has_map and head_unmapped:
        c["thp_partly_mapped"] += 1
        partly[head] = head_unmapped
    c["owners_kb"] = owners(partly)
    return c


def owners(partly: dict) -> dict:
    """{command: kB of unmapped subpages of the partly mapped huge pages it maps}, from
    every process's writable mappings up to 256 MiB through /proc/PID/pagemap."""
    import os

    seen: dict = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            maps = open(f"/proc/{pid}/maps").read().splitlines()
            pm = open(f"/proc/{pid}/pagemap", "rb")
        except OSError:
            continue
        heads = set()
        with pm:
            for line in maps:
                rng, perms = line.split()[:2]
                lo, hi = (int(x, 16) for x in rng.split("-"))
                if "w" not in perms or hi - lo > 256 << 20:
                    continue
                pm.seek(lo // 4096 * 8)
                ents = array("Q")
                ents.frombytes(pm.read((hi - lo) // 4096 * 8))
                for e in ents:
                    if e >> 63 & 1:
                        h = (e & ((1 << 55) - 1)) & ~511
                        if h in partly:
                            heads.add(h)
        for h in heads:
            seen[comm] = seen.get(comm, 0) + partly[h] * 4
    return seen


def main() -> None:
    import time

    before = meminfo()
    c = census()
    c["time"] = time.clock_gettime(time.CLOCK_BOOTTIME)
    after = meminfo()
    lru_anon = after["Active(anon)"] + after["Inactive(anon)"]
    c["meminfo"] = {k: after[k] for k in ("AnonPages", "Shmem", "AnonHugePages", "Active(anon)",
                                          "Inactive(anon)", "MemFree", "MemTotal", "Unevictable",
                                          "Mlocked", "SwapCached")}
    c["lru_anon_minus_anonpages_shmem_kb"] = lru_anon - after["AnonPages"] - after["Shmem"]
    c["meminfo_before"] = {k: before[k] for k in c["meminfo"]}  # the walk takes seconds
    c["anon_thp_unmapped_kb"] = c["anon_thp_unmapped"] * 4
    c["anon_unmapped_kb"] = (c["anon_thp_unmapped"] + c["anon_small_unmapped"]) * 4
    c["memfree_drift_kb"] = after["MemFree"] - before["MemFree"]
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            c["thp_enabled"] = f.read().strip()
    except OSError:
        c["thp_enabled"] = None
    with open("/proc/vmstat") as f:
        c["vmstat"] = {k: int(v) for k, v in (l.split() for l in f)
                       if k.startswith("thp_") and ("split" in k or "fault" in k)}
    json.dump(c, sys.stdout)
    print()


if __name__ == "__main__":
    main()
