"""tmpfs files right at every sample, on this host's kernel (issue 15): shmem adds its
folios without the filemap add tracepoint (shmem_add_to_page_cache), so fallocated and
then written pages — the journal's pattern in /run — were missed; the recorder now takes
each tmpfs file's count from the kernel at each sample (tracer/shmemsampler.py). Checked
against cachestat(2) on a tmpfs mounted here, for files written, fallocated, truncated,
hole-punched and deleted while recording, and one resident before attach."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from conftest import cachestat_pages
from test_tracer_host import report_json, start_recorder, stop_recorder

pytestmark = [pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount and load BPF")]
MIB = 1 << 20


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "fp-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _write(path, mib, offset=0, fallocate_mib=0):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fallocate_mib:
            os.posix_fallocate(fd, 0, fallocate_mib * MIB)
        os.pwrite(fd, b"x" * (mib * MIB), offset)
    finally:
        os.close(fd)


def _key(path):
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino


def test_tmpfs_files_match_the_kernel_count(tmpfs, tmp_path):
    before = tmpfs / "before"       # resident at attach: the inventory's
    _write(before, 8)
    rec = tmp_path / "rec.jsonl"
    proc = start_recorder(rec)
    try:
        files = {
            "written": (tmpfs / "written", dict(mib=16)),
            # fallocated, then partly written: the pages past the write stay allocated
            "fallocated": (tmpfs / "fallocated", dict(mib=4, fallocate_mib=12)),
            "falloc-only": (tmpfs / "falloc-only", dict(mib=0, fallocate_mib=6)),
        }
        for path, how in files.values():
            _write(path, **how)
        os.truncate(before, 2 * MIB)                     # deletes fire the tracepoint
        punched = tmpfs / "punched"
        _write(punched, 8)
        fd = os.open(punched, os.O_RDWR)
        try:  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 MiB at 1 MiB
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.fallocate(fd, 3, ctypes.c_long(MIB), ctypes.c_long(2 * MIB)) == 0
        finally:
            os.close(fd)
        gone = tmpfs / "gone"
        _write(gone, 4)
        gone_key = _key(gone)
        os.unlink(gone)
        time.sleep(1.0)  # a few samples
        paths = [before, punched] + [p for p, _ in files.values()]
        truth = {_key(p): cachestat_pages(p) for p in paths}
    finally:
        stop_recorder(proc)
    report = report_json(rec)
    got = {(f["dev"], f["ino"]): f["resident_pages"] for f in report["files"]}
    assert truth[_key(tmpfs / "fallocated")] == 3 * 1024  # the kernel counts falloc'ed pages
    for key, want in truth.items():
        assert abs(got.get(key, 0) - want) <= max(1, want // 100), (key, got.get(key), want)
    assert got.get(gone_key, 0) == 0
    # Every sample carries the measurement: the timeline's tmpfs band follows it too.
    from tracer import recording, timeline

    r = recording.read(str(rec))
    assert all(s["shmem_devs"] for s in r.samples)
    frame = timeline.build(r)
    ours = sum(truth.values()) * 4096 / MIB
    assert frame["shmem"].iloc[-1] >= ours - 0.5, (frame["shmem"].iloc[-1], ours)
