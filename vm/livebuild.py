"""The `livebuild` lab variant: a Debian Live ISO made by Debian's own live-build.

What issue #17's users attach to: live-boot in an initramfs-tools initramfs finds
/live/filesystem.squashfs on the CD, mounts it (squashfs on loop0 over iso9660) as the
lower layer of an overlayfs root whose upper layer is a tmpfs (/run/live/overlay). The
other variants are built from the lab's mmdebstrap tree with dracut; this one comes from
`lb config` + `lb build` alone, from Debian's packages only, with live-build's defaults
(xz squashfs, syslinux + grub-efi hybrid ISO) except where said below.

One cached step, `<cache>/vm/livebuild-<hash of its inputs>/`:
    livebuild.iso   the hybrid ISO (bootable as it is; the lab boots its kernel directly)
    vmlinuz, initrd.img, kver   taken from the ISO's /live (live-boot's initramfs)
    packages.txt, squashfs.bytes, lb.log

The guest gets footprint's agent and its unit baked in (config/includes.chroot), so
footprint's code arrives like on the other guests: the code disk (vm/code.py) mounted at
/opt/footprint by agent-boot. Tracing from early boot needs initramfs-tools support, which
footprint does not have yet: here `footprint record` is attached at run time, in the
running session (`attach`), the way the issue's users did it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Optional

from tracer.errors import FootprintError

from . import cache as C
from .images import BAKED, COMMON_APPEND, GUEST_DIR, MIRROR, OTHER_KINDS, SECURITY, SUITE, BootSpec

NAME = "livebuild"
# What the lab needs in the guest; live-build adds live-boot, live-config, systemd-sysv
# and the kernel itself. busybox: live-boot-initramfs-tools depends on busybox |
# busybox-initramfs, and initramfs-tools recommends the full one.
PACKAGES = [
    "python3", "libbpf1", "python3-click", "python3-pandas", "python3-pyroute2",
    "procps", "util-linux", "kmod", "iproute2", "udev", "dbus", "dmsetup", "busybox",
]
# live-build's defaults except: no Recommends (the lab's package policy, as for the other
# guests: python3-pandas alone would pull in matplotlib, scipy, tables...), no firmware
# (there is no hardware to drive in QEMU, and finding it downloads the archive's Contents
# files), security and updates from the same mirror host as the other guests. Without
# Recommends there is no zstd, so update-initramfs compresses with gzip (a Debian Live ISO
# built with Recommends has a zstd initramfs); the root file system is the same.
LB_CONFIG = [
    "--distribution", SUITE,
    "--archive-areas", "main",
    "--mirror-bootstrap", MIRROR + "/",
    "--mirror-chroot", MIRROR + "/",
    "--mirror-binary", MIRROR + "/",
    "--mirror-chroot-security", SECURITY + "/",
    "--mirror-binary-security", SECURITY + "/",
    "--apt-recommends", "false",
    "--firmware-chroot", "false",
    "--firmware-binary", "false",
]
# live-boot's own parameters (what the ISO's boot menu passes, without quiet/splash).
BOOT_APPEND = "boot=live components"


def _build(out: Path) -> None:
    """lb config, the lab's files, lb build; keeps only the ISO, its kernel and initrd.

    live-build mounts /proc, /sys, /dev/pts in its chroot: it runs in a private mount
    namespace so that no mount outlives it, whatever happens."""
    C.require_tools("lb", "debootstrap", "unshare")
    work = out / "lb"
    work.mkdir()
    env = dict(os.environ, LC_ALL="C.UTF-8")
    try:
        C.run_logged(["lb", "config", *LB_CONFIG], out / "lb.log", "lb config", env=env, cwd=work)
        (work / "config/package-lists/footprint.list.chroot").write_text("\n".join(PACKAGES) + "\n")
        inc = work / "config/includes.chroot"
        for guest_path, (name, mode) in BAKED.items():
            dst = inc / guest_path
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(GUEST_DIR / name, dst)
            os.chmod(dst, mode)
        wants = inc / "etc/systemd/system/sysinit.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "footprint-agent.service").symlink_to("/etc/systemd/system/footprint-agent.service")
        (inc / "opt/footprint").mkdir(parents=True, exist_ok=True)
        C.run_logged(["unshare", "--mount", "--propagation", "private", "lb", "build"],
                     out / "lb.log", "lb build", env=env, cwd=work)
        isos = sorted(work.glob("*.iso"))
        kernels = sorted((work / "binary/live").glob("vmlinuz-*"))
        initrds = sorted((work / "binary/live").glob("initrd.img-*"))
        if len(isos) != 1 or len(kernels) != 1 or len(initrds) != 1:
            raise FootprintError(f"lb build made {len(isos)} ISOs, {len(kernels)} kernels, "
                                 f"{len(initrds)} initrds (one each expected): see {out}/lb.log")
        os.rename(isos[0], out / "livebuild.iso")
        shutil.copyfile(kernels[0], out / "vmlinuz")
        shutil.copyfile(initrds[0], out / "initrd.img")
        (out / "kver").write_text(kernels[0].name[len("vmlinuz-"):] + "\n")
        sq = work / "binary/live/filesystem.squashfs"
        (out / "squashfs.bytes").write_text(f"{sq.stat().st_size}\n")
        for p in work.glob("chroot.packages.live"):
            shutil.copyfile(p, out / "packages.txt")
    finally:
        C.remove_tree(work)


def key() -> str:
    """The step's cache key: live-build's version, its configuration, the package list,
    the baked guest files and this builder's code."""
    try:
        version = Path("/usr/share/live/build/VERSION").read_text().strip()
    except OSError:
        version = "?"
    baked = [(k, (GUEST_DIR / n).read_bytes(), m) for k, (n, m) in BAKED.items()]
    return C.digest(NAME, version, LB_CONFIG, PACKAGES, baked, _build)


def build(cache_dir: Optional[os.PathLike] = None) -> Path:
    """The cached live-build step, built if missing (13 min cold here, 2 shared CPUs)."""
    root = C.cache_root(cache_dir)

    def checked(out: Path) -> None:
        if shutil.which("lb") is None:  # the tool is not named like its package
            raise FootprintError("lb is missing: install it (apt-get install live-build, or run scripts/setup)")
        _build(out)

    return C.step(root, NAME, key(), checked)


def spec(art_dir: Path) -> BootSpec:
    """The BootSpec: the ISO as an IDE CD-ROM (as the other live variants), its own kernel
    and live-boot initrd booted directly, `boot=live components`."""
    iso = art_dir / "livebuild.iso"
    return BootSpec(
        NAME, art_dir / "vmlinuz", art_dir / "initrd.img",
        f"{BOOT_APPEND} {COMMON_APPEND}",
        ["-drive", f"file={iso},format=raw,if=none,id=cd0,media=cdrom,readonly=on",
         "-device", "ide-cd,drive=cd0"],
        iso, iso.stat().st_size, f"{NAME}: ISO size (live-build, hybrid)",
        (art_dir / "kver").read_text().strip(),
        {"attach": True, "squashfs_bytes": int((art_dir / "squashfs.bytes").read_text())})


OTHER_KINDS[NAME] = (build, spec)  # vm/images.py builds and boots it through these


# ------------------------------------------------------------------ run-time attach

RUN = "/run/footprint"


def attach(g, interval: float = 1.0, timeout: float = 600.0) -> dict:
    """Starts `footprint record` in the running guest, with the files the dracut module's
    recorder uses (/run/footprint: recording.jsonl, marks, stop, recorder.pid, attach), so
    vm/traced.py and vm/workloads.py treat it alike; returns when the first sample is
    written (the recorder attached): {"attach_seconds", "pid"}."""
    script = f'''
set -e
mkdir -p {RUN}; : > {RUN}/marks
t0=$(cut -d' ' -f1 /proc/uptime)
setsid /usr/local/bin/footprint record -o {RUN}/recording.jsonl --interval {interval} \\
    --marks {RUN}/marks --stop-file {RUN}/stop > {RUN}/recorder.log 2>&1 < /dev/null &
echo $! > {RUN}/recorder.pid
echo "$t0" > {RUN}/start
echo "footprint record started at run time (pid $!)" > {RUN}/start.log
'''
    g.run(script, timeout=60, check=True)
    t0 = time.monotonic()
    rc, pid, _ = g.run(f"cat {RUN}/recorder.pid", timeout=60, check=True)
    pid = int(pid.decode().strip())
    while True:  # the first sample is the recorder's sign that it attached
        rc, out, _ = g.run(f"grep -c '\"type\":\"sample\"' {RUN}/recording.jsonl", timeout=60)
        if rc == 0 and int(out.split()[0]) > 0:
            break
        if g.run(f"kill -0 {pid}", timeout=60)[0] != 0:
            _, log, _ = g.run(f"tail -n 3 {RUN}/recorder.log", timeout=60)
            raise FootprintError("footprint record exited in the guest: "
                                 + " / ".join(log.decode(errors="replace").strip().splitlines()))
        if time.monotonic() - t0 > timeout:
            g.run(f"kill -TERM {pid}", timeout=60)  # no stray recorder skews the figures later
            raise FootprintError(f"footprint record did not attach within {timeout:.0f} s")
        time.sleep(1)
    secs = time.monotonic() - t0
    g.run(f"echo \"$(cat {RUN}/start) $(cut -d' ' -f1 /proc/uptime)\" > {RUN}/attach", timeout=60)
    return {"attach_seconds": round(secs, 1), "pid": pid}


def attach_in_session(g, name: str = NAME) -> None:
    """`attach` for `footprint experiment`: a tracer that fails is said and the boot goes
    on (vm/traced.py then records the boot's tracer error)."""
    C.say(f"  {name}: attaching footprint record in the running session")
    try:
        info = attach(g)
    except FootprintError as err:
        C.say(f"  {name}: footprint record did not attach: {err}")
        return
    C.say(f"  {name}: recorder attached in {info['attach_seconds']} s")
