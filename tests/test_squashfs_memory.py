"""squashfs's own memory on this machine's kernel (issue #16): four small images (xz and
zstd, 128 KiB and 1 MiB blocks) loop-mounted while recording. Their decompressor
workspaces must land in squashfs's row (the xz dictionaries are vmalloc'ed by lib/xz, so
/proc/vmallocinfo names xz_dec_lzma2_create, not squashfs: the stack says squashfs), and
the caches and workspaces must be within 5 % of the kernel's own formula
(tracer.squashfs.squashfs_prediction, from fs/squashfs), which is checked first against
/proc/vmallocinfo while the images are mounted. The images' block size, compressor and
fragment count come from unsquashfs -s (squashfs-tools), not from footprint."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tracer.squashfs import decompressor_mode, squashfs_prediction

pytestmark = pytest.mark.bpf

FOOTPRINT = [sys.executable, "-m", "tracer"]
IMAGES = (("xz", 128 << 10), ("xz", 1 << 20), ("zstd", 128 << 10), ("zstd", 1 << 20))


def _skip_unless_able():
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount, BPF)")
    for tool in ("mksquashfs", "unsquashfs", "losetup"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup installs squashfs-tools)")
    if not os.path.exists("/sys/kernel/tracing/events/vmalloc/alloc_vmap_area"):
        pytest.skip("no vmalloc tracepoints (kernels before 6.3): areas are named by caller")
    if decompressor_mode() is None:
        pytest.skip("the kernel's config is not readable: its squashfs mode is unknown")


def _superblock(img) -> dict:
    """Block size, compressor and fragment count as squashfs-tools reads them."""
    out = subprocess.run(["unsquashfs", "-s", str(img)], check=True, capture_output=True,
                         text=True).stdout
    return {"block_size": int(re.search(r"Block size (\d+)", out).group(1)),
            "compressor": re.search(r"Compression (\w+)", out).group(1),
            "fragments": int(re.search(r"Number of fragments (\d+)", out).group(1))}


def _cpus(path) -> int:
    n = 0
    for part in open(path).read().strip().split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


@pytest.fixture(scope="module")
def images():
    """The four images (and what unsquashfs says of each), in /var/tmp, removed after."""
    _skip_unless_able()
    base = Path(tempfile.mkdtemp(prefix="fp-squashfs-", dir="/var/tmp"))
    src = base / "src"
    src.mkdir()
    rnd = os.urandom(1 << 20)
    for i in range(6):  # incompressible blocks and a few tails: fragments
        (src / f"f{i}").write_bytes(rnd[i * 1000:] + rnd[:i * 7000 + 3000])
    for i in range(40):
        (src / f"small{i}").write_bytes(os.urandom(5000 + 300 * i))
    out = []
    for comp, block in IMAGES:
        img = base / f"{comp}-{block}.sqfs"
        subprocess.run(["mksquashfs", str(src), str(img), "-comp", comp, "-b", str(block),
                        "-noappend", "-quiet", "-no-progress"], check=True, capture_output=True)
        out.append((img, _superblock(img)))
    yield out
    shutil.rmtree(base, ignore_errors=True)


def _predicted(sb: dict) -> dict:
    mode = decompressor_mode()
    ncpus = _cpus("/sys/devices/system/cpu/" + ("possible" if mode == "percpu" else "online"))
    return squashfs_prediction(sb["compressor"], sb["block_size"], ncpus, mode,
                               fragments=sb["fragments"])


def _vmallocinfo_pages(caller: str) -> int:
    return sum(int(m.group(1)) for m in re.finditer(
        rf"^\S+\s+\d+ {caller}\+\S+ pages=(\d+)", open("/proc/vmallocinfo").read(), re.M))


def test_squashfs_memory_is_squashfs_and_matches_the_formula(images, tmp_path):
    rec = tmp_path / "rec.jsonl"
    proc = subprocess.Popen(FOOTPRINT + ["record", "-o", str(rec), "--interval", "0.2"],
                            stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(__file__) + "/..")
    loops, mounts = [], []
    try:
        deadline = time.monotonic() + 120
        while '"type":"sample"' not in (rec.read_text(errors="replace") if rec.exists() else ""):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "recorder did not start within 120 s"
            time.sleep(0.2)
        before = {c: _vmallocinfo_pages(c) for c in ("xz_dec_lzma2_create", "zstd_init")}
        for img, _sb in images:
            loop = subprocess.run(["losetup", "-f", "--show", "-r", str(img)], check=True,
                                  capture_output=True, text=True).stdout.strip()
            loops.append(loop)
            mnt = tmp_path / f"m{len(mounts)}"
            mnt.mkdir()
            subprocess.run(["mount", "-t", "squashfs", "-o", "ro", loop, str(mnt)], check=True)
            mounts.append(mnt)
        # The kernel's own view first: the formula's workspaces are what vmallocinfo shows.
        for comp, caller in (("xz", "xz_dec_lzma2_create"), ("zstd", "zstd_init")):
            want = sum(_predicted(sb)["decompressors"] * _predicted(sb)["workspace_vmalloc"]
                       for _img, sb in images if sb["compressor"] == comp)
            got = (_vmallocinfo_pages(caller) - before[caller]) * 4096
            assert got == want, (comp, got, want)
        time.sleep(1.5)  # a few samples with everything mounted
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        for mnt in reversed(mounts):
            subprocess.run(["umount", str(mnt)])
        for loop in loops:
            subprocess.run(["losetup", "-d", loop])

    report = json.loads(subprocess.run(FOOTPRINT + ["report", "--json", str(rec)], check=True,
                                       capture_output=True, text=True,
                                       cwd=os.path.dirname(__file__) + "/..").stdout)
    rows = report["account"]
    for comp in ("xz", "zstd"):
        want = sum(_predicted(sb)["decompressors"] * _predicted(sb)["workspace_vmalloc"]
                   for _img, sb in images if sb["compressor"] == comp)
        got = sum(r["resident_pages"] * 4096 for r in rows if r["subsystem"] == "squashfs"
                  and r["layer"] == f"vmalloc via {comp}")
        assert abs(got - want) <= 0.05 * want, (comp, got, want, rows)
    # lib/xz's own kmalloc'ed state (struct xz_dec_lzma2 and friends) is squashfs's too.
    want = sum(_predicted(sb)["decompressors"] * _predicted(sb)["workspace_kmalloc"]
               for _img, sb in images if sb["compressor"] == "xz")
    got = sum(r["resident_pages"] * 4096 for r in rows
              if r["subsystem"] == "squashfs" and r["layer"] == "kmalloc via xz")
    assert abs(got - want) <= 0.05 * want, (got, want)
    # lib/xz's areas are not left with the library's name.
    assert not any(r["subsystem"].startswith("kernel") and "xz_dec" in r["layer"] for r in rows)

    view = report["squashfs"]
    want_caches = sum(_predicted(sb)["caches"] for _img, sb in images)
    assert len(view["mounts"]) == len(images)
    assert view["predicted_caches"] == want_caches
    assert abs(view["traced_caches"] - want_caches) <= 0.05 * want_caches, view
    squashfs_slab = sum(r["resident_pages"] * 4096 for r in rows
                        if r["subsystem"] == "squashfs" and r["layer"] == "kmalloc objects")
    assert squashfs_slab >= 0.95 * want_caches, (squashfs_slab, want_caches)
    by_mode = {m["mode"] for m in view["mounts"]}
    assert by_mode == {decompressor_mode()}
    assert sorted((m["compressor"], m["block_size"]) for m in view["mounts"]) == sorted(IMAGES)
