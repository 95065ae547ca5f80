"""One self-contained HTML report of a recording: opens offline, nothing fetched.

The plot is an inline base64 PNG and the style sheet is inline; there is no script at
all, and a Content-Security-Policy that forbids scripts and every fetch, as a second
wall. Every name that comes from a recording (paths, dm names, phases, hostnames,
probe names, notes) is data from another machine: it goes through `esc` (control
characters made visible, then html.escape) and never into the page raw.

Use:  page = render(rec, acc, plain=(rec_plain, acc_plain) or None, png=bytes)
"""

from __future__ import annotations

import base64
import html
import io
import os

from . import answer as answer_mod, compare as compare_mod, timeline
from .account import MIB, Account
from .recording import Recording
from .report import DROP_STATS, map_drops, summary
from .safe import inert

TOP_FILES = 25
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .15em .6em; border-bottom: 1px solid #ddd; text-align: left;
         vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: bold; border-top: 2px solid #888; }
.summary { font-size: 1.05em; background: #f4f6fa; padding: .6em .9em; border-radius: 4px; }
.answer { max-width: 75em; }
.path { font-family: ui-monospace, monospace; font-size: .92em; word-break: break-all; }
.muted { color: #666; }
img.plot { display: block; max-width: 100%; height: auto; }
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(text) -> str:
    """A name from a recording, safe as HTML text or attribute value."""
    return html.escape(inert(text), quote=True)


def render(rec: Recording, acc: Account, plain: tuple[Recording, Account] | None = None,
           png: bytes | None = None) -> str:
    """The page. `png` is the timeline plot (made here when not given)."""
    if png is None:
        png = plot_png(rec)
    s = summary(rec, acc)
    mi = acc.meminfo
    ans = answer_mod.answer(acc, plain[1] if plain else None)
    title = f"footprint: {os.path.basename(rec.path)}"
    state = ("partial (the recorder did not stop cleanly)" if s["partial"]
             else f"complete ({s['end']})")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="muted">{esc(s["path"])} — kernel {esc(s["kernel"])} on {esc(s["hostname"])}, '
        f"{s['samples']} samples over {s['seconds'] or 0:.1f} s, {esc(state)}; "
        f"account at {acc.t:.1f} s after boot</p>",
        f'<p class="summary" id="summary">In use (MemTotal − MemFree) <b>{mi["nonfree_mib"]:.1f} MiB</b> '
        f'of {mi["memtotal_mib"]:.1f} MiB · used (MemTotal − MemAvailable, free -m) '
        f'{mi["used_mib"]:.1f} MiB · accounted {mi["accounted_mib"]:.1f} MiB · '
        f'unattributed {mi["unattributed_mib"]:.1f} MiB ({mi["unattributed_pct"]:.1f} %)</p>',
        "<h2>The answer</h2>",
        f'<p class="answer" id="answer">{esc(ans["paragraph"])}</p>',
        "<h2>Resident memory per subsystem over time</h2>",
        f'<img class="plot" id="plot" alt="stacked area of resident MiB per subsystem over time, '
        f'with the phase marks" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">',
        *_phases(rec),
    ]
    if plain:
        out += _comparison(plain, (rec, acc))
    out += ["<h2>Account by subsystem</h2>", *_account_table(acc, "subsystem"),
            "<h2>Account by storage layer</h2>", *_account_table(acc, "layer"),
            f"<h2>Top files (of {len(acc.files)})</h2>", *_files(acc),
            "<h2>The same data cached at several layers</h2>", *_chains(acc),
            "<h2>Probes, map drops, notes</h2>", *_probes(acc),
            "</body></html>"]
    return "\n".join(out) + "\n"


def plot_png(rec: Recording) -> bytes:
    """The timeline plot of a recording as PNG bytes."""
    buf = io.BytesIO()
    timeline.plot(timeline.build(rec), buf, fmt="png")
    return buf.getvalue()


def _table(head: list[tuple[str, bool]], rows: list[list[str]], total: list[str] | None = None,
           table_id: str = "") -> list[str]:
    """head: (label, numeric?); cells are already escaped or formatted numbers."""
    ident = f' id="{table_id}"' if table_id else ""
    out = [f"<table{ident}><thead><tr>"
           + "".join(f'<th{" class=n" if n else ""}>{esc(h)}</th>' for h, n in head)
           + "</tr></thead><tbody>"]
    for r in rows + ([total] if total else []):
        cls = ' class="total"' if total is not None and r is total else ""
        out.append(f"<tr{cls}>" + "".join(
            f'<td{" class=n" if n else ""}>{c}</td>' for c, (_h, n) in zip(r, head)) + "</tr>")
    out.append("</tbody></table>")
    return out


def _account_table(acc: Account, by: str) -> list[str]:
    t = acc.by(by)
    names = ["subsystem"] + (["layer", "kind"] if by == "layer" else [])
    head = [(n, False) for n in names] + [("MiB", True), ("pages", True), ("peak MiB", True),
                                          ("allocated MiB", True)]
    ps = acc.page_size
    rows = [[esc(getattr(r, n)) for n in names]
            + [f"{r.resident_mib:.1f}", f"{r.resident_pages:,}", f"{r.peak_pages * ps / MIB:.1f}",
               f"{r.allocated_pages * ps / MIB:.1f}"]
            for r in t.itertuples(index=False)]
    total_pages = int(t["resident_pages"].sum())
    total = ["total"] + [""] * (len(names) - 1) + [f"{total_pages * ps / MIB:.1f}",
                                                   f"{total_pages:,}", "", ""]
    return _table(head, rows, total, table_id=f"by-{by}")


def _files(acc: Account) -> list[str]:
    f = acc.files
    if not len(f):
        return ["<p>No page-cache files traced.</p>"]
    ps = acc.page_size
    rows = []
    for r in f.head(TOP_FILES).itertuples(index=False):
        name = r.path if isinstance(r.path, str) else f"inode {r.ino}"
        rows.append([f'<span class="path">{esc(name)}</span>', esc(r.dev), str(r.ino), esc(r.layer),
                     esc(r.subsystem), f"{r.resident_pages * ps / MIB:.1f}"])
    head = [("file", False), ("dev", False), ("inode", True), ("layer", False),
            ("subsystem", False), ("MiB", True)]
    total = None
    if len(f) > TOP_FILES:
        rest = int(f["resident_pages"].iloc[TOP_FILES:].sum())
        total = [f"{len(f) - TOP_FILES} more files", "", "", "", "", f"{rest * ps / MIB:.1f}"]
    return _table(head, rows, total, table_id="files")


def _chains(acc: Account) -> list[str]:
    if not acc.chains:
        return ['<p class="muted">No file system here rests on a loop-backed image.</p>']
    out = []
    for ch in acc.chains:
        out.append(f"<p><b>{esc(ch['label'])}</b> — data held at "
                   f"{ch['layers_holding_data']} of {len(ch['levels'])} layers</p>")
        out += _table([("layer", False), ("what", False), ("MiB", True), ("pages", True)],
                      [[esc(lv["layer"]), f'<span class="path">{esc(lv["what"])}</span>',
                        f"{lv['resident_mib']:.1f}", f"{lv['resident_pages']:,}"]
                       for lv in ch["levels"]])
    return out


def _phases(rec: Recording) -> list[str]:
    if not rec.phases:
        return ['<p class="muted">No phase marks in this recording.</p>']
    return _table([("seconds since boot", True), ("phase", False)],
                  [[f"{p['t']:.2f}", esc(p["name"])] for p in rec.phases], table_id="phases")


def _comparison(plain: tuple[Recording, Account], live: tuple[Recording, Account]) -> list[str]:
    cmp = compare_mod.compare(plain[1], live[1], by="subsystem", rec_a=plain[0], rec_b=live[0])
    a, b = cmp["a"], cmp["b"]
    rows = [[esc("in use (MemTotal − MemFree)"), f"{a['nonfree_mib']:.1f}", f"{b['nonfree_mib']:.1f}",
             f"{b['nonfree_mib'] - a['nonfree_mib']:+.1f}"],
            [esc("used (MemTotal − MemAvailable)"), f"{a['used_mib']:.1f}", f"{b['used_mib']:.1f}",
             f"{cmp['used_delta_mib']:+.1f}"]]
    rows += [[esc(r["subsystem"]), f"{r['a_mib']:.1f}", f"{r['b_mib']:.1f}", f"{r['delta_mib']:+.1f}"]
             for r in cmp["rows"]]
    rows.append([esc("residual (in-use difference − sum of differences)"), "", "",
                 f"{cmp['residual_mib']:+.1f}"])
    return ([f"<h2>Against the plain recording {esc(os.path.basename(plain[0].path))}</h2>",
             f'<p class="muted">A: {esc(plain[0].path)} · B: {esc(live[0].path)} (this report)</p>']
            + _table([("MiB", False), ("A (plain)", True), ("B (this)", True), ("B − A", True)], rows,
                     table_id="compare"))


def _probes(acc: Account) -> list[str]:
    active = [p["probe"] for p in acc.probes if p.get("active")]
    inactive = [f"{p['probe']} ({p.get('why', '')})" for p in acc.probes if not p.get("active")]
    drops = {k: acc.stats.get(k, 0) for k in DROP_STATS if acc.stats.get(k, 0)}
    out = [f"<p>Probes active: {esc(', '.join(active) or 'none')}</p>"]
    if inactive:
        out.append(f"<p>Probes inactive: {esc(', '.join(inactive))}</p>")
    out.append(f"<p>Lost events: 0 (none streamed); map drops: {map_drops(acc.stats)}"
               + (f" ({esc(', '.join(f'{k} {v}' for k, v in drops.items()))})" if drops else "")
               + "</p>")
    out += [f'<p class="muted">Note: {esc(n)}</p>' for n in acc.notes]
    return out
