/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The fallback object (rung 4): built with -DTRACEED_FALLBACK, so task.h
 * reads nothing from kernel structs and the object carries no CO-RE
 * relocation. It loads on kernels with no BTF at all.
 */
#include "fallback_process.bpf.c"
#include "exec_fail.bpf.c"
#include "file.bpf.c"
#include "net.bpf.c"
#include "security.bpf.c"
#include "generic.bpf.c"
