"""Who owns a kernel page that belongs to no file: function/module → subsystem, and the
classification of page-allocation stacks (kind of page, owning subsystem), memstrack's
rule. Symbols come from tracer/symbols.py (`Kallsyms.lookup`).

Page-cache pages are NOT attributed here: a page in the page cache belongs to its mapping
(s_dev, inode), which the filemap tracepoints give directly (see topology.resolve).
Stacks are for pages that belong to no mapping: slab, vmalloc, page tables, percpu,
kernel stacks, direct page allocations.

Light on purpose (stdlib only): imported by the recorder in early boot.
"""

from __future__ import annotations

from collections.abc import Sequence


def normalize(symbol: str) -> str:
    """Strip compiler clones (`.isra.0`, `.constprop.0`, `.cold`, `.part.0`, `.llvm.123`)
    and the memory-allocation-profiling suffix `_noprof` (6.10+: `__alloc_pages_noprof`
    is 6.1's `__alloc_pages`) so one table matches 6.1 and 6.18."""
    base = symbol.split(".", 1)[0]
    if base.endswith("_noprof"):
        base = base[: -len("_noprof")]
    return base


# --- subsystems --------------------------------------------------------------------------

# Loadable module → subsystem. The guest (Debian 6.1) builds these as modules; anything
# named dm_* is device-mapper as well (see subsystem_of).
MODULE_SUBSYSTEMS: dict[str, str] = {
    "squashfs": "squashfs",
    "dm_mod": "device-mapper",
    "dm_snapshot": "device-mapper",
    "dm_bufio": "device-mapper",
    "dm_bio_prison": "device-mapper",
    "dm_persistent_data": "device-mapper",
    "loop": "loop",
    # jbd2 (the journal) and mbcache (xattr cache) exist for ext4 here: charge ext4.
    "ext4": "ext4",
    "jbd2": "ext4",
    "mbcache": "ext4",
    "isofs": "iso9660",
    "overlay": "overlay",
    "virtio_blk": "virtio-blk",
    "sr_mod": "cdrom",
    "cdrom": "cdrom",
    "zram": "zram",
}

# Built-in code (this host builds squashfs and loop into vmlinux): by symbol prefix,
# first match wins. Only prefixes that are unambiguous in both 6.1 and 6.18 kallsyms.
PREFIX_SUBSYSTEMS: tuple[tuple[str, str], ...] = (
    ("squashfs_", "squashfs"),
    ("loop_", "loop"),
    ("lo_", "loop"),
    ("dm_", "device-mapper"),
    ("kcopyd_", "device-mapper"),
    ("__ext4_", "ext4"),
    ("ext4_", "ext4"),
    ("jbd2_", "ext4"),
    ("__jbd2_", "ext4"),
    ("isofs_", "iso9660"),
    ("ovl_", "overlay"),
    ("virtblk_", "virtio-blk"),
    ("shmem_", "shmem"),
    ("bpf_", "bpf"),
    ("__bpf_", "bpf"),
    ("htab_", "bpf"),
    ("array_map_", "bpf"),
    ("ringbuf_", "bpf"),
    ("zram_", "zram"),
)


# Library code a subsystem allocates through: never an owner (the owner is the subsystem
# further out on the stack); the innermost library frame names what was allocated
# ("squashfs: xz vmalloc"). The one list of libraries: by symbol prefix (lib/ is built
# in on 6.1 and 6.18; squashfs's own zstd_init etc. say "zstd" too, rightly), and the
# modules that are libraries where a kernel builds them as modules.
LIBRARY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("xz_dec_", "xz"), ("xz_", "xz"),
    ("zstd_", "zstd"), ("ZSTD_", "zstd"), ("HUF_", "zstd"), ("FSE_", "zstd"),
    ("zlib_", "zlib"), ("LZ4_", "lz4"), ("lz4_", "lz4"), ("lzo1x_", "lzo"), ("lzo_", "lzo"),
    ("crypto_", "crypto"), ("__crypto_", "crypto"),
)
LIBRARY_MODULES: dict[str, str] = {
    "xz_dec": "xz", "zstd_decompress": "zstd", "zstd_common": "zstd", "zlib_inflate": "zlib",
    "lz4_decompress": "lz4", "lzo_decompress": "lzo", "libcrc32c": "crypto",
    "crc32c_generic": "crypto", "crc32c_intel": "crypto",
}


def library_of(symbol: str | None, module: str | None) -> str | None:
    """The library a frame belongs to (LIBRARY_PREFIXES, LIBRARY_MODULES), or None."""
    if module:
        return LIBRARY_MODULES.get(module)
    return _by_prefix(symbol, LIBRARY_PREFIXES)


def subsystem_of(symbol: str | None, module: str | None) -> str | None:
    """The storage-stack subsystem a frame belongs to, or None.

    A module decides (the module table, then `dm_*` → device-mapper, else the module
    name itself: any module is a known owner, as in memstrack); built-in code goes by
    symbol prefix.
    """
    if module:
        if module in LIBRARY_MODULES:
            return None
        if module in MODULE_SUBSYSTEMS:
            return MODULE_SUBSYSTEMS[module]
        if module.startswith("dm_"):
            return "device-mapper"
        return module
    return _by_prefix(symbol, PREFIX_SUBSYSTEMS)


def _by_prefix(symbol: str | None, table) -> str | None:
    """The value of the first (prefix, value) in `table` that `symbol` (normalized)
    starts with, or None."""
    if symbol:
        name = normalize(symbol)
        for prefix, value in table:
            if name.startswith(prefix):
                return value
    return None


# --- stack classification ------------------------------------------------------------

# Function (normalized) → kind of page. Scanned innermost frame first: the innermost
# marker wins, so a slab page allocated during a page fault is "slab", not "anon".
# Names checked against 6.18's /proc/kallsyms (`_noprof` stripped) and 6.1's sources;
# functions that are always inlined on one of them (new_slab, vm_area_alloc_pages on
# 6.18) are listed too, for the other.
KIND_MARKERS: dict[str, str] = {}
for _kind, _names in {
    "slab": (
        "allocate_slab", "new_slab", "___slab_alloc", "__slab_alloc", "alloc_slab_page",
        "cache_grow_begin",  # SLAB allocator
        # Large kmalloc goes straight to the page allocator but is counted in meminfo's
        # Slab (NR_SLAB_UNRECLAIMABLE_B since 5.9), so it reconciles as slab.
        "kmalloc_large", "kmalloc_large_node", "__kmalloc_large_node",
        "___kmalloc_large_node", "kmalloc_order", "kmalloc_order_trace",
    ),
    "vmalloc": (
        "__vmalloc_area_node", "vm_area_alloc_pages", "__vmalloc_node_range",
    ),
    "page-tables": (
        "__pte_alloc", "__pte_alloc_kernel", "pte_alloc_one", "pte_alloc_one_kernel",
        "__pmd_alloc", "pmd_alloc_one", "__pud_alloc", "pud_alloc_one", "__p4d_alloc",
        "p4d_alloc_one", "pgd_alloc", "_pgd_alloc", "preallocate_pmds",
    ),
    "percpu": ("pcpu_populate_chunk", "pcpu_alloc_pages"),
    "kernel-stack": ("alloc_thread_stack_node", "dup_task_struct"),
    "page-cache": (
        "filemap_alloc_folio", "__filemap_get_folio", "__page_cache_alloc",
        "page_cache_ra_unbounded", "page_cache_ra_order", "grow_dev_page", "grow_dev_folio",
        "shmem_alloc_folio", "shmem_alloc_hugefolio", "shmem_alloc_and_add_folio",
    ),
    "anon": (
        "do_anonymous_page", "alloc_anon_folio", "do_huge_pmd_anonymous_page",
        "wp_page_copy", "do_cow_fault",
        # 6.18 inlines wp_page_copy/do_cow_fault: an allocation directly under these is
        # the private copy (page-cache and page-table markers are inner, so win first).
        "do_wp_page", "do_fault", "do_swap_page",
    ),
}.items():
    for _n in _names:
        KIND_MARKERS[_n] = _kind

# Callers of the page/vmalloc allocator that allocate a task's kernel stack (with
# CONFIG_VMAP_STACK the stack is vmalloc'ed from alloc_thread_stack_node, which is
# inlined into dup_task_struct → copy_process on 6.18).
_STACK_CALLERS = frozenset({"alloc_thread_stack_node", "dup_task_struct", "copy_process"})

# mm/ and allocator internals: never an owner. Exact names, then prefixes.
_MM_NAMES = frozenset({
    "get_page_from_freelist", "rmqueue", "rmqueue_bulk", "prep_new_page", "post_alloc_hook",
    "__alloc_pages", "__alloc_frozen_pages", "alloc_frozen_pages", "alloc_frozen_pages_nolock", "__alloc_pages_slowpath", "alloc_pages", "alloc_pages_mpol",
    "alloc_pages_node", "__alloc_pages_node", "__folio_alloc", "folio_alloc",
    "folio_alloc_mpol", "vma_alloc_folio", "alloc_pages_exact", "alloc_pages_exact_nid",
    "__get_free_pages", "get_free_pages", "get_zeroed_page", "tlb_next_batch",
    "tlb_remove_table", "__tlb_remove_folio_pages", "alloc_pages_bulk", "__alloc_pages_bulk",
    "alloc_pages_bulk_array_node", "alloc_pages_bulk_array_mempolicy",
    "kmalloc", "__kmalloc", "__kmalloc_node", "kmalloc_node", "kmalloc_trace",
    "kmalloc_node_trace", "__kmalloc_cache", "__kmalloc_cache_node", "__kmalloc_node_track_caller",
    "__kmalloc_track_caller", "kmem_cache_alloc", "kmem_cache_alloc_node", "kmem_cache_alloc_lru",
    "__kmem_cache_alloc_node", "kmem_cache_alloc_bulk", "slab_alloc_node", "__do_kmalloc_node",
    "kzalloc", "kcalloc", "krealloc", "__krealloc",
    "alloc_vmap_area", "__get_vm_area_node", "__get_vm_area_caller", "get_vm_area",
    "get_vm_area_caller", "vm_map_ram", "vmap",
    "vmalloc", "vzalloc", "vmalloc_node", "vzalloc_node", "__vmalloc", "__vmalloc_node",
    "vmalloc_user", "vmalloc_32", "kvmalloc", "kvmalloc_node", "__kvmalloc_node",
    "kvzalloc", "kvrealloc",
    "mempool_alloc", "mempool_alloc_slab", "mempool_alloc_pages", "mempool_kmalloc",
    "handle_mm_fault", "__handle_mm_fault", "handle_pte_fault", "do_fault", "do_read_fault",
    "do_shared_fault", "do_pte_missing", "filemap_fault", "__do_fault",
    "filemap_read", "filemap_get_pages", "filemap_create_folio", "filemap_readahead",
    "page_cache_sync_ra", "page_cache_async_ra", "ondemand_readahead", "do_page_cache_ra",
    "force_page_cache_ra", "page_cache_sync_readahead", "page_cache_async_readahead",
    "read_pages", "filemap_grab_folio", "grab_cache_page_write_begin",
    "pagecache_get_page", "find_or_create_page", "read_cache_folio", "do_read_cache_folio",
    "__read_cache_page", "read_cache_page",
    "__get_user_pages", "get_user_pages", "faultin_page", "populate_vma_page_range",
    "get_user_pages_remote", "__get_user_pages_locked", "get_user_pages_unlocked",
    "pin_user_pages", "pin_user_pages_fast", "get_user_pages_fast", "__gup_longterm_locked",
    "handle_userfault", "do_numa_page",
})
_MM_PREFIXES = (
    "__alloc_pages", "alloc_pages_", "__folio_alloc", "kmalloc_", "__kmalloc",
    "kmem_cache_alloc", "slab_", "__slab", "___slab", "pcpu_", "vmalloc_", "__vmalloc",
    "vm_area_", "mempool_", "__pte", "__pmd", "__pud", "__p4d", "pte_alloc", "pmd_alloc",
    "pud_alloc", "p4d_alloc", "alloc_thread_stack", "shmem_alloc", "page_cache_",
)
# Frames of a user page fault: pages allocated under them without a known subsystem are
# the faulting process's (anon, its page tables).
_FAULT_ENTRY = frozenset({"exc_page_fault", "asm_exc_page_fault", "do_user_addr_fault",
                          "handle_page_fault", "do_page_fault"})
# A module's init is running: memstrack charges such allocations to the module being
# loaded (it tracks module:module_load → exit of init_module per task).
_MODULE_INIT = frozenset({"do_init_module", "do_one_initcall", "load_module",
                          "__do_sys_init_module", "__do_sys_finit_module", "init_module_from_file",
                          "idempotent_init_module"})


# Frames of the tracing machinery itself (the tracepoint, perf, a BPF program and its
# trampoline: JIT'ed programs are listed in kallsyms as `bpf_prog_<tag>_<name> [bpf]`).
# They sit innermost in every captured stack and are nobody's allocation: dropped.
_TRACING_PREFIXES = ("trace_event_raw_event_", "__traceiter_", "perf_trace_", "bpf_trace_run",
                     "__bpf_trace_", "__bpf_prog_run", "perf_callchain",
                     "perf_tp_event", "perf_swevent", "bpf_get_stack", "bpf_trampoline_")


def _is_tracing(name: str | None, module: str | None) -> bool:
    return module == "bpf" or (name is not None and name.startswith(_TRACING_PREFIXES))


def _is_mm(name: str) -> bool:
    return name in _MM_NAMES or name in KIND_MARKERS or name.startswith(_MM_PREFIXES)


def frame_kind(symbol: str | None) -> str | None:
    """The kind a single frame marks (see KIND_MARKERS), or None."""
    if not symbol:
        return None
    return KIND_MARKERS.get(normalize(symbol))


def classify_stack(addrs: Sequence[int], kallsyms,
                   loading_module: str | None = None) -> tuple[str, str]:
    """Classify the kernel stack of a page allocation (innermost frame first); `kallsyms`
    names its addresses (tracer/symbols.py Kallsyms: lookup(addr) → (symbol, module, offset)).

    Returns (kind, owner):
      kind — "slab", "vmalloc", "page-tables", "percpu", "kernel-stack", "page-cache",
             "anon" or "pages" (a direct page allocation): the innermost marker frame
             decides; vmalloc/direct pages whose first caller outside the allocator
             allocates a thread stack are "kernel-stack".
      owner — memstrack's rule: the innermost frame that belongs to a known subsystem
             (module, or built-in code by prefix: subsystem_of) owns the page. If none:
             the module being initialized (`loading_module`, or "module-init" when an
             init call is on the stack or a frame is unresolvable module text), "user"
             for a page fault (only frames inside the fault handler can own its pages:
             the code it interrupted did not ask for them), else "kernel:<func>" for
             the first frame outside mm/ and the allocators, else "kernel".
    """
    frames: list[tuple[str | None, str | None]] = []
    for a in addrs:
        if not a:
            continue
        sym, mod, _ = kallsyms.lookup(a)
        name = normalize(sym) if sym else None
        if _is_tracing(name, mod):
            continue
        frames.append((name, mod))

    kind = next((KIND_MARKERS[n] for n, _m in frames if n in KIND_MARKERS), "pages")

    # The first frame that is neither mm/allocator code nor a module: the caller.
    first_outside = next((n for n, m in frames if n and not m and not _is_mm(n)), None)
    if kind in ("vmalloc", "pages") and first_outside in _STACK_CALLERS:
        # alloc_thread_stack_node/dup_task_struct are inlined on 6.18: copy_process calls
        # the vmalloc (CONFIG_VMAP_STACK) or page allocator directly.
        kind = "kernel-stack"

    # A page fault is its own context: frames outside it (ext4_readdir faulting on the
    # user's buffer in copy_to_user) did not ask for the page; the faulting process did.
    fault_at = next((i for i, (n, _m) in enumerate(frames) if n in _FAULT_ENTRY), None)
    inner = frames if fault_at is None else frames[:fault_at]

    owner: str | None = None
    for name, mod in inner:
        sub = subsystem_of(name, mod)
        if sub:
            owner = sub
            break
    if owner is None and fault_at is None:
        names = {n for n, _ in frames if n}
        unresolved_module_text = any(n is None and m for n, m in frames)
        if names & _MODULE_INIT or unresolved_module_text:
            if loading_module:
                owner = subsystem_of(None, loading_module) or loading_module
            elif unresolved_module_text or "do_init_module" in names:
                owner = "module-init"
    if owner is None and fault_at is not None:
        owner = "user"
    if owner is None:
        owner = f"kernel:{first_outside}" if first_outside else "kernel"
    return kind, owner


def stack_library(addrs: Sequence[int], kallsyms) -> tuple[str | None, str | None]:
    """(library, caller) of an allocation stack (innermost frame first): the innermost
    library frame inside the owner's (library_of), and the first frame outside mm/ and
    the allocators — the immediate caller /proc/vmallocinfo would name."""
    library = caller = None
    for a in addrs:
        if not a:
            continue
        sym, mod, _ = kallsyms.lookup(a)
        name = normalize(sym) if sym else None
        if _is_tracing(name, mod) or (name and not mod and _is_mm(name)):
            continue
        if caller is None and name:
            caller = name
        if subsystem_of(name, mod):
            break
        if library is None:
            library = library_of(name, mod)
    return library, caller
