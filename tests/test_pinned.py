"""The account kept with no process: `record --pin` (libbpf) leaves the programs attached
and the maps in bpffs when the recorder exits; `report --pinned` reads them (a file read
after the recorder is gone is counted, as cachestat counts it); `unpin` detaches them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracer import pinned

pytestmark = [pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load and pin BPF")]
REPO = Path(__file__).resolve().parent.parent
FOOTPRINT = [sys.executable, "-m", "tracer"]


def _run(*args, **kw):
    return subprocess.run(FOOTPRINT + list(args), capture_output=True, text=True, cwd=REPO,
                          timeout=300, **kw)


def _prog_ids() -> set[int]:
    from tracer.bpfmaps import obj_get

    ids = set()
    for name in os.listdir(pinned.PIN_DIR):
        if name.startswith("prog-"):
            fd = obj_get(f"{pinned.PIN_DIR}/{name}")
            with open(f"/proc/self/fdinfo/{fd}") as f:
                ids |= {int(ln.split()[1]) for ln in f if ln.startswith("prog_id:")}
            os.close(fd)
    return ids


def _prog_alive(prog_id: int) -> bool:
    return subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)],
                          capture_output=True).returncode == 0


@pytest.fixture
def no_pinned_account():
    if os.path.exists(pinned.PIN_DIR) or os.path.exists(pinned.META):
        pytest.skip(f"an account is pinned already ({pinned.PIN_DIR}): not ours to remove")
    done = subprocess.run(["bash", str(REPO / "scripts" / "build-bpf")], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    mounted = pinned._bpffs_mounted()
    yield
    pinned.unpin(quiet=True)
    if not mounted and pinned._bpffs_mounted():  # record --pin mounted it: leave none behind
        subprocess.run(["umount", pinned.BPFFS], check=False)


def test_pinned_account_outlives_the_recorder(tmp_path, no_pinned_account):
    rec = tmp_path / "boot.jsonl"
    p = _run("record", "--pin", "--loader", "libbpf", "-o", str(rec), "-d", "1",
             "--interval", "0.5", "--no-inventory")
    assert p.returncode == 0, p.stderr
    ids = _prog_ids()
    assert len(ids) >= 4 and all(_prog_alive(i) for i in ids), ids
    # A second pin is refused in one line while this one stands.
    again = _run("record", "--pin", "--loader", "libbpf", "-o", str(tmp_path / "b.jsonl"), "-d", "1")
    assert again.returncode == 2 and "footprint unpin" in again.stderr, again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr

    # Read after the recorder is gone: only the pinned programs can count it.
    late = Path("/var/tmp") / f"fp-pinned-{os.getpid()}"
    late.write_bytes(os.urandom(1 << 20) * 6)
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        late.read_bytes()
        rep = _run("report", "--pinned", "--json")
        assert rep.returncode == 0, rep.stderr
        report = json.loads(rep.stdout)
        st = late.stat()
        key = (f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino)
        got = {(f["dev"], f["ino"]): f["resident_pages"] for f in report["files"]}.get(key, 0)
        from tracer.inventory import cachestat

        fd = os.open(late, os.O_RDONLY)
        truth = cachestat(fd)["nr_cache"]
        os.close(fd)
    finally:
        late.unlink()
    assert truth > 1000 and abs(got - truth) <= max(1, truth // 100), (got, truth)
    assert report["recording"]["loader"] == "libbpf"
    assert report["map_drops"] == 0

    gone = _run("unpin")
    assert gone.returncode == 0 and "unpinned" in gone.stderr, gone.stderr
    assert not os.path.exists(pinned.PIN_DIR)
    deadline = time.monotonic() + 10  # programs are freed after an RCU grace period
    while any(_prog_alive(i) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_prog_alive(i) for i in ids), ids
    none = _run("report", "--pinned")
    assert none.returncode == 2 and "no account is pinned" in none.stderr, none.stderr


def test_pin_needs_libbpf(tmp_path, no_pinned_account):
    p = _run("record", "--pin", "--loader", "bcc", "-o", str(tmp_path / "r.jsonl"), "-d", "1",
             "--no-inventory")
    assert p.returncode == 2 and "--loader libbpf" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not os.path.exists(pinned.PIN_DIR)


@pytest.mark.parametrize("text", [
    '{"recording": "/x", "maps": [[1]]}',                                  # unhashable names
    '{"recording": "/x", "maps": ["../../etc/x", "files", "stats"]}',      # a path, not a name
    '{"recording": "/x", "maps": ["stats"]}',                              # no files map
    '{"recording": "/x", "maps": ["files", "stats"], "programs": 1}',
    '[' * 100000,                                                          # nesting
    '{"recording": "/x", "pad": "' + 'x' * (70 << 10) + '"}',              # too big
])
def test_a_corrupt_pin_note_is_one_line(text, no_pinned_account):
    """/run/footprint/pinned.json is read as data: whatever it holds, `report --pinned`
    says in one line that it is corrupt (exit 2), and names the fix."""
    os.makedirs(os.path.dirname(pinned.META), exist_ok=True)
    with open(pinned.META, "w") as f:
        f.write(text)
    try:
        p = _run("report", "--pinned")
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "footprint unpin" in lines[0], p.stderr
    finally:
        os.unlink(pinned.META)


def test_early_boot_entry_pins_and_exits(tmp_path, no_pinned_account):
    """tracer.boot as footprint-start runs it (--pin --ready-file): ready before its first
    sample, exits at the stop file leaving only the maps (memlock from fdinfo); snapshots
    of the pinned account chain into one timeline with a phase mark before each sample;
    a second early-boot recorder is refused in one line, exit 2."""
    from tracer import recording
    from tracer.snapshot import snapshot

    rec, stop, ready = tmp_path / "boot.jsonl", tmp_path / "stop", tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-S", "-m", "tracer.boot", "record", "-o", str(rec),
                          "--interval", "0.5", "--marks", str(tmp_path / "marks"), "--stop-file",
                          str(stop), "--pin", "--ready-file", str(ready)], env=env, cwd=tmp_path,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ready.exists() and p.poll() is None:
        time.sleep(0.1)
    assert ready.exists(), p.stderr.read() if p.poll() is not None else "not ready"
    time.sleep(1.5)
    stop.write_text("test\n")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    assert "ready at" in err and "symbols loaded at" in err, err
    assert all(_prog_alive(i) for i in _prog_ids())
    own = pinned.maps_memlock()
    assert {"files", "stats"} <= set(own) and all(v > 0 for v in own.values()), own

    from tracer.procfs import own_memory

    before = own_memory()["anon_kb"]
    first = snapshot(str(tmp_path / "m1.jsonl"), phase="one")
    second = snapshot(str(tmp_path / "m2.jsonl"), source=first, phase="two")
    chain = recording.read(second)
    boot = recording.read(str(rec))
    assert len(chain.samples) == len(boot.samples) + 2
    phases = [r for r in chain.phases if r["name"] in ("one", "two")]
    assert [r["name"] for r in phases] == ["one", "two"], chain.phases
    assert phases[0]["t"] <= chain.samples[-2]["t"] and phases[1]["t"] <= chain.samples[-1]["t"]
    # The reader is footprint's process: the sample carries its memory as it was read
    # (this process's, give or take what reading the maps took)
    assert abs(chain.samples[-2]["tracer"]["anon_kb"] - before) < 32 << 10, (chain.samples[-2], before)

    again = subprocess.run([sys.executable, "-S", "-m", "tracer.boot", "record", "-o",
                            str(tmp_path / "b.jsonl"), "--pin"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "already pinned" in again.stderr and not (tmp_path / "b.jsonl").exists(), again.stderr


def test_a_snapshot_counts_0_the_tmpfs_files_gone_since_the_recording():
    """The snapshot's tmpfs walk starts with no reference (it reads before the recording):
    a file the recording last counted and the walk, over the same file system, no longer
    finds is counted 0; one on a file system the walk did not cover is left alone."""
    import io

    from tracer.shmemsampler import file_changes
    from tracer.snapshot import _described

    lines = [{"type": "header"}, {"type": "sample", "shmem": {"0:25:7": 2, "0:25:8": 5, "0:25:9": 1}},
             {"type": "sample", "shmem": {"0:25:9": 0, "0:26:1": 4}}]
    _h, _s, _c, before = _described(io.StringIO("".join(json.dumps(x) + "\n" for x in lines)))
    sample = {"shmem": {"0:25:7": 3}, "shmem_devs": ["0:25"]}
    changed = file_changes(before, sample["shmem"], sample["shmem_devs"])[0]
    assert changed == {"0:25:7": 3, "0:25:8": 0}


def test_early_boot_recorder_makes_its_own_namespace_and_root(tmp_path):
    """tracer.boot --ns ROOT (what footprint-start passes): the recorder itself unshares
    its mount namespace and chroots into a tmpfs at ROOT holding binds of /proc, /sys,
    /dev, /run and the other top-level directories (tracer/bootns.py). Independent view:
    its /proc/PID/mountinfo (the tmpfs as its root) against ours (unchanged), and a
    recording whose samples read /proc from inside that root."""
    import tempfile

    from tracer import recording

    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="fp-ns-") as d:  # bound: /var
        rec, stop, ready, root = (f"{d}/{n}" for n in ("boot.jsonl", "stop", "ready", "root"))
        ours = Path("/proc/self/mountinfo").read_text()
        p = subprocess.Popen([sys.executable, "-S", "-m", "tracer.boot", "record", "-o", rec,
                              "--interval", "0.5", "--marks", f"{d}/marks", "--stop-file", stop,
                              "--ready-file", ready, "--ns", root],
                             env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=tmp_path,
                             stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not os.path.exists(ready) and p.poll() is None:
                time.sleep(0.1)
            assert os.path.exists(ready), p.stderr.read() if p.poll() is not None else "not ready"
            theirs = Path(f"/proc/{p.pid}/mountinfo").read_text()
            time.sleep(1.2)
            Path(stop).write_text("test\n")
            _, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 0 and "no namespace of its own" not in err, err[-2000:]
        root_line = next(ln for ln in theirs.splitlines() if ln.split()[4] == "/")
        assert " - tmpfs footprint-root " in root_line, theirs[:2000]
        mounted = {ln.split()[4] for ln in theirs.splitlines()}
        assert {"/proc", "/sys", "/dev", "/run", "/usr"} <= mounted, sorted(mounted)
        assert "footprint-root" not in Path("/proc/self/mountinfo").read_text()
        assert Path("/proc/self/mountinfo").read_text() == ours
        samples = recording.read(rec).samples
        assert len(samples) >= 2 and all(s["meminfo"].get("MemTotal") for s in samples)
