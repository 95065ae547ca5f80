"""The experiment's first screen: the answer a person came for, in at most 60 lines.

Made from the experiment's result dict alone (what `--json` prints and experiment.json
keeps), so it can be redrawn from a saved run: the 2014 table beside today's, the
moments, the largest live − plain differences (the small ones summed on one line, so
the sums stay exact), and the answer in five short sentences. `footprint experiment
--full` prints every table (vm/sidebyside.py `text`).

Use:  print(screen(result))
"""

from __future__ import annotations

import textwrap
from typing import Optional

from tracer.answer import worst_stack
from tracer.fold import fold, other_label
from tracer.safe import inert

from .sidebyside import moment_names

QUESTION = ("squashfs", "device-mapper", "loop", "iso9660", "ramfs")
TOP_DIFFS = 10
WIDTH = 100  # columns; and at most 60 lines in all


def screen(result: dict) -> str:
    out = [_title(result), "", *_then_and_now(result)]
    moments = _moments_table(result)
    if moments:
        out += ["", *moments]
    diffs = _differences(result)
    if diffs:
        out += ["", *diffs]
    sentences = answer_sentences(result)
    if sentences:
        out += ["", "The answer:"]
        for s in sentences:
            out += textwrap.wrap(s, width=WIDTH, initial_indent="  ", subsequent_indent="    ")
    failed = [b for b in result["boots"] if "error" in b]
    for b in failed:
        out.append(f"{inert(b['name'])} FAILED: {inert(b['error'])[:80]}")
    files = result.get("files") or {}
    where = f" · page: {inert(files['report'])}" if files.get("report") else ""
    out += ["", f"Every table: --full · every number: --json{where}"]
    return "\n".join(out)


def _ok(result: dict) -> list[dict]:
    return [b for b in result["boots"] if "error" not in b]


def _boot(result: dict, name: str) -> Optional[dict]:
    return next((b for b in _ok(result) if b["name"] == name), None)


def _live_name(result: dict) -> Optional[str]:
    ans = result.get("answer") or {}
    names = [b["name"] for b in _ok(result) if b["name"] != "plain"]
    return ans.get("boot") or ("live" if "live" in names else (names[0] if names else None))


def _title(result: dict) -> str:
    ok = _ok(result)
    if not ok:
        return "footprint experiment: no boot succeeded"
    b = ok[0]
    return (f"footprint experiment: {', '.join(inert(x['name']) for x in ok)} on Debian, kernel "
            f"{inert(b.get('kernel'))}, {b.get('memory_mib', '?')} MiB, {inert(b.get('accel'))}")


def _n(v, fmt: str = ".0f", width: int = 11) -> str:
    return f"{v:>{width}{fmt}}" if isinstance(v, (int, float)) else f"{'–':>{width}}"


def _then_and_now(result: dict) -> list[str]:
    """The 2014 figures beside today's: delivery, rootfs, in use (like with like)."""
    seed = {("LiveCD" if s["name"].startswith("LiveCD") else "plain"): s for s in result["seed"]["boots"]}
    live, plain = _boot(result, _live_name(result) or ""), _boot(result, "plain")
    cols = [("2014 LiveCD", seed.get("LiveCD")), ("2014 plain", seed.get("plain")),
            (f"today {inert(live['name'])[:8]}" if live else "today live", live),
            ("today plain", plain)]
    rows = [("delivery MiB", "delivery_mib"), ("rootfs MiB (df /)", "rootfs_mib"),
            ("in use MemTotal−MemFree", "nonfree_mib"), ("used, free -m today", "used_mib")]
    out = [f"{'MiB':<26}" + "".join(f"{c:>13}" for c, _ in cols)]
    for label, key in rows:
        cells = "".join(_n((d or {}).get(key) if not (key == "used_mib" and c.startswith("2014")) else None,
                           width=13) for c, d in cols)
        out.append(f"{label:<26}{cells}")
    out.append("2014's free -m \"used\" was MemTotal − MemFree: compare the in-use line.")
    return out


def _question(moment: dict) -> dict:
    rows = moment.get("account") or []
    return {s: sum(r["resident_mib"] for r in rows if r["subsystem"] == s) for s in QUESTION}


def _stacked(result: dict, moment: str) -> Optional[dict]:
    """The chain that caches the same data at the most layers, at this moment."""
    a = ((result.get("answer") or {}).get("by_moment") or {}).get(moment)
    worst = worst_stack((a or {}).get("double_caching", []))
    if worst is None:
        return None
    held = [lv for lv in worst["levels"] if lv["pages"] > 0]
    return {"layers": len(held), "mib": sum(lv["mib"] for lv in held), "levels": held}


def _moments_table(result: dict) -> list[str]:
    names = moment_names(result)
    if not names:
        return []
    live = _live_name(result)
    out = [f"{'moment (MiB)':<13}{'boot':<9}{'in use':>8}{'squashfs':>10}{'dm':>7}{'loop':>7}"
           f"{'iso9660':>9}{'ramfs/COW':>11}{'same data':>11}"]
    for name in names:
        first = True
        for b in _ok(result):
            m = next((x for x in b.get("moments") or [] if x["name"] == name), None)
            if m is None:
                continue
            q = _question(m) if m.get("account") else None
            st = _stacked(result, name) if b["name"] == live else None
            cells = "".join(_n(q[s] if q else None, ".1f", w)
                            for s, w in zip(QUESTION, (10, 7, 7, 9, 11)))
            same = f"{st['mib']:.0f} ×{st['layers']}" if st else "–"
            out.append(f"{name if first else '':<13}{inert(b['name'])[:8]:<9}{m['nonfree_mib']:>8.0f}"
                       f"{cells}{same:>11}")
            first = False
    out.append("same data: MiB of the same files cached at ×N layers of the live stack (ext4, squashfs, iso9660).")
    return out


def _differences(result: dict) -> list[str]:
    """live − plain per subsystem at each moment: the largest, then the rest on one line."""
    entries = [e for e in result.get("side_by_side") or [] if e["b"] == _live_name(result)]
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


def answer_sentences(result: dict) -> list[str]:
    """At most five short sentences, each with its numbers."""
    live_name = _live_name(result)
    by = {e["moment"]: e["subsystem"] for e in result.get("side_by_side") or [] if e["b"] == live_name}
    live = _boot(result, live_name or "")
    if not by or live is None:
        return []
    moments = {m["name"]: m for m in live.get("moments") or []}
    say = []
    seed = {("LiveCD" if s["name"].startswith("LiveCD") else "plain"): s for s in result["seed"]["boots"]}
    first = "after-boot" if "after-boot" in by else next(iter(by))
    c = by[first]
    then = ""
    if "LiveCD" in seed and "plain" in seed:
        then = (f" (2014: {seed['LiveCD']['nonfree_mib']} against {seed['plain']['nonfree_mib']}, "
                f"{seed['LiveCD']['nonfree_mib'] - seed['plain']['nonfree_mib']:+d})")
    say.append(f"{first}: {inert(live_name)} has {c['b']['nonfree_mib']:.0f} MiB in use, plain "
               f"{c['a']['nonfree_mib']:.0f} MiB: {c['nonfree_delta_mib']:+.0f} MiB{then}.")
    d = {r["subsystem"]: r["delta_mib"] for r in c["rows"]}
    parts = [(s, d.get(s, 0.0)) for s in QUESTION[:4]]
    say.append("Of that, " + ", ".join(f"{s} {v:+.0f}" for s, v in parts)
               + f" MiB: {sum(v for _s, v in parts):+.0f} MiB for reading through the image stack.")
    if "after-read" in by:
        st = _stacked(result, "after-read")
        read = (moments.get("after-read", {}).get("workload") or {}).get("read_mib")
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
        wrote = (moments.get("after-write", {}).get("workload") or {}).get("written_mib")
        what = f"After writing {wrote:.0f} MiB" if isinstance(wrote, (int, float)) else "After writing"
        say.append(f"{what} and dropping caches, the snapshot's COW in ramfs keeps {cow:.0f} MiB "
                   f"(ramfs pages are never reclaimed): {w['nonfree_delta_mib']:+.0f} MiB against plain.")
    tracer = [r["resident_mib"] for m in [moments.get(first)] if m for r in m.get("account") or []
              if r["subsystem"] == "tracer"]
    if tracer:
        say.append(f"Both boots carry the tracer, {sum(tracer):.0f} MiB in the live one {first}; "
                   "--untraced measures without it.")
    return say[:5]
