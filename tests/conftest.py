"""Shared fixtures. Keep each fixture small and documented; others add theirs below."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOOTPRINT = [sys.executable, "-c", "from tracer.cli import main; main()"]


def pytest_configure(config):
    """Ctrl-C reaches a foreground program with SIGINT at its default. A test run started
    in the background (`cmd &` without job control, nohup) has SIGINT ignored, and every
    child inherits that: the recorders the tests interrupt would never see it (the SIGINT
    tests hung in such runs). Children of this run get the default, as from a terminal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """footprint's wheel, built once per session from a clean copy of the tracked files,
    as a release would be (tests of the packaging and of the README route use it)."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "footprint"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)],
                   check=True, capture_output=True)
    return next(out.glob("footprint-*.whl"))


def cachestat_pages(path) -> int:
    """Pages of the file's mapping per cachestat(2) (6.5+; counts every folio, also those
    squashfs decompresses past the end of a file), called here directly: an independent
    view, no tracer code. Skips the test where the kernel has no cachestat."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    rng = (ctypes.c_uint64 * 2)(0, 0)  # offset 0, length 0: the whole file
    cs = (ctypes.c_uint64 * 5)()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(451, fd, rng, cs, 0) != 0:  # __NR_cachestat, one number on every arch
            pytest.skip(f"no cachestat(2): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
    return cs[0]


# --------------------------------------------------------------------- guest lab (vm/)

def qemu_skip_reason() -> str | None:
    """Why guest tests cannot run here (None: they can and must)."""
    if os.geteuid() != 0:
        return "needs root (builds images with mmdebstrap --mode=root)"
    if shutil.which("qemu-system-x86_64") is None:
        return "no qemu-system-x86_64"
    return None


def wait_in_guest(g, cmd: str, timeout: float, every: float = 1.0) -> None:
    """Runs `cmd` in the guest every `every` seconds until it exits 0; AssertionError
    after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc, _, _ = g.run(cmd, timeout=60)
        if rc == 0:
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for: {cmd}")


@pytest.fixture(scope="session")
def lab_cache() -> Path:
    """The image cache the guest tests share with `footprint experiment` (a cold build takes
    ~6 min, then seconds). FOOTPRINT_CACHE overrides, as for the command."""
    return Path(os.environ.get("FOOTPRINT_CACHE") or "/var/cache/footprint")


@pytest.fixture(scope="session")
def lab_logs():
    """A private directory for serial logs (not /tmp/pytest-of-root: shared by sessions)."""
    d = Path(tempfile.mkdtemp(prefix="fp-lab-logs-", dir="/var/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_experiment(lab_cache, args: list, out: Path) -> dict:
    """`footprint experiment --json ARGS --cache-dir CACHE --out OUT` as a subprocess,
    exactly as a user runs it (skipped where QEMU cannot run): its one JSON object. Its
    stderr's tail goes to the test's."""
    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    p = subprocess.run([*FOOTPRINT, "experiment", "--json", *args, "--cache-dir", str(lab_cache),
                        "--out", str(out)],
                       cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=3600)
    sys.stderr.write(p.stderr[-4000:])
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


@pytest.fixture(scope="session")
def experiment_json(lab_cache, lab_logs) -> dict:
    """`footprint experiment --untraced --json` (plain and live), run ONCE per session as a
    subprocess exactly as a user runs it; tests read the boots from its one JSON object.
    Untraced: the lab's own figures, independent of the recorder (traced boots have their
    own tests). The serial logs are in lab_logs/<name>.serial.log."""
    return run_experiment(lab_cache, ["--untraced", "--variants", "plain,live", "--keep-logs", str(lab_logs)],
                          lab_logs / "out")
