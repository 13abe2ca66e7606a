/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Privilege and control events: setuid family, ptrace, kill family, bpf,
 * kernel module loads.
 */
#include "syscalls.h"

/* Keep the raw arguments; user space picks the uid the caller asked for
 * (setreuid's euid unless -1, and so on). */
static __always_inline int on_raw_args(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
#pragma unroll
	for (int i = 0; i < 4; i++)
		e->h.args[i] = in->args[i];
	e->h.aux = in->variant;
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(setuid, 1, EK_SETUID, V_PLAIN, on_raw_args)
SYSCALL_HOOKS(setreuid, 2, EK_SETUID, V_RE, on_raw_args)
SYSCALL_HOOKS(setresuid, 3, EK_SETUID, V_RES, on_raw_args)
SYSCALL_HOOKS(ptrace, 4, EK_PTRACE, V_PLAIN, on_raw_args)
SYSCALL_HOOKS(kill, 2, EK_KILL, V_PLAIN, on_raw_args)
SYSCALL_HOOKS(tkill, 2, EK_KILL, V_T, on_raw_args)
SYSCALL_HOOKS(tgkill, 3, EK_KILL, V_TG, on_raw_args)
SYSCALL_HOOKS(bpf, 3, EK_BPF, V_PLAIN, on_raw_args)

#ifndef TRACEED_FALLBACK
/* Only kernels built with modules have this tracepoint: optional hook. */
struct module_load_ctx {
	__u64 common;
	unsigned int taints;
	__u32 data_loc_name;
};

SEC("tracepoint/module/module_load")
int tp_module_load(struct module_load_ctx *ctx)
{
	struct event *e;
	__u32 loc;

	if (out_of_scope())
		return 0;
	e = event_start(EK_MODULE_LOAD);
	if (!e)
		return 0;
	fill_task(e, cur_task());
	loc = ctx->data_loc_name;
	push_str(e, 0, (void *)ctx + (loc & 0xFFFF), STR_KERNEL);
	return event_emit(ctx, e);
}
#endif
