"""`footprint experiment`: the 2014 measurement, redone on today's Debian.

Boots each variant, waits for multi-user (`systemctl is-system-running --wait`), lets it
settle, then collects: delivery size (host side), `df /`, `free -m`, /proc/meminfo.
Per-boot hooks (callables `hook(guest, boot) -> dict`, boot a vm/results.py Boot) run in
the booted guest before shutdown; their results land in boot.extra[hook_name]. The
traced boots' hook (vm/traced.py) plugs the recording (account, phases) in there.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from tracer.errors import FootprintError
from tracer.procfs import parse_meminfo

from . import cache as C
from .images import VARIANTS, BootSpec, prepare_many
from .qemu import Guest, GuestError, terminate_as_interrupt
from .results import Boot, Experiment, Moment

MIB = 1 << 20
Hook = Callable[[Guest, Boot], dict]

SEED = {
    "source": "Fabian Deutsch, 'Taking a look at the memory footprint of a LiveCD and a disk (image)', 2014-06-16",
    "unit": "as printed in 2014 by free -m and df -h, i.e. MiB (df -h's 1.2G = 1.2 GiB ~ 1229 MiB)",
    "used_definition": "procps 3.3 (2014): used = MemTotal - MemFree (buffers/cache included), "
                       "so the 2014 'used' is comparable with nonfree_mib, not with today's used_mib",
    "boots": [
        {"name": "LiveCD (ovirt-node-iso)", "delivery_mib": 205, "rootfs_mib": 565,
         "used_2014_mib": 626, "nonfree_mib": 626},
        {"name": "plain rootfs (imgbased)", "delivery_mib": None, "rootfs_mib": 1229,
         "used_2014_mib": 192, "nonfree_mib": 192},
    ],
}

# The collection: one moment, in this order (free first, meminfo right after).
_DF = "df -B1 --output=source,fstype,size,used,avail,target / | tail -n 1"


def parse_free(text: str) -> dict:
    """procps 4 `free -m`: {'total','used','free','shared','buff/cache','available'} of Mem."""
    lines = text.splitlines()
    header = lines[0].split()
    for line in lines[1:]:
        if line.startswith("Mem:"):
            vals = [int(x) for x in line.split()[1:]]
            return dict(zip(header, vals))
    raise ValueError("no Mem: line in free output")


def collect(g: Guest) -> dict:
    """The seed's numbers from the booted guest (and the raw material behind them)."""
    rc, free_out, err = g.run(["free", "-m"], timeout=60, check=True)
    meminfo_text = g.get_file("/proc/meminfo").decode()
    rc, df_out, _ = g.run(_DF, timeout=60, check=True)
    rc, dfh, _ = g.run("df -h /", timeout=60)
    rc, uname, _ = g.run(["uname", "-r"], timeout=60)
    rc, unamev, _ = g.run(["uname", "-v"], timeout=60)
    uptime = float(g.get_file("/proc/uptime").split()[0])
    rc, analyze, _ = g.run("systemd-analyze time 2>/dev/null | head -n 1", timeout=120)
    rc, dm, _ = g.run("dmsetup table 2>&1", timeout=60)
    rc, loops, _ = g.run("losetup --list --noheadings -O NAME,BACK-FILE,RO 2>&1", timeout=60)
    rc, rootmnt, _ = g.run("findmnt -n -o SOURCE,FSTYPE,OPTIONS /", timeout=60)
    rc, sysloops, _ = g.run("for l in /sys/block/loop*; do [ -e $l/loop/backing_file ] && "
                            "echo ${l##*/} $(cat $l/dev) $(cat $l/loop/backing_file); done", timeout=60)
    src, fstype, size, used, avail, _target = df_out.decode().split()[:6]
    lower = None
    if fstype == "overlay":  # df / shows only the writable upper layer; measure the lower too
        opts = rootmnt.decode().split()[-1] if rootmnt.strip() else ""
        lowerdir = next((o.split("=", 1)[1].split(":")[0] for o in opts.split(",")
                         if o.startswith("lowerdir=")), None)
        if lowerdir:
            rc, low, _ = g.run(f"df -B1 --output=source,fstype,size,used {lowerdir} | tail -n 1", timeout=60)
            if rc == 0 and low.split():
                lsrc, lfs, lsize, lused = low.decode().split()[:4]
                lower = {"dir": lowerdir, "source": lsrc, "fstype": lfs, "used_mib": round(int(lused) / MIB, 1)}
    meminfo = parse_meminfo(meminfo_text)
    free = parse_free(free_out.decode())
    try:  # the squashfs matrix's facts (vm/matrix.py): CPUs, decompressor mode, superblocks
        from .matrix import guest_facts

        squashfs = guest_facts(g)
    except FootprintError as err:
        squashfs = {"error": str(err)}
    return {
        "kernel": uname.decode().strip(),
        "kernel_build": unamev.decode().strip(),
        # df / used; on an overlayfs root, df of its lower layer (the upper is a tmpfs)
        "rootfs_mib": lower["used_mib"] if lower else round(int(used) / MIB, 1),
        "root_df_used_mib": round(int(used) / MIB, 1),
        "rootfs_lower": lower,
        "rootfs_size_mib": round(int(size) / MIB, 1),
        "rootfs_source": src,
        "rootfs_fstype": fstype,
        "df_h": dfh.decode().strip(),
        "used_mib": free["used"],
        "buff_cache_mib": free["buff/cache"],
        "free_mib": free["free"],
        "available_mib": free["available"],
        "shared_mib": free["shared"],
        "nonfree_mib": round((meminfo["MemTotal"] - meminfo["MemFree"]) / 1024, 1),
        "total_minus_available_mib": round((meminfo["MemTotal"] - meminfo["MemAvailable"]) / 1024, 1),
        "meminfo": meminfo,
        "squashfs": squashfs,
        "free_m": free_out.decode(),
        "guest_uptime_seconds": uptime,
        "systemd_analyze": analyze.decode().strip(),
        "storage": {
            "dmsetup_table": dm.decode().strip(),
            "losetup": loops.decode().strip(),
            "root_mount": rootmnt.decode().strip(),
            "sysfs_loops": sysloops.decode().strip(),
        },
    }


def boot_and_measure(
    spec: BootSpec,
    *,
    memory: int = 2048,
    timeout: float = 1200.0,
    settle: float = 5.0,
    keep_logs: Optional[Path] = None,
    hooks: Mapping[str, Hook] = {},
    guest_options: Optional[dict] = None,
    cache_dir: Optional[os.PathLike] = None,
    moments: Optional[Callable[[Guest], list]] = None,
) -> Boot:
    """Boots `spec`, waits for multi-user, lets it settle, collects the figures (`collect`),
    measures the moments (vm/workloads.py) and runs the hooks; returns the Boot. Raises
    GuestError when the guest does not come up."""
    log = keep_logs / f"{spec.name}.serial.log" if keep_logs else None
    C.say(f"booting {spec.name} ({VARIANTS[spec.name][2]})")
    opts = dict(guest_options or {})
    with Guest(spec, memory=memory, timeout=timeout, log=log, cache_dir=cache_dir, **opts) as g:
        ready = g.wait_ready(timeout)
        state = g.wait_system(timeout)
        boot_seconds = time.monotonic() - g.started_at  # from QEMU's start to multi-user
        C.say(f"  {spec.name}: agent after {ready:.0f} s, system {state} after {boot_seconds:.0f} s; settling {settle:.0f} s")
        time.sleep(settle)
        if spec.traced and spec.extra.get("attach"):  # no early-boot tracer: attach now
            from .livebuild import attach_in_session

            attach_in_session(g, spec.name)
        figures = {
            "delivery_mib": round(spec.delivery_bytes / MIB, 1),
            "delivery_note": spec.delivery_note,
            "delivery_path": str(spec.delivery),
            "boot_seconds": round(boot_seconds, 1),
            "agent_ready_seconds": round(ready, 1),
            "system_state": state,
            "memory_mib": memory,
            "smp": g.smp,
            "accel": g.accel_used,
            "settle_seconds": settle,
            "append": spec.append,
            "attached_in_session": bool(spec.traced and spec.extra.get("attach")),
        }
        if spec.extra.get("apparent_bytes"):
            figures["delivery_apparent_mib"] = round(spec.extra["apparent_bytes"] / MIB, 1)
        figures.update(collect(g))
        boot = Boot(spec.name, figures=figures)
        if moments is not None:  # vm/workloads.py: after-boot, after-read, after-write
            try:
                boot.moments = moments(g)
            except FootprintError as err:
                C.say(f"  {spec.name}: workloads FAILED: {err}")
                boot.moments_error = str(err)
        boot.extra = {}
        for name, hook in hooks.items():
            boot.extra[name] = hook(g, boot)
        boot.traced = bool(getattr(spec, "traced", False))
        fp = boot.extra.get("footprint")
        if isinstance(fp, dict):  # traced boots: the account and phases at the top level
            boot.trace = {"account": fp.get("account"), "phases": fp.get("phases"),
                          "tracer": fp.get("recorder")}
            if fp.get("error"):
                boot.trace["tracer_error"] = fp["error"]
        g.shutdown(timeout=60)
    C.say(f"  {spec.name}: used {figures['used_mib']} MiB, MemTotal-MemFree {figures['nonfree_mib']:.0f} MiB")
    return boot


def run_experiment(
    names: Sequence[str],
    *,
    memory: int = 2048,
    timeout: float = 1200.0,
    settle: float = 5.0,
    cache_dir: Optional[os.PathLike] = None,
    keep_logs: Optional[os.PathLike] = None,
    hooks: Mapping[str, Hook] = {},
    guest_options: Optional[dict] = None,
    traced: bool = False,
    workloads: Optional[Sequence[str]] = None,
    workload_mib: Optional[int] = None,
    out: Optional[os.PathLike] = None,
    smp: Optional[int] = None,
) -> Experiment:
    """Builds what is missing, boots each variant in `names` in turn, returns the
    Experiment (vm/results.py; boots and SEED). traced: boots with footprint recording
    from the initramfs on (the product's dracut module, tracer/dracut_module); each boot then has its account and
    phases. workloads (vm/workloads.py MOMENTS): each boot is measured at these moments;
    traced, each moment gets its account, and the experiment side_by_side, answer and
    ranking (vm/sidebyside.py). out: recordings, experiment.json, CSV, report.html and
    plot.png are written there. smp: the guests' CPUs (QEMU -smp; the lab's default 2);
    the squashfs matrix (vm/matrix.py) is made of the boots' CPUs and squashfs images."""
    if smp is not None:
        guest_options = {**(guest_options or {}), "smp": smp}
    C.require_tools("qemu-system-x86_64", "mkfs.ext4")
    keep = Path(keep_logs) if keep_logs else None
    run_moments = None
    if workloads:
        from . import workloads as W

        mib = workload_mib or W.DEFAULT_MIB
        snap = None
        if traced:
            from .traced import pinned_snapshot as snap
        run_moments = lambda g: W.run_moments(g, workloads, mib, say=C.say, snapshot=snap)  # noqa: E731
    # the recordings, kept where the moments' accounts are built from
    rec_dir = Path(out) if out else keep
    tmp_rec = None
    if traced and workloads and rec_dir is None:
        import tempfile

        tmp_rec = tempfile.TemporaryDirectory(prefix="footprint-recordings-")
        rec_dir = Path(tmp_rec.name)
    if rec_dir:
        rec_dir.mkdir(parents=True, exist_ok=True)
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    try:
        with terminate_as_interrupt():
            if traced:
                from .traced import EXPERIMENT_APPEND, footprint_hook

                specs = prepare_many(list(names), cache_dir, traced=True, append=EXPERIMENT_APPEND)
                hooks = {"footprint": lambda g, r: footprint_hook(g, r, rec_dir), **hooks}
            else:
                specs = prepare_many(list(names), cache_dir)
            boots = []
            for s in specs:
                try:
                    boots.append(boot_and_measure(
                        s, memory=memory, timeout=timeout, settle=settle, keep_logs=keep,
                        hooks=hooks, guest_options=guest_options, cache_dir=cache_dir,
                        moments=run_moments))
                except GuestError as err:  # one failed boot does not void the others
                    C.say(f"  {s.name}: FAILED: {err}")
                    boots.append(Boot(s.name, error=str(err)))
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise C.enospc(C.cache_root(cache_dir)) from None
        raise
    result = Experiment(boots, SEED)
    from .matrix import rows_of

    if workloads:
        from . import sidebyside

        try:
            an = sidebyside.analyse(result, rec_dir if traced else None)
            result.squashfs_matrix = rows_of(result)
            if out:
                files = sidebyside.write_out(result, an, Path(out))
                C.say(f"reports in {out}: " + ", ".join(Path(p).name for p in files.values()))
        finally:
            if tmp_rec is not None:
                tmp_rec.cleanup()
    else:
        result.squashfs_matrix = rows_of(result)
    return result


def _fmt(v, width: int) -> str:
    if v is None:
        return "–".rjust(width)
    if isinstance(v, float):
        return f"{v:.0f}".rjust(width)
    return str(v).rjust(width)


def format_table(result) -> str:
    """The boots' table of `--full`: delivery, rootfs, used, buff/cache and MemTotal −
    MemFree of each boot beside the 2014 figures, and the notes that say how to read it."""
    from .results import as_experiment

    exp = as_experiment(result)
    heads = [("boot", ""), ("delivery", "MiB"), ("rootfs", "df / MiB"), ("used", "procps 4"),
             ("buff/cache", "MiB"), ("MemTotal-", "MemFree")]
    widths = [30, 10, 10, 10, 12, 11]

    def row(cells):
        return "".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [row([h for h, _ in heads]), row([s for _, s in heads])]
    for b in exp.boots:
        if not b.ok:
            lines.append(row([f"{b.name} (FAILED)", "", "", "", "", ""]))
            continue
        mem = b.figure("memory_mib", 2048)
        name = f"{b.name} (today, {mem} MiB)"
        lines.append(row([name] + [_fmt(b.figures[k], 0) for k in
                                   ("delivery_mib", "rootfs_mib", "used_mib", "buff_cache_mib", "nonfree_mib")]))
    for s in exp.seed["boots"]:
        label = "LiveCD (2014)" if s["name"].startswith("LiveCD") else "plain (2014)"
        lines.append(row([label, _fmt(s["delivery_mib"], 0), _fmt(s["rootfs_mib"], 0), "–", "–",
                          _fmt(s["nonfree_mib"], 0)]))
    notes = [
        "",
        "used: procps 4 (today's free -m) prints used = MemTotal - MemAvailable. The 2014 procps",
        "  printed used = MemTotal - MemFree (page cache included), so the 2014 'used' figures",
        "  (626 MB LiveCD, 192 MB plain) sit in the MemTotal-MemFree column: compare like with like.",
        "delivery: live = ISO size; plain = allocated (non-sparse) bytes of the ext4 disk image",
        "  (the 2014 plain image size was not given). rootfs: `df /` used in the guest (live: the",
        "  ext4 on dm live-rw). 2014 figures as printed by free -m / df -h (MiB).",
        "every guest also runs footprint's agent (python3, ~11 MiB RSS) and mounts its 16 MiB code disk.",
    ]
    for b in exp.boots:
        low = b.figure("rootfs_lower")
        if low:
            what = " (compressed)" if low["fstype"] == "squashfs" else ""
            notes.append(f"  {b.name}: root is overlayfs; rootfs = df of its lower layer {low['dir']}, "
                         f"{low['fstype']}{what} (df / = upper tmpfs: {b.figures['root_df_used_mib']:.0f} MiB).")
    for b in exp.boots:
        if not b.traced:
            continue
        t = b.tracer
        if b.tracer_error:
            notes.append(f"  {b.name}: traced boot, but {b.tracer_error}")
        elif t:
            mem = t.get("memory_kb", {})
            since = "attached in the running session" if b.figure("attached_in_session") else "traced from the initramfs"
            own = t.get("own") or {}
            after = (f"RSS after boot {mem.get('VmRSS', 0) / 1024:.0f} MiB" if mem else
                     f"exited at multi-user, its pinned maps {own.get('maps_mib', '?')} MiB")
            notes.append(f"  {b.name}: {since} (recorder attached in "
                         f"{t.get('attach_seconds', '?')} s, {after});")
            notes.append("    the figures include the tracer's cost (--untraced: without it).")
    ok = exp.ok
    if ok:
        b0 = ok[0]
        notes.append(f"guest: Debian bookworm, kernel {b0.figure('kernel')}, {b0.figure('accel')}, "
                     f"measured {b0.figure('settle_seconds', 5):.0f} s after `systemctl is-system-running --wait`; boot seconds: "
                     + ", ".join(f"{b.name} {b.figures['boot_seconds']:.0f}" for b in ok) + ".")
    return "\n".join(lines + notes)


def main_cli(variants: str, memory: int, timeout: float, cache_dir: Optional[str],
             keep_logs: Optional[str], as_json: bool, settle: float,
             traced: bool = True, workloads: str = "all", workload_mib: Optional[int] = None,
             out: Optional[str] = None, full: bool = False, smp: int = 2) -> None:
    """`footprint experiment` (vm/command.py): checks the options, runs the experiment and
    prints one screen (vm/screen.py), every table (--full) or every number (--json)."""
    from tracer.errors import require_root

    from .images import variant_names

    from . import screen, sidebyside, workloads as W

    names = variant_names(variants)
    moments = W.parse(workloads)
    if workload_mib is not None and workload_mib < 1:
        raise FootprintError(f"--workload-mib {workload_mib}: use at least 1 (MiB)")
    if not 1 <= smp <= 64:
        raise FootprintError(f"--smp {smp}: use 1 to 64 (CPUs of the guest)")
    if memory < 256:
        raise FootprintError(f"--memory {memory} is too small to boot: use at least 512 (MiB)")
    require_root("footprint experiment")
    result = run_experiment(names, memory=memory, timeout=timeout, settle=settle,
                            cache_dir=cache_dir, keep_logs=keep_logs, traced=traced,
                            workloads=moments, workload_mib=workload_mib,
                            out=out or sidebyside.default_out(cache_dir), smp=smp)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    elif full:
        print(format_table(result))
        print(sidebyside.text(result))
    else:  # one screen: the answer first; --full has every table
        print(screen.screen(result))
    sys.stdout.flush()
    failed = [b for b in result.boots if not b.ok]
    if failed:
        raise FootprintError(f"{len(failed)} of {len(result.boots)} boots failed, first: {failed[0].error}")
