"""The guest laboratory: Debian guests built once, booted under QEMU, driven by an agent.

Public API (what the rest of footprint calls):

    from vm import prepare, Guest, code_cpio, code_disk, VARIANTS

    spec = prepare("live")                       # builds what is missing, returns a BootSpec
                                                 # (or: with guest("live") as g: ...)
    with Guest(spec, memory=2048) as g:          # boots; always cleans up (qemu, temp files)
        g.wait_ready(300)                        # the guest agent answers
        g.wait_system(300)                       # `systemctl is-system-running --wait`
        rc, out, err = g.run("dmsetup table", timeout=30)
        data = g.get_file("/proc/meminfo")       # bytes (and written to host_path if given)
        g.shutdown()

    code_cpio()   -> Path of a newc cpio putting footprint's code at /opt/footprint
    code_disk()   -> Path of a small ext4 image (label FPCODE) with the same tree

Everything the user can fix raises tracer.errors.FootprintError with a one-line message.
"""

from .images import VARIANTS, BootSpec, prepare, variant_names  # noqa: F401
from .code import code_cpio, code_disk, code_tree  # noqa: F401
from .qemu import Guest, GuestError, guest, terminate_as_interrupt  # noqa: F401
from .experiment import collect, run_experiment  # noqa: F401
from . import livebuild  # noqa: F401,E402  registers the livebuild image kind in images
