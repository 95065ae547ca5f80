"""Overlay file systems: which superblocks are an overlay's upper and lower layers, and
how a file found on a layer is spelled through the overlay.

overlayfs keeps no page cache of its own for regular files: reads and mmaps go to the
real inode on the upper or a lower layer (fs/overlayfs/file.c, ovl_open_realfile, since
4.19), so the filemap tracepoints and the kernel baseline see the layer's (s_dev, inode).
What the user sees is the overlay's path. Both are tied together here from mountinfo
alone (so a recording read on another machine names the layers the same way):
ovl_show_options (fs/overlayfs/super.c, unchanged in form from 4.x to 6.18) prints
`lowerdir=A:B,upperdir=U,workdir=W` in the super options, with ':' inside a lower path
escaped as `\\:` and ',' as `\\,` (seq_show_option_colon/seq_show_option). Paths are as the
mounter gave them; a relative one cannot be placed and is left out.
"""

from __future__ import annotations

import os
import re

from .devices import devstr

__all__ = ["overlays", "layer_role", "UserPaths"]


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` not preceded by a backslash; unescape what remains."""
    return re.split(r"(?<!\\)" + re.escape(sep), text)


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def parse_options(super_options: str) -> dict[str, list[str]]:
    """{"lower": [dirs top first], "upper": [dir] or [], "work": [...]} from an overlay's
    super options. `lowerdir+`/`datadir+` (6.7+ new mount API) count as lower layers."""
    out: dict[str, list[str]] = {"lower": [], "upper": [], "work": []}
    for opt in _split(super_options, ","):
        key, eq, val = opt.partition("=")
        if not eq:
            continue
        if key == "lowerdir":
            # "::" marks the data-only lower layers (6.5+): still lower layers.
            out["lower"] += [_unescape(p) for p in _split(val, ":") if p]
        elif key in ("lowerdir+", "datadir+"):
            out["lower"].append(_unescape(val))
        elif key == "upperdir":
            out["upper"] = [_unescape(val)]
        elif key == "workdir":
            out["work"] = [_unescape(val)]
    return out


def _within(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top + "/")


def _place(mounts: list[dict[str, object]], d: str) -> dict[str, object] | None:
    """The superblock a directory `d` lies on, and where in it: {dev, fstype, dir,
    sb_path} from the mount with the longest mountpoint above `d` (the last one listed
    when over-mounted: that one is visible)."""
    if not d.startswith("/"):
        return None
    d = os.path.normpath(d)
    best = None
    for m in mounts:
        if m.get("gone") or not _within(d, m["mountpoint"]):
            continue
        if best is None or len(m["mountpoint"]) >= len(best["mountpoint"]):
            best = m
    if best is None:
        return None
    rel = d[len(best["mountpoint"]):].lstrip("/") if best["mountpoint"] != "/" else d.lstrip("/")
    sb_path = os.path.normpath(os.path.join(best["root"], rel))
    return {"dev": best["dev"], "fstype": best["fstype"], "dir": d, "sb_path": sb_path,
            "mountpoint": best["mountpoint"]}


def overlays(mounts: list[dict[str, object]]) -> list[dict[str, object]]:
    """Every current overlay mount with its layers: [{dev, mountpoint, upper: place|None,
    lowers: [place, ...] (top first)}], a place being {dev, fstype, dir, sb_path,
    mountpoint} (see _place). A layer that cannot be placed is left out."""
    out = []
    for m in mounts:
        if m["fstype"] != "overlay" or m.get("gone"):
            continue
        o = parse_options(m.get("super_options", ""))
        others = [x for x in mounts if x is not m]
        upper = _place(others, o["upper"][0]) if o["upper"] else None
        lowers = [p for p in (_place(others, d) for d in o["lower"]) if p]
        out.append({"dev": m["dev"], "mountpoint": m["mountpoint"], "upper": upper, "lowers": lowers})
    return out


def layer_role(mounts: list[dict[str, object]], dev: str) -> str | None:
    """"upper layer of overlay /", "lower layer of overlay /" (or "lower layer 2 of …"
    when there are several) for a superblock that is a layer of a mounted overlay, else
    None. Several roles are joined with "; "."""
    roles = []
    for o in overlays(mounts):
        if o["upper"] and o["upper"]["dev"] == dev:
            roles.append(f"upper layer of overlay {o['mountpoint']}")
        for i, lo in enumerate(o["lowers"]):
            if lo["dev"] == dev:
                n = f" {i + 1}" if len(o["lowers"]) > 1 else ""
                roles.append(f"lower layer{n} of overlay {o['mountpoint']}")
    return "; ".join(dict.fromkeys(roles)) or None


class UserPaths:
    """Spell a path found on an overlay's layer as the user sees it, through the overlay.

    `spell(path, dev, ino)`: `path` as seen from here (a mountpoint of superblock `dev`
    plus the path inside it). If it lies under a layer directory of a mounted overlay,
    the overlay's spelling is returned — when `verify` and the overlay path is reachable,
    only if it shows the same inode (a lower file copied up or whited out is hidden by
    the overlay: it keeps its layer path). Otherwise `path` unchanged.
    """

    def __init__(self, mounts: list[dict[str, object]], verify: bool = True, root: str = ""):
        self.verify, self.root = verify, root
        # dev → [(sb_path of the layer, overlay mountpoint, dirs of the layers above it)]
        self.layers: dict[str, list[tuple]] = {}
        for o in overlays(mounts):
            places = ([o["upper"]] if o["upper"] else []) + o["lowers"]
            for k, place in enumerate(places):
                self.layers.setdefault(place["dev"], []).append(
                    (place["sb_path"], o["mountpoint"], [p["dir"] for p in places[:k]]))
        self.mounts: dict[str, list[dict[str, object]]] = {}
        for m in mounts:
            if not m.get("gone") and m["dev"] in self.layers:
                self.mounts.setdefault(m["dev"], []).append(m)

    def __bool__(self) -> bool:
        return bool(self.layers)

    def _sb_path(self, path: str, dev: str) -> str | None:
        for m in sorted(self.mounts.get(dev, []), key=lambda m: -len(m["mountpoint"])):
            if _within(path, m["mountpoint"]):
                rel = path[len(m["mountpoint"]):].lstrip("/") if m["mountpoint"] != "/" else path.lstrip("/")
                return os.path.normpath(os.path.join(m["root"], rel))
        return None

    def spell(self, path: str | None, dev: object, ino: int) -> str | None:
        """The path through the overlay for a file of superblock `dev` found at `path`,
        or `path` itself (see the class). Relies on overlayfs keeping no page cache of
        its own for regular files: the pages are on the layer's inode (since 4.19's
        stacked file operations; before, a copy-up opened the upper inode directly)."""
        if not path or not self.layers:
            return path
        d = devstr(dev)
        if d not in self.layers:
            return path
        sb = self._sb_path(path, d)
        if sb is None:
            return path
        for layer_dir, ovl_mp, above in self.layers[d]:
            if not _within(sb, layer_dir):
                continue
            rel = sb[len(layer_dir):].lstrip("/") if layer_dir != "/" else sb.lstrip("/")
            user = os.path.join(ovl_mp, rel) if rel else ovl_mp
            if self.verify and not self._visible(user, rel, above, ino):
                continue
            return user
        return path

    def _exists(self, p: str) -> bool:
        try:
            os.lstat(self.root + p)
            return True
        except OSError:
            return False

    def _visible(self, user: str, rel: str, above: list[str], ino: int) -> bool:
        """Whether the overlay shows this layer's file at `user`: the path exists there
        and no layer above holds an entry at the same place (an upper copy-up or
        whiteout hides the lower file; overlayfs then reports the copy under the lower
        inode number, so the number alone cannot tell). A lower file must also show its
        own inode number (an opaque directory above hides it)."""
        if not self._exists(user) or any(self._exists(os.path.join(a, rel)) for a in above):
            return False
        if not above:
            return True  # the upper layer (or a lone lower) is what the overlay shows
        try:
            st = os.lstat(self.root + user)
        except OSError:
            return False
        # Without xino the overlay reports the real inode number; with xino it carries
        # the layer's fsid in the high bits (ovl_map_dev_ino): compare the low 32.
        return st.st_ino == ino or (st.st_ino & 0xFFFFFFFF) == (ino & 0xFFFFFFFF)
