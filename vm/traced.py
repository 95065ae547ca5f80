"""Traced boots: the recording footprint's dracut module made, fetched and accounted.

A traced boot (BootSpec.traced, see tracer/dracut_module) starts `footprint record --pin`
in the initramfs before dracut-cmdline and udev; it records through switch_root into
/run/footprint/recording.jsonl and, at multi-user (rd.footprint.stop), exits and leaves
the account pinned in bpffs: no process of the tracer stays. Later moments are read from
the pinned maps (`pinned_snapshot`: tracer.snapshot, chained into one recording,
/run/footprint/moments.jsonl, a phase mark before each moment's sample).
`footprint_hook` is an experiment per-boot hook (vm.experiment hooks: `hook(guest, boot)
-> dict`): it reads the recorder's state, stops it where it still runs (rd.footprint.stop=
never), measures what the tracer still costs (`tracer_own`: the pinned maps, any
process of it and the initramfs files it holds), fetches the recording (the chain of
snapshots where the account is pinned), reads it once on the host (kept on the Boot for
the moments' accounts) and builds the account after boot.

    from vm.traced import footprint_hook, fetch_recording
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Optional

from .qemu import Guest
from .results import Boot

RUN = "/run/footprint"
RECORDING = f"{RUN}/recording.jsonl"
MOMENTS = f"{RUN}/moments.jsonl"  # the chain of pinned snapshots (pinned_snapshot)
# Boots for `footprint experiment` and the bench: the recorder stops at multi-user and
# leaves the account pinned (the default); the moments are read from the pinned maps.
EXPERIMENT_APPEND = "rd.footprint.stop=multi-user"
# The recorder keeps running after boot (the timeline goes on until the hook stops it).
KEEP_RECORDING_APPEND = "rd.footprint.stop=never"
GUEST_CODE = "/opt/footprint"  # vm/code.py: the tree the guest imports tracer from

# In the guest: the pinned account read now, continuing the chain (MOMENTS) or, the first
# time, the recording; a phase mark named argv[1] (if any) before the new sample.
_SNAPSHOT = r"""
import os, sys
sys.path.insert(0, sys.argv[3])
from tracer.snapshot import snapshot
chain = sys.argv[2]
snapshot(chain + ".new", source=chain if os.path.exists(chain) else None,
         phase=sys.argv[1] or None)
os.replace(chain + ".new", chain)
"""

# In the guest: what the tracer costs now. The pinned maps (memlock, as the kernel charges
# them), every process of it (argv[0] @footprint: RSS, anonymous part) and the files it
# still holds that are deleted (the initramfs's python and libraries after switch_root;
# ramfs keeps each whole while it is open or mapped).
_OWN = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
out = {"maps": {}, "processes": [], "held_deleted_bytes": 0}
try:
    from tracer import pinned
    out["maps"] = pinned.maps_memlock()
except Exception as err:
    out["maps_error"] = str(err)[:200]
held = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if not f.read().startswith(b"@footprint"):
                continue
        with open(f"/proc/{pid}/status") as f:
            st = {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in f)
                  if k in ("VmRSS", "RssAnon", "RssFile")}
        out["processes"].append({"pid": int(pid), **st})
        for d in (f"/proc/{pid}/map_files", f"/proc/{pid}/fd"):
            for e in os.listdir(d):
                p = os.path.join(d, e)
                if os.readlink(p).endswith(" (deleted)"):
                    s = os.stat(p)
                    held[(s.st_dev, s.st_ino)] = s.st_size
    except OSError:
        continue
out["held_deleted_bytes"] = sum(held.values())
out["held_deleted_files"] = len(held)
maps = sum(out["maps"].values())
anon = sum(p.get("RssAnon", 0) for p in out["processes"]) * 1024
out["mib"] = round((maps + anon + out["held_deleted_bytes"]) / 1048576, 2)
out["maps_mib"] = round(maps / 1048576, 2)
print(json.dumps(out))
"""


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
    rc, tail, _ = g.run(f"tail -n 40 {RUN}/recorder.log 2>/dev/null", timeout=60)
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


def recorder_gone(g: Guest, pid: Optional[int], timeout: float = 180.0) -> bool:
    """Wait (bounded) until the recorder `pid` has exited; True once it has."""
    if not pid:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc, _, _ = g.run(f"kill -0 {int(pid)} 2>/dev/null", timeout=60)
        if rc != 0:
            return True
        time.sleep(1)
    return False


def is_pinned(g: Guest) -> bool:
    """Whether the guest holds a pinned account (tracer/pinned.py META)."""
    rc, _, _ = g.run("test -e /run/footprint/pinned.json", timeout=60)
    return rc == 0


def pinned_snapshot(g: Guest, phase: Optional[str] = None, timeout: float = 600.0) -> bool:
    """Where the account is pinned and its recorder has exited: one more sample of the
    pinned maps appended to the chain (MOMENTS), after a phase mark `phase`; returns
    False (nothing done) where no account is pinned or its recorder still runs (then it
    samples by itself). Raises RuntimeError when the snapshot fails."""
    if not is_pinned(g):
        return False
    rc, pid, _ = g.run(f"cat {RUN}/recorder.pid 2>/dev/null", timeout=60)
    pid = pid.decode().strip()
    # Asked to stop (the stop file), it is writing its last sample: wait for it. Not
    # asked (rd.footprint.stop=never), it goes on sampling: its recording has the moment.
    rc, _, _ = g.run(f"test -e {RUN}/stop", timeout=60)
    if rc != 0 and not recorder_gone(g, int(pid) if pid.isdigit() else None, timeout=0.5):
        return False
    if not recorder_gone(g, int(pid) if pid.isdigit() else None):
        return False
    rc, out, err = g.run(["python3", "-c", _SNAPSHOT, phase or "", MOMENTS, GUEST_CODE], timeout=timeout)
    if rc != 0:
        raise RuntimeError(f"pinned snapshot failed in the guest: {err.decode(errors='replace')[-300:]}")
    return True


def tracer_own(g: Guest) -> dict:
    """What the tracer costs in the guest now (_OWN): {"mib": maps + processes' anonymous
    memory + deleted files they hold, "maps_mib", "maps": {name: bytes}, "processes",
    "held_deleted_bytes", "held_deleted_files"}; {"error": why} if it cannot be read."""
    rc, out, err = g.run(["python3", "-c", _OWN, GUEST_CODE], timeout=300)
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (err or out).decode(errors="replace")[-300:]}


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
    if is_pinned(g):
        # The recorder stops by itself at rd.footprint.stop (else here) and leaves the
        # account pinned; it is read from the pinned maps.
        rc, _, _ = g.run(f"test -e {RUN}/stop", timeout=60)
        if state.get("running") and rc != 0:  # rd.footprint.stop=never: stopped here
            result["stopped_by"] = stop_recorder(g, state.get("pid"))
        else:
            result["stopped_by"] = "rd.footprint.stop"
        result["recorder_exited"] = recorder_gone(g, state.get("pid"))
        try:
            rc, _, _ = g.run(f"test -e {MOMENTS}", timeout=60)
            if rc != 0:  # no moment read it yet: the account after boot, now
                pinned_snapshot(g, None)
            source = MOMENTS
        except RuntimeError as err:
            result["error"] = str(err)
            return result
    else:
        result["stopped_by"] = stop_recorder(g, state.get("pid"))
        result["recorder_exited"] = recorder_gone(g, state.get("pid"), timeout=10)
        source = RECORDING
    result["own"] = state["own"] = tracer_own(g)  # also on the Boot's trace (its "tracer")
    # how the recorder itself ended (its recording's end record; a snapshot has its own)
    rc, last, _ = g.run(f"tail -n 1 {RECORDING}", timeout=60)
    try:
        end = json.loads(last.decode())
        result["recorder_end"] = end.get("reason") if end.get("type") == "end" else None
    except ValueError:
        result["recorder_end"] = None
    with tempfile.TemporaryDirectory(prefix="footprint-rec-") as tmp:
        path = Path(tmp) / "recording.jsonl"
        try:
            g.get_file(source, path, timeout=300)
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
    if rec.samples and state.get("started_s") is not None:
        # footprint-start's start -> the recorder's first sample (the boot waits less:
        # until the recorder is ready, attach_seconds)
        result["first_sample_seconds"] = round(rec.samples[0]["t"] - state["started_s"], 2)
    if isinstance(boot, Boot):
        boot.recording = rec
    result["account"] = rep["account"]
    result["phases"] = sorted(rep["phases"], key=lambda p: p["t_s"])
    result["recording"] = rep["recording"]
    result["map_drops"] = rep.get("map_drops")
    result["meminfo"] = rep.get("meminfo")
    return result
