"""The guest laboratory (vm/) and `footprint experiment`.

Unit tests run anywhere. The `qemu` tests build (or reuse from the cache) the images and
boot them under QEMU; they skip only without root or without qemu-system-x86_64.
    .venv/bin/python -m pytest tests/test_vm.py -m qemu      # ~10 min cold, ~4 min cached
"""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import FOOTPRINT, REPO, qemu_skip_reason
from tracer.errors import FootprintError
from tracer.procfs import parse_meminfo
from vm import cache as C
from vm import code, experiment, images

needs_qemu = pytest.mark.skipif(qemu_skip_reason() is not None, reason=qemu_skip_reason() or "")


# ------------------------------------------------------------------ unit

def test_variant_names():
    assert images.variant_names("plain,live") == ["plain", "live"]
    assert images.variant_names("all") == list(images.VARIANTS)
    with pytest.raises(FootprintError) as e:
        images.variant_names("plain,livecd")
    msg = str(e.value)
    assert "\n" not in msg and "livecd" in msg and "live-overlayfs" in msg


def test_parse_free_and_meminfo():
    free = ("               total        used        free      shared  buff/cache   available\n"
            "Mem:            1966         183        1827           5          64        1783\n"
            "Swap:              0           0           0\n")
    f = experiment.parse_free(free)
    assert f["used"] == 183 and f["buff/cache"] == 64 and f["available"] == 1783
    m = parse_meminfo("MemTotal:        2013560 kB\nMemFree:         1871148 kB\nHugePages_Total:       0\n")
    assert m == {"MemTotal": 2013560, "MemFree": 1871148, "HugePages_Total": 0}


def test_table_has_2014_figures_and_definitions():
    boot = {"name": "plain", "delivery_mib": 1400.0, "rootfs_mib": 1300.0, "used_mib": 180,
            "buff_cache_mib": 60, "nonfree_mib": 130.0, "memory_mib": 2048, "boot_seconds": 40,
            "kernel": "6.1", "accel": "tcg"}
    text = experiment.format_table({"boots": [boot], "seed": experiment.SEED})
    assert "LiveCD (2014)" in text and "626" in text and "192" in text and "565" in text
    assert "MemTotal - MemAvailable" in text and "MemTotal - MemFree" in text


def test_code_cpio_is_newc_with_opt_footprint(tmp_path):
    cpio = code.code_cpio(cache_dir=tmp_path)
    names = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(cpio, "rb"),
                           capture_output=True, text=True, check=True).stdout.split()
    assert "opt/footprint/run.py" in names
    assert "opt/footprint/vm/guest/fp_agent.py" in names
    assert "opt/footprint/tracer/cli.py" in names
    assert any(n.startswith("opt/footprint/tracer/bpf/") for n in names)
    assert cpio.stat().st_size % 512 == 0
    # cached per content: the second call is the same file, in well under a second
    t = time.monotonic()
    assert code.code_cpio(cache_dir=tmp_path) == cpio and time.monotonic() - t < 1


def test_step_is_atomic(tmp_path):
    def boom(out: Path):
        (out / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        C.step(tmp_path, "demo", "k1", boom)
    assert list(tmp_path.iterdir()) == []  # no half artefact, no temp dir
    d = C.step(tmp_path, "demo", "k1", lambda out: (out / "done").write_text("y"))
    assert (d / "done").read_text() == "y" and d.name == "demo-k1"


def test_cli_unknown_variant_one_line():
    p = subprocess.run([*FOOTPRINT, "experiment", "--variants", "plain,nonsense"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("footprint: unknown variant 'nonsense'")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_cli_missing_qemu_one_line(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    p = subprocess.run([*FOOTPRINT, "experiment", "--cache-dir", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "qemu-system-x86_64 is missing" in p.stderr and "apt-get install" in p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a tiny tmpfs in a private mount namespace)")
def test_cli_full_cache_disk_one_line():
    d = tempfile.mkdtemp(prefix="fp-full-", dir="/var/tmp")
    try:
        script = 'mount -t tmpfs -o size=64m tmpfs "$1" && shift && exec "$@"'
        p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", d,
                            *FOOTPRINT, "experiment", "--cache-dir", d],
                           cwd=REPO, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, FOOTPRINT_CACHE=d))
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and "MiB free" in p.stderr and "--cache-dir" in p.stderr
    finally:
        os.rmdir(d)


# ------------------------------------------------------------------ guests

def _loops() -> set[str]:
    return set(subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines())


def _mounts() -> set[str]:
    return set(subprocess.run(["findmnt", "-rn", "-o", "TARGET,SOURCE"], capture_output=True, text=True).stdout.splitlines())


def _guest_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "footprint-guest-*")))


def _children(pid: int) -> set[int]:
    """All descendants of pid (from /proc/*/stat ppid)."""
    kids: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
            kids.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _comm(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Still running: a zombie holds no file, mount or memory any more (it waits only for
    its parent, or for init after a reparenting, to reap it)."""
    return _state(pid) not in ("", "Z", "X")


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


@pytest.mark.qemu
@needs_qemu
def test_live_has_dm_snapshot_over_loops_plain_has_none(experiment_json):
    boots = {b["name"]: b for b in experiment_json["boots"]}
    live, plain = boots["live"], boots["plain"]
    # live: dm live-rw is a snapshot whose origin and COW are loop devices (major 7)
    table = live["storage"]["dmsetup_table"]
    m = re.search(r"^live-rw: \d+ \d+ snapshot (\d+):(\d+) (\d+):(\d+) ", table, re.M)
    assert m, table
    assert m.group(1) == "7" and m.group(3) == "7", table
    loops = live["storage"]["sysfs_loops"]
    assert "/LiveOS/squashfs.img" in loops and "/LiveOS/rootfs.img" in loops, loops
    assert live["storage"]["root_mount"].startswith("/dev/mapper/live-rw")
    # plain: no device-mapper, no loop device, root on the virtio disk
    assert "No devices found" in plain["storage"]["dmsetup_table"] or plain["storage"]["dmsetup_table"] == ""
    assert plain["storage"]["sysfs_loops"] == ""
    assert plain["storage"]["root_mount"].startswith("/dev/vda ")
    # the seed's observation, in MemTotal - MemFree (2014's "used")
    assert live["nonfree_mib"] > plain["nonfree_mib"], (live["nonfree_mib"], plain["nonfree_mib"])


@pytest.mark.qemu
@needs_qemu
def test_experiment_json_shape(experiment_json, lab_logs):
    # + side_by_side, answer, ranking, files of the moments (tests/test_experiment_answer.py)
    assert {"boots", "seed", "ranking"} <= set(experiment_json)
    for b in experiment_json["boots"]:
        for k in ("name", "delivery_mib", "rootfs_mib", "used_mib", "buff_cache_mib", "nonfree_mib",
                  "meminfo", "boot_seconds", "kernel"):
            assert k in b, k
        mi = b["meminfo"]
        assert abs(b["nonfree_mib"] - (mi["MemTotal"] - mi["MemFree"]) / 1024) < 1
        assert b["kernel"].endswith("-amd64") and b["system_state"] in ("running", "degraded")
        assert 1000 < b["rootfs_mib"] < 4000 and b["delivery_mib"] > 100
        assert (lab_logs / f"{b['name']}.serial.log").stat().st_size > 1000
    boots = {b["name"]: b for b in experiment_json["boots"]}
    assert boots["live"]["delivery_mib"] < boots["plain"]["delivery_mib"]  # squashed
    assert experiment_json["seed"]["boots"][0]["nonfree_mib"] == 626


@pytest.mark.qemu
@needs_qemu
def test_guest_api_run_get_put_and_code_cpio(lab_cache, tmp_path):
    """Boots plain once with the code cpio appended to the initramfs (a concatenated cpio
    must still boot) and exercises the agent API."""
    from vm import Guest, code_cpio, prepare

    spec = prepare("plain", lab_cache)
    with Guest(spec, initrd_append=[code_cpio(lab_cache)], log=tmp_path / "serial.log", timeout=900) as g:
        g.wait_ready(600)
        rc, out, err = g.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=60)
        assert (rc, out, err) == (3, b"out\n", b"err\n")
        rc, out, _ = g.run("cat", timeout=60, stdin=b"\x00\xffbinary")
        assert out == b"\x00\xffbinary"
        rc, out, err = g.run("sleep 30", timeout=2)
        assert rc != 0
        g.put_file("/tmp/x/hello", b"hi\n" * 100000)
        data = g.get_file("/tmp/x/hello", tmp_path / "hello")
        assert data == b"hi\n" * 100000 and (tmp_path / "hello").read_bytes() == data
        rc, out, err = g.run("footprint --help && python3 /opt/footprint/run.py --version", timeout=120)
        # the product's commands; the lab's `experiment` comes with an installed package's
        # entry point, which the code disk (no package metadata) does not have
        assert rc == 0 and b"record" in out and b"report" in out and b"version" in out, err
        rc, out, _ = g.run("cat /proc/cmdline; findmnt -n -o FSTYPE /opt/footprint", timeout=60)
        assert b"root=/dev/vda" in out and out.strip().endswith(b"ext4")
        pid = g.pid
        g.shutdown(timeout=120)
        assert g.proc.returncode == 0  # powered off, QEMU exited by itself
    assert not _alive(pid)
    assert "reboot: Power down" in (tmp_path / "serial.log").read_text(errors="replace")


def _wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.qemu
@needs_qemu
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_boot_leaves_nothing(lab_cache, sig):
    images.prepare("plain", lab_cache)  # built beforehand: this test interrupts the boot
    loops, mounts, dirs = _loops(), _mounts(), _guest_dirs()
    logs = tempfile.mkdtemp(prefix="fp-int-", dir="/var/tmp")
    p = subprocess.Popen([*FOOTPRINT, "experiment", "--untraced", "--variants", "plain", "--cache-dir", str(lab_cache),
                          "--keep-logs", logs], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        qemu = _wait_for(lambda: [c for c in _children(p.pid) if _comm(c).startswith("qemu-system")],
                         120, "qemu to start")[0]
        serial = Path(logs) / "plain.serial.log"
        _wait_for(lambda: serial.exists() and b"Linux version" in serial.read_bytes(), 120, "the kernel to boot")
        time.sleep(3)  # mid-boot
        p.send_signal(sig)
        p.wait(timeout=60)
        err = p.stderr.read().decode()
        if sig == signal.SIGKILL:  # no cleanup code runs: QEMU dies through PR_SET_PDEATHSIG
            _wait_for(lambda: not _alive(qemu), 10, "QEMU to die with its parent")
            from vm.qemu import _sweep_workdirs

            _sweep_workdirs()  # what the next Guest does first: the dead run's temp dir goes
            assert not glob.glob(os.path.join(tempfile.gettempdir(), f"footprint-guest-{p.pid}-*"))
            return
        assert p.returncode == 130, err
        assert err.strip().splitlines()[-1] == "footprint: interrupted"
        assert not _alive(qemu)
        assert _guest_dirs() <= dirs  # the runner's temp dir is gone
        assert not {lo for lo in _loops() - loops if "footprint" in lo}
        assert not {m for m in _mounts() - mounts if "footprint" in m}
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", logs])


@pytest.mark.qemu
@needs_qemu
def test_interrupted_build_leaves_nothing():
    """SIGINT during mmdebstrap (cold cache in a scratch dir): no temp dir, no half
    artefact, no mount, no loop device, no process of the build left."""
    cache = tempfile.mkdtemp(prefix="fp-cold-", dir="/var/tmp")
    loops, mounts = _loops(), _mounts()
    p = subprocess.Popen([*FOOTPRINT, "experiment", "--untraced", "--variants", "plain", "--cache-dir", cache],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: any("mmdebstrap" in " ".join(_cmdline(c)) for c in _children(p.pid)), 120,
                  "mmdebstrap to start")
        time.sleep(8)  # well inside the package download/extraction
        kids = _children(p.pid)
        assert any(_mounts_under(cache) for _ in [0]) or True  # mounts are private: invisible here
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
        err = p.stderr.read().decode()
        assert p.returncode == 130, err
        assert not [k for k in kids if _alive(k)], [(k, _comm(k), _state(k)) for k in kids if _alive(k)]
        vm_dir = Path(cache) / "vm"
        left = [x.name for x in vm_dir.iterdir()] if vm_dir.exists() else []
        assert not [x for x in left if x.startswith((".tmp-", "rootfs-"))], left
        assert not _mounts_under(cache)
        assert not {lo for lo in _loops() - loops if cache in lo}, "a loop device of the build is left"
        assert not {m for m in _mounts() - mounts if cache in m}
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", "--one-file-system", cache])


def _cmdline(pid: int) -> list[str]:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _mounts_under(path: str) -> list[str]:
    return [ln for ln in open("/proc/self/mountinfo") if f" {path}" in ln]
