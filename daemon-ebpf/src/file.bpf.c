/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * File-system events: open, unlink, rename, chmod, mount, memfd_create.
 * Paths are recorded as the process passed them; the daemon makes relative
 * ones absolute against the process's cwd.
 */
#include "syscalls.h"

#define AT_FDCWD_U ((__u64)(__s64)-100)

/* A dirfd argument as the kernel reads it: an int. glibc passes ints in
 * the low half of the register only (its syscall macros keep the argument's
 * type), so AT_FDCWD arrives as 0xffffff9c, not sign-extended; compared
 * as a u64 it named no directory, and cwd-relative paths of glibc programs
 * carried no cwd id. */
static __always_inline __u64 dirfd_arg(__u64 v)
{
	return (__u64)(__s64)(__s32)v;
}

/* 1 when string `idx`, stored at `off`, is a relative path (not empty,
 * not starting with '/'): only those does the daemon resolve, so only they
 * pay for the reads of a directory's id. */
static __always_inline int relative(struct event *e, int idx, __u32 off)
{
	return e->h.str_len[idx & (EV_NUM_STRS - 1)] && e->data[off & (EV_DATA_MAX * 2 - 1)] != '/';
}

/* 1 when the path is resolved against the cwd: relative, and with
 * AT_FDCWD (one relative to a dirfd is resolved through the fd). */
static __always_inline int cwd_relative(struct event *e, int idx, __u32 off, __u64 dirfd)
{
	return dirfd == AT_FDCWD_U && relative(e, idx, off);
}

static __always_inline void note_cwd(struct event *e, int relative)
{
	if (relative)
		e->h.args[SLOT_CWD_ID] = cwd_id();
}

/* The id of the directory at `dirfd` when string `idx` is a path relative
 * to one (not AT_FDCWD): the daemon reads /proc/PID/fd/N once per id. */
static __always_inline void note_dir(struct event *e, int idx, __u32 off, __u64 dirfd)
{
	if (dirfd != AT_FDCWD_U && relative(e, idx, off))
		e->h.args[SLOT_DIR_ID] = dir_fd_id(dirfd);
}

/* Each family's record from its arguments (`fill` in syscalls.h): shared
 * by the tracepoint pair and the fexit program, so both say the same. */
static __always_inline int fill_open(struct event *e, __u32 variant, const __u64 *args)
{
	__u32 off = e->h.data_len;

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
		e->h.args[SLOT_OPEN_DIRFD] = dirfd_arg(args[0]);
	} else { /* openat(dfd, path, flags, mode) */
		push_str(e, STR_OPEN_PATH, (void *)args[1], STR_USER);
		e->h.args[SLOT_OPEN_FLAGS] = args[2];
		e->h.args[SLOT_OPEN_MODE] = args[3];
		e->h.args[SLOT_OPEN_DIRFD] = dirfd_arg(args[0]);
	}
	note_cwd(e, cwd_relative(e, STR_OPEN_PATH, off, e->h.args[SLOT_OPEN_DIRFD]));
	note_dir(e, STR_OPEN_PATH, off, e->h.args[SLOT_OPEN_DIRFD]);
	/* A directory opened as one (opendir, fts: rm -r, find) says which
	 * directory the new fd names, so the daemon can resolve the paths
	 * relative to it from the stream alone, also once it is deleted: rm -r
	 * removes each directory before the daemon handles its unlinks. The
	 * other opens pay nothing. */
	if ((e->h.args[SLOT_OPEN_FLAGS] & O_DIRECTORY) && e->h.retval >= 0)
		e->h.args[SLOT_OPEN_DIR_ID] = dir_fd_id(e->h.retval);
	return 0;
}
SYSCALL_HOOKS(open, 3, EK_OPEN, V_PLAIN, fill_open)
SYSCALL_HOOKS(openat, 4, EK_OPEN, V_AT, fill_open)
SYSCALL_HOOKS(openat2, 4, EK_OPEN, V_OPENAT2, fill_open)

static __always_inline int fill_unlink(struct event *e, __u32 variant, const __u64 *args)
{
	__u32 off = e->h.data_len;

	if (variant == V_AT) { /* unlinkat(dfd, path, flags) */
		push_str(e, STR_UNLINK_PATH, (void *)args[1], STR_USER);
		e->h.args[SLOT_UNLINK_FLAGS] = args[2];
		e->h.args[SLOT_UNLINK_DIRFD] = dirfd_arg(args[0]);
	} else { /* unlink(path) */
		push_str(e, STR_UNLINK_PATH, (void *)args[0], STR_USER);
		e->h.args[SLOT_UNLINK_DIRFD] = AT_FDCWD_U;
	}
	note_cwd(e, cwd_relative(e, STR_UNLINK_PATH, off, e->h.args[SLOT_UNLINK_DIRFD]));
	note_dir(e, STR_UNLINK_PATH, off, e->h.args[SLOT_UNLINK_DIRFD]);
	return 0;
}
SYSCALL_HOOKS(unlink, 1, EK_UNLINK, V_PLAIN, fill_unlink)
SYSCALL_HOOKS(unlinkat, 3, EK_UNLINK, V_AT, fill_unlink)

static __always_inline int fill_rename(struct event *e, __u32 variant, const __u64 *args)
{
	__u32 off = e->h.data_len;

	if (variant == V_PLAIN) { /* rename(old, new) */
		push_str(e, STR_RENAME_OLD, (void *)args[0], STR_USER);
		push_str(e, STR_RENAME_NEW, (void *)args[1], STR_USER);
		e->h.args[SLOT_RENAME_OLD_DIRFD] = AT_FDCWD_U;
		e->h.args[SLOT_RENAME_NEW_DIRFD] = AT_FDCWD_U;
	} else { /* renameat{,2}(olddfd, old, newdfd, new[, flags]) */
		push_str(e, STR_RENAME_OLD, (void *)args[1], STR_USER);
		push_str(e, STR_RENAME_NEW, (void *)args[3], STR_USER);
		e->h.args[SLOT_RENAME_FLAGS] = variant == V_AT2 ? args[4] : 0;
		e->h.args[SLOT_RENAME_OLD_DIRFD] = dirfd_arg(args[0]);
		e->h.args[SLOT_RENAME_NEW_DIRFD] = dirfd_arg(args[2]);
	}
	note_cwd(e, cwd_relative(e, STR_RENAME_OLD, off, e->h.args[SLOT_RENAME_OLD_DIRFD]) ||
			    cwd_relative(e, STR_RENAME_NEW, off + e->h.str_len[STR_RENAME_OLD],
					 e->h.args[SLOT_RENAME_NEW_DIRFD]));
	note_dir(e, STR_RENAME_OLD, off, e->h.args[SLOT_RENAME_OLD_DIRFD]);
	return 0;
}
SYSCALL_HOOKS(rename, 2, EK_RENAME, V_PLAIN, fill_rename)
SYSCALL_HOOKS(renameat, 4, EK_RENAME, V_AT, fill_rename)
SYSCALL_HOOKS(renameat2, 5, EK_RENAME, V_AT2, fill_rename)

static __always_inline int fill_chmod(struct event *e, __u32 variant, const __u64 *args)
{
	__u32 off = e->h.data_len;

	if (variant == V_AT) { /* fchmodat(dfd, path, mode) */
		push_str(e, STR_CHMOD_PATH, (void *)args[1], STR_USER);
		e->h.args[SLOT_CHMOD_MODE] = args[2];
		e->h.args[SLOT_CHMOD_DIRFD] = dirfd_arg(args[0]);
	} else if (variant == V_FD) { /* fchmod(fd, mode): no path */
		e->h.args[SLOT_CHMOD_MODE] = args[1];
		e->h.args[SLOT_CHMOD_FD] = args[0];
	} else { /* chmod(path, mode) */
		push_str(e, STR_CHMOD_PATH, (void *)args[0], STR_USER);
		e->h.args[SLOT_CHMOD_MODE] = args[1];
		e->h.args[SLOT_CHMOD_DIRFD] = AT_FDCWD_U;
	}
	/* fchmod has no path, and its dirfd slot stays 0: never relative. */
	note_cwd(e, cwd_relative(e, STR_CHMOD_PATH, off, e->h.args[SLOT_CHMOD_DIRFD]));
	note_dir(e, STR_CHMOD_PATH, off, e->h.args[SLOT_CHMOD_DIRFD]);
	return 0;
}
SYSCALL_HOOKS(chmod, 2, EK_CHMOD, V_PLAIN, fill_chmod)
SYSCALL_HOOKS(fchmodat, 3, EK_CHMOD, V_AT, fill_chmod)
SYSCALL_HOOKS(fchmod, 2, EK_CHMOD, V_FD, fill_chmod)

static __always_inline int fill_mount(struct event *e, __u32 variant, const __u64 *args)
{
	/* mount(source, target, fstype, flags, data) */
	push_str(e, STR_MOUNT_SOURCE, (void *)args[0], STR_USER);
	push_str(e, STR_MOUNT_TARGET, (void *)args[1], STR_USER);
	push_str(e, STR_MOUNT_FSTYPE, (void *)args[2], STR_USER);
	e->h.args[SLOT_MOUNT_FLAGS] = args[3];
	return 0;
}
SYSCALL_HOOKS(mount, 5, EK_MOUNT, V_PLAIN, fill_mount)

static __always_inline int fill_memfd(struct event *e, __u32 variant, const __u64 *args)
{
	/* memfd_create(name, flags) */
	push_str(e, STR_MEMFD_NAME, (void *)args[0], STR_USER);
	e->h.args[SLOT_MEMFD_FLAGS] = args[1];
	return 0;
}
SYSCALL_HOOKS(memfd_create, 2, EK_MEMFD_CREATE, V_PLAIN, fill_memfd)
