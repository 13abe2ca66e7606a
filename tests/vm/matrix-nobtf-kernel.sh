#!/usr/bin/env bash
# Builds a Linux 6.1 kernel WITHOUT BTF (no CONFIG_DEBUG_INFO_BTF, no debug
# info at all) from Debian's linux-source-6.1, so the fallback rung is proven
# on a kernel that truly cannot describe itself, not only on one whose
# /sys/kernel/btf is hidden. A manual target, not part of CI: the build does
# not fit CI's budget on a 2-core box (time measured and printed below).
#
#   tests/vm/matrix-nobtf-kernel.sh            # build (cached: once)
#   tests/vm/matrix.sh --kernels local:6.1-nobtf
#
# Config: tinyconfig plus what a busybox initramfs, traceed's hooks
# (tracepoints, syscall tracepoints, BPF syscall, ring buffer, cgroup2) and
# qemu's serial ports need. Needs: flex bison libelf-dev bc gcc make
# (apt-get install), ~2 GB in tests/vm/cache/matrix/nobtf.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${MATRIX_CACHE:-$HERE/cache/matrix}
WORK=$CACHE/nobtf
OUT=$CACHE/kernels/local_6.1-nobtf
JOBS=${JOBS:-$(nproc)}

log() { echo "matrix-nobtf: $*" >&2; }

if [ -s "$OUT/vmlinuz" ] && [ "${1:-}" != --force ]; then
	log "already built: $OUT ($(cat "$OUT/release")); --force rebuilds"
	exit 0
fi
for t in flex bison bc gcc make; do
	command -v "$t" >/dev/null || { log "$t missing: apt-get install flex bison libelf-dev bc gcc make"; exit 1; }
done
[ -e /usr/include/libelf.h ] || { log "libelf.h missing: apt-get install libelf-dev"; exit 1; }

mkdir -p "$WORK"
cd "$WORK"
if ! ls linux-source-6.1_*.deb >/dev/null 2>&1; then
	log "apt-get download linux-source-6.1"
	apt-get -o APT::Sandbox::User=root download -q linux-source-6.1
fi
deb=$(ls linux-source-6.1_*.deb | sort -V | tail -n 1)
ver=$(dpkg-deb -f "$deb" Version)
src=$WORK/linux-source-6.1
if [ ! -f "$src/Makefile" ]; then
	log "unpacking $deb"
	rm -rf x "$src"
	dpkg-deb -x "$deb" x
	tar -xaf x/usr/src/linux-source-6.1.tar.xz
	rm -rf x
fi

cd "$src"
t0=$(date +%s)
make -s tinyconfig
opts=(
	64BIT PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE BLK_DEV_INITRD BINFMT_ELF BINFMT_SCRIPT
	PROC_FS SYSFS DEVTMPFS TMPFS SHMEM FUTEX EPOLL EVENTFD SIGNALFD TIMERFD FILE_LOCKING
	MULTIUSER POSIX_TIMERS AIO ADVISE_SYSCALLS MEMBARRIER FHANDLE RTC_CLASS RTC_DRV_CMOS RTC_HCTOSYS
	NET INET UNIX
	NAMESPACES PID_NS UTS_NS IPC_NS NET_NS CGROUPS CGROUP_BPF
	BPF BPF_SYSCALL BPF_JIT PERF_EVENTS KPROBES KPROBE_EVENTS FTRACE FTRACE_SYSCALLS BPF_EVENTS
	KALLSYMS KALLSYMS_ALL DEBUG_INFO_NONE
)
args=()
for o in "${opts[@]}"; do args+=(-e "$o"); done
scripts/config "${args[@]}" -d DEBUG_INFO_BTF -d MODULES --set-str LOCALVERSION -nobtf
make -s olddefconfig
missing=
for o in "${opts[@]}"; do grep -q "^CONFIG_$o=y" .config || missing+=" $o"; done
[ -z "$missing" ] || log "warning: not set after olddefconfig:$missing"
if grep -q '^CONFIG_DEBUG_INFO_BTF=y' .config; then
	log "CONFIG_DEBUG_INFO_BTF is still set: refusing to build a kernel with BTF"
	exit 1
fi
log "building bzImage with -j$JOBS (linux-source-6.1 $ver)"
make -s -j"$JOBS" bzImage
t1=$(date +%s)

mkdir -p "$OUT"
cp arch/x86/boot/bzImage "$OUT/vmlinuz"
cp .config "$OUT/config"
make -s kernelrelease >"$OUT/release"
echo local >"$OUT/suite"
echo "$ver (tinyconfig, no BTF)" >"$OUT/version"
echo "$((t1 - t0))" >"$OUT/build_seconds"
log "built $(cat "$OUT/release") in $((t1 - t0)) s: $OUT"
