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

/* The file's counter, created on first sight. */
static __always_inline struct fp_file_val *file_get(u32 dev, u64 ino, bool create)
{
    struct fp_file_key key = {.ino = ino, .dev = dev};
    struct fp_file_val *fv = FP_LOOKUP(files, &key);
    if (fv || !create)
        return fv;
    struct fp_file_val init = {};
    /* Two CPUs may race here: BPF_NOEXIST keeps the first, both then find it. */
    FP_INSERT(files, &key, &init);
    fv = FP_LOOKUP(files, &key);
    if (!fv)
        stat_inc(ST_FILES_FULL);
    return fv;
}

static __always_inline void file_add(struct fp_file_val *fv, s32 n)
{
    FP_XADD(&fv->resident, n);
    FP_XADD(&fv->added, n);
    if (fv->resident > fv->peak)  /* racy by design, as counter_add */
        fv->peak = fv->resident;
}

static __always_inline void file_sub(struct fp_file_val *fv, s32 n)
{
    FP_XADD(&fv->resident, -n);
    FP_XADD(&fv->removed, n);
}

/* Tag the file's counters with the sampler's read number, after they changed: a read
 * that saw the change before the tag sees the tag at its next read (the sampler takes
 * the tags of its last two reads and this one). A plain 16-bit store: racing tags are
 * both recent. */
static __always_inline void file_touched(struct fp_file_val *fv)
{
    int key = ST_EPOCH;
    u64 *epoch = FP_LOOKUP(stats, &key);
    if (epoch)
        fv->epoch = (u16)*epoch;
}

/* Pages of a u64 of 2-bit fields whose low bit is set (bits only at even positions). */
static __always_inline u32 fp_count(u64 x)
{
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (x * 0x0101010101010101ULL) >> 56;
}

/* The chunk of stack ids that holds `pfn`, created when `create` (0: table full). */
static __always_inline struct fp_chunk *chunk_get(u64 pfn, bool create)
{
    u32 key = pfn >> FP_CHUNK_SHIFT;
    struct fp_chunk *ch = FP_LOOKUP(kpage_ids, &key);
    if (ch || !create)
        return ch;
    int zero = 0;
    struct fp_chunk *init = FP_LOOKUP(chunk_zero, &zero);
    if (!init)
        return 0;
    FP_INSERT(kpage_ids, &key, init);
    return FP_LOOKUP(kpage_ids, &key);
}

static __always_inline void stack_sub(u32 sid, u32 pages)
{
    struct fp_counter *c = FP_LOOKUP(stack_pages, &sid);
    if (c)
        counter_sub(c, pages);
}

/* Pages that were in each state before a pfn_set. */
struct fp_was {
    u32 n[4];
};

/* Count what the field `old` (2 bits a pfn) held; returns the KPAGE pfns' bits. */
static __always_inline u64 was_count(struct fp_was *was, u64 old)
{
    u64 lo = old & FP_PATTERN, hi = (old >> 1) & FP_PATTERN;
    was->n[FP_PFN_KPAGE] += fp_count(lo & hi);
    was->n[FP_PFN_PC] += fp_count(hi & ~lo);
    was->n[FP_PFN_NEW] += fp_count(lo & ~hi);
    return lo & hi;
}

/* The pfn (counted from `first`) of the lowest KPAGE bit in `kp`, without a loop. */
static __always_inline u32 lowest_pfn(u64 kp)
{
    return fp_count(((kp & -kp) - 1) & FP_PATTERN);
}

/* Take the KPAGE pfns `kp` (bits of the word from pfn `first`) off their stack: a
 * buddy block is one allocation, so all of them off the stack of the lowest. */
static __always_inline void kpages_release(struct fp_chunk *ch, u64 first, u64 kp)
{
    u32 at = (first + lowest_pfn(kp)) & (FP_CHUNK_PFNS - 1);
    stack_sub(ch ? ch->sid[at] : 0, fp_count(kp));
}

/* A block of at most 16 pfns, inside one word. */
static __always_inline int pfn_set_small(u64 pfn, u32 order, u32 to, u32 sid, struct fp_was *was)
{
    int key = pfn >> 5;
    u64 *word = FP_LOOKUP(pfn_state, &key);
    if (!word)
        return -1;
    u32 shift = (pfn & (FP_PFNS_PER_WORD - 1)) * FP_PFN_BITS;
    u64 mask = (1ULL << (FP_PFN_BITS << order)) - 1;
    u64 want = (FP_PATTERN & mask) * to;
    u64 old = (*word >> shift) & mask;
    u64 kp = was_count(was, old);
    struct fp_chunk *ch = 0;
    /* A KPAGE with no stack (id 0) still overwrites an existing chunk's slots: a stale
     * id there would take its later free off another stack. */
    if (kp || to == FP_PFN_KPAGE)
        ch = chunk_get(pfn, to == FP_PFN_KPAGE && sid);
    if (kp)
        kpages_release(ch, pfn, kp);
    if (to == FP_PFN_KPAGE && ch) {
        u32 at = pfn & (FP_CHUNK_PFNS - 1);
        if (order == 0) {
            ch->sid[at] = sid;
        } else if (order == 1) {
            *(u32 *)&ch->sid[at & (FP_CHUNK_PFNS - 2)] = sid * 0x00010001U;
        } else if (order == 2) {
            *(u64 *)&ch->sid[at & (FP_CHUNK_PFNS - 4)] = sid * 0x0001000100010001ULL;
        } else if (order == 3) {
            u64 *ids = (u64 *)&ch->sid[at & (FP_CHUNK_PFNS - 8)];
            ids[0] = ids[1] = sid * 0x0001000100010001ULL;
        } else {
            u64 *ids = (u64 *)&ch->sid[at & (FP_CHUNK_PFNS - 16)];
            ids[0] = ids[1] = ids[2] = ids[3] = sid * 0x0001000100010001ULL;
        }
    }
    if (old != want)
        FP_XADD(word, (want - old) << shift);
    return 0;
}

/* A block of 32..1024 pfns (orders 5..10), whole words. */
static __always_inline int pfn_set_words(u64 pfn, u32 order, u32 to, u32 sid, struct fp_was *was)
{
    u32 words = 1U << ((order - 5) & 7);
    u64 want = FP_PATTERN * to;
    u64 four = sid * 0x0001000100010001ULL;
    for (u32 w = 0; w < 32; w++) {
        if (w >= words)
            break;
        int key = (pfn >> 5) + w;
        u64 *word = FP_LOOKUP(pfn_state, &key);
        if (!word)
            return -1;
        u64 old = *word;
        u64 kp = was_count(was, old);
        u64 first = (u64)key << 5;
        struct fp_chunk *ch = 0;
        if (kp || to == FP_PFN_KPAGE)  /* as in pfn_set_small: stale ids are overwritten */
            ch = chunk_get(first, to == FP_PFN_KPAGE && sid);
        if (kp)
            kpages_release(ch, first, kp);
        if (to == FP_PFN_KPAGE && ch) {
            u64 *ids = (u64 *)&ch->sid[first & (FP_CHUNK_PFNS - FP_PFNS_PER_WORD)];
            ids[0] = four; ids[1] = four; ids[2] = four; ids[3] = four;
            ids[4] = four; ids[5] = four; ids[6] = four; ids[7] = four;
        }
        if (old != want)
            FP_XADD(word, want - old);
    }
    return 0;
}

/* Put the 2^order pfns from `pfn` into state `to` (KPAGE: charged to stack `sid`);
 * counts what they were in `was`; KPAGE pages leaving that state are taken off their
 * stacks. Each word is changed with one atomic add of (new - old) at the pfns' bits,
 * so pfns of other CPUs' events in the same word are left alone. Returns -1 if the
 * range is outside the array. Buddy blocks and folios are aligned to their size, so
 * an order >= 5 block is whole words and a smaller one sits inside one word. */
static __always_inline int pfn_set(u64 pfn, u32 order, u32 to, u32 sid, struct fp_was *was)
{
    if (order > FP_MAX_ORDER || pfn + (1ULL << order) > CFG_MAX_PFN
            || (pfn & ((1ULL << order) - 1))) {
        stat_inc(ST_PFN_RANGE);
        return -1;
    }
    int err = order < 5 ? pfn_set_small(pfn, order, to, sid, was)
                        : pfn_set_words(pfn, order, to, sid, was);
    was->n[FP_PFN_NONE] = (1U << order) - was->n[1] - was->n[2] - was->n[3];
    return err;
}

/* One pfn's state (the head of a folio says for the folio). */
static __always_inline u32 pfn_get(u64 pfn)
{
    if (pfn >= CFG_MAX_PFN)
        return FP_PFN_NONE;
    int key = pfn >> 5;
    u64 *word = FP_LOOKUP(pfn_state, &key);
    return word ? (*word >> ((pfn & 31) * FP_PFN_BITS)) & 3 : FP_PFN_NONE;
}

FP_TRACEPOINT(filemap, mm_filemap_add_to_page_cache, mm_filemap_op_page_cache)
{
    /* Every field read once, first: the verifier refuses reads through a ctx pointer
     * the compiler has offset. */
    u32 order = FP_FOLIO_ORDER(args);
    u64 pfn = args->pfn;
    u32 dev = args->s_dev;
    u64 ino = args->i_ino;
    stat_inc(ST_PC_ADD);
    struct fp_file_val *fv = file_get(dev, ino, true);
    if (!fv)
        return 0;
    /* A page allocated for the kernel (block-device buffers) now belongs to a file:
     * pfn_set takes it off its stack. */
    struct fp_was was = {};
    if (pfn_set(pfn, order, FP_PFN_PC, 0, &was) < 0)
        return 0;
    file_add(fv, 1 << order);
    file_touched(fv);
    return 0;
}

FP_TRACEPOINT(filemap, mm_filemap_delete_from_page_cache, mm_filemap_op_page_cache)
{
    u32 order = FP_FOLIO_ORDER(args);
    u64 pfn = args->pfn;
    u32 dev = args->s_dev;
    u64 ino = args->i_ino;
    u32 state = pfn_get(pfn);
    struct fp_file_val *fv = file_get(dev, ino, true);
    if (!fv)
        return 0;
    if (state == FP_PFN_PC || state == FP_PFN_NEW || (fv->flags & FILE_ADDS_BY_KPROBE)) {
        /* Counted by its add, by the add of the folio it was migrated or split from,
         * or by the shmem kprobe (adds without pfns). */
        stat_inc(ST_PC_DEL);
        file_sub(fv, 1 << order);
    } else {
        /* There before we attached: the baseline has it. */
        stat_inc(ST_PC_DEL_UNTRACKED);
        FP_XADD(&fv->untracked_removed, 1 << order);
    }
    file_touched(fv);
    if (state == FP_PFN_PC || state == FP_PFN_KPAGE) {
        struct fp_was was = {};
        pfn_set(pfn, order, FP_PFN_NEW, 0, &was);
    }
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
    file_add(fv, nr);
    file_touched(fv);
    return 0;
}

/* The id of the current stack in the stack maps (0: lost in both). A macro: bcc needs
 * the tracepoint's own context pointer at the helper call. */
#define FP_STACK_ID(ctx) ({ \
    int sid_ = FP_STACKID(stacks, ctx, 0); \
    u32 id_ = 0; \
    if (sid_ >= 0) { \
        id_ = sid_ + 1; \
    } else { \
        sid_ = FP_STACKID(stacks_alt, ctx, 1 /* skip one frame: a new hash */); \
        if (sid_ >= 0) \
            id_ = CFG_STACKS_MAX + sid_ + 1; \
    } \
    id_; })

FP_TRACEPOINT(kmem, mm_page_alloc, mm_page_alloc)
{
    u32 order = args->order;
    u64 pfn = args->pfn;
    u32 migratetype = args->migratetype;
    struct fp_was was = {};
    if (migratetype == CFG_MIGRATE_MOVABLE) {
        /* User memory or page cache: the filemap probes and meminfo account for it.
         * Marked NEW only (a page already NEW costs a read, no write). */
        if (order < 5 && pfn < CFG_MAX_PFN) {
            int key = pfn >> 5;
            u64 *word = FP_LOOKUP(pfn_state, &key);
            u64 mask = (1ULL << (FP_PFN_BITS << order)) - 1;
            if (word && ((*word >> ((pfn & 31) * FP_PFN_BITS)) & mask) == (FP_PATTERN & mask))
                return 0;
        }
        pfn_set(pfn, order, FP_PFN_NEW, 0, &was);
        return 0;
    }
    /* Stacks are taken only for the kernel's own pages. */
    u32 id = FP_STACK_ID(args);
    /* No room for the id in the side table: charged to the unknown stack, which is
     * what the free will find. */
    if (id && (!chunk_get(pfn, true) || !chunk_get(pfn + (1ULL << (order & 15)) - 1, true)))
        id = 0;  /* both ends: an order-10 block spans two chunks */
    if (!id)
        stat_inc(ST_STACK_LOST);
    struct fp_counter *c = FP_LOOKUP(stack_pages, &id);
    if (!c)
        return 0;
    if (pfn_set(pfn, order, FP_PFN_KPAGE, id, &was) < 0)
        return 0;
    counter_add(c, 1LL << order);
    stat_inc(ST_KPAGE_ALLOC);
    return 0;
}

FP_TRACEPOINT(kmem, mm_page_free, mm_page_free)
{
    u32 order = args->order;
    u64 pfn = args->pfn;
    /* The common case, a NEW or NONE page: nothing to undo. */
    if (order == 0) {
        u32 st = pfn_get(pfn);
        if (st == FP_PFN_NEW || st == FP_PFN_NONE)
            return 0;
    }
    struct fp_was was = {};
    if (pfn_set(pfn, order, FP_PFN_NEW, 0, &was) < 0)
        return 0;
    if (was.n[FP_PFN_KPAGE])
        stat_inc(ST_KPAGE_FREE);
    if (was.n[FP_PFN_PC])
        stat_inc(ST_PC_FREED_NO_DEL);  /* migrated: the file keeps counting its data */
    return 0;
}

/* Whether objects allocated at `call_site` are followed (see struct fp_slab_filter). */
static __always_inline bool slab_wanted(u64 call_site)
{
    int zero = 0;
    struct fp_slab_filter *f = FP_LOOKUP(slab_filter, &zero);
    if (!f || !f->on)
        return true;
    if (call_site < f->text_lo || call_site >= f->text_hi)
        return true;  /* a module's */
    u32 lo = 0, hi = f->n < FP_SLAB_RANGES ? f->n : FP_SLAB_RANGES;
    for (int i = 0; i < 7; i++) {  /* binary search: 2^7 > FP_SLAB_RANGES */
        if (lo >= hi)
            break;
        u32 mid = (lo + hi) / 2;
        if (mid >= FP_SLAB_RANGES)
            break;
        if (call_site < f->lo[mid & (FP_SLAB_RANGES - 1)])
            hi = mid;
        else if (call_site >= f->hi[mid & (FP_SLAB_RANGES - 1)])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

static __always_inline void obj_alloc(u64 ptr, u64 call_site, u32 bytes, u32 kind)
{
    if (!ptr || (kind == 0 && !slab_wanted(call_site)))
        return;
    /* An entry still there for this address was freed without an event (kfree_rcu,
     * kfree_bulk, kmem_cache_free_bulk): take it off its site before reusing it. */
    struct fp_obj_val *old = FP_LOOKUP(objs, &ptr);
    if (old) {
        struct fp_site_key ok = {.call_site = old->call_site, .kind = old->kind};
        struct fp_counter *oc = FP_LOOKUP(sites, &ok);
        if (oc)
            counter_sub(oc, old->bytes);
        FP_DELETE(objs, &ptr);
    }
    struct fp_site_key sk = {.call_site = call_site, .kind = kind};
    struct fp_counter zero = {};
    struct fp_counter *c = FP_LOOKUP_OR_INIT(sites, &sk, &zero);
    if (!c) {
        stat_inc(ST_SITES_FULL);
        return;
    }
    struct fp_obj_val ov = {.call_site = call_site, .bytes = bytes, .kind = kind};
    if (FP_UPDATE(objs, &ptr, &ov) != 0) {
        stat_inc(kind == 1 ? ST_PCPU_FULL : ST_OBJS_FULL);
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

/* Whether `call_site` lies in library code (struct fp_slab_filter's lib ranges). */
static __always_inline bool slab_library(u64 call_site)
{
    int zero = 0;
    struct fp_slab_filter *f = FP_LOOKUP(slab_filter, &zero);
    if (!f || !f->on)
        return false;
    for (int i = 0; i < FP_LIB_RANGES; i++) {
        if (i >= f->nlib)
            break;
        if (call_site >= f->lib_lo[i] && call_site < f->lib_hi[i])
            return true;
    }
    return false;
}

#define FP_KIND_SLAB_STACK 3
#ifdef FP_HAS_kmem_kmalloc
FP_TRACEPOINT(kmem, kmalloc, kmalloc)
{
    u64 ptr = (u64)args->ptr;
    u64 call_site = args->call_site;
    u32 bytes = args->bytes_alloc;
    if (slab_library(call_site)) {
        u32 id = FP_STACK_ID(args);
        obj_alloc(ptr, id, bytes, FP_KIND_SLAB_STACK);
        return 0;
    }
    obj_alloc(ptr, call_site, bytes, 0);
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

/* vmalloc areas by the stack that asked for them (the vmalloc tracepoints, 6.3+): an
 * object of kind FP_KIND_VMAP keyed by the area's start, counted in a site whose
 * call_site is the stack id. /proc/vmallocinfo names only the immediate caller, which
 * for a library (xz_dec_lzma2_create) is not the owner (squashfs); the stack says. The
 * area's pages come from the bulk allocator, which fires no mm_page_alloc. */
#define FP_KIND_VMAP 2
#ifdef FP_HAS_vmalloc_alloc_vmap_area
FP_TRACEPOINT(vmalloc, alloc_vmap_area, alloc_vmap_area)
{
    u64 addr = args->addr;
    u64 size = args->size;
    int failed = args->failed;
    if (failed || !addr)
        return 0;
    u32 id = FP_STACK_ID(args);
    /* The size asked includes the guard page vmallocinfo's page count leaves out. */
    obj_alloc(addr, id, size > 4096 ? size - 4096 : size, FP_KIND_VMAP);
    return 0;
}
#endif

#ifdef FP_HAS_vmalloc_free_vmap_area_noflush
FP_TRACEPOINT(vmalloc, free_vmap_area_noflush, free_vmap_area_noflush)
{
    obj_free(args->va_start);
    return 0;
}
#endif
