"""The lab's squashfs matrix (issue #16): CPUs × block size × compressor.

Host: the matrix images' builder makes the squashfs it is asked for (checked with
squashfs-tools' own `unsquashfs -s`, not with our reader), their cache keys include
compressor and block size, the guest's superblock reader agrees with unsquashfs, `--smp`
is checked, and the table is drawn from an experiment's dict. Guest: ONE boot of the
1 MiB zstd live image with 4 vCPUs, traced from the initramfs: the guest has 4 possible
CPUs, its squashfs is zstd with 1 MiB blocks, and squashfs's own memory in the account is
what the kernel's formula says for it (within 5 %).

The guest test boots under TCG: run as `flock /var/tmp/fp-guest.lock python -m pytest ...`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import FOOTPRINT, REPO, run_experiment
from tracer import squashfs
from vm import cache as C, images, matrix, screen
from vm.results import Experiment
from vm.experiment import SEED

MIB = 1 << 20


def _unsquashfs_s(img: Path) -> dict:
    """squashfs-tools' reading of a superblock: compressor and block size."""
    out = subprocess.run(["unsquashfs", "-s", str(img)], capture_output=True, text=True,
                         check=True).stdout
    facts = {}
    for line in out.splitlines():
        if line.startswith("Compression "):
            facts["compressor"] = line.split()[1]
        elif line.startswith("Block size "):
            facts["block_size"] = int(line.split()[2])
    return facts


@pytest.mark.skipif(shutil.which("mksquashfs") is None or shutil.which("xorriso") is None,
                    reason="needs squashfs-tools and xorriso")
@pytest.mark.parametrize("kind", sorted(images.SQUASHED))
def test_builder_makes_the_squashfs_it_is_asked_for(tmp_path, kind):
    comp, block = images.SQUASHED[kind]
    rootimg = tmp_path / "rootimg"
    rootimg.mkdir()
    (rootimg / "rootfs.img").write_bytes(os.urandom(3 * MIB) + bytes(2 * MIB))
    out = tmp_path / "out"
    out.mkdir()
    images._build_live_squashed(out, rootimg, comp, block)
    assert sorted(p.name for p in out.iterdir()) == ["live.iso", "mksquashfs.log", "squashfs.bytes",
                                                     "xorriso.log"]
    # the squashfs, out of the ISO as the guest's dracut finds it
    img = tmp_path / "squashfs.img"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(out / "live.iso"), "-extract",
                    "/LiveOS/squashfs.img", str(img)], capture_output=True, check=True)
    assert _unsquashfs_s(img) == {"compressor": comp, "block_size": block}
    assert int((out / "squashfs.bytes").read_text()) == img.stat().st_size
    listing = subprocess.run(["unsquashfs", "-l", str(img)], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "squashfs-root/LiveOS/rootfs.img" in listing
    # the guest's own superblock reader (vm/matrix.py) agrees with unsquashfs
    facts = _guest_reader_on(img)
    assert (facts["compressor"], facts["block_size"], facts["magic_ok"]) == (comp, block, True)


def _guest_reader_on(img: Path) -> dict:
    """vm/matrix.py's in-guest superblock reader, run here on one image file."""
    src = matrix._FACTS.replace('for line in open("/proc/self/mountinfo"):',
                                'for line in ["1 2 0:0 / /m rw - squashfs %s ro" % IMG]:')
    p = subprocess.run([sys.executable, "-c", f"IMG = {str(img)!r}\n" + src],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)["mounts"][0]


def test_matrix_keys_name_compressor_and_block_size():
    """Each matrix image has its own key, none the default live image's; the default live
    step's key is still made of what it always was (its builders are untouched)."""
    rk = images.rootfs_key()
    gk = C.digest("rootimg", rk, images._build_rootimg)
    default = C.digest("live", gk, images.COMP, images.LIVE_LABEL, images._build_live, images._squash_iso)
    keys = {C.digest(k, gk, c, b, images.LIVE_LABEL, images._build_live_squashed)
            for k, (c, b) in images.SQUASHED.items()}
    assert len(keys) == len(images.SQUASHED) and default not in keys
    assert {(c, b) for c, b in images.SQUASHED.values()} == {("zstd", 128 << 10), ("xz", 1 << 20),
                                                             ("zstd", 1 << 20)}


def test_smp_out_of_range_is_one_line():
    p = subprocess.run([*FOOTPRINT, "experiment", "--smp", "0"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "--smp 0" in p.stderr, p.stderr


def _exp(ncpus: int, rows: list[dict]) -> dict:
    facts = {"possible": ncpus, "online": ncpus, "mode": "percpu", "file_cache": False,
             "mounts": [{"mountpoint": None, "source": "/dev/loop0", "dev": "7:0", "fragments": 900,
                         "compressor": "zstd", "block_size": 1 << 20, "magic_ok": True}]}
    boot = {"name": "live-zstd-1m", "nonfree_mib": 300.0, "smp": ncpus, "squashfs": facts,
            "kernel": "6.1.0-57-amd64",
            "moments": [{"name": "after-boot", "t_s": 1.0, "nonfree_mib": 300.0, "used_mib": 250.0,
                         "sample_index": 1, "sample_t_s": 1.0, "account": rows, "account_meminfo": {}}]}
    plain = {"name": "plain", "nonfree_mib": 200.0, "smp": ncpus, "kernel": "6.1.0-57-amd64",
             "squashfs": {"possible": ncpus, "online": ncpus, "mode": "percpu", "mounts": []}}
    return {"boots": [plain, boot], "seed": SEED}


def test_matrix_rows_from_an_experiment():
    rows = [{"subsystem": "squashfs", "layer": "squashfs on loop0", "kind": "page-cache", "resident_mib": 80.0},
            {"subsystem": "squashfs", "layer": "kmalloc objects", "kind": "slab", "resident_mib": 4.5},
            {"subsystem": "squashfs", "layer": "vmalloc", "kind": "vmalloc", "resident_mib": 5.0},
            {"subsystem": "squashfs", "layer": "kmalloc via zstd", "kind": "slab", "resident_mib": 0.25},
            {"subsystem": "ext4", "layer": "vmalloc", "kind": "vmalloc", "resident_mib": 9.0}]
    exp = Experiment.from_dict(_exp(4, rows))
    got = matrix.rows_of(exp)
    assert len(got) == 1  # plain has no squashfs
    r = got[0]
    assert (r["boot"], r["cpus_possible"], r["compressor"], r["block_size"], r["decomp_mode"]) == \
        ("live-zstd-1m", 4, "zstd", 1 << 20, "percpu")
    # page cache and other owners left out; a library's allocation is a decompressor's
    assert (r["measured"]["workspaces_mib"], r["measured"]["caches_mib"]) == (5.25, 4.5)
    # the product's formula for the guest's kernel (6.1: zstd 1.4.10), not this host's
    f = r["formula"]
    assert f["decompressors"] == 4
    ws = squashfs.workspace_bytes("zstd", 1 << 20, "6.1.0-57-amd64")
    assert f["workspaces_mib"] * MIB == 4 * (ws["vmalloc"] + ws["kmalloc"])
    assert f["caches_mib"] * MIB == 8 * 8192 + 3 * MIB + 4 * MIB  # metadata, 3 fragments, data per CPU
    exp.squashfs_matrix = got
    table = matrix.text(got)
    assert "live-zstd-1m" in table and "1 MiB" in table and "4.50" in table and f"{f['workspaces_mib']:.2f}" in table
    # shown on the first screen (a matrix variant), kept in the JSON and read back
    assert "4.50" in screen.screen(exp)
    assert Experiment.from_dict(json.loads(json.dumps(exp.to_dict()))).squashfs_matrix == got


# --------------------------------------------------------------------- the guest

@pytest.fixture(scope="module")
def four_cpus(lab_cache):
    """`footprint experiment --json --variants live-zstd-1m --smp 4 --workload after-boot`,
    traced, once: (result, out dir)."""
    out = Path(tempfile.mkdtemp(prefix="fp-matrix-", dir="/var/tmp"))
    yield run_experiment(lab_cache, ["--variants", "live-zstd-1m", "--smp", "4", "--workload",
                                     "after-boot"], out / "out"), out / "out"
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.qemu
def test_four_cpus_zstd_1m_guest_reads_what_was_built(four_cpus):
    result, _ = four_cpus
    (boot,) = result["boots"]
    assert "error" not in boot and "moments_error" not in boot, boot.get("error") or boot.get("moments_error")
    sq = boot["squashfs"]
    assert boot["smp"] == 4 and sq["possible"] == 4 and sq["online"] == 4
    assert sq["mode"] == "percpu"  # Debian's 6.1: CONFIG_SQUASHFS_DECOMP_MULTI_PERCPU=y
    (m,) = [m for m in sq["mounts"] if m["source"].startswith("/dev/loop")]
    assert (m["compressor"], m["block_size"], m["magic_ok"]) == ("zstd", 1 << 20, True)


@pytest.mark.qemu
def test_four_cpus_decompressors_are_the_formulas(four_cpus):
    """squashfs's decompressor states in the account (one per possible CPU on
    Debian's 6.1) are, within 5 %, the kernel's formula for 4 CPUs, zstd, 1 MiB blocks."""
    result, _ = four_cpus
    (row,) = result["squashfs_matrix"]
    assert row["boot"] == "live-zstd-1m" and row["cpus_possible"] == 4
    f, m = row["formula"], row["measured"]
    assert f["decompressors"] == 4
    assert f["workspaces_mib"] > 4 * 1.0  # a 1 MiB window each: the per-CPU cost is visible
    assert m["workspaces_mib"] == pytest.approx(f["workspaces_mib"], rel=0.05), (m, f)
    # and the caches (fragment, data per CPU, metadata: kmalloc'ed by squashfs_cache_init)
    assert m["caches_mib"] == pytest.approx(f["caches_mib"], rel=0.05), (m, f)
