/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Syscall events are recorded at sys_exit, when the return value is known
 * and the kernel has already touched (faulted in) the user memory the
 * arguments point to. The arguments come from the user's registers, which
 * the kernel saved at entry and leaves in place until the return to user
 * space (SYS_EXIT_REGS). Only where that frame cannot be read (the
 * fallback object) or where the record needs the state before the
 * syscall (the setuid family's credentials) does a sys_enter program
 * stash them per thread.
 *
 * The syscalls:* tracepoint records have a fixed ABI (nr at 8, arguments
 * as 8-byte slots from 16, ret at 16 on exit), so plain structs are used
 * instead of vmlinux.h's CO-RE-relocated ones.
 */
#ifndef TRACEED_SYSCALLS_H
#define TRACEED_SYSCALLS_H

#include "task.h"

struct sys_enter_ctx {
	__u64 common;
	long nr;
	unsigned long args[6];
};

struct sys_exit_ctx {
	__u64 common;
	long nr;
	long ret;
};

/* enum variant (which syscall of a kind) is part of the record contract:
 * events.h. */

struct inflight {
	__u64 args[6];
	__u64 uid_gid; /* at entry: a setuid event is the caller's, not its result's */
	__u32 kind;
	__u32 variant;
};

/* LRU: a thread that never returns (killed mid-syscall) must not pin its
 * slot forever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct inflight);
} inflight SEC(".maps");

#ifdef TRACEED_FALLBACK
/* Offsets of the argument slots and of `ret`, read by traceed from the
 * tracefs format files of the running kernel (the fallback trusts no
 * compiled-in layout). */
const volatile __u32 fb_sys_args_off = 16;
const volatile __u32 fb_sys_ret_off = 16;

static __always_inline unsigned long sys_arg(struct sys_enter_ctx *ctx, int i)
{
	unsigned long v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)ctx + fb_sys_args_off + 8 * i);
	return v;
}

static __always_inline long sys_ret(struct sys_exit_ctx *ctx)
{
	long v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)ctx + fb_sys_ret_off);
	return v;
}
#else
#define sys_arg(ctx, i) ((ctx)->args[i])
#define sys_ret(ctx) ((ctx)->ret)
#endif

/* Only the syscall's own `nargs` slots may be read: the kernel refuses to
 * attach a program whose context access goes past the tracepoint record. */
static __always_inline int save_args(struct sys_enter_ctx *ctx, __u32 kind, __u32 variant,
				     const int nargs)
{
	struct inflight in = {};
	__u64 id = bpf_get_current_pid_tgid();

	if (out_of_scope())
		return 0;
#pragma unroll
	for (int i = 0; i < 6; i++)
		if (i < nargs)
			in.args[i] = sys_arg(ctx, i);
	in.kind = kind;
	in.variant = variant;
	in.uid_gid = cur_uid_gid();
	bpf_map_update_elem(&inflight, &id, &in, BPF_ANY);
	return 0;
}

/* Pop the stashed arguments of this thread's syscall, if it was one we
 * watch (and in scope); copies them out so the map slot is freed now. */
static __always_inline int take_args(struct inflight *out)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct inflight *in = bpf_map_lookup_elem(&inflight, &id);
	if (!in)
		return -1;
	__builtin_memcpy(out, in, sizeof(*out));
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}

/* Start a syscall's record, whichever hook saw the syscall: header, task
 * enrichment (when the daemon lacks it: task.h), the credentials at entry,
 * the return value. sys_emit sends it. */
static __always_inline struct event *sys_record_start(__u32 kind, __u64 uid_gid, long ret,
						      struct known_task *sent)
{
	struct event *e = event_start_creds(kind, uid_gid);
	if (!e)
		return NULL;
	fill_task_once(e, sent);
	e->h.retval = ret;
	e->h.flags |= EF_HAS_RETVAL;
	return e;
}

/* Start an exit-side record from the arguments stashed at sys_enter. */
static __always_inline struct event *exit_start(struct sys_exit_ctx *ctx, struct inflight *in,
						struct known_task *sent)
{
	return sys_record_start(in->kind, in->uid_gid, sys_ret(ctx), sent);
}

/* A successful exec is sched_process_exec's record (exec_fail.bpf.c only
 * records failed ones): known from the return value alone, before any
 * read. `kind` is a constant, so other syscalls' programs lose the test. */
static __always_inline int skip_success(__u32 kind, long ret)
{
	return kind == EK_EXEC && ret >= 0;
}

static __always_inline int sys_emit(void *ctx, struct event *e, const struct known_task *sent)
{
	if (event_send(ctx, e) == 0)
		remember_sent(e->h.pid, sent);
	return 0;
}

/* What a one-program hook (SYS_EXIT_REGS, SYS_FEXIT) skips before it reads
 * anything: the benchmark floor, a successful exec, an out-of-scope task. */
static __always_inline int sys_skip(__u32 kind, long ret)
{
	return bench_floor || skip_success(kind, ret) || out_of_scope();
}

/* The rest of a one-program hook, once the arguments are in hand: the
 * record from this task's credentials now and the family's fill. */
#define SYS_RECORD(ctx, kind, variant, fill, args, ret)                                        \
	({                                                                                     \
		struct known_task sent;                                                        \
		struct event *e = sys_record_start(kind, cur_uid_gid(), ret, &sent);           \
		(!e || fill(e, variant, args)) ? 0 : sys_emit(ctx, e, &sent);                  \
	})

/* The x86-64 syscall ABI: arguments in di, si, dx, r10, r8, r9 of the
 * user's registers, whichever struct holds them (pt_regs, user_frame). */
#define REGS_ARGS(r, args)              \
	do {                            \
		(args)[0] = (r)->di;    \
		(args)[1] = (r)->si;    \
		(args)[2] = (r)->dx;    \
		(args)[3] = (r)->r10;   \
		(args)[4] = (r)->r8;    \
		(args)[5] = (r)->r9;    \
	} while (0)

#define SYS_ENTER(sys, kind, variant, nargs)                           \
	SEC("tracepoint/syscalls/sys_enter_" #sys)                     \
	int enter_##sys(struct sys_enter_ctx *ctx)                     \
	{                                                              \
		if (bench_floor)                                       \
			return 0;                                      \
		return save_args(ctx, kind, variant, nargs);           \
	}

/*
 * `fill(e, variant, args)` is a family's record builder, shared by every
 * hook that sees the syscall: the record is the same whichever built it.
 * It returns nonzero to drop the record (a failed-exec hook that saw a
 * successful exec). The return value is in e->h.retval when it runs.
 */
#define SYS_EXIT(sys, fill)                                            \
	SEC("tracepoint/syscalls/sys_exit_" #sys)                      \
	int exit_##sys(struct sys_exit_ctx *ctx)                       \
	{                                                              \
		struct inflight in;                                    \
		struct known_task sent;                                \
		struct event *e;                                       \
		if (bench_floor)                                       \
			return 0;                                      \
		if (take_args(&in))                                    \
			return 0;                                      \
		e = exit_start(ctx, &in, &sent);                       \
		if (!e || fill(e, in.variant, in.args))                \
			return 0;                                      \
		return sys_emit(ctx, e, &sent);                        \
	}

#ifdef CORE
/*
 * The same syscall seen by BPF trampolines instead (CO-RE object only:
 * they need the kernel's BTF, and traceed attaches them only after the
 * kernel accepted them, else the tracepoint pair above), on the syscall's
 * own function __x64_sys_<sys>, whose argument is the user's registers.
 * Unlike an enabled syscalls tracepoint, a trampoline does not put every
 * task on the syscall slow path: it costs only the functions it is on.
 *
 * SYS_FEXIT: one program sees the arguments and the return value at once,
 * so there is no enter half and no inflight round trip. Its credentials
 * are read at exit, which is what the entry saw for every syscall but the
 * setuid family.
 *
 * SYS_FENTRY_FEXIT: for the setuid family, whose record carries the
 * caller's credentials from before the change: an fentry program stashes
 * them (with the arguments) as sys_enter does, and the fexit program
 * takes them.
 *
 * The registers are read as the syscall used them: after ptrace and
 * seccomp had their say, as the sys_enter tracepoint reads them. x86-64
 * only, like the rest of the object (__TARGET_ARCH_x86); compat (ia32)
 * syscalls go through __ia32_sys_* and are not seen, as syscalls
 * tracepoints do not report them either.
 */
static __always_inline void regs_args(const struct pt_regs *regs, __u64 *args)
{
	REGS_ARGS(regs, args);
}

#define SYS_FEXIT(name, sys, kind, variant, fill)                             \
	SEC("fexit/__x64_sys_" #sys)                                          \
	int BPF_PROG(fexit_##name, const struct pt_regs *regs, long ret)      \
	{                                                                     \
		__u64 args[6];                                                \
		if (sys_skip(kind, ret))                                      \
			return 0;                                             \
		regs_args(regs, args);                                        \
		return SYS_RECORD(ctx, kind, variant, fill, args, ret);       \
	}

#define SYS_FENTRY_FEXIT(sys, ek, var, fill)                                 \
	SEC("fentry/__x64_sys_" #sys)                                         \
	int BPF_PROG(fentry_##sys, const struct pt_regs *regs)                \
	{                                                                     \
		struct inflight in = {};                                      \
		__u64 id = bpf_get_current_pid_tgid();                        \
		if (bench_floor)                                              \
			return 0;                                             \
		if (out_of_scope())                                           \
			return 0;                                             \
		regs_args(regs, in.args);                                     \
		in.kind = ek;                                                 \
		in.variant = var;                                             \
		in.uid_gid = cur_uid_gid();                                   \
		bpf_map_update_elem(&inflight, &id, &in, BPF_ANY);            \
		return 0;                                                     \
	}                                                                     \
	SEC("fexit/__x64_sys_" #sys)                                          \
	int BPF_PROG(fexit_##sys, const struct pt_regs *regs, long ret)       \
	{                                                                     \
		struct inflight in;                                           \
		struct known_task sent;                                       \
		struct event *e;                                              \
		if (bench_floor)                                              \
			return 0;                                             \
		if (take_args(&in))                                           \
			return 0;                                             \
		e = sys_record_start(in.kind, in.uid_gid, ret, &sent);        \
		if (!e || fill(e, in.variant, in.args))                       \
			return 0;                                             \
		return sys_emit(ctx, e, &sent);                               \
	}
#else
#define SYS_FEXIT(name, sys, kind, variant, fill)
#define SYS_FENTRY_FEXIT(sys, kind, variant, fill)
#endif

#ifndef TRACEED_FALLBACK
/*
 * The tracepoint path of the CO-RE and kernel-specific objects: one
 * program, at sys_exit, reads the arguments from the user's registers at
 * the top of the task's kernel stack, as sys_enter would have read them
 * (after ptrace and seccomp; the exit tracepoint runs before signal
 * delivery or a tracer's exit stop could touch them). No enter program,
 * no inflight update, lookup and delete: on a host whose kernel refuses
 * trampolines that was a third of an open's BPF time.
 *
 * The frame is checked before it is trusted: its orig_ax must be the
 * number of the syscall that is returning. A frame that fails the check
 * (a stack layout this code does not know) makes the record a counted
 * loss, never one built from the wrong memory.
 */

/* pt_regs from r10 to orig_ax: the six argument registers and the
 * syscall's number in one read. The x86-64 frame's layout is the ptrace
 * ABI's (user_regs_struct), the same on every kernel. */
struct user_frame {
	__u64 r10, r9, r8, ax, cx, dx, si, di, orig_ax;
};
#define FRAME_R10_OFF 56
#define PT_REGS_X86_64_SIZE 168

static __always_inline int read_frame(const void *regs, int nr, __u64 *args)
{
	struct user_frame f;

	if (!regs || bpf_probe_read_kernel(&f, sizeof(f), regs + FRAME_R10_OFF) ||
	    (int)f.orig_ax != nr)
		return -1;
	REGS_ARGS(&f, args);
	return 0;
}

#ifdef CORE
static __always_inline int user_args(int nr, __u64 *args)
{
	void *stack;

	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs)) {
		/* A typed pointer: the registers are plain loads (kread.h). */
		struct pt_regs *r = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());

		if (!r || (int)r->orig_ax != nr)
			return -1;
		REGS_ARGS(r, args);
		return 0;
	}
	/* Before 5.15 there is no helper, and no FRED padding either (6.9):
	 * the frame ends the stack, which is 16 KiB, or 32 KiB with KASAN. */
	stack = BPF_CORE_READ(cur_task(), stack);
	if (!stack)
		return -1;
	if (read_frame(stack + (16 << 10) - PT_REGS_X86_64_SIZE, nr, args) == 0)
		return 0;
	return read_frame(stack + (32 << 10) - PT_REGS_X86_64_SIZE, nr, args);
}
#else
/* The kernel-specific object knows this kernel's stack size and padding. */
static __always_inline int user_args(int nr, __u64 *args)
{
	void *stack = READ_KERN(cur_task(), stack);

	_Static_assert(sizeof(struct pt_regs) == PT_REGS_X86_64_SIZE, "x86-64 pt_regs");
	if (!stack)
		return -1;
	return read_frame(stack + THREAD_SIZE - TOP_OF_KERNEL_STACK_PADDING - sizeof(struct pt_regs),
			  nr, args);
}
#endif

#define SYS_EXIT_REGS(name, sys, kind, variant, fill)                        \
	SEC("tracepoint/syscalls/sys_exit_" #sys)                            \
	int exit_##name(struct sys_exit_ctx *ctx)                            \
	{                                                                    \
		__u64 args[6];                                               \
		if (sys_skip(kind, ctx->ret))                                \
			return 0;                                            \
		if (user_args((int)ctx->nr, args)) {                         \
			count_lost();                                        \
			return 0;                                            \
		}                                                            \
		return SYS_RECORD(ctx, kind, variant, fill, args, ctx->ret); \
	}

/* Every hook of a syscall: its sys_exit program, and its fexit program,
 * named exit_<name> and fexit_<name> (<name> is the syscall's, or another
 * build of the same hooks: exec_fail.bpf.c). */
#define SYSCALL_HOOKS_AS(name, sys, nargs, kind, variant, fill) \
	SYS_EXIT_REGS(name, sys, kind, variant, fill)            \
	SYS_FEXIT(name, sys, kind, variant, fill)
#define SYSCALL_HOOKS(sys, nargs, kind, variant, fill) \
	SYSCALL_HOOKS_AS(sys, sys, nargs, kind, variant, fill)
#else
/* The fallback reads no kernel memory, so it stashes at sys_enter. */
#define SYSCALL_HOOKS(sys, nargs, kind, variant, fill) \
	SYS_ENTER(sys, kind, variant, nargs)            \
	SYS_EXIT(sys, fill)
#endif

/* The same, with the credentials of the entry (the setuid family). */
#define SYSCALL_HOOKS_ENTRY_CREDS(sys, nargs, kind, variant, fill) \
	SYS_ENTER(sys, kind, variant, nargs)                        \
	SYS_EXIT(sys, fill)                                         \
	SYS_FENTRY_FEXIT(sys, kind, variant, fill)

#endif
