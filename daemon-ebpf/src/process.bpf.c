/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Process lifecycle: exec, fork, exit. Built into the CO-RE object through
 * traceed.bpf.c.
 */
#include "task.h"

/* When a task's process began, boot clock ns (what /proc/<pid>/stat's
 * starttime counts in ticks): `real_start_time` before 5.5, not read. */
#if defined(TRACEED_KERNEL) && LINUX_VERSION_CODE < KERNEL_VERSION(5, 5, 0)
#define TASK_START(t) 0
#else
#define TASK_START(t) READ_KERN(t, start_boottime)
#endif

#ifdef CORE
/* The working directory is built backwards from the end of this buffer,
 * one path component at a time, then copied into the record. */
struct path_buf {
	char buf[EV_PATH_MAX * 2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_buf);
} path_scratch SEC(".maps");

/* struct mount embeds the struct vfsmount a path points at (fs/mount.h). */
static __always_inline struct mount *real_mount(struct vfsmount *mnt)
{
	return (struct mount *)((char *)mnt - bpf_core_field_offset(struct mount, mnt));
}

/* task->fs->pwd as an absolute path as the task sees it (like
 * /proc/PID/cwd): dentry names up to the root of their mount, then on from
 * the mount point in the parent mount, until the task's root, as d_path
 * does (without its locks: a rename racing the walk can give a mixed path,
 * as in every tracer that walks dentries). Each step appends exactly one
 * name, crossing at most one mount first, so the verifier follows one path
 * per iteration. Paths deeper than EV_PATH_COMPONENTS or longer than
 * EV_PATH_MAX, directories not reachable from the root (a detached mount)
 * and mounts stacked on one mount point leave `cwd` absent. */
static __always_inline void push_cwd(struct event *e, struct task_struct *task)
{
	__u32 zero = 0;
	struct path_buf *pb = bpf_map_lookup_elem(&path_scratch, &zero);
	struct dentry *dentry, *parent, *root, *top;
	struct vfsmount *vfsmnt, *top_mnt;
	struct mount *mnt, *mnt_parent;
	struct fs_struct *fs;
	__u32 pos = EV_PATH_MAX - 1, len;
	int i, done = 0;

	if (!pb)
		return;
	fs = READ_KERN(task, fs);
	dentry = READ_KERN(fs, pwd.dentry);
	vfsmnt = READ_KERN(fs, pwd.mnt);
	top = READ_KERN(fs, root.dentry);
	top_mnt = READ_KERN(fs, root.mnt);
	if (!dentry || !vfsmnt)
		return;
	mnt = real_mount(vfsmnt);
	mnt_parent = READ_KERN(mnt, mnt_parent);
	pb->buf[EV_PATH_MAX - 1] = 0;
	for (i = 0; i < EV_PATH_COMPONENTS; i++) {
		if (dentry == top && vfsmnt == top_mnt) {
			done = 1;
			break;
		}
		root = READ_KERN(vfsmnt, mnt_root);
		if (dentry == root) {
			if (mnt == mnt_parent) {
				done = 1; /* the root of the mount tree */
				break;
			}
			dentry = READ_KERN(mnt, mnt_mountpoint);
			mnt = mnt_parent;
			mnt_parent = READ_KERN(mnt, mnt_parent);
			vfsmnt = __builtin_preserve_access_index(&mnt->mnt);
			if (dentry == top && vfsmnt == top_mnt) {
				done = 1;
				break;
			}
			if (dentry == READ_KERN(vfsmnt, mnt_root))
				break;
		}
		parent = READ_KERN(dentry, d_parent);
		if (dentry == parent)
			break;
		len = READ_KERN(dentry, d_name.len);
		if (len == 0 || len + 1 > pos)
			break;
		pos -= len;
		bpf_probe_read_kernel(&pb->buf[pos & (EV_PATH_MAX - 1)], len & (EV_PATH_MAX - 1),
				      READ_KERN(dentry, d_name.name));
		pos -= 1;
		pb->buf[pos & (EV_PATH_MAX - 1)] = '/';
		dentry = parent;
	}
	if (!done)
		return;
	if (pos == EV_PATH_MAX - 1) /* the root itself */
		pb->buf[--pos & (EV_PATH_MAX - 1)] = '/';
	push_str_max(e, STR_EXEC_CWD, &pb->buf[pos & (EV_PATH_MAX - 1)], EV_PATH_MAX);
	/* With its id, the daemon resolves the process's cwd-relative paths
	 * against this path without /proc: a compiler that opens its headers
	 * relative to the cwd has often exited before the daemon gets there. */
	e->h.args[SLOT_EXEC_CWD_ID] = cwd_id();
}
#else
/* The kernel-specific object cannot walk mounts: struct mount is private
 * to fs/ and not in the installed headers. `cwd` stays absent there. */
static __always_inline void push_cwd(struct event *e, struct task_struct *task)
{
}
#endif

/* The file loaded (bprm->interp: the interpreter of a script). A file with
 * no directory, its dentry its own parent without being a mount's root (a
 * memfd: how fileless programs run), has no path, and once its short-lived
 * process is gone user space has no /proc/PID/exe to ask: its name as the
 * kernel keeps it ("memfd:NAME") stands for it. */
static __always_inline void push_exec_loaded(struct event *e, struct linux_binprm *bprm)
{
	struct dentry *d = READ_KERN(bprm, file, f_path.dentry);

	if (d && READ_KERN(d, d_parent) == d && d != READ_KERN(bprm, file, f_path.mnt, mnt_root)) {
		push_str(e, STR_EXEC_INTERP, READ_KERN(d, d_name.name), STR_KERNEL);
		return;
	}
	push_str(e, STR_EXEC_INTERP, READ_KERN(bprm, interp), STR_KERNEL);
}

/* sched_process_exec fires after the new image is mapped, in the context of
 * the exec'd task: argv is already on its new stack (unlike at syscall
 * entry, where a fresh child's pages may not be faulted in yet), in one
 * block, so one read takes it whole. The raw form hands us the
 * linux_binprm: filename as the caller passed it, interp, the file
 * actually loaded (the interpreter, for a script), and argc. */
SEC("raw_tracepoint/sched_process_exec")
int raw_sched_process_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct linux_binprm *bprm = (struct linux_binprm *)((__u64 *)ctx)[2];
	struct task_struct *task;
	struct event *e;
	unsigned long arg_start, arg_end;

	if (out_of_scope() && !is_canary())
		return 0;
	e = event_start(EK_EXEC);
	if (!e)
		return 0;
	task = cur_task();
	fill_task(e, task);

	/* String order is slot order: argv, the long one, last. */
	push_str(e, STR_EXEC_FILENAME, READ_KERN(bprm, filename), STR_KERNEL);
	push_exec_loaded(e, bprm);
	push_cwd(e, task);
	arg_start = READ_KERN(task, mm, arg_start);
	arg_end = READ_KERN(task, mm, arg_end);
	if (arg_end > arg_start) {
		set_argv_size(e, READ_KERN(bprm, argc), arg_end - arg_start);
		push_argv_block(e, (void *)arg_start, arg_end - arg_start);
	}
	/* When the loaded file last changed: a binary replaced in place shows. */
	e->h.args[SLOT_EXEC_CTIME] = inode_ctime_ns(READ_KERN(bprm, file, f_inode));
	/* The process's start (de_thread gave a non-leader exec'ing thread the
	 * leader's): its instance key, when its fork was not seen. */
	{
		struct task_struct *leader = READ_KERN(task, group_leader);
		e->h.args[SLOT_EXEC_START] = TASK_START(leader);
	}
	return event_emit(ctx, e);
}

/* Raw tracepoint: gives both task_structs, so the row describes the new
 * task with its own namespaces. Threads are not processes: skipped. */
SEC("raw_tracepoint/sched_process_fork")
int raw_sched_process_fork(struct bpf_raw_tracepoint_args *ctx)
{
	/* args[] is a flexible array: index it as plain memory, since a CO-RE
	 * access relocation on it is out of bounds for some loaders. */
	struct task_struct *child = (struct task_struct *)((__u64 *)ctx)[1];
	struct event *e;
	__u32 child_pid, child_tgid;

	if (out_of_scope())
		return 0;
	child_pid = READ_KERN(child, pid);
	child_tgid = READ_KERN(child, tgid);
	if (child_pid != child_tgid)
		return 0;
	e = event_start(EK_FORK);
	if (!e)
		return 0;
	e->h.pid = child_tgid;
	e->h.tid = child_pid;
	fill_task(e, child);
	/* The instance key's time: what /proc/<pid>/stat starttime is made of. */
	e->h.args[SLOT_FORK_START] = TASK_START(child);
	return event_emit(ctx, e);
}

/* One row per process, when its last thread exits. */
SEC("tracepoint/sched/sched_process_exit")
int tp_sched_process_exit(void *ctx)
{
	struct task_struct *task = cur_task();
	struct event *e;
	int code;

	if (READ_KERN(task, signal, live.counter) != 0)
		return 0;
	/* Whatever the scope says: a thread of it may have been in scope. */
	forget_task(bpf_get_current_pid_tgid() >> 32);
	if (out_of_scope())
		return 0;
	e = event_start(EK_EXIT);
	if (!e)
		return 0;
	fill_task(e, task);
	code = READ_KERN(task, exit_code);
	/* The wait status the kernel keeps: always known here. */
	e->h.args[SLOT_EXIT_CODE] = (code >> 8) & 0xff;
	e->h.args[SLOT_EXIT_SIGNAL] = code & 0x7f;
	e->h.args[SLOT_EXIT_STATUS_KNOWN] = EXIT_STATUS_KNOWN;
	return event_emit(ctx, e);
}
