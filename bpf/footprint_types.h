/*
 * footprint: a resident account of kernel memory, kept in the kernel.
 *
 * footprint_types.h (types and state encoding) and footprint_logic.h (maps' use and
 * probes) are the program's whole logic, shared by two frontends that differ only in
 * glue:
 *   footprint.bpf.c  CO-RE, compiled ahead of time against vmlinux.h, loaded by libbpf
 *   footprint.c      bcc, compiled at attach time (kernels without BTF)
 * Each frontend includes footprint_types.h, declares the maps, defines the following,
 * then includes footprint_logic.h:
 *   map access       FP_LOOKUP, FP_UPDATE, FP_INSERT, FP_DELETE, FP_LOOKUP_OR_INIT,
 *                    FP_STACKID (bcc cannot use its map methods inside a macro, so its
 *                    glue maps these onto one small function per map and operation)
 *   knobs            CFG_MAX_PFN, CFG_STACKS_MAX, CFG_MIGRATE_MOVABLE, CFG_OOM_SLOTS
 *                    (bcc: -D constants; CO-RE: .rodata set by the loader before load)
 *   context fields   FP_FOLIO_ORDER, FP_PERCPU_CALL_SITE, FP_VICTIM_COMM (fields that
 *                    some kernels lack: bcc from tracefs formats, CO-RE from BTF)
 *   probes           FP_TRACEPOINT(group, event, raw): a classic tracepoint program whose
 *                    context is `args` (struct trace_event_raw_<raw> under CO-RE)
 *   FP_HAS_<group>_<event>  for each optional tracepoint compiled in
 *
 * Tracepoints only (kmem, filemap, percpu, oom): stable, and present on every kernel we
 * meet. Nothing is streamed to user space; the recorder samples the maps.
 *
 * State is keyed by page frame number (2 bits a page, below), every pfn of a folio or
 * compound allocation marked, so that a split allocation's pages freed one by one
 * (split_page) each find their state.
 *
 * Map names, key/value layouts and the stats enum are read by tracer/bpfmaps.py: change
 * them together.
 */

/*
 * Per-pfn state: 2 bits a page, 32 pages to a u64 array element (arrays round every
 * value up to 8 bytes: a u32 per pfn cost 8 B/page; this costs 1/4 B/page, 1.6 MiB at
 * 24 GiB). What a page must remember is only what no event says again: the delete
 * tracepoints carry (s_dev, ino) and the order, mm_page_free carries the order; so the
 * word holds a kind, and the one rare thing that needs more (which stack a kernel page
 * was charged to) lives in a side table of pageblock-sized chunks (FP_CHUNK_PFNS u16
 * stack ids each), which only the pageblocks that hold kernel pages ever occupy: the
 * page allocator groups unmovable allocations into their own pageblocks.
 *
 *   NONE   not allocated since attach (a page cache page here was there before: the
 *          baseline has it)
 *   NEW    allocated since attach, not counted (user memory, or page cache that arrived
 *          without an add event: a folio migrated by compaction, a split folio's tail)
 *   PC     in the page cache, counted in its file by the add event
 *   KPAGE  a kernel page, counted in its stack's counter (id in the side table)
 *
 * A page-cache page freed without a delete was migrated: its data lives on in the new
 * folio, which the file's counter still counts, and whose delete (the pfn is NEW) takes
 * it off. A delete of a NONE page consumes the file's baseline (untracked_removed).
 */
#define FP_PFN_NONE 0
#define FP_PFN_NEW 1
#define FP_PFN_PC 2
#define FP_PFN_KPAGE 3
#define FP_PFN_BITS 2
#define FP_PFNS_PER_WORD 32
#define FP_PATTERN 0x5555555555555555ULL /* 01 in every pfn's field */
#define FP_MAX_ORDER 10                  /* MAX_ORDER (6.1) / MAX_PAGE_ORDER (6.18) on x86 */
#define FP_CHUNK_SHIFT 9
#define FP_CHUNK_PFNS (1 << FP_CHUNK_SHIFT)

struct fp_chunk {
    u16 sid[FP_CHUNK_PFNS]; /* stack id of each KPAGE pfn (0: unknown) */
};

/* kmalloc call sites followed by default (--slab kmalloc): those outside the core
 * kernel's text (modules: the guest's squashfs, loop, dm, isofs...) and those inside
 * the core ranges the recorder names (built-in storage code). Until the recorder has
 * written it (on == 0) every object is followed. */
#define FP_SLAB_RANGES 64
/* Library code (lib/xz, lib/zstd, zlib, crypto: owners.LIBRARY_PREFIXES) kmallocs for
 * whoever called it: an object allocated there is followed with its stack, counted in a
 * site keyed by the stack id (kind FP_KIND_SLAB_STACK), so the owner past the library
 * frames gets it (xz_dec_init's state is squashfs's). */
#define FP_LIB_RANGES 8
struct fp_slab_filter {
    u64 text_lo, text_hi; /* [_stext, _etext) */
    u32 on, n;
    u64 lo[FP_SLAB_RANGES], hi[FP_SLAB_RANGES]; /* sorted, disjoint */
    u32 nlib, pad;
    u64 lib_lo[FP_LIB_RANGES], lib_hi[FP_LIB_RANGES];
};

/* Counters the report prints: nothing is dropped silently. */
enum fp_stat {
    ST_PC_ADD,             /* page-cache folios added */
    ST_PC_DEL,             /* deleted, pfn known */
    ST_PC_DEL_UNTRACKED,   /* deleted, added before attach (the baseline's) */
    ST_PC_FREED_NO_DEL,    /* freed without a delete: migrated (the file keeps the pages) */
    ST_KPAGE_ALLOC,        /* non-movable page allocations tracked */
    ST_KPAGE_FREE,
    ST_STACK_LOST,         /* no stack id (stack maps or the chunk table full): "unknown stack" */
    ST_FILES_FULL,         /* file table full: page not counted */
    ST_PFN_RANGE,          /* pfn beyond the per-pfn array */
    ST_OBJ_ALLOC,
    ST_OBJ_FREE,
    ST_OBJS_FULL,          /* object table full: object not counted */
    ST_SITES_FULL,
    ST_PCPU_FULL,
    ST_OOM_KILLS,          /* victims the OOM killer chose (oom:mark_victim) */
    /* A hot event's tp_btf program skipped by the kernel (an interrupt's event inside it
     * on that CPU) and run by one of its nested twins instead (bpf/footprint.bpf.c), one count
     * per event with twins, in FP_NEST_* order: not lost. */
    ST_NESTED,
    /* Not a count: the sampler's read number, set from user space before each read of
     * the files map; a file's counters carry it when they change (fp_file_val.epoch), so
     * a read decodes only the files touched since the last (tracer/mapsampler.py). */
    ST_EPOCH = ST_NESTED + 4,
    ST_MAX,
};

struct fp_file_key {
    u64 ino;
    u32 dev;   /* the kernel's dev_t: major << 20 | minor */
    u32 pad;
};

struct fp_counter {
    s64 resident;  /* pages (files, stacks) or bytes (sites) */
    s64 peak;
    u64 added;     /* pages or bytes added since attach */
    u64 removed;
    s64 untracked_removed; /* pages deleted whose add was not seen */
};

/* A file's counter in pages, 32-bit (a file of 16 TiB): 24 B a value, not 48. */
struct fp_file_val {
    s32 resident;
    s32 peak;
    u32 added;
    u32 removed;
    s32 untracked_removed; /* deletes of pages there before attach (NONE) */
    u16 flags;  /* FILE_ADDS_BY_KPROBE: adds come without pfns (tmpfs) */
    u16 epoch;  /* stats[ST_EPOCH] (low 16 bits) when the counters last changed */
};
#define FILE_ADDS_BY_KPROBE 1

struct fp_site_key {
    u64 call_site;
    u32 kind;  /* 0 slab object, 1 percpu */
    u32 pad;
};

struct fp_obj_val {
    u64 call_site;
    u32 bytes;
    u32 kind;
};

/* The OOM killer's victims: when memory ran out during a recording, the report says
 * who paid. The victim's pid is in every kernel's event; its name only where the event
 * carries a `comm` (seen in 6.18 and in Debian's 6.1.0-57; absent in older 6.1); the
 * task that ran out (bpf_get_current_comm) is kept as well. */
struct fp_oom_victim {
    u64 mono_ns;  /* bpf_ktime_get_ns (4.1+; the boot clock needs 5.8): the sampler converts */
    u32 pid;
    u32 pad;
    char comm[16];    /* the victim, where the event names it, or empty */
    char trigger[16]; /* the task whose allocation failed */
};

/*
 * Maps (declared by each frontend with these names and layouts):
 *   pfn_state     array  u64 per 32 pfns                (2 bits a pfn, above)
 *   kpage_ids     hash   chunk (pfn >> FP_CHUNK_SHIFT) -> fp_chunk
 *   chunk_zero    array  1 fp_chunk of zeroes           (what a new chunk starts as)
 *   slab_filter   array  1 fp_slab_filter
 *   stats         array  u64 per enum fp_stat
 *   files         hash   fp_file_key -> fp_file_val
 *   stacks, stacks_alt  stack traces (CFG_STACKS_MAX buckets each)
 *   stack_pages   array  stack id -> fp_counter        (ids are dense: an array, no hash)
 *   objs          hash   u64 address -> fp_obj_val
 *   sites         hash   fp_site_key -> fp_counter
 *   oom_victims   array  CFG_OOM_SLOTS x fp_oom_victim
 *
 * Every hash map is preallocated on purpose (nothing is allocated on the tracing path). A no-prealloc map refills itself with
 * kmalloc (bpf_mem_alloc) from irq_work: updated from the kmalloc tracepoints that was a
 * feedback loop (24 MB in two seconds), and from the others it made the kernel skip our
 * kmalloc program while one of ours was running (lost events, counted per program).
 *
 * A stack map stores one stack per hash bucket and refuses a second stack whose hash
 * lands in a taken bucket (-EEXIST): ~n²/2m of n stacks in m buckets, 14 of 667 in a
 * traced boot. Those go to a second map, keyed by the same trace without its first
 * frame (the allocator itself), which hashes them anew: a stack is lost only if it
 * collides in both (~0.04 of 667). Ids: 1..CFG_STACKS_MAX first map, above that second.
 */
