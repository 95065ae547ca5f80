"""The subcommands, kept thin: each parses options and calls into the package."""

from __future__ import annotations

import click

from .cli import main


def _sizes(files, stacks, objs):
    from .loader import MapSizes

    return MapSizes(files=files, stacks=stacks, objs=objs)


@main.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Recording to write (JSON Lines, mode 0600).")
@click.option("-d", "--duration", type=click.FloatRange(min=0), default=None,
              help="Seconds to record; default: until Ctrl-C / SIGTERM.")
@click.option("-i", "--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between samples of the in-kernel account.")
@click.option("--no-inventory", is_flag=True,
              help="Skip the baseline of pages already resident at attach time.")
@click.option("--slab", type=click.Choice(["off", "kmalloc", "all"]), default="kmalloc",
              show_default=True, help="Which slab objects to follow by address.")
@click.option("--kernel-headers", type=click.Path(file_okay=False), default=None,
              help="Kernel header tree for bcc (default: the kernel's own, else the cached one).")
@click.option("--marks", default="/run/footprint/marks", show_default=True,
              help="File of phase marks to follow (lines 'BOOTTIME NAME').")
@click.option("--stop-file", default=None, help="Stop when this file appears.")
@click.option("--max-files", type=click.IntRange(min=64), default=65536, show_default=True)
@click.option("--max-stacks", type=click.IntRange(min=64), default=4096, show_default=True)
@click.option("--max-objects", type=click.IntRange(min=64), default=65536, show_default=True)
@click.option("--ebpf", is_flag=True, help="Print the BPF program for this kernel and exit.")
def record(output, duration, interval, no_inventory, slab, kernel_headers, marks, stop_file,
           max_files, max_stacks, max_objects, ebpf):
    """Trace page cache, kernel pages and slab objects into a recording."""
    from . import loader, recorder

    sizes = _sizes(max_files, max_stacks, max_objects)
    if ebpf:
        p = loader.plan(sizes=sizes, kernel_headers=kernel_headers, slab=slab)
        click.echo("\n".join(f"#define {f[2:].replace('=', ' ', 1)}" for f in p.cflags()))
        click.echo(loader.bpf_source())
        return
    reason = recorder.record(recorder.Options(
        output=output, duration=duration, interval=interval, inventory=not no_inventory,
        marks=marks, stop_file=stop_file, slab=slab, kernel_headers=kernel_headers,
        sizes=sizes))
    click.echo(f"footprint: recording {output} written ({reason})", err=True)


@main.command()
@click.argument("name")
@click.option("--marks", default="/run/footprint/marks", show_default=True)
def mark(name, marks):
    """Put a phase mark on the running recording's timeline."""
    import os
    import time

    os.makedirs(os.path.dirname(marks) or ".", exist_ok=True)
    line = f"{time.clock_gettime(time.CLOCK_BOOTTIME):.6f} {name}\n".encode()
    fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)  # one write with O_APPEND: concurrent marks do not interleave
    finally:
        os.close(fd)
