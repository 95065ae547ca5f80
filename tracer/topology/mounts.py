"""Mounts, from /proc/<pid>/mountinfo (Documentation/filesystems/proc.rst, 3.5)."""

from __future__ import annotations

import os
import re

from ..errors import FootprintError


_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field_: bytes) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo (fs/proc_namespace.c,
    mangle()); other bytes pass through raw, so decode with the file-system encoding
    (surrogateescape) to round-trip any name."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field_))


def _unescape_options(field_: bytes) -> str:
    """As _unescape, but a ',' or ':' that came escaped (\\054, \\072: seq_show_option
    escapes ',' in every option value, and overlayfs ':' inside a lowerdir path since 6.5)
    stays escaped with a backslash: the options are split on the bare ones afterwards
    (topology/overlay.py), and a layer's path may hold either."""
    def one(m: "re.Match[bytes]") -> bytes:
        c = bytes([int(m.group(1), 8)])
        return b"\\" + c if c in (b",", b":") else c

    return os.fsdecode(_OCTAL.sub(one, field_))


def parse_mountinfo(data: bytes) -> list[dict[str, object]]:
    """Parse /proc/<pid>/mountinfo (Documentation/filesystems/proc.rst, 3.5):
    `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`.

    Fields are split on single spaces (names have their spaces escaped), and the optional
    fields end at the first lone "-" after field 6 — a mountpoint named "-" would be
    "/…/-", never a lone "-".
    """
    mounts: list[dict[str, object]] = []
    for line in data.split(b"\n"):
        if not line:
            continue
        f = line.split(b" ")
        if len(f) < 10:
            continue
        try:
            sep = f.index(b"-", 6)
        except ValueError:
            continue
        tail = f[sep + 1:]
        if len(tail) < 2:
            continue
        mounts.append({
            "id": int(f[0]),
            "parent": int(f[1]),
            "dev": f[2].decode(),
            "root": _unescape(f[3]),
            "mountpoint": _unescape(f[4]),
            "options": f[5].decode(errors="replace"),
            "optional": [x.decode(errors="replace") for x in f[6:sep]],
            "fstype": _unescape(tail[0]),
            "source": _unescape(tail[1]),
            "super_options": _unescape_options(tail[2]) if len(tail) > 2 else "",
        })
    return mounts


def read_mounts(proc: str = "/proc") -> list[dict[str, object]]:
    """The system's mounts: init's (/proc/1/mountinfo), not the caller's — the early-boot
    recorder runs in a mount namespace and chroot of its own, which would hide them.
    Falls back to /proc/self/mountinfo where init's is not readable (not root). After
    switch_root the initramfs mounts disappear from it — see `merge`."""
    for who in ("1", "self"):
        try:
            with open(os.path.join(proc, who, "mountinfo"), "rb") as f:
                return parse_mountinfo(f.read())
        except OSError:
            continue
    raise FootprintError(f"cannot read {proc}/self/mountinfo: mount /proc")


def system_root() -> str:
    """Prefix under which the system's paths are reachable from here: "" normally,
    "/proc/1/root" in a chroot of our own (the early-boot recorder)."""
    try:
        mine, init = os.stat("/"), os.stat("/proc/1/root")
    except OSError:
        return ""
    return "" if (mine.st_dev, mine.st_ino) == (init.st_dev, init.st_ino) else "/proc/1/root"
