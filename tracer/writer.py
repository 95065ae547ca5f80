"""The recording's writer: one record per line, flushed as written, the file locked and
the recorder's alone. The format, and its reader, are tracer/recording.py."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time

from .errors import FootprintError

FORMAT = "footprint-recording"
VERSION = 1


class Writer:
    """Appends records; each is flushed (and the header fsynced) as it is written.

    The file is the recorder's alone: opened without following a symbolic link, a
    regular file only, and under an exclusive flock(2) taken before it is truncated and
    held until the end record (across the exec into the sampler: the lock belongs to the
    open file description, whose fd the sampler inherits). A second recorder given the
    same path is refused and the first recording stays intact.
    """

    def __init__(self, path: str, header: dict | None = None):
        """Claim `path` (create it, or open it without truncating, and lock it); with a
        header, also start the recording (see start())."""
        self.path = path
        self.started = False
        self._created = False
        fd = self._open_locked(path)
        self._f = os.fdopen(fd, "w", encoding="utf-8", buffering=1 << 16)
        if header is not None:
            self.start(header)

    def _open_locked(self, path: str) -> int:
        def refuse(problem: str) -> FootprintError:
            return FootprintError(f"recording {path} {problem}: choose another -o")

        try:
            st = os.lstat(path)
        except OSError:
            st = None
        # Checked before opening (opening a FIFO or a device can block or act), and again
        # on the open fd (the path may have been swapped in between).
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise refuse("is a symbolic link, which footprint does not follow")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise refuse("is not a regular file")
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                self._created = True
            except FileExistsError:
                fd = os.open(path, flags)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise refuse("is a symbolic link, which footprint does not follow") from None
            raise FootprintError(f"cannot write recording {path}: {err.strerror}; "
                                 "choose another -o path") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise refuse("is not a regular file")
            if st.st_nlink > 1:  # a hard link planted there: truncating would hit its twin
                raise refuse("has other hard links")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise refuse("is being written by another footprint record") from None
            except OSError as err:  # a file system without locks: say so, do not guess
                raise FootprintError(f"cannot lock recording {path}: {err.strerror}; "
                                     "choose another -o path") from None
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def start(self, header: dict) -> None:
        """Truncate the claimed file and write the header (fsynced); from here on every
        record is appended."""
        fd = self._f.fileno()
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
            os.fchmod(fd, 0o600)
        except OSError as err:
            raise FootprintError(f"cannot write recording {self.path}: {err.strerror}; "
                                 "choose another -o path") from None
        head = {"type": "header", "format": FORMAT, "version": VERSION,
                "kernel": os.uname().release, "hostname": socket.gethostname(),
                "page_size": os.sysconf("SC_PAGE_SIZE"),
                "created": {"boottime": time.clock_gettime(time.CLOCK_BOOTTIME),
                            "realtime": time.time()}}
        head.update(header)
        self.write(head)
        self.started = True  # only once the header is written
        self.sync()

    def abandon(self) -> None:
        """Give up a recording that was never started: a file this writer created is
        removed (one that was there is left as it was: it was never truncated)."""
        if self._f.closed:
            return
        try:
            if self._created and not self.started:
                mine = os.fstat(self._f.fileno())
                try:
                    there = os.lstat(self.path)
                    if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                        os.unlink(self.path)
                except OSError:
                    pass
        finally:
            self._f.close()

    @classmethod
    def append(cls, path: str, fd: int) -> "Writer":
        """Continue a recording through `fd`, inherited from the recorder that started it
        (the sampler after exec): the open file description that holds the lock. `path`
        only names it in messages; it is never reopened (that would write unlocked)."""
        self = cls.__new__(cls)
        self.path = path
        self.started = True
        self._created = False
        try:
            os.set_inheritable(fd, False)  # ours alone: no child of the sampler gets it
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        except OSError as err:
            raise FootprintError(f"cannot append to recording {path}: {err.strerror}") from None
        self._f = os.fdopen(fd, "a", encoding="utf-8", buffering=1 << 16)
        return self

    def detach(self) -> int:
        """Flush and hand the file over without an end record: returns an inheritable
        duplicate of its fd (same open file, same lock) for the process that continues
        it; this writer is closed."""
        self._f.flush()
        self.sync()
        fd = os.dup(self._f.fileno())
        os.set_inheritable(fd, True)
        self._f.close()
        return fd

    def write(self, record: dict) -> None:
        """Appends one record as one line of JSON (ASCII, compact)."""
        try:
            # ensure_ascii: names that are not UTF-8 (surrogate escapes) stay valid JSON text.
            # One write of the line with its newline: a stop signal handled between two
            # writes would glue the last word onto a line without its end.
            self._f.write(json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n")
            self._f.flush()
        except OSError as err:
            raise FootprintError(f"cannot write recording {self.path}: {err.strerror}; "
                                 "free space there or record elsewhere (-o)") from None

    def sync(self) -> None:
        """fsync(2) the recording: what is written survives a crash of the machine."""
        try:
            os.fsync(self._f.fileno())
        except OSError:
            pass

    def close(self, reason: str) -> None:
        """Writes the end record (why the recording ended) and closes the file."""
        if self._f.closed:
            return
        try:
            self.write({"type": "end", "t": time.clock_gettime(time.CLOCK_BOOTTIME), "reason": reason})
            self.sync()
        finally:
            self._f.close()
