"""footprint attached to a running session of the lab's guests (live: dracut's dmsquash-live
stack; plain: one ext4 disk; live-overlayfs: dracut's overlay root), after several hundred MiB were cached: every superblock's
page cache in the recording against the kernel's own count at the same moment, read from
kernel memory by tests/pagecache_truth.py (no code shared with the tracer), within 1 % or
64 pages; and attaching leaves no line in the kernel log (no device opened to probe it).

Boots guests under TCG: run as `flock /var/tmp/fp-guest.lock pytest -m qemu …`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import qemu_skip_reason, wait_in_guest

pytestmark = pytest.mark.qemu

HERE = Path(__file__).resolve().parent
# Several hundred MiB into the page cache before attaching (on live the same data lands
# at three layers: ext4 on live-rw, rootfs.img in squashfs, squashfs.img on iso9660).
WARM = "cat /usr/lib/x86_64-linux-gnu/*.so* /usr/bin/* /usr/lib/python3*/*.py > /dev/null 2>&1; echo warm"
RECORD = ("nohup footprint record -o /run/fp-mid.jsonl --interval 1 -d 25 --baseline kernel "
          ">/run/fp-mid.log 2>&1 &")


def _session(variant, lab_cache, out):
    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    from vm import guest

    with guest(variant, cache_dir=lab_cache) as g:
        g.wait_ready(900)
        g.wait_system(900)
        g.put_file("/run/pagecache_truth.py", (HERE / "pagecache_truth.py").read_bytes())
        rc, so, err = g.run(WARM, timeout=1800)
        assert rc == 0 and b"warm" in so, err
        _, klog_before, _ = g.run("dmesg", timeout=60)
        rc, _, err = g.run(RECORD, timeout=60)
        assert rc == 0, err
        # The baseline is in, and the sampler has written a few samples: read the truth.
        wait_in_guest(g, "test $(grep -c '\"type\":\"sample\"' /run/fp-mid.jsonl) -ge 3", 600)
        rc, truth, err = g.run("python3 /run/pagecache_truth.py", timeout=600)
        assert rc == 0, err
        wait_in_guest(g, "grep -q '\"type\":\"end\"' /run/fp-mid.jsonl", 600)
        _, klog_after, _ = g.run("dmesg", timeout=60)
        g.get_file("/run/fp-mid.jsonl", out / "rec.jsonl")
        g.get_file("/run/fp-mid.log", out / "rec.log")
        g.shutdown()
    return {"truth": json.loads(truth.decode().strip().splitlines()[-1]), "rec": out / "rec.jsonl",
            "klog_before": klog_before.decode(errors="replace").splitlines(),
            "klog_after": klog_after.decode(errors="replace").splitlines(),
            "log": (out / "rec.log").read_text(errors="replace")}


@pytest.fixture(scope="module", params=["live", "plain", "live-overlayfs"])
def session(request, lab_cache, tmp_path_factory):
    return request.param, _session(request.param, lab_cache, tmp_path_factory.mktemp(request.param))


def _ours_at(rec_path, t):
    """Pages per superblock in the account at the sample nearest to `t`."""
    from tracer import account, recording

    rec = recording.read(str(rec_path))
    ts = [s["t"] for s in rec.samples]
    i = min(range(len(ts)), key=lambda k: abs(ts[k] - t))
    acc = account.build(rec, i)
    per = acc.files.groupby("dev")["resident_pages"].sum()
    return {str(k): int(v) for k, v in per.items()}, ts[i] - t


def test_every_superblock_matches_the_kernel(session):
    variant, s = session
    import pagecache_truth as P

    truth_sb = s["truth"]["superblocks"]
    ours, dt = _ours_at(s["rec"], s["truth"]["time"])
    if "bdev" in ours:  # block devices' cache recorded before the bdev s_dev was learnt
        bdev = next(d for d, x in truth_sb.items() if x["fstype"] == "bdev")
        ours[bdev] = ours.get(bdev, 0) + ours.pop("bdev")
    truth = {d: x["pages"] for d, x in truth_sb.items() if x["pages"]}
    cached = sum(truth.values())
    assert cached * 4096 > 300 << 20, cached  # several hundred MiB cached
    bad = P.compare(ours, truth, pct=1.0, slack=64)
    table = "\n".join(f"  {d:>8} {truth_sb.get(d, {}).get('fstype', '?'):>10} ours {o:>8} kernel {k:>8}"
                      for d, o, k in bad)
    print(f"{variant}: {len(truth)} superblocks with page cache, {cached} pages; sample "
          f"{dt:+.2f} s from the truth; {len(bad)} off")
    assert not bad, f"{variant}: superblocks off by more than 1 % and 64 pages:\n{table}\n{s['log'][-800:]}"


def test_attaching_leaves_no_line_in_the_kernel_log(session):
    variant, s = session
    before, after = s["klog_before"], s["klog_after"]
    new = after[len(before):] if after[:len(before)] == before else after
    assert not new, f"{variant}: the kernel log gained:\n" + "\n".join(new[-20:])


def test_an_overlay_root_is_named_by_its_layers(session):
    """rd.live.overlay.overlayfs: / is an overlay; its pages are on its layers, each named
    as a layer of overlay /, and files are spelled through the overlay."""
    variant, s = session
    if variant != "live-overlayfs":
        pytest.skip("only the overlayfs boot has an overlay root")
    from tracer import account, recording
    from tracer.topology import overlays

    rec = recording.read(str(s["rec"]))
    acc = account.build(rec)
    topo = account.topology_at(rec, None)
    [root] = [o for o in overlays(topo.mounts) if o["mountpoint"] == "/"]
    layers = set(acc.files["layer"])
    assert any(lb.endswith("(upper layer of overlay /)") for lb in layers), layers
    assert any(lb.endswith("(lower layer of overlay /)") for lb in layers), layers
    dirs = [p["dir"] for p in [root["upper"]] + root["lowers"] if p]
    paths = [p for p in acc.files["path"].dropna()]
    assert any(p.startswith("/usr/") for p in paths), paths[:20]
    spelled_on_layer = [p for p in paths if any(p.startswith(d + "/") for d in dirs)]
    # Only a lower file hidden by its copy-up may keep its layer path: a handful at most.
    assert len(spelled_on_layer) <= 2, spelled_on_layer
