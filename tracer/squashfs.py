"""squashfs's own memory: what the kernel's formula says a mount costs, and what each
squashfs mount of this machine is (compressor, block size, decompressors).

A squashfs mount holds, for its whole life (fs/squashfs/super.c squashfs_fill_super,
cache.c squashfs_cache_init, decompressor_{single,multi,multi_percpu}.c, *_wrapper.c):

- three caches of kmalloc'ed PAGE_SIZE buffers (kmalloc-4k objects, allocated by
  squashfs_cache_init): "metadata" SQUASHFS_CACHED_BLKS (8) × 8 KiB; "fragment"
  CONFIG_SQUASHFS_FRAGMENT_CACHE_SIZE (3) × block size (since 6.14 at most the image's
  fragment count, none without fragments); "data" (read_page) max-decompressors × block
  size (since 6.14 none when CONFIG_SQUASHFS_FILE_DIRECT);
- one decompressor state per decompressor: 1 (CONFIG_SQUASHFS_DECOMP_SINGLE), one per
  possible CPU (DECOMP_MULTI_PERCPU), or 1 at mount growing on demand to 2 × online CPUs
  (DECOMP_MULTI, which sizes the data cache for the maximum). Each state is, per
  compressor: xz — xz_dec_init(XZ_PREALLOC, dict): a vmalloc'ed dictionary of
  max(block size, 8 KiB) (lib/xz/xz_dec_lzma2.c) plus struct xz_dec_lzma2 (28 KiB,
  kmalloc'ed: a 32 KiB page block), struct xz_dec and the BCJ filter; zstd — one vmalloc
  of zstd_dstream_workspace_bound(max(block size, 8 KiB)) = sizeof(ZSTD_DCtx) + input
  block + output window (lib/zstd: zstd 1.4.10 up to 6.1, 1.5.x since 6.2, whose output
  buffer keeps a second block for split literals); zlib — one vmalloc of
  zlib_inflate_workspacesize(); lz4, lzo — two vmalloc'ed buffers of the block size.

Light on purpose (stdlib only): the lab builds its CPUs × block size × compressor table on
squashfs_prediction, and the report calls the rest.

Long because the formula and the facts of a mount it is applied to read best together
(one source for both the report and the lab).
"""

from __future__ import annotations

import gzip
import os
import re
import struct

PAGE_SIZE = 4096
METADATA_SIZE = 8192          # SQUASHFS_METADATA_SIZE
CACHED_BLKS = 8               # SQUASHFS_CACHED_BLKS
ZSTD_BLOCKSIZE_MAX = 128 * 1024
WILDCOPY_OVERLENGTH = 32

COMPRESSORS = {1: "zlib", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
MODES = ("single", "multi", "percpu")

# sizeof(ZSTD_DCtx) (ZSTD_estimateDCtxSize), read from the kernels' own BTF: Debian's
# 6.1.0-57 (zstd 1.4.10, a 128 KiB literal buffer inside) and 6.18 (zstd 1.5.7). The
# running kernel's BTF is read instead where it has the struct.
ZSTD_DCTX_SIZE = {(6, 1): 161480, (6, 18): 95960}
# struct sizes the xz state kmallocs (same in 6.1 and 6.18 BTF): xz_dec_lzma2 (28496 B:
# above the largest kmalloc cache, 8 KiB, so an order-3 page block), xz_dec (1232 B:
# kmalloc-2k), xz_dec_bcj (80 B: kmalloc-96), squashfs_xz (56 B: kmalloc-64).
XZ_KMALLOC = 32768 + 2048 + 96 + 64
INFLATE_WORKSPACE = 42312     # sizeof(struct inflate_workspace), 6.1 and 6.18


def _page_align(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


def _version(release: str | None) -> tuple:
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _running(kernel: str | None) -> bool:
    return kernel is None or kernel == os.uname().release


def _zstd_dctx(version: tuple, running: bool) -> int:
    if running:
        size = _btf_struct_size("ZSTD_DCtx_s")
        if size:
            return size
    return ZSTD_DCTX_SIZE[(6, 1)] if version < (6, 2) else ZSTD_DCTX_SIZE[(6, 18)]


def _btf_struct_size(name: str) -> int | None:
    try:
        from .btf import Btf
        return Btf.load().struct_size(name)
    except Exception:  # no BTF, or no such struct: the table stands in
        return None


def workspace_bytes(compressor: str, block_size: int, kernel: str | None = None,
                    dict_size: int | None = None) -> dict[str, int]:
    """One decompressor's state: {"vmalloc": bytes, "kmalloc": bytes} as the kernel
    allocates them (vmalloc rounded to pages, kmalloc to its size class) for `kernel`
    (a release string; None: the running one). `dict_size`: an xz image's dictionary
    when its compression options name one (else the block size, mksquashfs' default)."""
    version = _version(kernel)
    window = max(block_size, METADATA_SIZE)
    if compressor == "xz":
        return {"vmalloc": _page_align(dict_size or window), "kmalloc": XZ_KMALLOC}
    if compressor == "zstd":
        block = min(window, ZSTD_BLOCKSIZE_MAX)
        split = 2 if version >= (6, 2) else 1  # zstd 1.5: room for split literals
        out = window + block * split + 2 * WILDCOPY_OVERLENGTH
        mem = _zstd_dctx(version, _running(kernel)) + block + out
        return {"vmalloc": _page_align(mem), "kmalloc": 32}
    if compressor == "zlib":
        return {"vmalloc": _page_align(INFLATE_WORKSPACE), "kmalloc": 128}
    if compressor in ("lz4", "lzo"):
        return {"vmalloc": 2 * _page_align(window), "kmalloc": 32}
    raise ValueError(f"unknown squashfs compressor {compressor!r}: one of xz, zstd, zlib, lz4, lzo")


def squashfs_prediction(compressor: str, block_size: int, ncpus: int, decomp_mode: str, *,
                        kernel: str | None = None, fragments: int | None = None,
                        file_cache: bool | None = None,
                        fragment_cache_size: int | None = None,
                        dict_size: int | None = None) -> dict[str, int]:
    """What one squashfs mount holds for its life by the kernel's own formula (module
    docstring; fs/squashfs of 6.1 and 6.18, the 6.14 changes included), in bytes.

    compressor: xz, zstd, zlib, lz4 or lzo; block_size: the image's (4 KiB..1 MiB);
    ncpus: possible CPUs for decomp_mode "percpu", online CPUs for "multi" (unused for
    "single"); decomp_mode: "single", "multi" or "percpu" (decompressor_mode() reads the
    kernel's). kernel: the release the formula is for (None: the running kernel, whose
    config and BTF are then read); fragments: the image's fragment count (None: at least
    3); file_cache: CONFIG_SQUASHFS_FILE_CACHE (None: the running kernel's, else
    Kconfig's default, yes); fragment_cache_size: CONFIG_SQUASHFS_FRAGMENT_CACHE_SIZE
    (None: the running kernel's, else 3).

    Returns bytes: metadata_cache, fragment_cache, data_cache, caches (their sum, the
    kmalloc-4k buffers), workspace_vmalloc and workspace_kmalloc (one decompressor),
    workspaces (all decompressors at mount), total; and two counts: decompressors (at
    mount) and decompressors_max."""
    if decomp_mode not in MODES:
        raise ValueError(f"unknown decompressor mode {decomp_mode!r}: one of {', '.join(MODES)}")
    if block_size < PAGE_SIZE or block_size > (1 << 20) or block_size & (block_size - 1):
        raise ValueError(f"squashfs block size {block_size} is not a power of two in 4 KiB..1 MiB")
    ncpus = max(1, int(ncpus))
    version = _version(kernel)
    running = _running(kernel)
    config = kernel_config() if running else {}
    if file_cache is None:
        file_cache = config.get("CONFIG_SQUASHFS_FILE_DIRECT") != "y"
    if fragment_cache_size is None:
        fragment_cache_size = int(config.get("CONFIG_SQUASHFS_FRAGMENT_CACHE_SIZE", 3))

    max_decomp = {"single": 1, "multi": 2 * ncpus, "percpu": ncpus}[decomp_mode]
    at_mount = {"single": 1, "multi": 1, "percpu": ncpus}[decomp_mode]
    pages = max(block_size // PAGE_SIZE, 1) * PAGE_SIZE  # a cache entry: whole pages

    frag_entries = fragment_cache_size
    if version >= (6, 14) and fragments is not None:
        frag_entries = min(fragment_cache_size, fragments)
    if fragments == 0:
        frag_entries = 0
    data_entries = max_decomp if (version < (6, 14) or file_cache) else 0

    ws = workspace_bytes(compressor, block_size, kernel, dict_size)
    out = {
        "metadata_cache": CACHED_BLKS * METADATA_SIZE,
        "fragment_cache": frag_entries * pages,
        "data_cache": data_entries * pages,
        "workspace_vmalloc": ws["vmalloc"],
        "workspace_kmalloc": ws["kmalloc"],
        "decompressors": at_mount,
        "decompressors_max": max_decomp,
    }
    out["caches"] = out["metadata_cache"] + out["fragment_cache"] + out["data_cache"]
    out["workspaces"] = at_mount * (ws["vmalloc"] + ws["kmalloc"])
    out["total"] = out["caches"] + out["workspaces"]
    return out


# --- the running kernel ------------------------------------------------------------------

_CONFIGS: dict[str, dict[str, str]] = {}

def kernel_config(release: str | None = None) -> dict[str, str]:
    """The kernel's build config as {CONFIG_X: value}: /proc/config.gz (CONFIG_IKCONFIG_PROC)
    for the running kernel, else /boot/config-<release> or /lib/modules/<release>/config;
    {} when none is readable."""
    release = release or os.uname().release
    if release in _CONFIGS:
        return _CONFIGS[release]
    paths = ["/boot/config-" + release, "/lib/modules/%s/config" % release]
    if release == os.uname().release:
        paths.insert(0, "/proc/config.gz")
    for path in paths:
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt", errors="replace") as f:
                text = f.read(4 << 20)
        except OSError:
            continue
        out = {}
        for line in text.splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                key, _, val = line.partition("=")
                out[key] = val.strip('"')
        _CONFIGS[release] = out  # kept once read (absent in an initramfs: asked again)
        return out
    return {}


def decompressor_mode(config: dict[str, str] | None = None) -> str | None:
    """"single", "multi" or "percpu": the kernel's default squashfs decompressor mode from
    its config (CONFIG_SQUASHFS_DECOMP_*; a mount may choose another with threads= where
    CONFIG_SQUASHFS_CHOICE_DECOMP_BY_MOUNT, 6.2+), or None when the config is unknown."""
    config = kernel_config() if config is None else config
    for mode, key in (("percpu", "CONFIG_SQUASHFS_DECOMP_MULTI_PERCPU"),
                      ("multi", "CONFIG_SQUASHFS_DECOMP_MULTI"),
                      ("single", "CONFIG_SQUASHFS_DECOMP_SINGLE")):
        if config.get(key) == "y":
            return mode
    return None


def mount_mode(options: str, default: str | None) -> str | None:
    """The decompressor mode a mount runs with: its `threads=` option where the kernel
    shows one (6.2+: single, multi, percpu or a number, which is multi), else `default`."""
    m = re.search(r"(?:^|,)threads=([^,]+)", options or "")
    if not m:
        return default
    val = m.group(1)
    if val in MODES:
        return val
    return "single" if val == "1" else "multi"


_SUPER = struct.Struct("<IIIIIHHHHHH")  # magic, inodes, mkfs_time, block_size, fragments,
#                                        compression, block_log, flags, no_ids, s_major, s_minor
SQUASHFS_MAGIC = 0x73717368
_COMP_OPT = 0x0400  # SQUASHFS_COMP_OPT: compressor options follow the superblock


def read_superblock(path: str) -> dict[str, object] | None:
    """The few fields of a squashfs superblock (fs/squashfs/squashfs_fs.h) that size its
    memory, read from a file (a loop device's backing file) or an image: compressor, block
    size, fragment count, and an xz dictionary size from the compression options. None
    when `path` holds no squashfs 4.x. Reads 116 bytes, nothing else."""
    try:
        with open(path, "rb") as f:
            head = f.read(96 + 2 + 8)
    except OSError:
        return None
    if len(head) < 96:
        return None
    (magic, inodes, _mtime, block_size, fragments, comp, block_log, flags, _ids,
     major, _minor) = _SUPER.unpack_from(head)
    if magic != SQUASHFS_MAGIC or major != 4 or not 12 <= block_log <= 20 \
            or block_size != 1 << block_log:
        return None
    out: dict[str, object] = {"compressor": COMPRESSORS.get(comp, f"id {comp}"),
                              "block_size": block_size, "fragments": fragments,
                              "inodes": inodes}
    if flags & _COMP_OPT and COMPRESSORS.get(comp) == "xz" and len(head) >= 106:
        # A metadata block: a 2-byte header (uncompressed bit 0x8000), then
        # struct disk_comp_opts {le32 dictionary_size; le32 flags}.
        (hdr,) = struct.unpack_from("<H", head, 96)
        if hdr & 0x8000 and (hdr & 0x7FFF) >= 8:
            (out["dict_size"],) = struct.unpack_from("<I", head, 98)
    return out


# --- the mounts of this machine, and the account's view of them --------------------------

def _cpus(path: str) -> int | None:
    """CPUs in a sysfs list such as "0-3,8" (/sys/devices/system/cpu/possible)."""
    try:
        with open(path) as f:
            text = f.read(4096).strip()
    except OSError:
        return None
    n = 0
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        n += int(hi or lo) - int(lo) + 1
    return n or None


def mounts(proc: str = "/proc", sys: str = "/sys", unmounted_loops=()) -> list:
    """One dict per squashfs mount: dev ("major:minor"), mountpoint, source, options, the
    decompressor mode it runs with, CPUs possible and online, the kernel release and, where
    the device is a loop device, the image's compressor, block size, fragment count and
    xz dictionary (read_superblock of its backing file: no block device is opened).

    `unmounted_loops`: loop devices ("maj:min") the topology knows hold a squashfs that
    no mount shows — dracut's dmsquash-live lazily unmounts its squashfs once rootfs.img
    is on its loop (the superblock, its caches and decompressors live on). Each gets a
    dict with mountpoint None, where its backing file holds a squashfs."""
    try:
        with open(f"{proc}/self/mountinfo", errors="replace") as f:
            lines = f.read(4 << 20).splitlines()
    except OSError:
        return []
    config = kernel_config()
    default = decompressor_mode(config)
    common = {"kernel": os.uname().release,
              "cpus_possible": _cpus(f"{sys}/devices/system/cpu/possible"),
              "cpus_online": _cpus(f"{sys}/devices/system/cpu/online"),
              "file_cache": config.get("CONFIG_SQUASHFS_FILE_DIRECT") != "y" if config else None}
    out = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if not sep or len(fields) < 5 or len(rfields) < 3 or rfields[0] != "squashfs":
            continue
        dev, mountpoint, source, options = fields[2], fields[4], rfields[1], rfields[2]
        m = {"dev": dev, "mountpoint": mountpoint, "source": source,
             "mode": mount_mode(options, default), **common}
        m.update(_loop_image(sys, dev))
        out.append(m)
    seen = {m["dev"] for m in out}
    for dev in sorted(set(unmounted_loops) - seen)[:64]:
        image = _loop_image(sys, dev)
        if image.get("compressor"):  # its backing file is a squashfs
            out.append({"dev": dev, "mountpoint": None, "source": f"loop {dev}",
                        "mode": default, **common, **image})
    return out


def _loop_image(sys: str, dev: str) -> dict:
    """The backing file of loop device `dev` and its superblock's fields; {} for another
    device or a loop with an offset (a partition inside the image)."""
    major, _, minor = dev.partition(":")
    base = f"{sys}/dev/block/{major}:{minor}/loop"
    try:
        with open(f"{base}/backing_file", errors="replace") as f:
            backing = f.read(4096).strip()
        with open(f"{base}/offset") as f:
            offset = int(f.read(64).strip() or 0)
    except (OSError, ValueError):
        return {}
    if not backing or offset != 0:
        return {}
    return {"backing_file": backing, **(read_superblock(backing) or {})}


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 40


def valid_mount(m) -> bool:
    """Whether a mount dict read back from a recording is well formed (data, bounded)."""
    if not isinstance(m, dict) or len(m) > 32:
        return False
    for key in ("dev", "mountpoint", "source", "mode", "kernel", "compressor", "backing_file"):
        if key in m and not (m[key] is None or (isinstance(m[key], str) and len(m[key]) < 4096)):
            return False
    for key in ("block_size", "fragments", "dict_size", "inodes", "cpus_possible", "cpus_online"):
        if key in m and not (m[key] is None or _count(m[key])):
            return False
    return True


def predict_mount(m: dict) -> dict[str, int] | None:
    """squashfs_prediction for one mount dict (mounts()), None when its compressor, block
    size or mode is unknown."""
    mode, comp, block = m.get("mode"), m.get("compressor"), m.get("block_size")
    if mode not in MODES or comp not in ("xz", "zstd", "zlib", "lz4", "lzo") or not block:
        return None
    ncpus = m.get("cpus_possible") if mode == "percpu" else m.get("cpus_online")
    try:
        return squashfs_prediction(comp, block, ncpus or 1, mode, kernel=m.get("kernel"),
                                   fragments=m.get("fragments"), file_cache=m.get("file_cache"),
                                   dict_size=m.get("dict_size"))
    except ValueError:
        return None


def explain(mounts_: list, traced_caches: int, traced_workspaces: int) -> dict:
    """Each mount with its prediction, and the sum predicted beside what was traced:
    traced_caches (bytes of squashfs_cache_init's kmalloc objects), traced_workspaces
    (bytes of vmalloc charged to squashfs). Traced bytes cover what was allocated while
    recording (vmalloc: all resident areas)."""
    rows, caches, workspaces = [], 0, 0
    for m in mounts_:
        p = predict_mount(m)
        rows.append({**m, "predicted": p})
        if p:
            caches += p["caches"]
            workspaces += p["decompressors"] * p["workspace_vmalloc"]
    return {"mounts": rows, "predicted_caches": caches, "predicted_workspaces": workspaces,
            "traced_caches": traced_caches, "traced_workspaces": traced_workspaces}


def describe(view: dict) -> list:
    """Lines for the report: each mount's decompressors, block size and the memory the
    kernel's formula gives it, then predicted against traced."""
    out = []
    for m in view.get("mounts", []):
        p = m.get("predicted")
        what = (f"{m.get('compressor') or '?'}, {(m.get('block_size') or 0) // 1024} KiB blocks, "
                f"decompressors {m.get('mode') or '?'}")
        if not p:
            out.append(f"squashfs {_where(m)}: {what}; image not "
                       "readable (not on a loop device): no prediction")
            continue
        out.append(
            f"squashfs {_where(m)}: {what} × {p['decompressors']}"
            f" (max {p['decompressors_max']}): workspaces {p['workspaces'] / 2**20:.2f} MiB, caches"
            f" {p['caches'] / 2**20:.2f} MiB (fragment {p['fragment_cache'] / 2**20:.2f}, data "
            f"{p['data_cache'] / 2**20:.2f}, metadata {p['metadata_cache'] / 2**20:.2f})")
    if view.get("mounts"):
        out.append(f"squashfs formula for {len(view['mounts'])} mount(s): caches "
                   f"{view['predicted_caches'] / 2**20:.2f} MiB (traced "
                   f"{view['traced_caches'] / 2**20:.2f}), decompressor vmalloc "
                   f"{view['predicted_workspaces'] / 2**20:.2f} MiB (traced "
                   f"{view['traced_workspaces'] / 2**20:.2f})")
    return out


def _where(m: dict) -> str:
    if m.get("mountpoint") is None:  # lazily unmounted: the superblock lives on
        return f"on {m.get('source')} (no mount: lazily unmounted)"
    return f"{m.get('mountpoint')} ({m.get('source')})"
