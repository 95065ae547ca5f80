"""footprint from the initramfs on: the dracut module (tracer/dracut_module) on a live boot.

Two boots under QEMU (TCG: a few minutes each), shared by the tests of this module:
  traced_live   live ISO, traced initramfs, rd.footprint=1 (stop at multi-user, the
                default): the recorder attaches before dracut-cmdline and udev, traces
                through switch_root, and at multi-user exits leaving its account pinned;
                the hook reads what the tracer still costs and the pinned account.
  broken_live   the same with rd.footprint.break=1 (the start script runs a failing
                command instead of the recorder): the boot must go on, the console say why.
  hung_live     rd.footprint.break=hang rd.footprint.timeout=20: a "recorder" that never
                attaches is killed after 20 s, the boot goes on.
  oom_live      traced like traced_live but rd.footprint.stop=never (the recorder keeps
                running until the hook stops it), and as soon as the guest agent answers (sysinit),
                a memory hog runs in a unit multi-user.target waits for: the machine runs
                out of memory during the boot; the OOM killer must take the hog, the boot
                complete, and the recording say who was killed and what it missed.
They skip only without root or qemu-system-x86_64.
    .venv/bin/python -m pytest tests/test_early_boot.py -m qemu     # ~10 min, images cached
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import qemu_skip_reason
from tracer import dracut
from vm import cpio, images
from vm.traced import EXPERIMENT_APPEND, KEEP_RECORDING_APPEND, footprint_hook

_skip = pytest.mark.skipif(qemu_skip_reason() is not None, reason=qemu_skip_reason() or "")


def needs_qemu(fn):
    return pytest.mark.qemu(_skip(fn))


MODULE = dracut.module_source()

# dracut's hooks in boot order, then switch_root and the booted system's targets. The mount
# hook has no mark on a systemd initramfs whose root is not mounted by dracut-mount.service.
BOOT_ORDER = ["attached", "cmdline", "pre-udev", "pre-trigger", "initqueue", "pre-mount", "mount",
              "pre-pivot", "cleanup", "switch_root", "sysinit", "basic", "multi-user"]
REQUIRED = ["attached", "cmdline", "pre-udev", "pre-trigger", "initqueue", "pre-mount",
            "pre-pivot", "cleanup", "switch_root", "sysinit", "basic", "multi-user"]


def _boot(name: str, append: str, cache: Path, logs: Path, during_boot=None, after_boot=None,
          after_hook=None) -> dict:
    """One traced live boot; `during_boot(guest, out)` runs as soon as the agent answers
    (sysinit), before multi-user, and `after_boot(guest, out)` once the system is up."""
    from vm import Guest

    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    spec = images.prepare("live", cache, traced=True, append=append)
    log = logs / f"{name}.serial.log"
    out: dict = {"log": log}
    with Guest(spec, memory=2048, timeout=1800, log=log, cache_dir=cache) as g:
        g.wait_ready(1500)
        if during_boot is not None:
            during_boot(g, out)
        out["state"] = g.wait_system(900)
        if after_boot is not None:
            after_boot(g, out)
        out["boot_seconds"] = time.monotonic() - g.started_at
        out["hook"] = footprint_hook(g, {"name": name}, keep=logs)
        if after_hook is not None:
            after_hook(g, out)
        rc, mounts, _ = g.run("findmnt -n -o TARGET,SOURCE,FSTYPE", timeout=60)
        out["findmnt"] = mounts.decode()
        g.shutdown(timeout=60)
    out["serial"] = log.read_text(errors="replace")
    rec = logs / f"{name}.recording.jsonl"
    out["recording"] = rec if rec.exists() else None
    return out


@pytest.fixture(scope="module")
def traced_live(lab_cache, lab_logs) -> dict:
    def second_pin(g, out):
        # once the hook has read the account: a second `record --pin` is one line, exit 2
        rc, so, se = g.run("footprint record --pin -o /run/fp-second.jsonl -d 1", timeout=600)
        out["second_pin_rc"], out["second_pin"] = rc, se.decode(errors="replace").strip()

    out = _boot("traced-live", EXPERIMENT_APPEND, lab_cache, lab_logs, after_hook=second_pin)
    # where the attach time went (pytest -s shows it)
    state = out["hook"]["recorder"]
    print("\n".join(["", "traced-live:", state.get("start_log", ""),
                     f"attach_seconds {state.get('attach_seconds')}, first sample "
                     f"{out['hook'].get('first_sample_seconds')} s"] + state.get("recorder_log", [])))
    return out


@pytest.fixture(scope="module")
def broken_live(lab_cache, lab_logs) -> dict:
    return _boot("broken-live", "rd.footprint.break=1", lab_cache, lab_logs)


@pytest.fixture(scope="module")
def hung_live(lab_cache, lab_logs) -> dict:
    return _boot("hung-live", "rd.footprint.break=hang rd.footprint.timeout=20", lab_cache, lab_logs)


# The hog: locked memory (mlockall), so it cannot be reclaimed and its own code is not
# evicted and re-read from squashfs: the machine runs out within seconds instead of
# thrashing for many minutes; oom_score_adj makes it the OOM killer's first choice.
HOG = """
import ctypes, os
open("/proc/self/oom_score_adj", "w").write("1000")
ctypes.CDLL(None).mlockall(3)  # MCL_CURRENT | MCL_FUTURE
hold = []
while True:
    hold.append(bytearray(32 << 20))
"""


def _start_hog(g, out: dict) -> None:
    """Runs HOG in a unit that multi-user.target is ordered after, so it happens during
    the boot whatever the timing: the boot reaches multi-user only once the hog is gone."""
    g.put_file("/run/fp-hog.py", HOG.encode())
    g.run("systemd-run --unit=fp-hog --service-type=oneshot --no-block "
          "-p DefaultDependencies=no -p Before=multi-user.target python3 /run/fp-hog.py",
          timeout=120, check=True)


def _hog_outcome(g, out: dict) -> None:
    """The hog's end, once it has ended: the recorder is stopped only after that (when the
    agent answered late, the boot may have reached multi-user before the hog started)."""
    deadline = time.monotonic() + 300
    while True:
        rc, show, _ = g.run("systemctl show fp-hog -p Result -p ExecMainPID -p ExecMainStatus "
                            "-p ActiveState -p ExecMainStartTimestampMonotonic", timeout=60)
        hog = dict(ln.split("=", 1) for ln in show.decode().split("\n") if "=" in ln)
        if hog.get("ActiveState") not in ("activating", "active") or time.monotonic() > deadline:
            break
        time.sleep(2)
    out["hog"] = hog


@pytest.fixture(scope="module")
def oom_live(lab_cache, lab_logs) -> dict:
    return _boot("oom-live", KEEP_RECORDING_APPEND, lab_cache, lab_logs, during_boot=_start_hog,
                 after_boot=_hog_outcome)


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


# ------------------------------------------------------------------ unit: the module's files

def test_module_scripts_parse():
    for f in sorted(MODULE.glob("*.sh")):
        shell = "bash" if f.read_text().startswith("#!/bin/bash") else "sh"
        p = subprocess.run([shell, "-n", str(f)], capture_output=True, text=True)
        assert p.returncode == 0, (f.name, p.stderr)


def _unit(name: str) -> dict:
    out: dict = {}
    for line in (MODULE / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_never_blocks_the_boot():
    u = _unit("footprint.service")
    assert u["DefaultDependencies"] == ["no"]
    assert "ConditionKernelCommandLine" in u and "rd.footprint=1" in u["ConditionKernelCommandLine"]
    before = " ".join(u["Before"])
    assert "dracut-cmdline.service" in before and "systemd-udevd.service" in before
    assert u["IgnoreOnIsolate"] == ["yes"]  # survives the isolate to initrd-switch-root.target
    assert all(cmd.startswith("-") for cmd in u["ExecStart"])  # failure is not the unit's
    assert int(u["TimeoutStartSec"][0]) > 0
    assert "Requires" not in u and "RequiredBy" not in u and "WantedBy" not in u
    start = (MODULE / "footprint-start.sh").read_text()
    # the start script's own wait is bounded below the unit's timeout
    m = re.search(r"timeout=\$\(arg rd.footprint.timeout (\d+)\)", start)
    assert m and int(m.group(1)) < int(u["TimeoutStartSec"][0])
    assert "exit 1" not in start  # it always exits 0


def test_module_check_asks_to_be_named():
    text = (MODULE / "module-setup.sh").read_text()
    assert re.search(r"check\(\) \{.*?return 255", text, re.S)
    for f in ("footprint-start.sh", "footprint-mark.sh", "footprint-detach.sh",
              "footprint.service", "footprint-switch-root.service", "footprint-mark@.service",
              "footprint-stop.service", "footprint-cmdline.sh"):
        assert f in text, f"module-setup.sh does not install {f}"


def test_initramfs_facts_reads_concatenated_archives(tmp_path):
    import gzip

    def archive(files: dict) -> bytes:
        import io

        buf = io.BytesIO()
        for i, (name, data) in enumerate(files.items()):
            cpio.entry(buf, name, 0o100644, data, 100 + i, 1)
        cpio.entry(buf, "TRAILER!!!", 0, b"", 0, 1)
        return buf.getvalue() + b"\0" * ((-buf.tell()) % 512)

    early = archive({"kernel/x86/microcode/GenuineIntel.bin": b"u" * 10})
    main = gzip.compress(archive({"usr/lib/footprint/manifest": b"/a\n/b\n", "init": b"x" * 1000}))
    p = tmp_path / "initrd.img"
    p.write_bytes(early + main)
    f = cpio.initramfs_facts(p, want="usr/lib/footprint/manifest")
    assert f["file"] == b"/a\n/b\n" and f["members"] == 3
    assert f["unpacked_bytes"] == 10 + 6 + 1000 and f["compressed_bytes"] == len(early + main)


# ------------------------------------------------------------------ (a) a traced live boot

@needs_qemu
def test_traced_boot_reaches_multi_user_with_a_recording(traced_live):
    assert traced_live["state"] in ("running", "degraded"), traced_live["state"]
    hook = traced_live["hook"]
    assert "error" not in hook, hook.get("error")
    assert re.search(r"footprint: tracing since [\d.]+ s", traced_live["serial"])
    # recorded through switch_root until multi-user's stop file, then exited
    assert hook["recording"]["samples"] > 10
    assert hook["recorder_end"] == "stop-file", hook
    assert hook["recorder_exited"], hook["recorder"]


@needs_qemu
def test_attached_before_the_first_loop_device(traced_live):
    recs = _records(traced_live["recording"])
    samples = [r["t"] for r in recs if r.get("type") == "sample"]
    loops = [r["t"] for r in recs if r.get("type") == "uevent"
             and str(r.get("DEVNAME", "")).startswith("loop") and r.get("ACTION") == "add"]
    dms = [r["t"] for r in recs if r.get("type") == "uevent"
           and str(r.get("DEVNAME", "")).startswith("dm-")]
    assert samples and loops and dms, (len(samples), loops, dms)
    assert samples[0] < min(loops) < min(dms)
    # and the samples go on after switch_root until the booted system's multi-user
    phases = {p["name"]: p["t_s"] for p in traced_live["hook"]["phases"]}
    assert max(samples) > phases["multi-user"] > phases["switch_root"]


@needs_qemu
def test_phases_in_boot_order(traced_live):
    names = [p["name"] for p in traced_live["hook"]["phases"]]  # sorted by time
    seen = [n for n in names if n in BOOT_ORDER]
    assert all(n in seen for n in REQUIRED), (REQUIRED, names)
    assert seen == sorted(seen, key=BOOT_ORDER.index), names
    assert len(seen) == len(set(seen)), f"a mark came twice: {names}"  # initqueue once


def _rows(account: list[dict], pattern: str) -> list[dict]:
    rx = re.compile(pattern, re.I)
    return [r for r in account if rx.search(f"{r.get('subsystem')} {r.get('layer')} {r.get('source')}")
            and (r.get("resident_pages") or 0) > 0]


@needs_qemu
def test_account_holds_squashfs_and_device_mapper(traced_live):
    account = traced_live["hook"]["account"]
    squash = _rows(account, r"squashfs")
    dm = _rows(account, r"device-mapper|\bdm\b|dm-|live-rw|dm_snapshot")
    assert squash, json.dumps(account, indent=1)[:3000]
    assert dm, json.dumps(account, indent=1)[:3000]
    # squashfs's own memory, not only the page cache of files on it: its caches and
    # decompressor buffers are slab/vmalloc/kernel pages allocated at mount time
    own = [r for r in squash if r.get("kind") not in ("page cache", "pagecache", "file")]
    assert own, json.dumps(squash, indent=1)


@needs_qemu
def test_after_boot_only_the_pinned_maps_stay(traced_live):
    """After boot no process of the tracer runs and it holds no initramfs file: its own
    cost is its pinned maps (what the bench reports as tracer_own_mib), and the pinned
    account, read after boot, still has the squashfs and loop rows counted before
    switch_root."""
    from tracer import account, recording, report

    hook = traced_live["hook"]
    own = hook["own"]
    assert "error" not in own and "maps_error" not in own, own
    assert own["processes"] == [] and own["held_deleted_bytes"] == 0, own
    assert {"files", "stats"} <= set(own["maps"]) and all(b > 0 for b in own["maps"].values()), own
    assert own["mib"] == own["maps_mib"] == round(sum(own["maps"].values()) / 2**20, 2), own
    assert 0 < own["mib"] < 16, own
    # the pinned account (the last sample, read from the pinned maps after boot)
    rec = recording.read(str(traced_live["recording"]))
    # sampled by the snapshot's reader, footprint's process: its memory is the tracer's
    assert rec.samples[-1]["tracer"]["anon_kb"] > 0
    phases = {p["name"]: p["t_s"] for p in report.to_json(rec, account.build(rec))["phases"]}
    before = [i for i, x in enumerate(rec.samples) if x["t"] < phases["switch_root"]]
    assert before and rec.samples[-1]["t"] > phases["multi-user"]
    for index in (before[-1], len(rec.samples) - 1):
        rows = report.to_json(rec, account.build(rec, index))["account"]
        assert _rows(rows, r"squashfs"), (index, json.dumps(rows, indent=1)[:3000])
        assert _rows(rows, r"\bloop"), (index, json.dumps(rows, indent=1)[:3000])


@needs_qemu
def test_a_second_pinned_recorder_is_refused(traced_live):
    line = traced_live["second_pin"]
    assert traced_live["second_pin_rc"] == 2 and len(line.splitlines()) == 1, line
    assert "already pinned" in line and "Traceback" not in line, line


# ------------------------------------------------------------------ (b) a broken tracer

@needs_qemu
def test_broken_tracer_does_not_block_the_boot(broken_live):
    assert broken_live["state"] in ("running", "degraded"), broken_live["state"]
    lines = [ln for ln in broken_live["serial"].splitlines() if "footprint: not tracing:" in ln]
    assert len(lines) == 1, lines
    assert "deliberately broken" in lines[0]
    hook = broken_live["hook"]
    assert "not tracing" in hook.get("error", ""), hook
    assert not hook["recorder"].get("running")


@needs_qemu
def test_hung_tracer_is_given_up_on(hung_live):
    assert hung_live["state"] in ("running", "degraded"), hung_live["state"]
    lines = [ln for ln in hung_live["serial"].splitlines() if "footprint: not tracing:" in ln]
    assert len(lines) == 1 and "no sample after 20 s" in lines[0], lines
    assert not hung_live["hook"]["recorder"].get("running")


# ------------------------------------------------------------------ (c) out of memory while booting

@needs_qemu
def test_out_of_memory_during_a_traced_boot(oom_live):
    from tracer import account, recording, report

    # The boot completes ("degraded": the hog's unit failed), the OOM killer took the hog.
    assert oom_live["state"] in ("running", "degraded"), oom_live["state"]
    hog = oom_live["hog"]
    assert hog.get("Result") == "oom-kill", hog
    hog_pid = int(hog["ExecMainPID"])
    # The recorder lived through it and ended cleanly, with a readable recording.
    hook = oom_live["hook"]
    assert "error" not in hook, hook.get("error")
    assert hook["recorder"]["running"] and hook["recorder_end"] == "stop-file", hook
    rec = recording.read(str(oom_live["recording"]))
    acc = account.build(rec)
    rep = report.to_json(rec, acc)
    # It says who was killed, and when: during the boot, before multi-user.
    victims = [v for v in rep["oom"] if v["pid"] == hog_pid]
    assert victims, (hog_pid, rep["oom"])
    phases = {p["name"]: p["t_s"] for p in rep["phases"]}
    assert rec.header["attached"] < victims[0]["t"], (victims, rec.header["attached"])
    # During the boot when the hog started before multi-user (the unit is ordered before
    # it; an agent that answered late can start it after).
    started = int(hog.get("ExecMainStartTimestampMonotonic") or 0) / 1e6
    if 0 < started < phases["multi-user"]:
        assert victims[0]["t"] < phases["multi-user"], (victims, phases, started)
    assert rep["stats"]["oom_kills"] >= 1
    # And what it missed: events the kernel skipped, map drops, the longest sampling gap.
    assert rep["lost_events"] >= 0 and rep["map_drops"] >= 0
    assert rep["recording"]["max_sample_gap_s"] >= rep["recording"]["interval_s"]
    text = report.text(rec, acc)
    assert re.search(rf"OOM killer: \d+ victims? while recording: pid {hog_pid} ", text), text
    assert re.search(r"lost events: \d+ .*map drops: \d+", text), text
    # The account still adds up after the storm.
    total = sum(r["resident_pages"] for r in rep["account"])
    assert abs(total * rec.header["page_size"] / 2**20 - rep["meminfo"]["nonfree_mib"]) < 0.01
