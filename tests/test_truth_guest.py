"""The account of a traced boot against the kernel's own counters at the same moment
(issue 15): live and plain guests traced from the initramfs, at after-boot, after-read
and after-write (vm/workloads.py, 128 MiB), every superblock's page cache and every tmpfs
file against tests/pagecache_truth.py (a reader of kernel memory through /proc/kcore and
BTF; no code shared with the tracer): no superblock off by more than 1 % or 64 pages,
each tmpfs file within 1 % (64 pages for small ones); and the unattributed share within
3 % at each moment and at every sample of the boot.

The account is read as the experiment reads it: the recorder stops at multi-user and
leaves the account pinned; right after each truth reading one more sample of the pinned
maps is chained to the boot's recording (vm.traced.pinned_snapshot, /run/footprint/
moments.jsonl, one taken before it too, so that the snapshot's own files are in the cache
already); the account is taken at the first sample after the truth's reading.

Boots guests under TCG: run as `flock /var/tmp/fp-guest.lock pytest -m qemu …`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import qemu_skip_reason

pytestmark = pytest.mark.qemu

HERE = Path(__file__).resolve().parent
MOMENTS = ("after-boot", "after-read", "after-write")


def _boot(variant, lab_cache, out: Path) -> dict:
    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    from vm import Guest, images, workloads
    from vm.traced import EXPERIMENT_APPEND, MOMENTS as CHAIN, pinned_snapshot, recorder_gone, recorder_state

    spec = images.prepare(variant, lab_cache, traced=True, append=EXPERIMENT_APPEND)
    truths, census = {}, {}
    with Guest(spec, memory=2048, timeout=1800, cache_dir=lab_cache) as g:
        g.wait_ready(1500)
        g.wait_system(1500)
        g.put_file("/run/pagecache_truth.py", (HERE / "pagecache_truth.py").read_bytes())
        g.put_file("/run/page_census.py", (HERE / "page_census.py").read_bytes())
        assert recorder_gone(g, recorder_state(g).get("pid")), "the recorder did not stop at multi-user"
        for moment in MOMENTS:
            workloads.WORKLOADS[moment](g, 128)
            # A snapshot is a python process of its own: its files (python, the tracer,
            # libbpf, the chain it extends on /run) come into the page cache as it starts.
            # One first, so that the one after the truth's reading adds next to nothing.
            assert pinned_snapshot(g, None), "no pinned account to read"
            rc, so, err = g.run("python3 /run/pagecache_truth.py --inodes", timeout=900)
            assert rc == 0, err
            truths[moment] = json.loads(so.decode().strip().splitlines()[-1])
            assert pinned_snapshot(g, moment)
            rc, so, err = g.run("python3 /run/page_census.py", timeout=900)
            assert rc == 0, err
            census[moment] = json.loads(so.decode().strip().splitlines()[-1])
        g.get_file(CHAIN, out / "rec.jsonl", timeout=300)
        g.shutdown(timeout=60)
    keep = os.environ.get("FP_KEEP_RECORDINGS")  # a directory to keep them in, for a look
    if keep:
        shutil.copy(out / "rec.jsonl", Path(keep) / f"{variant}.recording.jsonl")
        (Path(keep) / f"{variant}.census.json").write_text(json.dumps(census))
    return {"truths": truths, "census": census, "rec": out / "rec.jsonl"}


@pytest.fixture(scope="module", params=["live", "plain"])
def boot(request, lab_cache, tmp_path_factory):
    return request.param, _boot(request.param, lab_cache, tmp_path_factory.mktemp(request.param))


def _account_at(rec, t):
    """The account at the first sample after `t` (the snapshot taken after the truth's
    reading), and how long after it that sample was."""
    from tracer import account

    ts = [s["t"] for s in rec.samples]
    i = next((k for k, x in enumerate(ts) if x >= t), len(ts) - 1)
    return account.build(rec, i), ts[i] - t


@pytest.mark.parametrize("moment", MOMENTS)
def test_superblocks_and_tmpfs_files_match_the_kernel(boot, moment):
    import pagecache_truth as P
    from tracer import recording

    variant, b = boot
    truth = b["truths"][moment]
    sbs = truth["superblocks"]
    rec = recording.read(str(b["rec"]))
    acc, dt = _account_at(rec, truth["time"])
    ours = {str(k): int(v) for k, v in acc.files.groupby("dev")["resident_pages"].sum().items()}
    if "bdev" in ours:  # block devices' cache recorded before the bdev s_dev was learnt
        bdev = next(d for d, x in sbs.items() if x["fstype"] == "bdev")
        ours[bdev] = ours.get(bdev, 0) + ours.pop("bdev")
    want = {d: x["pages"] for d, x in sbs.items() if x["pages"]}
    bad = P.compare(ours, want, pct=1.0, slack=64)
    table = "\n".join(f"  {d:>8} {sbs.get(d, {}).get('fstype', '?'):>10} ours {o:>8} kernel {k:>8}"
                      for d, o, k in bad)
    assert not bad, f"{variant} {moment} (sample {dt:+.2f} s from the truth): superblocks off:\n{table}"
    files = {(r.dev, int(r.ino)): int(r.resident_pages) for r in acc.files.itertuples()}
    off = []
    for dev, sb in sbs.items():
        if sb["fstype"] != "tmpfs":
            continue
        for ino, pages in sb.get("files", {}).items():
            got = files.get((dev, int(ino)), 0)
            if abs(got - pages) > max(64, pages // 100):
                off.append((dev, ino, got, pages))
    assert not off, f"{variant} {moment}: tmpfs files (dev, ino, ours, kernel) off: {off[:20]}"
    pct = acc.meminfo["unattributed_pct"]
    assert abs(pct) <= 3.0, f"{variant} {moment}: unattributed {pct:.2f} %"


@pytest.mark.parametrize("moment", MOMENTS)
def test_unmapped_huge_page_parts_match_a_page_census(boot, moment):
    """The account's row for anonymous pages no page table maps (the LRU minus AnonPages
    and Shmem), from the census's own meminfo reading, against the pages counted one by
    one in /proc/kpageflags + /proc/kpagecount at that moment (tests/page_census.py)."""
    from tracer import account

    variant, b = boot
    c = b["census"][moment]
    rows = [account.unmapped_anon_pages(c[k], 4096) * 4 for k in ("meminfo_before", "meminfo")
            if k in c]  # meminfo read before and after the walk, which takes seconds in TCG
    counted = c["anon_unmapped_kb"]
    # Slack: one huge page (2048 kB) off the LRU for a moment (compaction, khugepaged or
    # its split isolate it) plus the per-CPU lag of four vmstat counters on 2 CPUs.
    slack = max(2048 + 768, counted // 10)
    assert min(rows) - slack <= counted <= max(rows) + slack, (
        f"{variant} {moment}: row {rows} kB, census {counted} kB "
        f"({c['anon_thp_unmapped_kb']} kB in {c['thp_partly_mapped']} partly mapped huge pages; "
        f"owners {c['owners_kb']})")


def test_unattributed_within_3_pct_at_every_sample(boot):
    """Every sample of the boot, from the first in the initramfs to the last."""
    from tracer import recording, timeline

    variant, b = boot
    rec = recording.read(str(b["rec"]))
    frame = timeline.build(rec)
    pct = 100 * frame["unattributed"] / frame["nonfree_mib"]
    worst = pct.abs().idxmax()
    moment = rec.samples[worst].get("moment") if worst < len(rec.samples) else None
    assert pct.abs().max() <= 3.0, (f"{variant}: unattributed {pct[worst]:.2f} % at "
                                    f"{frame['t_s'][worst]:.1f} s (read as {moment}); "
                                    f"phases {rec.phases}")
