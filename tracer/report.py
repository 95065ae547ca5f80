"""Render an account: a table that reads like `free -m`, JSON, CSV, Parquet.

Names from a recording (file paths, dm names, probe names, the end record's reason) are
data from another machine: text and CSV go through tracer/safe.py; JSON is strict
(no NaN or Infinity) and ASCII-only.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from . import progkinds
from .account import MIB, Account
from .fold import fold, other_label
from .recording import Recording
from .safe import inert, to_csv as _safe_csv

DROP_STATS = ("stack_lost", "files_full", "pfn_out_of_range", "objects_full", "sites_full",
              "percpu_full")

# How each row's figure is known, as the text report abbreviates it.
_SOURCES = {"traced": "traced", "inventoried": "inventory", "inventoried+traced": "inv+traced",
            "meminfo": "meminfo", "measured": "kernel count"}


def map_drops(stats: dict) -> int:
    """Events the BPF maps had no room for, summed over DROP_STATS (0: the account is
    complete as far as the maps go)."""
    return int(sum(stats.get(k, 0) for k in DROP_STATS))


def summary(rec: Recording, acc: Account) -> dict:
    """What the recording is and which moment the account shows: path, kernel, host,
    "samples" and "seconds" up to the account's sample (since attach), "samples_total"
    and "seconds_total" of the whole recording, whether it ended cleanly, the loader, the
    sampling interval and its longest gap, the OOM kills."""
    h = rec.header
    t0 = h.get("attached", h.get("created", {}).get("boottime", 0))
    times = [s["t"] for s in rec.samples]
    opts = h.get("options")
    interval = opts.get("interval") if isinstance(opts, dict) else None
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) or interval <= 0:
        interval = None
    return {"path": rec.path, "kernel": h.get("kernel"), "hostname": h.get("hostname"),
            "version": h.get("version"),
            # `report --at N` shows sample N: the header speaks of the moment shown.
            "samples": sum(1 for t in times if t <= acc.t + 1e-9), "samples_total": len(times),
            "seconds": round(acc.t - t0, 3) if t0 else None,
            "seconds_total": round(times[-1] - t0, 3) if t0 and times else None,
            "partial": rec.partial, "end": (rec.end or {}).get("reason"),
            "headers": h.get("plan", {}).get("headers"),
            # Recordings made before the libbpf loader existed were all bcc's.
            "loader": h.get("plan", {}).get("loader", "bcc"),
            "programs": progkinds.describe(h.get("plan", {})),  # tp_btf or tracepoints
            # A starved sampler (memory pressure, a stalled CPU) leaves gaps: between two
            # samples the timeline knows only the peaks the kernel kept.
            "interval_s": interval,
            "max_sample_gap_s": round(max((b - a for a, b in zip(times, times[1:])), default=0.0), 3),
            "oom_kills": len(rec.oom)}


def span(s: dict) -> str:
    """The header's words for the moment shown, from `summary`: "150 samples over 150.2
    s", or for an earlier sample "sample 12 of 150, 11.9 s of 150.2 s"."""
    if s["samples"] < s["samples_total"]:
        return (f"sample {s['samples']} of {s['samples_total']}, {s['seconds'] or 0:.1f} s "
                f"of {s['seconds_total'] or 0:.1f} s")
    return f"{s['samples']} samples over {s['seconds'] or 0:.1f} s"


def to_json(rec: Recording, acc: Account, by: str = "layer") -> dict:
    """The account as one JSON-ready dict: the recording's summary, every row and file,
    the reconciliation with meminfo, the chains, probes, drops, phases, OOM kills, notes."""
    rows = acc.rows.copy()
    files = acc.files.copy()
    files["resident_mib"] = files["resident_pages"] * acc.page_size / MIB
    return {
        "recording": summary(rec, acc),
        "t": acc.t,
        "account": records(rows[["subsystem", "layer", "kind", "resident_pages", "resident_mib",
                                  "peak_pages", "allocated_pages", "source"]]),
        # "layer" is `account`, "file" is `files`: only the other groupings add a table.
        "by": {by: records(acc.by(by))} if by in ("subsystem", "kind") else None,
        "files": records(files[["dev", "ino", "path", "fstype", "subsystem", "layer", "kind",
                                 "resident_pages", "resident_mib", "peak_pages", "allocated_pages",
                                 "baseline_pages", "traced_pages", "source"]]),
        "meminfo": acc.meminfo,
        "double_caching": acc.chains,
        "probes": acc.probes,
        # Nothing is streamed; an event is lost when the kernel skipped our program
        # (another BPF program was running on that CPU): the programs' recursion misses.
        "lost_events": int(acc.stats.get("lost_events", 0)),
        "map_drops": map_drops(acc.stats),
        "stats": acc.stats,
        "phases": [{"name": p["name"], "t_s": p["t"]} for p in rec.phases],
        "oom": rec.oom,
        "squashfs": acc.squashfs,
        "notes": acc.notes,
    }


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain dicts; pandas' C JSON writer turns NaN into null and numpy scalars
    into numbers (a Python loop over a million-page account took most of the report)."""
    return json.loads(df.to_json(orient="records", force_ascii=False, default_handler=str))


def dumps_json(obj, pretty: bool | None = None) -> str:
    """Strict JSON (RFC 8259: no NaN or Infinity, which strict parsers reject), ASCII-only
    so that undecodable bytes (surrogate escapes) stay valid. Indented only for a terminal:
    indent forces the pure-Python encoder (4 s on a million pages)."""
    import sys

    if pretty is None:
        pretty = sys.stdout.isatty()
    kw = {"indent": 2} if pretty else {"separators": (",", ":")}
    try:
        return json.dumps(obj, ensure_ascii=True, default=str, allow_nan=False, **kw)
    except ValueError:  # a ratio of zeros somewhere: not a number is no number (null)
        return json.dumps(_finite(obj), ensure_ascii=True, default=str, allow_nan=False, **kw)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _mib(x) -> str:
    return f"{x:10.1f}"


def _baseline_line(rec: Recording) -> str:
    """Which baseline of the pages resident at attach ran, and how much of meminfo's
    Cached + Buffers it found (a recording is foreign data: only numbers are trusted)."""
    if not rec.inventories:
        return "baseline at attach: none"
    inv = rec.inventories[0]
    st = inv.get("stats") if isinstance(inv.get("stats"), dict) else {}
    how = st.get("baseline") if st.get("baseline") in ("kernel", "walk") else "walk"
    line = f"baseline at attach: {'kernel per-inode counts' if how == 'kernel' else 'walk of paths'}"

    def num(v):
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    found, want, secs = num(st.get("pages_found")), num(st.get("cached_buffers_pages")), num(inv.get("seconds"))
    if found is not None and want:
        line += f", {int(found)} pages = {100 * found / want:.1f} % of Cached+Buffers"
    if secs is not None:
        line += f", {secs:.2f} s"
    if isinstance(st.get("kernel_refused"), str):
        line += f" (kernel walk not used: {fit(inert(st['kernel_refused']), 100)})"
    return line


def text(rec: Recording, acc: Account, by: str = "layer", top_files: int = 15,
         all_rows: bool = False) -> str:
    """The account as a table that reads like `free -m`: the largest rows, the rest (each
    under 1 MiB) on one "other (N rows)" line unless `all_rows`; the total is exact."""
    s = summary(rec, acc)
    mi = acc.meminfo
    ps = acc.page_size
    out = []
    state = "PARTIAL (recorder did not stop cleanly)" if s["partial"] else f"complete ({inert(s['end'])})"
    out.append(f"footprint: {inert(s['path'])} — kernel {inert(s['kernel'])}, "
               f"{span(s)}, {state}")
    out.append(f"in use (MemTotal-MemFree) {mi['nonfree_mib']:.1f} MiB of {mi['memtotal_mib']:.1f} MiB"
               f"   free -m used (MemTotal-MemAvailable) {mi['used_mib']:.1f} MiB")
    out.append(f"accounted {mi['accounted_mib']:.1f} MiB, unattributed {mi['unattributed_mib']:.1f} MiB "
               f"({mi['unattributed_pct']:.1f} %)")
    out.append("")
    if by == "file":
        out += _file_table(acc, top_files=10 ** 9)
    else:
        table = acc.by(by)
        cols = {"subsystem": 22, "layer": 58, "kind": 12}
        keys = [c for c in cols if c in table.columns]
        head = "".join(f"{c:<{cols[c]}}" for c in keys)
        src = "source" in table.columns
        out.append(f"{head}{'MiB':>10}{'pages':>10}{'peak MiB':>10}{'alloc MiB':>10}"
                   + ("  source" if src else ""))
        rows = list(table.itertuples(index=False))
        shown, rest = (rows, []) if all_rows else fold(rows, lambda r: r.resident_mib)
        name_w = sum(cols[c] for c in keys)
        for r in shown:
            cells = "".join(f"{fit(inert(getattr(r, c)), cols[c] - 1):<{cols[c]}}" for c in keys)
            out.append(f"{cells}{_mib(r.resident_mib)}{r.resident_pages:>10d}"
                       f"{_mib(r.peak_pages * ps / MIB)}{_mib(r.allocated_pages * ps / MIB)}"
                       + (f"  {_SOURCES.get(r.source, r.source)}" if src else ""))
        if rest:
            pages = sum(int(r.resident_pages) for r in rest)
            out.append(f"{other_label(rest) + ', each under 1 MiB (--all: every row)':<{name_w}}"
                       f"{_mib(pages * ps / MIB)}{pages:>10d}")
        total = int(table["resident_pages"].sum())
        out.append(f"{'total':<{name_w}}{_mib(total * ps / MIB)}{total:>10d}")
        out.append("")
        out += _file_table(acc, top_files)
    if acc.chains:
        out.append("")
        out.append("the same data cached at several layers:")
        for ch in acc.chains:
            out.append(f"  {inert(ch['label'])}")
            for lv in ch["levels"]:
                out.append(f"    {fit(inert(lv['layer']), 40):<41}{fit(inert(lv['what']), 40):<41}"
                           f"{lv['resident_mib']:8.1f} MiB")
    if acc.squashfs:
        from .squashfs import describe

        out.append("")
        out += [inert(line) for line in describe(acc.squashfs)]
    out.append("")
    active = [inert(p["probe"].removeprefix("tracepoint:")) for p in acc.probes if p.get("active")]
    inactive = [f"{inert(p['probe'].removeprefix('tracepoint:'))} ({inert(p.get('why', ''))})"
                for p in acc.probes if not p.get("active")]
    out.append(f"probes active: {', '.join(active) or 'none'}")
    out.append(f"loaded by: {inert(str(s['loader']))}"
               + (f" ({inert(s['programs'])})" if s.get("programs") else ""))
    if inactive:
        out.append(f"probes inactive: {', '.join(inactive)}")
    drops = {k: acc.stats.get(k, 0) for k in DROP_STATS if acc.stats.get(k, 0)}
    lost = [f"{inert(k.split(':', 1)[1])} {int(v)}" for k, v in acc.stats.items()
            if k.startswith("lost_events:") and v]
    out.append(f"lost events: {int(acc.stats.get('lost_events', 0))} (programs skipped by the kernel"
               + (f": {', '.join(lost)}" if lost else "") + "); "
               f"map drops: {map_drops(acc.stats)}"
               + (f" ({', '.join(f'{k} {v}' for k, v in drops.items())})" if drops else ""))
    out.append(_baseline_line(rec))
    if s["interval_s"] and s["max_sample_gap_s"] > 3 * s["interval_s"]:
        out.append(f"sampling: longest gap between samples {s['max_sample_gap_s']:.1f} s "
                   f"(interval {s['interval_s']:g} s): the sampler was starved")
    if rec.oom:
        t0 = rec.header.get("attached") or 0
        victims = ", ".join(f"pid {v['pid']} {inert(v['comm'] or '?')} at {v['t']:.1f} s "
                            f"(+{v['t'] - t0:.1f} s)" for v in rec.oom[:5]) \
            + (" ..." if len(rec.oom) > 5 else "")
        out.append(f"OOM killer: {len(rec.oom)} victim{'s' if len(rec.oom) > 1 else ''} "
                   f"while recording: {victims}")
    for note in acc.notes:
        out.append(f"note: {note}")
    return "\n".join(out) + "\n"


def _file_table(acc: Account, top_files: int) -> list[str]:
    f = acc.files
    if not len(f):
        return ["no page-cache files traced"]
    out = [f"{'files (top by resident)':<48}{'dev':>9}{'ino':>10}  {'layer':<40}{'MiB':>9}"]
    ps = acc.page_size
    for r in f.head(top_files).itertuples(index=False):
        name = r.path if isinstance(r.path, str) else f"inode {r.ino}"
        out.append(f"{fit(inert(name), 47):<48}{r.dev:>9}{r.ino:>10}  {fit(inert(r.layer), 39):<40}"
                   f"{r.resident_pages * ps / MIB:9.1f}")
    if len(f) > top_files:
        rest = int(f["resident_pages"].iloc[top_files:].sum())
        out.append(f"{'... %d more files' % (len(f) - top_files):<107}{rest * ps / MIB:9.1f}")
    return out


def fit(s: str, width: int) -> str:
    """`s` cut to `width` characters, the last one an ellipsis where it was cut."""
    return s if len(s) <= width else s[: max(0, width - 1)] + "…"


def to_csv(acc: Account, by: str) -> str:
    """CSV for people and spreadsheets: names made inert and never read as formulas
    (tracer/safe.py). JSON keeps them exact."""
    return _safe_csv(acc.files if by == "file" else acc.by(by))
