#!/bin/bash
# footprint-ns CMD...: run CMD (the recorder) chrooted into a root of its own, inside the
# mount namespace `unshare --mount --propagation slave` made for it, as argv[0] "@footprint".
#
# Why: at switch_root systemd moves /proc, /sys, /dev and /run into the new root and then
# deletes the initramfs's files. Deleting a directory detaches whatever is mounted on it
# in every mount namespace, so a recorder whose /proc is mounted on the initramfs's /proc
# directory loses it even in a namespace of its own. Here the recorder's mount points are
# directories of a small tmpfs (/run/footprint/root), which nobody deletes:
#   proc sys dev      recursive binds of the initramfs's (the same kernel views)
#   run               bind of /run: the tmpfs the booted system gets (recording, marks,
#                     stop file are shared with it)
#   every other top-level directory (usr, etc, lib, a venv's or a python's own tree
#                     wherever footprint was installed): binds of the initramfs's (their
#                     files are deleted at switch_root; what the recorder mapped stays)
#   sysroot           bind of /sysroot (the live root as dracut mounts it, for topology)
# The namespace is a slave until the cleanup hook makes it private (footprint-detach), so
# the live stack's mounts reach it while dracut assembles it.
R=/run/footprint/root
set -e
mkdir -p "$R"
mount -t tmpfs -o mode=0755,size=16m footprint-root "$R"
mkdir -p "$R/proc" "$R/sys" "$R/dev" "$R/run" "$R/sysroot" "$R/tmp"
chmod 1777 "$R/tmp"
mount --bind /run "$R/run"
mount --rbind /proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
[ -d /sysroot ] && mount --bind /sysroot "$R/sysroot"
for d in /*; do
    l=${d#/}
    case $l in proc | sys | dev | run | sysroot | tmp) continue ;; esac
    if [ -L "$d" ]; then
        cp -P "$d" "$R/$l"
    elif [ -d "$d" ]; then
        mkdir -p "$R/$l"
        mount --bind "$d" "$R/$l"
    fi
done
set +e
cd "$R"
# shellcheck disable=SC2016
exec setsid chroot "$R" /bin/bash -c 'cd / && exec -a @footprint "$@"' footprint "$@"
