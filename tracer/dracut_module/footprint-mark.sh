#!/bin/sh
# footprint-mark NAME [UNIT]: append "<CLOCK_BOOTTIME seconds> NAME" to /run/footprint/marks,
# the phase marks `footprint record` copies into the recording.
# With UNIT (a systemd target), the time is the unit's ActiveEnterTimestampMonotonic
# (CLOCK_MONOTONIC, µs), when it was reached, rather than now. Assumption: CLOCK_MONOTONIC
# equals CLOCK_BOOTTIME (/proc/uptime), true when the system never suspended, as during boot.
name=$1
t=
if [ -n "$2" ]; then
    us=$(systemctl show -p ActiveEnterTimestampMonotonic --value "$2" 2> /dev/null)
    case $us in
        '' | 0 | *[!0-9]*) ;;
        *) t=$(printf '%d.%06d' $((us / 1000000)) $((us % 1000000))) ;;
    esac
fi
[ -n "$t" ] || read -r t _ < /proc/uptime
echo "$t $name" >> /run/footprint/marks
