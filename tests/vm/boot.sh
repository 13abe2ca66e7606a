#!/bin/bash
# Boot test under a real systemd: installs the built traceed .deb into a
# minimal Debian 12 root filesystem, boots it in qemu (TCG), and lets the
# oneshot traceed-boot-test.service (tests/vm/boot-guest.sh) check from
# inside: unit active and READY, STATUS=, least privilege, an exec visible to
# a member of group traceed via tracectl, the startup line with the rung in
# the journal, `systemctl reload`, a config error shown by `systemctl status`
# (exit 78, no restart loop), a watchdog restart after SIGSTOP, a clean stop.
#
# Usage (root): tests/vm/boot.sh [PATH.deb]   (default: target/debian/traceed_*.deb,
#               built by `make deb`)
# Env: BOOT_TIMEOUT (seconds for the whole guest run, default 900),
#      BOOT_KEEP=1 keeps the work dir, BOOT_MEM (MiB, default 1536).
# The base root filesystem (no traceed in it) is cached in tests/vm/cache/.
# Exit 0 only when every check passed; a guest that hangs past the timeout,
# crashes or never reports is a FAIL.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/tests/vm
CACHE=$HERE/cache
TIMEOUT=${BOOT_TIMEOUT:-900}
MEM=${BOOT_MEM:-1536}
SUITE=bookworm
# Everything the guest needs besides the .deb's own dependencies (apt
# resolves those at install time from the same mirror).
PACKAGES=systemd-sysv,udev,dbus,linux-image-cloud-amd64,logrotate,adduser,passwd,procps,init-system-helpers,libcap2-bin

t_start=$(date +%s)
step() { echo "boot.sh: [$(($(date +%s) - t_start))s] $*"; }
die() {
	echo "boot.sh: FAIL: $*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap, chroot and mkfs need it)"
for tool in mmdebstrap qemu-system-x86_64 mkfs.ext4; do
	command -v "$tool" >/dev/null || die "$tool is missing: apt-get install mmdebstrap qemu-system-x86 e2fsprogs"
done

DEB=${1:-}
if [ -z "$DEB" ]; then
	DEB=$(ls -t target/debian/traceed_*.deb 2>/dev/null | head -1 || true)
fi
[ -n "$DEB" ] && [ -f "$DEB" ] || die "no .deb: run 'make deb' first (or pass its path)"
DEB=$(realpath "$DEB")
step "package: $DEB"

# 1. The base root filesystem, cached by suite + package list.
mkdir -p "$CACHE"
key=$(echo "$SUITE $PACKAGES" | sha256sum | cut -c1-12)
BASE=$CACHE/rootfs-$SUITE-$key.tar
if [ ! -s "$BASE" ]; then
	step "building the base root filesystem with mmdebstrap (cached as $BASE)"
	mmdebstrap --variant=apt --format=tar --include="$PACKAGES" "$SUITE" "$BASE.tmp" >"$CACHE/mmdebstrap.log" 2>&1 \
		|| { tail -20 "$CACHE/mmdebstrap.log"; die "mmdebstrap failed"; }
	mv "$BASE.tmp" "$BASE"
else
	step "base root filesystem from cache: $BASE"
fi

WORK=$(mktemp -d /tmp/traceed-boot.XXXXXX)
QEMU_PID=
cleanup() {
	if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
		kill "$QEMU_PID" 2>/dev/null || true
	fi
	if [ "${BOOT_KEEP:-0}" = 1 ]; then
		echo "boot.sh: work dir kept: $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
R=$WORK/root
mkdir -p "$R"
tar -C "$R" -xf "$BASE"

# 2. Install the .deb exactly as the README says (apt install ./traceed.deb),
#    in a chroot with its own /proc, /dev and /sys (unshare: nothing leaks).
step "installing the .deb into the guest root"
cp "$DEB" "$R/root/traceed.deb"
install -m 0755 "$HERE/boot-guest.sh" "$R/usr/local/sbin/traceed-boot-test"
cp /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true
unshare --mount --fork --pid --kill-child sh -euc '
	R=$1
	mount -t proc proc "$R/proc"
	mount --rbind /dev "$R/dev"
	mount -t sysfs sysfs "$R/sys"
	chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /root/traceed.deb
	chroot "$R" useradd --create-home alice
	chroot "$R" adduser alice traceed
	chroot "$R" useradd --create-home bob
' sh "$R" >"$WORK/install.log" 2>&1 || { tail -30 "$WORK/install.log"; die "installing the .deb failed"; }
grep -E "^(Setting up|Unpacking) traceed" "$WORK/install.log" | sed 's/^/boot.sh:   /'
[ -L "$R/etc/systemd/system/multi-user.target.wants/traceed.service" ] \
	|| die "postinst did not enable traceed.service (deb-systemd-helper)"
grep -q '^traceed:' "$R/etc/group" || die "postinst did not create group traceed"

# 3. Guest configuration: the boot-test unit, a short watchdog for the
#    SIGSTOP check, serial console, root on /dev/vda, no network.
# The JSON-lines export on, as a user enabling it would (uncomment the two
# shipped lines), so the reload check proves logrotate + reload reopen it.
sed -i -e 's|^# \[export\]$|[export]|' -e 's|^# jsonl = |jsonl = |' "$R/etc/traceed/traceed.toml"
grep -q '^jsonl = "/var/log/traceed/events.jsonl"' "$R/etc/traceed/traceed.toml" \
	|| die "the shipped config no longer has the commented [export] jsonl lines"
mkdir -p "$R/etc/systemd/system/traceed.service.d"
cat >"$R/etc/systemd/system/traceed.service.d/boot-test.conf" <<'EOF'
# Boot test only: a short watchdog so the SIGSTOP check takes seconds.
[Service]
WatchdogSec=10s
TimeoutAbortSec=10s
EOF
cat >"$R/etc/systemd/system/traceed-boot-test.service" <<'EOF'
[Unit]
Description=traceed boot test (tests/vm/boot-guest.sh)
After=traceed.service systemd-user-sessions.service
Wants=traceed.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/traceed-boot-test
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=0

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/traceed-boot-test.service "$R/etc/systemd/system/multi-user.target.wants/traceed-boot-test.service"
# The test owns ttyS0; no login prompt on it.
ln -sf /dev/null "$R/etc/systemd/system/serial-getty@ttyS0.service"
echo "/dev/vda / ext4 rw,relatime 0 1" >"$R/etc/fstab"
echo traceed-boot >"$R/etc/hostname"
# The guest has no network: do not wait for it.
ln -sf /dev/null "$R/etc/systemd/system/systemd-networkd-wait-online.service"

KERNEL=$(ls "$R"/boot/vmlinuz-* | sort -V | tail -1)
INITRD=$(ls "$R"/boot/initrd.img-* | sort -V | tail -1)
cp "$KERNEL" "$WORK/vmlinuz"
cp "$INITRD" "$WORK/initrd.img"
step "kernel $(basename "$KERNEL"), making the disk image"
mkfs.ext4 -q -F -L root -d "$R" "$WORK/disk.img" 3G
rm -rf "$R"

# 4. Boot. The guest powers off after its last check; the timeout covers a
#    hang anywhere (boot, traceed start, the checks).
# no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer
# check can time out and panic ("IO-APIC + timer doesn't work!", seen here).
step "booting (qemu -accel tcg, timeout ${TIMEOUT}s)"
SERIAL=$WORK/serial.log
: >"$SERIAL"
qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m "$MEM" \
	-nographic -no-reboot -nic none \
	-kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" \
	-append "root=/dev/vda rw console=ttyS0 panic=-1 no_timer_check systemd.show_status=0 quiet" \
	-drive "file=$WORK/disk.img,format=raw,if=virtio" \
	-serial "file:$SERIAL" -monitor none -display none \
	>"$WORK/qemu.log" 2>&1 &
QEMU_PID=$!
t_boot=$(date +%s)
deadline=$((t_boot + TIMEOUT))
shown=0
while kill -0 "$QEMU_PID" 2>/dev/null; do
	# Stream the test's lines as they come.
	n=$(grep -c '^BOOTTEST' "$SERIAL" 2>/dev/null || true)
	if [ "$n" -gt "$shown" ]; then
		grep '^BOOTTEST' "$SERIAL" | tr -d '\r' | sed -n "$((shown + 1)),${n}p" | sed 's/^/  /'
		shown=$n
	fi
	if grep -q '^BOOTTEST DONE' "$SERIAL"; then
		# Give poweroff a few seconds, then stop waiting for it.
		for _ in $(seq 30); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 1; done
		break
	fi
	if [ "$(date +%s)" -ge "$deadline" ]; then
		echo "boot.sh: guest still running after ${TIMEOUT}s: last console lines:"
		tr -d '\r' <"$SERIAL" | tail -40 | sed 's/^/  | /'
		die "guest hung (timeout ${TIMEOUT}s)"
	fi
	sleep 2
done
n=$(grep -c '^BOOTTEST' "$SERIAL" || true)
if [ "$n" -gt "$shown" ]; then
	grep '^BOOTTEST' "$SERIAL" | tr -d '\r' | sed -n "$((shown + 1)),${n}p" | sed 's/^/  /'
fi
t_end=$(date +%s)
done_line=$(grep '^BOOTTEST DONE' "$SERIAL" | tr -d '\r' || true)
if [ -z "$done_line" ]; then
	echo "boot.sh: the guest stopped without reporting; last console lines:"
	tr -d '\r' <"$SERIAL" | tail -60 | sed 's/^/  | /'
	die "no BOOTTEST DONE line"
fi
npass=$(grep -c '^BOOTTEST PASS' "$SERIAL" || true)
nfail=$(grep -c '^BOOTTEST FAIL' "$SERIAL" || true)
step "guest ran $((t_end - t_boot))s; $npass passed, $nfail failed"
echo "$npass passed, $nfail failed"
[ "$nfail" = 0 ] && [ "$npass" -gt 0 ] || exit 1
