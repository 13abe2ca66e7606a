/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Syscall events are recorded at sys_exit, when the return value is known
 * and the kernel has already touched (faulted in) the user memory the
 * arguments point to. sys_enter only stashes the raw arguments per thread.
 *
 * The syscalls:* tracepoint records have a fixed ABI (nr at 8, arguments
 * as 8-byte slots from 16, ret at 16 on exit), so plain structs are used
 * instead of vmlinux.h's CO-RE-relocated ones.
 */
#ifndef TRACEED_SYSCALLS_H
#define TRACEED_SYSCALLS_H

#include "task.h"

struct sys_enter_ctx {
	__u64 common;
	long nr;
	unsigned long args[6];
};

struct sys_exit_ctx {
	__u64 common;
	long nr;
	long ret;
};

/* enum variant (which syscall of a kind) is part of the record contract:
 * events.h. */

struct inflight {
	__u64 args[6];
	__u64 uid_gid; /* at entry: a setuid event is the caller's, not its result's */
	__u32 kind;
	__u32 variant;
};

/* LRU: a thread that never returns (killed mid-syscall) must not pin its
 * slot forever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct inflight);
} inflight SEC(".maps");

#ifdef TRACEED_FALLBACK
/* Offsets of the argument slots and of `ret`, read by traceed from the
 * tracefs format files of the running kernel (the fallback trusts no
 * compiled-in layout). */
const volatile __u32 fb_sys_args_off = 16;
const volatile __u32 fb_sys_ret_off = 16;

static __always_inline unsigned long sys_arg(struct sys_enter_ctx *ctx, int i)
{
	unsigned long v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)ctx + fb_sys_args_off + 8 * i);
	return v;
}

static __always_inline long sys_ret(struct sys_exit_ctx *ctx)
{
	long v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)ctx + fb_sys_ret_off);
	return v;
}
#else
#define sys_arg(ctx, i) ((ctx)->args[i])
#define sys_ret(ctx) ((ctx)->ret)
#endif

/* Only the syscall's own `nargs` slots may be read: the kernel refuses to
 * attach a program whose context access goes past the tracepoint record. */
static __always_inline int save_args(struct sys_enter_ctx *ctx, __u32 kind, __u32 variant,
				     const int nargs)
{
	struct inflight in = {};
	__u64 id = bpf_get_current_pid_tgid();

	if (out_of_scope())
		return 0;
#pragma unroll
	for (int i = 0; i < 6; i++)
		if (i < nargs)
			in.args[i] = sys_arg(ctx, i);
	in.kind = kind;
	in.variant = variant;
	in.uid_gid = bpf_get_current_uid_gid();
	bpf_map_update_elem(&inflight, &id, &in, BPF_ANY);
	return 0;
}

/* Pop the stashed arguments of this thread's syscall, if it was one we
 * watch (and in scope); copies them out so the map slot is freed now. */
static __always_inline int take_args(struct inflight *out)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct inflight *in = bpf_map_lookup_elem(&inflight, &id);
	if (!in)
		return -1;
	__builtin_memcpy(out, in, sizeof(*out));
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}

/* Start an exit-side record: header, task enrichment, return value. */
static __always_inline struct event *exit_start(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = event_start(in->kind);
	if (!e)
		return NULL;
	fill_task(e, cur_task());
	e->h.uid = (__u32)in->uid_gid;
	e->h.gid = in->uid_gid >> 32;
	e->h.retval = sys_ret(ctx);
	e->h.flags |= EF_HAS_RETVAL;
	return e;
}

#define SYS_ENTER(sys, kind, variant, nargs)                           \
	SEC("tracepoint/syscalls/sys_enter_" #sys)                     \
	int enter_##sys(struct sys_enter_ctx *ctx)                     \
	{                                                              \
		return save_args(ctx, kind, variant, nargs);           \
	}

#define SYS_EXIT(sys, handler)                                         \
	SEC("tracepoint/syscalls/sys_exit_" #sys)                      \
	int exit_##sys(struct sys_exit_ctx *ctx)                       \
	{                                                              \
		struct inflight in;                                    \
		if (take_args(&in))                                    \
			return 0;                                      \
		return handler(ctx, &in);                              \
	}

#define SYSCALL_HOOKS(sys, nargs, kind, variant, handler) \
	SYS_ENTER(sys, kind, variant, nargs)               \
	SYS_EXIT(sys, handler)

#endif
