/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The one place that decides how kernel memory is read, so the same sources
 * build three objects:
 *
 *   -DCORE              vmlinux.h + BPF_CORE_READ: offsets relocated at load
 *                       against the target's BTF (rungs 1-2).
 *   (neither)           the kernel-specific object (rung 3): this kernel's
 *                       own headers, READ_KERN = bpf_probe_read_kernel of
 *                       plain member accesses, so offsets are the headers'
 *                       and exact for that one release; layout changes are
 *                       `#if LINUX_VERSION_CODE` branches. Built by
 *                       `traceed build-object` (daemon/src/kobject.rs).
 *   -DTRACEED_FALLBACK  vmlinux.h for the BPF constants only; no struct
 *                       is ever read (rung 4).
 *
 * READ_KERN(src, a, b, ...) reads src->a->b... like BPF_CORE_READ: every
 * pointer step is one probe read, and `a` may be a member path
 * (`numbers[level].nr`).
 */
#ifndef TRACEED_KREAD_H
#define TRACEED_KREAD_H

#if defined(CORE) || defined(TRACEED_FALLBACK)

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define READ_KERN(src, a, ...) BPF_CORE_READ(src, a, ##__VA_ARGS__)

/*
 * From 5.11 the current task is also a typed (BTF) pointer: its members,
 * and the members of what they point to, are plain loads that the JIT
 * guards against faults, where READ_KERN is one bpf_probe_read_kernel call
 * per step, and bpf_get_current_{uid_gid,comm,cgroup_id} a call each for
 * what are loads too (~25-40 ns per call on the development VM). The
 * verifier lets such a pointer be compared and stored (traceed loads as
 * root), not hashed: what must be mixed is still probe-read.
 *
 * Only with the kernel's own BTF (kernel_btf, set by the loader on the
 * core-kernel-btf rung): an external BTF file relocates the reads, but the
 * verifier has nothing to type the pointers with. 5.10, the other rungs
 * and the fallback keep the helpers and READ_KERN.
 */
#ifdef CORE
const volatile __u32 kernel_btf = 0;
#define TASK_BTF \
	(kernel_btf && bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf))
#else
#define TASK_BTF 0
#endif

#else /* kernel-specific object */

#define TRACEED_KERNEL 1

#include <linux/version.h>
#include <generated/utsrelease.h>
#include <linux/types.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/nsproxy.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/mm_types.h>
#include <linux/fs.h>
#include <linux/mount.h> /* struct vfsmount: not pulled in by fs.h on 5.10 */
#include <linux/binfmts.h>
#include <uapi/linux/bpf.h>
#include <bpf/bpf_helpers.h>
/* Only for libbpf's member-chain macros (___core_read, ___type): with
 * bpf_probe_read_kernel as the read function they emit no relocation. */
#include <bpf/bpf_core_read.h>

/* bpf_probe_read_{kernel,user}{,_str} arrived in 5.5; before that the
 * one helper reads both address spaces. */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 5, 0)
#define bpf_probe_read_kernel bpf_probe_read
#define bpf_probe_read_kernel_str bpf_probe_read_str
#define bpf_probe_read_user bpf_probe_read
#define bpf_probe_read_user_str bpf_probe_read_str
#endif

/* BPF ring buffers arrived in 5.8: older kernels get the perf object. */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 8, 0) && !defined(TRACEED_PERF)
#define TRACEED_PERF 1
#endif

/* Typed pointers need BTF, which this object does without (TASK_BTF above). */
#define TASK_BTF 0

#define READ_KERN(src, a, ...)                                                   \
	({                                                                       \
		___type((src), a, ##__VA_ARGS__) __r;                            \
		__builtin_memset(&__r, 0, sizeof(__r));                          \
		___core_read(bpf_probe_read_kernel, bpf_probe_read_kernel, &__r, \
			     (src), a, ##__VA_ARGS__);                           \
		__r;                                                             \
	})

/*
 * struct mnt_namespace is private to fs/mount.h (not installed with the
 * headers); include/linux/nsproxy.h only declares it. We read one thing
 * from it, ns.inum, so only the members up to `ns` are spelled out:
 *   3.19 - 5.10: atomic_t count; struct ns_common ns; ...
 *   5.11 +     : struct ns_common ns; ...   (the count moved into
 *                ns_common, "nsfs: add a common refcount", 5.11)
 * struct ns_common itself is public (include/linux/ns_common.h), so its
 * layout is this kernel's. Checked against 6.1 (Debian bookworm) by the
 * start-up self-check, which compares mnt_ns with /proc/self/ns/mnt.
 */
struct mnt_namespace {
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 11, 0)
	atomic_t count;
#endif
	struct ns_common ns;
};

/* The release this object was built for; the loader refuses to load it
 * on any other (daemon/src/kobject.rs reads this section). */
char traceed_release[] SEC(".traceed.release") = UTS_RELEASE;
/* And which events map it carries, so the loader reads it the right way. */
#ifdef TRACEED_PERF
char traceed_transport[] SEC(".traceed.transport") = "perf";
#else
char traceed_transport[] SEC(".traceed.transport") = "ringbuf";
#endif

#endif

#endif
