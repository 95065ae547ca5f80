"""The optional kprobe extras the program attaches beside its tracepoints.

shmem/tmpfs adds pages to the page cache through shmem_add_to_page_cache(), which has no
filemap tracepoint (mm/shmem.c calls no trace_mm_filemap_add_to_page_cache): a kprobe on
it reads the folio and mapping from the kernel's structs, at offsets the kernel's BTF
gives (bcc) or CO-RE relocates (libbpf). Absent kprobes, an inlined function or differing
structs leave the extra out, named in the plan's kprobes_missing.
"""

from __future__ import annotations

import os

from .errors import FootprintError


# Optional kprobe extras: function → what it adds. Attached only where kprobes exist and
# the kernel describes its structs in BTF (the fields they read, see shmem_offsets).
KPROBE_EXTRAS = {"shmem_add_to_page_cache": "tmpfs/shmem page-cache adds (no tracepoint)"}
# vmalloc areas by the stack that asked, where the kernel has no vmalloc tracepoints
# (before 6.3; Debian's 6.1): a return probe on __get_vm_area_node (mm/vmalloc.c, static
# and called from every vmalloc/vmap path on 6.1 and 6.18) reads the new vm_struct (CO-RE),
# a probe on remove_vm_area (vfree's, exported) takes the area off. libbpf only.
VMALLOC_KPROBES = {"__get_vm_area_node": "vmalloc areas by stack (no vmalloc tracepoints)",
                   "remove_vm_area": "vmalloc areas freed (no vmalloc tracepoints)"}
# Test hook: use the vmalloc kprobes even where the tracepoints exist (then not attached).
VMALLOC_KPROBE_ENV = "FOOTPRINT_VMALLOC_KPROBES"


def vmalloc_by_kprobe(tracefs: str) -> bool:
    """Whether vmalloc areas are followed by the kprobes (no vmalloc:alloc_vmap_area
    tracepoint here, or the test hook asks)."""
    return (os.environ.get(VMALLOC_KPROBE_ENV) == "1"
            or not os.path.exists(os.path.join(tracefs, "events", "vmalloc", "alloc_vmap_area")))


def _text_symbols(names) -> set:
    """Which of `names` /proc/kallsyms lists as text (t/T): a function kprobes can reach."""
    found = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tT" and parts[2] in names:
                    found.add(parts[2])
    except OSError:
        pass
    return found


def shmem_offsets(btf) -> dict[str, int]:
    """What kprobe__shmem_add_to_page_cache reads, from the kernel's own BTF; KeyError
    (saying what is missing) where the function or a field differs (older kernels pass
    a struct page; 6.1 keeps a folio's order in _folio_order, 6.18 in _flags_1's low byte)."""
    params = btf.func_params("shmem_add_to_page_cache")
    if params[:2] != ["struct folio *", "struct address_space *"]:
        raise KeyError(f"shmem_add_to_page_cache({', '.join(params[:2])}) is not (folio, mapping)")
    try:
        order = btf.member_offset("folio", "_folio_order")
    except KeyError:
        order = btf.member_offset("folio", "_flags_1")  # the order is its low byte
    return {"FP_OFF_MAPPING_HOST": btf.member_offset("address_space", "host"),
            "FP_OFF_INODE_INO": btf.member_offset("inode", "i_ino"),
            "FP_OFF_INODE_SB": btf.member_offset("inode", "i_sb"),
            "FP_OFF_SB_DEV": btf.member_offset("super_block", "s_dev"),
            "FP_OFF_FOLIO_FLAGS": btf.member_offset("folio", "flags"),
            "FP_OFF_FOLIO_ORDER": order,
            "FP_PG_HEAD": btf.enum_value("pageflags", "PG_head")}


def plan_kprobes(p) -> None:
    """Decide the optional kprobe extras of loader.Plan `p` (p.kprobes, p.kprobe_defines,
    p.kprobes_missing): none without kprobe_events in tracefs; with libbpf, named and left
    to CO-RE; with bcc, only where /proc/kallsyms has the function as text and the kernel's
    BTF has the struct members read (shmem_offsets)."""
    from .btf import Btf

    if not os.path.exists(os.path.join(p.tracefs, "kprobe_events")):
        p.kprobes_missing += [(f, "no kprobes in this kernel") for f in KPROBE_EXTRAS]
        return
    vmalloc = vmalloc_by_kprobe(p.tracefs)
    if p.loader == "libbpf":
        # CO-RE relocates the struct reads and LibbpfProgram names a kprobe that does not
        # attach: no pass over /proc/kallsyms, no BTF parsed in Python (2.7 s under TCG)
        p.kprobes.append("shmem_add_to_page_cache")
        if vmalloc:
            p.kprobes += list(VMALLOC_KPROBES)
        return
    if vmalloc:
        p.kprobes_missing += [(f, "written for libbpf only") for f in VMALLOC_KPROBES]
    present = _text_symbols(set(KPROBE_EXTRAS))
    if "shmem_add_to_page_cache" not in present:
        p.kprobes_missing.append(("shmem_add_to_page_cache", "not a probeable function here (inlined?)"))
        return
    try:
        p.kprobe_defines = shmem_offsets(Btf.load())
    except FootprintError as err:
        p.kprobes_missing.append(("shmem_add_to_page_cache", str(err).split(":")[0]))
        return
    except (KeyError, ValueError) as err:
        p.kprobes_missing.append(("shmem_add_to_page_cache", f"BTF: {err}".replace("'", "")))
        return
    p.kprobes.append("shmem_add_to_page_cache")
