# Sourced first by the qemu guests' /init (matrix-init.sh,
# fentry-bench-init.sh), as /lib/guest.sh in their initramfs: the busybox
# system they start from, their report channel and how they end.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
export NO_COLOR=1

# Results go to the second serial port, which the host reads; the kernel
# console (ttyS0) only carries logs.
exec 3>/dev/ttyS1
say() { echo "$*" >&3; echo "$*"; }

# kparam PREFIX NAME: the value of PREFIX.NAME= on the kernel command line.
kparam() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1\.$2=//p"; }

# qemu runs with -no-reboot: a reset ends it. (poweroff -f would only halt
# a kernel built without ACPI, leaving qemu to the host's timeout.) PID 1
# must not exit while the reset happens, or the kernel panics first: it
# blocks until the reset takes the machine away (the host's timeout bounds
# a reset that never comes).
guest_end() {
	sync
	reboot -f
	echo b >/proc/sysrq-trigger
	exec tail -f /dev/null
}
