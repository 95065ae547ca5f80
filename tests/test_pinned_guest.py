"""The pinned account on the guest's kernel (Debian 6.1: perf-event links pinned in
bpffs): `record --pin` in the booted live guest, the recorder gone, a file read
afterwards is counted by `report --pinned` as the kernel counts it; `unpin` ends it."""

from __future__ import annotations

import json

import pytest

from conftest import qemu_skip_reason

pytestmark = pytest.mark.qemu


def test_pinned_account_on_6_1(lab_cache):
    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    from vm import guest

    with guest("live", cache_dir=lab_cache) as g:
        g.wait_ready(900)
        g.wait_system(900)
        rc, so, se = g.run(
            "footprint record --pin --loader libbpf -o /run/fp-pin.jsonl -d 2 --interval 1 "
            "--no-inventory 2>/run/fp-pin.log; echo record=$?; "
            # no process named @footprint (pgrep -f would find this very shell)
            "ps -eo args | grep -q '^@footprint' || echo recorder-gone; "
            "dd if=/dev/urandom of=/var/tmp/late bs=1M count=8 status=none; sync; "
            "echo 3 > /proc/sys/vm/drop_caches; cat /var/tmp/late > /dev/null; "
            "stat -c 'late %d %i' /var/tmp/late; "
            "footprint report --pinned --json > /run/fp-pin-report.json; echo report=$?; "
            "footprint unpin; echo unpin=$?; ls /sys/fs/bpf/footprint 2>/dev/null | wc -l",
            timeout=900)
        out = so.decode(errors="replace")
        assert "record=0" in out and "recorder-gone" in out, out + se.decode(errors="replace")
        assert "report=0" in out and "unpin=0" in out, out + se.decode(errors="replace")
        rc, report_text, _ = g.run("cat /run/fp-pin-report.json", timeout=120)
        g.shutdown()
    report = json.loads(report_text)
    line = next(ln for ln in out.splitlines() if ln.startswith("late "))
    dev, ino = (int(x) for x in line.split()[1:])
    key = (f"{dev >> 8}:{dev & 0xff}", ino)  # stat %d: the old-style dev_t (major << 8)
    got = {(f["dev"], f["ino"]): f["resident_pages"] for f in report["files"]}.get(key, 0)
    assert abs(got - 2048) <= 20, (got, key)
    assert report["recording"]["loader"] == "libbpf"
    assert out.strip().splitlines()[-1] == "0"  # no pins left
