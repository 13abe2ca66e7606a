/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Process lifecycle: exec, fork, exit. Built into the CO-RE object through
 * traceed.bpf.c.
 */
#include "task.h"

/* sched_process_exec fires after the new image is mapped, in the context of
 * the exec'd task: argv is already on its new stack (unlike at syscall
 * entry, where a fresh child's pages may not be faulted in yet). The raw
 * form hands us the linux_binprm: filename as the caller passed it, and
 * interp, the file actually loaded (the interpreter, for a script). */
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

	push_str(e, STR_EXEC_FILENAME, READ_KERN(bprm, filename), STR_KERNEL);
	arg_start = READ_KERN(task, mm, arg_start);
	arg_end = READ_KERN(task, mm, arg_end);
	if (arg_end > arg_start)
		push_user_bytes(e, STR_EXEC_ARGV, (void *)arg_start, arg_end - arg_start);
	push_str(e, STR_EXEC_INTERP, READ_KERN(bprm, interp), STR_KERNEL);
	/* When the loaded file last changed: a binary replaced in place shows. */
	e->h.args[SLOT_EXEC_CTIME] = inode_ctime_ns(READ_KERN(bprm, file, f_inode));
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
	return event_emit(ctx, e);
}

/* One row per process, when its last thread exits. */
SEC("tracepoint/sched/sched_process_exit")
int tp_sched_process_exit(void *ctx)
{
	struct task_struct *task = cur_task();
	struct event *e;
	int code;

	if (out_of_scope())
		return 0;
	if (READ_KERN(task, signal, live.counter) != 0)
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
