"""newc cpio archives, the initramfs's format: writing one (the code the lab appends to
an initramfs at boot) and reading one back (what an initramfs holds, and how big it is
unpacked)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Optional


def write(tree: Path, out: Path, prefix: str = "opt/footprint") -> None:
    """Writes `tree` as a newc archive under `prefix` (directories included), padded to
    512 bytes: appended to an initramfs, the kernel unpacks it over what came before
    (init/initramfs.c takes concatenated archives; a later member replaces an earlier one)."""
    entries: list[tuple[str, Optional[Path], int]] = []
    parts = prefix.split("/")
    for i in range(len(parts)):
        entries.append(("/".join(parts[: i + 1]), None, stat.S_IFDIR | 0o755))
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(tree)
        for d in dirnames:
            entries.append((f"{prefix}/{rel_dir / d}".replace("/./", "/"), None, stat.S_IFDIR | 0o755))
        for fn in sorted(filenames):
            src = Path(dirpath) / fn
            mode = stat.S_IFREG | (0o755 if os.access(src, os.X_OK) else 0o644)
            entries.append((f"{prefix}/{rel_dir / fn}".replace("/./", "/"), src, mode))
    ino = 1000
    with open(out, "wb") as f:
        for name, src, mode in entries:
            data = src.read_bytes() if src else b""
            ino += 1
            entry(f, name, mode, data, ino, 2 if src is None else 1)
        entry(f, "TRAILER!!!", 0, b"", 0, 1)
        pad = (-f.tell()) % 512
        f.write(b"\0" * pad)


def entry(f, name: str, mode: int, data: bytes, ino: int, nlink: int) -> None:
    """Writes one newc member (header, name, data, each padded to 4 bytes) to `f`."""
    nb = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(nb), 0]
    hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
    f.write(hdr + nb)
    f.write(b"\0" * ((-(len(hdr) + len(nb))) % 4))
    f.write(data)
    f.write(b"\0" * ((-len(data)) % 4))


def members(data: bytes, pos: int = 0):
    """(name, file data, end offset) of the newc members of the archive at `pos`."""
    while data[pos:pos + 6] in (b"070701", b"070702"):
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = f[6], f[11]
        name_end = pos + 110 + namesize
        name = data[pos + 110: name_end - 1].decode(errors="replace")
        start = name_end + (-name_end) % 4
        end = start + size
        yield name, f[1], data[start:end], end + (-end) % 4
        pos = end + (-end) % 4
        if name == "TRAILER!!!":
            return


def initramfs_facts(path: Path, want: Optional[str] = None) -> dict:
    """Sizes of an initramfs: compressed (the file), unpacked (the sum of its members'
    data, what the initramfs file system holds), member count; and `want`'s content."""
    import gzip
    import lzma

    raw = path.read_bytes()
    pos, parts = 0, []
    while pos < len(raw):
        while pos < len(raw) and raw[pos] == 0:
            pos += 1
        if pos >= len(raw):
            break
        if raw[pos:pos + 6] in (b"070701", b"070702"):  # an uncompressed (early) archive
            end = pos
            for _n, _m, _d, end in members(raw, pos):
                pass
            parts.append(raw[pos:end])
            pos = end
            continue
        head = raw[pos:pos + 4]
        if head[:2] == b"\x1f\x8b":
            parts.append(gzip.decompress(raw[pos:]))
        elif head == b"\x28\xb5\x2f\xfd":
            parts.append(subprocess.run(["zstd", "-dc"], input=raw[pos:], capture_output=True).stdout)
        elif head[:3] == b"\xfd7z":
            parts.append(lzma.decompress(raw[pos:]))
        break
    unpacked, count, content = 0, 0, None
    for part in parts:
        p = 0
        while p < len(part):
            while p < len(part) and part[p] == 0:
                p += 1
            if part[p:p + 6] not in (b"070701", b"070702"):
                break
            for name, mode, data, p in members(part, p):
                if name == "TRAILER!!!":
                    continue
                count += 1
                if mode & 0o170000 == 0o100000:
                    unpacked += len(data)
                if want and name.lstrip("./") == want:
                    content = data
    return {"compressed_bytes": len(raw), "unpacked_bytes": unpacked, "members": count,
            "file": content}
