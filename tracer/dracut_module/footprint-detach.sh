#!/bin/sh
# footprint-detach: cut mount propagation into the recorder's mount namespace (run from the
# cleanup hook and again just before initrd-switch-root.service).
# The recorder runs in a slave namespace so that the live root's mounts reach it while the
# initramfs assembles them. At switch_root, systemd moves /proc, /sys, /dev and /run into
# the new root, or unmounts them where the move fails; unmounts propagate from master to
# slave, and the recorder would lose /proc. Made private now, its namespace keeps them: its
# /run is the same tmpfs as the booted system's /run, its /proc and /sys the same kernel
# views. Mounts made after switch_root are not seen by it.
pid=$(cat /run/footprint/recorder.pid 2> /dev/null)
[ -n "$pid" ] || exit 0
[ -e "/proc/$pid/ns/mnt" ] || exit 0
[ "$(readlink "/proc/$pid/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] || exit 0
nsenter -t "$pid" -m mount --make-rprivate / 2> /dev/null && : > /run/footprint/detached
exit 0
