"""A thin ctypes layer over the system's libbpf.so.1: open a CO-RE object, size its maps,
set its read-only knobs, choose its programs, load, attach.

Written against the libbpf 1.x API and conventions (Debian 12 ships 1.1.2): functions
returning a pointer return NULL and set errno, functions returning int return -errno.
libbpf relocates the object's field offsets against the running kernel's BTF
(/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF, 5.4+) at load time. Nothing here
compiles anything, and nothing imports bcc.
"""

from __future__ import annotations

import ctypes
import os

from .errors import FootprintError

SONAME = "libbpf.so.1"
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_lib = None
_log: list[str] = []  # what libbpf said during the current open/load/attach
_raised: list[BaseException] = []  # raised inside _on_print, for _call to raise again
# va_list is a pointer on x86-64: vsnprintf can take libbpf's (see _on_print)
_VA_LIST_IS_POINTER = os.uname().machine == "x86_64"


def _on_print(level, fmt, args):
    """libbpf's warnings and notes (the verifier log among them) go here instead of
    stderr; its debug chatter (hundreds of CO-RE lines) is skipped. An exception raised
    in here — a signal handler's, such as the recorder's stop, runs wherever Python is —
    would be printed and lost by ctypes, and the stop with it (a recorder interrupted
    while libbpf logged ran on): it is kept for _call to raise once libbpf returns."""
    try:
        if level > 1:  # LIBBPF_DEBUG
            return 0
        text = fmt or b""
        if _VA_LIST_IS_POINTER:
            buf = ctypes.create_string_buffer(4096)
            _libc.vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(args))
            text = buf.value
        _log.extend(text.decode("utf-8", "replace").splitlines())
        del _log[:-400]  # the end of a verifier log says why
    except BaseException as err:  # noqa: BLE001 - raised again by _call
        _raised.append(err)
    return 0


def _call(fn, *args):
    """fn(*args), a libbpf function that may log; what was raised inside the log
    callback meanwhile is raised here, after libbpf returned (its state is whole)."""
    ret = fn(*args)
    _raise_kept()
    return ret


def raise_after_call(frame, err: BaseException) -> bool:
    """For a signal handler given `frame`: True, with `err` kept for _call to raise once
    libbpf returns, when that frame runs inside libbpf's log callback (or below it),
    where a raise would be printed and dropped by ctypes; False where raising is safe.
    Python runs a handler at the next bytecode, which is the callback's first while the
    main thread is inside libbpf."""
    for _ in range(16):
        if frame is None:
            return False
        if frame.f_code is _on_print.__code__:
            _raised.append(err)
            return True
        frame = frame.f_back
    return False


def _raise_kept() -> None:
    if _raised:
        err = _raised[0]
        _raised.clear()
        raise err


_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_print_cb = _PRINT_FN(_on_print)  # kept referenced: libbpf holds the pointer


def available() -> bool:
    """Whether libbpf.so.1 can be loaded here."""
    try:
        lib()
    except FootprintError:
        return False
    return True


def lib() -> ctypes.CDLL:
    """libbpf.so.1 with the prototypes used here, loaded once."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        so = ctypes.CDLL(SONAME, use_errno=True)  # the 1.x ABI by its soname, no ldconfig
    except OSError as err:
        raise FootprintError(f"libbpf is not installed ({err}): apt-get install libbpf1, "
                             "or record with --loader bcc") from None
    P, I, U32, B = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_bool
    for name, res, args in (
            ("bpf_object__open_file", P, [ctypes.c_char_p, P]),
            ("bpf_object__load", I, [P]),
            ("bpf_object__close", None, [P]),
            ("bpf_object__find_map_by_name", P, [P, ctypes.c_char_p]),
            ("bpf_object__find_program_by_name", P, [P, ctypes.c_char_p]),
            ("bpf_object__next_program", P, [P, P]),
            ("bpf_map__set_max_entries", I, [P, U32]),
            ("bpf_map__set_value_size", I, [P, U32]),
            ("bpf_map__initial_value", P, [P, ctypes.POINTER(ctypes.c_size_t)]),
            ("bpf_map__set_initial_value", I, [P, ctypes.c_char_p, ctypes.c_size_t]),
            ("bpf_map__fd", I, [P]),
            ("bpf_program__name", ctypes.c_char_p, [P]),
            ("bpf_program__set_autoload", I, [P, B]),
            ("bpf_program__autoload", B, [P]),
            ("bpf_program__fd", I, [P]),
            ("bpf_program__attach", P, [P]),
            ("bpf_link__fd", I, [P]),
            ("bpf_link__pin", I, [P, ctypes.c_char_p]),
            ("bpf_map__pin", I, [P, ctypes.c_char_p]),
            ("bpf_program__pin", I, [P, ctypes.c_char_p]),
            ("bpf_link__destroy", I, [P]),
            ("libbpf_strerror", I, [I, ctypes.c_char_p, ctypes.c_size_t]),
            ("libbpf_set_print", P, [_PRINT_FN])):
        fn = getattr(so, name)
        fn.restype, fn.argtypes = res, args
    so.libbpf_set_print(_print_cb)
    _lib = so
    return so


def strerror(err: int) -> str:
    """libbpf's text for error `err` (negative or positive errno, or libbpf's own)."""
    buf = ctypes.create_string_buffer(256)
    lib().libbpf_strerror(abs(err), buf, len(buf))
    return buf.value.decode(errors="replace") or os.strerror(abs(err))


def why() -> str:
    """The line of libbpf's log that says why the last step failed: the verifier's last
    words before the log ends, else libbpf's last error line."""
    lines = [ln.strip() for ln in _log if ln.strip()]
    if "-- END PROG LOAD LOG --" in lines:
        end = len(lines) - 1 - lines[::-1].index("-- END PROG LOAD LOG --")
        verifier = [ln for ln in lines[:end] if not ln.startswith(("processed ", "-- BEGIN"))]
        if verifier:
            return verifier[-1][:300]
    errors = [ln for ln in lines if ("failed" in ln or "error" in ln.lower())
              and "failed to load object" not in ln]  # that one says only that it failed
    return (errors or lines or ["no message"])[-1][:300]


class Object:
    """One opened, then loaded, BPF object file (struct bpf_object)."""

    def __init__(self, path: str):
        _log.clear()
        self.so = lib()
        self.links: list[int] = []
        self.link_of: dict[str, int] = {}  # program name → its link (for pinning)
        self.ptr = _call(self.so.bpf_object__open_file, os.fsencode(path), None)
        if not self.ptr:
            err = ctypes.get_errno()
            raise FootprintError(f"BPF object {path} does not open ({strerror(err)}: {why()}): "
                                 "rebuild it with scripts/build-bpf")

    def _map(self, name: str):
        m = self.so.bpf_object__find_map_by_name(self.ptr, name.encode())
        if not m:
            raise KeyError(name)
        return m

    def _prog(self, name: str):
        p = self.so.bpf_object__find_program_by_name(self.ptr, name.encode())
        if not p:
            raise KeyError(name)
        return p

    def programs(self) -> list[str]:
        """The names of the object's programs, in its order."""
        names, p = [], None
        while True:
            p = self.so.bpf_object__next_program(self.ptr, p)
            if not p:
                return names
            names.append(self.so.bpf_program__name(p).decode())

    # -- before load ---------------------------------------------------------------
    def set_max_entries(self, name: str, entries: int) -> None:
        """Size map `name` before load (bpf_map__set_max_entries)."""
        self._check(self.so.bpf_map__set_max_entries(self._map(name), entries), f"sizing map {name}")

    def set_value_size(self, name: str, size: int) -> None:
        """Set map `name`'s value size before load (bpf_map__set_value_size)."""
        self._check(self.so.bpf_map__set_value_size(self._map(name), size), f"sizing map {name}")

    def set_rodata(self, data: bytes) -> None:
        """Replace .rodata (the object's const volatile globals) whole; its size must be
        the object's, so a stale object is refused rather than misread."""
        m = self._map(".rodata")
        size = ctypes.c_size_t()
        if not self.so.bpf_map__initial_value(m, ctypes.byref(size)) or size.value != len(data):
            raise FootprintError(f"the BPF object's .rodata is {size.value} bytes, not {len(data)}: "
                                 "it is out of date, rebuild it with scripts/build-bpf")
        self._check(self.so.bpf_map__set_initial_value(m, data, len(data)), "setting .rodata")

    def set_autoload(self, prog: str, on: bool) -> None:
        """Load program `prog` with the object, or leave it out (bpf_program__set_autoload)."""
        self._check(self.so.bpf_program__set_autoload(self._prog(prog), on), f"choosing {prog}")

    # -- load, attach --------------------------------------------------------------
    def load(self) -> None:
        """Load the object into the kernel (CO-RE relocation against the kernel's BTF, then
        the verifier); FootprintError with libbpf's reason when refused."""
        _log.clear()
        err = _call(self.so.bpf_object__load, self.ptr)
        if err:
            raise FootprintError(f"BPF object failed to load ({strerror(err)}: {why()})")

    def attach(self, prog: str) -> int:
        """Attach one loaded program where its SEC() says; returns the link's fd, which
        alone keeps it attached (a perf-event link holds its perf event)."""
        _log.clear()
        link = self.so.bpf_program__attach(self._prog(prog))
        if not link:
            err = ctypes.get_errno()
            _raise_kept()
            raise FootprintError(f"cannot attach {prog} ({strerror(err)}: {why()})")
        self.links.append(link)  # before a kept exception: close() detaches it
        self.link_of[prog] = link
        _raise_kept()
        return self.so.bpf_link__fd(link)

    def pin(self, directory: str, maps: list[str]) -> None:
        """Pin every attached program's link (it stays attached with no process: bpf_link
        pinning, raw_tp/tracing links 5.7+, perf-event links 5.15+), the program itself
        (its recursion-miss counter: lost events) and the maps named, in `directory` on
        bpffs: link-NAME, prog-NAME, map-NAME."""
        for prog, link in self.link_of.items():
            self._check(_call(self.so.bpf_link__pin, link, os.fsencode(f"{directory}/link-{prog}")),
                        f"pinning the link of {prog}", fix="")
            self._check(_call(self.so.bpf_program__pin, self._prog(prog), os.fsencode(f"{directory}/prog-{prog}")),
                        f"pinning {prog}", fix="")
        for name in maps:
            self._check(_call(self.so.bpf_map__pin, self._map(name), os.fsencode(f"{directory}/map-{name}")),
                        f"pinning map {name}", fix="")

    def autoloaded(self, prog: str) -> bool:
        """Whether program `prog` is set to load with the object."""
        return bool(self.so.bpf_program__autoload(self._prog(prog)))

    def map_fd(self, name: str) -> int:
        """The fd of map `name` once loaded; KeyError if it has none."""
        fd = self.so.bpf_map__fd(self._map(name))
        if fd < 0:
            raise KeyError(name)
        return fd

    def prog_fd(self, prog: str) -> int:
        """The fd of program `prog` once loaded."""
        return self.so.bpf_program__fd(self._prog(prog))

    def close(self) -> None:
        """Destroy the links (detach) and close the object (its maps and programs)."""
        for link in self.links:
            self.so.bpf_link__destroy(link)
        self.links = []
        if self.ptr:
            ptr, self.ptr = self.ptr, None
            _call(self.so.bpf_object__close, ptr)

    def _check(self, ret: int, what: str,
               fix: str = ": rebuild the object with scripts/build-bpf") -> None:
        if ret:
            raise FootprintError(f"libbpf refused {what} ({strerror(ret)}){fix}")
