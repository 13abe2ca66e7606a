/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Can this kernel attach BPF trampolines (fentry/fexit) to syscall
 * functions? Built static by tests/vm/matrix.sh and run in each guest, and
 * runnable on a host as is: no libbpf, only the bpf() syscall, so the
 * answer is the kernel's own errno and verifier log.
 *
 *   fentry-probe [FUNC...]     (default: __x64_sys_openat)
 *   fentry-probe --hold fexit|tracepoint SYSCALL...
 *
 * For each FUNC and each of fentry and fexit: find FUNC in the kernel's BTF
 * (/sys/kernel/btf/vmlinux), load a program that returns at once, attach
 * it, open a file, and read the program's run count (kernel.bpf_stats) to
 * prove it ran. One line per attempt:
 *
 *   FP <fentry|fexit> <FUNC> OK runs=<n>
 *   FP <fentry|fexit> <FUNC> FAIL <step>: <errno name> (<strerror>)[ log: ...]
 *
 * Exit status: 0 when every attempt was OK, 1 otherwise.
 *
 * --hold attaches programs that return at once, fexit on __x64_sys_SYSCALL
 * or the syscalls:sys_{enter,exit}_SYSCALL tracepoint pair, prints
 * "FP HOLD ready" and keeps them until SIGTERM/SIGINT: the benchmark's
 * isolated floor of each attach method (tests/vm/fentry-bench.sh), with
 * no other hook attached.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/btf.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	size_t cap = 1 << 20, n = 0, r;
	char *buf;

	if (!f)
		return NULL;
	buf = malloc(cap);
	while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
		n += r;
		if (n == cap)
			buf = realloc(buf, cap *= 2);
	}
	fclose(f);
	*len = n;
	return buf;
}

/* Bytes that follow a struct btf_type of this kind. */
static size_t btf_extra(const struct btf_type *t)
{
	uint32_t vlen = BTF_INFO_VLEN(t->info);

	switch (BTF_INFO_KIND(t->info)) {
	case BTF_KIND_INT:
		return 4;
	case BTF_KIND_ARRAY:
		return sizeof(struct btf_array);
	case BTF_KIND_STRUCT:
	case BTF_KIND_UNION:
		return vlen * sizeof(struct btf_member);
	case BTF_KIND_ENUM:
		return vlen * sizeof(struct btf_enum);
	case BTF_KIND_FUNC_PROTO:
		return vlen * sizeof(struct btf_param);
	case BTF_KIND_VAR:
		return sizeof(struct btf_var);
	case BTF_KIND_DATASEC:
		return vlen * sizeof(struct btf_var_secinfo);
	case 17: /* BTF_KIND_DECL_TAG */
		return 4;
	case 19: /* BTF_KIND_ENUM64 */
		return vlen * 12;
	default: /* VOID PTR FWD TYPEDEF VOLATILE CONST RESTRICT FUNC FLOAT TYPE_TAG */
		return 0;
	}
}

/* The BTF id of FUNC `name`, or 0. */
static uint32_t btf_func_id(const char *btf, size_t len, const char *name)
{
	const struct btf_header *h = (const void *)btf;
	const char *types, *strs, *p, *end;
	uint32_t id = 1;

	if (len < sizeof(*h) || h->magic != BTF_MAGIC)
		return 0;
	types = btf + h->hdr_len + h->type_off;
	strs = btf + h->hdr_len + h->str_off;
	end = types + h->type_len;
	for (p = types; p + sizeof(struct btf_type) <= end; id++) {
		const struct btf_type *t = (const void *)p;

		if (BTF_INFO_KIND(t->info) == BTF_KIND_FUNC && !strcmp(strs + t->name_off, name))
			return id;
		p += sizeof(*t) + btf_extra(t);
	}
	return 0;
}

static const char *errname(int e)
{
	switch (e) {
	case EPERM: return "EPERM";
	case EINVAL: return "EINVAL";
	case ENOENT: return "ENOENT";
	case ESRCH: return "ESRCH";
	case EACCES: return "EACCES";
	case EBUSY: return "EBUSY";
	case 524: return "ENOTSUPP";
	case E2BIG: return "E2BIG";
	case EFAULT: return "EFAULT";
	default: return "errno";
	}
}

static int fail(const char *kind, const char *fn, const char *step, int e, const char *log)
{
	printf("FP %s %s FAIL %s: %s %d (%s)", kind, fn, step, errname(e), e, strerror(e));
	if (log && *log) {
		/* One line: the verifier's last words are the useful part. */
		size_t n = strlen(log);
		const char *tail = n > 300 ? log + n - 300 : log;
		printf(" log: ");
		for (; *tail; tail++)
			putchar(*tail == '\n' ? '|' : *tail);
	}
	putchar('\n');
	return 1;
}

static int try_one(const char *btf, size_t len, const char *fn, int fexit)
{
	const char *kind = fexit ? "fexit" : "fentry";
	/* r0 = 0; exit */
	struct bpf_insn prog[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	static char log[65536];
	union bpf_attr a;
	struct bpf_prog_info info;
	uint32_t id = btf_func_id(btf, len, fn);
	int pfd, lfd, f;

	if (!id)
		return fail(kind, fn, "btf lookup", ENOENT, "no FUNC of that name in /sys/kernel/btf/vmlinux");

	memset(&a, 0, sizeof(a));
	a.prog_type = BPF_PROG_TYPE_TRACING;
	a.expected_attach_type = fexit ? BPF_TRACE_FEXIT : BPF_TRACE_FENTRY;
	a.attach_btf_id = id;
	a.insns = (uintptr_t)prog;
	a.insn_cnt = sizeof(prog) / sizeof(prog[0]);
	a.license = (uintptr_t) "GPL";
	a.log_buf = (uintptr_t)log;
	a.log_size = sizeof(log);
	a.log_level = 1;
	log[0] = 0;
	pfd = sys_bpf(BPF_PROG_LOAD, &a);
	if (pfd < 0)
		return fail(kind, fn, "BPF_PROG_LOAD", errno, log);

	/* The attach call every trampoline kernel has (5.5+). */
	memset(&a, 0, sizeof(a));
	a.raw_tracepoint.prog_fd = pfd;
	lfd = sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &a);
	if (lfd < 0) {
		int e = errno;
		close(pfd);
		return fail(kind, fn, "attach (BPF_RAW_TRACEPOINT_OPEN)", e, NULL);
	}

	/* Fire it: an openat reaches every open-family function's caller. */
	f = open("/proc/self/stat", O_RDONLY);
	if (f >= 0)
		close(f);
	f = openat(AT_FDCWD, "/proc/self/status", O_RDONLY);
	if (f >= 0)
		close(f);

	memset(&info, 0, sizeof(info));
	memset(&a, 0, sizeof(a));
	a.info.bpf_fd = pfd;
	a.info.info_len = sizeof(info);
	a.info.info = (uintptr_t)&info;
	if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a) < 0)
		info.run_cnt = (uint64_t)-1;
	close(lfd);
	close(pfd);
	printf("FP %s %s OK runs=%lld\n", kind, fn, (long long)info.run_cnt);
	return 0;
}

static int load_empty(int type, int attach_type, uint32_t btf_id)
{
	struct bpf_insn prog[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	union bpf_attr a;

	memset(&a, 0, sizeof(a));
	a.prog_type = type;
	a.expected_attach_type = attach_type;
	a.attach_btf_id = btf_id;
	a.insns = (uintptr_t)prog;
	a.insn_cnt = 2;
	a.license = (uintptr_t) "GPL";
	return sys_bpf(BPF_PROG_LOAD, &a);
}

static int attach_tracepoint(const char *event, int pfd)
{
	char path[256], buf[32] = "";
	struct perf_event_attr pa;
	int fd, n;

	snprintf(path, sizeof(path), "/sys/kernel/tracing/events/syscalls/%s/id", event);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	memset(&pa, 0, sizeof(pa));
	pa.type = PERF_TYPE_TRACEPOINT;
	pa.size = sizeof(pa);
	pa.config = strtoull(buf, NULL, 10);
	pa.sample_period = 1;
	pa.wakeup_events = 1;
	/* One event runs the program on every CPU: the program hangs off the
	 * tracepoint, not the perf event. */
	fd = syscall(__NR_perf_event_open, &pa, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
	if (fd < 0)
		return -1;
	if (ioctl(fd, PERF_EVENT_IOC_SET_BPF, pfd) < 0 || ioctl(fd, PERF_EVENT_IOC_ENABLE, 0) < 0)
		return -1;
	return fd;
}

static void on_signal(int sig)
{
	(void)sig;
}

static int hold(const char *btf, size_t len, const char *method, int n, char **sys)
{
	char name[128];

	for (int i = 0; i < n; i++) {
		if (!strcmp(method, "fexit")) {
			int pfd;
			snprintf(name, sizeof(name), "__x64_sys_%s", sys[i]);
			pfd = load_empty(BPF_PROG_TYPE_TRACING, BPF_TRACE_FEXIT,
					 btf_func_id(btf, len, name));
			union bpf_attr a;
			memset(&a, 0, sizeof(a));
			a.raw_tracepoint.prog_fd = pfd;
			if (pfd < 0 || sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &a) < 0)
				return fail("fexit", name, "hold", errno, NULL);
		} else {
			int pfd = load_empty(BPF_PROG_TYPE_TRACEPOINT, 0, 0);
			snprintf(name, sizeof(name), "sys_exit_%s", sys[i]);
			if (pfd < 0 || attach_tracepoint(name, pfd) < 0)
				return fail("tracepoint", name, "hold", errno, NULL);
			snprintf(name, sizeof(name), "sys_enter_%s", sys[i]);
			if (attach_tracepoint(name, pfd) < 0)
				return fail("tracepoint", name, "hold", errno, NULL);
		}
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	printf("FP HOLD ready\n");
	pause();
	return 0;
}

int main(int argc, char **argv)
{
	size_t len = 0;
	char *btf = slurp("/sys/kernel/btf/vmlinux", &len);
	int bad = 0, fd;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 3 && !strcmp(argv[1], "--hold"))
		return hold(btf, len, argv[2], argc - 3, argv + 3);
	if (!btf) {
		printf("FP - - FAIL btf: %s (%s)\n", errname(errno), strerror(errno));
		return 1;
	}
	/* run_cnt counts only while stats are on; best effort, and the
	 * previous setting is put back (a host may have it on for others). */
	char was = '0';
	fd = open("/proc/sys/kernel/bpf_stats_enabled", O_RDONLY);
	if (fd >= 0) {
		if (read(fd, &was, 1) != 1)
			was = '0';
		close(fd);
	}
	fd = open("/proc/sys/kernel/bpf_stats_enabled", O_WRONLY);
	if (fd >= 0) {
		if (write(fd, "1", 1) != 1)
			perror("bpf_stats_enabled");
		close(fd);
	}
	if (argc < 2) {
		static char *def[] = { NULL, "__x64_sys_openat", NULL };
		argv = def;
		argc = 2;
	}
	for (int i = 1; i < argc; i++) {
		bad |= try_one(btf, len, argv[i], 0);
		bad |= try_one(btf, len, argv[i], 1);
	}
	fd = open("/proc/sys/kernel/bpf_stats_enabled", O_WRONLY);
	if (fd >= 0) {
		if (write(fd, &was, 1) != 1)
			perror("bpf_stats_enabled");
		close(fd);
	}
	return bad;
}
