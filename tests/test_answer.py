"""The answer names the storage stack of the recording in front of it (squashfs,
device-mapper, loop, iso9660 …) with the pages each claims; asked, any subsystems."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import synthetic_live as live
from tracer import account, recording
from tracer.answer import answer

MIB = 1 << 20


@pytest.fixture
def accounts(tmp_path):
    acc_live = account.build(recording.read(live.write_live(tmp_path / "live.jsonl")))
    acc_plain = account.build(recording.read(live.write_plain(tmp_path / "plain.jsonl")))
    return acc_live, acc_plain


def test_live_names_squashfs_and_device_mapper_with_their_pages(accounts):
    acc_live, _ = accounts
    r = answer(acc_live)
    claims = r["subsystems"]
    assert claims["squashfs"]["pages"] == live.SQUASHFS_PAGES > 0
    assert claims["device-mapper"]["pages"] == live.DM_PAGES > 0
    assert claims["loop"]["pages"] == live.LOOP_PAGES > 0
    # ... and of what: page cache of rootfs.img, slab, the decompressor's vmalloc
    sq = {p["kind"]: p["pages"] for p in claims["squashfs"]["parts"]}
    assert sq["page-cache"] == live.ROOTFS_IMG[1]
    assert sq["slab"] == live.LIVE_SLAB["squashfs_inode_cache"]
    assert sq["vmalloc"] == live.LIVE_VMALLOC["squashfs_decompressor_create"]
    dm = {p["kind"]: p["pages"] for p in claims["device-mapper"]["parts"]}
    assert dm == {"buffers": live.DM_BDEV[1], "slab": live.LIVE_SLAB["dm_exception"] + live.LIVE_SLAB["kcopyd_job"],
                  "vmalloc": live.LIVE_VMALLOC["dm_exception_table_init [dm_snapshot]"],
                  "pages": live.DM_KERNEL_PAGES}
    text = r["paragraph"]
    assert f"squashfs claims {live.SQUASHFS_PAGES:,} pages ({live.SQUASHFS_PAGES * live.PS / MIB:.1f} MiB)" in text
    assert f"device-mapper claims {live.DM_PAGES:,} pages ({live.DM_PAGES * live.PS / MIB:.1f} MiB)" in text
    assert f"loop claims {live.LOOP_PAGES:,} pages" in text


def test_the_answer_speaks_of_the_stack_in_front_of_it(accounts):
    """A live recording's answer names its stack, iso9660 too; a plain disk's names no
    squashfs or device-mapper it does not have (the 2014 question is the lab's)."""
    acc_live, acc_plain = accounts
    assert list(answer(acc_live)["subsystems"]) == ["squashfs", "device-mapper", "loop", "iso9660"]
    assert answer(acc_live)["subsystems"]["iso9660"]["pages"] == live.SQUASHFS_IMG[1]
    r = answer(acc_plain)
    assert not {"squashfs", "device-mapper", "iso9660"} & set(r["subsystems"])
    assert "squashfs" not in r["paragraph"] and "device-mapper" not in r["paragraph"]


def test_plain_says_zero_for_squashfs_and_device_mapper_when_asked(accounts):
    _, acc_plain = accounts
    r = answer(acc_plain, subsystems=("squashfs", "device-mapper", "loop"))
    assert r["subsystems"]["squashfs"]["pages"] == 0 and r["subsystems"]["device-mapper"]["pages"] == 0
    assert "squashfs claims 0 pages (0.0 MiB)." in r["paragraph"]
    assert "device-mapper claims 0 pages (0.0 MiB)." in r["paragraph"]
    assert r["double_caching"] == [] and r["versus_plain"] is None


def test_page_cache_per_layer_and_how_often_data_is_cached(accounts):
    acc_live, _ = accounts
    r = answer(acc_live)
    layers = {lv["layer"]: lv["pages"] for lv in r["page_cache_by_layer"]}
    assert layers["ext4 on dm live-rw"] == sum(live.EXT4_FILES.values()) + 25  # + inventoried file
    assert any(k.startswith("iso9660 on sr0") and v == live.SQUASHFS_IMG[1] for k, v in layers.items())
    chain = next(c for c in r["double_caching"] if "rootfs.img" in c["label"])
    assert chain["layers_holding_data"] == 3
    assert [lv["pages"] for lv in chain["levels"]] == [sum(live.EXT4_FILES.values()) + 25,
                                                       live.ROOTFS_IMG[1], live.SQUASHFS_IMG[1]]
    assert "The same data is cached at 3 layers" in r["paragraph"]


def test_live_minus_plain_is_explained_by_subsystems(accounts):
    acc_live, acc_plain = accounts
    vs = answer(acc_live, acc_plain)["versus_plain"]
    assert vs["nonfree_delta_mib"] == pytest.approx(acc_live.meminfo["nonfree_mib"] - acc_plain.meminfo["nonfree_mib"])
    assert sum(d["delta_mib"] for d in vs["by_subsystem"]) == pytest.approx(vs["nonfree_delta_mib"])
    assert abs(vs["residual_mib"]) < 1e-9
    deltas = {d["subsystem"]: d["delta_mib"] for d in vs["by_subsystem"]}
    assert deltas["squashfs"] == pytest.approx(live.SQUASHFS_PAGES * live.PS / MIB)
    assert deltas["device-mapper"] == pytest.approx(live.DM_PAGES * live.PS / MIB)


def test_unmounted_squashfs_is_inferred_from_its_image_and_says_so(tmp_path):
    """dracut's squashfs unmounted, no superblock probe: the chain shows squashfs.img."""
    rec = recording.read(live.write_live(tmp_path / "live.jsonl", squashfs_mounted=False))
    acc = account.build(rec)
    assert "unknown fs" in set(acc.rows["subsystem"])  # the account itself does not guess
    r = answer(acc)
    assert r["subsystems"]["squashfs"]["pages"] == live.SQUASHFS_PAGES
    assert r["inferred"] and "Inferred:" in r["paragraph"] and "squashfs.img" in r["paragraph"]


def test_answer_command(tmp_path):
    a = live.write_live(tmp_path / "live.jsonl")
    p = live.write_plain(tmp_path / "plain.jsonl")
    run = lambda *args: subprocess.run([sys.executable, "-m", "tracer", "answer", *args],
                                       capture_output=True, text=True, check=True).stdout
    text = run(a, p)
    assert "squashfs claims" in text and "device-mapper claims" in text and "Against plain.jsonl" in text
    obj = json.loads(run(a, "--json"))
    assert obj["subsystems"]["squashfs"]["pages"] == live.SQUASHFS_PAGES
    bad = subprocess.run([sys.executable, "-m", "tracer", "answer", str(tmp_path / "none.jsonl")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
