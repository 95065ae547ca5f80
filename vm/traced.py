"""Traced boots: the recording footprint's dracut module made, fetched and accounted.

A traced boot (BootSpec.traced, see tracer/dracut_module) starts `footprint record` in the
initramfs before dracut-cmdline and udev, and it keeps recording through switch_root into
/run/footprint/recording.jsonl. `footprint_hook` is an experiment per-boot hook
(vm.experiment hooks: `hook(guest, boot) -> dict`): it reads the recorder's own memory
while it still runs, stops it (the stop file), fetches the recording, reads it once on the
host (kept on the Boot for the moments' accounts) and builds the account after boot.

    from vm.traced import footprint_hook, fetch_recording
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

from .qemu import Guest
from .results import Boot

RUN = "/run/footprint"
RECORDING = f"{RUN}/recording.jsonl"
# Boots for `footprint experiment`: the recorder runs until the hook stops it, so the
# account is taken at the moment the other figures are (and its own memory can be read).
EXPERIMENT_APPEND = "rd.footprint.stop=never"


def recorder_state(g: Guest) -> dict:
    """What the initramfs said (start.log), when it started and attached (uptime seconds),
    and the running recorder's pid, argv[0] and memory (kB) from /proc/PID/status."""
    out: dict = {}
    rc, log, _ = g.run(f"cat {RUN}/start.log 2>/dev/null", timeout=60)
    out["start_log"] = log.decode(errors="replace").strip()
    rc, att, _ = g.run(f"cat {RUN}/attach 2>/dev/null", timeout=60)
    parts = att.split()
    if len(parts) == 2:
        out["started_s"], out["attached_s"] = float(parts[0]), float(parts[1])
        out["attach_seconds"] = round(out["attached_s"] - out["started_s"], 2)
    rc, tail, _ = g.run(f"tail -n 8 {RUN}/recorder.log 2>/dev/null", timeout=60)
    out["recorder_log"] = tail.decode(errors="replace").strip().splitlines()
    rc, pid, _ = g.run(f"cat {RUN}/recorder.pid 2>/dev/null", timeout=60)
    pid = pid.decode().strip()
    if pid.isdigit():
        out["pid"] = int(pid)
        rc, status, _ = g.run(f"cat /proc/{pid}/status 2>/dev/null; echo; "
                              f"tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null", timeout=60)
        text = status.decode(errors="replace")
        mem = {}
        for line in text.splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "VmSize"):
                mem[key] = int(val.split()[0])
        out["running"] = bool(mem)
        if mem:
            out["memory_kb"] = mem
            out["argv"] = text.strip().splitlines()[-1][:300]
    return out


def stop_recorder(g: Guest, pid: Optional[int], timeout: float = 120.0) -> str:
    """Touch the stop file and wait for the recorder to write its last sample and exit;
    SIGTERM (same effect) if it does not."""
    g.run(f"echo experiment > {RUN}/stop", timeout=60)
    if not pid:
        return "not running"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc, _, _ = g.run(f"kill -0 {pid} 2>/dev/null", timeout=60)
        if rc != 0:
            return "stop-file"
        time.sleep(1)
    g.run(f"kill -TERM {pid}", timeout=60)
    time.sleep(5)
    return "SIGTERM"


def account_of(rec) -> dict:
    """`footprint report --json` of a Recording at its last sample, as a dict."""
    from tracer import account, report

    return report.to_json(rec, account.build(rec))


def fetch_recording(g: Guest, host_path: Path) -> Path:
    """Copies the guest's recording (/run/footprint/recording.jsonl) to `host_path`."""
    g.get_file(RECORDING, host_path, timeout=300)
    return host_path


def footprint_hook(g: Guest, boot: Boot | dict, keep: Optional[Path] = None) -> dict:
    """Experiment hook for traced boots: {"recorder": state, "account": rows, "phases":
    [{"name", "t_s"}] in boot order, "recording": summary}; {"error": why} if the boot
    was not traced (the console line of footprint-start says why). The Recording read
    goes to `boot.recording` (a Boot; a {"name": …} dict also does, for callers outside
    the experiment), the file to `keep` (<name>.recording.jsonl)."""
    from tracer import recording

    name = boot.name if isinstance(boot, Boot) else boot.get("name", "boot")
    state = recorder_state(g)
    result: dict = {"recorder": state}
    if not state.get("running") and "not tracing" in state.get("start_log", ""):
        result["error"] = state["start_log"].splitlines()[-1]
        return result
    result["stopped_by"] = stop_recorder(g, state.get("pid"))
    with tempfile.TemporaryDirectory(prefix="footprint-rec-") as tmp:
        path = Path(tmp) / "recording.jsonl"
        try:
            fetch_recording(g, path)
        except Exception as err:  # noqa: BLE001 - the boot's other figures still count
            result["error"] = f"no recording: {err}"
            return result
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"{name}.recording.jsonl").write_bytes(path.read_bytes())
        try:
            rec = recording.read(str(path))
            rep = account_of(rec)
        except Exception as err:  # noqa: BLE001
            result["error"] = f"recording not readable: {err}"
            return result
    if isinstance(boot, Boot):
        boot.recording = rec
    result["account"] = rep["account"]
    result["phases"] = sorted(rep["phases"], key=lambda p: p["t_s"])
    result["recording"] = rep["recording"]
    result["map_drops"] = rep.get("map_drops")
    result["meminfo"] = rep.get("meminfo")
    return result
