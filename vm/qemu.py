"""Booting a guest under QEMU and talking to its agent.

    with Guest(spec, memory=2048, timeout=900, log=Path("serial.log")) as g:
        g.wait_ready(300)
        rc, out, err = g.run("free -m", timeout=30)
        g.get_file("/proc/meminfo", "meminfo.txt")
        g.shutdown()

Direct kernel boot, serial console (ttyS0) to a log file, `-nic none`, `-no-reboot`, the
agent on a virtio-serial port (a unix socket on the host). KVM only if a bounded probe
shows it boots a kernel, else TCG (the verdict is cached). A hard time limit kills QEMU.
Leaving the `with` block (normally, by exception, Ctrl-C, or SIGTERM turned into an
exception by `terminate_as_interrupt`) kills QEMU by its pid and removes the temp dir;
QEMU also gets PR_SET_PDEATHSIG so a SIGKILLed footprint takes it along.

Long because a guest's whole life is one object: accelerator choice, QEMU's argv, the
agent's protocol and the teardown share its state (pid, work dir, socket, time limit).
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

from tracer.errors import FootprintError

from . import cache as C
from .code import code_disk
from .images import BootSpec

QEMU = "qemu-system-x86_64"
AGENT_PORT = "org.footprint.agent"


class GuestError(FootprintError):
    """The guest did not do what was asked (boot, answer, command): the message names the
    serial log to read."""


# ------------------------------------------------------------------ accelerator probe

def _set_pdeathsig() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def pick_accel(kernel: Path, cache_dir: Optional[os.PathLike] = None, probe_timeout: float = 12.0) -> str:
    """'kvm' if a KVM guest gets through early kernel boot within `probe_timeout`, else
    'tcg'. FOOTPRINT_ACCEL=kvm|tcg overrides. The verdict is cached per host kernel,
    QEMU binary and guest kernel."""
    forced = os.environ.get("FOOTPRINT_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    qemu = shutil.which(QEMU) or QEMU
    key = hashlib.sha256(
        f"{os.uname().release}|{os.stat(qemu).st_mtime_ns}|{kernel.stat().st_size}|{kernel}".encode()
    ).hexdigest()[:16]
    verdict_file = C.cache_root(cache_dir) / f"accel-{key}"
    try:
        v = verdict_file.read_text().strip()
        if v in ("kvm", "tcg"):
            return v
    except OSError:
        pass
    verdict = "kvm" if _probe_kvm(kernel, probe_timeout) else "tcg"
    try:
        verdict_file.write_text(verdict + "\n")
    except OSError:
        pass
    C.say(f"accelerator: {verdict} (probed, cached in {verdict_file})")
    return verdict


def _probe_kvm(kernel: Path, timeout: float) -> bool:
    # No root fs: a kernel that boots panics with "VFS: Unable to mount root fs" and,
    # with panic=-1 and -no-reboot, QEMU exits. Here KVM hangs after "Probing EDD".
    with tempfile.TemporaryDirectory(prefix="footprint-kvmprobe-") as tmp:
        log = Path(tmp) / "serial.log"
        argv = [QEMU, "-accel", "kvm", "-m", "256", "-smp", "1", "-nodefaults", "-display", "none",
                "-no-reboot", "-nic", "none", "-serial", f"file:{log}", "-kernel", str(kernel),
                "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"]
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, preexec_fn=_set_pdeathsig)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    text = log.read_text(errors="replace")
                except OSError:
                    text = ""
                if "Kernel panic" in text or "VFS:" in text or "Freeing unused kernel" in text:
                    return True
                if p.poll() is not None:
                    return "Linux version" in text and "Kernel panic" in text
                time.sleep(0.2)
            return False
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()


# ------------------------------------------------------------------ signals

@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM (and SIGHUP) raise KeyboardInterrupt, so `with Guest` and the
    builders unwind and clean up exactly as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------ the guest

def _sweep_workdirs() -> None:
    """Removes temp dirs of guests whose footprint process died without cleaning up
    (SIGKILL; QEMU itself died with it through PR_SET_PDEATHSIG)."""
    for d in Path(tempfile.gettempdir()).glob("footprint-guest-*-*"):
        try:
            pid = int(d.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


Cmd = Union[str, Sequence[str]]


class Guest:
    """A booted guest. Use as a context manager; the API:

    wait_ready(timeout)            -> float: seconds from QEMU start until the agent answered
    wait_system(timeout)           -> str: `systemctl is-system-running --wait` state
    run(cmd, timeout, check=False) -> (rc, stdout bytes, stderr bytes); str cmd runs in sh -c
    get_file(guest_path, host_path=None) -> bytes
    put_file(guest_path, data, mode=0o644)
    shutdown(timeout)              poweroff and wait for QEMU to exit (kills it if it will not)
    serial_text()                  the console log so far
    """

    def __init__(
        self,
        spec: BootSpec,
        *,
        memory: int = 2048,
        smp: int = 2,
        timeout: float = 1200.0,
        log: Optional[os.PathLike] = None,
        code: Union[bool, os.PathLike] = True,
        initrd_append: Sequence[os.PathLike] = (),
        extra_append: str = "",
        extra_args: Sequence[str] = (),
        accel: Optional[str] = None,
        cache_dir: Optional[os.PathLike] = None,
        network: bool = False,
    ):
        self.spec = spec
        self.memory = memory
        self.smp = smp
        self.timeout = timeout
        self.log_path = Path(log) if log else None
        self.code = code
        self.initrd_append = [Path(p) for p in initrd_append]
        self.extra_append = extra_append
        self.extra_args = list(extra_args)
        self.accel = accel
        self.cache_dir = cache_dir
        self.network = network
        self.proc: Optional[subprocess.Popen] = None
        self.pid: Optional[int] = None
        self.workdir: Optional[Path] = None
        self.started_at = 0.0
        self.ready_seconds: Optional[float] = None
        self._sock: Optional[socket.socket] = None
        self._replies: dict = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._reader: Optional[threading.Thread] = None
        self._timer: Optional[threading.Timer] = None
        self._timed_out = False
        self._closed = False
        self.accel_used: Optional[str] = None
        self.command_line: list[str] = []

    # -- lifecycle

    def __enter__(self) -> "Guest":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def command(self) -> list[str]:
        """QEMU's argv for this guest: accelerator, kernel, initrd (+ appended archives),
        command line, disks, the agent's virtio-serial socket, serial log."""
        assert self.workdir is not None
        spec = self.spec
        accel = self.accel or pick_accel(spec.kernel, self.cache_dir)
        self.accel_used = accel
        accel_args = ["-accel", "kvm"] if accel == "kvm" else ["-accel", "tcg,thread=multi"]
        initrd = spec.initrd
        extra_cpios = [*getattr(spec, "initrd_append", []), *self.initrd_append]
        if extra_cpios:
            initrd = self.workdir / "initrd.img"
            with open(initrd, "wb") as out:
                with open(spec.initrd, "rb") as f:
                    shutil.copyfileobj(f, out)
                out.write(b"\0" * ((-out.tell()) % 512))
                for extra in extra_cpios:
                    with open(extra, "rb") as f:
                        shutil.copyfileobj(f, out)
                    out.write(b"\0" * ((-out.tell()) % 512))
        append = spec.append + (" " + self.extra_append if self.extra_append else "")
        argv = [QEMU, *accel_args, "-m", str(self.memory), "-smp", str(self.smp),
                "-nodefaults", "-display", "none", "-no-reboot", "-vga", "none",
                "-kernel", str(spec.kernel), "-initrd", str(initrd), "-append", append,
                "-serial", f"file:{self.serial_log}",
                *spec.qemu_args]
        if self.code:
            disk = Path(self.code) if not isinstance(self.code, bool) else code_disk(self.cache_dir)
            argv += ["-drive", f"file={disk},format=raw,if=none,id=fpcode,readonly=on",
                     "-device", "virtio-blk-pci,drive=fpcode,serial=fpcode,addr=0x11"]
        argv += ["-device", "virtio-serial-pci",
                 "-chardev", f"socket,path={self.sock_path},server=on,wait=off,id=fpagent",
                 "-device", f"virtserialport,chardev=fpagent,name={AGENT_PORT}"]
        argv += ["-nic", "user,model=virtio-net-pci"] if self.network else ["-nic", "none"]
        argv += ["-monitor", "none", *self.extra_args]
        return argv

    @property
    def serial_log(self) -> Path:
        return self.log_path or (self.workdir / "serial.log")  # type: ignore[operator]

    @property
    def sock_path(self) -> Path:
        return self.workdir / "agent.sock"  # type: ignore[operator]

    def start(self) -> None:
        """Starts QEMU in a fresh work dir (after sweeping those of dead runs), with the
        hard time limit armed; returns once QEMU runs (not once the guest is up)."""
        C.require_tools(QEMU)
        _sweep_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"footprint-guest-{os.getpid()}-"))
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_bytes(b"")
        argv = self.command_line = self.command()
        (self.workdir / "qemu.argv").write_text(json.dumps(argv))
        env = dict(os.environ, TMPDIR=str(self.workdir))  # snapshot=on's temp overlay
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "qemu.stderr", "wb"),
                                     env=env, start_new_session=True, preexec_fn=_set_pdeathsig)
        self.pid = self.proc.pid
        self._timer = threading.Timer(self.timeout, self._time_limit)
        self._timer.daemon = True
        self._timer.start()
        deadline = time.monotonic() + 30
        while True:
            self._check_alive("starting QEMU")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.sock_path))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise GuestError(f"QEMU did not open its agent socket: see {self.workdir}/qemu.stderr")
                time.sleep(0.1)
        self._sock = s
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _time_limit(self) -> None:
        self._timed_out = True
        self._kill()

    def _kill(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            p.terminate()
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Kills QEMU (by its pid) if still running, removes the temp dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer:
            self._timer.cancel()
        if self.proc is not None:
            self._kill()
            if self.proc.stderr:
                self.proc.stderr.close()
        if self._sock:
            try:
                self._sock.close()
            except OSError:
                pass
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def alive(self) -> bool:
        """Whether QEMU is still running."""
        return self.proc is not None and self.proc.poll() is None

    def _check_alive(self, doing: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            why = f"hit the time limit of {self.timeout:.0f} s" if self._timed_out else f"exited ({self.proc.returncode})"
            raise GuestError(f"guest {self.spec.name} {why} while {doing}: {self._hint()}")

    def _hint(self) -> str:
        tail = ""
        try:
            lines = [ln for ln in self.serial_text().splitlines() if ln.strip()]
            if lines:
                tail = f' (last console line: "{lines[-1].strip()[:120]}")'
        except OSError:
            pass
        where = self.log_path or "the serial log (pass --keep-logs DIR to keep it)"
        return f"see {where}{tail}"

    def serial_text(self) -> str:
        """The serial console's log so far ("" before it exists)."""
        try:
            return self.serial_log.read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    # -- agent protocol

    def _read_loop(self) -> None:
        buf = b""
        sock = self._sock
        while sock is not None:
            try:
                chunk = sock.recv(1 << 20)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                with self._cond:
                    self._replies[msg.get("id")] = msg
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _send(self, req: dict) -> int:
        rid = next(self._ids)
        req = dict(req, id=rid)
        data = (json.dumps(req) + "\n").encode()
        assert self._sock is not None
        self._sock.sendall(data)
        return rid

    def _wait_reply(self, rid: int, timeout: float, doing: str) -> Optional[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while rid not in self._replies:
                self._check_alive(doing)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))
            return self._replies.pop(rid)

    def request(self, req: dict, timeout: float, doing: str) -> dict:
        """Sends one request to the agent and returns its reply; GuestError naming
        `doing` when none comes within `timeout` or QEMU died."""
        rid = self._send(req)
        msg = self._wait_reply(rid, timeout, doing)
        if msg is None:
            raise GuestError(f"guest {self.spec.name}: no answer within {timeout:.0f} s while {doing}: {self._hint()}")
        return msg

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Waits until the agent answers; returns seconds since QEMU started."""
        deadline = time.monotonic() + timeout
        pending: set[int] = set()
        while True:
            self._check_alive("booting")
            rid = self._send({"op": "ping"})
            pending.add(rid)
            with self._cond:
                end = min(deadline, time.monotonic() + 2)
                while time.monotonic() < end:
                    hit = pending & set(self._replies)
                    if hit:
                        for r in hit:
                            self._replies.pop(r, None)
                        self.ready_seconds = time.monotonic() - self.started_at
                        return self.ready_seconds
                    self._cond.wait(0.25)
                    self._check_alive("booting")
            if time.monotonic() >= deadline:
                raise GuestError(f"guest {self.spec.name} not ready after {timeout:.0f} s: {self._hint()}")

    def wait_system(self, timeout: float = 600.0) -> str:
        """`systemctl is-system-running --wait` in the guest; returns the state
        ('running', 'degraded', ...)."""
        msg = self.request({"op": "wait_system", "timeout": timeout}, timeout + 30, "waiting for multi-user")
        return base64.b64decode(msg.get("stdout_b64", "")).decode(errors="replace").strip()

    def run(self, cmd: Cmd, timeout: float = 120.0, check: bool = False,
            stdin: Optional[bytes] = None, env: Optional[dict] = None) -> tuple[int, bytes, bytes]:
        """Runs `cmd` in the guest (a str goes to /bin/sh -c) as root; returns (rc, out, err)."""
        req: dict = {"op": "exec", "timeout": timeout}
        if isinstance(cmd, str):
            req["sh"] = cmd
        else:
            req["argv"] = list(cmd)
        if stdin is not None:
            req["stdin_b64"] = base64.b64encode(stdin).decode()
        if env:
            req["env"] = env
        msg = self.request(req, timeout + 30, f"running {cmd!r}")
        rc = msg.get("rc", 1)
        out = base64.b64decode(msg.get("stdout_b64", ""))
        err = base64.b64decode(msg.get("stderr_b64", ""))
        if msg.get("error") and not err:
            err = msg["error"].encode()
        if check and rc != 0:
            raise GuestError(f"guest {self.spec.name}: {cmd!r} failed (rc {rc}): {err.decode(errors='replace').strip()[-200:]}")
        return rc, out, err

    def get_file(self, guest_path: str, host_path: Optional[os.PathLike] = None, timeout: float = 120.0) -> bytes:
        """The bytes of `guest_path` (also written to `host_path` if given)."""
        msg = self.request({"op": "read", "path": guest_path}, timeout, f"reading {guest_path}")
        if msg.get("rc") != 0:
            raise GuestError(f"guest {self.spec.name}: cannot read {guest_path}: {msg.get('error')}")
        data = base64.b64decode(msg.get("data_b64", ""))
        if host_path is not None:
            Path(host_path).write_bytes(data)
        return data

    def put_file(self, guest_path: str, data: bytes, mode: int = 0o644, timeout: float = 120.0) -> None:
        """Writes `data` to `guest_path` in the guest (through the agent), with `mode`."""
        msg = self.request({"op": "write", "path": guest_path, "mode": mode,
                            "data_b64": base64.b64encode(data).decode()}, timeout, f"writing {guest_path}")
        if msg.get("rc") != 0:
            raise GuestError(f"guest {self.spec.name}: cannot write {guest_path}: {msg.get('error')}")

    def shutdown(self, timeout: float = 120.0) -> None:
        """Powers the guest off and waits for QEMU to exit; kills it after `timeout`."""
        if not self.alive():
            return
        try:
            self._send({"op": "poweroff"})
        except OSError:
            pass
        try:
            assert self.proc is not None
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()


def guest(name: str, cache_dir: Optional[os.PathLike] = None, **kw) -> Guest:
    """Guest of variant `name` (built if missing), to use as `with guest("live") as g:`."""
    from .images import prepare

    return Guest(prepare(name, cache_dir), cache_dir=cache_dir, **kw)
