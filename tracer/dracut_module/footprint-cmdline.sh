#!/bin/sh
# cmdline hook: without systemd in the initramfs, start the tracer here (the earliest hook);
# with systemd, footprint.service started it before this hook. Then the phase mark.
if [ -z "$DRACUT_SYSTEMD" ] && [ ! -e /run/footprint/recorder.pid ]; then
    /usr/lib/footprint/footprint-start
fi
[ -e /run/footprint/marks ] && /bin/sh /usr/lib/footprint/footprint-mark cmdline
