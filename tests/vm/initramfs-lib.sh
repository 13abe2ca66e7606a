# Sourced by the qemu runners (matrix.sh, fentry-bench.sh): the part of a
# guest initramfs they share.

# initramfs_base ROOT INIT BUSYBOX BIN_DIR: a busybox root at ROOT with INIT
# as /init, guest-lib.sh as /lib/guest.sh, and traceed and tracectl from
# BIN_DIR with the shared libraries and loader they link, at their own paths.
initramfs_base() {
	local root=$1 init=$2 busybox=$3 bin_dir=$4 b lib
	local here
	here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
	mkdir -p "$root"/{bin,lib,proc,sys,dev,tmp,run}
	cp "$busybox" "$root/bin/busybox"
	cp "$init" "$root/init"
	chmod 755 "$root/init"
	cp "$here/guest-lib.sh" "$root/lib/guest.sh"
	for b in traceed tracectl; do
		# Debug info is most of the binary and only slows the boot.
		strip --strip-debug -o "$root/bin/$b" "$bin_dir/$b"
		for lib in $(ldd "$bin_dir/$b" | grep -oE '/[^ ]+'); do
			mkdir -p "$root$(dirname "$lib")"
			cp -L "$lib" "$root$lib"
		done
	done
}
