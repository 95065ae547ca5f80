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
#                                          switch_root (default multi-user)
#   rd.footprint.slab=off|kmalloc|all      slab objects followed (default kmalloc)
#   rd.footprint.timeout=S                 give up waiting for the first sample (default 240)
#   rd.footprint.preload=0                 do not load the storage modules before attaching
#   rd.footprint.break=1|hang              fault injection for tests: a failing / hanging tracer
# footprint's code is expected at /opt/footprint (run.py, tracer/): installed from the
# build root when present there, else appended at boot as a cpio (vm.code_cpio()).

check() {
    if ! require_binaries python3; then
        dinfo "footprint: python3 is missing"
        return 1
    fi
    if [ ! -d /usr/lib/python3/dist-packages/bcc ]; then
        dinfo "footprint: bcc (python3-bpfcc) is missing"
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

# _fp_copy DIR [find-expression ending in -o]: copy DIR's files and symlinks as they are.
_fp_copy() {
    local dir=$1
    shift
    find "$dir" "$@" \( -type f -o -type l \) -print0 \
        | xargs -0 -r cp -a --parents -t "$initdir"
}

# _fp_inst_libs FILE...: install shared objects and their library dependencies.
# (dracut-install resolves dependencies of executables only; libraries are mode 644.)
_fp_inst_libs() {
    local f
    # shellcheck disable=SC2046
    inst_multiple -o "$@" $(for f in "$@"; do
        ldd "$f" 2> /dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p'
    done | LC_ALL=C sort -u)
}

# Newest python3.N directory under /usr/lib.
_fp_pylib() {
    local py
    py=$(readlink -f "$(command -v python3)")
    echo "/usr/lib/${py##*/}"
}

install() {
    local before pylib kbuild ksrc k f
    before="$DRACUT_TMPDIR/footprint-before"
    _fp_list > "$before"

    # -- python3 and the parts of its standard library that are not obviously unneeded
    pylib=$(_fp_pylib)
    inst_multiple python3 "$(readlink -f "$(command -v python3)")"
    # plain files copied as they are (thousands: no argument list), shared objects through
    # dracut-install so that their library dependencies come along
    _fp_copy "$pylib" \
        \( -name test -o -name tests -o -name idlelib -o -name tkinter -o -name turtledemo \
           -o -name ensurepip -o -name pydoc_data -o -name lib2to3 -o -name 'config-*' \
           -o -name venv -o -name sqlite3 -o -name curses -o -name dbm -o -name xmlrpc \
           -o -name wsgiref -o -name dist-packages -o -name lib-dynload \) -prune -o
    # stdlib scripts with a "#!/usr/local/bin/python" line (cgi.py ...) are no programs
    # here: without their x bit dracut does not try to install that interpreter
    find "$initdir$pylib" -name '*.py' -perm /111 -exec chmod a-x {} +
    # shellcheck disable=SC2046
    _fp_inst_libs $(find "$pylib/lib-dynload" -name '*.so' ! -name '*_test*' \
        ! -name '_tkinter*' ! -name '_curses*' ! -name '_sqlite3*' ! -name '_dbm*' \
        ! -name '_gdbm*')
    [ -d "/etc/${pylib##*/}" ] && inst_multiple -o $(find "/etc/${pylib##*/}" -type f)

    # -- bcc (Debian's python3-bpfcc) with libbcc; dracut-install resolves libLLVM,
    #    libclang-cpp, libelf ... as shared-library dependencies of libbcc
    _fp_copy /usr/lib/python3/dist-packages/bcc
    # shellcheck disable=SC2046
    # (bcc also dlopens librt.so.1; ctypes.util.find_library asks ldconfig)
    _fp_inst_libs $(for f in libbcc.so.0 libbcc_bpf.so.0 librt.so.1; do
        for d in $libdirs; do [ -e "$d/$f" ] && echo "$d/$f"; done
    done)
    # click and pyroute2 (+ pr2modules, its compatibility package, when present)
    for f in click pyroute2 pr2modules; do
        [ -d "/usr/lib/python3/dist-packages/$f" ] || continue
        _fp_copy "/usr/lib/python3/dist-packages/$f"
    done

    # -- the kernel header tree bcc compiles against: /lib/modules/$kernel/{build,source}
    #    (Debian splits it: build = linux-headers-*-amd64, generated headers and .config;
    #    source = linux-headers-*-common). Headers only, not the kbuild tooling.
    kbuild=$(readlink -f "/lib/modules/$kernel/build")
    ksrc=$(readlink -f "/lib/modules/$kernel/source")
    if [ -d "$kbuild/include" ]; then
        for k in "$kbuild" "$ksrc"; do
            [ -n "$k" ] && [ -d "$k" ] || continue
            [ -f "$k/.config" ] && inst_simple "$k/.config"
            _fp_copy "$k/include" \( -path "$k/include/drm" -o -path "$k/include/sound" \
                -o -path "$k/include/media" -o -path "$k/include/dt-bindings" \
                -o -path "$k/include/video" -o -path "$k/include/rdma" \
                -o -path "$k/include/scsi" \) -prune -o
            [ -d "$k/arch/x86/include" ] && _fp_copy "$k/arch/x86/include"
        done
        mkdir -p "$initdir/lib/modules/$kernel"
        ln -sfn "$kbuild" "$initdir/lib/modules/$kernel/build"
        [ -n "$ksrc" ] && [ -d "$ksrc" ] && ln -sfn "$ksrc" "$initdir/lib/modules/$kernel/source"
    else
        dwarn "footprint: no kernel headers at /lib/modules/$kernel/build: bcc will not compile"
    fi

    # -- footprint's code, if the build root has it (else a cpio appended at boot)
    if [ -f /opt/footprint/run.py ]; then
        _fp_copy /opt/footprint -name __pycache__ -prune -o
    fi

    # -- start, marks, units
    inst_multiple bash sh cat grep sed sleep mkdir ln cp rm kill setsid unshare modprobe mount \
        tail head tr date nsenter readlink ldconfig chroot chmod
    inst_script "$moddir/footprint-start.sh" /usr/lib/footprint/footprint-start
    inst_script "$moddir/footprint-mark.sh" /usr/lib/footprint/footprint-mark
    inst_script "$moddir/footprint-detach.sh" /usr/lib/footprint/footprint-detach
    inst_script "$moddir/footprint-ns.sh" /usr/lib/footprint/footprint-ns
    # python finds its sys.executable by looking up argv[0] in PATH: "@footprint" is there,
    # so the recorder can re-exec itself (its lean sampler) under that name
    mkdir -p "$initdir/usr/lib/footprint/bin"
    ln -sfn "$(readlink -f "$(command -v python3)")" "$initdir/usr/lib/footprint/bin/@footprint"
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
