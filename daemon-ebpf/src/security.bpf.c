/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Privilege and control events: setuid family, ptrace, kill family, bpf,
 * kernel module loads.
 */
#include "syscalls.h"

/* setuid(uid), setreuid(ruid, euid), setresuid(ruid, euid, suid): user
 * space picks the uid the caller asked for (setreuid's euid unless -1, and
 * so on), so the variant goes along in aux. */
static __always_inline int on_setuid(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	if (in->variant == V_PLAIN) {
		e->h.args[SLOT_SETUID_UID] = in->args[0];
	} else {
		e->h.args[SLOT_SETUID_RUID] = in->args[0];
		e->h.args[SLOT_SETUID_EUID] = in->args[1];
		if (in->variant == V_RES)
			e->h.args[SLOT_SETUID_SUID] = in->args[2];
	}
	e->h.aux = in->variant;
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(setuid, 1, EK_SETUID, V_PLAIN, on_setuid)
SYSCALL_HOOKS(setreuid, 2, EK_SETUID, V_RE, on_setuid)
SYSCALL_HOOKS(setresuid, 3, EK_SETUID, V_RES, on_setuid)

/* ptrace(request, pid, addr, data) */
static __always_inline int on_ptrace(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	e->h.args[SLOT_PTRACE_REQUEST] = in->args[0];
	e->h.args[SLOT_PTRACE_PID] = in->args[1];
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(ptrace, 4, EK_PTRACE, V_PLAIN, on_ptrace)

/* kill(pid, sig), tkill(tid, sig), tgkill(tgid, tid, sig); the variant in
 * aux says which slots hold what. */
static __always_inline int on_kill(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	if (in->variant == V_TG) {
		e->h.args[SLOT_TGKILL_TGID] = in->args[0];
		e->h.args[SLOT_TGKILL_TID] = in->args[1];
		e->h.args[SLOT_TGKILL_SIG] = in->args[2];
	} else if (in->variant == V_T) {
		e->h.args[SLOT_TKILL_TID] = in->args[0];
		e->h.args[SLOT_KILL_SIG] = in->args[1];
	} else {
		e->h.args[SLOT_KILL_PID] = in->args[0];
		e->h.args[SLOT_KILL_SIG] = in->args[1];
	}
	e->h.aux = in->variant;
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(kill, 2, EK_KILL, V_PLAIN, on_kill)
SYSCALL_HOOKS(tkill, 2, EK_KILL, V_T, on_kill)
SYSCALL_HOOKS(tgkill, 3, EK_KILL, V_TG, on_kill)

/* bpf(cmd, attr, size) */
static __always_inline int on_bpf(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	e->h.args[SLOT_BPF_CMD] = in->args[0];
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(bpf, 3, EK_BPF, V_PLAIN, on_bpf)

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
	push_str(e, STR_MODULE_NAME, (void *)ctx + (loc & 0xFFFF), STR_KERNEL);
	return event_emit(ctx, e);
}
#endif
