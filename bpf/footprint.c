/*
 * footprint's bcc frontend: the glue that lets bcc compile footprint.h at attach time
 * (the fallback for kernels without BTF). The logic is all in footprint_types.h and
 * footprint_logic.h; the loader (tracer/loader.py) puts them in place of the #includes.
 *
 * Knobs substituted by the loader before compilation:
 *   FP_MAX_PFN      highest pfn + 1 (from /proc/zoneinfo); FP_PFN_WORDS its u64 words
 *   FP_FILES_MAX    (s_dev, inode) pairs with page-cache pages
 *   FP_CHUNKS_MAX   chunks of the kernel pages' stack-id side table
 *   FP_STACKS_MAX   buckets of each of the two stack maps (non-movable page allocations)
 *   FP_STACK_DEPTH  frames kept per stack
 *   FP_OBJS_MAX     live slab objects tracked by address
 *   FP_SITES_MAX    distinct slab/percpu call sites
 *   FP_HAS_FOLIO_ORDER, FP_HAS_PERCPU_CALL_SITE, FP_OOM_VICTIM_COMM  from tracefs formats
 *   FP_KPROBE_SHMEM defined when the shmem kprobe extra is attached, with the
 *                   FP_OFF_* struct offsets and FP_PG_HEAD from the kernel's BTF
 */
#include <uapi/linux/ptrace.h>
#include "footprint_types.h"

#define CFG_MAX_PFN FP_MAX_PFN
#define CFG_STACKS_MAX FP_STACKS_MAX
#define CFG_MIGRATE_MOVABLE FP_MIGRATE_MOVABLE
#define CFG_OOM_SLOTS FP_OOM_SLOTS

#define FP_TRACEPOINT(group, event, raw) TRACEPOINT_PROBE(group, event)
#define FP_XADD(p, n) lock_xadd(p, n)
#ifdef FP_HAS_FOLIO_ORDER
#define FP_FOLIO_ORDER(a) ((a)->order)
#else
#define FP_FOLIO_ORDER(a) 0
#endif
#ifdef FP_HAS_PERCPU_CALL_SITE
#define FP_PERCPU_CALL_SITE(a) ((a)->call_site)
#else
#define FP_PERCPU_CALL_SITE(a) 0
#endif
#ifdef FP_OOM_VICTIM_COMM
#define FP_VICTIM_COMM(dst, a) TP_DATA_LOC_READ_STR(dst, comm, sizeof(dst))
#else
#define FP_VICTIM_COMM(dst, a) do {} while (0)
#endif

struct fp_stack {
    u64 ip[FP_STACK_DEPTH];
};

BPF_ARRAY(pfn_state, u64, FP_PFN_WORDS);
BPF_HASH(kpage_ids, u32, struct fp_chunk, FP_CHUNKS_MAX);
BPF_ARRAY(chunk_zero, struct fp_chunk, 1);
BPF_ARRAY(slab_filter, struct fp_slab_filter, 1);
BPF_ARRAY(stats, u64, ST_MAX);
BPF_HASH(files, struct fp_file_key, struct fp_file_val, FP_FILES_MAX);
BPF_TABLE("stacktrace", int, struct fp_stack, stacks, FP_STACKS_MAX);
BPF_TABLE("stacktrace", int, struct fp_stack, stacks_alt, FP_STACKS_MAX);
BPF_ARRAY(stack_pages, struct fp_counter, 2 * FP_STACKS_MAX + 1);
BPF_HASH(objs, u64, struct fp_obj_val, FP_OBJS_MAX);
BPF_HASH(sites, struct fp_site_key, struct fp_counter, FP_SITES_MAX);
#ifdef FP_HAS_oom_mark_victim
BPF_ARRAY(oom_victims, struct fp_oom_victim, FP_OOM_SLOTS);
#endif

/* bcc rewrites `map.method()` only outside macros: one small function per map and
 * operation, which the logic's FP_* map macros name. */
#define FP_LOOKUP(m, k) m##_lookup(k)
#define FP_UPDATE(m, k, v) m##_update(k, v)
#define FP_INSERT(m, k, v) m##_insert(k, v)
#define FP_DELETE(m, k) m##_delete(k)
#define FP_LOOKUP_OR_INIT(m, k, v) m##_lookup_or_try_init(k, v)
#define FP_STACKID(m, ctx, flags) m##_stackid(ctx, flags)

static __always_inline u64 *stats_lookup(int *k) { return stats.lookup(k); }
static __always_inline u64 *pfn_state_lookup(int *k) { return pfn_state.lookup(k); }
static __always_inline struct fp_chunk *kpage_ids_lookup(u32 *k) { return kpage_ids.lookup(k); }
static __always_inline int kpage_ids_insert(u32 *k, struct fp_chunk *v) { return kpage_ids.insert(k, v); }
static __always_inline struct fp_chunk *chunk_zero_lookup(int *k) { return chunk_zero.lookup(k); }
static __always_inline struct fp_slab_filter *slab_filter_lookup(int *k) { return slab_filter.lookup(k); }
static __always_inline struct fp_file_val *files_lookup(struct fp_file_key *k) { return files.lookup(k); }
static __always_inline int files_insert(struct fp_file_key *k, struct fp_file_val *v) { return files.insert(k, v); }
static __always_inline struct fp_counter *stack_pages_lookup(u32 *k) { return stack_pages.lookup(k); }
static __always_inline struct fp_obj_val *objs_lookup(u64 *k) { return objs.lookup(k); }
static __always_inline int objs_update(u64 *k, struct fp_obj_val *v) { return objs.update(k, v); }
static __always_inline int objs_delete(u64 *k) { return objs.delete(k); }
static __always_inline struct fp_counter *sites_lookup(struct fp_site_key *k) { return sites.lookup(k); }
static __always_inline struct fp_counter *sites_lookup_or_try_init(struct fp_site_key *k, struct fp_counter *v)
{
    return sites.lookup_or_try_init(k, v);
}
static __always_inline int stacks_stackid(void *ctx, u64 flags) { return stacks.get_stackid(ctx, flags); }
static __always_inline int stacks_alt_stackid(void *ctx, u64 flags) { return stacks_alt.get_stackid(ctx, flags); }
#ifdef FP_HAS_oom_mark_victim
static __always_inline struct fp_oom_victim *oom_victims_lookup(int *k) { return oom_victims.lookup(k); }
#endif

#include "footprint_logic.h"

#ifdef FP_KPROBE_SHMEM
/* The shmem extra (see footprint_logic.h): the struct fields it reads are at offsets the
 * loader took from the running kernel's BTF (tracer/btf.py): no kernel struct headers,
 * and no header match needed. */
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
    return fp_shmem_added(dev, ino, nr);
}
#endif
