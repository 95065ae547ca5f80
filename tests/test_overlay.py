"""An overlay root like a live session's (live-boot: squashfs lower under
/run/live/rootfs/…, tmpfs upper under /run/live/overlay): its layers named, pages charged
to the layer whose inode holds them (overlayfs has none of its own for regular files),
one spelling per file, through the overlay. Independent view: cachestat(2) on each
layer's own files (fincore(1) would miss what squashfs caches past a file's end), and
stat through the overlay."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import cachestat_pages
from tracer import topology as T

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1 << 20


def _files(top):
    return [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs
            if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))]


class Overlay:
    """squashfs (lower, loop) + tmpfs (upper) + overlay, laid out as live-boot does."""

    def __init__(self):
        for tool in ("mksquashfs", "mount", "umount"):
            if not shutil.which(tool):
                pytest.skip(f"{tool} not installed")
        self.tmp = tempfile.mkdtemp(prefix="fp-ovl-", dir="/var/tmp")
        self.mounted = []
        content = os.path.join(self.tmp, "content")
        for d in ("usr/bin", "etc"):
            os.makedirs(os.path.join(content, d))
        # Sizes in whole 128 KiB blocks: squashfs caches a file's last block whole.
        for rel, size in (("usr/bin/a", 4 * MiB), ("usr/bin/b", 2 * MiB), ("etc/c", MiB)):
            with open(os.path.join(content, rel), "wb") as f:
                f.write(os.urandom(size))
        self.sqimg = os.path.join(self.tmp, "filesystem.squashfs")
        subprocess.run(["mksquashfs", content, self.sqimg, "-quiet", "-noappend", "-comp", "gzip"],
                       check=True, capture_output=True)
        self.lower = os.path.join(self.tmp, "run/live/rootfs/filesystem.squashfs")
        self.upper_mnt = os.path.join(self.tmp, "run/live/overlay")
        self.merged = os.path.join(self.tmp, "root")
        for d in (self.lower, self.upper_mnt, self.merged):
            os.makedirs(d)
        self._mount(["-t", "squashfs", "-o", "loop,ro", self.sqimg, self.lower])
        self._mount(["-t", "tmpfs", "-o", "size=64m", "fp-ovl-upper", self.upper_mnt])
        self.upper = os.path.join(self.upper_mnt, "rw")
        os.makedirs(self.upper)
        os.makedirs(os.path.join(self.upper_mnt, "work"))
        self._mount(["-t", "overlay", "-o", f"lowerdir={self.lower},upperdir={self.upper},"
                     f"workdir={self.upper_mnt}/work", "fp-ovl", self.merged])
        # Cache through the overlay: a lower file whole, another half, a new file written
        # (upper), and a lower file changed (copied up: the lower one is hidden).
        with open(os.path.join(self.merged, "usr/bin/a"), "rb") as f:
            f.read()
        with open(os.path.join(self.merged, "usr/bin/b"), "rb") as f:
            f.read(MiB)
        with open(os.path.join(self.lower, "etc/c"), "rb") as f:  # lower copy cached, then shadowed
            f.read()
        with open(os.path.join(self.merged, "etc/c"), "ab") as f:
            f.write(b"x")
        with open(os.path.join(self.merged, "new"), "wb") as f:
            f.write(os.urandom(3 * MiB))

    def _mount(self, args):
        subprocess.run(["mount", *args], check=True, capture_output=True)
        self.mounted.append(args[-1])

    def dev(self, path):
        return T.devstr(os.stat(path).st_dev)

    def close(self):
        for m in reversed(self.mounted):
            subprocess.run(["umount", m], check=False, capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ovl():
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "overlay"], check=False, capture_output=True)
    o = Overlay()
    yield o
    o.close()
    assert o.tmp not in Path("/proc/self/mountinfo").read_text()


def test_parse_overlay_options_with_escapes():
    from tracer.topology.overlay import parse_options

    o = parse_options(r"rw,lowerdir=/a\:b:/c::/d,upperdir=/u\,x,workdir=/w,uuid=on")
    assert o == {"lower": ["/a:b", "/c", "/d"], "upper": ["/u,x"], "work": ["/w"]}


def test_layers_are_named_and_shown_in_the_topology(ovl):
    topo = T.read_topology()
    sq, up, top = ovl.dev(ovl.lower), ovl.dev(ovl.upper), ovl.dev(ovl.merged + "/etc")
    [o] = [o for o in T.overlays(topo.mounts) if o["mountpoint"] == ovl.merged]
    assert o["dev"] == top and o["upper"]["dev"] == up and [x["dev"] for x in o["lowers"]] == [sq]
    assert o["upper"]["sb_path"] == "/rw" and o["lowers"][0]["sb_path"] == "/"
    assert T.layer_of(topo, sq).startswith("squashfs on loop")
    assert T.layer_of(topo, sq).endswith(f"(lower layer of overlay {ovl.merged})")
    assert T.layer_of(topo, up) == f"tmpfs {ovl.upper_mnt} (upper layer of overlay {ovl.merged})"
    chain = T.resolve(topo, top, 0)["chain"]
    assert [c.get("role", "").split()[0] for c in chain if c.get("role") in (f"upper {ovl.upper}",
                                                                              f"lower {ovl.lower}")] \
        == ["upper", "lower"]
    out = subprocess.run([sys.executable, "-m", "tracer", "topology"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith(ovl.merged + " ") or ln.startswith(ovl.upper_mnt + " ")]
    assert len(lines) == 2, out
    assert f"upper {ovl.upper}: tmpfs {ovl.upper_mnt}" in out and f"lower {ovl.lower}: squashfs" in out


def test_overlay_layers_with_commas_and_colons_as_mountinfo_shows_them():
    """mountinfo escapes ',' and ':' in an overlay's layer paths in octal (seq_show_option;
    ':' in a lowerdir since 6.5): split on the bare separators, not the decoded ones."""
    from tracer.topology.mounts import parse_mountinfo
    from tracer.topology.overlay import parse_options

    line = (rb"40 1 0:40 / / rw - overlay overlay rw,lowerdir=/run/a\072b:/run/c\054d,"
            rb"upperdir=/run/up\040x,workdir=/run/w" + b"\n")
    o = parse_options(parse_mountinfo(line)[0]["super_options"])
    assert o == {"lower": ["/run/a:b", "/run/c,d"], "upper": ["/run/up x"], "work": ["/run/w"]}


def test_one_spelling_per_file_through_the_overlay(ovl):
    topo = T.read_topology()
    sq, up = ovl.dev(ovl.lower), ovl.dev(ovl.upper)
    ino = {rel: os.stat(os.path.join(ovl.lower, rel)).st_ino for rel in ("usr/bin/a", "usr/bin/b", "etc/c")}
    ino_new = os.stat(os.path.join(ovl.upper, "new")).st_ino
    ino_c_up = os.stat(os.path.join(ovl.upper, "etc/c")).st_ino
    found = T.paths_of(topo, {sq: set(ino.values()), up: {ino_new, ino_c_up}})
    assert found[(sq, ino["usr/bin/a"])] == ovl.merged + "/usr/bin/a"
    assert found[(sq, ino["usr/bin/b"])] == ovl.merged + "/usr/bin/b"
    assert found[(up, ino_new)] == ovl.merged + "/new"
    assert found[(up, ino_c_up)] == ovl.merged + "/etc/c"
    # The lower etc/c is hidden by its copy-up: it is another file, named on its layer.
    assert found[(sq, ino["etc/c"])] == ovl.lower + "/etc/c"
    assert len(set(found.values())) == len(found)
    # The walk of the inventory spells them the same way.
    from tracer import inventory as I

    mounts = [m for m in topo.mounts if m["mountpoint"] in (ovl.lower, ovl.upper_mnt)]
    inv = I.inventory(topo, mounts=mounts, budget=(10_000, 30.0))
    by_key = {(r["dev"], r["ino"]): r["path"] for r in inv["rows"] if r["what"] == "file"}
    for k, p in found.items():
        if k in by_key:
            assert by_key[k] == p, (k, by_key[k], p)
    assert (sq, ino["usr/bin/a"]) in by_key and (up, ino_new) in by_key


def test_pages_are_charged_to_the_layer_that_holds_them(ovl, tmp_path):
    """`footprint record` (kernel baseline): each layer's rows in the account against
    fincore over that layer's own files, taken right after."""
    from tracer import baseline as B

    why = B.unavailable()
    if why:
        pytest.skip(why)
    from tracer import account, recording

    out = tmp_path / "rec.jsonl"
    done = subprocess.run([sys.executable, "-m", "tracer", "record", "-o", str(out), "-d", "1",
                           "--baseline", "kernel"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    truth_sq = sum(cachestat_pages(p) for p in _files(ovl.lower))
    truth_up = sum(cachestat_pages(p) for p in _files(ovl.upper_mnt))
    acc = account.build(recording.read(str(out)))
    f = acc.files
    sq, up = ovl.dev(ovl.lower), ovl.dev(ovl.upper)
    ours_sq = int(f.loc[f["dev"] == sq, "resident_pages"].sum())
    ours_up = int(f.loc[f["dev"] == up, "resident_pages"].sum())
    # 4 MiB + 1 MiB + 1 MiB read from squashfs; 3 MiB + 1 MiB written to tmpfs.
    assert truth_sq >= 6 * MiB // PAGE and truth_up >= 4 * MiB // PAGE
    assert abs(ours_sq - truth_sq) <= max(2, truth_sq // 100), (ours_sq, truth_sq)
    assert abs(ours_up - truth_up) <= max(2, truth_up // 100), (ours_up, truth_up)
    layers = set(f.loc[f["dev"].isin([sq, up]), "layer"])
    assert layers == {T.layer_of(T.read_topology(), sq), T.layer_of(T.read_topology(), up)}, layers
    # Nothing of the overlay itself: it has no page cache of its own for files.
    assert not (f["dev"] == ovl.dev(ovl.merged + "/etc")).any()


# live-boot's layout after switch_root, as mountinfo shows it (no root needed): the
# account names layers from the recorded topology on any machine.
LIVE_BOOT = b"""\
22 1 0:21 / / rw,noatime - overlay overlay rw,lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work
24 22 0:23 / /run rw,nosuid,nodev - tmpfs tmpfs rw,size=200000k
26 24 11:0 / /run/live/medium ro,noatime - iso9660 /dev/sr0 ro
27 24 7:0 / /run/live/rootfs/filesystem.squashfs ro,noatime - squashfs /dev/loop0 ro
28 24 0:25 / /run/live/overlay rw,noatime - tmpfs tmpfs rw
"""


def test_live_boot_layers_from_mountinfo_alone():
    mounts = T.parse_mountinfo(LIVE_BOOT)
    bds = {"loop0": {"name": "loop0", "dev": "7:0", "kind": "loop",
                     "loop": {"backing_file": "/run/live/medium/live/filesystem.squashfs",
                              "backing_dev": "11:0", "backing_ino": 1234}},
           "sr0": {"name": "sr0", "dev": "11:0", "kind": "rom"}}
    topo = T.Topology(time=0.0, mounts=mounts, block_devices=bds)
    assert T.layer_of(topo, "7:0") == "squashfs on loop0 (lower layer of overlay /)"
    assert T.layer_of(topo, "0:25") == "tmpfs /run/live/overlay (upper layer of overlay /)"
    assert T.layer_of(topo, "0:23") == "tmpfs /run"  # /run holds the layers' mounts, is none
    assert T.layer_of(topo, "11:0") == "iso9660 on sr0"
    spell = T.UserPaths(mounts, verify=False)
    assert spell.spell("/run/live/rootfs/filesystem.squashfs/usr/bin/python3.11", "7:0", 5) \
        == "/usr/bin/python3.11"
    assert spell.spell("/run/live/overlay/rw/root/notes", "0:25", 9) == "/root/notes"
    assert spell.spell("/run/live/overlay/work/x", "0:25", 10) == "/run/live/overlay/work/x"
    assert spell.spell("/run/live/medium/live/filesystem.squashfs", "11:0", 1234) \
        == "/run/live/medium/live/filesystem.squashfs"
    chain = T.resolve(topo, "0:21", 0)["chain"]
    labels = [c["label"] for c in chain]
    assert labels[0] == "overlay /"
    assert any(lb.startswith("upper /run/live/overlay/rw: tmpfs /run/live/overlay") for lb in labels)
    assert any(lb.startswith("lower /run/live/rootfs/filesystem.squashfs: squashfs on loop0") for lb in labels)
    assert any("loop0 backed by /run/live/medium/live/filesystem.squashfs" in lb for lb in labels)
