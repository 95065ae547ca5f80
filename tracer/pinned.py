"""The account kept in the kernel with no process left: pinned in bpffs.

`footprint record --pin` (libbpf loader) pins the programs' links, the programs and the
maps under PIN_DIR: they stay attached and keep counting when the recorder exits (at the
end of early boot, say), at the cost of the maps alone (no Python process).
`footprint report --pinned` reads them: a copy of the recording that pinned them (its
header, topology, baseline, stacks) with one more sample of the pinned maps, reported
like any recording. `footprint unpin` removes them: the programs detach and the maps are
freed once no process holds them.

Relies on: bpffs (4.4+); bpf_link pinning (raw_tp/tracing links 5.7+, the perf-event
links libbpf makes for tracepoints and kprobes where the kernel has them, 5.15+: 6.1
and 6.18 do); BPF_OBJ_GET (4.4+).
"""

from __future__ import annotations

import json
import os
import re

from . import outfile
from .errors import FootprintError
from .safe import inert

BPFFS = "/sys/fs/bpf"
PIN_DIR = f"{BPFFS}/footprint"
META = "/run/footprint/pinned.json"
SNAPSHOT = "/run/footprint/pinned-snapshot.jsonl"
MAX_META = 64 << 10  # bytes: META names a path and a few dozen maps
_NAME = re.compile(r"[a-z0-9_]{1,64}")  # map and program names: never a path
SLAB_MODES = ("off", "kmalloc", "all")


def _bpffs_mounted() -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1:3] == [BPFFS, "bpf"] for line in f)
    except OSError:
        return False


def check_free() -> None:
    """Refuse (one line) when an account is pinned already: one at a time."""
    if os.path.exists(PIN_DIR) or os.path.exists(META):
        raise FootprintError(f"an account is already pinned in {PIN_DIR}: read it with "
                             "`footprint report --pinned`, remove it with `footprint unpin`")


def pin(program, recording_path: str, maps: list[str]) -> None:
    """Pin the loaded, attached `program` (programs.LibbpfProgram) and the maps named, and
    note which recording they continue in META."""
    if getattr(program, "obj", None) is None:
        raise FootprintError("--pin needs the libbpf loader (bcc attaches through perf-event "
                             "fds, which cannot be pinned): record with --loader libbpf")
    check_free()
    if not _bpffs_mounted():
        os.makedirs(BPFFS, exist_ok=True)
        import subprocess  # here: the early-boot recorder imports this module

        done = subprocess.run(["mount", "-t", "bpf", "bpf", BPFFS], capture_output=True)
        if done.returncode != 0 or not _bpffs_mounted():
            raise FootprintError(f"bpffs is not mounted at {BPFFS} and could not be: "
                                 f"mount -t bpf bpf {BPFFS}")
    os.mkdir(PIN_DIR, 0o700)
    try:
        program.obj.pin(PIN_DIR, maps)
        os.makedirs(os.path.dirname(META), exist_ok=True)
        outfile.write(META, json.dumps({
            "recording": os.path.abspath(recording_path), "pin_dir": PIN_DIR, "maps": maps,
            "programs": sorted(program.obj.link_of), "slab": program.plan.slab}).encode())
    except BaseException:
        unpin(quiet=True)
        raise


def meta() -> dict:
    """What `pin` noted in META (the recording the pinned account continues, its maps),
    validated: one line naming the fix when it is missing or corrupt."""
    try:
        with open(META, "rb") as f:
            raw = f.read(MAX_META + 1)
        if len(raw) > MAX_META:
            raise ValueError(f"over {MAX_META} bytes")
        meta = json.loads(raw)
    except FileNotFoundError:
        raise FootprintError("no account is pinned: record with `footprint record --pin` "
                             "(libbpf loader)") from None
    except (OSError, ValueError, RecursionError) as err:
        raise FootprintError(f"{META} is unreadable ({inert(str(err))[:100]}): remove the pinned "
                             "account with `footprint unpin`") from None
    names = lambda v: isinstance(v, list) and all(  # noqa: E731
        isinstance(x, str) and _NAME.fullmatch(x) for x in v)
    if not (isinstance(meta, dict) and isinstance(meta.get("recording"), str)
            and names(meta.get("maps")) and {"files", "stats"} <= set(meta["maps"])
            and names(meta.get("programs", [])) and meta.get("slab", "kmalloc") in SLAB_MODES):
        raise FootprintError(f"{META} is corrupt: remove the pinned account with `footprint unpin`")
    return meta


def unpin(quiet: bool = False) -> str:
    """Remove the pinned account (its pins and META); returns a line saying what went."""
    removed = 0
    try:
        names = os.listdir(PIN_DIR)
    except FileNotFoundError:
        names = None
    for name in names or []:
        try:
            os.unlink(os.path.join(PIN_DIR, name))
            removed += 1
        except OSError:
            pass
    if names is not None:
        try:
            os.rmdir(PIN_DIR)
        except OSError as err:
            if not quiet:
                raise FootprintError(f"cannot remove {PIN_DIR} ({err.strerror})") from None
    for path in (META, SNAPSHOT):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if names is None and not quiet:
        return "no account was pinned"
    return f"unpinned: {removed} pins removed from {PIN_DIR} (the programs detach)"


def maps_memlock() -> dict[str, int]:
    """The pinned maps' memory, each as the kernel charges it (`memlock` in
    /proc/PID/fdinfo of a map fd: bpf_map_memory_usage since 6.4, the memlock
    estimate of the map's size before; 4.10+): {map name: bytes}. What the pinned
    account costs with no process left. One line naming the fix when nothing is pinned."""
    from .bpfmaps import obj_get

    out = {}
    for name in meta()["maps"]:
        try:
            fd = obj_get(f"{PIN_DIR}/map-{name}")
        except OSError as err:
            raise FootprintError(f"the pinned account in {PIN_DIR} is incomplete ({err.strerror}): "
                                 "remove it with `footprint unpin`") from None
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("memlock:"):
                        out[name] = int(line.split()[1])
        finally:
            os.close(fd)
    return out
