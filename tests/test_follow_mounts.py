"""A file system mounted while recording is named while it is mounted, and its big files
get paths while the recording runs (issue #15: "ext4 on vdb (not mounted)" and no paths
until the recorder stopped). Independent view: the mount we made ourselves, and stat."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tracer import topology as T

ROOT = Path(__file__).resolve().parent.parent


def test_a_mount_made_after_attach_is_named_while_mounted(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from tracer import baseline as B

    if B.unavailable():
        pytest.skip(B.unavailable())
    from tracer import account, recording

    out, stop = tmp_path / "rec.jsonl", tmp_path / "stop"
    mnt = Path(tempfile.mkdtemp(prefix="fp-follow-", dir="/var/tmp"))
    img = tmp_path / "ext4.img"
    with open(img, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "record", "-o", str(out), "-i", "0.5",
                             "--baseline", "kernel", "--stop-file", str(stop)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mounted = False
    try:
        deadline = time.monotonic() + 300
        while b'"type":"sample"' not in (out.read_bytes() if out.exists() else b""):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        t_mount = time.clock_gettime(time.CLOCK_BOOTTIME)
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
        mounted = True
        big = mnt / "big"
        with open(big, "wb") as f:  # 96 MiB of page cache, among the biggest files
            for _ in range(96):
                f.write(os.urandom(1 << 20))
        dev, ino = T.devstr(os.stat(big).st_dev), os.stat(big).st_ino
        deadline = time.monotonic() + 2 * 15 + 5  # the recorder names new files every 15 s
        while True:
            rec = recording.read(str(out))  # the running recording
            if f"{dev}:{ino}" in rec.paths or time.monotonic() > deadline:
                break
            time.sleep(1)
        t_named = time.clock_gettime(time.CLOCK_BOOTTIME)
        topo_after = [t for t in rec.topologies if t["t"] >= t_mount]
        assert any(m["dev"] == dev and m["mountpoint"] == str(mnt)
                   for t in topo_after for m in t["topology"]["mounts"]), "mount not recorded"
        assert rec.paths.get(f"{dev}:{ino}") == str(big), "no path while recording"
        acc = account.build(rec)
        row = acc.files[(acc.files["dev"] == dev) & (acc.files["ino"] == ino)]
        assert len(row) == 1 and row.iloc[0]["layer"].startswith("ext4 on loop"), row
        assert "not mounted" not in row.iloc[0]["layer"]
        assert row.iloc[0]["path"] == str(big)
        assert t_named > t_mount
    finally:
        stop.touch()
        try:
            proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            if mounted:
                subprocess.run(["umount", str(mnt)], check=False)
            os.rmdir(mnt)
    assert proc.returncode == 0
