"""The squashfs matrix (issue #16): squashfs's own memory against CPUs × block size ×
compressor, the kernel's formula beside what footprint measured.

squashfs keeps, per mount, decompressor state (Debian's 6.1: one per *possible* CPU,
CONFIG_SQUASHFS_DECOMP_MULTI_PERCPU) and caches sized by the block size (fragment, data,
metadata). Which of these a boot has is read in the guest, from the kernel's own view:
possible CPUs (/sys/devices/system/cpu/possible, which QEMU's -smp sets), each squashfs
mount's superblock (compressor id and block size, read from its loop's backing file or its
device, as the kernel does in squashfs_fill_super; a lazily unmounted one, as dracut leaves
it, through the loop device holding it) and the decompressor mode from the kernel's config (a build
choice on 6.1; 6.2+ may also choose it per mount with `threads=`, shown in mountinfo).
The prediction is the product's (tracer/squashfs.py `squashfs_prediction`), the measured
figure the squashfs rows of the boot's account that are not page cache.

    facts = guest_facts(g)                     # in the booted guest
    rows = rows_of(exp)                        # on the host, after the accounts are built
    print(text(rows))
"""

from __future__ import annotations

import json
from typing import Optional

from tracer.errors import FootprintError
from tracer.safe import inert

MIB = 1 << 20

# In the guest: CPUs, the decompressor mode and every squashfs mount's superblock. The
# squashfs 4 superblock (fs/squashfs/squashfs_fs.h struct squashfs_super_block): magic
# u32 @0, block_size u32 @12, compression u16 @20, flags u16 @24; compressor options
# (flag SQUASHFS_COMP_OPT, 0x400) follow it at 96 in a metadata block (u16 header).
_FACTS = r"""
import json, os, struct
IDS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
def count(path):
    n = 0
    for part in open(path).read().strip().split(","):
        a, _, b = part.partition("-")
        n += int(b or a) - int(a) + 1
    return n
out = {"possible": count("/sys/devices/system/cpu/possible"),
       "online": count("/sys/devices/system/cpu/online"), "mode": None, "mounts": []}
try:
    config = open("/boot/config-" + os.uname().release).read().splitlines()
except OSError:
    config = []
for opt, mode in (("CONFIG_SQUASHFS_DECOMP_MULTI_PERCPU=y", "percpu"),
                  ("CONFIG_SQUASHFS_DECOMP_MULTI=y", "multi"),
                  ("CONFIG_SQUASHFS_DECOMP_SINGLE=y", "single")):
    if opt in config:
        out["mode"] = mode
out["file_cache"] = ("CONFIG_SQUASHFS_FILE_DIRECT=y" not in config) if config else None
def superblock(m, path):
    try:
        with open(path, "rb") as f:
            sb = f.read(96 + 2 + 8)
        magic, block, comp, flags = (struct.unpack_from("<I", sb, 0)[0], struct.unpack_from("<I", sb, 12)[0],
                                     struct.unpack_from("<H", sb, 20)[0], struct.unpack_from("<H", sb, 24)[0])
        m.update({"magic_ok": magic == 0x73717368, "block_size": block, "read_from": path,
                  "fragments": struct.unpack_from("<I", sb, 16)[0],
                  "compressor": IDS.get(comp, str(comp)), "comp_options": bool(flags & 0x400)})
        if flags & 0x400 and comp == 4 and struct.unpack_from("<H", sb, 96)[0] & 0x8000:
            m["dict_size"] = struct.unpack_from("<I", sb, 98)[0]
    except (OSError, struct.error) as err:
        m["error"] = str(err)
    return m
def backing(dev):
    try:
        return open("/sys/dev/block/%s/loop/backing_file" % dev).read().strip()
    except OSError:
        return None
seen = set()
for line in open("/proc/self/mountinfo"):
    pre, _, post = line.partition(" - ")
    fstype, source, opts = (post.split() + ["", "", ""])[:3]
    if fstype != "squashfs":
        continue
    dev = pre.split()[2]
    seen.add(dev)
    m = {"mountpoint": pre.split()[4], "source": source, "dev": dev, "options": opts}
    back = backing(dev)  # the backing file, as the kernel read it: no new page of the loop's own cache
    out["mounts"].append(superblock(m, back if back and os.path.isfile(back) else source))
# dracut's dmsquash-live lazily unmounts the squashfs once rootfs.img is on its loop: the
# file system lives on (loop1's backing file is in it) with no mountpoint. A loop device
# whose image is a squashfs stands for it.
for d in sorted(os.listdir("/sys/block")):
    if not d.startswith("loop"):
        continue
    dev = open("/sys/block/%s/dev" % d).read().strip()
    back = backing(dev)
    if dev in seen or not back or not os.path.isfile(back):
        continue
    m = superblock({"mountpoint": None, "source": "/dev/" + d, "dev": dev, "backing_file": back}, back)
    if m.get("magic_ok"):
        out["mounts"].append(m)
print(json.dumps(out))
"""


def guest_facts(g) -> dict:
    """{"possible", "online", "mode", "mounts": [{"mountpoint", "source", "dev",
    "compressor", "block_size", …}]} read in the booted guest `g` (vm/qemu.py Guest)."""
    rc, out, err = g.run(["python3", "-c", _FACTS], timeout=120)
    if rc != 0:
        raise FootprintError(f"reading squashfs facts failed in the guest: "
                             f"{err.decode(errors='replace')[-300:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def predict(facts: dict, mount: dict, kernel: Optional[str]) -> Optional[dict]:
    """The product's formula (tracer/squashfs.py predict_mount) for one squashfs of the
    guest, from what the guest said: {part: bytes}, or None where it cannot say."""
    from tracer.squashfs import mount_mode, predict_mount

    return predict_mount({
        "compressor": mount.get("compressor"), "block_size": mount.get("block_size"),
        "fragments": mount.get("fragments"), "dict_size": mount.get("dict_size"),
        "mode": mount_mode(mount.get("options") or "", facts.get("mode")),
        "cpus_possible": facts.get("possible"), "cpus_online": facts.get("online"),
        "file_cache": facts.get("file_cache"), "kernel": kernel})


def _measured(rows: list[dict]) -> dict:
    """The squashfs rows of an account that are squashfs's own (not its page cache), in
    MiB: the decompressors' states (its vmalloc, and what a compression library allocated
    for it: the product names those rows "… via xz"), the rest (caches: kmalloc objects,
    slab, pages)."""
    own = [r for r in rows or [] if r.get("subsystem") == "squashfs" and r.get("kind") != "page-cache"]
    vm = sum(r["resident_mib"] for r in own
             if r.get("kind") == "vmalloc" or " via " in (r.get("layer") or ""))
    return {"workspaces_mib": round(vm, 3),
            "caches_mib": round(sum(r["resident_mib"] for r in own) - vm, 3),
            "total_mib": round(sum(r["resident_mib"] for r in own), 3),
            "rows": {r.get("layer") or r.get("kind") or "?": r["resident_mib"] for r in own}}


def rows_of(result) -> list[dict]:
    """One row per boot with a squashfs: CPUs, compressor, block size, decompressor mode,
    the formula (summed over the boot's squashfs mounts: decompressor states, caches,
    total) and footprint's squashfs rows other than page cache, right after boot (MiB)."""
    from .results import as_experiment

    exp = as_experiment(result)
    rows = []
    for b in exp.ok:
        facts = b.figure("squashfs") or {}
        mounts = [m for m in facts.get("mounts", []) if m.get("block_size")]
        if not mounts:
            continue
        preds = [predict(facts, m, b.figure("kernel")) for m in mounts]
        formula = None
        if all(preds):
            formula = {"workspaces_mib": sum(p["workspaces"] for p in preds) / MIB,
                       "caches_mib": sum(p["caches"] for p in preds) / MIB,
                       "total_mib": sum(p["total"] for p in preds) / MIB,
                       "decompressors": sum(p["decompressors"] for p in preds), "mounts": preds}
        m0 = b.moment("after-boot")
        acc = m0.account.rows if m0 is not None and m0.account else (b.trace.get("account") or [])
        rows.append({
            "boot": b.name, "smp": b.figure("smp"), "cpus_possible": facts.get("possible"),
            "cpus_online": facts.get("online"), "decomp_mode": facts.get("mode"),
            "kernel": b.figure("kernel"), "mounts": len(mounts),
            "compressor": "+".join(sorted({m["compressor"] for m in mounts})),
            "block_size": max(m["block_size"] for m in mounts),
            "formula": formula, "measured": _measured(acc) if acc else None,
        })
    return rows


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= MIB and n % MIB == 0 else f"{n >> 10} KiB"


def text(rows: list[dict]) -> str:
    """The matrix as a table: one line per boot, the formula beside the measurement (MiB)
    for the decompressors' states, the caches and in all."""
    if not rows:
        return ""

    def mib(d, key):
        return f"{d[key]:.2f}" if d and d.get(key) is not None else "–"

    out = [f"{'':<14}{'':>5}{'':>6}{'':>9}{'':>8}{'decompressors':>15}{'caches':>14}{'in all':>14}",
           f"{'boot':<14}{'CPUs':>5}{'comp':>6}{'block':>9}{'mode':>8}"
           + f"{'formula':>9}{'seen':>6}" * 3]
    for r in rows:
        f, m = r["formula"], r["measured"]
        cells = "".join(f"{mib(f, k):>9}{mib(m, k):>6}" for k in ("workspaces_mib", "caches_mib", "total_mib"))
        out.append(f"{inert(r['boot'])[:13]:<14}{r['cpus_possible'] or '?':>5}{inert(r['compressor'])[:5]:>6}"
                   f"{_size(r['block_size']):>9}{inert(r['decomp_mode'] or '?')[:7]:>8}{cells}")
    out.append("squashfs's own memory right after boot, MiB: formula = the kernel's (tracer/squashfs.py) for the")
    out.append("  CPUs, mode and superblock read in the guest; seen = footprint's squashfs rows but page cache.")
    return "\n".join(out)
