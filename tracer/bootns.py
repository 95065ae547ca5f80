"""The early-boot recorder's own mount namespace and root (`tracer.boot record --ns ROOT`).

At switch_root systemd moves /proc, /sys, /dev and /run into the new root and then
deletes the initramfs's files. Deleting a directory detaches whatever is mounted on it in
every mount namespace, so a recorder whose /proc is mounted on the initramfs's /proc
directory loses it even in a namespace of its own (seen: `FileNotFoundError:
/proc/meminfo` right after switch_root). So the recorder enters a mount namespace of its
own (a slave: the live stack's mounts reach it while dracut assembles it, until the
cleanup hook makes it private: footprint-detach) and chroots into a small tmpfs whose
mount points nobody deletes:
    proc sys dev  recursive binds of the initramfs's (the same kernel views)
    run           bind of /run: the tmpfs the booted system gets (the recording, the marks
                  and the stop file are shared with it)
    sysroot       bind of /sysroot (the live root as dracut mounts it, for the topology)
    the rest      every other top-level directory (usr, etc, lib, a venv's or a python's
                  own tree wherever footprint was installed) bound, each symlink copied:
                  their files are deleted at switch_root; what the recorder mapped stays.

Done here with unshare(2), mount(2) and chroot(2), not by a script of mount(8) calls: under
TCG each fork and exec of those (~15) cost ~0.1 s of the time the boot waits for the
recorder (1.6 s for the script, measured). Relies on CLONE_NEWNS (2.4.19), MS_SLAVE
(2.6.15).
"""

from __future__ import annotations

import os

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
OWN = ("proc", "sys", "dev", "run", "sysroot", "tmp")


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc: no library search
    libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
    return libc


def _call(name: str, rc: int, what: str) -> None:
    if rc != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{name} {what}: {os.strerror(err)}")


def enter(root: str) -> None:
    """Unshare the mount namespace (mounts propagate into it, not out), mount a tmpfs at
    `root` with the binds above, chroot into it and cd /. Raises OSError naming the step
    that failed; the caller goes on in the initramfs's root (said in its log)."""
    libc = _libc()

    def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None):
        rc = libc.mount(src and src.encode(), dst.encode(), fstype and fstype.encode(), flags,
                        data and data.encode())
        _call("mount", rc, f"{src} on {dst}")

    os.makedirs(root, exist_ok=True)
    _call("unshare", libc.unshare(CLONE_NEWNS), "the mount namespace")
    mount(None, "/", None, MS_REC | MS_SLAVE)  # unshare(1) --propagation slave
    mount("footprint-root", root, "tmpfs", 0, "mode=0755,size=16m")
    for d in OWN:
        os.mkdir(os.path.join(root, d))
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    mount("/run", f"{root}/run", None, MS_BIND)
    for d in ("proc", "sys", "dev"):
        mount(f"/{d}", f"{root}/{d}", None, MS_BIND | MS_REC)
    if os.path.isdir("/sysroot"):
        mount("/sysroot", f"{root}/sysroot", None, MS_BIND)
    for name in sorted(os.listdir("/")):
        src, dst = "/" + name, os.path.join(root, name)
        if name in OWN:
            continue
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.mkdir(dst)
            mount(src, dst, None, MS_BIND)
    os.chroot(root)
    os.chdir("/")
