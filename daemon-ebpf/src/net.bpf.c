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
static __always_inline int fill_addr_call(struct event *e, __u32 variant, const __u64 *args)
{
	e->h.args[SLOT_SOCK_FD] = args[0];
	push_sockaddr(e, (void *)args[1], args[2]);
	return 0;
}
SYSCALL_HOOKS(connect, 3, EK_CONNECT, V_PLAIN, fill_addr_call)
SYSCALL_HOOKS(bind, 3, EK_BIND, V_PLAIN, fill_addr_call)

/* accept{,4}(fd, addr, *len[, flags]): the kernel has filled addr/len. */
static __always_inline int fill_accept(struct event *e, __u32 variant, const __u64 *args)
{
	int len = 0;

	e->h.args[SLOT_SOCK_FD] = args[0];
	if (e->h.retval >= 0 && args[1] && args[2]) {
		bpf_probe_read_user(&len, sizeof(len), (void *)args[2]);
		if (len > 0)
			push_sockaddr(e, (void *)args[1], len);
	}
	return 0;
}
SYSCALL_HOOKS(accept, 3, EK_ACCEPT, V_PLAIN, fill_accept)
SYSCALL_HOOKS(accept4, 4, EK_ACCEPT, V_PLAIN, fill_accept)
