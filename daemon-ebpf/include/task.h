/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Reads from struct task_struct and friends, all through CO-RE so the
 * offsets are those of the running kernel, never of the vmlinux.h we built
 * against. Layouts that moved between kernels use ___flavor structs.
 */
#ifndef TRACEED_TASK_H
#define TRACEED_TASK_H

#include "common.h"

#ifdef TRACEED_FALLBACK
/* The fallback object reads no kernel struct at all: ppid comes from the
 * fork tracepoint and user space, namespaces are unknown (null). */
static __always_inline void *current_task(void)
{
	return 0;
}

static __always_inline void fill_task(struct event *e, void *task)
{
}
#else

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

/* ppid, pid inside its namespace, and the namespace inode numbers. */
static __always_inline void fill_task(struct event *e, struct task_struct *task)
{
	struct pid *pid;
	unsigned int level;

	e->h.ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->h.flags |= EF_HAS_PPID;

	pid = task_pid_ptr(task);
	if (!pid)
		return;
	level = BPF_CORE_READ(pid, level);
	e->h.ns_pid = BPF_CORE_READ(pid, numbers[level].nr);
	e->h.pid_ns = BPF_CORE_READ(pid, numbers[level].ns, ns.inum);
	e->h.mnt_ns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	e->h.flags |= EF_HAS_NS;
}

static __always_inline struct task_struct *current_task(void)
{
	return (struct task_struct *)bpf_get_current_task();
}

static __always_inline __u32 current_mnt_ns(void)
{
	return BPF_CORE_READ(current_task(), nsproxy, mnt_ns, ns.inum);
}

#endif /* TRACEED_FALLBACK */

#endif
