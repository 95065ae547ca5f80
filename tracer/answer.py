"""The answer, from an account: how many pages the storage stack of the recording in
front of it claims — its squashfs, device-mapper, loop, iso9660 … (the stack subsystems
that hold pages in it), and of what —; the page cache of each storage layer; how many
times the same data is cached along the stack; and, given another account, which
subsystems explain the difference in MemTotal − MemFree.

Everything is read from the account's rows (which add up to MemTotal − MemFree), so the
numbers here are the report's numbers, only regrouped and said in words. The lab asks
its own question of it (vm/sidebyside.py: the 2014 LiveCD's squashfs, device-mapper and
loop, against the plain disk).

Use:  result = answer(acc, other_acc, against="plain.jsonl")   # "paragraph" + the numbers
"""

from __future__ import annotations

import re

import pandas as pd

from .account import STACK_SUBSYSTEMS, Account
from .safe import inert

# What each kind of page of a stack subsystem is, in words (others: GENERIC_PARTS).
PARTS = {
    "squashfs": {"page-cache": "page cache of files inside squashfs",
                 "slab": "slab (squashfs_* caches, kmalloc)",
                 "vmalloc": "vmalloc'd decompressor state",
                 "pages": "kernel pages (read buffers)"},
    "device-mapper": {"buffers": "page cache of dm block devices",
                      "slab": "slab (dm_* caches, kmalloc)",
                      "vmalloc": "vmalloc (snapshot exception tables)",
                      "pages": "kernel pages (kcopyd, bufio)"},
    "loop": {"buffers": "page cache of loop block devices",
             "slab": "slab", "vmalloc": "vmalloc", "pages": "kernel pages (loop workers)"},
}
GENERIC_PARTS = {"page-cache": "page cache of files inside {sub}",
                 "slab": "slab", "vmalloc": "vmalloc", "pages": "kernel pages"}
CACHE_KINDS = ("page-cache", "buffers", "shmem")
# dracut's live image: LiveOS/squashfs.img holds the squashfs with LiveOS/rootfs.img.
SQUASHFS_IMAGE = re.compile(r"(^|/)squashfs\.img$")


def worst_stack(chains: list[dict]) -> dict | None:
    """Of the double-caching chains (answer()["double_caching"]), the one holding the same
    data at the most layers (then the most MiB); None when no chain holds it twice."""
    stacked = [c for c in chains if c["layers_holding_data"] > 1]
    if not stacked:
        return None
    return max(stacked, key=lambda c: (c["layers_holding_data"], sum(lv["mib"] for lv in c["levels"])))


def stack_subsystems(acc: Account) -> list[str]:
    """The subsystems of STACK_SUBSYSTEMS that hold pages in this account, in that order
    (a plain disk: none, or loop's few kernel pages)."""
    held = acc.rows.groupby("subsystem")["resident_pages"].sum()
    return [s for s in STACK_SUBSYSTEMS if held.get(s, 0) > 0]


def answer(acc_live: Account, acc_plain: Account | None = None,
           subsystems: tuple[str, ...] | list[str] | None = None,
           against: str = "the recording compared") -> dict:
    """The answer: {"paragraph": str, "in_use": {...}, "subsystems": {name: {pages, mib,
    parts: [...]}}, "page_cache_by_layer": [...], "double_caching": [...],
    "versus_plain": {...} | None, "inferred": [...]} — MiB and pages, never rounded.
    `subsystems`: those to name (default: `stack_subsystems` of acc_live); `against`:
    how the paragraph names acc_plain, the account compared with ("versus_plain")."""
    rows, inferred = _rows_with_squashfs_inferred(acc_live)
    if subsystems is None:
        subsystems = stack_subsystems(acc_live)
    ps = acc_live.page_size
    result = {
        "t": acc_live.t,
        "in_use": {k: acc_live.meminfo[k] for k in ("memtotal_mib", "nonfree_mib", "used_mib",
                                                    "unattributed_mib", "unattributed_pct")},
        "subsystems": {sub: _claims(rows, sub, ps) for sub in subsystems},
        "page_cache_by_layer": _page_cache_by_layer(rows, ps),
        "untraced_page_cache_mib": _mib(rows, ps, (rows["subsystem"] == "page cache")),
        "double_caching": [_chain(c) for c in acc_live.chains],
        "versus_plain": _versus_plain(acc_live, acc_plain) if acc_plain is not None else None,
        "inferred": inferred,
        # Each squashfs mount: compressor, block size, decompressors, the kernel's formula
        # beside the traced caches and workspaces (tracer/squashfs.py explain).
        "squashfs": acc_live.squashfs,
    }
    result["paragraph"] = paragraph(result, against)
    return result


def _rows_with_squashfs_inferred(acc: Account) -> tuple[pd.DataFrame, list[str]]:
    """The account's rows; page cache on an unmounted, unidentified loop device whose
    backing file is dracut's squashfs.img is counted as squashfs.

    Why: dracut mounts that squashfs lazily and unmounts it, so older recordings (before
    the topology read superblock magics) call its files "unknown fs". The chain still
    says what backs the loop device; the inference is named in the result.
    """
    rows = acc.rows.copy()
    inferred = []
    for ch in acc.chains:
        levels = ch["levels"]
        for upper, lower in zip(levels[1:], levels[2:]):
            if not SQUASHFS_IMAGE.search(str(lower["what"])):
                continue
            layer = rows["layer"].astype(str)  # "unmounted loop0" or "unmounted loop0 [...]"
            hit = (rows["subsystem"] == "unknown fs") & (
                (layer == str(upper["layer"])) | layer.str.startswith(str(upper["layer"]) + " ["))
            if hit.any():
                rows.loc[hit, "subsystem"] = "squashfs"
                inferred.append(f"{upper['layer']} taken as squashfs: its loop device is backed "
                                f"by {lower['what']} (re-record to have the superblock read)")
    return rows, list(dict.fromkeys(inferred))


def _mib(rows: pd.DataFrame, ps: int, mask) -> float:
    return float(rows.loc[mask, "resident_pages"].sum()) * ps / (1 << 20)


def _claims(rows: pd.DataFrame, sub: str, ps: int) -> dict:
    """Pages a subsystem claims, by kind of page, each with the layers it is on."""
    mine = rows[rows["subsystem"] == sub]
    parts = []
    kinds = PARTS.get(sub) or {k: w.format(sub=sub) for k, w in GENERIC_PARTS.items()}
    for kind, what in kinds.items():
        part = mine[mine["kind"] == kind]
        pages = int(part["resident_pages"].sum())
        layers = [str(x) for x in part.sort_values("resident_pages", ascending=False)["layer"]
                  if str(x) not in ("slab caches", "kmalloc objects", "vmalloc", "kernel pages")]
        parts.append({"kind": kind, "what": what, "pages": pages, "mib": pages * ps / (1 << 20),
                      "layers": layers})
    other = mine[~mine["kind"].isin(list(kinds))]
    if len(other):
        pages = int(other["resident_pages"].sum())
        parts.append({"kind": "other", "what": "other", "pages": pages,
                      "mib": pages * ps / (1 << 20), "layers": [str(x) for x in other["layer"]]})
    pages = int(mine["resident_pages"].sum())
    return {"pages": pages, "mib": pages * ps / (1 << 20), "parts": parts}


def _page_cache_by_layer(rows: pd.DataFrame, ps: int) -> list[dict]:
    # The tracer's own files are its cost, not a storage layer's (they have their row).
    cache = rows[rows["kind"].isin(CACHE_KINDS) & (rows["source"] != "meminfo")
                 & (rows["subsystem"] != "tracer")]
    g = (cache.groupby(["layer", "subsystem", "kind"], sort=False)["resident_pages"].sum()
         .sort_values(ascending=False).reset_index())
    return [{"layer": r.layer, "subsystem": r.subsystem, "kind": r.kind,
             "pages": int(r.resident_pages), "mib": r.resident_pages * ps / (1 << 20)}
            for r in g.itertuples(index=False) if r.resident_pages > 0]


def _chain(ch: dict) -> dict:
    return {"label": ch["label"], "layers_holding_data": ch["layers_holding_data"],
            "levels": [{"layer": lv["layer"], "what": lv["what"], "pages": lv["resident_pages"],
                        "mib": lv["resident_mib"]} for lv in ch["levels"]]}


def _versus_plain(live: Account, plain: Account) -> dict:
    """MemTotal − MemFree of live minus plain, and the subsystems that make it up."""
    a = plain.by("subsystem").set_index("subsystem")["resident_mib"]
    b = live.by("subsystem").set_index("subsystem")["resident_mib"]
    both = a.index.union(b.index, sort=False)
    delta = (b.reindex(both, fill_value=0.0) - a.reindex(both, fill_value=0.0))
    delta = delta.reindex(delta.abs().sort_values(ascending=False, kind="stable").index)
    nonfree_delta = live.meminfo["nonfree_mib"] - plain.meminfo["nonfree_mib"]
    return {"plain_nonfree_mib": plain.meminfo["nonfree_mib"],
            "live_nonfree_mib": live.meminfo["nonfree_mib"],
            "plain_used_mib": plain.meminfo["used_mib"], "live_used_mib": live.meminfo["used_mib"],
            "nonfree_delta_mib": nonfree_delta,
            "by_subsystem": [{"subsystem": str(s), "delta_mib": float(d)} for s, d in delta.items()],
            "residual_mib": nonfree_delta - float(delta.sum())}


# --- in words ---------------------------------------------------------------------------


def paragraph(r: dict, against: str = "the recording compared") -> str:
    """A short plain-language answer of `answer`'s numbers; names from the recording are
    made inert; `against` names the account compared with."""
    use = r["in_use"]
    say = [f"{use['nonfree_mib']:.1f} MiB of {use['memtotal_mib']:.1f} MiB are in use "
           f"(MemTotal − MemFree; free -m \"used\", MemTotal − MemAvailable: {use['used_mib']:.1f} MiB); "
           f"{use['unattributed_pct']:.1f} % of it is unattributed."]
    for sub, c in r["subsystems"].items():
        parts = [p for p in c["parts"] if p["pages"]]
        detail = "; ".join(_part_words(p) for p in parts)
        say.append(f"{inert(sub)} claims {c['pages']:,} pages ({c['mib']:.1f} MiB)"
                   + (f": {detail}." if detail else "."))
    layers = r["page_cache_by_layer"][:6]
    if layers:
        say.append("Page cache per storage layer: " + ", ".join(
            f"{inert(lv['layer'])} {_amount(lv['pages'], lv['mib'])}" for lv in layers) + ".")
    if r["untraced_page_cache_mib"] >= 0.05 * use["nonfree_mib"]:
        say.append(f"{r['untraced_page_cache_mib']:.1f} MiB of page cache was resident before the "
                   "tracer attached and is not assigned to a layer.")
    worst = worst_stack(r["double_caching"])
    if worst:
        levels = ", ".join(f"{lv['mib']:.1f} MiB in {inert(lv['layer'])}"
                           + (f" ({inert(_basename(lv['what']))})" if lv["what"] != "all files" else "")
                           for lv in worst["levels"])
        say.append(f"The same data is cached at {worst['layers_holding_data']} layers along "
                   f"{inert(worst['label'])}: {levels}.")
    elif r["double_caching"]:
        say.append("No data is cached at more than one layer of the stack.")
    vs = r["versus_plain"]
    if vs:
        grew = [d for d in vs["by_subsystem"] if abs(d["delta_mib"]) >= 0.05][:6]
        more = "more" if vs["nonfree_delta_mib"] >= 0 else "less"
        say.append(f"Against {inert(against)} ({vs['plain_nonfree_mib']:.1f} MiB in use), this boot uses "
                   f"{abs(vs['nonfree_delta_mib']):.1f} MiB {more}: "
                   + ", ".join(f"{inert(d['subsystem'])} {d['delta_mib']:+.1f}" for d in grew)
                   + f" MiB (the differences add up to it; residual {vs['residual_mib']:+.1f} MiB).")
    say += _squashfs_words(r.get("squashfs") or {})
    if r["inferred"]:
        say.append("Inferred: " + "; ".join(inert(x) for x in r["inferred"]) + ".")
    return " ".join(say)


def _squashfs_words(view: dict) -> list[str]:
    """One sentence per squashfs mount with a prediction, one for predicted vs traced."""
    out = []
    for m in view.get("mounts", [])[:8]:
        p = m.get("predicted")
        if not p:
            continue
        out.append(f"squashfs on {inert(str(m.get('source')))} ({inert(str(m.get('compressor')))}, "
                   f"{(m.get('block_size') or 0) // 1024} KiB blocks, {p['decompressors']} "
                   f"{inert(str(m.get('mode')))} decompressor{'s' if p['decompressors'] != 1 else ''}) "
                   f"keeps {p['workspaces'] / 2**20:.2f} MiB of decompressor state and "
                   f"{p['caches'] / 2**20:.2f} MiB of caches by the kernel's formula.")
    if out:
        out.append(f"Traced: {view['traced_workspaces'] / 2**20:.2f} MiB of squashfs vmalloc "
                   f"(formula {view['predicted_workspaces'] / 2**20:.2f}) and "
                   f"{view['traced_caches'] / 2**20:.2f} MiB of its caches "
                   f"(formula {view['predicted_caches'] / 2**20:.2f}).")
    return out


def _part_words(p: dict) -> str:
    where = ""
    if p["layers"]:
        where = " (" + ", ".join(inert(_short_layer(x)) for x in p["layers"][:3]) + ")"
    return f"{_amount(p['pages'], p['mib'])} {p['what']}{where}"


def _amount(pages: int, mib: float) -> str:
    """MiB, or pages when there are too few to show in MiB (so non-zero never reads 0.0)."""
    return f"{mib:.1f} MiB" if abs(mib) >= 0.05 or pages == 0 else f"{pages} pages"


def _short_layer(layer: str) -> str:
    """"unmounted loop0 [rootfs.img: backing file of loop1]" → "rootfs.img";
    "bdev dm live-rw" → "dm live-rw"."""
    m = re.search(r"\[([^:\]]+):", layer)
    if m:
        return m.group(1)
    return layer[5:] if layer.startswith("bdev ") else layer


def _basename(path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _and(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def short(r: dict, against: str = "the recording compared") -> list[str]:
    """The answer in at most five short sentences with numbers (the paragraph has the
    detail): in use against the other account, what the stack subsystems claim, the same
    data cached along the stack, the largest differences, and what is unknown."""
    use, vs = r["in_use"], r["versus_plain"]
    if vs:
        more = "more" if vs["nonfree_delta_mib"] >= 0 else "less"
        say = [f"{use['nonfree_mib']:.0f} MiB in use, {abs(vs['nonfree_delta_mib']):.0f} MiB {more} "
               f"than {inert(against)} ({vs['plain_nonfree_mib']:.0f} MiB)."]
    else:
        say = [f"{use['nonfree_mib']:.0f} MiB of {use['memtotal_mib']:.0f} MiB in use."]
    subs = r["subsystems"]
    if subs:
        say.append(f"{_and([inert(s) for s in subs])} claim{'s' if len(subs) == 1 else ''} "
                   + _and([f"{c['mib']:.1f}" for c in subs.values()]) + " MiB.")
    worst = worst_stack(r["double_caching"])
    if worst:
        held = [lv for lv in worst["levels"] if lv["pages"] > 0]
        say.append(f"The same data is cached at {len(held)} layers: "
                   + ", ".join(f"{inert(lv['layer'].split(' ', 1)[0])} {lv['mib']:.0f}" for lv in held)
                   + f" MiB ({sum(lv['mib'] for lv in held):.0f} MiB in all).")
    if vs:
        big = [d for d in vs["by_subsystem"] if abs(d["delta_mib"]) >= 1.0][:3]
        if big:
            say.append("Largest differences: " + ", ".join(
                f"{inert(d['subsystem'])} {d['delta_mib']:+.0f}" for d in big) + " MiB.")
    say.append(f"{use['unattributed_mib']:.0f} MiB ({use['unattributed_pct']:.0f} %) is unattributed.")
    return say[:5]
