/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The CO-RE object (-DCORE) and the kernel-specific object (no -DCORE, a
 * kernel's own headers; see include/kread.h): one translation unit so all hook families share one set
 * of maps (one ring buffer keeps per-task ordering across families, which
 * the user-space process table relies on). Each family lives in its own
 * .bpf.c file.
 */
#include "process.bpf.c"
#include "exec_fail.bpf.c"
#include "file.bpf.c"
#include "net.bpf.c"
#include "security.bpf.c"
#include "generic.bpf.c"
