"""The kernel baseline (bpf/baseline.bpf.c through tracer/baseline.py) on this machine's
own kernel: every cached inode of every superblock, each file's pages equal to what
cachestat(2)/mincore(2) say for it, in well under 2 s for 200 000 files — including what
a walk of paths cannot reach (a file deleted while open, a lazily unmounted file
system). Needs root, kernel BTF, clang/bpftool/libbpf-dev to build the object."""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracer import baseline as B
from tracer import inventory as I
from tracer.errors import FootprintError

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parent.parent
FILES = 200_000
PAGE = mmap.PAGESIZE


def kdev(st_dev: int) -> int:
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def cached(fd: int) -> int:
    """The kernel's count for one open file: cachestat (6.5+), else mincore."""
    cs = I.cachestat(fd)
    if cs is not None:
        return cs["nr_cache"]
    return I.mincore_pages(fd, os.fstat(fd).st_size) or 0


def close_enough(a: int, b: int) -> bool:
    return abs(a - b) <= max(1, b // 100)


@pytest.fixture(scope="module")
def built():
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF and mount")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no kernel BTF")
    for tool in ("clang", "bpftool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install clang bpftool libbpf-dev)")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-bpf")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    why = B.unavailable()
    if why:
        pytest.skip(why)


def _mount_ext4(img: Path, mnt: Path, size_mib: int) -> None:
    with open(img, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)


def _pin(path: Path):
    """Read a file into the page cache and keep it mapped: mapped pages survive a
    drop_caches from whatever else runs on this machine (invalidate_mapping_pages skips
    mapped folios), so the kernel's count holds still while the test compares."""
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    for off in range(0, size, PAGE):
        mm[off]
    return fd, mm


@pytest.fixture(scope="module")
def machine(built, tmp_path_factory):
    """A tmpfs holding 200 000 small files (1-3 pages each; tmpfs pages cannot be
    dropped), and a loop-mounted ext4 holding one 200 MiB file, read and pinned."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    top = tmp_path_factory.mktemp("baseline")
    tree, ext = top / "tree", top / "ext"
    tree.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3g,nr_inodes=0", "fp-baseline", str(tree)],
                   check=True)
    mounts, pins = [tree], []
    try:
        for d in range(FILES // 1000):
            sub = tree / str(d)
            sub.mkdir()
            for i in range(1000):
                fd = os.open(sub / str(i), os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, b"x" * (1 + (i * 37) % (3 * PAGE - 1)))
                os.close(fd)
        _mount_ext4(top / "ext.img", ext, 400)
        mounts.append(ext)
        large = ext / "large"
        with open(large, "wb") as f:
            for _ in range(200):
                f.write(os.urandom(1 << 20))
        pins.append(_pin(large))
        yield {"tree": tree, "ext": ext, "large": large, "top": top}
    finally:
        for fd, mm in pins:
            mm.close()
            os.close(fd)
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", str(m)], check=False)


def _by_key(rows):
    return {(r["dev"], r["ino"]): r for r in rows}


def test_finds_every_file_under_2_s_each_as_the_kernel_counts_it(machine):
    t0 = time.monotonic()
    inv = B.kernel_inventory()
    took = time.monotonic() - t0
    assert took < 2.0, f"the kernel baseline took {took:.2f} s"
    stats = inv["stats"]
    assert not stats["dropped"] and not stats["torn"] and not stats["capped"]
    rows = _by_key(inv["rows"])
    assert all(r["method"] == "kernel" and r["path"] is None for r in inv["rows"])
    seen = wrong = 0
    for dirpath, _dirs, names in os.walk(machine["tree"]):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                st, want = os.fstat(fd), cached(fd)
            finally:
                os.close(fd)
            r = rows.get((f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino))
            assert r is not None, f"{dirpath}/{name} not found"
            assert r["fstype"] == "tmpfs" and "swapped_pages" in r
            seen += 1
            wrong += not close_enough(r["resident_pages"], want)
    assert seen == FILES and wrong == 0
    fd = os.open(machine["large"], os.O_RDONLY)
    try:
        st, want = os.fstat(fd), cached(fd)
    finally:
        os.close(fd)
    assert want == 200 * 256
    r = rows[(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino)]
    assert r["fstype"] == "ext4" and close_enough(r["resident_pages"], want)


def test_sum_matches_meminfo(machine):
    """Sum of nrpages over every inode = NR_FILE_PAGES less the swap cache = Cached +
    Buffers. Other work on this machine moves meminfo meanwhile: 2 %."""
    inv = B.kernel_inventory()
    s = inv["stats"]
    after = B.meminfo_pages()
    want = (s["cached_buffers_pages"] + after["Cached"] + after["Buffers"]) / 2
    assert abs(s["pages_found"] - want) <= 0.02 * want, s


def test_block_devices_are_rows_of_the_bdev_file_system(machine):
    """A block device's own cache (Buffers) is the bdev inode whose i_ino is the dev_t."""
    dev = subprocess.run(["findmnt", "-no", "SOURCE", str(machine["ext"])], check=True,
                         capture_output=True, text=True).stdout.strip()
    st = os.stat(dev)
    fd = os.open(dev, os.O_RDONLY)
    try:
        os.read(fd, 1 << 20)
        want = cached(fd)
        inv = B.kernel_inventory()
    finally:
        os.close(fd)
    bdev = [r for r in inv["rows"] if r["what"] == "bdev"
            and r["block_dev"] == f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"]
    assert len(bdev) == 1 and bdev[0]["fstype"] == "bdev"
    assert bdev[0]["resident_pages"] >= min(want, 256)


def test_a_file_deleted_while_open_is_found(machine):
    p = machine["ext"] / "deleted"
    p.write_bytes(os.urandom(8 << 20))
    fd, mm = _pin(p)
    try:
        st = os.fstat(fd)
        p.unlink()
        want = cached(fd)
        rows = _by_key(B.kernel_inventory()["rows"])
        r = rows.get((f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino))
        assert r is not None and r.get("unlinked") is True
        assert want == 2048 and close_enough(r["resident_pages"], want)
    finally:
        mm.close()
        os.close(fd)


def test_a_lazily_unmounted_file_system_is_found(machine):
    """umount -l detaches the mount; the superblock stays on super_blocks while a file
    on it is open, with its page cache, and no path leads there any more."""
    mnt = machine["top"] / "lazy"
    _mount_ext4(machine["top"] / "lazy.img", mnt, 64)
    p = mnt / "kept"
    p.write_bytes(os.urandom(16 << 20))
    fd, mm = _pin(p)
    try:
        st = os.fstat(fd)
        subprocess.run(["umount", "-l", str(mnt)], check=True)
        assert not os.path.ismount(mnt)
        want = cached(fd)
        inv = B.kernel_inventory()
        key = (f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino)
        r = _by_key(inv["rows"]).get(key)
        assert r is not None and r["fstype"] == "ext4"
        assert want == 4096 and close_enough(r["resident_pages"], want)
    finally:
        mm.close()
        os.close(fd)


def test_the_walk_from_the_super_blocks_head_is_the_walk_from_the_root(machine):
    """With CONFIG_KALLSYMS_ALL (Debian's 6.1) the walk starts at &super_blocks; here
    (no KALLSYMS_ALL) the head the root-started walk met stands in for it."""
    rooted = B.kernel_walk()
    assert rooted["summary"]["from_root"] and rooted["summary"]["head_seen"]
    headed = B.kernel_walk(sb_head=rooted["summary"]["head_seen"])
    assert not headed["summary"]["from_root"] and not headed["summary"]["torn"]
    assert sorted(sb[0] for sb in headed["superblocks"]) == sorted(sb[0] for sb in rooted["superblocks"])
    assert headed["summary"]["records"] > FILES


def test_records_that_do_not_fit_are_walked_again_with_room(machine):
    walk = B.kernel_walk(records=1000)
    s = walk["summary"]
    assert s["dropped"] == 0 and s["records"] > FILES and s["records_room"] > FILES


def test_a_superblock_past_the_loop_cap_is_flagged_not_looped(machine):
    walk = B.kernel_walk(max_inodes=1000)
    assert walk["summary"]["capped"]
    capped = [sb for sb in walk["superblocks"] if sb[4] & B.REC_CAPPED]
    assert capped and all(sb[1] == 1000 for sb in capped)


def test_take_chooses_and_says_which(machine, monkeypatch):
    walked = []

    def walk():
        walked.append(1)
        return {"rows": [{"dev": "1:2", "ino": 3, "resident_pages": 5}], "stats": {}}

    assert B.take("none", walk) is None
    r = B.take("auto", walk)
    assert r["stats"]["baseline"] == "kernel" and not walked
    assert 0.9 < r["stats"]["completeness"] < 1.1
    r = B.take("walk", walk)
    assert r["stats"]["baseline"] == "walk" and r["stats"]["pages_found"] == 5
    monkeypatch.setattr(B, "object_path", lambda: None)
    logged = []
    r = B.take("auto", walk, log=logged.append)
    assert r["stats"]["baseline"] == "walk" and "not built" in r["stats"]["kernel_refused"]
    assert logged and "walking paths" in logged[0]
    with pytest.raises(FootprintError, match="--baseline kernel cannot run here"):
        B.take("kernel", walk)
    with pytest.raises(FootprintError, match="unknown --baseline"):
        B.take("fast", walk)


def test_no_inventory_with_another_baseline_is_one_line_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tracer", "record", "-o", str(tmp_path / "r"),
                          "--no-inventory", "--baseline", "kernel"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "contradicts" in out.stderr


def test_record_takes_the_kernel_baseline_and_the_report_says_so(machine, tmp_path):
    """End to end: `footprint record --baseline kernel` writes an inventory of method
    "kernel" holding the tree's files, and the text report prints the one line."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("bcc is not importable here (scripts/setup)")
    out = tmp_path / "r.jsonl"
    done = subprocess.run([sys.executable, "-m", "tracer", "record", "-o", str(out), "-d", "1",
                           "--baseline", "kernel"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    import json

    inv = [json.loads(line) for line in out.read_text().splitlines()
           if '"type": "inventory"' in line or '"type":"inventory"' in line]
    assert len(inv) == 1 and inv[0]["method"] == "kernel"
    assert inv[0]["stats"]["baseline"] == "kernel" and len(inv[0]["files"]) >= FILES
    report = subprocess.run([sys.executable, "-m", "tracer", "report", str(out)],
                            capture_output=True, text=True, cwd=ROOT, check=True).stdout
    line = [ln for ln in report.splitlines() if ln.startswith("baseline at attach:")]
    assert len(line) == 1 and "kernel per-inode counts" in line[0] and "% of Cached+Buffers" in line[0]
