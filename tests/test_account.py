"""The account's arithmetic on synthetic recordings written in the real format."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tracer import account, recording
from tracer.errors import FootprintError

PS = 4096
KB_PER_PAGE = PS // 1024


def mount(mid, dev, mountpoint, fstype, source):
    return {"id": mid, "parent": 1, "dev": dev, "root": "/", "mountpoint": mountpoint,
            "options": "ro", "optional": "", "fstype": fstype, "source": source,
            "super_options": "ro"}


TOPOLOGY = {
    "time": 1.0, "root": {"dev": "254:0", "fstype": "ext4", "source": "/dev/vda", "id": 2},
    "bdev_sb_dev": None, "history": [1.0],
    "mounts": [mount(2, "254:0", "/", "ext4", "/dev/vda"),
               mount(3, "7:0", "/sq", "squashfs", "/dev/loop0"),
               mount(4, "7:1", "/ext", "ext4", "/dev/loop1")],
    "block_devices": {
        "vda": {"name": "vda", "dev": "254:0", "kind": "disk", "slaves": [], "holders": []},
        "loop0": {"name": "loop0", "dev": "7:0", "kind": "loop", "slaves": [], "holders": [],
                  "loop": {"bound": True, "backing_file": "/img/squashfs.img", "deleted": False,
                           "backing_dev": "254:0", "backing_ino": 12}},
        "loop1": {"name": "loop1", "dev": "7:1", "kind": "loop", "slaves": [], "holders": [],
                  "loop": {"bound": True, "backing_file": "/sq/LiveOS/rootfs.img", "deleted": False,
                           "backing_dev": "7:0", "backing_ino": 2}},
    },
}


def meminfo(total_pages, free_pages, cached, **kw):
    mi = {"MemTotal": total_pages * KB_PER_PAGE, "MemFree": free_pages * KB_PER_PAGE,
          "MemAvailable": (free_pages + cached) * KB_PER_PAGE, "Cached": cached * KB_PER_PAGE}
    for k, v in kw.items():
        mi[k] = v * KB_PER_PAGE
    return mi


def write(path, samples, inventory=None, end=True, tracer_files=(), records=()):
    w = recording.Writer(str(path), {"plan": {"probes": [], "headers_match_kernel": True},
                                     "attached": 0.5, "options": {"interval": 1.0},
                                     "tracer": {"pid": 1, "files": list(tracer_files)}})
    w.write({"type": "topology", "t": 1.0, "topology": TOPOLOGY})
    if inventory:
        w.write({"type": "inventory", "t": 1.1, "method": "cachestat",
                 "untracked_at_inventory": inventory.get("untracked_at", {}),
                 "files": inventory["files"]})
    for i, s in enumerate(samples):
        w.write({"type": "sample", "t": 2.0 + i, "stats": {}, **s})
    for r in records:
        w.write(r)
    if end:
        w.close("duration")
    else:
        w._f.close()


def counter(resident, peak=None, added=None, removed=0, untracked=0):
    return [resident, peak if peak is not None else resident,
            added if added is not None else resident, removed, untracked]


def test_rows_add_up_to_memtotal_minus_memfree(tmp_path):
    p = tmp_path / "r.jsonl"
    write(p, [{"meminfo": meminfo(10000, 6000, 3000, Buffers=10, AnonPages=500, Slab=200,
                                  KernelStack=20, PageTables=30, Percpu=5, VmallocUsed=40),
               "files": {"7:0:2": counter(1200), "254:0:12": counter(400), "7:1:20": counter(1100)},
               "slab": {"ext4_inode_cache": [10, 1000, 30], "squashfs_inode_cache": [5, 700, 8]},
               "vmalloc": {"squashfs_decompressor_create": 16}}])
    acc = account.build(recording.read(str(p)))
    assert acc.rows["resident_pages"].sum() == 10000 - 6000
    un = acc.rows[acc.rows["subsystem"] == "unattributed"]["resident_pages"].sum()
    assert acc.meminfo["unattributed_mib"] == pytest.approx(un * PS / 2**20)
    sub = acc.by("subsystem").set_index("subsystem")["resident_pages"]
    # squashfs: rootfs.img's page cache + its slab cache + its vmalloc
    assert sub["squashfs"] == 1200 + 8 + 16
    # the untraced rest of Cached+Buffers stays page cache, not unattributed
    assert sub["page cache"] == 3000 + 10 - (1200 + 400 + 1100)


def test_double_caching_names_each_layer(tmp_path):
    p = tmp_path / "r.jsonl"
    write(p, [{"meminfo": meminfo(10000, 6000, 3000),
               "files": {"7:0:2": counter(1200), "254:0:12": counter(400), "7:1:20": counter(1100)}}])
    acc = account.build(recording.read(str(p)))
    chain = next(c for c in acc.chains if c["levels"][0]["layer"].startswith("ext4 on loop1"))
    assert [lv["resident_pages"] for lv in chain["levels"]] == [1100, 1200, 400]
    assert chain["layers_holding_data"] == 3


def test_inventory_merges_with_trace(tmp_path):
    """resident = traced + baseline − untracked deletes seen after the inventory."""
    p = tmp_path / "r.jsonl"
    write(p, [{"meminfo": meminfo(10000, 6000, 3000), "files": {"7:1:20": counter(50, untracked=40)}}],
          inventory={"files": [["7:1", 20, 100, "/ext/a"]], "untracked_at": {"7:1:20": 10}})
    acc = account.build(recording.read(str(p)))
    row = acc.files.set_index("ino").loc[20]
    assert row["resident_pages"] == 50 + (100 - 30)
    assert row["baseline_pages"] == 70 and row["path"] == "/ext/a"


def test_deletes_without_adds_never_go_negative(tmp_path):
    p = tmp_path / "r.jsonl"
    write(p, [{"meminfo": meminfo(10000, 6000, 3000), "files": {"7:1:20": counter(5, untracked=500)}}],
          inventory={"files": [["7:1", 20, 100, None]]})
    acc = account.build(recording.read(str(p)))
    assert acc.files.set_index("ino").loc[20, "resident_pages"] == 5


def test_samples_are_deltas_replayed(tmp_path):
    p = tmp_path / "r.jsonl"
    mi = meminfo(10000, 6000, 3000)
    write(p, [{"meminfo": mi, "files": {"7:1:20": counter(5), "7:1:21": counter(7)}},
              {"meminfo": mi, "files": {"7:1:20": counter(9, peak=12)}},
              {"meminfo": mi, "files": {}}])
    rec = recording.read(str(p))
    assert rec.state(0)["files"]["7:1:20"][0] == 5
    last = rec.state()["files"]
    assert last["7:1:20"][:2] == [9, 12] and last["7:1:21"][0] == 7
    acc = account.build(rec)
    assert acc.files.set_index("ino").loc[20, "peak_pages"] == 12


def test_tracer_files_are_the_tracers_row(tmp_path):
    p = tmp_path / "r.jsonl"
    write(p, [{"meminfo": meminfo(10000, 6000, 3000), "files": {"254:0:99": counter(300)}}],
          tracer_files=[["254:0", 99, "/usr/lib/libLLVM-14.so.1"]])
    acc = account.build(recording.read(str(p)))
    tr = acc.rows[acc.rows["subsystem"] == "tracer"]
    assert tr["resident_pages"].sum() == 300


def test_bdev_inventory_rows_join_traced_bdev_pages(tmp_path):
    """Block-device page cache inventoried before its pseudo-fs s_dev was known."""
    p = tmp_path / "r.jsonl"
    kdev = (7 << 20) | 1
    write(p, [{"meminfo": meminfo(10000, 6000, 3000, Buffers=100),
               "files": {f"0:3:{kdev}": counter(10)}}],
          inventory={"files": [["bdev", kdev, 25, "/dev/loop1"]]})
    acc = account.build(recording.read(str(p)))
    rows = acc.files[acc.files["kind"] == "buffers"]
    assert len(rows) == 1 and rows.iloc[0]["resident_pages"] == 35
    assert rows.iloc[0]["subsystem"] == "loop"


# --- reading recordings: partial, torn, corrupt, newer ---------------------------------


def test_killed_recorder_leaves_a_readable_partial_recording(tmp_path):
    p = tmp_path / "r.jsonl"
    write(p, [{"meminfo": meminfo(10000, 6000, 3000), "files": {}}], end=False)
    with open(p, "a") as f:
        f.write('{"type":"sample","t":3.0,"files":{"7:1')  # torn mid-write
    rec = recording.read(str(p))
    assert rec.partial and rec.torn_tail and len(rec.samples) == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda lines: lines[:1] + ["{not json\n"] + lines[1:], "corrupt"),
    (lambda lines: [lines[0].replace('"version":1', '"version":99')] + lines[1:], "upgrade footprint"),
    (lambda lines: ['{"type":"sample"}\n'] + lines[1:], "not a footprint recording"),
    (lambda lines: lines + ['{"type":"sample","t":9,"files":{"7:1:1":[1,2]}}\n'], "bad counter"),
    (lambda lines: lines + ['{"type":"sample","t":9,"slab":{"x":"y"}}\n'], "bad slab"),
    (lambda lines: lines + ['{"type":"oom","t":9,"pid":"x"}\n'], "bad oom record"),
    (lambda lines: [], "empty"),
])
def test_bad_recordings_fail_cleanly(tmp_path, mutate, message):
    p = tmp_path / "r.jsonl"
    write(p, [{"meminfo": meminfo(10000, 6000, 3000), "files": {}}])
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(mutate(lines)))
    with pytest.raises(FootprintError, match=message):
        recording.read(str(p))


def test_report_cli_bad_input_is_one_line_exit_2(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b"\x00\x01garbage\n")
    for args in (["report", str(p)], ["report", str(tmp_path / "missing.jsonl")],
                 ["record", "-o", str(tmp_path / "x"), "--slab", "nope"]):
        r = subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_report_formats(tmp_path):
    p = tmp_path / "r.jsonl"
    write(p, [{"meminfo": meminfo(10000, 6000, 3000), "files": {"7:0:2": counter(1200)}}])
    run = lambda *a: subprocess.run([sys.executable, "-m", "tracer", "report", str(p), *a],
                                    capture_output=True, text=True, check=True).stdout
    text = run()
    assert "squashfs" in text and "unattributed" in text and "MemTotal-MemFree" in text
    obj = json.loads(run("--json"))
    assert {"account", "files", "meminfo", "probes", "lost_events", "map_drops"} <= obj.keys()
    assert {"subsystem", "layer", "kind", "resident_pages", "resident_mib", "peak_pages",
            "allocated_pages"} <= obj["account"][0].keys()
    assert obj["files"][0]["dev"] == "7:0" and obj["files"][0]["fstype"] == "squashfs"
    csv = run("--csv", "--by", "subsystem")
    assert csv.splitlines()[0].startswith("subsystem,")
    run("--parquet", str(tmp_path / "a.parquet"))
    import pandas as pd
    assert len(pd.read_parquet(tmp_path / "a.parquet")) > 0


def test_oom_victims_and_a_starved_sampler_are_reported(tmp_path):
    """What a recording through memory exhaustion says: who the OOM killer took (a
    process name is data: inert in text), and the longest gap between samples."""
    from tracer import report

    p = tmp_path / "r.jsonl"
    mi = meminfo(10000, 6000, 3000)
    write(p, [{"meminfo": mi}, {"meminfo": mi}, {"meminfo": mi, "t": 11.5}],
          records=[{"type": "oom", "t": 6.0, "pid": 4242, "comm": "hog\x1b[2J", "trigger": "hog"}])
    rec = recording.read(str(p))
    acc = account.build(rec)
    obj = report.to_json(rec, acc)
    assert obj["oom"] == [{"t": 6.0, "pid": 4242, "comm": "hog\x1b[2J", "trigger": "hog"}]
    assert obj["recording"]["oom_kills"] == 1
    assert obj["recording"]["max_sample_gap_s"] == 8.5 and obj["recording"]["interval_s"] == 1.0
    text = report.text(rec, acc)
    assert "OOM killer: 1 victim while recording: pid 4242 hog\\x1b[2J at 6.0 s (+5.5 s)" in text
    assert "longest gap between samples 8.5 s (interval 1 s)" in text
    assert "\x1b" not in text


@pytest.mark.parametrize("lru_anon, row", [(650, 50), (590, 0)])
def test_unmapped_parts_of_huge_pages_are_their_own_row(tmp_path, lru_anon, row):
    """Anonymous LRU pages beyond AnonPages + Shmem (a partly unmapped THP waiting for the
    deferred split) get a row and leave unattributed; per-CPU counter lag below 0 gives none."""
    p = tmp_path / "r.jsonl"
    mi = meminfo(10000, 6000, 3000, AnonPages=500, Shmem=100, Slab=200,
                 **{"Active(anon)": 40, "Inactive(anon)": lru_anon - 40})
    write(p, [{"meminfo": mi, "files": {}}])
    acc = account.build(recording.read(str(p)))
    assert acc.rows["resident_pages"].sum() == 10000 - 6000
    got = acc.rows[acc.rows["layer"] == account.UNMAPPED_HUGE]["resident_pages"].sum()
    assert got == row
    un = acc.rows[acc.rows["subsystem"] == "unattributed"]["resident_pages"].sum()
    assert un == 4000 - 3000 - 500 - 200 - row
