/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The record contract between the kernel programs and the daemon, in one
 * place. daemon/build.rs compiles a host probe of this header and derives
 * the Rust side from it (kinds and their wire names, flags, variants, the
 * argument and string slots of every kind, every header offset), so a
 * change here either flows into the decoder or fails the build.
 *
 * A record is `struct event_header` followed by `data_len` bytes of strings.
 * Strings are appended in order; `str_len[i]` is the length of string i
 * including its NUL (0 = absent). Numeric kind-specific values go in `args`.
 * Which `args[i]` / string i holds what is named per kind below (SLOT_*,
 * STR_*): programs and decoder use only those names.
 */
#ifndef TRACEED_EVENTS_H
#define TRACEED_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define TASK_COMM_LEN 16
#define EV_NUM_STRS 4
#define EV_NUM_ARGS 6
/* A string starts at an offset <= EV_DATA_MAX (masked with
 * 2 * EV_DATA_MAX - 1 for the verifier) and is at most EV_STR_MAX bytes
 * (EV_PATH_MAX for an exec's working directory). */
#define EV_DATA_MAX 4096
#define EV_STR_MAX 1024
/* argv is an exec record's last string, so it may run past EV_DATA_MAX: up
 * to the load-time `max_argv_bytes` ([events] max_argv_bytes), never more
 * than EV_ARGV_CAP (the kernel's own limit for one string, MAX_ARG_STRLEN).
 * Read argument by argument (failed execs, the fallback), one argument is at
 * most EV_ARG_MAX. The buffer holds the worst case the verifier can see:
 * strings up to EV_DATA_MAX, then argv from at most there. Only the header
 * and data_len bytes are emitted, so a short argv makes a short record. */
#define EV_ARGV_CAP (128 * 1024)
#define EV_ARG_MAX (32 * 1024)
#define EV_BUF_SIZE (EV_DATA_MAX * 2 + EV_ARGV_CAP + EV_ARG_MAX)
/* The working directory walk (CO-RE): at most this many path components,
 * the path at most EV_PATH_MAX bytes. */
#define EV_PATH_MAX 4096
#define EV_PATH_COMPONENTS 48

/* Event kinds: X(NAME, number, wire name). EK_<NAME> in C; the wire names in
 * this order, then "lost" (made in user space), are traceed_wire::KINDS. */
#define TRACEED_KINDS(X)                       \
	X(EXEC, 1, "exec")                     \
	X(FORK, 2, "fork")                     \
	X(EXIT, 3, "exit")                     \
	X(OPEN, 4, "open")                     \
	X(CONNECT, 5, "connect")               \
	X(ACCEPT, 6, "accept")                 \
	X(BIND, 7, "bind")                     \
	X(UNLINK, 8, "unlink")                 \
	X(RENAME, 9, "rename")                 \
	X(CHMOD, 10, "chmod")                  \
	X(SETUID, 11, "setuid")                \
	X(PTRACE, 12, "ptrace")                \
	X(KILL, 13, "kill")                    \
	X(MOUNT, 14, "mount")                  \
	X(MODULE_LOAD, 15, "module_load")      \
	X(BPF, 16, "bpf")                      \
	X(MEMFD_CREATE, 17, "memfd_create")    \
	X(SYSCALL, 18, "syscall")

enum event_kind {
#define TRACEED_KIND_ENUM(name, num, wire) EK_##name = num,
	TRACEED_KINDS(TRACEED_KIND_ENUM)
#undef TRACEED_KIND_ENUM
};

/* header.flags: X(name, bit) */
#define TRACEED_FLAGS(X)                                                 \
	X(EF_TRUNCATED, 0) /* a string or argv was cut */                \
	X(EF_HAS_NS, 1)    /* mnt_ns, pid_ns, ns_pid are known */        \
	X(EF_HAS_PPID, 2)  /* ppid is known */                           \
	X(EF_HAS_RETVAL, 3) /* retval is a syscall's return value */

enum event_flag {
#define TRACEED_FLAG_ENUM(name, bit) name = 1u << (bit),
	TRACEED_FLAGS(TRACEED_FLAG_ENUM)
#undef TRACEED_FLAG_ENUM
};

/* Which syscall of a kind (argument positions differ: open vs openat). Kept
 * in `aux` by the kinds whose decoding depends on it (setuid, kill). */
#define TRACEED_VARIANTS(X)                                          \
	X(V_PLAIN, 0)                                                \
	X(V_AT, 1)      /* leading dirfd */                          \
	X(V_AT2, 2)     /* renameat2-style: two dirfds, flags */     \
	X(V_RE, 3)      /* setreuid(ruid, euid) */                   \
	X(V_RES, 4)     /* setresuid(ruid, euid, suid) */            \
	X(V_T, 5)       /* tkill(tid, sig) */                        \
	X(V_TG, 6)      /* tgkill(tgid, tid, sig) */                 \
	X(V_OPENAT2, 7) /* openat2(dfd, path, how, size) */          \
	X(V_FD, 8)      /* fchmod(fd, mode): an fd, no path */

enum variant {
#define TRACEED_VARIANT_ENUM(name, num) name = num,
	TRACEED_VARIANTS(TRACEED_VARIANT_ENUM)
#undef TRACEED_VARIANT_ENUM
};

/*
 * Per kind: which args[] slot (SLOT_*) and which string (STR_*) holds what.
 * Dirfds are AT_FDCWD (as a sign-extended int) when the syscall took none;
 * the daemon resolves relative paths against them.
 */
#define TRACEED_ARG_SLOTS(X)                                                      \
	X(SLOT_EXEC_ARGC, 0)          /* argument count (SLOT_EXEC_ARGV_KNOWN) */     \
	X(SLOT_EXEC_ARGV_BYTES, 1)    /* whole argv length, NULs included */         \
	X(SLOT_EXEC_ARGV_KNOWN, 2)    /* ARGV_SIZE_KNOWN: the two above are exact */ \
	X(SLOT_EXEC_CTIME, 3)         /* loaded file's inode ctime, ns; 0 unknown */ \
	X(SLOT_EXEC_START, 4)         /* the process's start, boot clock ns; 0 unknown */ \
	X(SLOT_EXEC_CWD_ID, 5)        /* cwd_id() of the cwd named in STR_EXEC_CWD; 0 unknown */ \
	X(SLOT_FORK_START, 0)         /* the child's start, boot clock ns; 0 unknown */ \
	X(SLOT_EXIT_CODE, 0)          /* exit status, 0-255 */                       \
	X(SLOT_EXIT_SIGNAL, 1)        /* terminating signal, 0 = none */             \
	X(SLOT_EXIT_STATUS_KNOWN, 2)  /* EXIT_STATUS_KNOWN, else both unknown */     \
	X(SLOT_OPEN_FLAGS, 0)                                                      \
	X(SLOT_OPEN_MODE, 1)                                                       \
	X(SLOT_OPEN_DIRFD, 2)                                                      \
	X(SLOT_OPEN_DIR_ID, 3)        /* open: dir_fd_id() of the fd an O_DIRECTORY open returned, 0 unknown */ \
	X(SLOT_DIR_ID, 4)             /* open, unlink, rename, chmod: dir_fd_id() of the first path's dirfd (rename: old) when relative to one: dev << 32 | inode, 0 unknown */ \
	X(SLOT_CWD_ID, 5)             /* open, unlink, rename, chmod: cwd_id(), 0 unknown */ \
	X(SLOT_UNLINK_FLAGS, 1)                                                    \
	X(SLOT_UNLINK_DIRFD, 2)                                                    \
	X(SLOT_RENAME_FLAGS, 1)                                                    \
	X(SLOT_RENAME_OLD_DIRFD, 2)                                                \
	X(SLOT_RENAME_NEW_DIRFD, 3)                                                \
	X(SLOT_CHMOD_MODE, 0)                                                      \
	X(SLOT_CHMOD_DIRFD, 2)                                                     \
	X(SLOT_CHMOD_FD, 3)           /* V_FD: fchmod's fd */                        \
	X(SLOT_MOUNT_FLAGS, 0)                                                     \
	X(SLOT_MEMFD_FLAGS, 0)                                                     \
	X(SLOT_SOCK_FD, 0)            /* connect, bind, accept */                    \
	X(SLOT_SETUID_UID, 0)         /* V_PLAIN: setuid(uid) */                     \
	X(SLOT_SETUID_RUID, 0)        /* V_RE, V_RES */                              \
	X(SLOT_SETUID_EUID, 1)        /* V_RE, V_RES */                              \
	X(SLOT_SETUID_SUID, 2)        /* V_RES */                                    \
	X(SLOT_PTRACE_REQUEST, 0)                                                  \
	X(SLOT_PTRACE_PID, 1)                                                      \
	X(SLOT_KILL_PID, 0)           /* V_PLAIN: kill(pid, sig) */                  \
	X(SLOT_KILL_SIG, 1)           /* V_PLAIN, V_T */                             \
	X(SLOT_TKILL_TID, 0)          /* V_T: tkill(tid, sig) */                     \
	X(SLOT_TGKILL_TGID, 0)        /* V_TG: tgkill(tgid, tid, sig) */             \
	X(SLOT_TGKILL_TID, 1)                                                      \
	X(SLOT_TGKILL_SIG, 2)                                                      \
	X(SLOT_BPF_CMD, 0)                                                         \
	X(SLOT_SYSCALL_ARGS, 0)       /* EK_SYSCALL: all EV_NUM_ARGS raw arguments */

#define TRACEED_STR_SLOTS(X)                                         \
	X(STR_EXEC_FILENAME, 0)  /* as the caller named it */        \
	X(STR_EXEC_INTERP, 1)    /* the file loaded (interpreter) */ \
	X(STR_EXEC_CWD, 2)       /* working directory, absolute */   \
	X(STR_EXEC_ARGV, 3)      /* NUL-separated, NUL-terminated; last: it may be long */ \
	X(STR_OPEN_PATH, 0)                                          \
	X(STR_UNLINK_PATH, 0)                                        \
	X(STR_RENAME_OLD, 0)                                         \
	X(STR_RENAME_NEW, 1)                                         \
	X(STR_CHMOD_PATH, 0)                                         \
	X(STR_MOUNT_SOURCE, 0)                                       \
	X(STR_MOUNT_TARGET, 1)                                       \
	X(STR_MOUNT_FSTYPE, 2)                                       \
	X(STR_MEMFD_NAME, 0)                                         \
	X(STR_MODULE_NAME, 0)                                        \
	X(STR_SOCK_ADDR, 0)      /* raw struct sockaddr bytes */

enum event_slot {
#define TRACEED_SLOT_ENUM(name, num) name = num,
	TRACEED_ARG_SLOTS(TRACEED_SLOT_ENUM)
	TRACEED_STR_SLOTS(TRACEED_SLOT_ENUM)
#undef TRACEED_SLOT_ENUM
};

/* args[SLOT_EXIT_STATUS_KNOWN]: the exit program knew the status. Anything
 * else (0: the fallback saw no exit_group) decodes as exit_code and signal
 * unknown (null), never as a guessed 0. */
#define EXIT_STATUS_KNOWN 1

/* args[SLOT_EXEC_ARGV_KNOWN]: argc and argv_bytes were measured whole (also
 * when argv itself was cut to max_argv_bytes). Else both are unknown. */
#define ARGV_SIZE_KNOWN 1

/* Raw socket addresses are copied as bytes; enough for sockaddr_un. */
#define EV_SOCKADDR_MAX 128

/* The header's fields, in order, for the host probe: the Rust mirror
 * (daemon/src/pipeline/contract.rs) must list the same ones, and its offsets,
 * sizes and total size are checked against these at compile time. */
#define TRACEED_HEADER_FIELDS(X) \
	X(ts_ns)                 \
	X(cgroup_id)             \
	X(retval)                \
	X(kind)                  \
	X(flags)                 \
	X(pid)                   \
	X(tid)                   \
	X(ppid)                  \
	X(uid)                   \
	X(gid)                   \
	X(ns_pid)                \
	X(mnt_ns)                \
	X(pid_ns)                \
	X(comm)                  \
	X(args)                  \
	X(str_len)               \
	X(data_len)              \
	X(aux)

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
	__u32 str_len[EV_NUM_STRS]; /* argv may pass 64 KiB */
	__u32 data_len;
	__u32 aux; /* EK_SYSCALL: the syscall number; EK_SETUID, EK_KILL: the variant */
};

struct event {
	struct event_header h;
	char data[EV_BUF_SIZE];
};

#endif
