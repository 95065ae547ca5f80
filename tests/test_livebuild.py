"""footprint attached at run time to a Debian Live session made by live-build (issue #17).

The lab's `livebuild` variant (vm/livebuild.py): live-boot mounts the ISO's squashfs as
the lower layer of an overlayfs root whose upper layer is a tmpfs. In the running
session: several hundred MiB are cached (files of the squashfs read through the overlay
root, files written to the upper), `footprint record` is attached, more is read and
written while it records a few seconds, then every superblock's page cache is read from
kernel memory by tests/pagecache_truth.py (helper overlay-baseline's; no code shared with
the tracer) and the recording's sample nearest that moment is held against it: the
squashfs layer, the upper tmpfs (also against the tmpfs's own count, statfs), every other
superblock, and each file first cached while recording.

Boots a guest under TCG: run as `flock /var/tmp/fp-guest.lock python -m pytest ...`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import qemu_skip_reason


HERE = Path(__file__).resolve().parent
PAGE_MIB = 4096 / (1 << 20)
# One guest python: read regular files under ROOT in a fixed order until N MiB were read
# (through the overlay root, so from the squashfs), skipping files listed in DONE. It stays
# on ROOT's file system: live-boot bind-mounts /run/live at /usr/lib/live/mount, so /usr
# holds the ISO itself (filesystem.squashfs, on iso9660) too.
READ = r'''
import os, sys
root, mib, done_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dev = os.lstat(root).st_dev
try:
    done = set(open(done_path).read().split("\0"))
except OSError:
    done = set()
want, got, new = mib << 20, 0, []
for d, dirs, files in os.walk(root):
    # (directories of an overlay have its st_dev; its files that of their layer)
    dirs[:] = sorted(x for x in dirs if os.lstat(os.path.join(d, x)).st_dev == dev)
    for f in sorted(files):
        p = os.path.join(d, f)
        if p in done or os.path.islink(p) or not os.path.isfile(p):
            continue
        with open(p, "rb") as fh:
            while True:
                b = fh.read(1 << 20)
                if not b:
                    break
                got += len(b)
        new.append(p)
        if got >= want:
            break
    if got >= want:
        break
with open(done_path, "a") as fh:
    fh.write("".join(p + "\0" for p in new))
print(got >> 20, len(new))
'''
BEFORE_READ_MIB, BEFORE_WRITE_MIB = 256, 64
AFTER_READ_MIB, AFTER_WRITE_MIB = 96, 32


def _write(g, path: str, mib: int) -> None:
    g.run(f"head -c {mib << 20} /dev/urandom > {path}", timeout=600, check=True)


def test_the_variant_boots_its_own_kernel_and_attaches_at_run_time(tmp_path):
    """No guest: the registration (vm/images.py) and the BootSpec of a built step."""
    from vm import images

    for name, data in (("livebuild.iso", b"\0" * 4096), ("vmlinuz", b"k"), ("initrd.img", b"i"),
                       ("kver", b"6.1.0-57-amd64\n"), ("squashfs.bytes", b"123\n")):
        (tmp_path / name).write_bytes(data)
    assert images.variant_names("plain,livebuild") == ["plain", "livebuild"]
    art = images.Artefacts(tmp_path, None, None, None, others={"livebuild": tmp_path})
    spec = images.spec_for("livebuild", art, traced=True, append="rd.footprint.stop=never")
    assert spec.kernel == tmp_path / "vmlinuz" and spec.initrd == tmp_path / "initrd.img"
    assert spec.append.startswith("boot=live components ") and spec.kver == "6.1.0-57-amd64"
    assert f"file={tmp_path / 'livebuild.iso'}" in " ".join(spec.qemu_args)
    # traced means attached in the running session: no dracut initramfs, no code cpio
    assert spec.traced and spec.extra["attach"] and spec.initrd_append == []


def _mount_of(path: str, mountinfo: str) -> dict:
    """The innermost mount holding `path`, from /proc/self/mountinfo's text."""
    best: dict = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        mp = f[4].replace("\\040", " ")
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best.get("mount", "")):
            best = {"mount": mp, "dev": f[2], "fstype": r[0], "options": f[5] + "," + (r[2] if len(r) > 2 else "")}
    return best


def _layers(mountinfo: str) -> dict:
    """{"root", "lower", "upper"}: the overlay root and the mounts of its layers."""
    root = _mount_of("/", mountinfo)
    opts = dict(o.split("=", 1) for o in root["options"].split(",") if "=" in o)
    return {"root": root, "lower": _mount_of(opts["lowerdir"].split(":")[0].rstrip("/"), mountinfo),
            "upper": _mount_of(opts["upperdir"], mountinfo)}


@pytest.fixture(scope="module")
def session(tmp_path_factory, lab_cache):
    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("lb") is None:
        pytest.skip("no live-build: apt-get install live-build (scripts/setup does)")
    from vm import livebuild
    from vm.qemu import Guest

    # FP_LIVEBUILD_KEEP=DIR keeps the recording, the truth and the logs
    out = Path(os.environ.get("FP_LIVEBUILD_KEEP") or tmp_path_factory.mktemp("livebuild"))
    out.mkdir(parents=True, exist_ok=True)
    spec = livebuild.spec(livebuild.build(lab_cache))
    facts: dict = {}
    with Guest(spec, memory=2048, timeout=3600, cache_dir=lab_cache,
               log=out / "serial.log") as g:
        facts["ready_s"] = g.wait_ready(1200)
        facts["state"] = g.wait_system(1200)
        facts["multi_user_s"] = time.monotonic() - g.started_at
        g.put_file("/run/fp-read.py", READ.encode())
        g.put_file("/run/pagecache_truth.py", (HERE / "pagecache_truth.py").read_bytes())
        facts["mountinfo"] = g.get_file("/proc/self/mountinfo").decode(errors="replace")
        # before attach: the kernel baseline must find these
        rc, o, e = g.run(["python3", "/run/fp-read.py", "/usr", str(BEFORE_READ_MIB), "/run/fp-done"],
                         timeout=1800)
        assert rc == 0, e
        facts["read_before"] = o.decode().split()
        _write(g, "/root/fp-before.bin", BEFORE_WRITE_MIB)
        _, klog_before, _ = g.run("dmesg", timeout=60)
        t0 = time.monotonic()
        facts["attach"] = livebuild.attach(g)
        facts["attach_wall_s"] = time.monotonic() - t0
        # while recording: tracing must follow these
        rc, o, e = g.run(["python3", "/run/fp-read.py", "/usr", str(AFTER_READ_MIB), "/run/fp-done"],
                         timeout=1800)
        assert rc == 0, e
        facts["read_after"] = o.decode().split()
        _write(g, "/root/fp-after.bin", AFTER_WRITE_MIB)
        time.sleep(3)  # a few samples
        rc, truth, e = g.run(["python3", "/run/pagecache_truth.py", "--inodes"], timeout=1800)
        assert rc == 0, e
        upper = _layers(facts["mountinfo"])["upper"]["mount"]
        _, statfs, _ = g.run(["stat", "-f", "-c", "%b %f %S", upper], timeout=60)
        g.run(f"touch {livebuild.RUN}/stop", timeout=60)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            rc, _, _ = g.run(f"grep -q '\"type\":\"end\"' {livebuild.RUN}/recording.jsonl", timeout=60)
            if rc == 0:
                break
            time.sleep(2)
        g.get_file(f"{livebuild.RUN}/recording.jsonl", out / "recording.jsonl", timeout=600)
        g.get_file(f"{livebuild.RUN}/recorder.log", out / "recorder.log")
        _, klog_after, _ = g.run("dmesg", timeout=60)
        g.shutdown()
    blocks, free, size = (int(x) for x in statfs.split())
    facts["upper_statfs_pages"] = (blocks - free) * size // 4096
    facts["klog_before"] = klog_before.decode(errors="replace").splitlines()
    facts["klog_after"] = klog_after.decode(errors="replace").splitlines()
    truth = json.loads(truth.decode().strip().splitlines()[-1])
    (out / "truth.json").write_text(json.dumps(truth))
    (out / "facts.json").write_text(json.dumps(facts))
    return out, truth, facts


def _account_at(out: Path, t: float):
    """The account at the sample nearest to boottime `t` (the truth's moment)."""
    from tracer import account, recording

    rec = recording.read(str(out / "recording.jsonl"))
    ts = [x["t"] for x in rec.samples]
    i = min(range(len(ts)), key=lambda k: abs(ts[k] - t))
    return account.build(rec, i), ts[i] - t


def _ours(acc, dev: str) -> int:
    return int(acc.files.loc[acc.files["dev"] == dev, "resident_pages"].sum())


@pytest.mark.qemu
def test_the_session_is_a_live_boot_overlay(session):
    out, truth, facts = session
    assert facts["state"] in ("running", "degraded"), facts["state"]
    lay = _layers(facts["mountinfo"])
    assert lay["root"]["fstype"] == "overlay", lay
    assert lay["lower"]["fstype"] == "squashfs" and lay["lower"]["mount"].startswith("/run/live/"), lay
    assert lay["upper"]["fstype"] == "tmpfs", lay
    sb = truth["superblocks"]
    low, up = sb[lay["lower"]["dev"]]["pages"], sb[lay["upper"]["dev"]]["pages"]
    # several hundred MiB cached in the two layers, read and written as above
    assert (low + up) * PAGE_MIB >= BEFORE_READ_MIB + AFTER_READ_MIB, (low, up)
    assert up * PAGE_MIB >= BEFORE_WRITE_MIB + AFTER_WRITE_MIB, up
    print(f"livebuild: multi-user after {facts['multi_user_s']:.0f} s, recorder attached in "
          f"{facts['attach_wall_s']:.1f} s; squashfs {low * PAGE_MIB:.1f} MiB, upper "
          f"{up * PAGE_MIB:.1f} MiB, all page cache {truth['pages'] * PAGE_MIB:.1f} MiB")


@pytest.mark.qemu
def test_squashfs_layer_matches_the_kernel(session):
    out, truth, facts = session
    import pagecache_truth as P

    acc, dt = _account_at(out, truth["time"])
    dev = _layers(facts["mountinfo"])["lower"]["dev"]
    ours, theirs = _ours(acc, dev), truth["superblocks"][dev]["pages"]
    print(f"squashfs {dev}: footprint {ours} pages, kernel {theirs} (sample {dt:+.2f} s)")
    assert not P.compare({dev: ours}, {dev: theirs}), (ours, theirs)


@pytest.mark.qemu
def test_upper_tmpfs_matches_the_kernel(session):
    out, truth, facts = session
    import pagecache_truth as P

    acc, dt = _account_at(out, truth["time"])
    dev = _layers(facts["mountinfo"])["upper"]["dev"]
    ours, theirs = _ours(acc, dev), truth["superblocks"][dev]["pages"]
    print(f"upper tmpfs {dev}: footprint {ours} pages, kernel {theirs}, statfs "
          f"{facts['upper_statfs_pages']} (sample {dt:+.2f} s)")
    # two counts of the kernel's agree (the tmpfs's used blocks: every page it holds)...
    assert not P.compare({dev: facts["upper_statfs_pages"]}, {dev: theirs}), facts["upper_statfs_pages"]
    # ...and footprint with them
    assert not P.compare({dev: ours}, {dev: theirs}), (ours, theirs)


@pytest.mark.qemu
def test_every_superblock_matches_the_kernel(session):
    out, truth, _ = session
    import pagecache_truth as P

    acc, dt = _account_at(out, truth["time"])
    ours = {str(k): int(v) for k, v in acc.files.groupby("dev")["resident_pages"].sum().items()}
    sbs = truth["superblocks"]
    if "bdev" in ours:  # block devices' cache recorded before the bdev s_dev was learnt
        bdev = next(d for d, x in sbs.items() if x["fstype"] == "bdev")
        ours[bdev] = ours.get(bdev, 0) + ours.pop("bdev")
    bad = P.compare(ours, {d: x["pages"] for d, x in sbs.items() if x["pages"]})
    assert not bad, "\n".join(f"{d} {sbs.get(d, {}).get('fstype', '?')}: footprint {o}, kernel {k}"
                              for d, o, k in bad)


@pytest.mark.qemu
def test_files_read_after_attach_were_traced_to_the_page(session):
    """The squashfs files first cached while recording: each as the kernel counts it."""
    out, truth, facts = session
    acc, _ = _account_at(out, truth["time"])
    dev = _layers(facts["mountinfo"])["lower"]["dev"]
    f = acc.files[(acc.files["dev"] == dev) & (acc.files["source"] == "traced")]
    assert len(f) > 5, len(f)
    per = truth["superblocks"][dev]["files"]
    wrong = [(r.ino, r.resident_pages, per.get(str(r.ino), 0)) for r in f.itertuples()
             if r.resident_pages != per.get(str(r.ino), 0)]
    assert len(wrong) <= 0.01 * len(f), wrong[:10]


@pytest.mark.qemu
def test_layers_are_named_as_the_user_sees_them(session):
    out, truth, facts = session
    acc, _ = _account_at(out, truth["time"])
    lay = _layers(facts["mountinfo"])
    low = acc.files[(acc.files["dev"] == lay["lower"]["dev"]) & (acc.files["subsystem"] != "tracer")]
    up = acc.files[acc.files["dev"] == lay["upper"]["dev"]]
    assert low["layer"].str.contains("overlay").all() and low["layer"].str.contains("lower").all(), \
        set(low["layer"])
    assert up["layer"].str.contains("upper").all(), set(up["layer"])
    # a file written to /root is shown where the user wrote it, not under /run/live/overlay/rw
    paths = set(up["path"].dropna())
    assert "/root/fp-before.bin" in paths and "/root/fp-after.bin" in paths, sorted(paths)[:20]


@pytest.mark.qemu
def test_attaching_leaves_no_line_in_the_kernel_log(session):
    _, _, facts = session
    before, after = facts["klog_before"], facts["klog_after"]
    new = after[len(before):] if after[:len(before)] == before else after
    assert not new, "the kernel log gained:\n" + "\n".join(new[-20:])
