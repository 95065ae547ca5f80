"""The account's arithmetic for files the kernel counted at a sample (tmpfs, issue 15)
and for the initramfs root after switch_root, on small recordings written here: no BPF.

- A sample with `shmem_devs` takes those superblocks' files from its `shmem` counts, not
  from the traced counters plus baseline; a sample without falls back to them; the
  timeline gives the same tmpfs total as the account at every sample.
- Files left on the initramfs root after switch_root are the tracer's when it maps them,
  else "initramfs (deleted)".
"""

from __future__ import annotations

import json
import time

from tracer import account, recording, timeline
from tracer.pagecache import INITRAMFS_DELETED

KB = 4  # kB a page


def _mount(mid, dev, mp, fstype):
    return {"id": mid, "parent": 1, "dev": dev, "root": "/", "mountpoint": mp, "options": "rw",
            "optional": "", "fstype": fstype, "source": fstype, "super_options": "rw"}


def _topo(t, mounts):
    return {"type": "topology", "t": t, "topology": {"time": t, "mounts": mounts,
                                                     "block_devices": {}, "bdev_sb_dev": None}}


def _sample(t, files=None, **extra):
    mi = {"MemTotal": 400_000, "MemFree": 200_000, "Cached": 40_000, "Buffers": 0,
          "Shmem": 8_000, "AnonPages": 10_000}
    return {"type": "sample", "t": t, "meminfo": mi, "stats": {}, "files": files or {},
            "stacks": {}, "sites": {}, "slab": {}, "vmalloc": {}, **extra}


def _write(path, records, tracer_files=()):
    head = {"type": "header", "format": recording.FORMAT, "version": recording.VERSION,
            "kernel": "6.1.0", "hostname": "t", "page_size": 4096,
            "tracer": {"files": [list(f) for f in tracer_files]}}
    path.write_text("".join(json.dumps(r) + "\n" for r in [head, *records]))
    return recording.read(str(path))


def _pages(acc, key):
    dev, ino = key.rsplit(":", 1)
    f = acc.files
    row = f[(f["dev"] == dev) & (f["ino"] == int(ino))]
    path = row["path"].iloc[0] if len(row) else None
    return int(row["resident_pages"].sum()), (path if isinstance(path, str) else None)


def test_measured_tmpfs_files_replace_the_traced_counts(tmp_path):
    run = [_mount(2, "0:23", "/run", "tmpfs"), _mount(1, "254:0", "/", "ext4")]
    inv = {"type": "inventory", "t": 1.0, "method": "kernel",
           "files": [["0:23", 5, 100, "/run/a"], ["254:0", 7, 50, None]]}
    rec = _write(tmp_path / "r.jsonl", [
        _topo(0.5, run), inv,
        # the tracer saw 10 pages of the journal (0:23:9); the kernel counts 1903
        _sample(2.0, {"0:23:9": [10, 10, 10, 0, 0], "254:0:7": [5, 5, 5, 0, 0]},
                shmem={"0:23:5": 100, "0:23:9": 1903}, shmem_devs=["0:23"]),
        _sample(3.0, {}, shmem={"0:23:5": 0}, shmem_devs=["0:23"]),   # /run/a removed
        _sample(4.0, {}),                                              # no measurement
    ])
    a0, a1, a2 = (account.build(rec, i) for i in range(3))
    assert _pages(a0, "0:23:9")[0] == 1903 and _pages(a0, "0:23:5")[0] == 100
    assert _pages(a0, "254:0:7")[0] == 55  # not tmpfs: traced + baseline, as before
    assert _pages(a1, "0:23:5")[0] == 0 and _pages(a1, "0:23:9")[0] == 1903
    # a sample that did not measure: the traced counter and the baseline
    assert _pages(a2, "0:23:9")[0] == 10 and _pages(a2, "0:23:5")[0] == 100
    peak = a1.files[a1.files["ino"] == 9]["peak_pages"].iloc[0]
    assert peak == 1903
    frame = timeline.build(rec)
    for i, acc in enumerate((a0, a1, a2)):
        by = acc.by("subsystem").set_index("subsystem")["resident_pages"]
        assert round(frame["shmem"].iloc[i] * 256) == by["shmem"], i
        assert round(frame["unattributed"].iloc[i] * 256) == by.get("unattributed", 0), i


def test_bad_shmem_counts_are_refused(tmp_path):
    import pytest

    from tracer.errors import FootprintError

    for bad in ({"shmem": {"0:23:5": -1}}, {"shmem": {"x": 1}}, {"shmem_devs": "0:23"},
                {"shmem_devs": ["../x"]}):
        with pytest.raises(FootprintError, match="corrupt"):
            _write(tmp_path / "bad.jsonl", [_sample(1.0, **bad)])


def test_initramfs_files_after_switch_root(tmp_path):
    before = [_mount(1, "0:2", "/", "rootfs")]
    after = [_mount(5, "254:0", "/", "ext4")]
    python = ("0:2", 10763, "/usr/bin/python3.11")
    files = {"0:2:10763": [1600, 1600, 1600, 0, 0], "0:2:77": [300, 300, 300, 0, 0]}
    rec = _write(tmp_path / "r.jsonl", [
        _topo(0.5, before), _sample(1.0, files),
        _topo(5.0, after), _sample(6.0, {})], tracer_files=[python])
    early, late = account.build(rec, 0), account.build(rec, 1)
    assert _pages(early, "0:2:77") == (300, None)  # before switch_root: not deleted
    assert _pages(late, "0:2:77") == (300, INITRAMFS_DELETED)
    row = late.files[late.files["ino"] == 10763].iloc[0]
    assert row["subsystem"] == "tracer" and row["path"] == "/usr/bin/python3.11"


class _StormMaps:
    """A files map of one file (3000 pages) that a delete storm empties: page-cache events
    land at 100k a second from now until `seconds` from now (forever: None)."""

    def __init__(self, seconds):
        self.start = time.monotonic()
        self.end = None if seconds is None else self.start + seconds
        self.read_number = 0

    def epoch(self):
        return self.read_number

    def set_epoch(self, value):
        self.read_number = value

    def files_touched(self, newest, back):
        return list(self.raw("files").items())

    def _now(self):
        now = time.monotonic()
        return now if self.end is None else min(now, self.end)

    def raw(self, name):
        time.sleep(0.005)  # a map of thousands of entries, read under emulation
        return {b"k": b"after" if self.end and time.monotonic() >= self.end else b"before"}

    def file_entry(self, k, v):
        return (2, 5), [0 if v == b"after" else 3000, 0, 0, 0, 0]

    def stats(self, n):
        return [int((self._now() - self.start) * 100_000), 0, 0]


def test_a_sample_waits_for_a_delete_storm_to_pass():
    """A sample that page-cache events straddle — between the files read and the meminfo
    read (the initramfs deleted at switch_root) — waits for the page cache to go quiet and
    is read again, files and the tmpfs walk both, so the sample's files, tmpfs files and
    meminfo describe one moment; a storm longer than a few back-to-back reads (CI: four
    fell inside one) is waited out."""
    from tracer.mapsampler import MapSampler

    walks = iter([{"shmem": {"0:23:9": 1903}, "shmem_ms": 1.0}] +
                 [{"shmem": {"0:23:9": 0, "0:23:10": 4}, "shmem_ms": 2.0}] * 100)
    m = MapSampler(_StormMaps(0.3), {}, own_process=False)
    _t, files, extra, meminfo, _pcp = m.settled_moment(lambda: next(walks), quiet=64,
                                                       patience=30)
    assert files == {"0:2:5": [0, 0, 0, 0, 0]}
    assert extra == {"shmem": {"0:23:9": 0, "0:23:10": 4}, "shmem_ms": 2.0}
    assert meminfo["MemTotal"] > 0
    assert m.moment["tries"] >= 2 and m.moment["moved"] <= 64, m.moment
    assert m.moment["waited_ms"] > 0, m.moment


def test_a_storm_that_does_not_pass_is_read_at_patience():
    """A storm that outlasts the patience: the sample is taken as it is, and says how many
    events its read straddled."""
    from tracer.mapsampler import MapSampler

    m = MapSampler(_StormMaps(None), {}, own_process=False)
    start = time.monotonic()
    _t, files, _extra, _meminfo, _pcp = m.settled_moment(quiet=64, patience=0.2)
    assert files == {"0:2:5": [3000, 0, 0, 0, 0]}
    assert m.moment["moved"] > 64, m.moment
    assert time.monotonic() - start < 10


def test_a_measured_layer_says_so(tmp_path):
    run = [_mount(2, "0:23", "/run", "tmpfs")]
    rec = _write(tmp_path / "r.jsonl", [
        _topo(0.5, run), _sample(2.0, {}, shmem={"0:23:9": 1903}, shmem_devs=["0:23"])])
    rows = account.build(rec).by("layer").set_index("layer")
    assert rows.loc["tmpfs /run", "source"] == "measured"


def test_meminfo_is_read_again_after_the_per_cpu_lists(monkeypatch):
    """A drop_caches freeing pages between the meminfo read and the per-CPU lists' read
    (the pages in Cached and on a list at once) is read again: the pair returned describes
    one moment, so no page is counted twice."""
    from tracer import mapsampler, procfs

    # The kernel's view over time: (Cached kB, MemFree kB, pcp pages). Between the first
    # meminfo and the lists, 40 MiB of cache went to the per-CPU lists.
    states = iter([(400_000, 100_000, 500), (359_040, 100_000, 10_740), (359_040, 100_000, 10_740)])
    now = {"state": next(states)}

    def meminfo():
        cached, free, _ = now["state"]
        return {"MemTotal": 1_000_000, "MemFree": free, "Cached": cached}

    def lists():
        now["state"] = next(states)  # the drop lands here
        return now["state"][2]

    monkeypatch.setattr(procfs, "meminfo", meminfo)
    monkeypatch.setattr(procfs, "zone_pcp_pages", lists)
    mi, pcp = mapsampler.settled_meminfo()
    assert mi["Cached"] == 359_040 and pcp == 10_740  # not Cached 400 000 with 10 740 on the lists
