"""footprint attached to an already running live session (no early-boot trace): the
baseline inventory makes the per-layer page cache right at attach, then tracing keeps it
right while files are read. Ground truth: fincore (mincore) over every reachable file of
the layer, taken at the same moment, in the guest."""

from __future__ import annotations


import pytest

from tracer import account, recording

from conftest import qemu_skip_reason, wait_in_guest

pytestmark = pytest.mark.qemu

RECORD = ("nohup footprint record -o /run/fp-session.jsonl --interval 2 --inventory-seconds 1200 "
          "--stop-file /run/fp-stop >/run/fp-session.log 2>&1 &")
# Every regular file of the root file system with its inode, and fincore's pages for it.
TRUTH = ("find / -xdev -type f -printf '%i\\t%p\\n' > /run/inodes.tsv; "
         "cut -f2 /run/inodes.tsv | tr '\\n' '\\0' | xargs -0 fincore -b -n -r -o PAGES,FILE "
         "> /run/fincore.txt 2>/dev/null; stat -c %d / ; echo done")


@pytest.fixture(scope="module")
def session(tmp_path_factory, lab_cache):
    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    from vm import guest

    out = tmp_path_factory.mktemp("session")
    with guest("live", cache_dir=lab_cache) as g:
        g.wait_ready(900)
        g.wait_system(900)
        rc, _, err = g.run(RECORD, timeout=60)
        assert rc == 0, err
        wait_in_guest(g, "grep -q '\"type\":\"inventory\"' /run/fp-session.jsonl", 1800, every=3)
        # Read files after attach: ext4 pages (and the squashfs and iso pages below) are traced.
        rc, _, err = g.run("cat /usr/lib/python3.11/*.py /usr/share/common-licenses/* > /dev/null",
                           timeout=600)
        assert rc == 0, err
        rc, so, err = g.run(TRUTH, timeout=1800)
        assert rc == 0 and so.endswith(b"done\n"), err
        g.run("touch /run/fp-stop", timeout=60)
        wait_in_guest(g, "grep -q '\"type\":\"end\"' /run/fp-session.jsonl", 600, every=3)
        for name in ("fp-session.jsonl", "inodes.tsv", "fincore.txt", "fp-session.log"):
            g.get_file(f"/run/{name}", str(out / name))
        root_dev = int(so.split()[-2])
        g.shutdown()
    return out, root_dev


def test_per_layer_page_cache_matches_fincore(session):
    out, root_dev = session
    rec = recording.read(str(out / "fp-session.jsonl"))
    acc = account.build(rec)
    inode_of = {}
    for line in (out / "inodes.tsv").read_text(errors="surrogateescape").splitlines():
        ino, _, path = line.partition("\t")
        inode_of[path] = int(ino)
    truth = {}
    for line in (out / "fincore.txt").read_text(errors="surrogateescape").splitlines():
        pages, _, path = line.strip().partition(" ")
        if path in inode_of:
            truth[inode_of[path]] = int(pages)
    dev = f"{root_dev >> 8}:{root_dev & 0xff}" if root_dev < (1 << 16) else None
    files = acc.files[acc.files["dev"] == dev] if dev else acc.files[acc.files["layer"].str.contains("live-rw")]
    ours = int(files[files["ino"].isin(set(truth))]["resident_pages"].sum())
    expected = sum(truth.values())
    assert expected > 2000, expected  # a booted root holds thousands of pages
    assert abs(ours - expected) <= 0.01 * expected, (ours, expected)
    # Both kinds of rows are there and the report says which is which.
    sources = set(files["source"])
    assert "inventoried" in sources or "inventoried+traced" in sources, sources
    assert any(s in sources for s in ("traced", "inventoried+traced")), sources
    print(f"running session: root layer {ours} pages vs fincore {expected}")


def test_hot_events_ran_as_tp_btf(session):
    """The 6.1 guest (BTF, x86-64, 2 GiB) runs the hot events as tp_btf programs, not the
    classic tracepoints the loader falls back to when they do not load (tracer/progkinds.py)."""
    out, _root_dev = session
    plan = recording.read(str(out / "fp-session.jsonl")).header["plan"]
    assert plan["loader"] == "libbpf" and len(plan.get("btf_events", [])) == 6, \
        (plan.get("btf_events"), plan.get("btf_fallback"))
