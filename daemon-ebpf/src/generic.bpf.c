/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The generic path: any syscall named in `[events] syscalls` is recorded
 * with its six raw arguments and return value, from raw_syscalls. These two
 * programs are only attached when that list is non-empty: they run on every
 * syscall of the machine.
 */
#include "syscalls.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, __u32);
	__type(value, __u8);
} syscall_filter SEC(".maps");

/* Separate from `inflight` so a syscall that also has a dedicated hook is
 * recorded by both paths without either stealing the other's slot. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct inflight);
} inflight_raw SEC(".maps");

SEC("tracepoint/raw_syscalls/sys_enter")
int raw_sys_enter(struct sys_enter_ctx *ctx)
{
	/* raw_syscalls: `id` sits where the syscalls:* records keep the number. */
	__u32 nr = ctx->nr;
	struct inflight in = {};
	__u64 id;

	if (!bpf_map_lookup_elem(&syscall_filter, &nr))
		return 0;
	if (out_of_scope())
		return 0;
	id = bpf_get_current_pid_tgid();
#pragma unroll
	for (int i = 0; i < 6; i++)
		in.args[i] = sys_arg(ctx, i);
	in.kind = EK_SYSCALL;
	in.variant = nr;
	in.uid_gid = cur_uid_gid();
	bpf_map_update_elem(&inflight_raw, &id, &in, BPF_ANY);
	return 0;
}

SEC("tracepoint/raw_syscalls/sys_exit")
int raw_sys_exit(struct sys_exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct inflight in, *p;
	struct known_task sent;
	struct event *e;

	p = bpf_map_lookup_elem(&inflight_raw, &id);
	if (!p)
		return 0;
	__builtin_memcpy(&in, p, sizeof(in));
	bpf_map_delete_elem(&inflight_raw, &id);
	e = exit_start(ctx, &in, &sent);
	if (!e)
		return 0;
#pragma unroll
	for (int i = 0; i < EV_NUM_ARGS; i++)
		e->h.args[SLOT_SYSCALL_ARGS + i] = in.args[i];
	e->h.aux = in.variant;
	return sys_emit(ctx, e, &sent);
}
