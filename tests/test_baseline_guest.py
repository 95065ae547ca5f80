"""The kernel baseline in the lab guest (Debian 6.1, live session): the object built
here against 6.18's BTF loads there (CO-RE), starts from &super_blocks (Debian has
CONFIG_KALLSYMS_ALL), walks every superblock and finds the live stack's page cache —
squashfs, ext4 on live-rw, iso9660 — summing to meminfo's Cached + Buffers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import qemu_skip_reason

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("cd /opt/footprint && python3 -c \"import json; from tracer import baseline as B; "
         "r = B.kernel_inventory(); s = r['stats']; fs = {}\n"
         "for x in r['rows']: fs[x['fstype'] or '?'] = fs.get(x['fstype'] or '?', 0) + x['resident_pages']\n"
         "print(json.dumps({'stats': s, 'fstypes': fs}))\"")


@pytest.fixture(scope="module")
def guest_walk(lab_cache):
    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-bpf")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    from vm.qemu import guest

    with guest("live", cache_dir=lab_cache) as g:
        g.wait_ready(900)
        rc, so, err = g.run(PROBE, timeout=600)
        g.shutdown()
    assert rc == 0, err
    return json.loads(so.decode().strip().splitlines()[-1])


def test_the_61_guest_walks_every_superblock_from_the_head(guest_walk):
    s = guest_walk["stats"]
    assert not s["from_root"] and not s["torn"] and not s["capped"] and not s["dropped"]
    assert s["superblocks"] > 20 and s["kernel_ms"] < 1000
    assert 0.95 < s["completeness"] < 1.05, s


def test_the_live_stack_layers_are_all_there(guest_walk):
    fs = guest_walk["fstypes"]
    for fstype in ("squashfs", "ext4", "iso9660", "bdev"):
        assert fs.get(fstype, 0) > 0, fs
