// SPDX-License-Identifier: GPL-2.0-only
/*
 * footprint's CO-RE frontend: the glue that lets clang compile footprint_logic.h ahead
 * of time (scripts/build-bpf) against a vmlinux.h dumped from the build machine's BTF,
 * and libbpf load it on any kernel with BTF (CONFIG_DEBUG_INFO_BTF): field offsets are
 * relocated against the running kernel's own BTF at load time.
 *
 * The loader (tracer/libbpf.py) sets before load: every map's max_entries (sizes from
 * what is seen), the stack maps' value size (frames kept), fp_cfg below, and which programs load
 * at all (an optional tracepoint absent from tracefs, the shmem kprobe where the kernel
 * has no kprobes, are not loaded).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "footprint_types.h"

char LICENSE[] SEC("license") = "GPL";

/* Knobs, read-only once loaded (the verifier treats them as constants). tracer/libbpf.py
 * packs this struct: keep its order and all fields u64. */
struct fp_config {
    u64 max_pfn;
    u64 stacks_max;
    u64 migrate_movable;
    u64 oom_slots;
};
const volatile struct fp_config fp_cfg = {
    .max_pfn = 1, .stacks_max = 1, .migrate_movable = 1, .oom_slots = 1,
};
#define CFG_MAX_PFN fp_cfg.max_pfn
#define CFG_STACKS_MAX fp_cfg.stacks_max
#define CFG_MIGRATE_MOVABLE fp_cfg.migrate_movable
#define CFG_OOM_SLOTS fp_cfg.oom_slots

/* Sizes are placeholders: the loader sets each before load. */
#define FP_STACK_DEPTH_BUILT 20
#define FP_MAP(name, kind, k, v) \
    struct { __uint(type, kind); __type(key, k); __type(value, v); __uint(max_entries, 1); } name SEC(".maps")

FP_MAP(pfn_state, BPF_MAP_TYPE_ARRAY, int, u64);
FP_MAP(kpage_ids, BPF_MAP_TYPE_HASH, u32, struct fp_chunk);
FP_MAP(chunk_zero, BPF_MAP_TYPE_ARRAY, int, struct fp_chunk);
FP_MAP(slab_filter, BPF_MAP_TYPE_ARRAY, int, struct fp_slab_filter);
FP_MAP(stats, BPF_MAP_TYPE_ARRAY, int, u64);
FP_MAP(files, BPF_MAP_TYPE_HASH, struct fp_file_key, struct fp_file_val);
FP_MAP(stack_pages, BPF_MAP_TYPE_ARRAY, u32, struct fp_counter);
FP_MAP(objs, BPF_MAP_TYPE_HASH, u64, struct fp_obj_val);
FP_MAP(sites, BPF_MAP_TYPE_HASH, struct fp_site_key, struct fp_counter);
FP_MAP(oom_victims, BPF_MAP_TYPE_ARRAY, int, struct fp_oom_victim);
struct {
    __uint(type, BPF_MAP_TYPE_STACK_TRACE);
    __uint(key_size, sizeof(u32));
    __uint(value_size, FP_STACK_DEPTH_BUILT * sizeof(u64));
    __uint(max_entries, 1);
} stacks SEC(".maps"), stacks_alt SEC(".maps");

/* Per CPU, per event with nested twins (FP_NEST_*): the events that event's tp_btf
 * program ran last there, by identity (a pfn, an object's address), for its twins to
 * tell them from the ones the kernel skipped. */
#define FP_DONE_RING 8
struct fp_done {
    u64 id[FP_DONE_RING];
    u64 next;
};
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, int);
    __type(value, struct fp_done);
    __uint(max_entries, 4);
} nesting SEC(".maps");

#define FP_LOOKUP(m, k) bpf_map_lookup_elem(&m, k)
#define FP_UPDATE(m, k, v) bpf_map_update_elem(&m, k, v, BPF_ANY)
#define FP_INSERT(m, k, v) bpf_map_update_elem(&m, k, v, BPF_NOEXIST)
#define FP_DELETE(m, k) bpf_map_delete_elem(&m, k)
#define FP_LOOKUP_OR_INIT(m, k, v) fp_lookup_or_try_init(&m, k, v)
/* The program's own context (`fp_ctx`, set by FP_TRACEPOINT below), whatever the logic
 * passes: in a hot event's body `args` is a copy of the event's fields, not the context.
 * `fp_skip`: the frames of the tracing machinery a tp_btf program's stack starts with. */
#define FP_STACKID(m, ctx, flags) bpf_get_stackid(fp_ctx, &m, (flags) + fp_skip)
#define FP_XADD(p, n) __sync_fetch_and_add(p, n)

/* bcc's lookup_or_try_init: an insert that lost a race still finds the winner's entry. */
static __always_inline void *fp_lookup_or_try_init(void *map, const void *key, const void *init)
{
    void *v = bpf_map_lookup_elem(map, key);
    if (v)
        return v;
    bpf_map_update_elem(map, key, init, BPF_NOEXIST);
    return bpf_map_lookup_elem(map, key);
}

/* Fields some kernels lack, as "flavours" (CO-RE ignores the ___suffix): the build
 * machine's vmlinux.h need not have them. Each is read only where the running kernel's
 * BTF has it (bpf_core_field_exists). */
struct trace_event_raw_mm_filemap_op_page_cache___fp {
    unsigned char order;  /* folio kernels (seen in 6.1 and 6.18) */
} __attribute__((preserve_access_index));
struct trace_event_raw_percpu_alloc_percpu___fp {
    unsigned long call_site;  /* ~5.19+ */
} __attribute__((preserve_access_index));
struct trace_event_raw_mark_victim___fp {
    u32 __data_loc_comm;  /* 6.18 and Debian's 6.1.0-57; older 6.1 lacks it */
} __attribute__((preserve_access_index));

/* The filemap events are hot (below): their bodies read the order from the copy. */
#define FP_FOLIO_ORDER(a) ((a)->order)
static __always_inline u32 fp_tp_folio_order(void *args)
{
    struct trace_event_raw_mm_filemap_op_page_cache___fp *a = args;
    return bpf_core_field_exists(a->order) ? a->order : 0;
}

#define FP_PERCPU_CALL_SITE(a) fp_percpu_call_site((void *)(a))
static __always_inline u64 fp_percpu_call_site(void *args)
{
    struct trace_event_raw_percpu_alloc_percpu___fp *a = args;
    return bpf_core_field_exists(a->call_site) ? a->call_site : 0;
}

/* A __data_loc string: offset from the event's start in the low 16 bits. */
#define FP_VICTIM_COMM(dst, a) fp_victim_comm(dst, sizeof(dst), (void *)(a))
static __always_inline void fp_victim_comm(char *dst, u32 size, void *args)
{
    struct trace_event_raw_mark_victim___fp *a = args;
    if (bpf_core_field_exists(a->__data_loc_comm))
        bpf_probe_read_kernel_str(dst, size, (char *)args + (a->__data_loc_comm & 0xffff));
}

/*
 * Probes. Each event is a classic tracepoint program (SEC("tracepoint/..."): its
 * context the trace record, read at offsets CO-RE relocates). The hot events are also
 * built as tp_btf programs (SEC("tp_btf/..."), 5.5+), which the loader prefers where
 * the kernel has BTF (tracer/loader.py: Plan.btf_events):
 * - the kernel skips a classic tracepoint's program whenever any kprobe or tracepoint
 *   program already runs on that CPU, or a map is read or written from user space there
 *   (one per-CPU counter, bpf_prog_active: trace_call_bpf and bpf_disable_instrumentation
 *   in kernel/trace/bpf_trace.c and kernel/bpf/syscall.c, 6.1 as 6.18), and counts it in
 *   every program of that event (recursion_misses); a raw tracepoint's program is
 *   skipped only when that same program is already running on that CPU (prog->active,
 *   __bpf_trace_run): an interrupt's allocation inside our mm_page_alloc program;
 * - it reads the tracepoint's own arguments (a struct folio *, a struct page *) with no
 *   trace record filled first.
 * Both run one body: the event's fields copied into struct fp_ev_<event> (`args` in
 * footprint_logic.h), the program's context as `fp_ctx` (for stack walks).
 *
 * An interrupt's event inside our own tp_btf program of that event (a page freed in an
 * irq while we walk an allocation's stack, or while the kernel's wrapper around our
 * program runs) is skipped by the kernel: lost, and the page it freed stayed counted.
 * So each tp_btf program of an event an interrupt can fire (FP_TWINNED_*) has two
 * nested twins on the same event, programs of their own (each its own prog->active)
 * attached after it, which the kernel runs right after the first one for every event: a
 * task's event, a softirq's inside it, a hardirq's inside that (RCU callbacks free
 * objects by the thousand in a softirq). The first one notes, once done, each event it
 * ran in a small per-CPU ring (`nesting`: tracepoint probes run with preemption off, so
 * only an interrupt comes in between); a twin looks for its event there: found, it was
 * run (the last twin takes every note of it off); not found, the kernel skipped the
 * programs before it for this event, and it runs the body (noting it for the last
 * twin), counted in ST_NESTED + FP_NEST_<event>. Lost is then the first program's
 * misses less those. An event is identified by its pfn or object address: no two events
 * of one kind in flight on a CPU share one (a page is not freed inside its own free),
 * but for a kfree of NULL or a failed allocation, whose body changes nothing.
 */
struct fp_ev_mm_filemap_add_to_page_cache {
    u64 pfn, i_ino, index;
    u32 s_dev, order;
};
#define fp_ev_mm_filemap_delete_from_page_cache fp_ev_mm_filemap_add_to_page_cache
struct fp_ev_mm_page_alloc {
    u64 pfn;
    u32 order, gfp_flags, migratetype;
};
struct fp_ev_mm_page_free {
    u64 pfn;
    u32 order;
};
struct fp_ev_kmalloc {
    u64 call_site;
    const void *ptr;
    u64 bytes_req, bytes_alloc;
    u32 gfp_flags;
};
struct fp_ev_kfree {
    u64 call_site;
    const void *ptr;
};

/* Copies from the classic trace record. */
#define FP_FROM_TP_FILEMAP(ev, tp) do { \
    (ev)->pfn = (tp)->pfn; (ev)->i_ino = (tp)->i_ino; (ev)->index = (tp)->index; \
    (ev)->s_dev = (tp)->s_dev; (ev)->order = fp_tp_folio_order(tp); } while (0)
#define fp_from_tp_mm_filemap_add_to_page_cache FP_FROM_TP_FILEMAP
#define fp_from_tp_mm_filemap_delete_from_page_cache FP_FROM_TP_FILEMAP
#define fp_from_tp_mm_page_alloc(ev, tp) do { \
    (ev)->pfn = (tp)->pfn; (ev)->order = (tp)->order; (ev)->gfp_flags = (tp)->gfp_flags; \
    (ev)->migratetype = (tp)->migratetype; } while (0)
#define fp_from_tp_mm_page_free(ev, tp) do { \
    (ev)->pfn = (tp)->pfn; (ev)->order = (tp)->order; } while (0)
#define fp_from_tp_kmalloc(ev, tp) do { \
    (ev)->call_site = (tp)->call_site; (ev)->ptr = (tp)->ptr; (ev)->bytes_req = (tp)->bytes_req; \
    (ev)->bytes_alloc = (tp)->bytes_alloc; (ev)->gfp_flags = (tp)->gfp_flags; } while (0)
#define fp_from_tp_kfree(ev, tp) do { \
    (ev)->call_site = (tp)->call_site; (ev)->ptr = (tp)->ptr; } while (0)

/* A struct page's pfn from its address, as page_to_pfn() with SPARSEMEM_VMEMMAP:
 * (page - vmemmap). x86-64 starts the vmemmap region on a 1 GiB boundary (VMEMMAP_START,
 * or vmemmap_base placed by arch/x86/mm/kaslr.c, which aligns every region to PUD_SIZE;
 * 4.8+), and the loader takes tp_btf only where every struct page lies within the first
 * GiB of it (max_pfn x sizeof(struct page) <= 1 GiB, x86-64): the offset in that GiB is
 * the pfn's. vmemmap_base is a data symbol (absent from kallsyms without KALLSYMS_ALL,
 * and from BTF), so this needs no symbol. The pointer is read as a number from the
 * context: the verifier allows no arithmetic on a BTF pointer. NULL (a failed
 * allocation) gives -1, as the trace record does. */
/* Argument i as a number, read around the verifier's typing: a pointer to a struct is a
 * BTF pointer (no arithmetic), and 6.1 refuses a direct read of a `const void *` argument
 * ("arg is not a struct": the const hides the void until later kernels look through it). */
static __always_inline u64 fp_ctx_u64(u64 *ctx, int i)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), &ctx[i]);
    return v;
}

static __always_inline u64 fp_ctx_pfn(u64 *ctx, int i)
{
    u64 addr = fp_ctx_u64(ctx, i);
    if (!addr)
        return (u64)-1;
    return (addr & ((1ULL << 30) - 1)) / bpf_core_type_size(struct page);
}

/* folio_order() (a large folio keeps its order in its first tail page: `_folio_order`
 * in 6.1, the low byte of `_flags_1` in 6.18; `flags` an unsigned long in 6.1, a
 * memdesc_flags_t (a struct of one) in 6.18) and the pfn count. Reads by CO-RE probe:
 * also the kprobe's (an untyped pointer). */
struct folio___v61 {
    unsigned long flags;
    unsigned char _folio_order;
} __attribute__((preserve_access_index));
struct folio___v618 {
    struct { unsigned long f; } flags;  /* memdesc_flags_t: CO-RE matches any struct */
    unsigned long _flags_1;
} __attribute__((preserve_access_index));

static __always_inline u32 fp_folio_order(void *folio)
{
    u64 flags = 0;
    struct folio___v61 *f61 = folio;
    struct folio___v618 *f618 = folio;
    /* A field read only where its type matches the kernel's: CO-RE refuses to relocate
     * an unsigned long onto a struct (and the program would not load). */
    if (bpf_core_field_exists(f618->flags.f))
        bpf_core_read(&flags, sizeof(flags), &f618->flags.f);
    else
        bpf_core_read(&flags, sizeof(flags), &f61->flags);
    if (!(flags & (1ULL << bpf_core_enum_value(enum pageflags, PG_head))))
        return 0;
    u8 order = 0;
    if (bpf_core_field_exists(f61->_folio_order))
        bpf_core_read(&order, 1, &f61->_folio_order);
    else if (bpf_core_field_exists(f618->_flags_1))
        bpf_core_read(&order, 1, &f618->_flags_1);  /* little-endian: the low byte */
    return order & 31;
}

/* mm_filemap_op_page_cache's TP_fast_assign, from its folio (5.16+: struct folio *). */
static __always_inline void fp_from_btf_filemap(struct fp_ev_mm_filemap_add_to_page_cache *ev,
                                                u64 *ctx)
{
    struct folio *folio = (void *)ctx[0];
    struct inode *host = folio->mapping->host;
    struct super_block *sb = host->i_sb;
    ev->pfn = fp_ctx_pfn(ctx, 0);
    ev->i_ino = host->i_ino;
    ev->index = folio->index;
    ev->s_dev = sb ? sb->s_dev : host->i_rdev;
    ev->order = fp_folio_order(folio);
}
#define fp_from_btf_mm_filemap_add_to_page_cache fp_from_btf_filemap
#define fp_from_btf_mm_filemap_delete_from_page_cache fp_from_btf_filemap
/* (struct page *page, unsigned int order, gfp_t gfp_flags, int migratetype) */
#define fp_from_btf_mm_page_alloc(ev, ctx) do { \
    (ev)->pfn = fp_ctx_pfn(ctx, 0); (ev)->order = (ctx)[1]; (ev)->gfp_flags = (ctx)[2]; \
    (ev)->migratetype = (ctx)[3]; } while (0)
/* (struct page *page, unsigned int order) */
#define fp_from_btf_mm_page_free(ev, ctx) do { \
    (ev)->pfn = fp_ctx_pfn(ctx, 0); (ev)->order = (ctx)[1]; } while (0)
/* (unsigned long call_site, const void *ptr, size_t bytes_req, size_t bytes_alloc,
 *  gfp_t gfp_flags, ...): the same first five since 4.x */
#define fp_from_btf_kmalloc(ev, ctx) do { \
    (ev)->call_site = (ctx)[0]; (ev)->ptr = (const void *)fp_ctx_u64(ctx, 1); \
    (ev)->bytes_req = (ctx)[2]; (ev)->bytes_alloc = (ctx)[3]; (ev)->gfp_flags = (ctx)[4]; } while (0)
/* (unsigned long call_site, const void *ptr) */
#define fp_from_btf_kfree(ev, ctx) do { \
    (ev)->call_site = (ctx)[0]; (ev)->ptr = (const void *)fp_ctx_u64(ctx, 1); } while (0)

/* Which events are hot: FP_TRACEPOINT picks FP_TP_1 for them, FP_TP_0 for the rest (the
 * kernel's __is_defined() idiom: any event not listed here stays a classic tracepoint). */
#define FP_HOT_mm_filemap_add_to_page_cache 1
#define FP_HOT_mm_filemap_delete_from_page_cache 1
#define FP_HOT_mm_page_alloc 1
#define FP_HOT_mm_page_free 1
#define FP_HOT_kmalloc 1
#define FP_HOT_kfree 1
/* The hot events an interrupt can fire (a page or an object allocated or freed in irq
 * or softirq context) have nested twins (above); a page is never added to or deleted
 * from the page cache there. */
#define FP_TWINNED_mm_page_alloc 1
#define FP_TWINNED_mm_page_free 1
#define FP_TWINNED_kmalloc 1
#define FP_TWINNED_kfree 1
/* An event's identity for its nested twins: the page's pfn, the object's address. */
#define FP_ID_mm_page_alloc(ctx) fp_ctx_pfn(ctx, 0)
#define FP_ID_mm_page_free(ctx) fp_ctx_pfn(ctx, 0)
#define FP_ID_kmalloc(ctx) fp_ctx_u64(ctx, 1)
#define FP_ID_kfree(ctx) fp_ctx_u64(ctx, 1)
/* Their slots in `nesting` and after ST_NESTED (tracer/progkinds.py TWINNED_EVENTS). */
#define FP_NEST_mm_page_alloc 0
#define FP_NEST_mm_page_free 1
#define FP_NEST_kmalloc 2
#define FP_NEST_kfree 3
#define FP_PLACEHOLDER_1 0,
#define FP_SECOND(ignored, val, ...) val
#define FP_IS_HOT(event) FP_EXPAND(FP_IS_HOT_, FP_HOT_##event)
#define FP_IS_TWINNED(event) FP_EXPAND(FP_IS_HOT_, FP_TWINNED_##event)
#define FP_EXPAND(f, x) f(x)  /* x's macro replaced first */
#define FP_IS_HOT_(val) FP_IS_HOT__(FP_PLACEHOLDER_##val)
#define FP_IS_HOT__(junk_or_0) FP_SECOND(junk_or_0 1, 0, 0)
#define FP_CAT(a, b) FP_CAT_(a, b)
#define FP_CAT_(a, b) a##b

/* A tp_btf program's stack walk (bpf_get_stackid_raw_tp: from the helper's caller) starts
 * with the program, bpf_trace_runN and __traceiter_<event> (where several programs share
 * the event; else the allocator's own entry): skipped, so that its frames are as deep
 * as a classic tracepoint's, which start at the allocator. */
#define FP_BTF_SKIP 3
#define FP_TRACEPOINT(group, event, raw) FP_CAT(FP_TP_, FP_IS_HOT(event))(group, event, raw)
/* A nested twin's part (see "nested twins" above): whether it runs this event's body.
 * A note from the first program (or the first twin) says the event ran; the last twin
 * takes the note off. One that runs the body notes it for the twins after it. A kfree
 * of NULL (id 0) or a failed allocation (pfn -1) is an event like the others: its body
 * changes nothing, but one the kernel skipped is counted as run, not lost. */
static __always_inline int fp_twin_runs(int slot, u64 id, int last)
{
    struct fp_done *done = bpf_map_lookup_elem(&nesting, &slot);
    if (!done)
        return 0;
    int found = 0;
    for (int i = 1; i <= FP_DONE_RING; i++) {  /* the latest note first: the usual find */
        u32 at = (done->next - i) & (FP_DONE_RING - 1);
        if (done->id[at] == id) {
            found = 1;
            if (!last)
                break;
            /* the last twin takes every note of this id off: one left by an event whose
             * last twin the kernel skipped would pass a later event of a reused address
             * (slab objects come back LIFO) as run */
            done->id[at] = 0;
        }
    }
    if (found)
        return 0;
    if (!last)
        done->id[done->next++ & (FP_DONE_RING - 1)] = id;
    int key = ST_NESTED + slot;
    u64 *count = bpf_map_lookup_elem(&stats, &key);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 1;
}
#define FP_TWIN(group, event, kind, last) \
    SEC("tp_btf/" #event) \
    int kind##__##group##__##event(u64 *ctx) \
    { \
        if (!fp_twin_runs(FP_NEST_##event, FP_ID_##event(ctx), last)) \
            return 0; \
        struct fp_ev_##event ev = {}; \
        fp_from_btf_##event(&ev, ctx); \
        return fp_run__##event(ctx, FP_BTF_SKIP, &ev); \
    }
#define FP_TWINS_0(group, event)
#define FP_TWINS_1(group, event) \
    FP_TWIN(group, event, tp_btf_nested, 0) \
    FP_TWIN(group, event, tp_btf_nested2, 1)
#define FP_NOTE_0(event, ctx)
#define FP_NOTE_1(event, ctx) { \
        int slot = FP_NEST_##event; \
        struct fp_done *done = bpf_map_lookup_elem(&nesting, &slot); \
        if (done) \
            done->id[done->next++ & (FP_DONE_RING - 1)] = FP_ID_##event(ctx); \
    }
#define FP_TP_0(group, event, raw) \
    static __always_inline int fp_run__##event(void *fp_ctx, u32 fp_skip, \
                                               struct trace_event_raw_##raw *args); \
    SEC("tracepoint/" #group "/" #event) \
    int tracepoint__##group##__##event(struct trace_event_raw_##raw *tp) \
    { \
        return fp_run__##event(tp, 0, tp); \
    } \
    static __always_inline int fp_run__##event(void *fp_ctx, u32 fp_skip, \
                                               struct trace_event_raw_##raw *args)
#define FP_TP_1(group, event, raw) \
    static __always_inline int fp_run__##event(void *fp_ctx, u32 fp_skip, struct fp_ev_##event *args); \
    SEC("tracepoint/" #group "/" #event) \
    int tracepoint__##group##__##event(struct trace_event_raw_##raw *tp) \
    { \
        struct fp_ev_##event ev = {}; \
        fp_from_tp_##event(&ev, tp); \
        return fp_run__##event(tp, 0, &ev); \
    } \
    SEC("tp_btf/" #event) \
    int tp_btf__##group##__##event(u64 *ctx) \
    { \
        struct fp_ev_##event ev = {}; \
        fp_from_btf_##event(&ev, ctx); \
        fp_run__##event(ctx, FP_BTF_SKIP, &ev); \
        FP_CAT(FP_NOTE_, FP_IS_TWINNED(event))(event, ctx) \
        return 0; \
    } \
    FP_CAT(FP_TWINS_, FP_IS_TWINNED(event))(group, event) \
    static __always_inline int fp_run__##event(void *fp_ctx, u32 fp_skip, struct fp_ev_##event *args)

/* Every optional probe is in the object; the loader turns off what this kernel lacks. */
#define FP_HAS_kmem_kmalloc
#define FP_HAS_kmem_kmem_cache_alloc
#define FP_HAS_kmem_kfree
#define FP_HAS_kmem_kmem_cache_free
#define FP_HAS_percpu_percpu_alloc_percpu
#define FP_HAS_percpu_percpu_free_percpu
#define FP_HAS_oom_mark_victim
#define FP_HAS_vmalloc_alloc_vmap_area
#define FP_HAS_vmalloc_free_vmap_area_noflush

#include "footprint_logic.h"

/* The shmem extra (see footprint_logic.h), with CO-RE reads. */
SEC("kprobe/shmem_add_to_page_cache")
int BPF_KPROBE(kprobe__shmem_add_to_page_cache, struct folio *folio, struct address_space *mapping)
{
    struct inode *host = BPF_CORE_READ(mapping, host);
    if (!host)
        return 0;
    u64 ino = BPF_CORE_READ(host, i_ino);
    u32 dev = BPF_CORE_READ(host, i_sb, s_dev);
    return fp_shmem_added(dev, ino, 1ULL << fp_folio_order(folio));
}

/* The vmalloc extras (kernels without the vmalloc tracepoints, before 6.3): the new
 * area's vm_struct on return (its size includes the guard page), taken off at
 * remove_vm_area; the same objects and sites as the tracepoints' (footprint_logic.h). */
SEC("kretprobe/__get_vm_area_node")
int BPF_KRETPROBE(kretprobe__get_vm_area_node, struct vm_struct *area)
{
    if (!area)
        return 0;
    u64 addr = (u64)BPF_CORE_READ(area, addr);
    u64 size = BPF_CORE_READ(area, size);
    if (!addr)
        return 0;
    void *fp_ctx = ctx;  /* FP_STACKID walks from the program's own context */
    u32 fp_skip = 0;
    u32 id = FP_STACK_ID(ctx);
    obj_alloc(addr, id, size > 4096 ? size - 4096 : size, FP_KIND_VMAP);
    return 0;
}

SEC("kprobe/remove_vm_area")
int BPF_KPROBE(kprobe__remove_vm_area, const void *addr)
{
    obj_free((u64)addr);
    return 0;
}
