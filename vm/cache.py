"""The artefact cache: `${FOOTPRINT_CACHE:-/var/cache/footprint}/vm/<step>-<hash>/`.

A step is built into a temporary directory next to its final place and renamed into place
only when complete, so an interrupted build leaves no half artefact. Long commands run in
their own process group (killed with it on Ctrl-C/SIGTERM) and, when they mount, inside a
private mount namespace (`unshare -m`), so no mount outlives them whatever happens.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from tracer.errors import FootprintError

NEED_FREE_BYTES = 4 << 30  # a cold build needs ~3.5 GiB (tree 1.3 G, rootfs.img, 2 squashfs, ISOs)


def cache_root(cache_dir: Optional[os.PathLike] = None) -> Path:
    """The image cache (`cache_dir`, else $FOOTPRINT_CACHE, else /var/cache/footprint)/vm, created."""
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("FOOTPRINT_CACHE") or "/var/cache/footprint")
    root = base / "vm"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FootprintError(
            f"cannot create cache directory {root} ({err.strerror}): pass --cache-dir or set FOOTPRINT_CACHE to a writable place"
        ) from None
    return root


def digest(*parts: object) -> str:
    """A cache key: the hash of the inputs (functions by their source, paths by their bytes)."""
    h = hashlib.sha256()
    for p in parts:
        if callable(p):
            p = inspect.getsource(p)
        if isinstance(p, Path):
            p = p.read_bytes()
        if isinstance(p, str):
            p = p.encode()
        if not isinstance(p, bytes):
            p = repr(p).encode()
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


def say(msg: str) -> None:
    """A progress line on stderr (stdout is the experiment's table or JSON)."""
    print(f"footprint vm: {msg}", file=sys.stderr, flush=True)


def require_tools(*tools: str) -> None:
    """The one-line error naming the Debian package of the first tool not on PATH."""
    hints = {
        "qemu-system-x86_64": "qemu-system-x86",
        "mmdebstrap": "mmdebstrap",
        "mksquashfs": "squashfs-tools",
        "xorriso": "xorriso",
        "mkfs.ext4": "e2fsprogs",
        "cpio": "cpio",
        "unshare": "util-linux",
    }
    for tool in tools:
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pkg = hints.get(tool, tool)
            raise FootprintError(
                f"{tool} is missing: install it (apt-get install {pkg}, or run scripts/setup)"
            )


def check_space(where: Path, need: int = NEED_FREE_BYTES) -> None:
    """Refuse to start a build that the disk under `where` cannot hold."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise FootprintError(
            f"only {free >> 20} MiB free in {where}, building the guest images needs {need >> 20} MiB: "
            "free space there or pass --cache-dir / set FOOTPRINT_CACHE to a larger disk"
        )


def enospc(where: Path) -> FootprintError:
    """The one-line error for a disk that filled up during a build."""
    return FootprintError(
        f"the disk holding {where} is full: free space there or pass --cache-dir / set FOOTPRINT_CACHE to a larger disk"
    )


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mnt = line.split()[4].replace("\\040", " ")
                if mnt == str(path) or mnt.startswith(prefix):
                    found.append(mnt)
    except OSError:
        pass
    return found


def remove_tree(path: Path) -> None:
    """rm -rf, refusing to descend into anything still mounted under it."""
    if not path.exists() and not path.is_symlink():
        return
    mounted = _mounts_under(path)
    if mounted:
        raise FootprintError(f"{mounted[0]} is still mounted: unmount it (umount -R {path}) and retry")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def sweep_stale(root: Path) -> None:
    """Remove temp dirs of builds whose process died (SIGKILL, power loss)."""
    for tmp in root.glob(".tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            remove_tree(tmp)


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yields a temp dir; on success renames it to `final`, on any failure removes it."""
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    remove_tree(tmp)
    tmp.mkdir(parents=True)
    ok = False
    try:
        yield tmp
        ok = True
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise enospc(final.parent) from None
        raise
    finally:
        if ok:
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # else: a concurrent build finished first; keep its
                    remove_tree(tmp)
                    raise
                remove_tree(tmp)
        else:
            remove_tree(tmp)


def step(root: Path, name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The cached directory of step `name` with input hash `key`, built if missing."""
    final = root / f"{name}-{key}"
    if final.is_dir():
        return final
    sweep_stale(root)
    check_space(root)
    say(f"building {name} ({final})")
    t0 = time.monotonic()
    with building(final) as tmp:
        build(tmp)
    say(f"built {name} in {time.monotonic() - t0:.0f} s")
    _timings(root, name, time.monotonic() - t0)
    return final


def _timings(root: Path, name: str, secs: float) -> None:
    try:
        with open(root / "timings.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {name} {secs:.1f}\n")
    except OSError:
        pass


def run_logged(
    argv: Sequence[str],
    log: Path,
    what: str,
    *,
    passthrough: bool = False,
    env: Optional[dict] = None,
    cwd: Optional[Path] = None,
) -> None:
    """Runs a long build command in its own process group, output to `log`.

    Prints elapsed seconds (and the last output line) to stderr every 15 s, or passes the
    output through when `passthrough` and stderr is a terminal (mksquashfs' progress bar).
    On Ctrl-C/SIGTERM the whole group is terminated before the exception propagates.
    """
    tty = passthrough and sys.stderr.isatty()
    t0 = time.monotonic()
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=None if tty else logf,
            stderr=subprocess.STDOUT if not tty else None,
            start_new_session=True,
            env=env,
            cwd=cwd,
            preexec_fn=_term_with_parent,  # a SIGKILLed footprint still stops the build
        )
        try:
            last = t0
            while True:
                try:
                    rc = proc.wait(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if not tty and now - last >= 15:
                    last = now
                    say(f"  {what}: {now - t0:.0f} s  {_last_line(log)}")
        except BaseException:
            _kill_group(proc)
            raise
    if rc != 0:
        tail = _tail(log, 15)
        for line in tail:
            print(f"  | {line}", file=sys.stderr)
        if any("No space left on device" in line for line in _tail(log, 200)):
            raise enospc(log.parent)
        raise FootprintError(f"{what} failed (exit {rc}): see {log}, fix the cause and rerun")


def _term_with_parent() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    """Terminates the build's process group and waits until none of it is left.

    Waiting for the leader is not enough: mmdebstrap's hooks (dpkg, convert-usrmerge in
    the chroot) outlive it by seconds, still writing into the tree we are about to
    remove. Members are found by process group, and by descent from the leader as seen
    at the time of the signal (a member that called setsid leaves the group)."""
    if proc.poll() is not None and not _group_members(proc.pid):
        return
    members = _descendants(proc.pid) | _group_members(proc.pid)
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        left = _signal_all(proc.pid, members, sig)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            proc.poll()  # reap the leader
            time.sleep(0.1)
            left = {p for p in left if _alive(p)} | _group_members(proc.pid)
        if not left:
            break
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        pass


def _signal_all(pgid: int, members: set[int], sig: int) -> set[int]:
    """Sends sig to the group and to each former member; returns those still alive."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    for pid in members:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return {p for p in members if _alive(p)} | _group_members(pgid)


def _proc_stats() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgrp, state) of every process, from /proc/PID/stat."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out.append((int(d), int(fields[1]), int(fields[2]), fields[0]))
    return out


def _group_members(pgid: int) -> set[int]:
    """Live (not zombie) processes of process group pgid."""
    return {pid for pid, _pp, pg, st in _proc_stats() if pg == pgid and st != "Z"}


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for p, pp, _pg, _st in _proc_stats():
        kids.setdefault(pp, []).append(p)
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _tail(path: Path, n: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = [ln.strip() for ln in data.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-n:]


def _last_line(path: Path) -> str:
    t = _tail(path, 1)
    return t[0][:100] if t else ""
