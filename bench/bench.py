"""footprint's benchmarks: overhead, accuracy and scale, each a ratio or a count measured
in one run (machines are noisy: ratios of interleaved runs, medians).

    scripts/bench [--json] [--guest] [--runs N]

Host part (this machine's kernel, tracepoints only):
  workload_overhead_ratio_host  cold read of a file tree on a squashfs-in-ext4 loop
                                stack, traced / untraced (median of interleaved runs)
  tracer_own_mib_host           the tracer's own memory on this host during a 20 s record
                                under a cold read: its BPF maps (the kernel's memlock of
                                every map its programs use) + the recorder's RSS
  lost_events_host              events the kernel skipped for our programs in that record
  max_file_error_pct            worst per-file error of footprint vs the kernel's own
                                count (cachestat; fincore where it sees every page)
  report_seconds_1m_pages       `footprint report --json` on a recording holding
                                1 million resident pages (median wall time)
  html_seconds_20k_phases       `footprint html --png` on a recording holding 20 000
                                phase marks (median wall time)
Guest part (--guest, or --only guest: the bookworm live guest under QEMU/TCG, traced
from early boot; FOOTPRINT_GUEST_LOCK=FILE takes that flock for each pair):
  boot_overhead_ratio           seconds to multi-user, traced / untraced (medians of
                                interleaved boots, which of the two goes first alternating;
                                the pairs are listed)
  attach_seconds_guest          footprint-start -> the recorder ready (the boot goes on);
                                first_sample_seconds_guest: -> its first sample
  tracer_own_mib                after boot (the recorder stopped at multi-user): the
                                pinned maps (memlock) + any process of the tracer + the
                                deleted initramfs files it holds
  unattributed_pct              the largest share of MemTotal − MemFree left unattributed,
                                or counted twice, at any sample of any traced boot,
                                through the cold reads
  workload_overhead_ratio, lost_events, map_drops
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import livestack  # noqa: E402

FOOTPRINT = [sys.executable, "-m", "tracer"]
RECORD_EXTRA: list[str] = []  # --programs KIND (main): what the hot events run as
GOALS = {"workload_overhead_ratio": 1.03, "workload_overhead_ratio_host": 1.05,  # issue 11
         "tracer_own_mib_host": 32, "lost_events_host": 0,
         "boot_overhead_ratio": 1.10, "lost_events": 0, "map_drops": 0, "tracer_own_mib": 8,
         "report_seconds_1m_pages": 2.0, "html_seconds_20k_phases": 5.0, "max_file_error_pct": 1.0,
         "unattributed_pct": 3.0, "initramfs_added_mib": 24, "attach_seconds_guest": 2.0}


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- host ---------------------------------------------------------------------------------


def _start_recorder(rec: Path) -> subprocess.Popen:
    p = subprocess.Popen(FOOTPRINT + ["record", "-o", str(rec), "--interval", "1", "--no-inventory",
                                      *RECORD_EXTRA],
                         stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if rec.exists() and b'"type":"sample"' in rec.read_bytes():
            return p
        time.sleep(0.1)
    p.kill()
    raise RuntimeError("recorder did not start")


def _stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGINT)
    p.wait(timeout=120)


def _cold_read(root: Path) -> float:
    livestack.drop_caches()
    t0 = time.perf_counter()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 20):
                    pass
    return time.perf_counter() - t0


def host_workload_and_accuracy(runs: int) -> dict:
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="fp-bench-") as tmp, \
            livestack.live_like_stack(Path(tmp), tree_mib=256) as stack:
        untraced, traced = [], []
        for i in range(runs):  # interleaved, so drift hits both alike
            untraced.append(_cold_read(stack["ext"]))
            rec = Path(tmp) / f"r{i}.jsonl"
            p = _start_recorder(rec)
            try:
                traced.append(_cold_read(stack["ext"]))
            finally:
                _stop(p)
        ratio = statistics.median(traced) / statistics.median(untraced)
        say(f"cold read {statistics.median(untraced):.3f} s untraced, "
            f"{statistics.median(traced):.3f} s traced")
        error = _max_file_error(stack, Path(tmp))
    return {"workload_overhead_ratio_host": round(ratio, 3), "max_file_error_pct": error,
            "cold_read_seconds_untraced": round(statistics.median(untraced), 3)}


def _bpftool_json(*args) -> dict | list:
    return json.loads(subprocess.run(["bpftool", "--json", *args], check=True, capture_output=True,
                                     text=True).stdout)


def tracer_own_bytes(pid: int) -> dict:
    """A running recorder's own memory: every BPF map its programs use (found from the
    program fds it holds, /proc/PID/fdinfo prog_id; each map's bytes_memlock, which is
    its real size since 6.4's map_mem_usage) and its resident set (VmRSS)."""
    prog_ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                prog_ids.add(int(line.split()[1]))
    map_ids = set()
    for pid_ in prog_ids:
        map_ids.update(_bpftool_json("prog", "show", "id", str(pid_)).get("map_ids", []))
    maps = sum(int(_bpftool_json("map", "show", "id", str(m)).get("bytes_memlock", 0)) for m in map_ids)
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return {"maps": maps, "rss": rss}


def host_own_and_lost(seconds: float = 20.0) -> dict:
    """A 20 s record (with the kernel baseline, as a user would run it) while cold reads
    of a squashfs/ext4 loop stack run: the tracer's own memory at the end, and the events
    the kernel skipped for our programs (recursion misses) over the record."""
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="fp-bench-") as tmp, \
            livestack.live_like_stack(Path(tmp), tree_mib=256) as stack:
        rec = Path(tmp) / "own.jsonl"
        p = subprocess.Popen(FOOTPRINT + ["record", "-o", str(rec), "--interval", "1", *RECORD_EXTRA],
                             stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not (rec.exists() and b'"type":"sample"' in rec.read_bytes()):
                if time.monotonic() > deadline or p.poll() is not None:
                    raise RuntimeError("recorder did not start")
                time.sleep(0.1)
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                _cold_read(stack["ext"])
            own = tracer_own_bytes(p.pid)
        finally:
            _stop(p)
        rep = json.loads(subprocess.run(FOOTPRINT + ["report", "--json", str(rec)], check=True,
                                        capture_output=True, text=True).stdout)
    say(f"own memory: maps {own['maps'] / 2**20:.1f} MiB + recorder RSS {own['rss'] / 2**20:.1f} MiB")
    return {"tracer_own_mib_host": round((own["maps"] + own["rss"]) / 2**20, 1),
            "tracer_maps_mib_host": round(own["maps"] / 2**20, 1),
            "tracer_rss_mib_host": round(own["rss"] / 2**20, 1),
            "lost_events_host": rep.get("lost_events"),
            # which programs the kernel skipped (tracer/mapsampler.py lost_events)
            "lost_events_host_by_program": {k.split(":", 1)[1]: v for k, v in rep.get("stats", {}).items()
                                            if k.startswith("lost_events:")},
            "programs_host": rep.get("recording", {}).get("programs")}


def _max_file_error(stack: dict, tmp: Path) -> float:
    from tracer.inventory import cachestat

    livestack.drop_caches()
    rec = tmp / "acc.jsonl"
    p = _start_recorder(rec)
    try:
        for path, (off, length) in zip(stack["files"], ((0, 10), (0, 16), (5, 3), (0, 1))):
            with open(path, "rb") as f:
                f.seek(off << 20)
                f.read(length << 20)
        time.sleep(1.0)
        truth = {}
        for path in [stack["squash"], stack["inner"], *stack["files"]]:
            fd = os.open(path, os.O_RDONLY)
            cs = cachestat(fd)
            os.close(fd)
            st = os.stat(path)
            truth[(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino)] = cs["nr_cache"]
    finally:
        _stop(p)
    rep = json.loads(subprocess.run(FOOTPRINT + ["report", "--json", str(rec)], check=True,
                                    capture_output=True, text=True).stdout)
    got = {(f["dev"], f["ino"]): f["resident_pages"] for f in rep["files"]}
    errs = [abs(got.get(k, 0) - v) / v * 100 for k, v in truth.items() if v]
    return round(max(errs), 3)


def synthetic_recording(path: Path, pages: int = 1_000_000, files: int = 50_000,
                        samples: int = 60, phases: int = 0) -> None:
    """A recording in the real format holding `pages` resident pages over `files` files
    on the live stack, delta-encoded over `samples` samples, with `phases` marks spread
    over them."""
    sys.path.insert(0, str(REPO / "tests"))
    from synthetic_live import live_topology

    from tracer import recording

    w = recording.Writer(str(path), {"plan": {"probes": []}, "attached": 0.0,
                                     "tracer": {"pid": 1, "files": []}})
    w.write({"type": "topology", "t": 0.5, "topology": live_topology()})
    per = pages // files
    devs = ["254:0", "7:0", "11:0"]
    mi = {"MemTotal": 8 << 20, "MemFree": 2 << 20, "MemAvailable": 5 << 20,
          "Cached": pages * 4 + 4096, "Buffers": 0, "AnonPages": 100000, "Slab": 50000}
    for s in range(samples):
        chunk = range(s * files // samples, (s + 1) * files // samples)
        w.write({"type": "sample", "t": 1.0 + s, "meminfo": mi, "stats": {},
                 "files": {f"{devs[i % 3]}:{1000 + i}": [per, per, per, 0, 0] for i in chunk}})
    for i in range(phases):
        w.write({"type": "phase", "t": 1.0 + i * samples / phases, "name": f"mark {i}"})
    w.close("duration")


def report_scale(runs: int) -> dict:
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="fp-bench-") as tmp:
        rec = Path(tmp) / "big.jsonl"
        synthetic_recording(rec)
        times = []
        for _ in range(max(3, runs)):
            t0 = time.perf_counter()
            subprocess.run(FOOTPRINT + ["report", "--json", str(rec)], check=True,
                           stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        size_mib = rec.stat().st_size / 2**20
        many = Path(tmp) / "phases.jsonl"
        synthetic_recording(many, pages=10_000, files=100, samples=60, phases=20_000)
        html_times = []
        for _ in range(max(3, runs)):
            t0 = time.perf_counter()
            subprocess.run(FOOTPRINT + ["html", str(many), "-o", str(Path(tmp) / "p.html"),
                                        "--png", str(Path(tmp) / "p.png")], check=True,
                           stderr=subprocess.DEVNULL)
            html_times.append(time.perf_counter() - t0)
    return {"report_seconds_1m_pages": round(statistics.median(times), 3),
            "recording_mib_1m_pages": round(size_mib, 1),
            "html_seconds_20k_phases": round(statistics.median(html_times), 3)}


# --- guest ------------------------------------------------------------------------------------


COLD_READ = ("sync; echo 3 > /proc/sys/vm/drop_caches; s=$(cut -d' ' -f1 /proc/uptime); "
             "find /usr/lib/python3.11 /usr/share/locale -type f -print0 | xargs -0 cat > /dev/null; "
             "e=$(cut -d' ' -f1 /proc/uptime); awk -v s=$s -v e=$e 'BEGIN { print e - s }'")


def unattributed_pcts(rec_path: Path) -> list:
    """The unattributed share of MemTotal − MemFree at every sample of a recording, in %
    (the timeline's arithmetic, the account's at each sample)."""
    from tracer import recording, timeline

    frame = timeline.build(recording.read(str(rec_path)))
    if "unattributed" not in frame.columns:
        return [0.0] * len(frame)
    return [100.0 * u / n if n else 0.0 for u, n in zip(frame["unattributed"], frame["nonfree_mib"])]


def _guest_boot(traced: bool, cache, logs: Path, name: str = "bench-live") -> dict:
    """One live boot: seconds to multi-user, a cold read of a file tree on the live stack
    (timed inside the guest), and for a traced boot the recording's account."""
    from vm import Guest, images
    from vm.traced import EXPERIMENT_APPEND, footprint_hook

    spec = images.prepare("live", cache, traced=traced, append=EXPERIMENT_APPEND) if traced \
        else images.prepare("live", cache)
    out: dict = {}
    with Guest(spec, memory=2048, timeout=1800, cache_dir=cache) as g:
        g.wait_ready(1500)
        g.wait_system(1500)
        out["boot_seconds"] = time.monotonic() - g.started_at
        reads = []
        for _ in range(3):
            rc, so, _ = g.run(COLD_READ, timeout=1200)
            reads.append(float(so.split()[-1]))
        out["cold_read_seconds"] = statistics.median(reads)
        if traced:
            out["hook"] = footprint_hook(g, {"name": name}, keep=logs)
            rec = logs / f"{name}.recording.jsonl"
            out["unattributed_pcts"] = unattributed_pcts(rec) if rec.exists() else []
        g.shutdown(timeout=60)
    return out


def initramfs_added(cache=None) -> dict:
    """What footprint's dracut module adds to the initramfs, unpacked (the sum of the
    archive's file sizes: what its ramfs holds at boot), traced − untraced; and the
    recorder overlay the lab appends at boot (the current tracer/, not in a user's image)."""
    from vm import cpio, images
    from vm.code import recorder_cpio

    art = images.build({"live"}, cache, traced=True)
    facts = {k: cpio.initramfs_facts(p) for k, p in
             (("untraced", art.initrd), ("traced", art.initrd_traced))}
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    return {"initramfs_added_mib": mib(facts["traced"]["unpacked_bytes"] - facts["untraced"]["unpacked_bytes"]),
            "initramfs_added_compressed_mib": mib(facts["traced"]["compressed_bytes"]
                                                  - facts["untraced"]["compressed_bytes"]),
            "initramfs_overlay_mib": mib(recorder_cpio(art.root.parent).stat().st_size)}


@contextlib.contextmanager
def _guest_lock():
    """One guest at a time on a shared machine: FOOTPRINT_GUEST_LOCK names a lock file
    (flock) taken for each pair of boots, so other users' guests run between our pairs,
    not during them."""
    path = os.environ.get("FOOTPRINT_GUEST_LOCK")
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def guest(runs: int) -> dict:
    """Traced vs untraced boots of the live guest, interleaved, medians."""
    cache = None  # the lab's own cache ($FOOTPRINT_CACHE or /var/cache/footprint), as the experiment's
    boots: dict = {"untraced": [], "traced": []}
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="fp-bench-") as tmp:
        for i in range(runs):
            # Which boot of a pair goes first alternates: a slow first boot (a cold host
            # cache, another user's guest ending) must not always land on one side.
            order = ("untraced", "traced") if i % 2 == 0 else ("traced", "untraced")
            with _guest_lock():  # a pair under the same conditions, other users' guests between pairs
                for mode in order:
                    say(f"guest: {mode} live boot")
                    b = _guest_boot(mode == "traced", cache, Path(tmp), f"bench-live-{i}")
                    boots[mode].append(b)
                    hook = b.get("hook", {})
                    say(f"guest: {mode}: " + json.dumps({
                        "boot_seconds": round(b["boot_seconds"], 1), "cold_read": b["cold_read_seconds"],
                        "attach": hook.get("recorder", {}).get("attach_seconds"),
                        "first_sample": hook.get("first_sample_seconds"), "own": hook.get("own"),
                        "log": hook.get("recorder", {}).get("recorder_log", [])[:8]}))
    med = lambda mode, key: statistics.median(b[key] for b in boots[mode])  # noqa: E731
    hook = boots["traced"][-1].get("hook", {})
    acc = hook.get("account") or []
    state = hook.get("recorder", {})
    attach = [b["hook"].get("recorder", {}).get("attach_seconds") for b in boots["traced"]]
    attach = [a for a in attach if a is not None]
    unattributed = [p for b in boots["traced"] for p in b.get("unattributed_pcts", [])]
    return {
        **initramfs_added(cache),
        # footprint.service's start script started -> the recorder ready (attached, devices
        # followed): what the boot waits for (TCG)
        "attach_seconds_guest": round(statistics.median(attach), 2) if attach else None,
        "boot_overhead_ratio": round(med("traced", "boot_seconds") / med("untraced", "boot_seconds"), 3),
        "workload_overhead_ratio": round(med("traced", "cold_read_seconds")
                                         / med("untraced", "cold_read_seconds"), 3),
        "lost_events": 0 if acc else None,  # nothing is streamed; drops are map_drops
        "map_drops": hook.get("map_drops"),
        # after boot: the pinned maps (memlock) + any process of the tracer (anonymous
        # memory) + the deleted initramfs files it still holds (vm.traced.tracer_own)
        "tracer_own_mib": hook.get("own", {}).get("mib"),
        "tracer_maps_mib": hook.get("own", {}).get("maps_mib"),
        "tracer_processes_after_boot": len(hook.get("own", {}).get("processes", [])) if hook.get("own") else None,
        # the account's own rows for the tracer, at its last sample
        "tracer_account_mib": round(sum(r["resident_mib"] for r in acc if r["subsystem"] == "tracer"), 1),
        "tracer_rss_mib": round(state.get("memory_kb", {}).get("VmRSS", 0) / 1024, 1),
        "first_sample_seconds_guest": _median([b["hook"].get("first_sample_seconds") for b in boots["traced"]]),
        # where each traced boot's attach time went (footprint-start's and the recorder's logs)
        "attach_logs": [[*b["hook"].get("recorder", {}).get("start_log", "").splitlines(),
                         *b["hook"].get("recorder", {}).get("recorder_log", [])[:8]]
                        for b in boots["traced"]],
        "boot_seconds_pairs": [[round(u["boot_seconds"], 1), round(t["boot_seconds"], 1)]
                               for u, t in zip(boots["untraced"], boots["traced"])],
        # the last traced boot's (attach_seconds_guest is the median)
        "tracer_attach_seconds": state.get("attach_seconds"),
        # the worst sample of every traced boot, after boot and through the cold reads;
        # either way: a negative share is pages counted twice
        "unattributed_pct": round(max((abs(p) for p in unattributed), default=float("nan")), 2),
        "unattributed_pct_after_boot": round((hook.get("meminfo") or {}).get("unattributed_pct",
                                                                             float("nan")), 2),
        "boot_seconds_untraced": round(med("untraced", "boot_seconds"), 1),
        "boot_seconds_traced": round(med("traced", "boot_seconds"), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--guest", action="store_true", help="also the QEMU guest benchmarks (slow)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--guest-runs", type=int, default=1, help="boots of each kind (minutes each)")
    ap.add_argument("--programs", choices=["auto", "tp_btf", "tracepoint"], default="auto",
                    help="what the recorder runs the hot events as (footprint record --programs)")
    ap.add_argument("--only", choices=["own", "workload", "guest"],
                    help="only these keys (own: tracer_own_mib_host, lost_events_host; workload: "
                    "workload_overhead_ratio_host, max_file_error_pct; guest: the --guest keys)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (loop devices, BPF): run it as root", file=sys.stderr)
        return 2
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} "
                     f"{platform.release()} {os.cpu_count()} CPUs"}
    RECORD_EXTRA[:] = ["--programs", args.programs]
    if args.only:
        only = {"own": host_own_and_lost, "workload": lambda: host_workload_and_accuracy(args.runs),
                "guest": lambda: guest(max(1, args.guest_runs))}[args.only]
        results.update(only())
        print(json.dumps(results, indent=2))
        return 0
    say("host: cold-read overhead and per-file accuracy")
    results.update(host_workload_and_accuracy(args.runs))
    say("host: own memory and lost events over a 20 s record under cold reads")
    results.update(host_own_and_lost())
    say("report on 1M resident pages")
    results.update(report_scale(args.runs))
    if args.guest:
        say("guest: traced vs untraced live boots")
        results.update(guest(max(1, args.guest_runs)))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'metric':<32}{'value':>12}{'goal':>10}")
        for k, v in results.items():
            if k in ("date", "machine"):
                continue
            goal = GOALS.get(k)
            mark = "" if goal is None or v is None else ("  ok" if v <= goal else "  OVER")
            print(f"{k:<32}{str(v):>12}{'' if goal is None else ('≤ ' + str(goal)):>10}{mark}")
        print(f"({results['date']}, {results['machine']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
