/* Records of the kernel baseline (baseline.bpf.c), read by tracer/baseline.py, which
 * mirrors these layouts: change both together and bump FP_BASELINE_VERSION. */
#ifndef FP_BASELINE_H
#define FP_BASELINE_H

#define FP_BASELINE_VERSION 2
#define FP_SUMMARY_MAGIC 0x66706231 /* "fpb1" */

/* fp_rec.flags */
#define FP_REC_SB        1  /* a superblock's summary: ino = inodes walked, pages = sum,
			       swapped = s_magic */
#define FP_REC_SHMEM     2  /* tmpfs/shmem inode: swapped = SHMEM_I(inode)->swapped */
#define FP_REC_UNLINKED  4  /* i_nlink == 0: deleted, kept by an open file or a mapping */
#define FP_REC_TORN      8  /* the list ended at a node removed under the walk */
#define FP_REC_CAPPED   16  /* more entries than the loop's cap: the rest not walked */
#define FP_SUM_FROM_ROOT 32 /* summary: started from the root superblock (no kallsyms) */

struct fp_config {
	__u64 sb_head;		/* &super_blocks (kallsyms), or 0: start from the root sb */
	__u64 image_lo;		/* start of the kernel image: the list head is the one node
				   at or above it (superblocks are slab memory) */
	__u32 max_sbs;		/* bounds of the two bpf_loop walks */
	__u32 max_inodes;
	__u32 only_magic;	/* walk only superblocks of this s_magic (0: every one): the
				   recorder counts tmpfs files at each sample this way */
	__u32 pad;
};

struct fp_rec {
	__u64 ino;
	__u64 pages;
	__u64 swapped;
	__u32 dev;	/* sb->s_dev, the kernel's dev_t (major << 20 | minor) */
	__u32 flags;
};

struct fp_summary {
	__u32 magic;
	__u32 version;
	__u64 records;
	__u64 dropped;		/* records that did not fit the map */
	__u64 dropped_pages;	/* and their pages */
	__u64 sbs;
	__u64 inodes;
	__u64 pages;
	__u64 ns;		/* time of the walk in the kernel */
	__u32 flags;
	__u32 pad;
	__u64 head;		/* the list head the walk met (&super_blocks) */
};

#endif
