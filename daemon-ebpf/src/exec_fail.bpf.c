/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Failed execs: execve/execveat that return an error (ENOENT, EACCES,
 * ENOEXEC, ...) become exec records with the syscall's return value. A
 * successful exec is recorded by sched_process_exec instead (its sys_exit
 * is skipped here). Built into every object.
 *
 * The filename and argv are read at sys_exit from the caller's memory,
 * which a failed exec leaves in place (it fails before the old image is
 * dropped). argv is read argument by argument (argv_ptr_slots arguments,
 * under bpf_loop where the kernel has it); argc and argv_bytes are set
 * only when the whole array was read.
 */
#include "syscalls.h"

static __always_inline int fill_exec_fail_with(struct event *e, __u32 variant, const __u64 *args,
					       const int loop)
{
	const char *filename;
	const char *const *argv;

	/* A successful exec is sched_process_exec's record. */
	if (e->h.retval >= 0)
		return 1;
#ifdef TRACEED_FALLBACK
	{
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		bpf_map_delete_elem(&argv_stash, &tid);
	}
#endif
	if (variant == V_AT) { /* execveat(dfd, path, argv, envp, flags) */
		filename = (const char *)args[1];
		argv = (const char *const *)args[2];
	} else { /* execve(path, argv, envp) */
		filename = (const char *)args[0];
		argv = (const char *const *)args[1];
	}
	/* String order is slot order: filename, (no interpreter), cwd, argv. */
	push_str(e, STR_EXEC_FILENAME, filename, STR_USER);
#ifndef TRACEED_FALLBACK
	push_cwd(e, cur_task());
#endif
	push_argv_ptrs(e, argv, loop);
	return 0;
}

static __always_inline int fill_exec_fail(struct event *e, __u32 variant, const __u64 *args)
{
	return fill_exec_fail_with(e, variant, args, 0);
}
SYSCALL_HOOKS(execve, 3, EK_EXEC, V_PLAIN, fill_exec_fail)
SYSCALL_HOOKS(execveat, 5, EK_EXEC, V_AT, fill_exec_fail)

#ifndef TRACEED_FALLBACK
/* The same hooks with argv read under bpf_loop (common.h): exit_execve_loop
 * and so on, which the loader attaches instead where the kernel has the
 * helper (5.17+). Separate programs, because a program that merely
 * mentions a callback does not load before 5.13. */
static __always_inline int fill_exec_fail_loop(struct event *e, __u32 variant, const __u64 *args)
{
	return fill_exec_fail_with(e, variant, args, 1);
}
SYSCALL_HOOKS_AS(execve_loop, execve, 3, EK_EXEC, V_PLAIN, fill_exec_fail_loop)
SYSCALL_HOOKS_AS(execveat_loop, execveat, 5, EK_EXEC, V_AT, fill_exec_fail_loop)
#endif
