"""Phase marks: lines "BOOTTIME NAME" appended to a marks file while a recording runs.

Writers: `footprint mark NAME` (append() below) and the dracut hooks (shell `echo >>`).
Reader: the recorder, which holds a shared flock on the file for as long as it records
(hold()) and reads only what was appended after it attached, so a mark never lands in
the wrong recording. `footprint mark` appends only while someone holds that lock; the
shell hooks do not check (a shared lock never blocks an append).
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import stat
import time
from collections.abc import Iterable

from .errors import FootprintError

MAX_NAME = 64


def valid_name(name: str) -> bool:
    """Printable (no control, format or line-breaking characters), not blank, ≤ 64 chars."""
    return 0 < len(name) <= MAX_NAME and name.isprintable() and not name.isspace()


def append(path: str, name: str) -> None:
    """Append "BOOTTIME NAME" to the running recording's marks file, or FootprintError.

    Refuses when no recording is running: no marks file, or nobody holds its lock."""
    if not valid_name(name):
        raise FootprintError(f"a mark name is 1 to {MAX_NAME} printable characters, no newline "
                             "or control character: choose another name")
    not_running = (f"no recording is running (no marks file at {path}): "
                   "start `footprint record` first")
    try:
        # no O_CREAT: a mark without a recorder has no file to go to; O_NONBLOCK: a FIFO
        # planted there does not hang us
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FootprintError(not_running) from None
    except OSError as err:
        raise _error(path, err) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FootprintError(f"{path} is not a regular file: remove it, then start "
                                 "`footprint record`")
        try:
            # succeeds only if no recorder holds its shared lock. (Two marks racing
            # without a recorder may both pass this; the stray line is never read:
            # the next recorder reads from where the file ends when it attaches.)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # a recorder holds it: append
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise FootprintError(not_running)
        line = f"{time.clock_gettime(time.CLOCK_BOOTTIME):.6f} {name}\n".encode()
        try:
            os.write(fd, line)  # one write with O_APPEND: concurrent marks do not interleave
        except OSError as err:
            raise _error(path, err) from None
    finally:
        os.close(fd)


def hold(path: str) -> tuple[int, int]:
    """What the recorder calls when it attaches, before its first sample: returns
    (fd, position). Creates the marks file if absent (mode 0600; its directory 0755 if
    absent), never through a symlink, and takes a shared flock on it, which tells
    `footprint mark` that a recording is running. Marks are read from `position` (the
    size at this moment), so those of an earlier recording are not replayed.

    Keep fd open while recording: closing it releases the lock. It is not inheritable;
    to keep the lock across the exec into the sampler, os.set_inheritable(fd, True) and
    pass fd and position along. Read new lines with read(fd, position).
    Raises OSError (e.g. PermissionError) for the recorder to report."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "the marks file is not a regular file", path)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd, os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise


def read(fd: int, position: int) -> tuple[list[str], int]:
    """The complete lines appended since `position`, and the position after them (a
    line still being written is left for the next call). A file truncated below
    `position` is read again from its start."""
    if os.fstat(fd).st_size < position:
        position = 0
    data = b""
    while True:
        chunk = os.pread(fd, 1 << 16, position + len(data))
        if not chunk:
            break
        data += chunk
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8", "replace").splitlines(), position + end


def parse(lines: Iterable[str | bytes]) -> list[tuple[float, str]]:
    """(t, name) of each well-formed "BOOTTIME NAME" line, in order. Dropped: a time that
    is not a finite number ≥ 0 (float() accepts "nan" and "inf"), a name that is not
    valid_name() (blank, too long, control characters). Drop-in for the recorder's
    poll_marks: `for t, name in parse(lines): write({"type": "phase", "t": t, "name": name})`."""
    out = []
    for line in lines:
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        t, _, name = line.rstrip("\r\n").partition(" ")
        name = name.strip()
        try:
            t = float(t)
        except ValueError:
            continue
        if math.isfinite(t) and t >= 0 and valid_name(name):
            out.append((t, name))
    return out


def _error(path: str, err: OSError) -> FootprintError:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FootprintError(f"cannot write {path}: {err.strerror}: run `footprint mark` as "
                              "root (the marks file is the recorder's, mode 0600)")
    if err.errno == errno.ELOOP:
        return FootprintError(f"{path} is a symlink: remove it, then start `footprint record`")
    return FootprintError(f"cannot write {path}: {err.strerror}: check the --marks path")
