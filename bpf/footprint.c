/*
 * footprint: a resident account of kernel memory, kept in the kernel.
 *
 * Tracepoints only (kmem, filemap, percpu): stable, and present on every kernel we
 * meet. Nothing is streamed to user space; the recorder samples these maps.
 *
 * State is keyed by page frame number so that it cannot drift: a pfn is set when a
 * page is added to the page cache (or allocated for the kernel), and cleared when it
 * is deleted from the page cache *or* freed. A missed delete therefore cannot leave a
 * freed page counted. Only the head pfn of a folio/compound allocation is stored,
 * with its order.
 *
 * Knobs substituted by the loader (tracer/loader.py) before compilation:
 *   FP_MAX_PFN      size of the per-pfn array (highest pfn + 1, from /proc/zoneinfo)
 *   FP_FILES_MAX    (s_dev, inode) pairs with page-cache pages
 *   FP_FILES_PER_CPU  FP_FILES_MAX / possible CPUs (file ids are handed out per CPU)
 *   FP_STACKS_MAX   buckets of each of the two stack maps (non-movable page allocations)
 *   FP_STACK_DEPTH  frames kept per stack
 *   FP_OBJS_MAX     live slab objects tracked by address
 *   FP_SITES_MAX    distinct slab/percpu call sites
 *   FP_KPROBE_SHMEM defined when the shmem kprobe extra is attached, with the
 *                   FP_OFF_* struct offsets and FP_PG_HEAD from the kernel's BTF
 */
#include <uapi/linux/ptrace.h>

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
    ST_PFN_RANGE,          /* pfn beyond FP_MAX_PFN */
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

struct fp_stack {
    u64 ip[FP_STACK_DEPTH];
};

BPF_ARRAY(pfn_state, u32, FP_MAX_PFN);
BPF_ARRAY(stats, u64, ST_MAX);
BPF_PERCPU_ARRAY(next_file_id, u32, 1);
/* Every hash map is preallocated on purpose. A no-prealloc map refills itself with
 * kmalloc (bpf_mem_alloc) from irq_work: updated from the kmalloc tracepoints that was a
 * feedback loop (24 MB in two seconds), and from the others it made the kernel skip our
 * kmalloc program while one of ours was running (lost events, counted per program). */
BPF_HASH(files, struct fp_file_key, struct fp_file_val, FP_FILES_MAX);
BPF_ARRAY(file_of, struct fp_file_key, FP_FILES_MAX);
/* A stack map stores one stack per hash bucket and refuses a second stack whose hash
 * lands in a taken bucket (-EEXIST): ~n²/2m of n stacks in m buckets, 14 of 667 in a
 * traced boot. Those go to a second map, keyed by the same trace without its first
 * frame (the allocator itself), which hashes them anew: a stack is lost only if it
 * collides in both (~0.04 of 667). Ids: 1..FP_STACKS_MAX first map, above that second. */
BPF_TABLE("stacktrace", int, struct fp_stack, stacks, FP_STACKS_MAX);
BPF_TABLE("stacktrace", int, struct fp_stack, stacks_alt, FP_STACKS_MAX);
BPF_HASH(stack_pages, u32, struct fp_counter, 2 * FP_STACKS_MAX + 1);
BPF_HASH(objs, u64, struct fp_obj_val, FP_OBJS_MAX);
BPF_HASH(sites, struct fp_site_key, struct fp_counter, FP_SITES_MAX);

static __always_inline void stat_inc(int which)
{
    int key = which;
    u64 *v = stats.lookup(&key);
    if (v)
        lock_xadd(v, 1);
}

static __always_inline void counter_add(struct fp_counter *c, s64 n)
{
    lock_xadd(&c->resident, n);
    lock_xadd(&c->added, n);
    /* Racy by design: a peak that misses a concurrent add by one folio is fine. */
    if (c->resident > c->peak)
        c->peak = c->resident;
}

static __always_inline void counter_sub(struct fp_counter *c, s64 n)
{
    lock_xadd(&c->resident, -n);
    lock_xadd(&c->removed, n);
}

static __always_inline u32 *pfn_slot(u64 pfn)
{
    if (pfn >= FP_MAX_PFN) {
        stat_inc(ST_PFN_RANGE);
        return 0;
    }
    int key = pfn;
    return pfn_state.lookup(&key);
}

/* The file's counter, created on first sight with a fresh id. */
static __always_inline struct fp_file_val *file_get(u32 dev, u64 ino, bool create)
{
    struct fp_file_key key = {.ino = ino, .dev = dev};
    struct fp_file_val *fv = files.lookup(&key);
    if (fv || !create)
        return fv;

    /* Ids come from per-CPU ranges: no atomic fetch-add needed (bcc 0.26 + LLVM 14
     * cannot use its return value). */
    int zero = 0;
    u32 *next = next_file_id.lookup(&zero);
    if (!next)
        return 0;
    if (*next >= FP_FILES_PER_CPU) {
        stat_inc(ST_FILES_FULL);
        return 0;
    }
    u32 id = bpf_get_smp_processor_id() * FP_FILES_PER_CPU + *next;
    *next += 1;
    if (id >= FP_FILES_MAX) {
        stat_inc(ST_FILES_FULL);
        return 0;
    }
    struct fp_file_val init = {.id = id};
    /* Two CPUs may race here; the loser's id stays unused, which is harmless. */
    files.insert(&key, &init);
    fv = files.lookup(&key);
    if (!fv) {
        stat_inc(ST_FILES_FULL);
        return 0;
    }
    int idx = fv->id;
    file_of.update(&idx, &key);
    return fv;
}

/* Forget whatever a pfn was counted as; `freed` says the page left the allocator. */
static __always_inline void pfn_release(u32 *slot, bool freed)
{
    u32 s = *slot;
    if (s == 0)
        return;
    *slot = 0;
    s64 pages = 1LL << FP_STATE_ORDER(s);
    if (FP_STATE_KIND(s) == FP_KIND_KPAGE) {
        u32 sid = FP_STATE_ID(s);
        struct fp_counter *c = stack_pages.lookup(&sid);
        if (c)
            counter_sub(c, pages);
        if (freed)
            stat_inc(ST_KPAGE_FREE);
    } else if (FP_STATE_KIND(s) == FP_KIND_PAGECACHE) {
        int idx = FP_STATE_ID(s);
        struct fp_file_key *key = file_of.lookup(&idx);
        if (!key)
            return;
        struct fp_file_val *fv = files.lookup(key);
        if (fv)
            counter_sub(&fv->c, pages);
        if (freed)
            stat_inc(ST_PC_FREED_NO_DEL);
    }
}

TRACEPOINT_PROBE(filemap, mm_filemap_add_to_page_cache)
{
    u32 order = 0;
#ifdef FP_HAS_FOLIO_ORDER
    order = args->order;
#endif
    stat_inc(ST_PC_ADD);
    u32 *slot = pfn_slot(args->pfn);
    if (!slot)
        return 0;
    /* A page allocated for the kernel (e.g. block-device buffers) now belongs to a file. */
    pfn_release(slot, false);
    struct fp_file_val *fv = file_get(args->s_dev, args->i_ino, true);
    if (!fv)
        return 0;
    counter_add(&fv->c, 1LL << order);
    *slot = FP_STATE(FP_KIND_PAGECACHE, order, fv->id);
    return 0;
}

TRACEPOINT_PROBE(filemap, mm_filemap_delete_from_page_cache)
{
    u32 *slot = pfn_slot(args->pfn);
    if (!slot)
        return 0;
    u32 s = *slot;
    if (FP_STATE_KIND(s) == FP_KIND_PAGECACHE) {
        stat_inc(ST_PC_DEL);
        pfn_release(slot, false);
        return 0;
    }
    /* Added before we attached (the inventory has it) or a tail of a split folio. */
    u32 order = 0;
#ifdef FP_HAS_FOLIO_ORDER
    order = args->order;
#endif
    stat_inc(ST_PC_DEL_UNTRACKED);
    struct fp_file_val *fv = file_get(args->s_dev, args->i_ino, true);
    if (!fv)
        return 0;
    if (fv->flags & FILE_ADDS_BY_KPROBE)
        counter_sub(&fv->c, 1LL << order);  /* its adds were counted without pfns */
    else
        lock_xadd(&fv->c.untracked_removed, 1LL << order);
    return 0;
}

#ifdef FP_KPROBE_SHMEM
/* Optional extra (kernels with kprobes and BTF): tmpfs/shmem adds folios with
 * shmem_add_to_page_cache(folio, mapping, ...), which does not fire the filemap add
 * tracepoint while removals fire the delete one. Counted per file without pfns; deletes
 * subtract. The struct fields it reads are at offsets the loader took from the running
 * kernel's BTF (tracer/btf.py): no kernel struct headers, and no header match needed. */
static __always_inline u64 fp_read_ptr(const void *base, u32 off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

int kprobe__shmem_add_to_page_cache(struct pt_regs *ctx)
{
    const void *folio = (const void *)PT_REGS_PARM1(ctx);
    const void *mapping = (const void *)PT_REGS_PARM2(ctx);
    const void *host = (const void *)fp_read_ptr(mapping, FP_OFF_MAPPING_HOST);
    if (!host)
        return 0;
    u64 ino = fp_read_ptr(host, FP_OFF_INODE_INO);
    const void *sb = (const void *)fp_read_ptr(host, FP_OFF_INODE_SB);
    u32 dev = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), (const char *)sb + FP_OFF_SB_DEV);
    /* folio_nr_pages(): a large folio keeps its order in its first tail page. */
    u64 nr = 1;
    if (fp_read_ptr(folio, FP_OFF_FOLIO_FLAGS) & (1ULL << FP_PG_HEAD)) {
        u8 order = 0;
        bpf_probe_read_kernel(&order, 1, (const char *)folio + FP_OFF_FOLIO_ORDER);
        nr = 1ULL << (order & 31);
    }
    struct fp_file_val *fv = file_get(dev, ino, true);
    if (!fv)
        return 0;
    fv->flags |= FILE_ADDS_BY_KPROBE;
    counter_add(&fv->c, nr);
    return 0;
}
#endif

TRACEPOINT_PROBE(kmem, mm_page_alloc)
{
    /* Movable pages are user memory or page cache: the filemap probe and meminfo
     * account for them. Stacks are taken only for the kernel's own pages. */
    if (args->migratetype == FP_MIGRATE_MOVABLE)
        return 0;
    u32 *slot = pfn_slot(args->pfn);
    if (!slot)
        return 0;
    int sid = stacks.get_stackid(args, 0);
    u32 id = 0;
    if (sid >= 0) {
        id = sid + 1;
    } else {
        sid = stacks_alt.get_stackid(args, 1 /* skip one frame: a new hash */);
        if (sid >= 0)
            id = FP_STACKS_MAX + sid + 1;
        else
            stat_inc(ST_STACK_LOST);
    }
    struct fp_counter zero = {};
    struct fp_counter *c = stack_pages.lookup_or_try_init(&id, &zero);
    if (!c)
        return 0;
    counter_add(c, 1LL << args->order);
    *slot = FP_STATE(FP_KIND_KPAGE, args->order, id);
    stat_inc(ST_KPAGE_ALLOC);
    return 0;
}

TRACEPOINT_PROBE(kmem, mm_page_free)
{
    u32 *slot = pfn_slot(args->pfn);
    if (slot)
        pfn_release(slot, true);
    return 0;
}

static __always_inline void obj_alloc(u64 ptr, u64 call_site, u32 bytes, u32 kind)
{
    if (!ptr)
        return;
    struct fp_site_key sk = {.call_site = call_site, .kind = kind};
    struct fp_counter zero = {};
    struct fp_counter *c = sites.lookup_or_try_init(&sk, &zero);
    if (!c) {
        stat_inc(ST_SITES_FULL);
        return;
    }
    struct fp_obj_val ov = {.call_site = call_site, .bytes = bytes, .kind = kind};
    if (objs.update(&ptr, &ov) != 0) {
        stat_inc(kind ? ST_PCPU_FULL : ST_OBJS_FULL);
        return;
    }
    counter_add(c, bytes);
    stat_inc(ST_OBJ_ALLOC);
}

static __always_inline void obj_free(u64 ptr)
{
    struct fp_obj_val *ov = objs.lookup(&ptr);
    if (!ov)
        return;
    struct fp_site_key sk = {.call_site = ov->call_site, .kind = ov->kind};
    struct fp_counter *c = sites.lookup(&sk);
    if (c)
        counter_sub(c, ov->bytes);
    objs.delete(&ptr);
    stat_inc(ST_OBJ_FREE);
}

#ifdef FP_HAS_kmem_kmalloc
TRACEPOINT_PROBE(kmem, kmalloc)
{
    obj_alloc((u64)args->ptr, args->call_site, args->bytes_alloc, 0);
    return 0;
}

#endif

#ifdef FP_HAS_kmem_kmem_cache_alloc
TRACEPOINT_PROBE(kmem, kmem_cache_alloc)
{
    obj_alloc((u64)args->ptr, args->call_site, args->bytes_alloc, 0);
    return 0;
}

#endif

#ifdef FP_HAS_kmem_kfree
TRACEPOINT_PROBE(kmem, kfree)
{
    obj_free((u64)args->ptr);
    return 0;
}

#endif

#ifdef FP_HAS_kmem_kmem_cache_free
TRACEPOINT_PROBE(kmem, kmem_cache_free)
{
    obj_free((u64)args->ptr);
    return 0;
}

#endif

#ifdef FP_HAS_percpu_percpu_alloc_percpu
TRACEPOINT_PROBE(percpu, percpu_alloc_percpu)
{
    obj_alloc((u64)args->ptr, FP_PERCPU_CALL_SITE, args->bytes_alloc, 1);
    return 0;
}

#endif

#ifdef FP_HAS_percpu_percpu_free_percpu
TRACEPOINT_PROBE(percpu, percpu_free_percpu)
{
    obj_free((u64)args->ptr);
    return 0;
}
#endif

#ifdef FP_HAS_oom_mark_victim
/* The OOM killer's victims: when memory ran out during a recording, the report says
 * who paid. The victim's pid is in every kernel's event, its name only in newer ones
 * (6.18, not 6.1); the task that ran out (bpf_get_current_comm) is kept as well. */
struct fp_oom_victim {
    u64 mono_ns;  /* bpf_ktime_get_ns (4.1+; the boot clock needs 5.8): the sampler converts */
    u32 pid;
    u32 pad;
    char comm[16];    /* the victim, where the event names it, or empty */
    char trigger[16]; /* the task whose allocation failed */
};
BPF_ARRAY(oom_victims, struct fp_oom_victim, FP_OOM_SLOTS);

TRACEPOINT_PROBE(oom, mark_victim)
{
    int key = ST_OOM_KILLS;
    u64 *count = stats.lookup(&key);
    if (!count)
        return 0;
    /* Not atomic on purpose: the OOM killer marks victims under oom_lock, one at a
     * time (and bcc 0.26 + LLVM 14 cannot use a fetch-add's return value). The count
     * moves after the slot is written: the sampler reads only slots below it. */
    int slot = *count % FP_OOM_SLOTS;
    struct fp_oom_victim *v = oom_victims.lookup(&slot);
    if (!v)
        return 0;
    v->mono_ns = bpf_ktime_get_ns();
    v->pid = args->pid;
#ifdef FP_OOM_VICTIM_COMM
    TP_DATA_LOC_READ_STR(v->comm, comm, sizeof(v->comm));
#endif
    bpf_get_current_comm(v->trigger, sizeof(v->trigger));
    *count += 1;
    return 0;
}
#endif
