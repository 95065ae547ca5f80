"""The timeline: resident memory per subsystem at every sample of a recording.

Why not `account.build` per sample: it resolves every file through the storage topology
each time (~0.15 s per sample on a host with 4,000 cached files), so a 100-sample
recording would take 15 s. Here the expensive part — which subsystem and kind of page
cache each (s_dev, inode) is — is decided once per topology epoch by the account's own
classification (`pagecache.owners`); each sample then only updates the owners whose counters changed (samples
are deltas) and adds the other categories with the account's arithmetic. The
per-sample sums are the account's (tests compare them with `account.build` at every
sample), so the columns add up to MemTotal − MemFree at each sample, like the report.

Use:  frame = timeline.build(rec)      # rows: samples; columns: t_s, nonfree_mib, then
                                        # one column of MiB per subsystem (largest first)
      frame.attrs["phases"]             # [{"t_s", "name"}] on the same clock
      frame.attrs["origin"]             # "boot" or "start": what t_s counts from
"""

from __future__ import annotations

import bisect

import pandas as pd

from . import account, pagecache
from .account import MIB, kb_pages
from .recording import Recording

NOT_SUBSYSTEMS = ("t_s", "nonfree_mib")  # the frame's columns that are not subsystems


def build(rec: Recording, origin: str = "boot") -> pd.DataFrame:
    """Resident MiB per subsystem at each sample; t_s counts seconds since boot
    (CLOCK_BOOTTIME, the recording's clock) or, with origin="start", since the first
    sample. Phases go to `.attrs["phases"]` on the same scale."""
    if origin not in ("boot", "start"):
        raise ValueError(f"origin must be 'boot' or 'start', not {origin!r}")
    ps = int(rec.header.get("page_size", 4096))
    t0 = rec.samples[0]["t"] if origin == "start" and rec.samples else 0.0
    page_cache = _PageCacheSums(rec)
    rows = []
    for recorded, state in zip(rec.samples, rec.states()):
        changed = [*recorded["files"], *recorded.get("shmem", ())]
        pages = sample_pages(rec, state, page_cache.update(state, changed), ps)
        nonfree = kb_pages(state["meminfo"], "MemTotal", ps) - kb_pages(state["meminfo"], "MemFree", ps)
        row = {"t_s": state["t"] - t0, "nonfree_mib": nonfree * ps / MIB}
        row.update({sub: p * ps / MIB for sub, p in pages.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    subs = [c for c in frame.columns if c not in NOT_SUBSYSTEMS]
    frame[subs] = frame[subs].fillna(0.0)
    subs = [c for c in subs if (frame[c] != 0).any()]  # e.g. hugetlb on most machines
    # Largest (at its peak) first: the order a stacked plot and a table want.
    subs.sort(key=lambda c: -frame[c].max())
    frame = frame[[*NOT_SUBSYSTEMS, *subs]] if len(frame) else pd.DataFrame(columns=list(NOT_SUBSYSTEMS))
    frame.attrs["origin"] = origin
    frame.attrs["phases"] = [{"t_s": p["t"] - t0, "name": p["name"]} for p in rec.phases]
    return frame


def subsystems(frame: pd.DataFrame) -> list[str]:
    """The frame's subsystem columns (all but t_s and nonfree_mib), in its order."""
    return [c for c in frame.columns if c not in NOT_SUBSYSTEMS]


# Before switch_root, the page cache the tracer did not see file by file is the
# initramfs, unpacked into its ramfs before the recorder started: in a traced boot that
# is mostly the tracer itself (python, bcc, LLVM), so it must not read as "page cache".
INITRAMFS = "initramfs (holds the tracer)"


def for_plot(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as the plots show it: the untraced page cache before the switch_root
    mark gets a band of its own (INITRAMFS). Sums per sample are unchanged."""
    switch = [p["t_s"] for p in frame.attrs.get("phases", []) if p["name"] == "switch_root"]
    if not switch or "page cache" not in frame or INITRAMFS in frame:
        return frame
    out = frame.copy()
    before = out["t_s"] < switch[0]
    out.insert(len(out.columns), INITRAMFS, out["page cache"].where(before, 0.0))
    out["page cache"] = out["page cache"].where(~before, 0.0)
    subs = subsystems(out)
    subs.sort(key=lambda c: -out[c].max())
    out = out[[*NOT_SUBSYSTEMS, *subs]]
    out.attrs = dict(frame.attrs)
    return out


class _PageCacheSums:
    """Page cache per subsystem, kept up to date sample by sample.

    Which subsystem and kind each owner key "dev:ino" is comes from the topologies
    recorded up to the sample's time, as in `account.build` (a later topology knows more:
    switch_root hides the initramfs mounts, so the recorder adds views as it goes). Within
    one such epoch only the keys a sample changed are recomputed.
    """

    def __init__(self, rec: Recording):
        self.rec = rec
        self.every_key = set()
        for s in rec.samples:
            self.every_key.update(s["files"], s.get("shmem", {}))
        self.epoch_times = sorted(t.get("t", 0) for t in rec.topologies)
        self.epoch = None
        self.owners: dict = {}
        self.resident: dict[str, tuple[str, str, int]] = {}  # key → (subsystem, kind, pages)
        self.sums = {"by_subsystem": {}, "shmem": 0, "cache": 0}
        self.devs: set = set()  # superblocks the last sample measured (pagecache.measured)

    def update(self, state: dict, changed: dict) -> dict:
        """{"by_subsystem": {sub: pages}, "shmem": pages, "cache": pages} at this sample."""
        epoch = bisect.bisect_right(self.epoch_times, state["t"] + 1e-6)
        if epoch != self.epoch:
            self.epoch, self.owners = epoch, self._classify(state["t"])
            self.resident, self.sums = {}, {"by_subsystem": {}, "shmem": 0, "cache": 0}
            changed = set(state["files"]) | set(self.owners["baseline"]) | set(state["shmem"])
        counts, devs = pagecache.measured(state)
        if devs != self.devs:  # measured, or not, from this sample on: every key anew
            changed, self.devs = self.every_key | set(self.owners["baseline"]), devs
        for key in changed:
            self._set(key, state["files"].get(key, (0, 0, 0, 0, 0)), counts, devs)
        return self.sums

    def _set(self, key: str, c, counts: dict, devs: set) -> None:
        """The owner's resident pages with the account's arithmetic (pagecache.owner_pages):
        the kernel's count where measured, else the traced counter plus what is left of
        its inventory baseline after deletes the tracer did not see added."""
        resident, peak, _left = pagecache.owner_pages(c, key, self.owners["inv"], counts, devs)
        if resident <= 0 and peak <= 0:
            resident = 0  # the account drops such rows
        sub, kind = self.owners["kinds"].get(key, ("unknown fs", "page-cache"))
        self._add(*self.resident.pop(key, (sub, kind, 0)), sign=-1)
        self.resident[key] = (sub, kind, resident)
        self._add(sub, kind, resident, sign=1)

    def _add(self, sub: str, kind: str, pages: int, sign: int) -> None:
        by = self.sums["by_subsystem"]
        by[sub] = by.get(sub, 0) + sign * pages
        self.sums["shmem" if kind == "shmem" else "cache"] += sign * pages

    def _classify(self, t: float) -> dict:
        """Ask the account which subsystem and kind every key the recording has is, once
        per topology epoch; the baseline under the keys the tracer uses for block devices."""
        topo = pagecache.topology_at(self.rec, t)
        inv = pagecache.inventory(self.rec, pagecache.bdev_dev(self.every_key, topo))
        kinds = pagecache.owners(self.rec, self.every_key | set(inv.baseline), topo)
        return {"kinds": kinds, "baseline": inv.baseline, "inv": inv}


def sample_pages(rec: Recording, state: dict, page_cache: dict, ps: int) -> dict[str, int]:
    """Pages per subsystem at one sample, with `account.build`'s arithmetic: page cache
    by owner (`page_cache`, from _PageCacheSums) plus remainders, slab, vmalloc, kernel
    pages, meminfo's other categories, and the unattributed rest of MemTotal − MemFree."""
    out: dict[str, int] = {}
    for sub, pages in page_cache["by_subsystem"].items():
        if pages:
            out[sub] = out.get(sub, 0) + int(pages)
    for row in account.category_rows(rec, state, ps, page_cache["cache"], page_cache["shmem"]):
        out[row["subsystem"]] = out.get(row["subsystem"], 0) + row["resident_pages"]
    return out


# --- the plot -------------------------------------------------------------------------

# The first colour is the largest subsystem's (the tracer's bands have their own,
# BAND_COLOURS); it is distinctive on purpose, so that a screenshot test can find the plot.
COLOURS = ("#2a6fdb", "#e8871e", "#3aa655", "#d64545", "#8e5cc4", "#8c6d31", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#ad494a", "#637939")
# The storage drivers of an image stack, and the tracer's own memory, keep a band of
# their own even when small: they are what a reader of a live boot's timeline looks for.
ALWAYS_NAMED = (*account.STACK_SUBSYSTEMS, "tracer", INITRAMFS)
OTHER_COLOUR = "#c7c7c7"
UNATTRIBUTED_COLOUR = "#d9d9d9"
# The tracer's own memory in reds, so that it reads as one thing and not as the system's.
BAND_COLOURS = {"tracer": "#8b1a1a", INITRAMFS: "#e89b9b"}


def bands(frame: pd.DataFrame, top: int = 10) -> list[tuple[str, pd.Series, str]]:
    """The stacked bands of a plot of `frame` (as `for_plot` gives it), bottom first:
    (label, MiB per sample, colour). The `top` largest subsystems and those in
    ALWAYS_NAMED are named (at most one per colour), the rest summed as "other (N
    subsystems)" — unless only one is left, which keeps its name — and unattributed
    last, clipped at 0 (a stacked area cannot draw over-attribution). One choice for
    the PNG and the page, so both show the same bands."""
    subs = [s for s in subsystems(frame) if s != "unattributed"]
    named = subs[:top] + [s for s in subs[top:] if s in ALWAYS_NAMED]
    rest = [s for s in subs if s not in named]
    if len(rest) == 1:  # a band called "other (1 subsystem)" would hide its name
        named = named + rest
    palette = iter(COLOURS)  # the tracer's bands have their own colours, the rest in order
    out = []
    for s in named:
        colour = BAND_COLOURS.get(s) or next(palette, None)
        if colour is None:
            break
        out.append((s, frame[s], colour))
    rest = [s for s in subs if s not in {label for label, _y, _c in out}]
    if rest:
        out.append((f"other ({len(rest)} subsystems)", frame[rest].sum(axis=1), OTHER_COLOUR))
    if "unattributed" in frame:
        out.append(("unattributed", frame["unattributed"].clip(lower=0), UNATTRIBUTED_COLOUR))
    return out


def plot(frame: pd.DataFrame, out, fmt: str = "png", top: int = 10, title: str = "",
         width_in: float = 11.0, height_in: float = 5.0, dpi: int = 100) -> None:
    """A stacked area of resident MiB per subsystem over time, the `top` largest named
    and the rest summed as "other", unattributed on top; phases as labelled vertical
    lines. Writes to `out` (a path or a binary file object) in `fmt` (png, svg)."""
    import matplotlib

    matplotlib.use("Agg")  # no display, ever: this runs in tests and over ssh
    import matplotlib.pyplot as plt

    frame = for_plot(frame)
    chosen = bands(frame, top)
    x = frame["t_s"].to_numpy(dtype=float)
    ys = [y.to_numpy(dtype=float) for _label, y, _c in chosen]
    labels, colours = [label for label, _y, _c in chosen], [c for _l, _y, c in chosen]
    if len(x) == 1:  # one sample: draw it as a one-second-wide block, not as nothing
        x = [x[0] - 0.5, x[0] + 0.5]
        ys = [[b[0], b[0]] for b in ys]

    fig, ax = plt.subplots(figsize=(width_in, height_in), dpi=dpi)
    try:
        if len(x):
            ax.stackplot(x, ys, labels=[_plain(lab, legend=True) for lab in labels], colors=colours,
                         linewidth=0)
        ax.set_xlabel("seconds since boot" if frame.attrs.get("origin", "boot") == "boot"
                      else "seconds since the first sample")
        ax.set_ylabel("resident MiB")
        ax.set_ylim(bottom=0)
        if title:
            ax.set_title(_plain(title), parse_math=False)
        phases = frame.attrs.get("phases", [])
        if phases:
            # One collection for all the lines (a recording may hold thousands of marks),
            # and labels only where they do not overlap: one per 12 pixels of width.
            ax.vlines([ph["t_s"] for ph in phases], 0, 1, transform=ax.get_xaxis_transform(),
                      colors="#333333", linestyles="--", linewidth=0.8)
            for ph in _spaced(phases, x, pixels=width_in * dpi):
                ax.text(ph["t_s"], 0.98, " " + _plain(ph["name"])[:40], rotation=90, va="top",
                        ha="right", fontsize=8, transform=ax.get_xaxis_transform(),
                        parse_math=False, color="#333333")
        handles, leg_labels = ax.get_legend_handles_labels()
        # Legend top-down in the order of the stack (largest at the bottom of the plot).
        ax.legend(handles[::-1], leg_labels[::-1], loc="center left", bbox_to_anchor=(1.01, 0.5),
                  fontsize=8, frameon=False)
        ax.margins(x=0)
        fig.tight_layout()
        fig.savefig(out, format=fmt)
    finally:
        plt.close(fig)


def _spaced(phases: list[dict], x, pixels: float, label_px: float = 12.0) -> list[dict]:
    """The phases whose labels fit: in time order, each at least one label's height
    (rotated text) after the last one kept, on the plot's time scale."""
    times = [ph["t_s"] for ph in phases] + list(x)
    span = (max(times) - min(times)) or 1.0
    gap = span * label_px / max(pixels, 1.0)
    kept: list[dict] = []
    for ph in sorted(phases, key=lambda p: p["t_s"]):
        if not kept or ph["t_s"] - kept[-1]["t_s"] >= gap:
            kept.append(ph)
    return kept


def _plain(name, legend: bool = False) -> str:
    """A name from a recording as literal text in matplotlib: no control characters, and
    in legend labels (which cannot turn mathtext off) no bare `$`."""
    from .safe import inert

    return inert(name).replace("$", r"\$") if legend else inert(name)
