"""The README's "On your own machine" route, end to end, in the plain guest (no network):

  host   python -m build --wheel                      (the wheel, with its CO-RE objects)
  guest  python3 -m venv --without-pip --system-site-packages /root/venv
         python3 pip-*.whl/pip install --no-index --no-deps --find-links WHEELHOUSE footprint
         footprint dracut install; dracut --force --add footprint
  host   boot the initramfs the guest built, with rd.footprint=1, on the same disk
  guest  footprint report                             (/run/footprint/recording.jsonl)

What differs from a user's machine, and why: pip runs from its own wheel (the guest has no
pip; the wheel is the host python's ensurepip copy, outside the repository) with
--no-deps (the guest has no network; click, pandas and pyroute2 come from Debian through
--system-site-packages; pyarrow, matplotlib and plotly, which only `--parquet` and the
plots need, are not installed); the kernel boots the guest-built initramfs by QEMU's
-initrd, as a boot loader would, from a copy-on-write overlay of the plain disk that both
boots share. The guest's agent runs from the lab's code disk; every footprint command here
runs with PYTHONPATH unset, so only the venv's copy can serve.
    .venv/bin/python -m pytest tests/test_pip_route.py -m qemu      # ~15 min under TCG
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import qemu_skip_reason

REPO = Path(__file__).resolve().parent.parent
VENV = "/root/venv"
WHEELHOUSE = "/root/wheelhouse"
NOPATH = "env -u PYTHONPATH "  # the agent puts the lab's /opt/footprint on PYTHONPATH


def _pip_wheel() -> Path | None:
    import ensurepip

    found = sorted(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl")))
    return Path(found[-1]) if found else None


def _run(g, cmd: str, timeout: float = 600) -> str:
    rc, out, err = g.run(cmd, timeout=timeout)
    assert rc == 0, f"{cmd!r}: rc {rc}: {(out + err).decode(errors='replace')[-1500:]}"
    return out.decode(errors="replace")


@pytest.fixture(scope="module")
def route(wheel, lab_cache, lab_logs) -> dict:
    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    pip = _pip_wheel()
    if pip is None:
        pytest.skip("no pip wheel in this python's ensurepip (the guest has no pip)")
    if shutil.which("qemu-img") is None:
        pytest.skip("no qemu-img (qemu-utils)")
    from vm import Guest, images

    spec = images.prepare("plain", lab_cache)
    work = Path(tempfile.mkdtemp(prefix="fp-pip-route-", dir="/var/tmp"))
    out: dict = {}
    try:
        disk = work / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(spec.delivery), str(disk)], check=True)
        spec.qemu_args = ["-drive", f"file={disk},format=qcow2,if=none,id=root",
                          "-device", "virtio-blk-pci,drive=root,addr=0x10"]
        # The guest-built initramfs comes out on a disk of its own (raw bytes at offset 0):
        # through the agent's JSON line it would be ~60 MB of base64.
        xfer = work / "xfer.img"
        with open(xfer, "wb") as f:
            f.truncate(256 << 20)
        with Guest(spec, memory=2048, timeout=3000, log=lab_logs / "pip-route-1.serial.log",
                   cache_dir=lab_cache,
                   extra_args=["-drive", f"file={xfer},format=raw,if=none,id=xfer",
                               "-device", "virtio-blk-pci,drive=xfer,serial=fpxfer,addr=0x12"]) as g:
            g.wait_ready(900)
            g.wait_system(900)
            for f in (wheel, pip):
                g.put_file(f"{WHEELHOUSE}/{f.name}", f.read_bytes())
            _run(g, f"python3 -m venv --without-pip --system-site-packages {VENV}")
            _run(g, f"{NOPATH}{VENV}/bin/python3 {WHEELHOUSE}/{pip.name}/pip install -q --no-index "
                    f"--no-deps --disable-pip-version-check --find-links {WHEELHOUSE} footprint", 900)
            out["install"] = _run(g, f"cd / && {NOPATH}{VENV}/bin/footprint dracut install")
            out["conf"] = _run(g, "cat /usr/lib/dracut/modules.d/95footprint/footprint.conf")
            out["dracut"] = _run(g, f"{NOPATH}dracut --force --add footprint 2>&1", 2400)
            kver = _run(g, "uname -r").strip()
            src = f"/boot/initrd.img-{kver}"
            size = int(_run(g, f"stat -c %s {src}"))
            _run(g, "for b in /sys/block/vd*; do [ \"$(cat $b/serial 2>/dev/null)\" = fpxfer ] && "
                    f"exec dd if={src} of=/dev/${{b##*/}} bs=1M conv=fsync status=none; done; exit 1", 600)
            _run(g, "sync")
            g.shutdown(timeout=120)
        initrd = work / "initrd.img"
        with open(xfer, "rb") as f:
            initrd.write_bytes(f.read(size))
        out["initrd_bytes"] = size
        spec.initrd = initrd
        spec.append += " rd.footprint=1"
        with Guest(spec, memory=2048, timeout=1800, log=lab_logs / "pip-route-2.serial.log",
                   cache_dir=lab_cache) as g:
            g.wait_ready(900)
            out["state"] = g.wait_system(900)
            # rd.footprint.stop=multi-user (the default): the recording ends by itself
            _run(g, "for i in $(seq 120); do grep -q '\"type\": *\"end\"' /run/footprint/recording.jsonl "
                    "2>/dev/null && exit 0; sleep 1; done; exit 1", 300)
            out["start_log"] = _run(g, "cat /run/footprint/start.log")
            out["report"] = _run(g, f"cd / && {NOPATH}{VENV}/bin/footprint report --json", 600)
            out["text"] = _run(g, f"cd / && {NOPATH}{VENV}/bin/footprint report", 600)
            out["header"] = _run(g, "head -n 1 /run/footprint/recording.jsonl")
            g.get_file("/run/footprint/recording.jsonl", lab_logs / "pip-route.recording.jsonl")
            out["recording"] = lab_logs / "pip-route.recording.jsonl"
            g.shutdown(timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


@pytest.mark.qemu
@pytest.mark.skipif(qemu_skip_reason() is not None, reason=qemu_skip_reason() or "")
def test_readme_route_traces_early_boot_from_a_pip_installed_footprint(route):
    assert "dracut --force --add footprint" in route["install"]
    assert f"FP_INSTALL_PYTHON={VENV}/bin/python3" in route["conf"], route["conf"]
    assert "footprint: the recorder's closure" in route["dracut"], route["dracut"][-2000:]
    assert route["state"] in ("running", "degraded"), route["state"]
    assert "tracing since" in route["start_log"], route["start_log"]
    rep = json.loads(route["report"])
    header = json.loads(route["header"])
    assert header["plan"]["loader"] == "libbpf", header["plan"]
    # the recorder in the initramfs was the venv's copy
    assert any(f[2].startswith(f"{VENV}/") for f in header["tracer"]["files"]), header["tracer"]
    phases = {p["name"]: p["t_s"] for p in rep["phases"]}
    assert phases["attached"] < phases["switch_root"] < phases["multi-user"], phases
    # rows from before switch_root: the plain boot's storage stack (the root disk's ext4 and
    # its block device, read by the initramfs to mount it)
    layers = {r.get("layer") or "" for r in rep["account"] if (r.get("resident_pages") or 0) > 0}
    assert any("ext4" in x and "vda" in x for x in layers), sorted(layers)
    assert rep["recording"]["samples"] >= 3 and rep["recording"]["partial"] is False
    # and the account of the last sample before switch_root, read here from the guest's
    # recording: the root disk's page cache was already there, seen by the early recorder
    from tracer import account, recording

    rec = recording.read(str(route["recording"]))
    before = [i for i, s in enumerate(rec.samples) if s["t"] < phases["switch_root"]]
    assert before, phases
    rows = account.build(rec, before[-1]).rows
    early = rows[(rows["resident_pages"] > 0) & rows["layer"].str.contains("vda")]
    assert len(early), rows[["subsystem", "layer", "resident_pages"]].to_string()
