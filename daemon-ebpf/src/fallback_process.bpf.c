/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Process lifecycle for the fallback object: only helpers, tracepoint
 * records whose field offsets traceed read from tracefs at load time, and
 * user-memory reads. No kernel struct is touched, so no layout can be wrong;
 * what cannot be known this way (namespaces, ppid of an exec) stays null.
 */
#include "syscalls.h"

/* Offsets from the running kernel's tracefs format files. */
const volatile __u32 fb_exec_filename_off = 8;   /* __data_loc char[] filename */
const volatile __u32 fb_fork_child_pid_off = 44;
const volatile __u32 fb_exit_group_dead_off = 0; /* 0: field absent */

/* argv as read at execve entry (user memory of the caller), per thread,
 * until sched_process_exec of the same thread emits it (or the failed
 * exec's sys_exit drops it). Hash values are preallocated, so the stash is
 * bounded twice: FB_ARGV_STASH bytes of argv (the fallback's cut, whatever
 * max_argv_bytes says) and FB_STASH_ENTRIES execs in flight at once. */
#define FB_ARGV_STASH (32 * 1024)
#define FB_STASH_ENTRIES 128

struct argv_stash {
	__u32 len;
	__u32 argc;
	__u32 whole;
	__u32 pad;
	char buf[FB_ARGV_STASH];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FB_STASH_ENTRIES);
	__type(key, __u32);
	__type(value, struct argv_stash);
} argv_stash SEC(".maps");

/* clone()s that create threads, per calling thread, so the fork tracepoint
 * (which only gives pids) records processes only. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} clone_thread SEC(".maps");

static __always_inline int note_clone_flags(__u64 flags)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u8 one = 1;

	if (flags & CLONE_THREAD)
		bpf_map_update_elem(&clone_thread, &tid, &one, BPF_ANY);
	else
		bpf_map_delete_elem(&clone_thread, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_clone")
int fb_enter_clone(struct sys_enter_ctx *ctx)
{
	return note_clone_flags(sys_arg(ctx, 0));
}

/* clone3(struct clone_args *, size): flags is the first u64 of the struct. */
SEC("tracepoint/syscalls/sys_enter_clone3")
int fb_enter_clone3(struct sys_enter_ctx *ctx)
{
	__u64 flags = 0;
	bpf_probe_read_user(&flags, sizeof(flags), (void *)sys_arg(ctx, 0));
	return note_clone_flags(flags);
}

/* exit_group's status, per process, for the exit row. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} exit_status SEC(".maps");

/* Built in the record scratch (too large for the stack), then copied. */
static __always_inline int stash_argv(struct sys_enter_ctx *ctx, int argv_slot)
{
	__u32 cpu = bpf_get_smp_processor_id(), tid = (__u32)bpf_get_current_pid_tgid();
	const char *const *argv = (const char *const *)sys_arg(ctx, argv_slot);
	struct event *e = bpf_map_lookup_elem(&scratch, &cpu);
	struct argv_stash *st;
	struct argv_read r;
	__u32 cap = argv_cap();

	if (!e || (out_of_scope() && !is_canary()))
		return 0;
	if (cap > FB_ARGV_STASH)
		cap = FB_ARGV_STASH;
	st = (struct argv_stash *)e->data;
	read_argv_ptrs(e->data, __builtin_offsetof(struct argv_stash, buf), cap, argv, &r);
	st->len = r.used;
	st->argc = r.argc;
	st->whole = r.whole;
	bpf_map_update_elem(&argv_stash, &tid, st, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int fb_enter_execve(struct sys_enter_ctx *ctx)
{
	return stash_argv(ctx, 1);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int fb_enter_execveat(struct sys_enter_ctx *ctx)
{
	return stash_argv(ctx, 2);
}

SEC("tracepoint/sched/sched_process_exec")
int fb_sched_process_exec(void *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct argv_stash *st;
	struct event *e;
	__u32 loc = 0;

	if (out_of_scope() && !is_canary())
		return 0;
	e = event_start(EK_EXEC);
	if (!e)
		return 0;
	bpf_probe_read_kernel(&loc, sizeof(loc), ctx + fb_exec_filename_off);
	push_str(e, STR_EXEC_FILENAME, ctx + (loc & 0xFFFF), STR_KERNEL);
	/* No interpreter and no working directory here (kernel structs). */
	st = bpf_map_lookup_elem(&argv_stash, &tid);
	if (st) {
		__u32 len = st->len;
		__u32 off = e->h.data_len;
		if (len > FB_ARGV_STASH)
			len = FB_ARGV_STASH;
		if (len > 0 && off <= EV_DATA_MAX) {
			bpf_probe_read_kernel(&e->data[off & (EV_DATA_MAX * 2 - 1)],
					      len & (FB_ARGV_STASH * 2 - 1), st->buf);
			e->h.str_len[STR_EXEC_ARGV] = len;
			e->h.data_len = off + len;
		}
		if (st->whole)
			set_argv_size(e, st->argc, len);
		else
			mark_truncated(e);
		bpf_map_delete_elem(&argv_stash, &tid);
	}
	return event_emit(ctx, e);
}

SEC("tracepoint/sched/sched_process_fork")
int fb_sched_process_fork(void *ctx)
{
	struct event *e;
	int parent = 0, child = 0;

	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	bpf_probe_read_kernel(&child, sizeof(child), ctx + fb_fork_child_pid_off);
	/* A status left by an earlier process with this pid (its exit was not
	 * recorded) must never be taken for the new one's. */
	bpf_map_delete_elem(&exit_status, &child);
	if (out_of_scope())
		return 0;
	if (bpf_map_lookup_elem(&clone_thread, &tid))
		return 0; /* a new thread, not a new process */
	/* parent_pid in the record is the forking *thread*; the parent
	 * process is the current task's tgid. */
	parent = bpf_get_current_pid_tgid() >> 32;
	e = event_start(EK_FORK);
	if (!e)
		return 0;
	e->h.pid = child;
	e->h.tid = child;
	e->h.ppid = parent;
	e->h.flags |= EF_HAS_PPID;
	return event_emit(ctx, e);
}

SEC("tracepoint/syscalls/sys_enter_exit_group")
int fb_enter_exit_group(struct sys_enter_ctx *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 code = (__u32)sys_arg(ctx, 0) & 0xff;

	bpf_map_update_elem(&exit_status, &tgid, &code, BPF_ANY);
	return 0;
}

/* One row per process. The status is known only when the process called
 * exit_group (from any thread): a process killed by a signal, or whose last
 * thread left with a plain exit, records exit_code and signal unknown. */
SEC("tracepoint/sched/sched_process_exit")
int fb_sched_process_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct event *e;
	__u32 *status, code = 0;
	int known = 0;
	__u8 group_dead = 0;

	if (fb_exit_group_dead_off) {
		bpf_probe_read_kernel(&group_dead, 1, ctx + fb_exit_group_dead_off);
		if (!group_dead)
			return 0;
	} else if (tid != tgid) {
		/* Without group_dead, the leader's exit stands for the process. */
		return 0;
	}
	/* Taken whether or not the process is in scope: the entry is done. */
	status = bpf_map_lookup_elem(&exit_status, &tgid);
	if (status) {
		code = *status;
		known = 1;
		bpf_map_delete_elem(&exit_status, &tgid);
	}
	if (out_of_scope())
		return 0;
	e = event_start(EK_EXIT);
	if (!e)
		return 0;
	if (known) {
		e->h.args[SLOT_EXIT_CODE] = code;
		e->h.args[SLOT_EXIT_SIGNAL] = 0; /* exit_group: no signal */
		e->h.args[SLOT_EXIT_STATUS_KNOWN] = EXIT_STATUS_KNOWN;
	}
	return event_emit(ctx, e);
}
