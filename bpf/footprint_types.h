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
 *   knobs            CFG_MAX_PFN, CFG_FILES_MAX, CFG_FILES_PER_CPU, CFG_STACKS_MAX,
 *                    CFG_MIGRATE_MOVABLE, CFG_OOM_SLOTS (bcc: -D constants; CO-RE:
 *                    .rodata set by the loader before load)
 *   context fields   FP_FOLIO_ORDER, FP_PERCPU_CALL_SITE, FP_VICTIM_COMM (fields that
 *                    some kernels lack: bcc from tracefs formats, CO-RE from BTF)
 *   probes           FP_TRACEPOINT(group, event, raw): a classic tracepoint program whose
 *                    context is `args` (struct trace_event_raw_<raw> under CO-RE)
 *   FP_HAS_<group>_<event>  for each optional tracepoint compiled in
 *
 * Tracepoints only (kmem, filemap, percpu, oom): stable, and present on every kernel we
 * meet. Nothing is streamed to user space; the recorder samples the maps.
 *
 * State is keyed by page frame number so that it cannot drift: a pfn is set when a
 * page is added to the page cache (or allocated for the kernel), and cleared when it
 * is deleted from the page cache *or* freed. A missed delete therefore cannot leave a
 * freed page counted. Only the head pfn of a folio/compound allocation is stored,
 * with its order.
 *
 * Map names, key/value layouts and the stats enum are read by tracer/bpfmaps.py: change
 * them together.
 */

/* A pfn's state word: kind in the low 2 bits, order in the next 5, id above. */
#define FP_KIND_NONE 0
#define FP_KIND_PAGECACHE 1 /* id = file id (index into file_of) */
#define FP_KIND_KPAGE 2     /* id = stack id (+1; 0 = stack unknown) */
#define FP_STATE(kind, order, id) ((u32)(kind) | ((u32)(order) << 2) | ((u32)(id) << 7))
#define FP_STATE_KIND(s) ((s) & 3)
#define FP_STATE_ORDER(s) (((s) >> 2) & 31)
#define FP_STATE_ID(s) ((s) >> 7)

/* Counters the report prints: nothing is dropped silently. */
enum fp_stat {
    ST_PC_ADD,             /* page-cache folios added */
    ST_PC_DEL,             /* deleted, pfn known */
    ST_PC_DEL_UNTRACKED,   /* deleted, pfn not known (added before attach, or a split folio) */
    ST_PC_FREED_NO_DEL,    /* freed while still counted in the page cache (e.g. migration) */
    ST_KPAGE_ALLOC,        /* non-movable page allocations tracked */
    ST_KPAGE_FREE,
    ST_STACK_LOST,         /* bpf_get_stackid failed: page counted under "unknown stack" */
    ST_FILES_FULL,         /* file table full: page not counted */
    ST_PFN_RANGE,          /* pfn beyond the per-pfn array */
    ST_OBJ_ALLOC,
    ST_OBJ_FREE,
    ST_OBJS_FULL,          /* object table full: object not counted */
    ST_SITES_FULL,
    ST_PCPU_FULL,
    ST_OOM_KILLS,          /* victims the OOM killer chose (oom:mark_victim) */
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

struct fp_file_val {
    struct fp_counter c;
    u32 id;
    u32 flags;  /* FILE_ADDS_BY_KPROBE: adds come without pfns (tmpfs) */
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
 *   pfn_state     array  u32 per pfn                    (the state word above)
 *   stats         array  u64 per enum fp_stat
 *   next_file_id  percpu array, 1 u32                   (per-CPU id ranges)
 *   files         hash   fp_file_key -> fp_file_val
 *   file_of       array  file id -> fp_file_key
 *   stacks, stacks_alt  stack traces (CFG_STACKS_MAX buckets each)
 *   stack_pages   hash   u32 stack id -> fp_counter
 *   objs          hash   u64 address -> fp_obj_val
 *   sites         hash   fp_site_key -> fp_counter
 *   oom_victims   array  CFG_OOM_SLOTS x fp_oom_victim
 *
 * Every hash map is preallocated on purpose. A no-prealloc map refills itself with
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
