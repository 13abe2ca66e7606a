/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Shared by every hook family of every object: the maps, the load-time
 * globals, and the helpers that start, fill and emit a record.
 *
 * Records are built in a per-CPU scratch slot (a record holds up to
 * EV_BUF_SIZE bytes of strings, the BPF stack is 512 bytes) and only the
 * header and the data bytes used are copied into the ring buffer (or the
 * perf event array when built with -DTRACEED_PERF for kernels without ring
 * buffers), so a record is sized to its strings and argv. Reserving the
 * record in the ring instead (bpf_ringbuf_reserve) would need a size fixed
 * at verification, so space for the longest path in every record, and one
 * helper call more (reserve + submit): the copy it would save is ~20 ns
 * of an open's ~530 (BENCHMARKS.md, "Records built in place").
 */
#ifndef TRACEED_COMMON_H
#define TRACEED_COMMON_H

#include "kread.h"
#include "missing_definitions.h"
#include "events.h"

/* The sources are GPL-2.0 OR Apache-2.0 (the SPDX lines). The kernel knows
 * only a fixed set of license strings ("GPL", "Dual BSD/GPL", ...) and
 * none names Apache, so the objects are handed to the kernel under the GPL-2.0
 * half of that choice: "GPL", which GPL-only helpers require. */
char LICENSE[] SEC("license") = "GPL";

/* Set by traceed at load time (frozen .rodata). */
const volatile __u32 self_tgid = 0;
/* SCOPE_*_INCLUDE bits: an include list is configured for that key, so
 * only tasks found in it are recorded. */
const volatile __u32 scope_flags = 0;
/* Ring buffer: wake the reader when this much becomes pending (event_send);
 * it also drains on a short timer, so a lone event waits at most that
 * long. Waking on every record costs a context switch per event under
 * load. */
const volatile __u32 wakeup_bytes = 0;

/* Non-zero when any scope list (include or exclude) is configured. */
const volatile __u32 scope_any = 0;
/* [events] max_argv_bytes: argv beyond this is cut (EF_TRUNCATED); the
 * loader keeps it within what the object can hold (EV_ARGV_CAP). */
const volatile __u32 max_argv_bytes = 32 * 1024;

/* Benchmarks only (traceed reads TRACEED_BENCH_FLOOR): syscall programs
 * return at once, so a run measures what the attach method itself costs
 * (the bench's "floor"); process events keep being recorded, so the
 * start-up self-check still holds. */
const volatile __u32 bench_floor = 0;

#define SCOPE_UID_INCLUDE (1u << 0)
#define SCOPE_COMM_INCLUDE (1u << 1)
#define SCOPE_PID_INCLUDE (1u << 2)
#define SCOPE_CGROUP_INCLUDE (1u << 3)
#define SCOPE_MNTNS_INCLUDE (1u << 4)

#define SCOPE_IN 1
#define SCOPE_OUT 2

/* Scope lists pushed by traceed from [scope]: value SCOPE_IN or SCOPE_OUT. */
#define SCOPE_MAP(name, key_t)                      \
	struct {                                     \
		__uint(type, BPF_MAP_TYPE_HASH);     \
		__uint(max_entries, 1024);           \
		__type(key, key_t);                  \
		__type(value, __u8);                 \
	} name SEC(".maps");

struct comm_key {
	char comm[TASK_COMM_LEN];
};

/* The tgid of traceed's start-up self-check child: always in scope. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} canary SEC(".maps");

SCOPE_MAP(scope_uid, __u32)
SCOPE_MAP(scope_comm, struct comm_key)
SCOPE_MAP(scope_pid, __u32)
SCOPE_MAP(scope_cgroup, __u64)
SCOPE_MAP(scope_mntns, __u32)

#ifdef TRACEED_PERF
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events SEC(".maps");
#else
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");
#endif

/* One record under construction per CPU, indexed by CPU id. A plain array
 * and not a per-CPU one: per-CPU values are limited to 32 KiB and a record
 * with a whole argv is larger. The loader sets max_entries to the number of
 * possible CPUs. Programs run with migration disabled, so a slot is never
 * shared by two programs at once (as with a per-CPU map). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} scratch SEC(".maps");

/* Records that could not be handed to user space, per CPU. traceed turns
 * every change into a `lost` row. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* The self-check child's exec is recorded whatever the scope says (only
 * its exec: the rest of it stays out of scope like anything else). */
static __always_inline int is_canary(void)
{
	__u32 zero = 0;
	__u32 *c = bpf_map_lookup_elem(&canary, &zero);
	return c && *c && *c == (bpf_get_current_pid_tgid() >> 32);
}

/* 1 when the key's lists say "do not record": excluded, or an include
 * list exists and the key is not in it. */
static __always_inline int scope_drops(void *map, const void *key, __u32 include_bit)
{
	__u8 *v = bpf_map_lookup_elem(map, key);
	if (v && *v == SCOPE_OUT)
		return 1;
	if ((scope_flags & include_bit) && !(v && *v == SCOPE_IN))
		return 1;
	return 0;
}

#ifdef TRACEED_FALLBACK
/* No kernel-struct reads in the fallback object. */
static __always_inline __u32 current_mnt_ns(void)
{
	return 0;
}
#else
static __always_inline __u32 current_mnt_ns(void);
#endif

/* What bpf_get_current_uid_gid() says (gid << 32 | uid, the task's
 * subjective credentials), by loads where the task is typed (TASK_BTF). */
static __always_inline __u64 cur_uid_gid(void)
{
#ifdef CORE /* the other objects lack (or do not include) these types */
	if (TASK_BTF) {
		const struct cred *c = bpf_get_current_task_btf()->cred;

		return (__u64)c->gid.val << 32 | c->uid.val;
	}
#endif
	return bpf_get_current_uid_gid();
}

/* Decided before anything is built or reserved, so out-of-scope activity
 * costs a few map lookups and nothing else. The daemon itself is always
 * out of scope. */
static __always_inline int out_of_scope(void)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;

	if (tgid == self_tgid)
		return 1;
	if (!scope_flags && !scope_any)
		return 0;
	__u32 uid = (__u32)cur_uid_gid();
	if (scope_drops(&scope_uid, &uid, SCOPE_UID_INCLUDE))
		return 1;
	if (scope_drops(&scope_pid, &tgid, SCOPE_PID_INCLUDE))
		return 1;
	struct comm_key ck = {};
	bpf_get_current_comm(&ck.comm, sizeof(ck.comm));
	if (scope_drops(&scope_comm, &ck, SCOPE_COMM_INCLUDE))
		return 1;
	__u64 cg = bpf_get_current_cgroup_id();
	if (scope_drops(&scope_cgroup, &cg, SCOPE_CGROUP_INCLUDE))
		return 1;
	__u32 mnt = current_mnt_ns();
	if (scope_drops(&scope_mntns, &mnt, SCOPE_MNTNS_INCLUDE))
		return 1;
	return 0;
}

/* bpf_get_current_comm and bpf_get_current_cgroup_id (the cgroup v2
 * id), the same way. The kernel keeps comm NUL-terminated; bytes after
 * the NUL are not read by traceed. */
static __always_inline void current_comm_cgroup(struct event *e)
{
#ifdef CORE
	if (TASK_BTF) {
		struct task_struct *t = bpf_get_current_task_btf();
		const __u64 *comm = (const __u64 *)t->comm;
		__u64 *dst = (__u64 *)e->h.comm;

		dst[0] = comm[0];
		dst[1] = comm[1];
		e->h.cgroup_id = t->cgroups->dfl_cgrp->kn->id;
		return;
	}
#endif
	bpf_get_current_comm(&e->h.comm, sizeof(e->h.comm));
	e->h.cgroup_id = bpf_get_current_cgroup_id();
}

/* Start a record for the current task, with the credentials `uid_gid`
 * (as bpf_get_current_uid_gid() packs them; a syscall record may carry
 * the entry's). Returns NULL when the scratch map is unavailable (never
 * expected) so callers just bail. */
static __always_inline struct event *event_start_creds(__u32 kind, __u64 uid_gid)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct event *e = bpf_map_lookup_elem(&scratch, &cpu);
	if (!e)
		return NULL;

	__u64 pid_tgid = bpf_get_current_pid_tgid();

	e->h.ts_ns = bpf_ktime_get_boot_ns();
	current_comm_cgroup(e);
	e->h.retval = 0;
	e->h.kind = kind;
	e->h.flags = 0;
	e->h.pid = pid_tgid >> 32;
	e->h.tid = (__u32)pid_tgid;
	e->h.ppid = 0;
	e->h.uid = (__u32)uid_gid;
	e->h.gid = uid_gid >> 32;
	e->h.ns_pid = 0;
	e->h.mnt_ns = 0;
	e->h.pid_ns = 0;
#pragma unroll
	for (int i = 0; i < EV_NUM_ARGS; i++)
		e->h.args[i] = 0;
#pragma unroll
	for (int i = 0; i < EV_NUM_STRS; i++)
		e->h.str_len[i] = 0;
	e->h.data_len = 0;
	e->h.aux = 0;
	return e;
}

/* The same with the task's credentials now. */
static __always_inline struct event *event_start(__u32 kind)
{
	return event_start_creds(kind, cur_uid_gid());
}

/* Record that string `idx` was cut or could not be stored at all. */
static __always_inline void mark_truncated(struct event *e)
{
	e->h.flags |= EF_TRUNCATED;
}

#define STR_KERNEL 0
#define STR_USER 1

/* Append a NUL-terminated string read from kernel or user memory, at most
 * `max` bytes (a constant, at most EV_DATA_MAX). */
static __always_inline void push_str_from(struct event *e, int idx, const void *src, int where,
					  const __u32 max)
{
	__u32 off = e->h.data_len;
	long n;

	if (idx >= EV_NUM_STRS || off > EV_DATA_MAX) {
		mark_truncated(e);
		return;
	}
	if (where == STR_USER)
		n = bpf_probe_read_user_str(&e->data[off & (EV_DATA_MAX * 2 - 1)], max, src);
	else
		n = bpf_probe_read_kernel_str(&e->data[off & (EV_DATA_MAX * 2 - 1)], max, src);
	if (n <= 0) {
		/* unreadable (e.g. not yet faulted in): store as absent */
		return;
	}
	if (n == max)
		mark_truncated(e);
	e->h.str_len[idx & (EV_NUM_STRS - 1)] = n;
	e->h.data_len = off + n;
}

static __always_inline void push_str(struct event *e, int idx, const void *src, int where)
{
	push_str_from(e, idx, src, where, EV_STR_MAX);
}

/* A kernel string of up to `max` bytes (the working directory). */
#define push_str_max(e, idx, src, max) push_str_from(e, idx, src, STR_KERNEL, max)

/* Append `len` raw bytes of user memory (socket addresses), at most
 * EV_STR_MAX. */
static __always_inline void push_user_bytes(struct event *e, int idx, const void *src, __u64 len)
{
	__u32 off = e->h.data_len;

	if (idx >= EV_NUM_STRS || off > EV_DATA_MAX) {
		mark_truncated(e);
		return;
	}
	if (len > EV_STR_MAX) {
		len = EV_STR_MAX;
		mark_truncated(e);
	}
	if (len == 0)
		return;
	if (bpf_probe_read_user(&e->data[off & (EV_DATA_MAX * 2 - 1)], len & (EV_STR_MAX * 2 - 1),
				src) < 0)
		return;
	e->h.str_len[idx & (EV_NUM_STRS - 1)] = len;
	e->h.data_len = off + len;
}

/* The argv limit in force: the configured one, within the buffer. */
static __always_inline __u32 argv_cap(void)
{
	__u32 cap = max_argv_bytes;
	if (cap > EV_ARGV_CAP)
		cap = EV_ARGV_CAP;
	return cap;
}

/* argc and the whole argv length, exact (also when argv itself is cut). */
static __always_inline void set_argv_size(struct event *e, __u64 argc, __u64 bytes)
{
	e->h.args[SLOT_EXEC_ARGC] = argc;
	e->h.args[SLOT_EXEC_ARGV_BYTES] = bytes;
	e->h.args[SLOT_EXEC_ARGV_KNOWN] = ARGV_SIZE_KNOWN;
}

/* Append argv as one block of user memory (the kernel's copy on the new
 * stack: mm->arg_start..arg_end), cut to max_argv_bytes. It is the record's
 * last string, so it may start anywhere below EV_DATA_MAX. */
static __always_inline void push_argv_block(struct event *e, const void *src, __u64 len)
{
	__u32 off = e->h.data_len;
	__u32 cap = argv_cap();

	if (off > EV_DATA_MAX) {
		mark_truncated(e);
		return;
	}
	if (len > cap) {
		len = cap;
		mark_truncated(e);
	}
	if (len == 0)
		return;
	/* Both bounds again in a form every verifier tracks (a mask). */
	if (bpf_probe_read_user(&e->data[off & (EV_DATA_MAX * 2 - 1)], len & (EV_ARGV_CAP * 2 - 1),
				src) < 0)
		return;
	e->h.str_len[STR_EXEC_ARGV] = len;
	e->h.data_len = off + len;
}

/* At most this many arguments are read one by one (failed execs, the
 * fallback); a bounded loop, so it needs kernel 5.3+ like every loop here.
 * argv_ptr_slots (set at load) lowers the bound where the verifier walks
 * every iteration too slowly: 6.1's and 5.10's hit their 1M-instruction
 * limit at 1024 (and took minutes trying). The verifier reads a frozen
 * .rodata value as a constant, so iterations past it are never walked.
 * Under bpf_loop (read_argv_ptrs_loop) it is the loop's count. */
#define ARGV_PTR_SLOTS 1024
const volatile __u32 argv_ptr_slots = ARGV_PTR_SLOTS;

struct argv_read {
	__u32 used;  /* bytes stored */
	__u32 argc;  /* arguments seen */
	__u32 whole; /* the array's NULL was reached and nothing was cut */
};

/* Store argument `arg` at buf + base + used, where `used` < `cap` bytes
 * are stored already: its length with the NUL, <= 0 when it could not be
 * read. *cut: it was cut at the cap (or EV_ARG_MAX), so the rest of argv
 * is unknown. One step of both loops below. */
static __always_inline long argv_put(char *buf, __u64 base, __u64 cap, __u64 used,
				     const char *arg, int *cut)
{
	/* 64-bit and unsigned, so the verifier sees 0..EV_ARG_MAX */
	__u64 room = cap - used, off = base + used;
	long n;

	if (room > EV_ARG_MAX)
		room = EV_ARG_MAX;
	if (off > EV_DATA_MAX + EV_ARGV_CAP)
		return 0;
	n = bpf_probe_read_user_str(&buf[off], room, arg);
	*cut = n == room;
	return n;
}

/* Read a user argv (array of string pointers, NULL-terminated) argument by
 * argument into buf + base, at most `cap` bytes. */
static __always_inline void read_argv_ptrs(char *buf, __u32 base, __u32 cap,
					   const char *const *argv, struct argv_read *r)
{
	__u32 used = 0;
	int i;

	r->used = 0;
	r->argc = 0;
	r->whole = 0;
	if (base > EV_DATA_MAX || !argv)
		return;
	if (cap > EV_ARGV_CAP)
		cap = EV_ARGV_CAP;
	for (i = 0; i < ARGV_PTR_SLOTS; i++) {
		const char *arg = 0;
		int cut;
		long n;

		if (i >= argv_ptr_slots)
			break;

		if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]))
			break;
		if (!arg) {
			r->whole = 1;
			break;
		}
		if (used >= cap)
			break;
		n = argv_put(buf, base, cap, used, arg, &cut);
		if (n <= 0)
			break;
		used += n;
		if (cut) {
			r->argc = i + 1;
			r->used = used;
			return;
		}
	}
	r->argc = i;
	r->used = used;
}

#ifndef TRACEED_FALLBACK
/*
 * The same reads under bpf_loop (5.17+), for the programs' bpf_loop build
 * (exec_fail.bpf.c, `*_loop`; the loader takes it where the kernel has
 * the helper). A bounded loop is verified once per iteration, and the
 * verifier's precise bounds on `used` keep every iteration's state apart:
 * 1,024 iterations cost exit_execve ~0.25 s of start-up on 6.18, and
 * 6.1's and 5.10's verifiers hit their 1M-instruction limit (hence the
 * 32 slots there). The callback is verified as one body.
 *
 * What changes from one argument to the next lives in map memory
 * (argv_state), not in the callback's context on the stack: the verifier
 * knows nothing of a map's contents, so every bound the callback needs is
 * checked at run time, whatever the verifier makes of the loop. (6.1's,
 * before "verify callbacks as if they are called unknown number of
 * times", checks the body once from the context's values at the call;
 * bounds proven from those alone would not hold for later iterations.)
 */
struct argv_state {
	__u32 used;  /* bytes stored */
	__u32 argc;  /* arguments stored whole */
	__u32 whole; /* the array's NULL was reached */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct argv_state);
} argv_state SEC(".maps");

/* Unchanged across iterations: may live on the caller's stack. */
struct argv_loop_ctx {
	char *buf;
	struct argv_state *st;
	const char *const *argv;
	__u64 base; /* at most EV_DATA_MAX */
	__u64 cap;  /* at most EV_ARGV_CAP */
};

static long argv_step(__u32 i, void *data)
{
	struct argv_loop_ctx *c = data;
	struct argv_state *st = c->st;
	const char *arg = 0;
	__u64 used = st->used;
	int cut;
	long n;

	if (bpf_probe_read_user(&arg, sizeof(arg), &c->argv[i]))
		return 1;
	if (!arg) {
		st->whole = 1;
		return 1;
	}
	/* The last iteration only looks for the NULL after argv_ptr_slots
	 * arguments. */
	if (i >= argv_ptr_slots || used >= c->cap)
		return 1;
	n = argv_put(c->buf, c->base, c->cap, used, arg, &cut);
	if (n <= 0)
		return 1;
	st->used = used + n;
	st->argc = i + 1;
	return cut;
}

static __always_inline void read_argv_ptrs_loop(char *buf, __u32 base, __u32 cap,
						const char *const *argv, struct argv_read *r)
{
	__u32 zero = 0;
	struct argv_state *st = bpf_map_lookup_elem(&argv_state, &zero);
	struct argv_loop_ctx c;

	r->used = 0;
	r->argc = 0;
	r->whole = 0;
	if (!st || base > EV_DATA_MAX || !argv)
		return;
	if (cap > EV_ARGV_CAP)
		cap = EV_ARGV_CAP;
	st->used = 0;
	st->argc = 0;
	st->whole = 0;
	c.buf = buf;
	c.st = st;
	c.argv = argv;
	c.base = base;
	c.cap = cap;
	bpf_loop(argv_ptr_slots + 1, argv_step, &c, 0);
	r->used = st->used;
	r->argc = st->argc;
	r->whole = st->whole;
}
#endif

/* Append a user argv read argument by argument as string STR_EXEC_ARGV;
 * argc and argv_bytes are set only when the whole array was read. `loop`
 * (a constant): under bpf_loop, read_argv_ptrs_loop. */
static __always_inline void push_argv_ptrs(struct event *e, const char *const *argv,
					   const int loop)
{
	struct argv_read r;
	__u32 off = e->h.data_len;

	if (off > EV_DATA_MAX) {
		mark_truncated(e);
		return;
	}
#ifndef TRACEED_FALLBACK
	if (loop)
		read_argv_ptrs_loop(e->data, off, argv_cap(), argv, &r);
	else
#endif
		read_argv_ptrs(e->data, off, argv_cap(), argv, &r);
	if (r.whole)
		set_argv_size(e, r.argc, r.used);
	else
		mark_truncated(e);
	if (r.used == 0)
		return;
	e->h.str_len[STR_EXEC_ARGV] = r.used;
	e->h.data_len = off + r.used;
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += 1;
}

/* Hand the record to user space; nonzero when it was lost (and counted). */
static __always_inline long event_send(void *ctx, struct event *e)
{
	__u64 size = sizeof(e->h) + e->h.data_len;
	long err;

	/* Keep the clamps on size itself: clang otherwise tests data_len
	 * and adds the header afterwards, and verifiers before 6.11 do not
	 * carry a bound across that add ("R5 unbounded memory access"). */
	asm volatile("" : "+r"(size));
	if (size > sizeof(*e))
		size = sizeof(*e);
#ifdef TRACEED_PERF
	/* A perf sample carries at most 64 KiB (its header's size is a u16);
	 * the loader keeps max_argv_bytes below that for perf objects. */
	if (size > 65000)
		size = 65000;
#endif
#ifdef TRACEED_PERF
	err = bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, e, size);
#else
	__u64 flags = 0;
	if (wakeup_bytes) {
		/* Wake the reader when this record takes what is pending past
		 * the mark, not for every record above it: a reader that lags
		 * that far behind is awake and draining (it sleeps only once
		 * the ring is empty), and each wake-up is an interrupt, a
		 * self-IPI (on a VM an exit) inside the traced syscall: most
		 * of an open's BPF time in a loop of relative opens, whose
		 * reader stayed behind the mark (bench/bpf_profile.sh). */
		__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

		flags = avail < wakeup_bytes && avail + size >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									     : BPF_RB_NO_WAKEUP;
	}
	err = bpf_ringbuf_output(&events, e, size, flags);
#endif
	if (err)
		count_lost();
	return err;
}

/* event_send for a program's last word: tracing programs must return 0. */
static __always_inline int event_emit(void *ctx, struct event *e)
{
	event_send(ctx, e);
	return 0;
}

#endif
