// SPDX-License-Identifier: GPL-2.0
/*
 * footprint's kernel baseline: the page cache already resident when the tracer
 * attaches, counted by the kernel itself, in one pass.
 *
 * One BPF iterator program (SEC("iter/task"), bpf_iter since 5.8) whose first run walks
 * every superblock (fs/super.c's super_blocks list, linked by sb->s_list) and every
 * inode on it (sb->s_inodes, linked by inode->i_sb_list, fs/inode.c's
 * inode_sb_list_add) with bpf_loop (5.17+), and stores one record per inode that has
 * page cache: (sb->s_dev, i_ino, i_data.nrpages) -- the count the page cache keeps per
 * address_space (mm/filemap.c __filemap_add_folio / page_cache_delete), shmem's pages
 * included (mm/shmem.c shmem_add_to_page_cache), and for shmem inodes also
 * SHMEM_I(inode)->swapped (pages of the file out on swap, not in nrpages).
 * The inode's own i_data, not *i_mapping: a device node on ext4 points i_mapping at
 * the block device's inode, which is counted once, on the bdev file system.
 * With cfg.only_magic set, only the superblocks of that type are walked: the recorder
 * keeps one such copy loaded (only_magic = TMPFS_MAGIC) and runs it at every sample,
 * since shmem adds pages (shmem_add_to_page_cache) without the filemap tracepoint and
 * moves them to swap (shmem_writepage) without the delete one.
 *
 * Records go to an mmapable array map (sized by user space), not to the seq_file: the
 * iterator's seq buffer is 8 pages (kernel/bpf/bpf_iter.c bpf_seq_read), and one run
 * that overflows it fails with E2BIG. The seq_file carries one summary record.
 *
 * Locking. The walk takes none of the kernel's locks (sb_lock, s_inode_list_lock): a
 * BPF program cannot. What makes it safe:
 *  - every read of kernel memory is a probe read (BPF_CORE_READ ->
 *    bpf_probe_read_kernel, copy_from_kernel_nofault): a bad pointer gives an error,
 *    never an oops;
 *  - the program runs under rcu_read_lock (bpf_iter_run_prog), and both objects are
 *    freed through RCU: __put_super does list_del_init(&s->s_list) then
 *    call_rcu(destroy_super_rcu); destroy_inode does call_rcu(i_callback) after evict's
 *    list_del_init(&inode->i_sb_list). A node reached through the list stays memory of
 *    that type until the walk ends; at worst its fields are stale;
 *  - list_del_init points a removed node at itself: a walk standing on it would spin,
 *    so next == node ends that list (the superblock is flagged "torn", user space may
 *    walk again);
 *  - every loop is a bpf_loop with a count: a list that keeps changing cannot hold the
 *    program longer than max_sbs x max_inodes steps.
 * So a concurrent unmount or eviction can make an entry stale or end a list early;
 * it cannot crash the kernel or loop forever.
 *
 * The super_blocks head is static in fs/super.c: not in BTF (vmlinux BTF has only
 * per-CPU variables) and in /proc/kallsyms only with CONFIG_KALLSYMS_ALL (Debian's 6.1
 * has it; the 6.18 host here does not). Without it the walk starts from the reader's
 * own root superblock (task->fs->root.mnt->mnt_sb, always on the list) and goes round
 * the circular list until it is back; the head is then the one node inside the kernel
 * image (address >= _text), while superblocks are slab memory (alloc_super: kzalloc).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "baseline.h"

char LICENSE[] SEC("license") = "GPL";

#define TMPFS_MAGIC 0x01021994 /* include/uapi/linux/magic.h: shmem's s_magic */

/* Set by user space in .rodata before load: one struct, so its layout is baseline.h's
 * and not the compiler's order of separate globals. */
const volatile struct fp_config cfg = {
	.max_sbs = 1 << 16,
	.max_inodes = 1 << 23,	/* bpf_loop's cap, BPF_MAX_LOOPS */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fp_rec);
	__uint(max_entries, 1); /* sized by user space before load */
} records SEC(".maps");

struct walk {
	struct list_head *start;	/* where the superblock walk began (and ends) */
	struct list_head *sb_node;	/* current s_list node */
	struct list_head *ihead;	/* &sb->s_inodes of the superblock being walked */
	struct list_head *inode_node;	/* current i_sb_list node */
	__u32 dev;
	__u32 shmem;
	__u32 sb_flags;
	__u32 nrec;			/* records stored */
	__u64 sb_inodes, sb_pages;
	struct fp_summary sum;
};

static __always_inline int is_head(struct list_head *node)
{
	if (cfg.sb_head)
		return (__u64)node == cfg.sb_head;
	return (__u64)node >= cfg.image_lo;
}

static __always_inline void put(struct walk *w, struct fp_rec *r)
{
	__u32 i = w->nrec;
	struct fp_rec *slot = bpf_map_lookup_elem(&records, &i);

	if (!slot) {	/* the map is full: counted, so user space can size it up */
		w->sum.dropped++;
		w->sum.dropped_pages += r->pages;
		return;
	}
	*slot = *r;
	w->nrec = i + 1;
}

static long inode_step(__u32 i, struct walk *w)
{
	struct list_head *node = w->inode_node;
	struct inode *inode;
	struct fp_rec r = {};
	__u64 pages, swapped = 0;

	if (node == w->ihead)
		return 1;	/* back at &sb->s_inodes: the list is done */
	inode = (void *)node - bpf_core_field_offset(struct inode, i_sb_list);
	pages = BPF_CORE_READ(inode, i_data.nrpages);
	if (w->shmem) {
		struct shmem_inode_info *info = (void *)inode -
			bpf_core_field_offset(struct shmem_inode_info, vfs_inode);
		swapped = BPF_CORE_READ(info, swapped);
	}
	w->sb_inodes++;
	if (pages || swapped) {
		r.ino = BPF_CORE_READ(inode, i_ino);
		r.pages = pages;
		r.swapped = swapped;
		r.dev = w->dev;
		r.flags = (w->shmem ? FP_REC_SHMEM : 0) |
			  (BPF_CORE_READ(inode, i_nlink) ? 0 : FP_REC_UNLINKED);
		w->sb_pages += pages;
		put(w, &r);
	}
	w->inode_node = BPF_CORE_READ(node, next);
	if (!w->inode_node || w->inode_node == node) {
		/* unreadable, or removed under us (list_del_init): end this list */
		w->sb_flags |= FP_REC_TORN;
		return 1;
	}
	return 0;
}

static __always_inline void walk_sb(struct walk *w, struct super_block *sb)
{
	struct fp_rec r = {};
	long n;

	w->dev = BPF_CORE_READ(sb, s_dev);
	w->shmem = BPF_CORE_READ(sb, s_magic) == TMPFS_MAGIC;
	w->ihead = (void *)sb + bpf_core_field_offset(struct super_block, s_inodes);
	w->inode_node = BPF_CORE_READ(sb, s_inodes.next);
	w->sb_flags = 0;
	w->sb_inodes = 0;
	w->sb_pages = 0;
	if (!w->inode_node) {
		w->sb_flags |= FP_REC_TORN;
	} else {
		n = bpf_loop(cfg.max_inodes, inode_step, w, 0);
		if (n >= cfg.max_inodes && w->inode_node != w->ihead)
			w->sb_flags |= FP_REC_CAPPED;
	}
	/* One summary per superblock: which were walked, how far, and their sum. */
	r.ino = w->sb_inodes;
	r.pages = w->sb_pages;
	r.swapped = BPF_CORE_READ(sb, s_magic);
	r.dev = w->dev;
	r.flags = FP_REC_SB | w->sb_flags;
	put(w, &r);
	w->sum.sbs++;
	w->sum.inodes += w->sb_inodes;
	w->sum.pages += w->sb_pages;
	w->sum.flags |= w->sb_flags;
}

static long sb_step(__u32 i, struct walk *w)
{
	struct list_head *node = w->sb_node, *next;

	if (!is_head(node)) {
		struct super_block *sb = (void *)node - bpf_core_field_offset(struct super_block, s_list);

		if (!cfg.only_magic || BPF_CORE_READ(sb, s_magic) == cfg.only_magic)
			walk_sb(w, sb);
	} else
		w->sum.head = (__u64)node;
	next = BPF_CORE_READ(node, next);
	if (next == w->start)
		return 1;	/* round the circle */
	if (!next || next == node) {
		w->sum.flags |= FP_REC_TORN;
		return 1;
	}
	w->sb_node = next;
	return 0;
}

SEC("iter/task")
int baseline(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct walk w = {};
	long n;

	/* The program runs once per task; the walk is done on the first run only. */
	if (ctx->meta->seq_num != 0)
		return 0;
	w.sum.magic = FP_SUMMARY_MAGIC;
	w.sum.version = FP_BASELINE_VERSION;
	w.sum.ns = bpf_ktime_get_ns();
	if (cfg.sb_head) {
		struct list_head *head = (struct list_head *)cfg.sb_head;

		w.start = head;
		/*
		 * Begin at the first superblock as read from the head, not at the head:
		 * before 6.7 the verifier checks a bpf_loop callback once, with the state of
		 * the first call, and hard-wires the branches that are constant in it. With
		 * the position a known constant (.rodata), is_head() was "always true" and
		 * no superblock was ever walked (seen on 6.1). A position read from memory
		 * is unknown to the verifier, so every branch stays.
		 */
		w.sb_node = BPF_CORE_READ(head, next);
	} else {
		struct task_struct *t = (void *)bpf_get_current_task();
		struct super_block *root = BPF_CORE_READ(t, fs, root.mnt, mnt_sb);

		w.start = root ? (void *)root + bpf_core_field_offset(struct super_block, s_list) : 0;
		w.sb_node = w.start;
		w.sum.flags |= FP_SUM_FROM_ROOT;
	}
	if ((!cfg.image_lo && !cfg.sb_head) || !w.sb_node) {
		/* no way to tell the head (refuse to guess), or nothing readable to start at */
		w.sum.flags |= FP_REC_TORN;
	} else {
		n = bpf_loop(cfg.max_sbs, sb_step, &w, 0);
		if (n >= cfg.max_sbs)
			w.sum.flags |= FP_REC_CAPPED;
	}
	w.sum.records = w.nrec;
	w.sum.ns = bpf_ktime_get_ns() - w.sum.ns;
	bpf_seq_write(seq, &w.sum, sizeof(w.sum));
	return 0;
}
