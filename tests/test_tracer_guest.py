"""The tracer in the booted live guest (bookworm, kernel 6.1 with kprobes, device-mapper,
matching headers): attached after boot, it must find the whole live stack — squashfs,
device-mapper live-rw, loop, ext4 — and its rows must reconcile to MemTotal − MemFree."""

from __future__ import annotations

import json

import pytest

from tracer import account, recording, report

from conftest import qemu_skip_reason

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def live_recording(tmp_path_factory, lab_cache):
    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    from vm import guest

    out = tmp_path_factory.mktemp("guest") / "live.jsonl"
    with guest("live", cache_dir=lab_cache) as g:
        g.wait_ready(900)
        g.wait_system(900)
        rc, so, se = g.run(
            "footprint record -o /run/fp-after-boot.jsonl -d 20 --interval 1 >/run/fp.log 2>&1 & "
            "for i in $(seq 600); do grep -q '\"type\":\"sample\"' /run/fp-after-boot.jsonl 2>/dev/null && break; sleep 1; done; "
            # a tmpfs file written while tracing: the shmem kprobe extra must see it
            "dd if=/dev/urandom of=/run/fp-tmpfs.bin bs=1M count=8 status=none; "
            "wait; cat /run/fp.log", timeout=1500)
        assert rc == 0, (so + se).decode(errors="replace")[-2000:]
        g.get_file("/run/fp-after-boot.jsonl", str(out))
        rc, text, _ = g.run("footprint report /run/fp-after-boot.jsonl", timeout=600)
        assert rc == 0
        g.shutdown()
    return out, text.decode()


def test_live_stack_rows_and_reconciliation(live_recording):
    path, guest_text = live_recording
    rec = recording.read(str(path))
    assert not rec.partial
    # 6.1 has BTF: the hot events ran as tp_btf programs, their nested twins loaded with
    # them (a refusal by 6.1's verifier would fall back to classic tracepoints)
    from tracer import progkinds
    assert progkinds.describe(rec.header["plan"]).startswith("6 tp_btf"), rec.header["plan"].get("btf_fallback")
    acc = account.build(rec)
    rows = acc.rows
    subsystems = set(rows.loc[rows["resident_pages"] > 0, "subsystem"])
    assert {"squashfs", "device-mapper", "loop", "ext4"} <= subsystems, sorted(subsystems)
    # squashfs holds rootfs.img's decompressed pages; iso9660 holds squashfs.img.
    squash_pc = rows[(rows["subsystem"] == "squashfs") & (rows["kind"] == "page-cache")]
    assert squash_pc["resident_pages"].sum() > 0
    assert any("live-rw" in layer for layer in rows["layer"]), set(rows["layer"])
    # It adds up to MemTotal − MemFree, and the unattributed share is printed.
    total_mib = rows["resident_pages"].sum() * acc.page_size / 2**20
    assert total_mib == pytest.approx(acc.meminfo["nonfree_mib"], abs=0.01)
    assert "unattributed" in guest_text and "MemTotal-MemFree" in guest_text
    print(f"live guest: unattributed {acc.meminfo['unattributed_pct']:.1f} % of "
          f"{acc.meminfo['nonfree_mib']:.0f} MiB")


def test_live_double_caching_is_named(live_recording):
    path, _ = live_recording
    obj = report.to_json(recording.read(str(path)), account.build(recording.read(str(path))))
    labels = [c["label"] for c in obj["double_caching"]]
    chain = next((c for c in obj["double_caching"] if "live-rw" in c["label"]
                  and "rootfs.img" in c["label"] and "squashfs.img" in c["label"]), None)
    assert chain is not None, labels
    assert chain["layers_holding_data"] >= 2, json.dumps(chain)[:2000]


def test_kprobe_extra_sees_tmpfs_pages(live_recording):
    """The guest kernel has kprobes and BTF: shmem adds are traced per file, reading the
    struct fields at the offsets BTF gives."""
    path, _ = live_recording
    rec = recording.read(str(path))
    probes = {p["probe"]: p for p in rec.header["plan"]["probes"]}
    assert probes["kprobe:shmem_add_to_page_cache"]["active"], probes
    acc = account.build(rec)
    tmpfs = acc.files[acc.files["kind"] == "shmem"]
    biggest = int(tmpfs["resident_pages"].max()) if len(tmpfs) else 0
    assert 8 * 256 <= biggest <= 8 * 256 + 16, tmpfs.head().to_dict("records")
