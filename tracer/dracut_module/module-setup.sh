#!/bin/bash
# dracut module "footprint": start footprint's kernel memory tracer before the live root
# is assembled (before dracut-cmdline and udev) and keep it tracing through switch_root.
#
# Only when asked for (dracut --add footprint); at boot only with rd.footprint=1, so an
# initramfs holding this module costs nothing but its size when the option is absent.
# Kernel command line (read by footprint-start):
#   rd.footprint=1                         enable
#   rd.footprint.interval=S                sampling interval (default 1)
#   rd.footprint.stop=multi-user|basic|sysinit|never   when the recorder stops after
#                                          switch_root (default multi-user), leaving its
#                                          account pinned in bpffs
#   rd.footprint.slab=off|kmalloc|all      slab objects followed (default kmalloc)
#   rd.footprint.timeout=S                 give up waiting for the first sample (default 240)
#   rd.footprint.preload=0                 do not load the storage modules before attaching
#   rd.footprint.break=1|hang              fault injection for tests: a failing / hanging tracer
#
# The recorder is footprint's own, run by the interpreter `footprint dracut install` recorded
# in footprint.conf (this directory): module-setup asks that interpreter for the exact files
# the recorder loads (python -m tracer.closure) and installs those at their own paths. The
# initramfs gains python, the modules it imports, libbpf and the CO-RE objects: no compiler,
# no kernel headers. Early boot needs the kernel's BTF (CO-RE); without it the module is
# left out with one line saying so (the bcc fallback would bring LLVM back: +292 MiB).

# Reads footprint.conf: FP_INSTALL_PYTHON, FP_INSTALL_PYTHONPATH.
_fp_conf() {
    local conf="$moddir/footprint.conf"
    if [ ! -r "$conf" ]; then
        dwarn "footprint: $conf is missing: install the module with \`footprint dracut install\`"
        return 1
    fi
    # shellcheck disable=SC1090
    . "$conf"
}

# 0 if $kernel has BTF, 1 if it has none, 2 if nothing says.
_fp_btf() {
    local c
    for c in "/lib/modules/$kernel/config" "/boot/config-$kernel"; do
        [ -r "$c" ] || continue
        grep -q '^CONFIG_DEBUG_INFO_BTF=y' "$c"
        return $?
    done
    if [ "$kernel" = "$(uname -r)" ] && [ -e /sys/kernel/btf/vmlinux ]; then
        return 0
    fi
    return 2
}

check() {
    _fp_conf || return 1
    if ! PYTHONPATH="$FP_INSTALL_PYTHONPATH" "$FP_INSTALL_PYTHON" -c 'import tracer.closure' 2> /dev/null; then
        dwarn "footprint: not added: $FP_INSTALL_PYTHON cannot import footprint any more: run \`footprint dracut install\` again"
        return 1
    fi
    _fp_btf
    if [ $? = 1 ]; then
        dwarn "footprint: not added: early-boot tracing needs a kernel with BTF (CONFIG_DEBUG_INFO_BTF); $kernel has none"
        return 1
    fi
    # only when asked for explicitly (--add footprint)
    return 255
}

depends() {
    echo bash
    return 0
}

# The files present in the initramfs, one per line (for the manifest diff).
_fp_list() {
    (cd "$initdir" && find . -mindepth 1 \( -type f -o -type l \) -printf '/%P\n' | LC_ALL=C sort)
}

install() {
    local before out k
    local -a files
    before="$DRACUT_TMPDIR/footprint-before"
    _fp_list > "$before"
    _fp_conf || return 1

    # -- the recorder: python, the modules it imports, libbpf, the objects (their own paths)
    if ! out=$(PYTHONPATH="$FP_INSTALL_PYTHONPATH" "$FP_INSTALL_PYTHON" -m tracer.closure); then
        derror "footprint: $FP_INSTALL_PYTHON -m tracer.closure failed: run \`footprint dracut install\` again with the python footprint is installed for"
        return 1
    fi
    mkdir -p "$initdir/usr/lib/footprint/bin"
    sed -n '/^--$/q;p' <<< "$out" > "$initdir/usr/lib/footprint/python.env"
    mapfile -t files < <(sed '1,/^--$/d' <<< "$out")
    inst_multiple -o "${files[@]}"
    # python finds its sys.executable by looking up argv[0] in PATH: "@footprint" is there,
    # so the recorder can re-exec itself (its lean sampler) under that name
    # shellcheck disable=SC1091
    (. "$initdir/usr/lib/footprint/python.env" && ln -sfn "$FP_PYTHON" "$initdir/usr/lib/footprint/bin/@footprint")
    dinfo "footprint: the recorder's closure: ${#files[@]} files"

    # -- start, marks, units
    inst_multiple bash sh cat grep sed sleep mkdir ln cp rm kill modprobe mount \
        tail head tr date nsenter readlink
    inst_script "$moddir/footprint-start.sh" /usr/lib/footprint/footprint-start
    inst_script "$moddir/footprint-mark.sh" /usr/lib/footprint/footprint-mark
    inst_script "$moddir/footprint-detach.sh" /usr/lib/footprint/footprint-detach
    inst_simple "$moddir/footprint-mark@.service" /usr/lib/footprint/units/footprint-mark@.service
    inst_simple "$moddir/footprint-stop.service" /usr/lib/footprint/units/footprint-stop.service
    if dracut_module_included "systemd"; then
        inst_simple "$moddir/footprint.service" "$systemdsystemunitdir/footprint.service"
        inst_simple "$moddir/footprint-switch-root.service" \
            "$systemdsystemunitdir/footprint-switch-root.service"
        $SYSTEMCTL -q --root "$initdir" add-wants sysinit.target footprint.service
        $SYSTEMCTL -q --root "$initdir" add-wants initrd-switch-root.target \
            footprint-switch-root.service
    fi
    # One tiny mark per dracut hook; the cmdline one also starts the tracer when the
    # initramfs has no systemd.
    inst_hook cmdline 00 "$moddir/footprint-cmdline.sh"
    printf '#!/bin/sh\n/bin/sh /usr/lib/footprint/footprint-detach\n[ -e /run/footprint/marks ] && /bin/sh /usr/lib/footprint/footprint-mark cleanup\n' \
        > "$DRACUT_TMPDIR/footprint-mark-cleanup.sh"
    inst_hook cleanup 00 "$DRACUT_TMPDIR/footprint-mark-cleanup.sh"
    for k in pre-udev pre-trigger pre-mount mount pre-pivot; do
        printf '#!/bin/sh\n[ -e /run/footprint/marks ] && /bin/sh /usr/lib/footprint/footprint-mark %s\n' \
            "$k" > "$DRACUT_TMPDIR/footprint-mark-$k.sh"
        inst_hook "$k" 00 "$DRACUT_TMPDIR/footprint-mark-$k.sh"
    done
    # initqueue hooks are jobs run on every loop of the queue: this one removes itself
    printf '#!/bin/sh\n[ -e /run/footprint/marks ] && /bin/sh /usr/lib/footprint/footprint-mark initqueue\nrm -f -- "$job"\n' \
        > "$DRACUT_TMPDIR/footprint-mark-initqueue.sh"
    inst_hook initqueue 00 "$DRACUT_TMPDIR/footprint-mark-initqueue.sh"

    # -- the manifest: every path this module added (the tracer's own cost)
    mkdir -p "$initdir/usr/lib/footprint"
    _fp_list | LC_ALL=C comm -13 "$before" - > "$initdir/usr/lib/footprint/manifest"
    echo /usr/lib/footprint/manifest >> "$initdir/usr/lib/footprint/manifest"
    dinfo "footprint: $(wc -l < "$initdir/usr/lib/footprint/manifest") files in the manifest"
}
