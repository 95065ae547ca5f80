"""Kernel uevents (block devices appearing and going) from the netlink socket; raw kernel
events, so no udevd is needed (usable from dracut's cmdline hook on)."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator

from ..errors import FootprintError


_NETLINK_KOBJECT_UEVENT = 15
_KERNEL_GROUP = 1  # raw kernel uevents (no udevd needed: usable from the cmdline hook on)


def parse_uevent(data: bytes) -> dict[str, str] | None:
    """A kernel uevent datagram `action@devpath\\0KEY=VALUE\\0…` → {KEY: VALUE}.
    (lib/kobject_uevent.c). libudev-format datagrams (group 2) are skipped."""
    if data.startswith(b"libudev\0"):
        return None
    parts = data.split(b"\0")
    env: dict[str, str] = {}
    for p in parts[1:]:
        k, sep, v = p.partition(b"=")
        if sep and k:
            env[k.decode(errors="replace")] = os.fsdecode(v)
    if "ACTION" not in env and b"@" in parts[0]:
        a, _, path = parts[0].partition(b"@")
        env["ACTION"], env["DEVPATH"] = a.decode(errors="replace"), os.fsdecode(path)
    return env


class UeventWatcher:
    """Block-device uevents (add/change/remove …), pollable from the recorder's loop.

    `fileno()` for select/poll; `poll()` drains every queued datagram (non-blocking recv
    until EAGAIN) and returns the block events, each stamped with CLOCK_BOOTTIME seconds
    (`time`). Why our own socket: pyroute2 0.9's UeventSocket reads through an internal
    buffer, so select() on its fd saw 1 of 3 events and .get() from a thread saw none.
    The datagrams are parsed with pyroute2's MarshalUevent when available (same format
    as parse_uevent, which is the fallback for a guest without pyroute2).
    `overflows` counts ENOBUFS (the kernel dropped events: the buffer was full).
    """

    def __init__(self, subsystems: tuple[str, ...] = ("block",), rcvbuf: int = 4 << 20,
                 use_pyroute2: bool = True) -> None:
        self.subsystems = subsystems
        self.overflows = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                  _NETLINK_KOBJECT_UEVENT)
        try:
            # SO_RCVBUFFORCE (root) beats rmem_max; boot emits bursts of uevents.
            self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            self.sock.bind((0, _KERNEL_GROUP))
        except OSError as e:
            self.sock.close()
            if e.errno == errno.EPERM:
                raise FootprintError("cannot listen to kernel uevents: run footprint as root") from None
            raise
        self.sock.setblocking(False)
        self._parse = self._pick_parser() if use_pyroute2 else parse_uevent

    @staticmethod
    def _pick_parser():
        try:
            from pyroute2.netlink.uevent import MarshalUevent  # type: ignore
        except Exception:  # pyroute2 absent or moved: our parser reads the same format
            return parse_uevent
        marshal = MarshalUevent()

        def _parse(data: bytes) -> dict[str, str] | None:
            if data.startswith(b"libudev\0"):
                return None
            try:
                msg = next(iter(marshal.parse(data)))
            except Exception:
                return parse_uevent(data)
            env = {k: v for k, v in msg.items() if k != "header" and isinstance(v, str)}
            return env or parse_uevent(data)

        return _parse

    def fileno(self) -> int:
        """The netlink socket, for select() in the recorder's loop."""
        return self.sock.fileno()

    def _drain(self) -> Iterator[bytes]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overflows += 1
                    continue
                raise
            yield data

    def poll(self) -> list[dict[str, object]]:
        """Every event queued so far (never blocks)."""
        out: list[dict[str, object]] = []
        for data in self._drain():
            t = time.clock_gettime(time.CLOCK_BOOTTIME)
            env = self._parse(data)
            if not env or (self.subsystems and env.get("SUBSYSTEM") not in self.subsystems):
                continue
            ev: dict[str, object] = {"time": t}
            ev.update(env)
            if "MAJOR" in env and "MINOR" in env:
                ev["dev"] = f"{env['MAJOR']}:{env['MINOR']}"
            out.append(ev)
        return out

    def close(self) -> None:
        """Stop listening (the socket is closed)."""
        self.sock.close()

    def __enter__(self) -> "UeventWatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
