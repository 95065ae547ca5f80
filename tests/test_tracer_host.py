"""The tracer on this machine's own kernel (tracepoints only): a squashfs holding an ext4
image, both loop-mounted, read while recording; footprint's resident pages per file must
match fincore (mincore: the kernel's own answer) within 1 %. Every recording test runs
once per loader: libbpf (the CO-RE object) and bcc."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent.parent / 'bench'))
import livestack  # noqa: E402
from conftest import cachestat_pages  # noqa: E402

pytestmark = pytest.mark.bpf

FOOTPRINT = [sys.executable, "-m", "tracer"]


def _need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/setup installs it)")


@pytest.fixture(scope="module")
def live_like_stack(tmp_path_factory):
    """A miniature of the live stack: host fs → squashfs.img on loopA → squashfs →
    rootfs.img on loopB → ext4 with three 16 MiB files (bench/livestack.py)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount and load BPF")
    for tool in ("mksquashfs", "mkfs.ext4", "losetup", "fincore"):
        _need(tool)
    with livestack.live_like_stack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


drop_caches = livestack.drop_caches

REPO = __import__('pathlib').Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["libbpf", "bcc"])
def loader(request):
    """The loader a test records with. libbpf needs the CO-RE object: built here when
    missing or stale (scripts/build-bpf, seconds), skipped where it cannot be."""
    if request.param == "libbpf":
        done = subprocess.run(["bash", str(REPO / "scripts" / "build-bpf")], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(done.stderr.strip().splitlines()[-1])
    return request.param


def read_part(path, offset_mib, length_mib):
    with open(path, "rb") as f:
        f.seek(offset_mib << 20)
        left = length_mib << 20
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)


def fincore_pages(path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "PAGES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def start_recorder(rec_path, extra=(), loader="auto"):
    proc = subprocess.Popen(FOOTPRINT + ["record", "-o", str(rec_path), "--interval", "0.2",
                                         "--loader", loader, *extra], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if rec_path.exists() and '"type":"sample"' in rec_path.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"recorder exited: {proc.stderr.read()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("recorder did not start within 120 s")


def stop_recorder(proc):
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def report_json(rec_path, *extra, loader=None):
    """The report; with `loader`, checks first that this loader made the recording."""
    out = subprocess.run(FOOTPRINT + ["report", "--json", str(rec_path), *extra], check=True,
                         capture_output=True, text=True).stdout
    report = json.loads(out)
    if loader is not None:
        assert report["recording"]["loader"] == loader, report["recording"]
    return report


def by_file(report):
    return {(f["dev"], f["ino"]): f for f in report["files"]}


def key_of(path):
    st = os.stat(path)
    return (f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino)


def ground_truth(paths) -> dict:
    """Per path: (fincore pages, cachestat pages), taken at one moment."""
    return {str(p): (fincore_pages(p), cachestat_pages(p)) for p in paths}


def assert_matches_ground_truth(report, truths):
    """footprint's resident pages equal the kernel's count of the file's page cache
    (cachestat: every folio in the mapping, what meminfo's Cached counts) within 1 %,
    and equal fincore within 1 % wherever fincore sees every page. fincore (mincore)
    skips folios that are not uptodate: squashfs readahead leaves some of those in the
    page cache of files inside it, where fincore < cachestat == footprint."""
    files = by_file(report)
    checked = 0
    for path, (fincore, nr_cache) in truths.items():
        row = files.get(key_of(path))
        got = row["resident_pages"] if row else 0
        assert abs(got - nr_cache) <= max(1, 0.01 * nr_cache), (path, got, nr_cache, fincore)
        if fincore == nr_cache:
            assert abs(got - fincore) <= max(1, 0.01 * fincore), (path, got, fincore)
        else:
            assert fincore < nr_cache, (path, fincore, nr_cache)
        checked += nr_cache > 0
    return checked


def test_traced_pages_per_file_match_fincore(live_like_stack, tmp_path, loader):
    s = live_like_stack
    drop_caches()
    rec = tmp_path / "rec.jsonl"
    proc = start_recorder(rec, loader=loader)
    try:
        read_part(s["files"][0], 0, 10)       # part of a
        read_part(s["files"][1], 0, 16)       # all of b
        read_part(s["files"][2], 5, 3)        # a slice of c
        read_part(s["files"][3], 0, 1)
        time.sleep(1.0)
        truths = ground_truth([s["squash"], s["inner"], *s["files"]])
    finally:
        stop_recorder(proc)
    assert os.stat(rec).st_mode & 0o777 == 0o600
    report = report_json(rec, loader=loader)
    checked = assert_matches_ground_truth(report, truths)
    assert checked >= 5, truths
    # The same data sits in three page caches: ext4 files, rootfs.img in squashfs, and the
    # compressed squashfs.img on the host file system.
    assert truths[str(s["inner"])][1] > 0 and truths[str(s["squash"])][1] > 0
    lo_b = os.path.basename(s["loops"][1])
    chains = [c for c in report["double_caching"] if lo_b in c["label"] and "squashfs" in c["label"]]
    assert chains, [c["label"] for c in report["double_caching"]]
    levels = chains[0]["levels"]
    assert len(levels) >= 3 and chains[0]["layers_holding_data"] >= 3, levels
    # Rows by subsystem: squashfs holds rootfs.img's decompressed pages.
    squash_rows = [r for r in report["account"] if r["subsystem"] == "squashfs" and r["kind"] == "page-cache"]
    assert sum(r["resident_pages"] for r in squash_rows) >= truths[str(s["inner"])][1] * 0.99
    # It adds up: the rows are the whole of MemTotal - MemFree.
    total = sum(r["resident_pages"] for r in report["account"])
    assert abs(total * 4096 / 2**20 - report["meminfo"]["nonfree_mib"]) < 0.01
    assert report["map_drops"] == 0
    # An event in an interrupt that lands while one of our programs runs on that CPU is
    # skipped by the kernel (perf-event tracepoints share one recursion guard); counted
    # per program and printed. Here it is a handful in hundreds of thousands.
    st = report["stats"]
    events = sum(st[k] for k in ("pagecache_added", "kernel_pages_allocated", "kernel_pages_freed",
                                 "objects_allocated", "objects_freed"))
    assert report["lost_events"] <= 0.001 * events, (report["lost_events"], events)


def test_interrupts_inside_our_programs_are_not_lost(live_like_stack, tmp_path, loader):
    """A page freed by an interrupt while our own tp_btf mm_page_free program runs on that
    CPU is skipped by the kernel (prog->active); the program's nested twin runs it
    instead (bpf/footprint.bpf.c). Cold reads of the loop stack for 10 s: next to none
    lost."""
    if loader != "libbpf":
        pytest.skip("tp_btf programs are the libbpf loader's")
    s = live_like_stack
    rec = tmp_path / "rec.jsonl"
    proc = start_recorder(rec, extra=["--no-inventory"], loader=loader)
    try:
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:
            drop_caches()
            for f in s["files"]:
                read_part(f, 0, 16)
    finally:
        stop_recorder(proc)
    report = report_json(rec, loader=loader)
    if not report["recording"]["programs"].startswith("6 tp_btf"):
        pytest.skip(f"no tp_btf programs here: {report['recording']['programs']}")
    st = report["stats"]
    seen = {k: v for k, v in st.items() if k.startswith(("lost", "nested")) and v}
    # 7-17 were lost in these 10 s with one twin that ran only inside the body, 136 in
    # the bench's 20 s with none. Still possible: a kfree the kernel skipped whose address
    # a stale note holds (its last twin was itself skipped once): 0-3 seen.
    assert report["lost_events"] <= 5, seen


def test_inventory_makes_resident_right_at_attach(live_like_stack, tmp_path, loader):
    """Pages read before the tracer attached come from the baseline inventory."""
    s = live_like_stack
    drop_caches()
    read_part(s["files"][0], 2, 6)
    read_part(s["files"][2], 0, 16)
    rec = tmp_path / "rec.jsonl"
    proc = start_recorder(rec, loader=loader)
    try:
        read_part(s["files"][1], 0, 4)  # and some traced on top
        time.sleep(1.0)
        truths = ground_truth([s["squash"], s["inner"], *s["files"]])
    finally:
        stop_recorder(proc)
    report = report_json(rec, loader=loader)
    assert assert_matches_ground_truth(report, truths) >= 4
    files = by_file(report)
    inventoried = files[key_of(s["files"][2])]
    assert inventoried["baseline_pages"] > 0
    assert any("inventoried" in n for n in report["notes"])


def test_topology_shows_the_stack(live_like_stack):
    out = subprocess.run(FOOTPRINT + ["topology"], check=True, capture_output=True, text=True).stdout
    lo_a, lo_b = (os.path.basename(x) for x in live_like_stack["loops"])
    assert f"ext4 on {lo_b}" in out
    assert f"squashfs on {lo_a}" in out
    assert "rootfs.img" in out and "squashfs.img" in out


def test_uevents_land_on_the_recording_clock(tmp_path, loader):
    """A loop device configured while recording: its uevents are in the recording, on the
    samples' clock, and the topology is re-read (the recording stays readable)."""
    rec = tmp_path / "rec.jsonl"
    img = tmp_path / "img"
    img.write_bytes(b"\0" * (4 << 20))
    proc = start_recorder(rec, extra=("--no-inventory",), loader=loader)
    lo = None
    try:
        lo = subprocess.run(["losetup", "-f", "--show", str(img)], check=True, capture_output=True,
                            text=True).stdout.strip()
        time.sleep(1.5)
    finally:
        if lo:
            subprocess.run(["losetup", "-d", lo], check=False)
        stop_recorder(proc)
    from tracer import recording

    r = recording.read(str(rec))
    mine = [u for u in r.uevents if u.get("DEVNAME") == os.path.basename(lo)]
    assert mine, r.uevents[:3]
    assert r.samples[0]["t"] <= mine[0]["t"] <= r.samples[-1]["t"]
    assert len(r.topologies) >= 2


HOG = ("import os\n"
       "open('/proc/self/oom_score_adj', 'w').write('1000')\n"
       "hold = []\n"
       "while True:\n"
       "    hold.append(bytearray(8 << 20))\n")


def _memory_cgroup(name: str, limit: int) -> tuple[str, str]:
    """A memory cgroup limited to `limit` bytes without swap (v2 where its memory
    controller is enabled, else v1); returns (its directory, its cgroup.procs)."""
    v2, v1 = "/sys/fs/cgroup", "/sys/fs/cgroup/memory"
    try:
        on_v2 = "memory" in open(os.path.join(v2, "cgroup.controllers")).read().split()
    except OSError:
        on_v2 = False
    if on_v2:
        limits = {"memory.max": limit, "memory.swap.max": 0}
        d = os.path.join(v2, name)
    elif os.path.exists(os.path.join(v1, "memory.limit_in_bytes")):
        limits = {"memory.limit_in_bytes": limit}
        d = os.path.join(v1, name)
    else:
        pytest.skip("no memory cgroup controller (v1 or v2) to contain an OOM")
    os.makedirs(d, exist_ok=True)
    for knob, value in limits.items():
        with open(os.path.join(d, knob), "w") as f:
            f.write(str(value))
    return d, os.path.join(d, "cgroup.procs")


def test_oom_victim_is_recorded(tmp_path, loader):
    """An OOM kill while recording (here a memory cgroup's: the same mark_victim event as
    the whole machine's) lands in the recording with the victim's pid and name, and the
    report says so; the recording itself goes on and ends cleanly."""
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF and make a cgroup")
    d, procs = _memory_cgroup(f"footprint-test-oom-{os.getpid()}", 48 << 20)
    rec = tmp_path / "rec.jsonl"
    proc = start_recorder(rec, ["--no-inventory"], loader=loader)
    try:
        t_before = time.clock_gettime(time.CLOCK_BOOTTIME)
        hog = subprocess.Popen([sys.executable, "-c", "import os, sys; "
                                f"open({procs!r}, 'w').write(str(os.getpid())); "
                                f"exec({HOG!r})"], stderr=subprocess.DEVNULL)
        hog.wait(timeout=120)
        t_after = time.clock_gettime(time.CLOCK_BOOTTIME)
        time.sleep(1.0)  # a sample after the kill
    finally:
        stop_recorder(proc)
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except OSError:
                time.sleep(0.1)
    assert hog.returncode == -signal.SIGKILL, hog.returncode
    report = report_json(rec, loader=loader)
    victims = [v for v in report["oom"] if v["pid"] == hog.pid]
    assert victims, report["oom"]
    assert victims[0]["comm"].startswith("python"), victims
    assert t_before < victims[0]["t"] < t_after, (t_before, victims, t_after)  # the boot clock
    assert report["stats"]["oom_kills"] >= 1 and report["recording"]["oom_kills"] >= 1
    assert not report["recording"]["partial"]
    text = subprocess.run(FOOTPRINT + ["report", str(rec)], check=True, capture_output=True,
                          text=True).stdout
    assert re.search(rf"OOM killer: \d+ victims? while recording: .*pid {hog.pid} python", text), text
