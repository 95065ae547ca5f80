"""The experiment's first screen: the answer a person came for, in at most 60 lines.

Made from the Experiment alone (vm/results.py; or the dict `--json` prints and
experiment.json keeps), so it can be redrawn from a saved run: the 2014 table beside today's, the
moments, the largest live − plain differences (the small ones summed on one line, so
the sums stay exact), and the answer in five short sentences. `footprint experiment
--full` prints every table (vm/sidebyside.py `text`).

Use:  print(screen(exp))
"""

from __future__ import annotations

import textwrap
from typing import Optional

from tracer.answer import worst_stack
from tracer.fold import fold, other_label
from tracer.safe import inert

from .results import Boot, Experiment, Moment, as_experiment
from .sidebyside import live_name

QUESTION = ("squashfs", "device-mapper", "loop", "iso9660", "ramfs")
TOP_DIFFS = 10
# Variants shown in a column of their own beside the dracut live boot in the 2014 table
# (the live-build ISO: a LiveCD nobody here built). At most two more columns fit in WIDTH.
BESIDE_LIVE: list[str] = ["livebuild"]
WIDTH = 100  # columns; and at most 60 lines in all


def screen(result: Experiment | dict) -> str:
    """The first screen: title, 2014 beside today, the moments, the largest differences,
    the answer in sentences, failed boots, where the page is."""
    result = as_experiment(result)
    out = [_title(result), "", *_then_and_now(result)]
    moments = _moments_table(result)
    if moments:
        out += ["", *moments]
    diffs = _differences(result)
    if diffs:
        out += ["", *diffs]
    mx = _matrix(result)
    if mx:
        out += ["", *mx]
    sentences = answer_sentences(result)
    if sentences:
        out += ["", "The answer:"]
        for s in sentences:
            out += textwrap.wrap(s, width=WIDTH, initial_indent="  ", subsequent_indent="    ")
    for b in result.boots:
        if not b.ok:
            out.append(f"{inert(b.name)} FAILED: {inert(b.error)[:80]}")
    files = result.files or {}
    where = f" · page: {inert(files['report'])}" if files.get("report") else ""
    out += ["", f"Every table: --full · every number: --json{where}"]
    return "\n".join(out)


def _live_name(result: Experiment) -> Optional[str]:
    """The answer's boot, else the one sidebyside would set against plain."""
    return (result.answer or {}).get("boot") or live_name([b.name for b in result.ok if b.name != "plain"])


def _title(result: Experiment) -> str:
    ok = result.ok
    if not ok:
        return "footprint experiment: no boot succeeded"
    b = ok[0]
    return (f"footprint experiment: {', '.join(inert(x.name) for x in ok)} on Debian, kernel "
            f"{inert(b.figure('kernel'))}, {b.figure('memory_mib', '?')} MiB, {inert(b.figure('accel'))}")


def _n(v, fmt: str = ".0f", width: int = 11) -> str:
    return f"{v:>{width}{fmt}}" if isinstance(v, (int, float)) else f"{'–':>{width}}"


def _then_and_now(result: Experiment) -> list[str]:
    """The 2014 figures beside today's: delivery, rootfs, in use (like with like)."""
    seed = {("LiveCD" if s["name"].startswith("LiveCD") else "plain"): s for s in result.seed["boots"]}
    live, plain = result.boot(_live_name(result) or ""), result.boot("plain")
    cols = [("2014 LiveCD", seed.get("LiveCD")), ("2014 plain", seed.get("plain")),
            (f"today {inert(live.name)[:8]}" if live else "today live", live and live.figures)]
    for name in BESIDE_LIVE[:2]:
        other = result.boot(name)
        if other is not None and other is not live:
            cols.append((f"today {inert(name)[:7]}", other.figures))
    cols.append(("today plain", plain and plain.figures))
    rows = [("delivery MiB", "delivery_mib"), ("rootfs MiB (df /)", "rootfs_mib"),
            ("in use MemTotal−MemFree", "nonfree_mib"), ("used, free -m today", "used_mib")]
    out = [f"{'MiB':<26}" + "".join(f"{c:>13}" for c, _ in cols)]
    for label, key in rows:
        cells = "".join(_n((d or {}).get(key) if not (key == "used_mib" and c.startswith("2014")) else None,
                           width=13) for c, d in cols)
        out.append(f"{label:<26}{cells}")
    out.append("2014's free -m \"used\" was MemTotal − MemFree: compare the in-use line.")
    return out


def _stacked(result: Experiment, moment: str) -> Optional[dict]:
    """The chain that caches the same data at the most layers, at this moment."""
    a = ((result.answer or {}).get("by_moment") or {}).get(moment)
    worst = worst_stack((a or {}).get("double_caching", []))
    if worst is None:
        return None
    held = [lv for lv in worst["levels"] if lv["pages"] > 0]
    return {"layers": len(held), "mib": sum(lv["mib"] for lv in held), "levels": held}


def _moments_table(result: Experiment) -> list[str]:
    names = result.moment_names()
    if not names:
        return []
    live = _live_name(result)
    out = [f"{'moment (MiB)':<13}{'boot':<14}{'in use':>8}{'squashfs':>10}{'dm':>7}{'loop':>7}"
           f"{'iso9660':>9}{'ramfs/COW':>11}{'same data':>11}"]
    for name in names:
        first = True
        for b in result.ok:
            m = b.moment(name)
            if m is None:
                continue
            q = {s: m.account.mib(s) for s in QUESTION} if m.account and m.account.rows else None
            st = _stacked(result, name) if b.name == live else None
            cells = "".join(_n(q[s] if q else None, ".1f", w)
                            for s, w in zip(QUESTION, (10, 7, 7, 9, 11)))
            same = f"{st['mib']:.0f} ×{st['layers']}" if st else "–"
            out.append(f"{name if first else '':<13}{inert(b.name)[:13]:<14}{m.in_use_mib:>8.0f}"
                       f"{cells}{same:>11}")
            first = False
    out.append("same data: MiB of the same files cached at ×N layers of the live stack (ext4, squashfs, iso9660).")
    return out


def _differences(result: Experiment) -> list[str]:
    """live − plain per subsystem at each moment: the largest, then the rest on one line."""
    entries = [e for e in result.side_by_side or [] if e["b"] == _live_name(result)]
    if not entries:
        return []
    moments = [e["moment"] for e in entries]
    by_sub: dict[str, dict[str, float]] = {}
    for e in entries:
        for r in e["subsystem"]["rows"]:
            by_sub.setdefault(r["subsystem"], {})[e["moment"]] = r["delta_mib"]
    rows = sorted(by_sub.items(), key=lambda kv: -max(abs(v) for v in kv[1].values()))
    shown, rest = fold(rows, lambda kv: max(abs(v) for v in kv[1].values()), top=TOP_DIFFS)
    a, b = inert(entries[0]["a"]), inert(entries[0]["b"])
    width = 12
    out = [f"{b} − {a} (MiB)"[:30].ljust(30) + "".join(f"{m:>{width}}" for m in moments)]

    def line(label: str, values) -> str:
        return f"{label[:29]:<30}" + "".join(f"{v:>+{width}.1f}" for v in values)

    out.append(line("in use (MemTotal−MemFree)", [e["subsystem"]["nonfree_delta_mib"] for e in entries]))
    for sub, d in shown:
        out.append(line(inert(sub), [d.get(m, 0.0) for m in moments]))
    if rest:
        out.append(line(f"{other_label(rest)}, each < 1", [sum(d.get(m, 0.0) for _s, d in rest) for m in moments]))
    out.append(line("residual (in use − rows)", [e["subsystem"]["residual_mib"] for e in entries]))
    return out


def _matrix(result: Experiment) -> list[str]:
    """The squashfs matrix (vm/matrix.py), on the first screen only when the run asked for
    it: another squashfs than the default live one's, or --smp other than the default."""
    from .images import SQUASHED
    from .matrix import text

    rows = result.squashfs_matrix or []
    if not any(r["boot"] in SQUASHED or (r.get("smp") or 2) != 2 for r in rows):
        return []
    return text(rows).splitlines()


def answer_sentences(result: Experiment | dict) -> list[str]:
    """At most five short sentences, each with its numbers."""
    result = as_experiment(result)
    name = _live_name(result)
    by = {e["moment"]: e["subsystem"] for e in result.side_by_side or [] if e["b"] == name}
    live = result.boot(name or "")
    if not by or live is None:
        return []
    say = []
    seed = {("LiveCD" if s["name"].startswith("LiveCD") else "plain"): s for s in result.seed["boots"]}
    first = "after-boot" if "after-boot" in by else next(iter(by))
    c = by[first]
    then = ""
    if "LiveCD" in seed and "plain" in seed:
        then = (f" (2014: {seed['LiveCD']['nonfree_mib']} against {seed['plain']['nonfree_mib']}, "
                f"{seed['LiveCD']['nonfree_mib'] - seed['plain']['nonfree_mib']:+d})")
    say.append(f"{first}: {inert(name)} has {c['b']['nonfree_mib']:.0f} MiB in use, plain "
               f"{c['a']['nonfree_mib']:.0f} MiB: {c['nonfree_delta_mib']:+.0f} MiB{then}.")
    d = {r["subsystem"]: r["delta_mib"] for r in c["rows"]}
    parts = [(s, d.get(s, 0.0)) for s in QUESTION[:4]]
    say.append("Of that, " + ", ".join(f"{s} {v:+.0f}" for s, v in parts)
               + f" MiB: {sum(v for _s, v in parts):+.0f} MiB for reading through the image stack.")
    if "after-read" in by:
        st = _stacked(result, "after-read")
        read = _workload(live, "after-read").get("read_mib")
        what = f"After a cold read of {read:.0f} MiB" if isinstance(read, (int, float)) else "After a cold read"
        if st:
            levels = ", ".join(f"{inert(lv['layer'].split(' ', 1)[0])} {lv['mib']:.0f}" for lv in st["levels"])
            say.append(f"{what} the same files sit at {st['layers']} layers ({levels} MiB): "
                       f"{by['after-read']['nonfree_delta_mib']:+.0f} MiB against plain.")
        else:
            say.append(f"{what}: {by['after-read']['nonfree_delta_mib']:+.0f} MiB against plain.")
    if "after-write" in by:
        w = by["after-write"]
        cow = {r["subsystem"]: r["delta_mib"] for r in w["rows"]}.get("ramfs", 0.0)
        wrote = _workload(live, "after-write").get("written_mib")
        what = f"After writing {wrote:.0f} MiB" if isinstance(wrote, (int, float)) else "After writing"
        say.append(f"{what} and dropping caches, the snapshot's COW in ramfs keeps {cow:.0f} MiB "
                   f"(ramfs pages are never reclaimed): {w['nonfree_delta_mib']:+.0f} MiB against plain.")
    m = live.moment(first)
    if m is not None and m.account and any(r["subsystem"] == "tracer" for r in m.account.rows):
        say.append(f"Both boots carry the tracer, {m.account.mib('tracer'):.0f} MiB in the live one {first}; "
                   "--untraced measures without it.")
    return say[:5]


def _workload(boot: Boot, moment: str) -> dict:
    """What the workload that led to `moment` did (read_mib, written_mib …), or {}."""
    m: Optional[Moment] = boot.moment(moment)
    return (m.workload if m is not None else None) or {}
