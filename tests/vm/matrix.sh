#!/usr/bin/env bash
# Kernel matrix: "compile once, run everywhere", run for real.
#
# For each kernel in the list: fetch the Debian package (apt-get download,
# other suites through a private sources list that never touches the
# system's apt state), unpack its vmlinuz with dpkg-deb, boot it in qemu
# (TCG; KVM is not usable here) with a busybox initramfs holding this tree's
# target/release/{traceed,tracectl} plus their shared libraries and
# tests/vm/matrix-probe, and let tests/vm/matrix-init.sh run traceed in each
# rung of the portability ladder against ground truth. Prints a PASS/FAIL
# table per kernel x rung, writes it to tests/vm/matrix-results.md, and with
# --update-readme splices it into README.md's "Supported kernels" section.
#
#   tests/vm/matrix.sh                     # the CI set: Debian 12's 6.1 amd64, cloud-amd64, rt-amd64
#   tests/vm/matrix.sh --all               # + bullseye 5.10, trixie 6.12 (generic and rt), local:6.1-nobtf if built
#   tests/vm/matrix.sh --kernels 'bookworm:6.1:rt-amd64' --rungs core-kernel-btf
#
# Rungs (default: all six):
# core-kernel-btf (sysfs BTF), core-external-btf (sysfs BTF hidden by a
# tmpfs, a copy passed with --btf), kernel-object (BTF hidden, --mode kernel,
# with /usr/lib/traceed/objects/<release>.bpf.o built on the host by
# `traceed build-object` from the kernel's own linux-headers package),
# fallback (BTF hidden, --mode fallback),
# RUNG+perf (RUNG with --transport perf), foreign-btf (negative control: the
# host's BTF, under a name without a release, handed to another kernel must
# be refused: traceed's self-check catches the wrong parents it reads).
#   tests/vm/matrix.sh --update-readme     # after a run, also rewrite README's table
#   tests/vm/matrix.sh --readme-only       # only regenerate README from the last results
#   tests/vm/matrix.sh --all --fetch-only  # only resolve and download the kernels
#   tests/vm/matrix.sh --kernels ... --report STAMP  # only the table, from runs/STAMP
#                                          (MATRIX_BUILT_FROM names the commit the guests ran)
#
# A kernel is SUITE:SERIES:FLAVOUR (the newest ABI of that series in that
# suite), SUITE:ABI:FLAVOUR with a full ABI (e.g. bookworm:6.1.0-56:amd64), or
# local:NAME for one built here (local:6.1-nobtf: tests/vm/matrix-nobtf-kernel.sh).
# Exit status: 0 when nothing FAILed, 1 otherwise. A guest that does not
# finish within --timeout seconds is killed and its unreported rungs FAIL.
#
# Needs root only for nothing; needs qemu-system-x86, busybox-static, cpio,
# gcc (static libc) and a built target/release (make build).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=initramfs-lib.sh
. "$HERE/initramfs-lib.sh"
CACHE=${MATRIX_CACHE:-$HERE/cache/matrix}
RESULTS=${MATRIX_RESULTS:-$HERE/matrix-results.md}
BIN_DIR=${MATRIX_BIN_DIR:-$ROOT/target/release}
# The slowest (rt) first: with two slots the other two run behind it.
CI_KERNELS="bookworm:6.1:rt-amd64 bookworm:6.1:amd64 bookworm:6.1:cloud-amd64"
EXTRA_KERNELS="bullseye:5.10:amd64 trixie:6.12:amd64 trixie:6.12:rt-amd64"
KERNELS=${MATRIX_KERNELS:-$CI_KERNELS}
RUNGS=${MATRIX_RUNGS:-core-kernel-btf,core-external-btf,kernel-object,fallback,fallback+perf,foreign-btf}
JOBS=${MATRIX_JOBS:-2}
TIMEOUT=${MATRIX_TIMEOUT:-420}
# Seconds the guest waits for traceed to be ready: the verifier under TCG
# on a loaded host can take minutes (6.1's verifier walks exit_execve's
# argument loop to its 1M-instruction limit before refusing it).
START_WAIT=${MATRIX_START_WAIT:-120}
MIRROR=${MATRIX_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${MATRIX_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
UPDATE_README=0
README_ONLY=0
FETCH_ONLY=0
REPORT_STAMP=

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
	case $1 in
	--all)
		KERNELS="$CI_KERNELS $EXTRA_KERNELS"
		# The no-BTF kernel joins when it has been built (manual target).
		[ -s "$CACHE/kernels/local_6.1-nobtf/vmlinuz" ] && KERNELS+=" local:6.1-nobtf"
		;;
	--kernels) KERNELS=$2; shift ;;
	--rungs) RUNGS=$2; shift ;;
	--jobs) JOBS=$2; shift ;;
	--timeout) TIMEOUT=$2; shift ;;
	--update-readme) UPDATE_README=1 ;;
	--readme-only) README_ONLY=1 ;;
	--fetch-only) FETCH_ONLY=1 ;;
	--report) REPORT_STAMP=$2; shift ;;
	-h | --help) usage 0 ;;
	*) echo "matrix: unknown argument '$1'" >&2; usage 1 >&2 ;;
	esac
	shift
done

log() { echo "matrix: $*" >&2; }
die() { log "$*"; exit 1; }

update_readme() {
	local readme=$ROOT/README.md begin='<!-- matrix:begin -->' end='<!-- matrix:end -->'
	[ -f "$RESULTS" ] || die "no results file $RESULTS: run the matrix first"
	grep -qF "$begin" "$readme" || die "README.md has no '$begin' marker"
	# Everything up to the end of the table (the first blank line after it).
	awk -v res="$RESULTS" -v b="$begin" -v e="$end" '
		$0 == b {
			print
			while ((getline l < res) > 0) {
				if (l ~ /^## Details/) break
				if (l ~ /^# / || (l == "" && !started)) continue
				started = 1
				print l
			}
			skip = 1
			next
		}
		$0 == e { skip = 0 }
		!skip { print }' "$readme" >"$readme.tmp"
	mv "$readme.tmp" "$readme"
	log "README.md: Supported kernels table updated from $RESULTS"
}

if [ $README_ONLY = 1 ]; then
	update_readme
	exit 0
fi

# --- tools ----------------------------------------------------------------

for t in qemu-system-x86_64 cpio gcc strip dpkg-deb apt-get timeout; do
	command -v "$t" >/dev/null || die "$t not found: apt-get install qemu-system-x86 busybox-static cpio gcc"
done
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 ||
	die "need a static busybox: apt-get install busybox-static"
for b in traceed tracectl; do
	[ $FETCH_ONLY = 1 ] || [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b missing: run 'make build' first"
done

mkdir -p "$CACHE"/{kernels,apt,runs,build}

# --- kernels ----------------------------------------------------------------

SYSTEM_CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")

# apt-get/apt-cache options for a suite: the system's own apt for its own
# suite, else a private sources list, lists and cache under $CACHE/apt/SUITE.
apt_opts() {
	local suite=$1 d=$CACHE/apt/$1
	APT=()
	[ "$suite" = "$SYSTEM_CODENAME" ] && return 0
	APT=(-o "Dir::Etc::sourcelist=$d/sources.list" -o Dir::Etc::sourceparts=/dev/null
		-o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache"
		-o "Dir::Cache::pkgcache=$d/cache/pkgcache.bin" -o "Dir::Cache::srcpkgcache=$d/cache/srcpkgcache.bin"
		-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
		-o Acquire::Languages=none)
}

refresh_suite() {
	local suite=$1 d=$CACHE/apt/$1
	[ "$suite" = "$SYSTEM_CODENAME" ] && return 0
	mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
	{
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $suite main"
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $SECURITY_MIRROR $suite-security main"
	} >"$d/sources.list"
	# Once a day is enough: kernels move with security updates.
	if [ -z "$(find "$d/lists" -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n 1)" ]; then
		log "$suite: apt-get update (private lists in $d)"
		apt_opts "$suite"
		apt-get "${APT[@]}" update -q >"$d/update.log" 2>&1 ||
			log "$suite: update failed (see $d/update.log); using what is cached"
	fi
}

# The package names of SERIES:FLAVOUR: 6.1 -> linux-image-6.1.0-56-amd64-unsigned,
# 6.12 -> linux-image-6.12.117+deb13-amd64-unsigned. The ABI part never
# contains '-', so amd64 does not match cloud-amd64 or rt-amd64.
pkg_re() {
	local series=$1 flavour=$2
	if [[ $series =~ ^[0-9]+\.[0-9]+$ ]]; then
		echo "^linux-image-${series//./\\.}\\.[0-9]+([-+][0-9a-z.+]+)-${flavour}-unsigned\$"
	else
		echo "^linux-image-${series//./\\.}-${flavour}-unsigned\$"
	fi
}

# SUITE:SERIES:FLAVOUR -> "package version" of the newest matching image.
resolve() {
	local suite=$1 series=$2 flavour=$3 re
	apt_opts "$suite"
	re=$(pkg_re "$series" "$flavour")
	apt-cache "${APT[@]}" pkgnames linux-image- 2>/dev/null | grep -E "$re" | sort -V | tail -n 1 |
		while read -r pkg; do
			echo "$pkg $(apt-cache "${APT[@]}" show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)"
		done
}

# Fetch and unpack one kernel; prints its cache directory.
fetch_kernel() {
	local spec=$1 suite series flavour pkg ver dir tmp
	IFS=: read -r suite series flavour <<<"$spec"
	if [ "$suite" = local ]; then
		# Built here (tests/vm/matrix-nobtf-kernel.sh), never downloaded.
		dir=$CACHE/kernels/local_$series
		[ -s "$dir/vmlinuz" ] || { log "$spec: $dir/vmlinuz missing (build it: tests/vm/matrix-nobtf-kernel.sh)"; return 1; }
		echo "$dir"
		return 0
	fi
	[ -n "$flavour" ] || die "bad kernel '$spec': want SUITE:SERIES:FLAVOUR"
	# What a spec resolved to is remembered for a day: repeated runs ask
	# apt nothing.
	local memo=$CACHE/kernels/${spec//:/_}.resolved
	if [ -n "$(find "$memo" -mmin -1440 2>/dev/null)" ] && [ -s "$(cat "$memo")/vmlinuz" ]; then
		cat "$memo"
		return 0
	fi
	refresh_suite "$suite"
	read -r pkg ver < <(resolve "$suite" "$series" "$flavour") || true
	if [ -z "${pkg:-}" ]; then
		# Offline, or the archive moved on: the newest cached one will do.
		dir=$(cd "$CACHE/kernels" && ls -d "${suite}"_* 2>/dev/null | sed "s/^${suite}_//" |
			RE=$(pkg_re "$series" "$flavour") awk -F_ '$1 ~ ENVIRON["RE"]' | sort -V | tail -n 1)
		[ -n "$dir" ] && dir=$CACHE/kernels/${suite}_$dir
		[ -n "$dir" ] || { log "$spec: no package found in $suite"; return 1; }
		log "$spec: not resolvable now, using cached $(basename "$dir")"
		echo "$dir"
		return 0
	fi
	dir=$CACHE/kernels/${suite}_${pkg}_${ver}
	if [ ! -s "$dir/vmlinuz" ]; then
		tmp=$(mktemp -d "$CACHE/build/dl.XXXXXX")
		log "$spec: downloading $pkg $ver"
		apt_opts "$suite"
		(cd "$tmp" && apt-get "${APT[@]}" -o APT::Sandbox::User=root download -q "$pkg=$ver" >/dev/null) ||
			{ rm -rf "$tmp"; log "$spec: apt-get download $pkg=$ver failed"; return 1; }
		# Only /boot is needed: the guest loads no modules.
		mkdir -p "$tmp/x"
		dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -x -C "$tmp/x" --wildcards './boot/*'
		mkdir -p "$dir"
		cp "$tmp"/x/boot/vmlinuz-* "$dir/vmlinuz"
		cp "$tmp"/x/boot/config-* "$dir/config" 2>/dev/null || true
		basename "$tmp"/x/boot/vmlinuz-* | sed 's/^vmlinuz-//' >"$dir/release"
		echo "$suite" >"$dir/suite"
		echo "$ver" >"$dir/version"
		rm -rf "$tmp"
	fi
	echo "$dir" >"$memo"
	echo "$dir"
}

# The kernel's own headers (linux-headers-RELEASE and the -common package it
# depends on, unpacked with dpkg-deb, cached); prints the build directory
# `traceed build-object --headers` takes.
fetch_headers() {
	local kdir=$1 release suite dir pkgs p tmp
	release=$(cat "$kdir/release")
	suite=$(cat "$kdir/suite" 2>/dev/null || true)
	dir=$CACHE/headers/$release
	if [ ! -d "$dir/usr/src/linux-headers-$release" ]; then
		[ -n "$suite" ] && [ "$suite" != local ] || { log "$release: no headers package for a local kernel"; return 1; }
		apt_opts "$suite"
		pkgs="linux-headers-$release $(apt-cache "${APT[@]}" show --no-all-versions "linux-headers-$release" 2>/dev/null |
			sed -n 's/^Depends: //p' | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -E '^linux-headers-.*-common' || true)"
		tmp=$(mktemp -d "$CACHE/build/hdr.XXXXXX")
		log "$release: downloading $pkgs"
		for p in $pkgs; do
			(cd "$tmp" && apt-get "${APT[@]}" -o APT::Sandbox::User=root download -q "$p" >/dev/null) ||
				{ rm -rf "$tmp"; log "$release: apt-get download $p failed"; return 1; }
		done
		rm -rf "$dir"
		mkdir -p "$dir"
		for p in "$tmp"/*.deb; do dpkg-deb -x "$p" "$dir"; done
		rm -rf "$tmp"
	fi
	echo "$dir/usr/src/linux-headers-$release"
}

# The kernel-object rung's objects, one per kernel, built on the host the
# way an operator prepares a fleet of BTF-less hosts.
build_objects() {
	local out=$CACHE/build/objects kdir release hdr t0
	rm -rf "$out"
	mkdir -p "$out"
	for kdir in "$@"; do
		[ -n "$kdir" ] || continue
		release=$(cat "$kdir/release")
		hdr=$(fetch_headers "$kdir") || continue
		t0=$(date +%s.%N)
		"$BIN_DIR/traceed" build-object --headers "$hdr" --output "$out/$release.bpf.o" >"$out/$release.log" 2>&1 ||
			{
				# A compile error must not pass as "no headers": the
				# guest FAILs its kernel-object rung with it.
				log "$release: build-object failed: $(tail -n 3 "$out/$release.log")"
				grep -m1 'error:' "$out/$release.log" >"$out/$release.failed" || echo "see $out/$release.log" >"$out/$release.failed"
				continue
			}
		log "$release: kernel object built in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
	done
}

# --- initramfs --------------------------------------------------------------

build_initramfs() {
	local root=$CACHE/build/initramfs out=$CACHE/build/initramfs.cpio
	rm -rf "$root"
	initramfs_base "$root" "$HERE/matrix-init.sh" "$BUSYBOX" "$BIN_DIR"
	mkdir -p "$root"/{btf,etc}
	gcc -static -O2 -Wall -o "$root/bin/matrix-probe" "$HERE/matrix-probe.c"
	gcc -static -O2 -Wall -o "$root/bin/fentry-probe" "$HERE/fentry-probe.c"
	if [[ ,$RUNGS, == *,foreign-btf,* ]]; then
		# The negative control needs a BTF that is not the guest's own:
		# the host's (MATRIX_FOREIGN_BTF overrides).
		local foreign=${MATRIX_FOREIGN_BTF:-/sys/kernel/btf/vmlinux}
		[ -s "$foreign" ] || die "foreign-btf rung: no BTF at $foreign (set MATRIX_FOREIGN_BTF)"
		cp "$foreign" "$root/btf/foreign"
		if [ -z "${MATRIX_FOREIGN_BTF:-}" ]; then echo "the BTF of kernel $(uname -r)"; else echo "$foreign"; fi >"$root/btf/foreign.origin"
	fi
	if [ -d "$CACHE/build/objects" ]; then
		mkdir -p "$root/usr/lib/traceed/objects"
		cp "$CACHE"/build/objects/*.bpf.o "$CACHE"/build/objects/*.failed "$root/usr/lib/traceed/objects/" 2>/dev/null || true
	fi
	(cd "$root" && find . | cpio -o -H newc --quiet) >"$out"
	echo "$out"
}

# --- boot -------------------------------------------------------------------

# Boot one kernel; results land in $run/results.txt (the guest's ttyS1),
# the console in $run/console.log, timings in $run/host.txt.
boot_kernel() {
	local kdir=$1 run=$2 initrd=$3 t0 t1 rc=0
	rm -rf "$run"
	mkdir -p "$run"
	t0=$(date +%s.%N)
	timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 1G -smp 1 \
		-display none -monitor none -no-reboot \
		-serial "file:$run/console.log" -serial "file:$run/results.txt" \
		-kernel "$kdir/vmlinuz" -initrd "$initrd" \
		-append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init matrix.rungs=$RUNGS matrix.start_wait=$START_WAIT" \
		</dev/null >"$run/qemu.log" 2>&1 || rc=$?
	t1=$(date +%s.%N)
	printf 'qemu_rc=%s\nwall_s=%s\n' "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" >"$run/host.txt"
}

# --- report -----------------------------------------------------------------

cell() { # run rung -> "STATUS|reason"
	local run=$1 rung=$2 line qrc
	line=$(grep -a "^MX RUNG $rung " "$run/results.txt" 2>/dev/null | tail -n 1 | tr -d '\r' || true)
	if [ -n "$line" ]; then
		line=${line#"MX RUNG $rung "}
		echo "${line%% *}|$(echo "${line#* }" | sed 's/|/\\|/g; s/ *$//')"
		return
	fi
	qrc=$(sed -n 's/^qemu_rc=//p' "$run/host.txt" 2>/dev/null)
	if [ ! -e "$run/host.txt" ] && [ -n "$REPORT_STAMP" ]; then
		# --report while the guest still runs.
		echo "NOT RUN|not reached: the guest was still running when this table was made"
	elif [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
		echo "FAIL|no result: guest killed after ${TIMEOUT}s"
	elif ! grep -qa '^MX BOOT' "$run/results.txt" 2>/dev/null; then
		echo "FAIL|kernel never reached /init (qemu exit $qrc; see console.log)"
	else
		echo "FAIL|no result (guest stopped early, qemu exit $qrc)"
	fi
}

main() {
	local specs=() dirs=() initrd spec kdir i run
	read -ra specs <<<"$KERNELS"
	for spec in "${specs[@]}"; do
		kdir=$(fetch_kernel "$spec") || kdir=
		dirs+=("$kdir")
		[ -n "$kdir" ] && log "$spec -> $(cat "$kdir/release") ($(cat "$kdir/version"))"
	done
	[ $FETCH_ONLY = 1 ] && return 0

	local stamp
	if [ -n "$REPORT_STAMP" ]; then
		# Only the table, from guests that already ran (split runs).
		stamp=$REPORT_STAMP
		[ -d "$CACHE/runs/$stamp" ] || die "no run $CACHE/runs/$stamp"
	else
	rm -rf "$CACHE/build/objects"
	[[ ,$RUNGS, == *,kernel-object,* ]] && build_objects "${dirs[@]}"
	log "building initramfs from $BIN_DIR"
	initrd=$(build_initramfs)
	log "initramfs $(du -h "$initrd" | cut -f1)"

	stamp=$(date -u +%Y%m%dT%H%M%SZ)
	local running=0
	for i in "${!specs[@]}"; do
		kdir=${dirs[$i]}
		[ -n "$kdir" ] || continue
		run=$CACHE/runs/$stamp/$(basename "$kdir")
		log "booting $(cat "$kdir/release") (${specs[$i]})"
		boot_kernel "$kdir" "$run" "$initrd" &
		running=$((running + 1))
		if [ $running -ge "$JOBS" ]; then
			wait -n || true
			running=$((running - 1))
		fi
	done
	wait || true
	fi

	local rungs=() rung status reason out=() fails=0 hdr sep cellv boot done_s test_s wall line btf
	IFS=, read -ra rungs <<<"$RUNGS"
	hdr="| kernel | suite | package version | BTF | fentry | boot s | test s |"
	sep="|---|---|---|---|---|---:|---:|"
	for rung in "${rungs[@]}"; do hdr+=" $rung |"; sep+="---|"; done
	out+=("# Kernel matrix results" ""
		"Generated by \`tests/vm/matrix.sh\` on $(date -u +%Y-%m-%dT%H:%MZ) (host $(uname -r), qemu TCG, 1 vCPU, 1 GiB)," \
		"traceed $("$BIN_DIR/traceed" --version 2>/dev/null | awk '{print $2}') from \`${MATRIX_BUILT_FROM:-$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')}\`." \
		"boot s: kernel start to /init; test s: all rungs inside the guest." "" "$hdr" "$sep")
	local details=()
	for i in "${!specs[@]}"; do
		kdir=${dirs[$i]}
		if [ -z "$kdir" ]; then
			line="| ${specs[$i]} | - | - | - | - | - | - |"
			for rung in "${rungs[@]}"; do line+=" FAIL: kernel not available |"; done
			out+=("$line")
			fails=$((fails + 1))
			continue
		fi
		run=$CACHE/runs/$stamp/$(basename "$kdir")
		boot=$(grep -a '^MX BOOT' "$run/results.txt" 2>/dev/null | awk '{print $4}' | tr -d '\r' || true)
		done_s=$(grep -a '^MX DONE' "$run/results.txt" 2>/dev/null | awk '{print $3}' | tr -d '\r' || true)
		wall=$(sed -n 's/^wall_s=//p' "$run/host.txt" 2>/dev/null || true)
		test_s=-
		[ -n "$boot" ] && [ -n "$done_s" ] && test_s=$(awk -v a="$boot" -v b="$done_s" 'BEGIN { printf "%.1f", b - a }')
		[ -n "$boot" ] && boot=$(printf '%.1f' "$boot")
		btf=$(grep -a '^MX INFO kernel ' "$run/results.txt" 2>/dev/null | grep -o 'btf=[01]' | cut -d= -f2)
		case $btf in 1) btf=yes ;; 0) btf=no ;; *) btf=- ;; esac
		# fentry: tests/vm/fentry-probe's answer in the guest (fexit and
		# fentry on the open family's syscall functions).
		fentry=$(grep -a '^MX INFO kernel fentry=' "$run/results.txt" 2>/dev/null | grep -o 'fentry=[01]' | cut -d= -f2)
		case $fentry in 1) fentry=yes ;; 0) fentry="no: $(grep -a '^MX INFO fentry-probe .* FAIL ' "$run/results.txt" | head -n 1 | sed 's/.* FAIL //' | tr -d '\r|')" ;; *) fentry=- ;; esac
		line="| $(cat "$kdir/release") | $(cat "$kdir/suite") | $(cat "$kdir/version") | $btf | $fentry | ${boot:--} | $test_s |"
		for rung in "${rungs[@]}"; do
			cellv=$(cell "$run" "$rung")
			status=${cellv%%|*}
			reason=${cellv#*|}
			case $status in
			PASS) line+=" PASS |" ;;
			*)
				# The table stays readable; Details has the whole message.
				[ ${#reason} -le 160 ] || reason="${reason:0:157}..."
				line+=" $status: $reason |"
				;;
			esac
			[ "$status" = PASS ] || [ "$status" = SKIP ] || fails=$((fails + 1))
		done
		out+=("$line")
		details+=("### $(cat "$kdir/release")" "" "host wall time ${wall}s (qemu, boot to poweroff); guest log: \`${run#"$ROOT"/}/console.log\`" "" '```')
		details+=("$(grep -aE '^MX (BOOT|RUNG|DONE) |^MX CHECK [^ ]+ (FAIL|SKIP) |^MX CHECK [^ ]+ PASS ready |^MX INFO ' "$run/results.txt" 2>/dev/null | tr -d '\r' || true)" '```' "")
	done
	out+=("" "PASS: every check held. SKIP: does not apply: a CO-RE rung on a kernel without BTF (traceed must refuse it, and did), or a rung or event kind this build of traceed lacks (the reason quotes the daemon)." \
		"FAIL: a stored field differed from the ground truth, the daemon refused the rung, or the guest timed out." \
		"NOT RUN (--report only): the guest had not reached the rung when the table was made." "")
	out+=("## Details (non-PASS checks, daemon start-up and hooks per rung)" "" "${details[@]}")
	printf '%s\n' "${out[@]}" >"$RESULTS"
	log "results: $RESULTS"
	sed -n '/^| kernel/,/^$/p' "$RESULTS"
	[ $UPDATE_README = 1 ] && update_readme
	[ $fails -eq 0 ]
}

main
