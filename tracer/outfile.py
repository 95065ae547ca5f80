"""Write one-shot output files (HTML, PNG, Parquet) safely, as root, into any directory.

Each file is written to a fresh temporary file next to its target (O_EXCL, mode 0600),
fsynced, then renamed onto the target. The rename replaces whatever directory entry is
there: a symlink or hard link planted at the output path is replaced, never written
through, and a reader never sees a half-written file. Several files asked for by one
command are all written to temporaries first and renamed only when every one succeeded,
so a bad second path leaves no fresh first file behind.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import FootprintError


def write(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically (mode 0600), or a one-line FootprintError."""
    write_all([(path, data)])


def write_all(outputs: list[tuple[str, bytes]]) -> None:
    """Write every (path, data) or none of them (see the module's docstring)."""
    paths = [os.path.abspath(p) for p, _ in outputs]
    if len(set(paths)) < len(paths):
        raise FootprintError("two outputs name the same file: give each its own path")
    for (path, _), target in zip(outputs, paths):
        _check_target(path, target)
    temps: list[str] = []
    try:
        for (path, data), target in zip(outputs, paths):
            temps.append(_write_temp(path, target, data))
        for (path, _), target in zip(outputs, paths):
            try:
                os.replace(temps[0], target)
            except OSError as err:
                raise _error(path, err) from None
            temps.pop(0)  # renamed: no longer ours to remove
    finally:
        for tmp in temps:  # not renamed: a failure leaves no temporary behind
            os.unlink(tmp)


def _check_target(path: str, target: str) -> None:
    """Refuse a target the rename would not treat as a file: a directory, a FIFO, a device."""
    if path.endswith(os.sep):
        raise FootprintError(f"cannot write {path}: it names a directory: give a file path")
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as err:
        raise _error(path, err) from None
    if stat.S_ISDIR(st.st_mode):
        raise FootprintError(f"cannot write {path}: it is a directory: give a file path")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise FootprintError(f"cannot write {path}: it exists and is not a regular file: "
                             "choose another path")


def _write_temp(path: str, target: str, data: bytes) -> str:
    """A temporary file in the target's own directory (so the rename is atomic) holding
    all of `data` on disk; its name."""
    directory, name = os.path.split(target)
    # Named by pid, created exclusively: no tempfile (which imports shutil, bz2, lzma and
    # random: ~0.1 s of the early-boot recorder's start under TCG, where it pins).
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # one left by a killed process that had this pid
        import tempfile

        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        except OSError as err:
            raise _error(path, err) from None
    except OSError as err:
        raise _error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        os.unlink(tmp)
        raise _error(path, err) from None
    return tmp


def _error(path: str, err: OSError) -> FootprintError:
    directory = os.path.dirname(os.path.abspath(path))
    if err.errno == errno.ENOENT:
        fix = f"directory {directory} does not exist: create it or choose another path"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"{err.strerror}: choose a directory you can write to"
    elif err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"{err.strerror}: free space in {directory} or choose another path"
    else:
        fix = f"{err.strerror}: choose another path"
    return FootprintError(f"cannot write {path}: {fix}")
