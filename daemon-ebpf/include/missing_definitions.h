/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Macros and constants the kernel headers define but BTF (and so vmlinux.h)
 * cannot carry: BTF describes types, not #defines. */
#ifndef TRACEED_MISSING_DEFINITIONS_H
#define TRACEED_MISSING_DEFINITIONS_H

#ifndef EINVAL
#define EINVAL 22
#endif
#ifndef ENOSPC
#define ENOSPC 28
#endif

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10

#define CLONE_THREAD 0x00010000

/* x86's value (other architectures differ; the objects are x86-only). */
#ifndef O_DIRECTORY
#define O_DIRECTORY 00200000
#endif

#endif
