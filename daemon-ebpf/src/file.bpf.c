/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * File-system events: open, unlink, rename, chmod, mount, memfd_create.
 * Paths are recorded as the process passed them; the daemon makes relative
 * ones absolute against the process's cwd.
 */
#include "syscalls.h"

#define AT_FDCWD_U ((__u64)(__s64)-100)

/* An open's record from its arguments: shared by the tracepoint pair and
 * the fexit program, so both say the same. */
static __always_inline void fill_open(struct event *e, __u32 variant, const __u64 *args)
{
	if (variant == V_PLAIN) { /* open(path, flags, mode) */
		push_str(e, STR_OPEN_PATH, (void *)args[0], STR_USER);
		e->h.args[SLOT_OPEN_FLAGS] = args[1];
		e->h.args[SLOT_OPEN_MODE] = args[2];
		e->h.args[SLOT_OPEN_DIRFD] = AT_FDCWD_U;
	} else if (variant == V_OPENAT2) { /* openat2(dfd, path, how, size) */
		struct open_how___min {
			__u64 flags;
			__u64 mode;
		} how = {};
		push_str(e, STR_OPEN_PATH, (void *)args[1], STR_USER);
		bpf_probe_read_user(&how, sizeof(how), (void *)args[2]);
		e->h.args[SLOT_OPEN_FLAGS] = how.flags;
		e->h.args[SLOT_OPEN_MODE] = how.mode;
		e->h.args[SLOT_OPEN_DIRFD] = args[0];
	} else { /* openat(dfd, path, flags, mode) */
		push_str(e, STR_OPEN_PATH, (void *)args[1], STR_USER);
		e->h.args[SLOT_OPEN_FLAGS] = args[2];
		e->h.args[SLOT_OPEN_MODE] = args[3];
		e->h.args[SLOT_OPEN_DIRFD] = args[0];
	}
}

static __always_inline int on_open(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	fill_open(e, in->variant, in->args);
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(open, 3, EK_OPEN, V_PLAIN, on_open)
SYSCALL_HOOKS(openat, 4, EK_OPEN, V_AT, on_open)
SYSCALL_HOOKS(openat2, 4, EK_OPEN, V_OPENAT2, on_open)
SYS_FEXIT(open, EK_OPEN, V_PLAIN, fill_open)
SYS_FEXIT(openat, EK_OPEN, V_AT, fill_open)
SYS_FEXIT(openat2, EK_OPEN, V_OPENAT2, fill_open)

static __always_inline int on_unlink(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	if (in->variant == V_AT) { /* unlinkat(dfd, path, flags) */
		push_str(e, STR_UNLINK_PATH, (void *)in->args[1], STR_USER);
		e->h.args[SLOT_UNLINK_FLAGS] = in->args[2];
		e->h.args[SLOT_UNLINK_DIRFD] = in->args[0];
	} else { /* unlink(path) */
		push_str(e, STR_UNLINK_PATH, (void *)in->args[0], STR_USER);
		e->h.args[SLOT_UNLINK_DIRFD] = AT_FDCWD_U;
	}
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(unlink, 1, EK_UNLINK, V_PLAIN, on_unlink)
SYSCALL_HOOKS(unlinkat, 3, EK_UNLINK, V_AT, on_unlink)

static __always_inline int on_rename(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	if (in->variant == V_PLAIN) { /* rename(old, new) */
		push_str(e, STR_RENAME_OLD, (void *)in->args[0], STR_USER);
		push_str(e, STR_RENAME_NEW, (void *)in->args[1], STR_USER);
		e->h.args[SLOT_RENAME_OLD_DIRFD] = AT_FDCWD_U;
		e->h.args[SLOT_RENAME_NEW_DIRFD] = AT_FDCWD_U;
	} else { /* renameat{,2}(olddfd, old, newdfd, new[, flags]) */
		push_str(e, STR_RENAME_OLD, (void *)in->args[1], STR_USER);
		push_str(e, STR_RENAME_NEW, (void *)in->args[3], STR_USER);
		e->h.args[SLOT_RENAME_FLAGS] = in->variant == V_AT2 ? in->args[4] : 0;
		e->h.args[SLOT_RENAME_OLD_DIRFD] = in->args[0];
		e->h.args[SLOT_RENAME_NEW_DIRFD] = in->args[2];
	}
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(rename, 2, EK_RENAME, V_PLAIN, on_rename)
SYSCALL_HOOKS(renameat, 4, EK_RENAME, V_AT, on_rename)
SYSCALL_HOOKS(renameat2, 5, EK_RENAME, V_AT2, on_rename)

static __always_inline int on_chmod(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	if (in->variant == V_AT) { /* fchmodat(dfd, path, mode) */
		push_str(e, STR_CHMOD_PATH, (void *)in->args[1], STR_USER);
		e->h.args[SLOT_CHMOD_MODE] = in->args[2];
		e->h.args[SLOT_CHMOD_DIRFD] = in->args[0];
	} else if (in->variant == V_FD) { /* fchmod(fd, mode): no path */
		e->h.args[SLOT_CHMOD_MODE] = in->args[1];
		e->h.args[SLOT_CHMOD_FD] = in->args[0];
	} else { /* chmod(path, mode) */
		push_str(e, STR_CHMOD_PATH, (void *)in->args[0], STR_USER);
		e->h.args[SLOT_CHMOD_MODE] = in->args[1];
		e->h.args[SLOT_CHMOD_DIRFD] = AT_FDCWD_U;
	}
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(chmod, 2, EK_CHMOD, V_PLAIN, on_chmod)
SYSCALL_HOOKS(fchmodat, 3, EK_CHMOD, V_AT, on_chmod)
SYSCALL_HOOKS(fchmod, 2, EK_CHMOD, V_FD, on_chmod)

static __always_inline int on_mount(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	/* mount(source, target, fstype, flags, data) */
	push_str(e, STR_MOUNT_SOURCE, (void *)in->args[0], STR_USER);
	push_str(e, STR_MOUNT_TARGET, (void *)in->args[1], STR_USER);
	push_str(e, STR_MOUNT_FSTYPE, (void *)in->args[2], STR_USER);
	e->h.args[SLOT_MOUNT_FLAGS] = in->args[3];
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(mount, 5, EK_MOUNT, V_PLAIN, on_mount)

static __always_inline int on_memfd(struct sys_exit_ctx *ctx, struct inflight *in)
{
	struct event *e = exit_start(ctx, in);
	if (!e)
		return 0;
	/* memfd_create(name, flags) */
	push_str(e, STR_MEMFD_NAME, (void *)in->args[0], STR_USER);
	e->h.args[SLOT_MEMFD_FLAGS] = in->args[1];
	return event_emit(ctx, e);
}
SYSCALL_HOOKS(memfd_create, 2, EK_MEMFD_CREATE, V_PLAIN, on_memfd)
