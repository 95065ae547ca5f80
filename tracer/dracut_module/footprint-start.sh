#!/bin/bash
# footprint-start: start `footprint record` in the initramfs and wait until it attached.
#
# Never fails and never hangs the boot: it exits 0 in every case, gives up after
# rd.footprint.timeout seconds, and says in ONE console line (/dev/kmsg) either that it
# traces or why it does not ("footprint: not tracing: <reason>").
#
# The recorder runs
#   * with argv[0] "@footprint": systemd spares such root-owned processes when it kills the
#     initramfs's leftovers at switch_root (systemd's ROOT_STORAGE_DAEMONS.md);
#   * in its own mount namespace and chroot (tracer/bootns.py; rd.footprint.ns=0 to skip):
#     systemd's move of /proc, /sys, /dev and /run into the new root and its deletion of
#     the initramfs's files at switch_root do not take /proc and /sys away from it. /run
#     is the same tmpfs on both sides: the recording, the marks and the stop file are
#     shared with the booted system (/run/footprint/).
# After the recorder attached, units are put in /run/systemd/system for the booted system's
# systemd (they survive switch_root with /run): phase marks when sysinit, basic and
# multi-user are reached, and the stop (rd.footprint.stop).

DIR=/run/footprint
REC=$DIR/recording.jsonl
LOG=$DIR/recorder.log
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() {
    # one line on the console and in the kernel log; <3> (error) shows even with "quiet"
    local level=$1
    shift
    if [ -w /dev/kmsg ]; then
        echo "<$level>footprint: $*" > /dev/kmsg
    else
        echo "footprint: $*" >&2
    fi
    echo "footprint: $*" >> "$DIR/start.log" 2> /dev/null
}

# the value of option $1 on the kernel command line (the last one wins), or $2
arg() {
    local a v=$2
    local -a words
    read -r -a words < /proc/cmdline  # split on blanks, no glob expansion of the words
    for a in "${words[@]}"; do
        case $a in
            "$1="*) v=${a#*=} ;;
        esac
    done
    echo "$v"
}

enabled=$(arg rd.footprint 0)
case $enabled in 1 | yes | on | true) ;; *) exit 0 ;; esac
if [ -e "$DIR/recorder.pid" ] && kill -0 "$(cat "$DIR/recorder.pid")" 2> /dev/null; then
    exit 0  # already started (systemd unit and cmdline hook both present)
fi

mkdir -p "$DIR"
interval=$(arg rd.footprint.interval 1)
stop=$(arg rd.footprint.stop multi-user)
slab=$(arg rd.footprint.slab kmalloc)
timeout=$(arg rd.footprint.timeout 240)
# preload the storage modules by default only where the boot loads them anyway (live)
preload=0
case " $(cat /proc/cmdline) " in *" rd.live.image"* | *" root=live:"*) preload=1 ;; esac
preload=$(arg rd.footprint.preload $preload)
brk=$(arg rd.footprint.break 0)
case $stop in multi-user | basic | sysinit | never) ;; *)
    say 4 "rd.footprint.stop=$stop is not one of multi-user, basic, sysinit, never: using multi-user"
    stop=multi-user ;;
esac
case $timeout in '' | *[!0-9]*) timeout=240 ;; esac

read -r t_start _ < /proc/uptime

if [ ! -r /usr/lib/footprint/python.env ]; then
    say 3 "not tracing: no /usr/lib/footprint/python.env (rebuild the initramfs after footprint dracut install)"
    exit 0
fi
# FP_PYTHON, FP_PYTHONHOME, FP_PYTHONPATH, FP_LIBPATH: how the recorder was found when the
# initramfs was built (module-setup.sh, python -m tracer.closure)
# shellcheck disable=SC1091
. /usr/lib/footprint/python.env

# The storage modules, loaded before attaching so that the recorder's symbol table knows
# them (it reads /proc/kallsyms once): their load-time allocations are then not traced,
# their mount-time ones are.
if [ "$preload" != 0 ]; then
    modprobe -q -a squashfs loop dm_mod dm_snapshot overlay iso9660 2> /dev/null
    read -r t_mod _ < /proc/uptime
    echo "footprint: storage modules loaded at $t_mod s" >> "$DIR/start.log"
fi

# The account is pinned in bpffs (links, programs, maps): when the recorder stops (at
# rd.footprint.stop), the programs stay attached and keep counting with no process left,
# and `footprint report --pinned` reads the account. It must be the bpffs the booted
# system sees: systemd mounts it at /sys/fs/bpf (mount-setup) and moves /sys into the new
# root at switch_root; mounted here where it is not, before the recorder's namespace
# (tracer/bootns.py) binds /sys, so that the recorder pins into this one and not a private one.
if ! grep -qs '^[^ ]* /sys/fs/bpf bpf ' /proc/self/mounts; then
    mount -t bpf -o mode=700 bpf /sys/fs/bpf 2> /dev/null \
        || say 4 "bpffs not mounted at /sys/fs/bpf: the account is pinned in the recorder's own"
fi
# -c, not -m tracer.boot: runpy and what it imports cost ~0.2 s under TCG
set -- @footprint -S -c 'import sys; from tracer.boot import main; sys.exit(main())' \
    record -o "$REC" --interval "$interval" --slab "$slab" \
    --marks "$DIR/marks" --stop-file "$DIR/stop" --pin --ready-file "$DIR/ready"
# its own mount namespace and root (tracer/bootns.py), unless rd.footprint.ns=0
[ "$(arg rd.footprint.ns 1)" != 0 ] && set -- "$@" --ns "$DIR/root"
case $brk in
    1) set -- @footprint -S -c 'raise SystemExit("deliberately broken (rd.footprint.break=1)")' ;;
    hang) set -- sleep 100000 ;;
esac
: > "$DIR/marks"
: > "$LOG"
rm -f "$DIR/ready"
# argv[0] "@footprint" for the recorder itself (bash's exec -a); PYTHONHOME since python
# does not derive its prefix from that argv[0]; -S and PYTHONPATH: the paths the closure
# was taken with, nothing else. The subshell execs python: $pid is the recorder, which
# makes its own session, namespace and root (no setsid, unshare or chroot processes:
# each exec costs ~0.1 s under TCG while the boot waits).
(
    exec < /dev/null >> "$LOG" 2>&1
    export PYTHONHOME="$FP_PYTHONHOME" PYTHONPATH="$FP_PYTHONPATH" PYTHONDONTWRITEBYTECODE=1 \
        PYTHONUNBUFFERED=1 PYTHONNOUSERSITE=1 LD_LIBRARY_PATH="$FP_LIBPATH"
    # argv[0] "@footprint" resolves through PATH to python (sys.executable, for re-exec)
    PATH=/usr/lib/footprint/bin:$PATH
    read -r t_exec _ < /proc/uptime
    echo "footprint: python exec'd at $t_exec s" >> "$DIR/start.log"
    exec -a @footprint "$@"
) &
pid=$!

# A tenth of a second's wait without a process each time (sleep(1) is one fork and exec,
# ~10 a second in this loop, taken from the recorder under TCG): a read that times out
# on a pipe nobody writes to. Where that returns at once instead, sleep(1).
nap_fd=
{ exec {nap_fd}<> <(:); } 2> /dev/null || nap_fd=
nap() {
    if [ -n "$nap_fd" ]; then
        read -r -t 0.1 -u "$nap_fd" _ 2> /dev/null
        [ $? -gt 128 ] && return 0  # timed out: waited
        nap_fd=
    fi
    sleep 0.1
}

# Wait until the recorder is ready (attached; or its first sample) or ends, bounded.
reason=
waited=0
while :; do
    # ready: attached, devices followed (the baseline is taken while the boot goes on)
    if [ -f "$DIR/ready" ] || { [ $((waited % 10)) = 9 ] && [ -f "$REC" ] \
        && grep -q '"type": *"sample"' "$REC" 2> /dev/null; }; then
        break
    fi
    if ! kill -0 "$pid" 2> /dev/null; then
        reason="the recorder exited: $(grep -v '^[[:space:]]*$' "$LOG" | tail -n 1 | tr -d '\r' | head -c 300)"
        break
    fi
    if [ "$waited" -ge $((timeout * 10)) ]; then
        kill -KILL "$pid" 2> /dev/null
        reason="no sample after ${timeout} s (rd.footprint.timeout): recorder killed"
        break
    fi
    nap
    waited=$((waited + 1))
done
[ -n "$nap_fd" ] && exec {nap_fd}<&-
read -r t_now _ < /proc/uptime
if [ -n "$reason" ]; then
    rm -f "$DIR/marks"
    say 3 "not tracing: $reason"
    exit 0
fi
echo "$pid" > "$DIR/recorder.pid"
echo "$t_start $t_now" > "$DIR/attach"
/bin/sh /usr/lib/footprint/footprint-mark attached

# The booted system's part (systemd): marks at its targets and the stop.
if [ -d /run/systemd/system ] || [ -n "$DRACUT_SYSTEMD" ]; then
    mkdir -p "$DIR/bin" /run/systemd/system
    cp /usr/lib/footprint/footprint-mark "$DIR/bin/mark"
    cp /usr/lib/footprint/units/footprint-mark@.service /run/systemd/system/
    # the unit that holds the recorder, so that the booted system stops it at shutdown
    [ -f /usr/lib/systemd/system/footprint.service ] \
        && cp /usr/lib/systemd/system/footprint.service /run/systemd/system/
    for t in sysinit basic multi-user; do
        mkdir -p "/run/systemd/system/$t.target.wants"
        ln -sf ../footprint-mark@.service "/run/systemd/system/$t.target.wants/footprint-mark@$t.service"
    done
    if [ "$stop" != never ]; then
        sed "s/@STOP@/$stop/g" /usr/lib/footprint/units/footprint-stop.service \
            > /run/systemd/system/footprint-stop.service
        mkdir -p "/run/systemd/system/$stop.target.wants"
        ln -sf ../footprint-stop.service "/run/systemd/system/$stop.target.wants/footprint-stop.service"
    fi
fi
say 5 "tracing since ${t_now} s (pid $pid, started at ${t_start} s; stop: $stop)"
exit 0
