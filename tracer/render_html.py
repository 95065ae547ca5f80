"""One self-contained HTML report of a recording: opens offline, nothing fetched.

The page opens with the answer as a picture — the storage chain of the boot, each layer
a box sized by what it holds (tracer/chain.py), the plain boot beside it — then an
interactive timeline, then the tables (rows that are zero behind a <details> toggle).

The timeline is drawn by Plotly (plotly.js, inlined from the Python package: one file,
no network). Every name that comes from a recording (paths, dm names, phases,
hostnames, probe names, notes) is data from another machine: in HTML it goes through
`esc` (control characters made visible, then html.escape); into the chart it goes as
JSON in a <script type="application/json"> block with <, > and & escaped, and its text
is HTML-escaped too, since Plotly reads a few tags in labels. A Content-Security-Policy
lets only the page's own two scripts run (by hash) and forbids every fetch.

Use:  page = render(rec, acc, plain=(rec_plain, acc_plain) or None)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import json
import os

from . import answer as answer_mod, chain_svg, compare as compare_mod, timeline
from .account import MIB, Account
from .recording import Recording
from .report import DROP_STATS, map_drops, span, summary
from .safe import html_text, inert

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
ul.short { font-size: 1.1em; margin: .4em 0 .8em; padding-left: 1.2em; }
.answer { max-width: 75em; }
.path { font-family: ui-monospace, monospace; font-size: .92em; word-break: break-all; }
.muted { color: #666; }
details { margin: .4em 0; } summary { cursor: pointer; color: #345; }
svg.chain { width: 100%; height: auto; display: block; margin: .3em 0 .8em; }
svg.chain text { font: 12px system-ui, sans-serif; fill: #222; }
svg.chain text.mib { font-weight: bold; font-size: 13px; }
svg.chain text.head { font-weight: bold; font-size: 14px; }
#timeline { width: 100%; min-width: 900px; height: 520px; }
.scroll { overflow-x: auto; }
"""
BAND_COLOURS = timeline.BAND_COLOURS


def esc(text) -> str:
    """A name from a recording, safe as HTML text or attribute value."""
    return html_text(text)


def render(rec: Recording, acc: Account, plain: tuple[Recording, Account] | None = None) -> str:
    """The page: the answer (the chain picture and a few sentences), the timeline, the tables."""
    s = summary(rec, acc)
    mi = acc.meminfo
    against = os.path.basename(plain[0].path) if plain else ""
    ans = answer_mod.answer(acc, plain[1] if plain else None, against=against)
    title = f"footprint: {os.path.basename(rec.path)}"
    state = ("partial (the recorder did not stop cleanly)" if s["partial"]
             else f"complete ({s['end']})")
    data = _json_for_script({"figure": timeline_figure(rec)})
    scripts = [_plotly_js(), DRAW_JS]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_csp(scripts)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="muted">{esc(s["path"])} — kernel {esc(s["kernel"])} on {esc(s["hostname"])}, '
        f"{span(s)}, {esc(state)}; "
        f"account at {acc.t:.1f} s after boot</p>",
        "<h2>The answer</h2>",
        '<ul class="short" id="answer-short">'
        + "".join(f"<li>{esc(x)}</li>" for x in answer_mod.short(ans, against)) + "</ul>",
        *chain_svg.figure(rec, acc, plain),
        f'<p class="summary" id="summary">In use (MemTotal − MemFree) <b>{mi["nonfree_mib"]:.1f} MiB</b> '
        f'of {mi["memtotal_mib"]:.1f} MiB · used (MemTotal − MemAvailable, free -m) '
        f'{mi["used_mib"]:.1f} MiB · accounted {mi["accounted_mib"]:.1f} MiB · '
        f'unattributed {mi["unattributed_mib"]:.1f} MiB ({mi["unattributed_pct"]:.1f} %)</p>',
        "<details><summary>The answer in full</summary>",
        f'<p class="answer" id="answer">{esc(ans["paragraph"])}</p></details>',
        "<h2>Resident memory per subsystem over time</h2>",
        '<p class="muted">Hover for the values; drag to zoom, double-click to zoom out. '
        "Dashed lines: phase marks.</p>",
        '<div class="scroll"><div id="timeline"></div></div>',
        f'<script type="application/json" id="timeline-data">{data}</script>',
        *_phases(rec),
    ]
    if plain:
        out += _comparison(plain, (rec, acc))
    out += ["<h2>Account by subsystem</h2>", *_account_table(acc, "subsystem"),
            "<h2>Account by storage layer</h2>", *_account_table(acc, "layer"),
            f"<h2>Top files (of {len(acc.files)})</h2>", *_files(acc),
            "<h2>The same data cached at several layers</h2>", *_chains(acc),
            "<h2>Probes, map drops, notes</h2>", *_probes(acc)]
    out += [f"<script>{js}</script>" for js in scripts]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- scripts: Plotly and the few lines that draw the timeline --------------------------

DRAW_JS = """
(function () {
  var spec = JSON.parse(document.getElementById('timeline-data').textContent);
  var fig = spec.figure;
  Plotly.newPlot('timeline', fig.data, fig.layout,
                 {displaylogo: false, responsive: true, modeBarButtonsToRemove: ['toImage']});
})();
"""


@functools.lru_cache(maxsize=1)
def _plotly_js() -> str:
    """plotly.js from the plotly package, inlined: the page must open offline (read once
    per process: the experiment writes a page per moment)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


@functools.lru_cache(maxsize=8)
def _script_hash(js: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii") + "'"


def _csp(scripts: list[str]) -> str:
    """Only these inline scripts run (by hash); nothing is fetched."""
    hashes = " ".join(_script_hash(js) for js in scripts)
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {hashes}"


def _json_for_script(obj) -> str:
    """JSON to sit inside <script type="application/json">: strict, ASCII, and no <, >
    or & (so no "</script>" or "<!--" can end or bend the block)."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _chart_text(name) -> str:
    """A name as Plotly label text: Plotly reads <b>, <a href> … in labels and decodes
    entities, so the name is escaped to show as itself."""
    return html.escape(inert(name), quote=True)


# --- the timeline, as a Plotly figure ---------------------------------------------------

PLOT_WIDTH_PX = 1000   # the plot area the phase labels are laid out for (#timeline min-width)
LABEL_CHAR_PX = 6.2    # width of a character of a 10 px label
MAX_LANES = 5


def timeline_figure(rec: Recording, top: int = 10) -> dict:
    """Plotly's {"data", "layout"}: stacked bands per subsystem as `timeline.bands`
    chooses them (those of the PNG plot), unattributed on top;
    phases as dashed lines with labels set in lanes so that none overlaps another."""
    frame = timeline.for_plot(timeline.build(rec))
    x = [round(float(v), 3) for v in frame["t_s"]]
    data = [{"type": "scatter", "mode": "lines", "stackgroup": "memory", "name": _chart_text(name),
             "x": x, "y": [round(float(v), 2) for v in y], "line": {"width": 0.5, "color": c},
             "fillcolor": c, "hovertemplate": "%{y:.1f} MiB"}
            for name, y, c in timeline.bands(frame, top)]
    phases = sorted(frame.attrs.get("phases", []), key=lambda p: p["t_s"])
    top_mib = float(frame["nonfree_mib"].max()) if len(frame) else 1.0
    shapes, notes, lanes = [], [], _lanes(phases, x)
    for ph, lane in zip(phases, lanes):
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": ph["t_s"], "x1": ph["t_s"],
                       "y0": 0, "y1": 1, "line": {"color": "#333", "width": 1, "dash": "dash"}})
        if lane is not None:
            notes.append({"x": ph["t_s"], "xref": "x", "yref": "paper", "y": 1.0, "yshift": 4 + 16 * lane,
                          "yanchor": "bottom", "xanchor": "left", "showarrow": False,
                          "text": _chart_text(str(ph["name"])[:40]), "font": {"size": 10, "color": "#333"}})
    if phases:  # every phase can be hovered, labelled or not
        data.append({"type": "scatter", "mode": "markers", "name": "phases", "showlegend": False,
                     "x": [p["t_s"] for p in phases], "y": [top_mib] * len(phases),
                     "text": [_chart_text(f"{p['name']} at {p['t_s']:.1f} s") for p in phases],
                     "hovertemplate": "%{text}<extra></extra>",
                     "marker": {"symbol": "triangle-down", "size": 9, "color": "#333"}})
    lanes_used = max([n for n in lanes if n is not None], default=-1) + 1
    origin = frame.attrs.get("origin", "boot")
    layout = {"height": 520, "margin": {"l": 60, "r": 10, "t": 30 + 16 * lanes_used, "b": 50},
              "xaxis": {"title": {"text": "seconds since boot" if origin == "boot" else "seconds since the first sample"}},
              "yaxis": {"title": {"text": "resident MiB"}, "rangemode": "tozero"},
              "hovermode": "x unified", "legend": {"traceorder": "reversed"},
              "shapes": shapes, "annotations": notes, "font": {"family": "system-ui, sans-serif"}}
    return {"data": data, "layout": layout}


def _lanes(phases: list[dict], x: list[float]) -> list:
    """A lane (row above the plot) for each phase label, or None when none is free: a
    label takes the first lane whose last label ends before it starts."""
    times = [p["t_s"] for p in phases] + list(x)
    if not times:
        return []
    span = (max(times) - min(times)) or 1.0
    per_px = span / PLOT_WIDTH_PX
    ends: list[float] = []
    out = []
    for p in phases:
        width = (len(str(p["name"])[:40]) * LABEL_CHAR_PX + 8) * per_px
        lane = next((i for i, end in enumerate(ends) if end <= p["t_s"]), None)
        if lane is None and len(ends) < MAX_LANES:
            ends.append(0.0)
            lane = len(ends) - 1
        if lane is not None:
            ends[lane] = p["t_s"] + width
        out.append(lane)
    return out


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
    rows = [([esc(getattr(r, n)) for n in names]
             + [f"{r.resident_mib:.1f}", f"{r.resident_pages:,}", f"{r.peak_pages * ps / MIB:.1f}",
                f"{r.allocated_pages * ps / MIB:.1f}"], abs(r.resident_mib) < 0.05)
            for r in t.itertuples(index=False)]
    total_pages = int(t["resident_pages"].sum())
    total = ["total"] + [""] * (len(names) - 1) + [f"{total_pages * ps / MIB:.1f}",
                                                   f"{total_pages:,}", "", ""]
    return _with_zeros_hidden(head, rows, total, f"by-{by}")


def _with_zeros_hidden(head, rows: list[tuple[list[str], bool]], total, table_id: str) -> list[str]:
    """The table of the rows that hold something (the total is of all rows), then the
    rows that show 0.0 MiB behind a toggle."""
    zeros = [r for r, zero in rows if zero]
    out = _table(head, [r for r, zero in rows if not zero], total, table_id=table_id)
    if zeros:
        out += [f"<details><summary>{len(zeros)} more rows at 0.0 MiB (under 0.05 MiB)</summary>",
                *_table(head, zeros, table_id=f"{table_id}-zero"), "</details>"]
    return out


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
    return ([f"<details><summary>The {len(rec.phases)} phase marks</summary>"]
            + _table([("seconds since boot", True), ("phase", False)],
                     [[f"{p['t']:.2f}", esc(p["name"])] for p in rec.phases], table_id="phases")
            + ["</details>"])


def _comparison(plain: tuple[Recording, Account], live: tuple[Recording, Account]) -> list[str]:
    cmp = compare_mod.compare(plain[1], live[1], by="subsystem", rec_a=plain[0], rec_b=live[0])
    a, b = cmp["a"], cmp["b"]
    rows = [[esc("in use (MemTotal − MemFree)"), f"{a['nonfree_mib']:.1f}", f"{b['nonfree_mib']:.1f}",
             f"{b['nonfree_mib'] - a['nonfree_mib']:+.1f}"],
            [esc("used (MemTotal − MemAvailable)"), f"{a['used_mib']:.1f}", f"{b['used_mib']:.1f}",
             f"{cmp['used_delta_mib']:+.1f}"]]
    body = [([esc(r["subsystem"]), f"{r['a_mib']:.1f}", f"{r['b_mib']:.1f}", f"{r['delta_mib']:+.1f}"],
             max(abs(r["a_mib"]), abs(r["b_mib"]), abs(r["delta_mib"])) < 0.05) for r in cmp["rows"]]
    rows = [(r, False) for r in rows] + body
    total = [esc("residual (in-use difference − sum of differences)"), "", "",
             f"{cmp['residual_mib']:+.1f}"]
    return ([f"<h2>Against the plain recording {esc(os.path.basename(plain[0].path))}</h2>",
             f'<p class="muted">A: {esc(plain[0].path)} · B: {esc(live[0].path)} (this report)</p>']
            + _with_zeros_hidden([("MiB", False), ("A (plain)", True), ("B (this)", True), ("B − A", True)],
                                 rows, total, "compare"))


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
