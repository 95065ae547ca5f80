"""Moments of a traced boot: the account right after boot, after a cold read, after a write.

The live stack's cost shows under I/O (notes/guest-lab.md): a cold read of the same files
fills the page cache of three layers on a live boot (iso9660 holding the compressed
squashfs.img, squashfs holding the decompressed rootfs.img, ext4 on dm live-rw) against one
on a plain disk; written data lands in the dm snapshot's COW store on the RAM-backed
/overlay, which reclaim cannot drop. So each traced boot is measured at several moments,
in this order, each in the guest that is still recording:

    after-boot   right after boot (the experiment's other figures are from this moment)
    after-read   sync; drop caches; cat the same N MiB of /usr/bin + /usr/lib files
                 (sorted path order, whole files, stopping once N MiB are listed)
    after-write  dd N MiB of zeros to a file on /, fsync, sync, drop caches

At each moment a phase mark (the format `footprint mark NAME` writes) goes into
/run/footprint/marks, so the recording's timeline shows it, and /proc/meminfo and
`free -m` are read. Where the early-boot recorder has exited and left its account pinned
(the default), the moment's sample is read from the pinned maps instead, with its phase
mark (vm.traced.pinned_snapshot). The account of each moment is built on the host, after the recording
was fetched, from the first sample taken at or after the mark (`Recording.sample_at`); the guest
waits `settle_samples` sampling intervals after each mark so that sample exists before the
next workload starts.

    moments = run_moments(g, ["after-boot", "after-read"], mib=64)   # in the guest
    index, why = rec.sample_at(moments[1].t_s)                   # on the host
"""

from __future__ import annotations

import json
import time
from typing import Callable, Optional, Sequence

from tracer.errors import FootprintError

from .results import Moment

MOMENTS = ("after-boot", "after-read", "after-write")
DEFAULT_MIB = 128
MARKS = "/run/footprint/marks"
WRITE_FILE = "/footprint-workload.bin"

# One guest python: the boottime clock (that of the recorder's samples and of `footprint
# mark`), a mark appended with one O_APPEND write, /proc/meminfo.
_MARK = r"""
import json, os, sys, time
name = sys.argv[1]
t = time.clock_gettime(time.CLOCK_BOOTTIME)
os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.write(fd, ("%.6f %s\n" % (t, name)).encode())
os.close(fd)
print(json.dumps({"t": t, "meminfo": open("/proc/meminfo").read()}))
"""

# The file list of the cold read: regular files under the roots, sorted path order,
# whole files, until `mib` MiB are listed; the same list on every boot of the same rootfs.
_READ = r"""
import json, os, subprocess, sys, time
limit = int(sys.argv[1]) << 20
roots = sys.argv[2:]
files, total = [], 0
def walk(d):
    global total
    try:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
    except OSError:
        return True
    for e in entries:
        if total >= limit:
            return False
        try:
            # not into other mounts: live-boot bind-mounts its medium at /usr/lib/live/mount
            if e.is_dir(follow_symlinks=False) and not os.path.ismount(e.path):
                if not walk(e.path):
                    return False
            elif e.is_file(follow_symlinks=False):
                files.append(e.path)
                total += e.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return True
for r in roots:
    if not walk(r):
        break
with open("/proc/sys/vm/drop_caches", "w") as f:
    os.sync()
    f.write("3\n")
t0 = time.monotonic()
read = 0
for p in files:
    try:
        with open(p, "rb", buffering=0) as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                read += len(b)
    except OSError:
        pass
print(json.dumps({"files": len(files), "listed_mib": round(total / 1048576, 1),
                  "read_mib": round(read / 1048576, 1), "seconds": round(time.monotonic() - t0, 1),
                  "roots": roots, "caches_dropped_before": True}))
"""


def parse(text: str) -> list[str]:
    """`--workload after-boot,after-read` → the moments in their fixed order; 'all' = all
    three. after-boot is always measured (the other figures are from it)."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if names == ["all"]:
        return list(MOMENTS)
    bad = [n for n in names if n not in MOMENTS]
    if bad:
        raise FootprintError(f"unknown workload {bad[0]!r}: use a comma-separated list of "
                             f"{', '.join(MOMENTS)} (or all)")
    wanted = {"after-boot", *names}
    return [m for m in MOMENTS if m in wanted]


def _json_out(out: bytes) -> dict:
    return json.loads(out.decode().strip().splitlines()[-1])


def cold_read(g, mib: int, roots: Sequence[str] = ("/usr/bin", "/usr/lib")) -> dict:
    """In the guest: drop caches, then read whole files under `roots` in sorted path order
    until `mib` MiB are listed; returns what was listed and read, and how long it took."""
    rc, out, err = g.run(["python3", "-c", _READ, str(mib), *roots], timeout=3600)
    if rc != 0:
        raise FootprintError(f"cold read failed in the guest: {err.decode(errors='replace')[-300:]}")
    return _json_out(out)


def write(g, mib: int, path: str = WRITE_FILE) -> dict:
    """In the guest: write `mib` MiB of zeros to `path` on / (fsync), sync, drop caches;
    returns what was written and how long it took."""
    t0 = time.monotonic()
    rc, out, err = g.run(f"dd if=/dev/zero of={path} bs=1M count={int(mib)} conv=fsync 2>&1 && sync && "
                         "echo 3 > /proc/sys/vm/drop_caches", timeout=3600)
    if rc != 0:
        raise FootprintError(f"write failed in the guest: {(out + err).decode(errors='replace')[-300:]}")
    return {"path": path, "written_mib": int(mib), "seconds": round(time.monotonic() - t0, 1),
            "caches_dropped_after": True, "dd": out.decode(errors="replace").strip().splitlines()[-1:]}


WORKLOADS: dict[str, Callable] = {
    "after-boot": lambda g, mib: {},
    "after-read": cold_read,
    "after-write": write,
}


def mark(g, name: str, marks: str = MARKS) -> dict:
    """Puts the phase mark; returns its boottime and the meminfo read right after it."""
    rc, out, err = g.run(["python3", "-c", _MARK, name, marks], timeout=120)
    if rc != 0:
        raise FootprintError(f"mark {name} failed in the guest: {err.decode(errors='replace')[-300:]}")
    return _json_out(out)


def run_moments(g, names: Sequence[str], mib: int = DEFAULT_MIB, *, interval: float = 1.0,
                settle_samples: int = 2, say: Callable[[str], None] = lambda s: None,
                snapshot: Optional[Callable] = None) -> list[Moment]:
    """Runs each moment's workload, marks it, reads meminfo and free -m; returns the
    Moments (vm/results.py), their accounts still to be built on the host. `snapshot(g,
    name) -> bool` (vm.traced.pinned_snapshot): takes the moment's sample from a pinned
    account where the recorder has exited (True), else the running recorder's next
    sample is waited for."""
    from tracer.procfs import parse_meminfo

    moments = []
    for name in names:
        t0 = time.monotonic()
        work = WORKLOADS[name](g, mib)
        m = mark(g, name)
        rc, free_out, _ = g.run(["free", "-m"], timeout=60)
        mi = parse_meminfo(m["meminfo"])
        moment = Moment(name, m["t"], workload=work, meminfo=mi,
                        nonfree_mib=round((mi["MemTotal"] - mi["MemFree"]) / 1024, 1),
                        used_mib=round((mi["MemTotal"] - mi["MemAvailable"]) / 1024, 1),
                        free_m=free_out.decode(errors="replace"))
        moments.append(moment)
        say(f"  {name}: MemTotal-MemFree {moment.nonfree_mib:.0f} MiB "
            f"(workload {time.monotonic() - t0:.0f} s)")
        if snapshot is None or not snapshot(g, name):
            time.sleep(settle_samples * interval + 0.5)  # the recorder's sample after the mark
    return moments
