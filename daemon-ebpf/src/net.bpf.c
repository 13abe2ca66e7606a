/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Network events: connect, bind, accept. The socket address is copied raw
 * (family decides the layout) and decoded in user space, IPv4 and IPv6 alike.
 */
#include "syscalls.h"

static __always_inline void push_sockaddr(struct event *e, const void *addr, __u64 len)
{
	if (!addr || len == 0)
		return;
	if (len > EV_SOCKADDR_MAX)
		len = EV_SOCKADDR_MAX;
	push_user_bytes(e, STR_SOCK_ADDR, addr, len);
}

/* connect(fd, addr, len) and bind(fd, addr, len) */
static __always_inline int on_addr_call(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	e->h.args[SLOT_SOCK_FD] = in->args[0];
	push_sockaddr(e, (void *)in->args[1], in->args[2]);
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(connect, 3, EK_CONNECT, V_PLAIN, on_addr_call)
SYSCALL_HOOKS(bind, 3, EK_BIND, V_PLAIN, on_addr_call)

/* accept{,4}(fd, addr, *len[, flags]): the kernel has filled addr/len. */
static __always_inline int on_accept(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e;
	int len = 0;

	e = exit_start(ctx, in);
	if (!e)
		return 0;
	e->h.args[SLOT_SOCK_FD] = in->args[0];
	if (sys_ret(ctx) >= 0 && in->args[1] && in->args[2]) {
		bpf_probe_read_user(&len, sizeof(len), (void *)in->args[2]);
		if (len > 0)
			push_sockaddr(e, (void *)in->args[1], len);
	}
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(accept, 3, EK_ACCEPT, V_PLAIN, on_accept)
SYSCALL_HOOKS(accept4, 4, EK_ACCEPT, V_PLAIN, on_accept)
