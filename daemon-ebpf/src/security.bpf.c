/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Privilege and control events: setuid family, ptrace, kill family, bpf,
 * kernel module loads.
 */
#include "syscalls.h"

/* setuid(uid), setreuid(ruid, euid), setresuid(ruid, euid, suid): user
 * space picks the uid the caller asked for (setreuid's euid unless -1, and
 * so on), so the variant goes along in aux. The record's uid and gid are
 * the caller's before the change (SYSCALL_HOOKS_ENTRY_CREDS). */
static __always_inline int fill_setuid(struct event *e, __u32 variant, const __u64 *args)
{
	if (variant == V_PLAIN) {
		e->h.args[SLOT_SETUID_UID] = args[0];
	} else {
		e->h.args[SLOT_SETUID_RUID] = args[0];
		e->h.args[SLOT_SETUID_EUID] = args[1];
		if (variant == V_RES)
			e->h.args[SLOT_SETUID_SUID] = args[2];
	}
	e->h.aux = variant;
	return 0;
}
SYSCALL_HOOKS_ENTRY_CREDS(setuid, 1, EK_SETUID, V_PLAIN, fill_setuid)
SYSCALL_HOOKS_ENTRY_CREDS(setreuid, 2, EK_SETUID, V_RE, fill_setuid)
SYSCALL_HOOKS_ENTRY_CREDS(setresuid, 3, EK_SETUID, V_RES, fill_setuid)

/* ptrace(request, pid, addr, data) */
static __always_inline int fill_ptrace(struct event *e, __u32 variant, const __u64 *args)
{
	e->h.args[SLOT_PTRACE_REQUEST] = args[0];
	e->h.args[SLOT_PTRACE_PID] = args[1];
	return 0;
}
SYSCALL_HOOKS(ptrace, 4, EK_PTRACE, V_PLAIN, fill_ptrace)

/* kill(pid, sig), tkill(tid, sig), tgkill(tgid, tid, sig); the variant in
 * aux says which slots hold what. */
static __always_inline int fill_kill(struct event *e, __u32 variant, const __u64 *args)
{
	if (variant == V_TG) {
		e->h.args[SLOT_TGKILL_TGID] = args[0];
		e->h.args[SLOT_TGKILL_TID] = args[1];
		e->h.args[SLOT_TGKILL_SIG] = args[2];
	} else if (variant == V_T) {
		e->h.args[SLOT_TKILL_TID] = args[0];
		e->h.args[SLOT_KILL_SIG] = args[1];
	} else {
		e->h.args[SLOT_KILL_PID] = args[0];
		e->h.args[SLOT_KILL_SIG] = args[1];
	}
	e->h.aux = variant;
	return 0;
}
SYSCALL_HOOKS(kill, 2, EK_KILL, V_PLAIN, fill_kill)
SYSCALL_HOOKS(tkill, 2, EK_KILL, V_T, fill_kill)
SYSCALL_HOOKS(tgkill, 3, EK_KILL, V_TG, fill_kill)

/* bpf(cmd, attr, size) */
static __always_inline int fill_bpf(struct event *e, __u32 variant, const __u64 *args)
{
	e->h.args[SLOT_BPF_CMD] = args[0];
	return 0;
}
SYSCALL_HOOKS(bpf, 3, EK_BPF, V_PLAIN, fill_bpf)

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
