"""Guest images, all from ONE Debian bookworm rootfs tree built with mmdebstrap.

Steps (each cached as `<cache>/vm/<step>-<hash of its inputs>/`, rebuilt only if an input
changed; a step's hash includes its parent's hash and the text of its build function):

    rootfs     mmdebstrap tree + the baked guest files (agent unit) -> tree/, vmlinuz, kver
    initramfs  dracut in the chroot (dmsquash-live + drivers)      -> initrd.img
    initramfs-footprint  as initramfs, plus footprint's dracut module (tracer/dracut_module,
               installed as `footprint dracut install` does; the tracer from the cmdline
               hook through switch_root) -> initrd.img, manifest, sizes.json
    rootimg    ext4 image of the tree, label Root                    -> rootfs.img (also the plain disk)
    live       LiveOS/squashfs.img holding LiveOS/rootfs.img, ISO    -> live.iso
    direct     LiveOS/squashfs.img holding the tree itself, ISO      -> direct.iso

Image kinds built another way register in OTHER_KINDS (vm/livebuild.py: Debian's live-build
alone -> livebuild.iso).

squashfs compression is xz (what live media ship; ~2 min here on 2 CPUs). dracut 059 on
kernel 6.1 also reads zstd/gzip squashfs; FOOTPRINT_SQUASHFS_COMP=zstd trades delivery
size for build time (it changes the hash, so both can be cached side by side).
The squashfs matrix (issue #16) adds live images whose squashfs differs only in compressor
and block size (SQUASHED: live-zstd, live-1m, live-zstd-1m), each its own cached step
keyed by both; the default live step's builder and key are left exactly as they were.

Long because the steps are one chain of cached builds whose keys are made of each other's
(and of their build functions' text) and of the variants booted from them: one file keeps
a step's inputs readable in one place. The cpio format lives in vm/cpio.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tracer.errors import FootprintError

from . import cache as C
from . import cpio

SUITE = "bookworm"
MIRROR = os.environ.get("FOOTPRINT_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("FOOTPRINT_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
# Optional: a snapshot.debian.org date for reproducible package sets (empty: live mirror).
SNAPSHOT = os.environ.get("FOOTPRINT_SNAPSHOT", "")

PACKAGES = [
    "linux-image-amd64", "linux-headers-amd64", "systemd-sysv", "dracut", "dracut-live",
    "dracut-core", "python3", "python3-bpfcc", "bpfcc-tools", "util-linux", "kmod", "dmsetup",
    "procps", "e2fsprogs", "udev", "dbus", "squashfs-tools", "iproute2",
    # footprint's own dependencies (the guest has no network)
    "python3-click", "python3-pyroute2", "python3-pandas",
]
DRACUT_DRIVERS = ("squashfs loop overlay iso9660 sr_mod virtio_blk virtio_scsi virtio_pci "
                  "virtio_console ext4 dm_snapshot")
LIVE_LABEL = "FPLIVE"
DIRECT_LABEL = "FPDIRECT"
COMP = os.environ.get("FOOTPRINT_SQUASHFS_COMP", "xz")
DEFAULT_BLOCK = 128 << 10  # mksquashfs' default block size (the default live step passes no -b)
# The squashfs matrix's other live images: kind -> (compressor, block size in bytes).
SQUASHED = {
    "live-zstd": ("zstd", 128 << 10),
    "live-1m": ("xz", 1 << 20),
    "live-zstd-1m": ("zstd", 1 << 20),
}

GUEST_DIR = Path(__file__).parent / "guest"
BAKED = {  # guest path -> (file in vm/guest, mode)
    "etc/systemd/system/footprint-agent.service": ("footprint-agent.service", 0o644),
    "usr/local/lib/footprint/agent-boot": ("agent-boot", 0o755),
    "usr/local/bin/footprint": ("footprint", 0o755),
}
COMMON_APPEND = "console=ttyS0 rd.shell=0 rd.emergency=poweroff panic=-1"


def sources() -> list[str]:
    """The apt sources the rootfs is built from (Debian, or snapshot.debian.org at
    FOOTPRINT_SNAPSHOT)."""
    if SNAPSHOT:
        base = f"http://snapshot.debian.org/archive/debian/{SNAPSHOT}"
        sec = f"http://snapshot.debian.org/archive/debian-security/{SNAPSHOT}"
        return [f"deb [check-valid-until=no] {base} {SUITE} main",
                f"deb [check-valid-until=no] {base} {SUITE}-updates main",
                f"deb [check-valid-until=no] {sec} {SUITE}-security main"]
    # -updates and -security too: linux-image and linux-headers then both come from the
    # newest point release, and match (mmdebstrap alone would take only the suite).
    return [f"deb {MIRROR} {SUITE} main", f"deb {MIRROR} {SUITE}-updates main",
            f"deb {SECURITY} {SUITE}-security main"]


# ---------------------------------------------------------------- step: rootfs

def _build_rootfs(out: Path) -> None:
    C.require_tools("mmdebstrap", "unshare")
    tree = out / "tree"
    argv = [
        "unshare", "--mount", "--propagation", "private",
        "mmdebstrap", "--variant=minbase", "--mode=root",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--include=" + ",".join(PACKAGES),
        SUITE, str(tree), *sources(),
    ]
    # INITRD=No: skip the initramfs the kernel's postinst would build (the initramfs step
    # builds ours); it would only end up in the tree.
    env = dict(os.environ, INITRD="No", LC_ALL="C.UTF-8")
    C.run_logged(argv, out / "mmdebstrap.log", "mmdebstrap", env=env)
    for p in tree.glob("boot/initrd.img-*"):
        p.unlink()
    (tree / "etc/fstab").write_text("")  # a /dev/vda entry would break the live boot
    (tree / "etc/hostname").write_text("footprint-guest\n")
    shadow = tree / "etc/shadow"
    lines = shadow.read_text().splitlines()
    shadow.write_text("".join(
        ("root::" + ln.split(":", 2)[2] if ln.startswith("root:") else ln) + "\n" for ln in lines))
    for guest_path, (name, mode) in BAKED.items():
        dst = tree / guest_path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(GUEST_DIR / name, dst)
        os.chmod(dst, mode)
    wants = tree / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "footprint-agent.service").symlink_to("/etc/systemd/system/footprint-agent.service")
    (tree / "opt/footprint").mkdir(parents=True, exist_ok=True)
    kvers = sorted(p.name for p in (tree / "lib/modules").iterdir())
    if len(kvers) != 1:
        raise FootprintError(f"expected one guest kernel, found {kvers}: remove {out} and rebuild")
    kver = kvers[0]
    shutil.copyfile(tree / f"boot/vmlinuz-{kver}", out / "vmlinuz")
    (out / "kver").write_text(kver + "\n")
    pkgs = subprocess.run(["chroot", str(tree), "dpkg-query", "-W", "-f=${Package} ${Version}\n"],
                          capture_output=True, text=True)
    (out / "packages.txt").write_text(pkgs.stdout)


def rootfs_key() -> str:
    """The rootfs step's cache key: suite, sources, packages, baked files, builder."""
    baked = [(k, (GUEST_DIR / n).read_bytes(), m) for k, (n, m) in BAKED.items()]
    return C.digest("rootfs", SUITE, sources(), PACKAGES, baked, _build_rootfs)


# ---------------------------------------------------------------- step: initramfs

def _build_initramfs(out: Path, rootfs: Path) -> None:
    C.require_tools("unshare")
    kver = (rootfs / "kver").read_text().strip()
    # In a private mount namespace: the tree is bind-mounted read-only over itself (the
    # cached rootfs is never modified), tmpfs on the scratch dirs, `out` on /mnt.
    script = r'''
set -e
R=$1; OUT=$2; K=$3; DRIVERS=$4
mount --bind "$R" "$R"; mount -o remount,bind,ro "$R" "$R"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
for d in tmp var/tmp run; do mount -t tmpfs tmpfs "$R/$d"; done
mount --bind "$OUT" "$R/mnt"
chroot "$R" dracut --force --no-hostonly --add dmsquash-live --add-drivers "$DRIVERS" \
    /mnt/initrd.img "$K"
'''
    C.run_logged(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                  str(rootfs / "tree"), str(out), kver, DRACUT_DRIVERS],
                 out / "dracut.log", "dracut")
    if not (out / "initrd.img").is_file():
        raise FootprintError(f"dracut made no initramfs: see {out}/dracut.log")


# ---------------------------------------------------------------- step: initramfs-footprint

TRACED_APPEND = "rd.footprint=1"
GUEST_PYTHON = "/usr/bin/python3"
GUEST_CODE = "/opt/footprint"


def dracut_module_files() -> list[tuple[str, bytes]]:
    """The module's files that go into the initramfs (its README does not)."""
    from tracer import dracut

    return [(p.name, p.read_bytes()) for p in sorted(dracut.module_source().iterdir())
            if p.is_file() and p.suffix != ".md"]


def _build_initramfs_footprint(out: Path, rootfs: Path) -> None:
    """dracut --add "dmsquash-live footprint" in the chroot, the module installed as a
    user's `footprint dracut install` does, for the guest's python with footprint's code
    at /opt/footprint (the code tree bind-mounted there; the cached rootfs stays as it is).
    At boot recorder_cpio() overlays /opt/footprint/tracer with the current code."""
    C.require_tools("unshare")
    kver = (rootfs / "kver").read_text().strip()
    from tracer import dracut

    from .code import code_tree

    mods = out / "modules.d"
    # What a user's `footprint dracut install --root TREE` does, into a writable copy of
    # the tree's modules dir (dracut's own, from its dracut.pc; its version checked).
    shutil.copytree(dracut.modules_dir(rootfs / "tree"), mods, symlinks=True)
    dracut.install_into(mods, python=GUEST_PYTHON, pythonpath=GUEST_CODE)
    code_tree(out / "code")
    script = r'''
set -e
R=$1; OUT=$2; K=$3; DRIVERS=$4; CODE=$5
mount --bind "$R" "$R"; mount -o remount,bind,ro "$R" "$R"
mount --bind "$OUT/modules.d" "$R/usr/lib/dracut/modules.d"
mount --bind "$OUT/code" "$R$CODE"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
for d in tmp var/tmp run; do mount -t tmpfs tmpfs "$R/$d"; done
mount --bind "$OUT" "$R/mnt"
chroot "$R" dracut --force --no-hostonly --add "dmsquash-live footprint" \
    --add-drivers "$DRIVERS" /mnt/initrd.img "$K"
'''
    try:
        C.run_logged(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                      str(rootfs / "tree"), str(out), kver, DRACUT_DRIVERS, GUEST_CODE],
                     out / "dracut.log", "dracut (footprint)")
    finally:
        shutil.rmtree(mods, ignore_errors=True)
        shutil.rmtree(out / "code", ignore_errors=True)
    if not (out / "initrd.img").is_file():
        raise FootprintError(f"dracut made no initramfs: see {out}/dracut.log")
    facts = cpio.initramfs_facts(out / "initrd.img", want="usr/lib/footprint/manifest")
    (out / "manifest").write_bytes(facts.pop("file") or b"")
    (out / "sizes.json").write_text(json.dumps(facts) + "\n")


# ---------------------------------------------------------------- step: rootimg

def _build_rootimg(out: Path, rootfs: Path) -> None:
    C.require_tools("mkfs.ext4")
    tree = rootfs / "tree"
    du = subprocess.run(["du", "-sx", "--block-size=1M", str(tree)], capture_output=True, text=True)
    used = int(du.stdout.split()[0])
    size = max(2048, int(used * 1.4) + 512)
    img = out / "rootfs.img"
    with open(img, "wb") as f:
        f.truncate(size << 20)
    C.run_logged(["mkfs.ext4", "-F", "-L", "Root", "-d", str(tree), str(img)],
                 out / "mkfs.log", "mkfs.ext4")


# ---------------------------------------------------------------- steps: live / direct

def _squash_iso(out: Path, src: Path, label: str, iso_name: str) -> None:
    C.require_tools("mksquashfs", "xorriso")
    isodir = out / "iso"
    (isodir / "LiveOS").mkdir(parents=True)
    squash = isodir / "LiveOS/squashfs.img"
    C.run_logged(["mksquashfs", str(src), str(squash), "-comp", COMP, "-noappend",
                  "-wildcards", "-e", "boot/initrd.img*"],
                 out / "mksquashfs.log", f"mksquashfs ({COMP})", passthrough=True)
    C.run_logged(["xorriso", "-as", "mkisofs", "-V", label, "-R", "-J", "-o",
                  str(out / iso_name), str(isodir)], out / "xorriso.log", "xorriso")
    (out / "squashfs.bytes").write_text(f"{squash.stat().st_size}\n")
    shutil.rmtree(isodir)


def _build_live(out: Path, rootimg: Path) -> None:
    stage = out / "stage"
    (stage / "LiveOS").mkdir(parents=True)
    try:
        os.link(rootimg / "rootfs.img", stage / "LiveOS/rootfs.img")
    except OSError:
        subprocess.run(["cp", "--sparse=always", str(rootimg / "rootfs.img"),
                        str(stage / "LiveOS/rootfs.img")], check=True)
    try:
        _squash_iso(out, stage, LIVE_LABEL, "live.iso")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _build_live_squashed(out: Path, rootimg: Path, comp: str, block: int) -> None:
    """As the default live step (_build_live, _squash_iso), with `-comp COMP -b BLOCK`.
    Its own function rather than parameters of theirs because a step's key includes its
    builders' text: the default live image, everyone's 5-min build, keeps its key."""
    C.require_tools("mksquashfs", "xorriso")
    stage, isodir = out / "stage", out / "iso"
    (stage / "LiveOS").mkdir(parents=True)
    (isodir / "LiveOS").mkdir(parents=True)
    squash = isodir / "LiveOS/squashfs.img"
    try:
        try:
            os.link(rootimg / "rootfs.img", stage / "LiveOS/rootfs.img")
        except OSError:
            subprocess.run(["cp", "--sparse=always", str(rootimg / "rootfs.img"),
                            str(stage / "LiveOS/rootfs.img")], check=True)
        C.run_logged(["mksquashfs", str(stage), str(squash), "-comp", comp, "-b", str(block),
                      "-noappend"], out / "mksquashfs.log",
                     f"mksquashfs ({comp}, {block >> 10} KiB blocks)", passthrough=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    C.run_logged(["xorriso", "-as", "mkisofs", "-V", LIVE_LABEL, "-R", "-J", "-o",
                  str(out / "live.iso"), str(isodir)], out / "xorriso.log", "xorriso")
    (out / "squashfs.bytes").write_text(f"{squash.stat().st_size}\n")
    shutil.rmtree(isodir)


def _build_direct(out: Path, rootfs: Path) -> None:
    _squash_iso(out, rootfs / "tree", DIRECT_LABEL, "direct.iso")


# ---------------------------------------------------------------- the pipeline

@dataclass
class Artefacts:
    """The built images of one cache: rootfs tree, initramfs (traced too), root image,
    live/direct ISOs and the images of other kinds (OTHER_KINDS)."""

    root: Path
    rootfs: Path
    initramfs: Path
    rootimg: Path
    live: Optional[Path] = None
    direct: Optional[Path] = None
    initramfs_footprint: Optional[Path] = None
    others: dict = field(default_factory=dict)  # OTHER_KINDS' kind -> its cached directory
    squashed: dict = field(default_factory=dict)  # SQUASHED's kind -> its cached directory

    @property
    def kernel(self) -> Path:
        return self.rootfs / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.initramfs / "initrd.img"

    @property
    def initrd_traced(self) -> Path:
        assert self.initramfs_footprint is not None, "build(..., traced=True)"
        return self.initramfs_footprint / "initrd.img"

    @property
    def kver(self) -> str:
        return (self.rootfs / "kver").read_text().strip()


def build(need: set[str], cache_dir: Optional[os.PathLike] = None,
          traced: bool = False) -> Artefacts:
    """Builds (or finds in the cache) the steps needed for the image kinds in `need`
    ({"plain", "live", "direct", "livebuild"} and SQUASHED's); with `traced`, also the initramfs with
    footprint's dracut module."""
    root = C.cache_root(cache_dir)
    others = {k: OTHER_KINDS[k][0](cache_dir) for k in sorted(need) if k in OTHER_KINDS}
    if not need - set(others):  # none of the mmdebstrap tree's steps needed
        return Artefacts(root, None, None, None, others=others)  # type: ignore[arg-type]
    rk = rootfs_key()
    rootfs = C.step(root, "rootfs", rk, _build_rootfs)
    ik = C.digest("initramfs", rk, DRACUT_DRIVERS, _build_initramfs)
    initramfs = C.step(root, "initramfs", ik, lambda o: _build_initramfs(o, rootfs))
    gk = C.digest("rootimg", rk, _build_rootimg)
    rootimg = C.step(root, "rootimg", gk, lambda o: _build_rootimg(o, rootfs))
    art = Artefacts(root, rootfs, initramfs, rootimg, others=others)
    if traced:
        from .code import import_signature

        # not the code itself (recorder_cpio() brings it at boot): what it imports
        fk = C.digest("initramfs-footprint", ik, dracut_module_files(), import_signature(),
                      Path(__file__).parent.parent / "tracer" / "closure.py",
                      _build_initramfs_footprint)
        art.initramfs_footprint = C.step(root, "initramfs-footprint", fk,
                                         lambda o: _build_initramfs_footprint(o, rootfs))
    if "live" in need:
        lk = C.digest("live", gk, COMP, LIVE_LABEL, _build_live, _squash_iso)
        art.live = C.step(root, "live", lk, lambda o: _build_live(o, rootimg))
    if "direct" in need:
        dk = C.digest("direct", rk, COMP, DIRECT_LABEL, _build_direct, _squash_iso)
        art.direct = C.step(root, "direct", dk, lambda o: _build_direct(o, rootfs))
    for kind in sorted(need & set(SQUASHED)):
        comp, block = SQUASHED[kind]
        sk = C.digest(kind, gk, comp, block, LIVE_LABEL, _build_live_squashed)
        art.squashed[kind] = C.step(root, kind, sk, lambda o, c=comp, b=block:
                                    _build_live_squashed(o, rootimg, c, b))
    return art


# ---------------------------------------------------------------- boot specs

@dataclass
class BootSpec:
    """Everything QEMU needs to boot one variant (paths are cached artefacts, read-only)."""
    name: str
    kernel: Path
    initrd: Path
    append: str
    qemu_args: list[str]
    delivery: Path
    delivery_bytes: int
    delivery_note: str
    kver: str
    extra: dict = field(default_factory=dict)
    # traced: the initramfs holds footprint's dracut module, the command line enables it
    # (rd.footprint=1) and the current tracer/ rides along as a cpio appended to the initrd.
    traced: bool = False
    initrd_append: list = field(default_factory=list)


# name -> (image kind, extra kernel args, description)
VARIANTS = {
    "plain": ("plain", "", "ext4 disk image, root=/dev/vda (virtio, snapshot=on)"),
    "live": ("live", "", "LiveOS ISO: squashfs.img > rootfs.img, dm snapshot live-rw"),
    # the squashfs matrix (issue #16): as live, the squashfs built with another compressor
    # and/or block size (SQUASHED)
    "live-zstd": ("live-zstd", "", "as live, squashfs zstd with 128 KiB blocks"),
    "live-1m": ("live-1m", "", "as live, squashfs xz with 1 MiB blocks"),
    "live-zstd-1m": ("live-zstd-1m", "", "as live, squashfs zstd with 1 MiB blocks"),
    "live-ram": ("live", "rd.live.ram=1", "as live, squashfs.img copied to RAM (rd.live.ram=1)"),
    "live-overlayfs": ("live", "rd.live.overlay.overlayfs=1",
                       "as live, overlayfs instead of the dm snapshot"),
    # dracut 059 detects the tree-in-squashfs and wants overlayfs, but without the option
    # its systemd sysroot.mount still waits for live-rw: "overlayfs: failed to resolve
    # '/run/overlayfs'", "Can't mount root filesystem". Asking for overlayfs boots.
    "live-direct": ("direct", "rd.live.overlay.overlayfs=1",
                    "LiveOS ISO: squashfs holds the root tree itself, overlayfs root"),
    # vm/livebuild.py; traced, footprint record is attached at run time (no initramfs-tools hook)
    "livebuild": ("livebuild", "", "Debian Live ISO (live-build): live-boot, squashfs under an overlayfs root"),
}
DEFAULT_BOOTS = ("plain", "live")
# Image kinds built outside this pipeline: kind -> (build(cache_dir) -> cached dir,
# spec(cached dir) -> BootSpec). vm/livebuild.py registers "livebuild" (vm/__init__
# imports it), so that this module needs none of it.
OTHER_KINDS: dict = {}


def variant_names(spec: str) -> list[str]:
    """'all' | 'a,b,c' -> validated names, in the given order."""
    if spec.strip() == "all":
        return list(VARIANTS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in VARIANTS:
            raise FootprintError(
                f"unknown variant {n!r}: use one of {', '.join(VARIANTS)} (or 'all')")
    return names


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _spec_untraced(name: str, art: Artefacts) -> BootSpec:
    kind, extra, _ = VARIANTS[name]
    if kind in OTHER_KINDS:
        return OTHER_KINDS[kind][1](art.others[kind])
    if kind == "plain":
        disk = art.rootimg / "rootfs.img"
        return BootSpec(
            name, art.kernel, art.initrd, f"root=/dev/vda rw {COMMON_APPEND}",
            # root first and at a fixed PCI slot: it must be /dev/vda (the code disk follows)
            ["-drive", f"file={disk},format=raw,if=none,id=root,snapshot=on",
             "-device", "virtio-blk-pci,drive=root,addr=0x10"],
            disk, _allocated(disk),
            "plain: allocated (non-sparse) bytes of the ext4 disk image", art.kver,
            {"apparent_bytes": disk.stat().st_size})
    if kind in SQUASHED:
        iso, (comp, block) = art.squashed[kind] / "live.iso", SQUASHED[kind]
    else:
        iso = art.live / "live.iso" if kind == "live" else art.direct / "direct.iso"
        comp, block = COMP, DEFAULT_BLOCK
    label = DIRECT_LABEL if kind == "direct" else LIVE_LABEL
    append = f"root=live:CDLABEL={label} rd.live.image rw {extra} {COMMON_APPEND}".replace("  ", " ")
    return BootSpec(
        name, art.kernel, art.initrd, append,
        ["-drive", f"file={iso},format=raw,if=none,id=cd0,media=cdrom,readonly=on",
         "-device", "ide-cd,drive=cd0"],
        iso, iso.stat().st_size, f"{name}: ISO size", art.kver,
        {"squashfs": {"compressor": comp, "block_size": block}})


def spec_for(name: str, art: Artefacts, traced: bool = False, append: str = "") -> BootSpec:
    """The BootSpec of variant `name`; `traced`: footprint's initramfs, rd.footprint=1 and
    the current tracer/ (recorder_cpio, from the same cache) appended; `append`: more
    kernel arguments (e.g. rd.footprint.stop=never)."""
    spec = _spec_untraced(name, art)
    if traced and spec.extra.get("attach"):  # traced from the running session on
        spec.traced = True
    elif traced:
        from .code import recorder_cpio

        spec.initrd = art.initrd_traced
        spec.append = f"{spec.append} {TRACED_APPEND}"
        spec.traced = True
        spec.initrd_append = [recorder_cpio(art.root.parent)]
    if append:
        spec.append = f"{spec.append} {append}"
    return spec


def prepare(name: str, cache_dir: Optional[os.PathLike] = None, traced: bool = False,
            append: str = "") -> BootSpec:
    """The BootSpec of variant `name`, building whatever is missing. traced=True: boots
    with footprint recording from the initramfs on (see tracer/dracut_module)."""
    if name not in VARIANTS:
        variant_names(name)  # raises the one-line error
    return spec_for(name, build({VARIANTS[name][0]}, cache_dir, traced=traced), traced, append)


def prepare_many(names: list[str], cache_dir: Optional[os.PathLike] = None,
                 traced: bool = False, append: str = "") -> list[BootSpec]:
    """The BootSpecs of several variants, their images built in one pass."""
    art = build({VARIANTS[n][0] for n in names}, cache_dir, traced=traced)
    return [spec_for(n, art, traced, append) for n in names]
