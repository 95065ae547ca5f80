"""The storage chain as a picture (SVG inside the HTML report): each layer a box as tall as
the MiB it holds, bottom (left) to top (right), the layers that cache the same data in
orange, the dm snapshot's COW after the chain. Names are escaped (tracer/safe.py).

Use:  html_lines = figure(rec, acc, plain=(rec_plain, acc_plain) or None)
"""

from __future__ import annotations

from . import chain as chain_mod
from .account import Account
from .recording import Recording
from .safe import html_text as esc

FS_FILL, DEV_FILL, SAME_FILL, COW_FILL = "#cfe0fa", "#e9e9e9", "#f6c28b", "#d9efd9"

BOX_W = {"fs": 128, "dev": 78}
GAP, MAX_H, MIN_H = 22, 150, 26


def figure(rec: Recording, acc: Account, plain: tuple[Recording, Account] | None) -> list[str]:
    """The HTML of the picture: this boot's chain (tracer/chain.py), the plain boot's
    beside it when given, a caption; or a line saying there is no topology to draw."""
    live = chain_mod.chain(rec, acc)
    other = chain_mod.chain(*plain) if plain else None
    if live is None:
        return ['<p class="muted">No storage topology in this recording: no chain to draw.</p>']
    rows = [("this boot", live)] + ([("plain", other)] if other else [])
    biggest = max([b["mib"] for _n, c in rows for b in c["boxes"] + c["cow"]] + [1.0])
    svg, y = [], 10
    width = 0
    for label, c in rows:
        part, w, h = _row(label, c, y, biggest)
        svg += part
        width, y = max(width, w), y + h + 18
    caption = ("Each box is a layer of the root file system's storage, bottom (left) to top (right), "
               "its height the MiB it holds in memory at this moment (block devices: their own cache; "
               "+ the driver's kernel memory where it has some).")
    if live["same_data"]:
        caption += (f" Orange: the same files cached at {len(live['same_data'])} layers, "
                    f"{live['same_data_mib']:.1f} MiB in all.")
    return ([f'<figure id="chain"><svg class="chain" viewBox="0 0 {width + 10} {y}" '
             f'role="img" aria-label="storage chain">']
            + svg + ["</svg>", f'<figcaption class="muted">{esc(caption)}</figcaption></figure>'])


def _row(label: str, c: dict, top: int, biggest: float) -> tuple[list[str], int, int]:
    """One boot's chain, left to right, boxes on a common baseline; its COW after it."""
    tallest = max([MIN_H + MAX_H * b["mib"] / biggest for b in c["boxes"] + c["cow"]] + [MIN_H])
    base = top + 30 + tallest
    out = [f'<text class="head" x="0" y="{top + 14}">{esc(label)}</text>']
    x = 0
    boxes = [(b, False) for b in c["boxes"]] + [(b, True) for b in c["cow"]]
    same = []
    for i, (b, is_cow) in enumerate(boxes):
        if is_cow and not boxes[i - 1][1]:
            x += 20
            out.append(f'<text x="{x}" y="{base - MIN_H - 8}">the snapshot\'s COW (writes):</text>')
        w = BOX_W[b["kind"]]
        h = MIN_H + MAX_H * b["mib"] / biggest
        fill = (SAME_FILL if b["same_data"] else COW_FILL if is_cow
                else FS_FILL if b["kind"] == "fs" else DEV_FILL)
        out.append(f'<rect class="layer" x="{x}" y="{base - h:.1f}" width="{w}" height="{h:.1f}" '
                   f'fill="{fill}" stroke="#555" rx="3"><title>{esc(b["name"])}: {b["mib"]:.1f} MiB '
                   f'({esc(b["what"])})</title></rect>')
        out.append(f'<text class="mib" x="{x + 5}" y="{base - 7}">{b["mib"]:.1f} MiB</text>')
        out.append(f'<text x="{x}" y="{base + 15}">{esc(_short(b["name"], w))}</text>')
        out.append(f'<text x="{x}" y="{base + 29}" class="muted">{esc(_short(_base(b["what"]), w))}</text>')
        if b.get("kernel_mib", 0) >= 0.05:
            out.append(f'<text x="{x}" y="{base + 43}">+{b["kernel_mib"]:.1f} MiB {esc(b.get("driver", ""))}</text>')
        if b["same_data"]:
            same.append((x, w))
        nxt = boxes[i + 1] if i + 1 < len(boxes) else None
        if nxt is not None and nxt[1] == is_cow:
            out.append(f'<text x="{x + w + 4}" y="{base - MIN_H / 2 + 4}">→</text>')
        x += w + GAP
    if len(same) > 1:  # a bracket over the layers that cache the same data
        x0, x1 = same[0][0], same[-1][0] + same[-1][1]
        y = top + 22
        out.append(f'<path d="M{x0} {y + 8} V{y} H{x1} V{y + 8}" fill="none" stroke="#c96a12" stroke-width="2"/>')
        out.append(f'<text x="{x0 + 4}" y="{y - 3}" fill="#c96a12">the same data, cached at {len(same)} layers: '
                   f'{c["same_data_mib"]:.1f} MiB</text>')
    return out, x, base + 50 - top


def _short(text: str, width_px: int) -> str:
    n = max(4, int(width_px / 6.6))
    return text if len(text) <= n else text[: n - 1] + "…"


def _base(path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1] or str(path)
