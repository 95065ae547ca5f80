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

#define FP_LOOKUP(m, k) bpf_map_lookup_elem(&m, k)
#define FP_UPDATE(m, k, v) bpf_map_update_elem(&m, k, v, BPF_ANY)
#define FP_INSERT(m, k, v) bpf_map_update_elem(&m, k, v, BPF_NOEXIST)
#define FP_DELETE(m, k) bpf_map_delete_elem(&m, k)
#define FP_LOOKUP_OR_INIT(m, k, v) fp_lookup_or_try_init(&m, k, v)
#define FP_STACKID(m, ctx, flags) bpf_get_stackid(ctx, &m, flags)
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

#define FP_FOLIO_ORDER(a) fp_folio_order((void *)(a))
static __always_inline u32 fp_folio_order(void *args)
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

#define FP_TRACEPOINT(group, event, raw) \
    SEC("tracepoint/" #group "/" #event) \
    int tracepoint__##group##__##event(struct trace_event_raw_##raw *args)

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

/* The shmem extra (see footprint_logic.h), with CO-RE reads. A large folio keeps its
 * order in its first tail page: `_folio_order` in 6.1, the low byte of `_flags_1` in
 * 6.18; `flags` is an unsigned long in 6.1 and a memdesc_flags_t (a struct of one) in
 * 6.18. */
struct folio___v61 {
    unsigned long flags;
    unsigned char _folio_order;
} __attribute__((preserve_access_index));
struct folio___v618 {
    struct { unsigned long f; } flags;  /* memdesc_flags_t: CO-RE matches any struct */
    unsigned long _flags_1;
} __attribute__((preserve_access_index));

SEC("kprobe/shmem_add_to_page_cache")
int BPF_KPROBE(kprobe__shmem_add_to_page_cache, struct folio *folio, struct address_space *mapping)
{
    struct inode *host = BPF_CORE_READ(mapping, host);
    if (!host)
        return 0;
    u64 ino = BPF_CORE_READ(host, i_ino);
    u32 dev = BPF_CORE_READ(host, i_sb, s_dev);
    u64 flags = 0, nr = 1;
    struct folio___v61 *f61 = (void *)folio;
    struct folio___v618 *f618 = (void *)folio;
    /* A field read only where its type matches the kernel's: CO-RE refuses to relocate
     * an unsigned long onto a struct (and the program would not load). */
    if (bpf_core_field_exists(f618->flags.f))
        bpf_core_read(&flags, sizeof(flags), &f618->flags.f);
    else
        bpf_core_read(&flags, sizeof(flags), &f61->flags);
    if (flags & (1ULL << bpf_core_enum_value(enum pageflags, PG_head))) {
        u8 order = 0;
        if (bpf_core_field_exists(f61->_folio_order))
            bpf_core_read(&order, 1, &f61->_folio_order);
        else if (bpf_core_field_exists(f618->_flags_1))
            bpf_core_read(&order, 1, &f618->_flags_1);  /* little-endian: the low byte */
        nr = 1ULL << (order & 31);
    }
    return fp_shmem_added(dev, ino, nr);
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
