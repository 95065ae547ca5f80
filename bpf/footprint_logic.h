/* footprint's logic: see footprint_types.h for what each frontend provides. */

static __always_inline void stat_inc(int which)
{
    int key = which;
    u64 *v = FP_LOOKUP(stats, &key);
    if (v)
        FP_XADD(v, 1);
}

static __always_inline void counter_add(struct fp_counter *c, s64 n)
{
    FP_XADD(&c->resident, n);
    FP_XADD(&c->added, n);
    /* Racy by design: a peak that misses a concurrent add by one folio is fine. */
    if (c->resident > c->peak)
        c->peak = c->resident;
}

static __always_inline void counter_sub(struct fp_counter *c, s64 n)
{
    FP_XADD(&c->resident, -n);
    FP_XADD(&c->removed, n);
}

static __always_inline u32 *pfn_slot(u64 pfn)
{
    if (pfn >= CFG_MAX_PFN) {
        stat_inc(ST_PFN_RANGE);
        return 0;
    }
    int key = pfn;
    return FP_LOOKUP(pfn_state, &key);
}

/* The file's counter, created on first sight with a fresh id. */
static __always_inline struct fp_file_val *file_get(u32 dev, u64 ino, bool create)
{
    struct fp_file_key key = {.ino = ino, .dev = dev};
    struct fp_file_val *fv = FP_LOOKUP(files, &key);
    if (fv || !create)
        return fv;

    /* Ids come from per-CPU ranges: no atomic fetch-add needed (bcc 0.26 + LLVM 14
     * cannot use its return value). */
    int zero = 0;
    u32 *next = FP_LOOKUP(next_file_id, &zero);
    if (!next)
        return 0;
    if (*next >= CFG_FILES_PER_CPU) {
        stat_inc(ST_FILES_FULL);
        return 0;
    }
    u32 id = bpf_get_smp_processor_id() * CFG_FILES_PER_CPU + *next;
    *next += 1;
    if (id >= CFG_FILES_MAX) {
        stat_inc(ST_FILES_FULL);
        return 0;
    }
    struct fp_file_val init = {.id = id};
    /* Two CPUs may race here; the loser's id stays unused, which is harmless. */
    FP_INSERT(files, &key, &init);
    fv = FP_LOOKUP(files, &key);
    if (!fv) {
        stat_inc(ST_FILES_FULL);
        return 0;
    }
    int idx = fv->id;
    FP_UPDATE(file_of, &idx, &key);
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
        struct fp_counter *c = FP_LOOKUP(stack_pages, &sid);
        if (c)
            counter_sub(c, pages);
        if (freed)
            stat_inc(ST_KPAGE_FREE);
    } else if (FP_STATE_KIND(s) == FP_KIND_PAGECACHE) {
        int idx = FP_STATE_ID(s);
        struct fp_file_key *key = FP_LOOKUP(file_of, &idx);
        if (!key)
            return;
        struct fp_file_val *fv = FP_LOOKUP(files, key);
        if (fv)
            counter_sub(&fv->c, pages);
        if (freed)
            stat_inc(ST_PC_FREED_NO_DEL);
    }
}

FP_TRACEPOINT(filemap, mm_filemap_add_to_page_cache, mm_filemap_op_page_cache)
{
    u32 order = FP_FOLIO_ORDER(args);
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

FP_TRACEPOINT(filemap, mm_filemap_delete_from_page_cache, mm_filemap_op_page_cache)
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
    u32 order = FP_FOLIO_ORDER(args);
    stat_inc(ST_PC_DEL_UNTRACKED);
    struct fp_file_val *fv = file_get(args->s_dev, args->i_ino, true);
    if (!fv)
        return 0;
    if (fv->flags & FILE_ADDS_BY_KPROBE)
        counter_sub(&fv->c, 1LL << order);  /* its adds were counted without pfns */
    else
        FP_XADD(&fv->c.untracked_removed, 1LL << order);
    return 0;
}

/* The optional shmem kprobe (kernels with kprobes): tmpfs/shmem adds folios with
 * shmem_add_to_page_cache(folio, mapping, ...), which does not fire the filemap add
 * tracepoint while removals fire the delete one. Counted per file without pfns; deletes
 * subtract. Each frontend reads the folio and mapping its own way and calls this. */
static __always_inline int fp_shmem_added(u32 dev, u64 ino, u64 nr)
{
    struct fp_file_val *fv = file_get(dev, ino, true);
    if (!fv)
        return 0;
    fv->flags |= FILE_ADDS_BY_KPROBE;
    counter_add(&fv->c, nr);
    return 0;
}

FP_TRACEPOINT(kmem, mm_page_alloc, mm_page_alloc)
{
    /* Movable pages are user memory or page cache: the filemap probe and meminfo
     * account for them. Stacks are taken only for the kernel's own pages. */
    if (args->migratetype == CFG_MIGRATE_MOVABLE)
        return 0;
    u32 *slot = pfn_slot(args->pfn);
    if (!slot)
        return 0;
    u32 order = args->order;
    int sid = FP_STACKID(stacks, args, 0);
    u32 id = 0;
    if (sid >= 0) {
        id = sid + 1;
    } else {
        sid = FP_STACKID(stacks_alt, args, 1 /* skip one frame: a new hash */);
        if (sid >= 0)
            id = CFG_STACKS_MAX + sid + 1;
        else
            stat_inc(ST_STACK_LOST);
    }
    struct fp_counter zero = {};
    struct fp_counter *c = FP_LOOKUP_OR_INIT(stack_pages, &id, &zero);
    if (!c)
        return 0;
    counter_add(c, 1LL << order);
    *slot = FP_STATE(FP_KIND_KPAGE, order, id);
    stat_inc(ST_KPAGE_ALLOC);
    return 0;
}

FP_TRACEPOINT(kmem, mm_page_free, mm_page_free)
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
    struct fp_counter *c = FP_LOOKUP_OR_INIT(sites, &sk, &zero);
    if (!c) {
        stat_inc(ST_SITES_FULL);
        return;
    }
    struct fp_obj_val ov = {.call_site = call_site, .bytes = bytes, .kind = kind};
    if (FP_UPDATE(objs, &ptr, &ov) != 0) {
        stat_inc(kind ? ST_PCPU_FULL : ST_OBJS_FULL);
        return;
    }
    counter_add(c, bytes);
    stat_inc(ST_OBJ_ALLOC);
}

static __always_inline void obj_free(u64 ptr)
{
    struct fp_obj_val *ov = FP_LOOKUP(objs, &ptr);
    if (!ov)
        return;
    struct fp_site_key sk = {.call_site = ov->call_site, .kind = ov->kind};
    struct fp_counter *c = FP_LOOKUP(sites, &sk);
    if (c)
        counter_sub(c, ov->bytes);
    FP_DELETE(objs, &ptr);
    stat_inc(ST_OBJ_FREE);
}

#ifdef FP_HAS_kmem_kmalloc
FP_TRACEPOINT(kmem, kmalloc, kmalloc)
{
    obj_alloc((u64)args->ptr, args->call_site, args->bytes_alloc, 0);
    return 0;
}
#endif

#ifdef FP_HAS_kmem_kmem_cache_alloc
FP_TRACEPOINT(kmem, kmem_cache_alloc, kmem_cache_alloc)
{
    obj_alloc((u64)args->ptr, args->call_site, args->bytes_alloc, 0);
    return 0;
}
#endif

#ifdef FP_HAS_kmem_kfree
FP_TRACEPOINT(kmem, kfree, kfree)
{
    obj_free((u64)args->ptr);
    return 0;
}
#endif

#ifdef FP_HAS_kmem_kmem_cache_free
FP_TRACEPOINT(kmem, kmem_cache_free, kmem_cache_free)
{
    obj_free((u64)args->ptr);
    return 0;
}
#endif

#ifdef FP_HAS_percpu_percpu_alloc_percpu
FP_TRACEPOINT(percpu, percpu_alloc_percpu, percpu_alloc_percpu)
{
    obj_alloc((u64)args->ptr, FP_PERCPU_CALL_SITE(args), args->bytes_alloc, 1);
    return 0;
}
#endif

#ifdef FP_HAS_percpu_percpu_free_percpu
FP_TRACEPOINT(percpu, percpu_free_percpu, percpu_free_percpu)
{
    obj_free((u64)args->ptr);
    return 0;
}
#endif

#ifdef FP_HAS_oom_mark_victim
FP_TRACEPOINT(oom, mark_victim, mark_victim)
{
    int key = ST_OOM_KILLS;
    u64 *count = FP_LOOKUP(stats, &key);
    if (!count)
        return 0;
    /* Not atomic on purpose: the OOM killer marks victims under oom_lock, one at a
     * time (and bcc 0.26 + LLVM 14 cannot use a fetch-add's return value). The count
     * moves after the slot is written: the sampler reads only slots below it. */
    int slot = *count % CFG_OOM_SLOTS;
    struct fp_oom_victim *v = FP_LOOKUP(oom_victims, &slot);
    if (!v)
        return 0;
    v->mono_ns = bpf_ktime_get_ns();
    v->pid = args->pid;
    FP_VICTIM_COMM(v->comm, args);
    bpf_get_current_comm(v->trigger, sizeof(v->trigger));
    *count += 1;
    return 0;
}
#endif
