/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Failed execs: execve/execveat that return an error (ENOENT, EACCES,
 * ENOEXEC, ...) become exec records with the syscall's return value. A
 * successful exec is recorded by sched_process_exec instead (its sys_exit
 * is skipped here). Built into every object.
 *
 * The filename and argv are read at sys_exit from the caller's memory,
 * which a failed exec leaves in place (it fails before the old image is
 * dropped). argv is read argument by argument (ARGV_PTR_SLOTS arguments);
 * argc and argv_bytes are set only when the whole array was read.
 */
#include "syscalls.h"

static __always_inline int on_exec_exit(struct sys_exit_ctx *ctx, struct inflight *in)
{
	const char *filename;
	const char *const *argv;
	struct event *e;

	if (sys_ret(ctx) >= 0)
		return 0;
#ifdef TRACEED_FALLBACK
	{
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		bpf_map_delete_elem(&argv_stash, &tid);
	}
#endif
	e = exit_start(ctx, in);
	if (!e)
		return 0;
	if (in->variant == V_AT) { /* execveat(dfd, path, argv, envp, flags) */
		filename = (const char *)in->args[1];
		argv = (const char *const *)in->args[2];
	} else { /* execve(path, argv, envp) */
		filename = (const char *)in->args[0];
		argv = (const char *const *)in->args[1];
	}
	/* String order is slot order: filename, (no interpreter), cwd, argv. */
	push_str(e, STR_EXEC_FILENAME, filename, STR_USER);
#ifndef TRACEED_FALLBACK
	push_cwd(e, cur_task());
#endif
	push_argv_ptrs(e, argv);
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(execve, 3, EK_EXEC, V_PLAIN, on_exec_exit)
SYSCALL_HOOKS(execveat, 5, EK_EXEC, V_AT, on_exec_exit)
