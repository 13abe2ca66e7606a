/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The record every traceed program emits, shared by the C side and the Rust
 * decoder (daemon/src/decoder.rs mirrors it; daemon/build.rs checks the
 * offsets agree at build time, so the two cannot drift apart silently).
 *
 * A record is `struct event_header` followed by `data_len` bytes of strings.
 * Strings are appended in order; `str_len[i]` is the length of string i
 * including its NUL (0 = absent). Numeric kind-specific values go in `args`.
 */
#ifndef TRACEED_EVENTS_H
#define TRACEED_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define TASK_COMM_LEN 16
#define EV_NUM_STRS 4
#define EV_NUM_ARGS 6
/* Strings land at (offset & EV_DATA_MASK); one string is at most EV_STR_MAX
 * bytes, so the data area is twice the mask to keep every write in bounds
 * for the verifier while the emitted part stays <= EV_DATA_MAX. */
#define EV_DATA_MAX 4096
#define EV_DATA_MASK (EV_DATA_MAX - 1)
#define EV_STR_MAX 1024
#define EV_ARGV_MAX 2048

enum event_kind {
	EK_EXEC = 1,
	EK_FORK = 2,
	EK_EXIT = 3,
	EK_OPEN = 4,
	EK_CONNECT = 5,
	EK_ACCEPT = 6,
	EK_BIND = 7,
	EK_UNLINK = 8,
	EK_RENAME = 9,
	EK_CHMOD = 10,
	EK_SETUID = 11,
	EK_PTRACE = 12,
	EK_KILL = 13,
	EK_MOUNT = 14,
	EK_MODULE_LOAD = 15,
	EK_BPF = 16,
	EK_MEMFD_CREATE = 17,
	EK_SYSCALL = 18,
};

/* header.flags */
#define EF_TRUNCATED (1u << 0) /* a string or argv was cut */
#define EF_HAS_NS (1u << 1)    /* mnt_ns, pid_ns, ns_pid are known */
#define EF_HAS_PPID (1u << 2)  /* ppid is known */
#define EF_HAS_RETVAL (1u << 3)

/* Raw socket addresses are copied as bytes; enough for sockaddr_un. */
#define EV_SOCKADDR_MAX 128

struct event_header {
	__u64 ts_ns; /* CLOCK_BOOTTIME */
	__u64 cgroup_id;
	__s64 retval;
	__u32 kind;
	__u32 flags;
	__u32 pid; /* tgid, host view */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 ns_pid;
	__u32 mnt_ns;
	__u32 pid_ns;
	char comm[TASK_COMM_LEN];
	__u64 args[EV_NUM_ARGS];
	__u16 str_len[EV_NUM_STRS];
	__u32 data_len;
	__u32 aux; /* EK_SYSCALL: the syscall number */
};

struct event {
	struct event_header h;
	char data[EV_DATA_MAX * 2];
};

#endif
