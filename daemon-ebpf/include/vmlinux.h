/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * A minimal vmlinux.h: only the kernel types (and only the members) the
 * CO-RE programs read. With CO-RE, member offsets here are never used as
 * such: every access is relocated by name against the target kernel's BTF,
 * so a struct needs just the members we touch, with plausible types.
 *
 * Produced by hand from `bpftool btf dump file /sys/kernel/btf/vmlinux
 * format c` (kernel 6.18), keeping what daemon-ebpf/src reads. To add a
 * field: dump a full header as above, copy the member (and any type it
 * needs) here, keep the preserve_access_index pragma around structs. See
 * daemon-ebpf/README.md.
 */
#ifndef __VMLINUX_H__
#define __VMLINUX_H__

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s64 s64;
typedef __s32 s32;
typedef int pid_t;
typedef long long time64_t;
typedef _Bool bool;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef unsigned short umode_t;
typedef u32 dev_t;
enum {
	false = 0,
	true = 1,
};

/* uapi/linux/bpf.h: stable values */
enum bpf_map_type {
	BPF_MAP_TYPE_UNSPEC = 0,
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PROG_ARRAY = 3,
	BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4,
	BPF_MAP_TYPE_PERCPU_HASH = 5,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_STACK_TRACE = 7,
	BPF_MAP_TYPE_CGROUP_ARRAY = 8,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_LRU_PERCPU_HASH = 10,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
	BPF_F_LOCK = 4,
};

enum {
	BPF_F_NO_PREALLOC = 1,
};

/* Only to ask the running kernel (CO-RE enum relocation) whether it has
 * the helpers: bpf_get_current_task_btf 5.11, bpf_task_pt_regs 5.15. */
enum bpf_func_id {
	BPF_FUNC_get_current_task_btf = 158,
	BPF_FUNC_task_pt_regs = 175,
};

enum {
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
};

enum {
	BPF_RB_AVAIL_DATA = 0,
	BPF_RB_RING_SIZE = 1,
	BPF_RB_CONS_POS = 2,
	BPF_RB_PROD_POS = 3,
};

enum {
	BPF_F_INDEX_MASK = 4294967295ULL,
	BPF_F_CURRENT_CPU = 4294967295ULL,
	BPF_F_CTXLEN_MASK = 4503595332403200ULL,
};

#ifndef BPF_NO_PRESERVE_ACCESS_INDEX
#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)
#endif

struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

typedef struct {
	int counter;
} atomic_t;

struct hlist_node {
	struct hlist_node *next;
	struct hlist_node **pprev;
};

struct ns_common {
	unsigned int inum;
};

struct pid_namespace {
	struct ns_common ns;
};

struct upid {
	int nr;
	struct pid_namespace *ns;
};

struct pid {
	unsigned int level;
	struct upid numbers[0];
};

struct mnt_namespace {
	struct ns_common ns;
};

struct nsproxy {
	struct mnt_namespace *mnt_ns;
	struct pid_namespace *pid_ns_for_children;
};

struct mm_struct {
	long unsigned int arg_start;
	long unsigned int arg_end;
};

struct signal_struct {
	atomic_t live;
};

struct timespec64 {
	time64_t tv_sec;
	long int tv_nsec;
};

struct inode {
	umode_t i_mode;
	long unsigned int i_ino;
	/* 6.11+: split seconds and nanoseconds; older layouts are ___flavors
	 * in task.h */
	time64_t i_ctime_sec;
	u32 i_ctime_nsec;
};

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	struct inode *f_inode;
	struct path f_path;
};

struct linux_binprm {
	struct file *file;
	int argc;
	const char *filename;
	const char *interp;
};

struct qstr {
	union {
		struct {
			u32 hash;
			u32 len;
		};
		u64 hash_len;
	};
	const unsigned char *name;
};

struct super_block {
	dev_t s_dev;
};

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
	struct inode *d_inode;
	struct super_block *d_sb;
};

struct vfsmount {
	struct dentry *mnt_root;
};

/* fs/mount.h (private to fs/, but in BTF): the vfsmount is embedded. */
struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
};

struct fs_struct {
	struct path root;
	struct path pwd;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

/* x86-64: a syscall's arguments are di, si, dx, r10, r8, r9 of the
 * user's registers, which __x64_sys_* receive (fexit programs read them).
 * orig_ax is the syscall's number. */
struct pt_regs {
	unsigned long r10;
	unsigned long r9;
	unsigned long r8;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
};

/* What bpf_get_current_uid_gid, _comm and _cgroup_id read, read directly
 * where the task is a typed pointer (kread.h, TASK_BTF). */
typedef struct {
	unsigned int val;
} kuid_t;
typedef struct {
	unsigned int val;
} kgid_t;

struct cred {
	kuid_t uid;
	kgid_t gid;
};

struct kernfs_node {
	u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct css_set {
	struct cgroup *dfl_cgrp;
};

struct task_struct {
	void *stack;
	const struct cred *cred;
	char comm[16];
	struct css_set *cgroups;
	int exit_code;
	pid_t pid;
	pid_t tgid;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	u64 start_boottime;
	struct pid *thread_pid;
	struct mm_struct *mm;
	struct fs_struct *fs;
	struct files_struct *files;
	struct nsproxy *nsproxy;
	struct signal_struct *signal;
};

#ifndef BPF_NO_PRESERVE_ACCESS_INDEX
#pragma clang attribute pop
#endif

#endif /* __VMLINUX_H__ */
