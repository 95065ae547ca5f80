"""Where footprint's BPF files are (the checkout's bpf/, else the wheel's tracer/bpf/) and
the kernel's BTF that the CO-RE objects need.

Apart from the loader so that the sampler, which loads the kernel baseline's object
after the attach, does not import the loader's planning (and dataclasses with it).
"""

from __future__ import annotations

import os

KERNEL_BTF = "/sys/kernel/btf/vmlinux"


def bpf_file(name: str) -> str:
    """A file of bpf/: the checkout's (tracer/../bpf), else the wheel's (tracer/bpf).
    The checkout is looked at first because an editable install maps tracer.bpf to the
    tree it was installed from, which need not be this one."""
    here = os.path.dirname(os.path.realpath(__file__))
    for path in (os.path.join(os.path.dirname(here), "bpf", name),  # a checkout's
                 os.path.join(here, "bpf", name)):  # the package's, installed from a wheel
        if os.path.exists(path):
            return path
    from importlib import resources  # an install that is not a directory tree (a zip)
    return str(resources.files("tracer.bpf").joinpath(name))
