/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Reads from struct task_struct and friends. In the CO-RE object every read
 * is relocated against the running kernel's BTF, and layouts that moved
 * between kernels are ___flavor structs tested with bpf_core_field_exists.
 * In the kernel-specific object (see kread.h) the same reads are plain
 * member accesses of that kernel's headers, and the moves are
 * LINUX_VERSION_CODE branches.
 */
#ifndef TRACEED_TASK_H
#define TRACEED_TASK_H

#include "common.h"

#ifdef TRACEED_FALLBACK
/* The fallback object reads no kernel struct at all: ppid comes from the
 * fork tracepoint and user space, namespaces are unknown (null). */
static __always_inline void *cur_task(void)
{
	return 0;
}

static __always_inline void fill_task(struct event *e, void *task)
{
}

static __always_inline __u64 cwd_id(void)
{
	return 0;
}

static __always_inline __u64 dir_fd_id(__u64 fd)
{
	return 0;
}

struct known_task {
	__u64 fp;
};

static __always_inline void fill_task_once(struct event *e, struct known_task *sent)
{
	sent->fp = 0;
}

static __always_inline void remember_sent(__u32 tgid, const struct known_task *sent)
{
}

static __always_inline void forget_task(__u32 tgid)
{
}
#else

#ifdef CORE
/* Before 4.19 a task found its struct pid through pids[PIDTYPE_PID].pid;
 * since then through thread_pid. */
struct pid_link___pre419 {
	struct hlist_node node;
	struct pid *pid;
};
struct task_struct___pre419 {
	struct pid_link___pre419 pids[3];
};

/* inode change time moved twice: i_ctime (timespec64) until 6.5,
 * __i_ctime (6.6-6.10), i_ctime_sec + i_ctime_nsec since 6.11. */
struct inode___pre66 {
	struct timespec64 i_ctime;
};
struct inode___pre611 {
	struct timespec64 __i_ctime;
};

static __always_inline __u64 inode_ctime_ns(struct inode *inode)
{
	__u64 sec, nsec;

	if (!inode)
		return 0;
	if (bpf_core_field_exists(inode->i_ctime_sec)) {
		sec = BPF_CORE_READ(inode, i_ctime_sec);
		nsec = BPF_CORE_READ(inode, i_ctime_nsec);
	} else if (bpf_core_field_exists(((struct inode___pre611 *)inode)->__i_ctime)) {
		struct inode___pre611 *i = (void *)inode;
		sec = BPF_CORE_READ(i, __i_ctime.tv_sec);
		nsec = BPF_CORE_READ(i, __i_ctime.tv_nsec);
	} else {
		struct inode___pre66 *i = (void *)inode;
		sec = BPF_CORE_READ(i, i_ctime.tv_sec);
		nsec = BPF_CORE_READ(i, i_ctime.tv_nsec);
	}
	return sec * 1000000000ULL + nsec;
}

static __always_inline struct pid *task_pid_ptr(struct task_struct *task)
{
	if (bpf_core_field_exists(task->thread_pid))
		return BPF_CORE_READ(task, thread_pid);
	struct task_struct___pre419 *old = (void *)task;
	return BPF_CORE_READ(old, pids[0].pid);
}
#else /* kernel-specific object: the same moves, decided at compile time */
static __always_inline __u64 inode_ctime_ns(struct inode *inode)
{
	__u64 sec, nsec;

	if (!inode)
		return 0;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
	sec = READ_KERN(inode, i_ctime_sec);
	nsec = READ_KERN(inode, i_ctime_nsec);
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
	sec = READ_KERN(inode, __i_ctime.tv_sec);
	nsec = READ_KERN(inode, __i_ctime.tv_nsec);
#else
	sec = READ_KERN(inode, i_ctime.tv_sec);
	nsec = READ_KERN(inode, i_ctime.tv_nsec);
#endif
	return sec * 1000000000ULL + nsec;
}

static __always_inline struct pid *task_pid_ptr(struct task_struct *task)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 19, 0)
	return READ_KERN(task, thread_pid);
#else
	return READ_KERN(task, pids[PIDTYPE_PID].pid);
#endif
}
#endif /* CORE */

/* ppid, the process's pid inside its namespace (its leader's, as `pid` is
 * the tgid), and the namespace inode numbers. */
static __always_inline void fill_task(struct event *e, struct task_struct *task)
{
	struct pid *pid;
	unsigned int level;

	e->h.ppid = READ_KERN(task, real_parent, tgid);
	e->h.flags |= EF_HAS_PPID;

	pid = task_pid_ptr(READ_KERN(task, group_leader));
	if (!pid)
		return;
	level = READ_KERN(pid, level);
	e->h.ns_pid = READ_KERN(pid, numbers[level].nr);
	e->h.pid_ns = READ_KERN(pid, numbers[level].ns, ns.inum);
	e->h.mnt_ns = READ_KERN(task, nsproxy, mnt_ns, ns.inum);
	e->h.flags |= EF_HAS_NS;
}

static __always_inline struct task_struct *cur_task(void)
{
	return (struct task_struct *)bpf_get_current_task();
}

/*
 * Syscall records carry ppid and namespaces only when the daemon does not
 * have them yet: a process's first record, and any record after its parent
 * or its namespaces changed (reparented, setns, unshare). Otherwise the
 * daemon's process table fills them in, from the last record that carried
 * them: ten pointer reads per event were a third of an open's BPF time.
 *
 * `known` holds, per tgid, a fingerprint of the task's real_parent and
 * nsproxy pointers when that record was sent. Both change exactly when the
 * values can: a task's pid and pid namespace never change, and the
 * namespaces are read through nsproxy, which setns and unshare replace. A
 * slot is written only once the record is in the ring buffer, so a record
 * that was lost is never counted as sent; the exit program clears it.
 *
 * One 64-bit word per slot, in a plain array indexed by the tgid's low
 * bits: a lookup is a load (a hash map lookup was ~60 ns, a tenth of an
 * open's BPF time), and a word is written and read whole, so two CPUs
 * writing one slot at once leave one writer's word, never a mix. Two live
 * processes whose tgids share a slot take it from each other: their
 * records carry the values more often, and say nothing wrong. The word
 * mixes the tgid in: a slot vouches for another process, or for other
 * pointers, only by a 64-bit coincidence.
 *
 * Not with perf buffers: per-CPU buffers are merged by time in user space,
 * and a thread's record could then be handled before the record of
 * another thread of its process that carried the new values.
 */
#define KNOWN_SLOTS 32768

struct known_task {
	__u64 fp; /* 0: nothing to remember */
};

#ifndef TRACEED_PERF
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KNOWN_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} known SEC(".maps");
#endif

/* A typed pointer as a number the program may mix (hash, shift): the
 * verifier lets typed pointers be compared and subtracted, nothing else.
 * Taken as an offset from the task's thread group leader, which is fixed
 * for the process (an exec by another thread changes it: the numbers of
 * one process change once then), so the number identifies the pointer
 * within the process. The barrier keeps clang from distributing later
 * arithmetic over the pointers. */
static __always_inline __u64 leader_offset(const void *p, const struct task_struct *leader)
{
	__u64 v = (__u64)p - (__u64)leader;

	asm volatile("" : "+r"(v));
	return v;
}

/* The fingerprint of (tgid, real_parent, nsproxy) for `known`, the two
 * pointers as leader_offset numbers with TASK_BTF (an exec by another
 * thread then makes the next record carry the values once more).
 * Multiplying by odd constants keeps each part one-to-one; two different
 * pairs of one process meet in a word by chance only. */
static __always_inline __u64 task_fingerprint(__u32 tgid)
{
	__u64 parent, ns, fp;

	if (TASK_BTF) {
		struct task_struct *t = bpf_get_current_task_btf();
		struct task_struct *leader = t->group_leader;

		parent = leader_offset(t->real_parent, leader);
		ns = leader_offset(t->nsproxy, leader);
	} else {
		struct task_struct *task = cur_task();

		parent = (__u64)READ_KERN(task, real_parent);
		ns = (__u64)READ_KERN(task, nsproxy);
	}
	fp = (__u64)tgid ^ parent * 0x9e3779b97f4a7c15ULL;
	fp ^= (ns * 0xc2b2ae3d27d4eb4fULL) >> 29 | (ns * 0xc2b2ae3d27d4eb4fULL) << 35;
	return fp | 1; /* never the empty slot's 0 */
}

/* Fill the task's values into `e` unless the daemon has them; `sent` is
 * what to remember once the record is out. */
static __always_inline void fill_task_once(struct event *e, struct known_task *sent)
{
	sent->fp = 0;
#ifndef TRACEED_PERF
	__u32 slot = e->h.pid & (KNOWN_SLOTS - 1);
	__u64 fp = task_fingerprint(e->h.pid);
	__u64 *k = bpf_map_lookup_elem(&known, &slot);

	if (k && *k == fp)
		return;
	sent->fp = fp;
#endif
	fill_task(e, cur_task());
}

/* The record went out: its values are the daemon's now. */
static __always_inline void remember_sent(__u32 tgid, const struct known_task *sent)
{
#ifndef TRACEED_PERF
	__u32 slot = tgid & (KNOWN_SLOTS - 1);
	__u64 *k;

	if (sent->fp && (k = bpf_map_lookup_elem(&known, &slot)))
		*(volatile __u64 *)k = sent->fp;
#endif
}

/* The process is gone: its tgid may name another one next. (A process
 * sharing the slot loses it too, which costs it one record's reads.) */
static __always_inline void forget_task(__u32 tgid)
{
#ifndef TRACEED_PERF
	__u32 slot = tgid & (KNOWN_SLOTS - 1);
	__u64 *k = bpf_map_lookup_elem(&known, &slot);

	if (k)
		*(volatile __u64 *)k = 0;
#endif
}

static __always_inline __u32 current_mnt_ns(void)
{
	if (TASK_BTF)
		return bpf_get_current_task_btf()->nsproxy->mnt_ns->ns.inum;
	return READ_KERN(cur_task(), nsproxy, mnt_ns, ns.inum);
}

#ifdef CORE
/* A directory's id: its file system's device (the kernel's dev_t) in the
 * high 32 bits, the inode number's low 32 bits below them. User space
 * checks a directory it found later (from an open in the stream, or /proc,
 * racing the process) against both before it uses it for the id: the
 * inode alone would let a process pass one file system's root off as
 * another's (every ext4 root is inode 2, every tmpfs root inode 1). */
static __always_inline __u64 dir_id(__u64 dev, __u64 ino)
{
	return (dev & 0xffffffff) << 32 | (ino & 0xffffffff);
}

/* dir_id of the struct path at kernel address `p`, probe-read; 0 without
 * a dentry. */
static __always_inline __u64 path_dir_id(const struct path *p)
{
	struct dentry *d = READ_KERN(p, dentry);

	if (!d)
		return 0;
	return dir_id(READ_KERN(d, d_sb, s_dev), READ_KERN(d, d_inode, i_ino));
}
#endif

/* Which directory the task's relative paths start from, as a dir_id
 * (user space keeps one cwd per pid): it reads
 * /proc/PID/cwd once per id instead of once per relative path (a readlink
 * cost more than the rest of the event's user-space work). The
 * kernel-specific object (no fs_struct in every header set) says 0:
 * unknown. */
static __always_inline __u64 cwd_id(void)
{
#ifdef CORE
	if (TASK_BTF) {
		struct dentry *dentry = bpf_get_current_task_btf()->fs->pwd.dentry;

		if (!dentry)
			return 0;
		return dir_id(dentry->d_sb->s_dev, dentry->d_inode->i_ino);
	}
	return path_dir_id(&((struct fs_struct *)READ_KERN(cur_task(), fs))->pwd);
#else
	return 0;
#endif
}

/* The same id for the directory open at `fd` (the dirfd of an *at call),
 * so that /proc/PID/fd/N is read once per id, not per path: a tar
 * extraction names every file relative to one directory fd, and that
 * readlink was half of the daemon's CPU under it. The fd table is reached
 * with plain loads where the task is typed; the fd array is indexed by a
 * value, which typed pointers do not allow, so from the slot on it is
 * probe reads. */
static __always_inline __u64 dir_fd_id(__u64 fd)
{
#ifdef CORE
	struct file **fds;
	__u64 max;
	struct file *f = 0;

	if (TASK_BTF) {
		struct fdtable *fdt = bpf_get_current_task_btf()->files->fdt;

		fds = fdt->fd;
		max = fdt->max_fds;
	} else {
		struct files_struct *files = READ_KERN((struct task_struct *)cur_task(), files);
		struct fdtable *fdt = READ_KERN(files, fdt);

		fds = READ_KERN(fdt, fd);
		max = READ_KERN(fdt, max_fds);
	}

	if (!fds || fd >= max)
		return 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return 0;
	return path_dir_id(&f->f_path);
#else
	return 0;
#endif
}

#endif /* TRACEED_FALLBACK */

#endif
