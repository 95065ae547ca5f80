"""The subcommands, kept thin: each parses options and calls into the package. They
are gathered in `group`; tracer/cli.py adds them to the `footprint` command."""

from __future__ import annotations

import click

group = click.Group("commands")


def _sizes(files, stacks, objs):
    from .loader import MapSizes

    return MapSizes(files=files or 0, stacks=stacks, objs=objs or 0)


class _Seconds(click.ParamType):
    """A finite number of seconds, at least `least` (and above 0): click's FloatRange lets
    nan and inf through, and -d 0 would mean "forever"."""

    name = "seconds"

    def __init__(self, least: float = 0.0):
        self.least = least

    def convert(self, value, param, ctx):
        import math

        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0 or seconds < self.least:
            bound = f"at least {self.least:g}" if self.least > 0 else "above 0"
            self.fail(f"expected a finite number of seconds {bound}, got {value}", param, ctx)
        return seconds


@group.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Recording to write (JSON Lines, mode 0600).")
@click.option("-d", "--duration", type=_Seconds(), default=None,
              help="Seconds to record; default: until Ctrl-C / SIGTERM.")
@click.option("-i", "--interval", type=_Seconds(0.05), default=1.0, show_default=True,
              help="Seconds between samples of the in-kernel account.")
@click.option("--baseline", "baseline", type=click.Choice(["auto", "kernel", "walk", "none"]),
              default="auto", show_default=True,
              help="Pages already resident at attach time: the kernel's own per-inode counts "
                   "(kernel: a BPF iterator, needs BTF and 5.17+), a timed walk of paths (walk), "
                   "or none; auto is kernel where it runs, else walk.")
@click.option("--no-inventory", is_flag=True,
              help="Skip the baseline of pages already resident at attach time (--baseline none).")
@click.option("--inventory-seconds", type=_Seconds(0.1), default=10.0, show_default=True,
              help="Time budget of the baseline walk over the stack's file systems.")
@click.option("--slab", type=click.Choice(["off", "kmalloc", "all"]), default="kmalloc",
              show_default=True, help="Which slab objects to follow by address.")
@click.option("--kernel-headers", type=click.Path(file_okay=False), default=None,
              help="Kernel header tree for bcc (default: the kernel's own, else the cached one).")
@click.option("--marks", default="/run/footprint/marks", show_default=True,
              help="File of phase marks to follow (lines 'BOOTTIME NAME').")
@click.option("--stop-file", default=None, help="Stop when this file appears.")
@click.option("--max-files", type=click.IntRange(min=64), default=None,
              help="Files with page cache followed (default: 1.5 times those with page cache at attach, plus 8192).")
@click.option("--max-stacks", type=click.IntRange(min=64, max=32768), default=16384, show_default=True,
              help="Distinct kernel stacks of page allocations (two stack maps of half each; "
                   "at most 32768: a kernel page's stack id is kept in 16 bits).")
@click.option("--max-objects", type=click.IntRange(min=64), default=None,
              help="Live slab objects followed (default: 16384; 65536 with --slab all).")
@click.option("--pin", is_flag=True,
              help="Pin the programs and maps in bpffs (libbpf): the account goes on after the "
                   "recorder exits; `footprint report --pinned` reads it, `footprint unpin` ends it.")
@click.option("--no-exec", is_flag=True,
              help="Keep sampling in this process (default: exec into a lean sampler without "
                   "bcc/LLVM once attached).")
@click.option("--ebpf", is_flag=True, help="Print the BPF program for this kernel and exit.")
@click.option("--loader", "loader_name", type=click.Choice(["auto", "libbpf", "bcc"]), default="auto",
              show_default=True, help="libbpf: the CO-RE object built ahead of time (needs BTF); "
                                      "bcc: compile at attach time; auto: libbpf where it can.")
@click.option("--programs", type=click.Choice(["auto", "tp_btf", "tracepoint"]), default="auto",
              show_default=True, help="What the hot events (page cache, pages, kmalloc) run as "
              "under libbpf: tp_btf (raw tracepoints typed by BTF: skipped only when they nest "
              "in themselves) or classic tracepoints; auto: tp_btf where it works.")
def record(output, duration, interval, baseline, no_inventory, inventory_seconds, slab, kernel_headers, marks, stop_file,
           max_files, max_stacks, max_objects, pin, no_exec, ebpf, loader_name, programs):
    """Trace page cache, kernel pages and slab objects into a recording."""
    from . import loader, recorder

    sizes = _sizes(max_files, max_stacks, max_objects)
    if no_inventory:
        if baseline not in ("auto", "none"):
            from .errors import FootprintError

            raise FootprintError(f"--no-inventory contradicts --baseline {baseline}: give one of them")
        baseline = "none"
    if ebpf:
        p = loader.plan(sizes=sizes, kernel_headers=kernel_headers, slab=slab)
        click.echo("\n".join(f"#define {f[2:].replace('=', ' ', 1)}" for f in p.cflags()))
        click.echo(loader.bpf_source())
        return
    reason = recorder.record(recorder.Options(
        output=output, duration=duration, interval=interval, inventory=baseline != "none",
        inventory_seconds=inventory_seconds, baseline=baseline,
        marks=marks, stop_file=stop_file, slab=slab, kernel_headers=kernel_headers,
        sizes=sizes, exec=not no_exec, loader=loader_name, pin=pin, programs=programs))
    click.echo(f"footprint: recording {output} written ({reason})", err=True)


@group.command()
@click.argument("name")
@click.option("--marks", default="/run/footprint/marks", show_default=True)
def mark(name, marks):
    """Put a phase mark on the running recording's timeline (refused when none runs)."""
    from . import marks as marks_mod

    marks_mod.append(marks, name)


DEFAULT_RECORDING = "/run/footprint/recording.jsonl"


@group.command()
def unpin():
    """Remove the account pinned by `footprint record --pin` (its programs detach)."""
    from . import pinned
    from .errors import require_root

    require_root("removing the pinned account")
    click.echo(f"footprint: {pinned.unpin()}", err=True)


@group.command()
@click.argument("recording", required=False, default=DEFAULT_RECORDING)
@click.option("--by", type=click.Choice(["subsystem", "layer", "file", "kind"]), default="layer",
              show_default=True, help="How to group the account.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--csv", "as_csv", is_flag=True, help="The table as CSV on stdout.")
@click.option("--parquet", type=click.Path(dir_okay=False), default=None,
              help="Write the account rows to this Parquet file.")
@click.option("--at", "index", type=int, default=-1, show_default=True,
              help="Which sample (0 = first, -1 = last).")
@click.option("--all", "all_rows", is_flag=True,
              help="Every row (by default rows under 1 MiB are summed on one line).")
@click.option("--pinned", is_flag=True,
              help="The account pinned by `record --pin`, read now (RECORDING is not used).")
def report(recording, by, as_json, as_csv, parquet, index, all_rows, pinned):
    """Print the account of a recording: where the memory went."""
    from . import report as rep

    if pinned:
        from .errors import require_root
        from .snapshot import snapshot

        require_root("reading the pinned account")
        recording = snapshot()
    rec, acc = _load_account(recording, index)
    if parquet:
        import io

        from . import outfile

        buf = io.BytesIO()  # pandas writes here; outfile puts it in place atomically, 0600
        try:
            (acc.files if by == "file" else acc.rows).to_parquet(buf, index=False)
        except ImportError:
            from .errors import FootprintError

            raise FootprintError("Parquet needs pyarrow: pip install pyarrow") from None
        outfile.write(parquet, buf.getvalue())
    if as_json:
        click.echo(rep.dumps_json(rep.to_json(rec, acc, by=by)))
    elif as_csv:
        click.echo(rep.to_csv(acc, by), nl=False)
    elif not parquet:
        click.echo(rep.text(rec, acc, by=by, all_rows=all_rows), nl=False)


@group.command()
@click.option("--json", "as_json", is_flag=True)
def topology(as_json):
    """Show the storage stack: mounts, loop and dm devices, what backs what."""
    from . import report as rep
    from .topology import double_caching, layer_of, layer_role, read_topology, resolve

    topo = read_topology()
    if as_json:
        click.echo(rep.dumps_json(topo.to_dict()))
        return
    for m in topo.mounts:
        # Overlays (a live or container root) and their layers (a tmpfs upper) are part
        # of the storage stack though no block device is under them.
        if topo.device(m["dev"]) is None and m["fstype"] not in (
                "squashfs", "iso9660", "ramfs", "rootfs", "overlay") \
                and not layer_role(topo.mounts, m["dev"]):
            continue
        click.echo(f"{rep.inert(m['mountpoint']):<30} {rep.inert(layer_of(topo, m['dev']))}")
        chain = resolve(topo, m["dev"], 0)["chain"]
        for layer in chain[1:]:
            click.echo(f"{'':<30} {'  ' * layer.get('depth', 0)}└ {rep.inert(layer['label'])}")
    chains = double_caching(topo)
    if chains:
        click.echo("\ndata that can be cached at several layers:")
        for ch in chains:
            click.echo(f"  {rep.inert(ch['label'])}")


# --- comparing, answering, timelines, HTML (recordings only; the recorder imports none of it)


def _load_account(path: str, index: int = -1):
    """The recording at `path` and its account at sample `index`, or a one-line error."""
    from . import account, recording as rec_mod
    from .errors import FootprintError

    rec = rec_mod.read(path)
    if not rec.samples:
        raise FootprintError(f"recording {path} holds no sample yet: record for at least one interval")
    if not -len(rec.samples) <= index < len(rec.samples):
        raise FootprintError(f"--at {index} is out of range: {path} has {len(rec.samples)} samples")
    return rec, account.build(rec, index)


@group.command()
@click.argument("recording_a", metavar="A")
@click.argument("recording_b", metavar="B")
@click.option("--by", type=click.Choice(["subsystem", "layer"]), default="subsystem",
              show_default=True, help="Compare per subsystem or per storage layer.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--csv", "as_csv", is_flag=True, help="The rows as CSV on stdout.")
@click.option("--at-a", type=int, default=-1, show_default=True, help="Sample of A (-1 = last).")
@click.option("--at-b", type=int, default=-1, show_default=True, help="Sample of B (-1 = last).")
@click.option("--all", "all_rows", is_flag=True,
              help="Every row (by default differences under 1 MiB are summed on one line).")
def compare(recording_a, recording_b, by, as_json, as_csv, at_a, at_b, all_rows):
    """Two recordings side by side (e.g. A plain disk, B live): MiB of A, of B, and B - A."""
    from . import compare as cmp_mod, report as rep

    rec_a, acc_a = _load_account(recording_a, at_a)
    rec_b, acc_b = _load_account(recording_b, at_b)
    result = cmp_mod.compare(acc_a, acc_b, by=by, rec_a=rec_a, rec_b=rec_b)
    if as_json:
        click.echo(rep.dumps_json(result))
    elif as_csv:
        click.echo(cmp_mod.to_csv(result), nl=False)
    else:
        click.echo(cmp_mod.text(result, all_rows=all_rows), nl=False)


@group.command()
@click.argument("recording")
@click.argument("plain", required=False, default=None)
@click.option("--json", "as_json", is_flag=True, help="The numbers behind the answer, as JSON.")
@click.option("--at", "index", type=int, default=-1, show_default=True,
              help="Which sample of RECORDING (-1 = last).")
def answer(recording, plain, as_json, index):
    """How many pages the storage stack claims (squashfs, device-mapper, loop, iso9660 …),
    and of what; optionally against PLAIN (another recording, e.g. of a plain disk)."""
    import os
    import textwrap

    from . import answer as ans_mod, report as rep

    _rec, acc = _load_account(recording, index)
    acc_plain = _load_account(plain)[1] if plain else None
    result = ans_mod.answer(acc, acc_plain, against=os.path.basename(plain) if plain else "")
    if as_json:
        click.echo(rep.dumps_json(result))
    else:
        click.echo(textwrap.fill(result["paragraph"], width=100))


@group.command("html")
@click.argument("recording")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (one self-contained file, opens offline).")
@click.option("--compare", "plain", default=None, type=click.Path(dir_okay=False),
              help="A plain-disk recording to compare against.")
@click.option("--png", default=None, type=click.Path(dir_okay=False),
              help="Also write the timeline plot to this PNG file.")
@click.option("--at", "index", type=int, default=-1, show_default=True,
              help="Which sample the account is taken at (-1 = last).")
def html_report(recording, output, plain, png, index):
    """Write the report as one HTML file: the answer as a picture of the storage chain, an
    interactive timeline, the account's tables."""
    from . import outfile, render_html

    rec, acc = _load_account(recording, index)
    plain_pair = _load_account(plain) if plain else None
    page = render_html.render(rec, acc, plain=plain_pair)
    # both or neither: a bad --png path must not leave a fresh HTML behind
    outfile.write_all([(output, page.encode("utf-8"))] + ([(png, render_html.plot_png(rec))] if png else []))
    click.echo(f"footprint: wrote {output}" + (f" and {png}" if png else ""), err=True)


@group.command("timeline")
@click.argument("recording")
@click.option("--json", "as_json", is_flag=True, help="Rows as JSON (with the phases).")
@click.option("--png", default=None, type=click.Path(dir_okay=False), help="Write the plot here.")
@click.option("--since-start", is_flag=True, help="Seconds since the first sample, not since boot.")
def timeline_cmd(recording, as_json, png, since_start):
    """Resident MiB per subsystem at every sample (CSV), with the phase marks."""
    import io

    from . import outfile, recording as rec_mod, report as rep, timeline

    frame = timeline.build(rec_mod.read(recording), origin="start" if since_start else "boot")
    if png:
        buf = io.BytesIO()
        timeline.plot(frame, buf, fmt="png")
        outfile.write(png, buf.getvalue())
    if as_json:
        click.echo(rep.dumps_json({"origin": frame.attrs["origin"], "phases": frame.attrs["phases"],
                                   "rows": rep.records(frame)}))
    elif not png:
        from .safe import to_csv

        click.echo(to_csv(frame), nl=False)


@group.group()
def dracut():
    """Install footprint's dracut module (dracut --add footprint, boot with rd.footprint=1)."""


@dracut.command("install")
@click.option("--root", type=click.Path(file_okay=False, exists=True), default="/", show_default=True,
              help="System tree to install into (an image's root, or / for this machine).")
@click.option("--force", is_flag=True, help="Replace a different module of the same name.")
def dracut_install(root, force):
    """Copy the module into the directory dracut takes modules from."""
    from pathlib import Path

    from . import dracut as mod

    dest = mod.install(Path(root), force=force)
    click.echo(f"installed {dest}")
    click.echo("next: dracut --force --add footprint   (rebuilds the initramfs; not done for you)")
    click.echo("then boot with rd.footprint=1; after boot: footprint report")


@dracut.command("uninstall")
@click.option("--root", type=click.Path(file_okay=False, exists=True), default="/", show_default=True)
def dracut_uninstall(root):
    """Remove the module (initramfs images already built keep their copy)."""
    from pathlib import Path

    from . import dracut as mod

    dest = mod.uninstall(Path(root))
    click.echo(f"removed {dest}" if dest else "footprint's dracut module was not installed")
