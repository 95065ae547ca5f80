"""The two loaders side by side on this machine: attach time, the recorder's own memory
(before and after its exec into the sampler), the BPF maps' memory, and lost events
during a cold read. Root only.

    python bench/loaders.py [--seconds 20] [--runs 1] [--read-mib 2048]

Maps' memory is the kernel's own figure (bpftool's bytes_memlock) for every map the
recorder's programs use.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOOTPRINT = [sys.executable, "-m", "tracer"]


def status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Name", "VmRSS", "VmHWM"):
                    out[k] = v.strip()
    except OSError:
        pass
    return out


def map_memory(pid: int) -> dict[str, int]:
    """Bytes per map (bpftool's bytes_memlock, the kernel's own figure) over every map the
    programs of `pid` use: the sampler holds only the maps it reads."""
    def bpftool(*args):
        return json.loads(subprocess.run(["bpftool", "-j", *args], capture_output=True,
                                         text=True, check=True).stdout)

    map_ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        prog = bpftool("prog", "show", "id", re.search(r"prog_id:\s*(\d+)", info).group(1))
        map_ids.update(prog.get("map_ids", []))
    out: dict[str, int] = {}
    for mid in map_ids:
        m = bpftool("map", "show", "id", str(mid))
        out[m.get("name", str(mid))] = int(m.get("bytes_memlock", 0))
    return out


def kb(s: str) -> int:
    return int(s.split()[0]) if s else 0


def run(loader: str, seconds: float, big: Path) -> dict:
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
    with tempfile.TemporaryDirectory() as d:
        rec = Path(d) / "r.jsonl"
        t0 = time.monotonic()
        proc = subprocess.Popen(FOOTPRINT + ["record", "--loader", loader, "-o", str(rec),
                                             "-d", str(seconds), "--no-inventory"],
                                cwd=REPO, stderr=subprocess.PIPE, text=True)
        attach_rss = 0
        first_sample = None
        sampler_rss, maps = 0, {}
        read_done = False
        while proc.poll() is None:
            st = status(proc.pid)
            if st.get("Name", "").startswith("python") or not st.get("Name"):
                attach_rss = max(attach_rss, kb(st.get("VmRSS", "")))
            if first_sample is None and rec.exists() and b'"type":"sample"' in rec.read_bytes():
                first_sample = time.monotonic() - t0
            if first_sample is not None and not read_done:
                maps = map_memory(proc.pid)
                with open(big, "rb") as f:  # the cold read, while recording
                    while f.read(1 << 20):
                        pass
                read_done = True
            if read_done:
                sampler_rss = max(sampler_rss, kb(st.get("VmRSS", "")))
            time.sleep(0.05)
        err = proc.stderr.read()
        if proc.returncode != 0:
            raise SystemExit(f"{loader}: recorder failed: {err.strip().splitlines()[-1:]}")
        report = json.loads(subprocess.run(FOOTPRINT + ["report", "--json", str(rec)], cwd=REPO,
                                           capture_output=True, text=True, check=True).stdout)
        header = json.loads(rec.read_text().splitlines()[0])
        samples = [json.loads(x) for x in rec.read_text().splitlines() if '"type":"sample"' in x]
    st = report["stats"]
    events = sum(st[k] for k in ("pagecache_added", "pagecache_deleted", "pagecache_deleted_untracked",
                                 "kernel_pages_allocated", "kernel_pages_freed",
                                 "objects_allocated", "objects_freed"))
    return {"loader": loader, "attach_s": header["plan"]["attach_seconds"],
            "first_sample_s": round(first_sample or 0, 2),
            "attach_stage_rss_mib": round(attach_rss / 1024, 1),
            "sampler_rss_mib": round(sampler_rss / 1024, 1),
            "sampler_own_anon_mib": round(samples[-1]["tracer"].get("anon_kb", 0) / 1024, 1),
            "maps_mib": round(sum(maps.values()) / 2**20, 1),
            "maps_mib_by_name": {k: round(v / 2**20, 2) for k, v in sorted(maps.items(), key=lambda kv: -kv[1])},
            "events": events, "lost_events": report["lost_events"],
            "pagecache_added": st["pagecache_added"], "map_drops": report["map_drops"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--read-mib", type=int, default=2048)
    ap.add_argument("--loaders", default="libbpf,bcc")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("loaders.py: needs root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        big = Path(d) / "big"
        with open(big, "wb") as f:
            for _ in range(args.read_mib):
                f.write(os.urandom(1 << 20))
        rows = [run(loader, args.seconds, big) for _ in range(args.runs)
                for loader in args.loaders.split(",")]
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
