"""`footprint experiment`: the lab's command, added to footprint through the
"footprint.commands" entry point (pyproject.toml), so that the product (tracer/) never
imports the lab."""

from __future__ import annotations

import click


@click.command()
@click.option("--variants", default="plain,live", show_default=True,
              help="Boots to measure, comma-separated, or 'all': plain, live, live-ram, "
                   "live-overlayfs, live-direct, livebuild; the squashfs matrix: live-zstd, "
                   "live-1m, live-zstd-1m.")
@click.option("--memory", type=int, default=2048, show_default=True, metavar="MIB",
              help="Guest RAM in MiB.")
@click.option("--smp", type=int, default=2, show_default=True, metavar="N",
              help="Guest CPUs (QEMU -smp; the guest's possible CPUs follow, and with them "
                   "squashfs's per-CPU decompressors).")
@click.option("--timeout", type=click.FloatRange(min=30), default=1200, show_default=True,
              help="Hard time limit per boot, seconds (QEMU is killed after it).")
@click.option("--settle", type=click.FloatRange(min=0), default=5, show_default=True,
              help="Seconds to wait after multi-user before measuring.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Image cache (default: $FOOTPRINT_CACHE or /var/cache/footprint).")
@click.option("--keep-logs", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Keep each boot's serial console log in DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--full", is_flag=True,
              help="Print every table (by default: one screen with the answer).")
@click.option("--untraced", is_flag=True,
              help="Boot without footprint in the initramfs (plain measurements); by default "
                   "each boot is traced from the initramfs on and gains account and phases.")
@click.option("--workload", "workloads", default="all", show_default=True,
              help="Moments to measure each boot at, comma-separated: after-boot, after-read "
                   "(cold read of --workload-mib MiB of /usr/bin and /usr/lib after dropping "
                   "caches), after-write (write that much to a file on /, sync, drop caches).")
@click.option("--workload-mib", type=int, default=None, metavar="N",
              help="MiB read and written by the workloads  [default: 128]")
@click.option("--out", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write recordings, experiment.json, side-by-side.csv, report.html and "
                   "plot.png here (default: a timestamped directory under the cache).")
def experiment(variants, memory, smp, timeout, settle, cache_dir, keep_logs, as_json, full, untraced,
               workloads, workload_mib, out):
    """Boot Debian guests (plain disk vs live ISO) under QEMU and redo the 2014 measurement:
    live vs plain side by side at each moment, the answer, the boots ranked."""
    from vm.experiment import main_cli

    main_cli(variants, memory, timeout, cache_dir, keep_logs, as_json, settle,
             traced=not untraced, workloads=workloads, workload_mib=workload_mib, out=out, full=full, smp=smp)
