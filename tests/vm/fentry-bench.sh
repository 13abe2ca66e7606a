#!/usr/bin/env bash
# fentry vs tracepoints (issue 17): the open+close loop in one qemu guest,
# one boot, configurations interleaved (tests/vm/fentry-bench-init.sh):
# untraced, traceed with the open family on tracepoints, on fexit, each
# one's floor (same hooks, syscall programs return at once), and each
# attach method alone (empty programs on the open family only).
#
#   tests/vm/fentry-bench.sh [--kernel SUITE:SERIES:FLAVOUR] [--reps N] [--ops N]
#                            [--configs a,b,..] [--smp N] [--no-icount]
#   tests/vm/fentry-bench.sh --report RESULTS   # only the table, from a run's FB lines
#
# Default kernel trixie:6.12:amd64 (fetched and cached by tests/vm/matrix.sh),
# 7 reps of 20000 ops, 1 vCPU. Prints the raw lines and a markdown table:
# per configuration the median and [min-max] of wall ns per op, the ns
# added per op against the untraced runs' median, and BPF run time per op
# (kernel.bpf_stats_enabled). Against the median, not the same repetition's
# run: with -icount the runs repeat to within a few per cent, except the
# boot's first loop (twice as long, warm-up or not), which pairing would
# charge to one repetition of every configuration. The loop's CPU time is in the raw
# lines only: the guest's accounting under TCG can exceed wall time.
#
# The guest runs with -icount shift=0,sleep=off: its clock is its
# instruction count (1 ns = 1 guest instruction) and does not move while
# the host schedules qemu out, so the shared, loaded host adds no noise.
# A "ns" here is a path length, not a real CPU's time (no caches, no
# pipeline): compare rows, and the native per-open numbers of bench/run.sh.
# --no-icount measures in host time instead (noisy under load). qemu TCG: absolute numbers
# are those of an emulated CPU (tens of times a real one); compare rows.
# Needs a built target/release (traceed, tracectl), gcc, busybox-static.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=initramfs-lib.sh
. "$HERE/initramfs-lib.sh"
CACHE=${MATRIX_CACHE:-$HERE/cache/matrix}
BIN_DIR=${MATRIX_BIN_DIR:-$ROOT/target/release}
KERNEL=trixie:6.12:amd64
REPS=7
OPS=20000
SMP=1
ICOUNT=(-icount shift=0,sleep=off)
CONFIGS=untraced,tracepoint,fexit,floor-tp,floor-fexit,iso-tp,iso-fexit
TIMEOUT=${FB_TIMEOUT:-3000}
REPORT=

while [ $# -gt 0 ]; do
	case $1 in
	--kernel) KERNEL=$2; shift ;;
	--reps) REPS=$2; shift ;;
	--ops) OPS=$2; shift ;;
	--configs) CONFIGS=$2; shift ;;
	--smp) SMP=$2; shift ;;
	--no-icount) ICOUNT=() ;;
	--report) REPORT=$2; shift ;;
	-h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "fentry-bench: unknown argument '$1'" >&2; exit 1 ;;
	esac
	shift
done
log() { echo "fentry-bench: $*" >&2; }

report() { # FB lines -> the markdown table
awk -v cfgs="$CONFIGS" '
function sort(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
function stat(key, n,   v, i, m) {
	for (i = 1; i <= n; i++) v[i] = S[key, i]
	sort(v, n)
	m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
	return sprintf("%.0f [%.0f-%.0f]", m, v[1], v[n])
}
$1 == "FB" && $2 == "RUN" {
	c = $3; r = $4
	for (i = 5; i <= NF; i++) { split($i, kv, "="); F[kv[1]] = kv[2] }
	W[c, r] = F["wall_ns"] / F["ops"]
	B[c, r] = F["bpf_runs"] > 0 ? F["bpf_ns"] / F["ops"] : 0
	ST[c] = ST[c] (ST[c] == "" ? "" : " ") F["stored"]
	A[c] = F["attach"]; R[r] = 1; seen[c, r] = 1
}
END {
	n = split(cfgs, order, ",")
	nu = 0
	for (r in R) if (seen["untraced", r]) { nu++; S["w", nu] = W["untraced", r] }
	if (nu) { for (i = 1; i <= nu; i++) v[i] = S["w", i]; sort(v, nu); U = (nu % 2) ? v[(nu + 1) / 2] : (v[nu / 2] + v[nu / 2 + 1]) / 2 }
	print "| config | open family | wall ns/op | added ns/op | BPF ns/op | stored opens |"
	print "|---|---|---:|---:|---:|---|"
	for (k = 1; k <= n; k++) {
		c = order[k]; m = 0; ma = 0
		for (r in R) if (seen[c, r]) {
			m++; S["w", m] = W[c, r]; S["b", m] = B[c, r]
		}
		if (!m) continue
		for (i = 1; i <= m; i++) S["aw", i] = S["w", i] - U
		ma = (c == "untraced" || !nu) ? 0 : m
		st = ST[c]; first = st; sub(/ .*/, "", first); same = st; gsub(first, "", same); gsub(/ /, "", same)
		if (same == "") st = (first == "-") ? "-" : first " in each"
		printf "| %s | %s | %s | %s | %s | %s |\n", c, A[c], stat("w", m), (c == "untraced" || !ma) ? "-" : stat("aw", ma), stat("b", m), st
	}
}' "$1"
}

if [ -n "$REPORT" ]; then
	tr -d '\r' <"$REPORT" | grep '^FB' >"$REPORT.clean"
	report "$REPORT.clean"
	exit 0
fi

"$HERE/matrix.sh" --kernels "$KERNEL" --fetch-only
KDIR=$(cat "$CACHE/kernels/${KERNEL//:/_}.resolved")
[ -s "$KDIR/vmlinuz" ] || { log "no kernel for $KERNEL"; exit 1; }
BUSYBOX=$(command -v busybox)

WORK=$CACHE/fentry-bench
rm -rf "$WORK/root"
R=$WORK/root
initramfs_base "$R" "$HERE/fentry-bench-init.sh" "$BUSYBOX" "$BIN_DIR"
gcc -static -O2 -Wall -o "$R/bin/fentry-probe" "$HERE/fentry-probe.c"
gcc -static -O2 -Wall -o "$R/bin/rusage" "$HERE/rusage.c"
gcc -static -O2 -Wall -I "$ROOT/bench/workloads" -o "$R/bin/bw_open" "$ROOT/bench/workloads/open.c"
(cd "$R" && find . | cpio -o -H newc --quiet) >"$WORK/initrd.cpio"

OUT=$WORK/results.txt
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "booting $(cat "$KDIR/release") with $SMP vCPU: configs $CONFIGS, $REPS reps x $OPS ops (host load $LOAD0)"
T0=$(date +%s)
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 1G -smp "$SMP" "${ICOUNT[@]}" \
	-display none -monitor none -no-reboot \
	-serial "file:$WORK/console.log" -serial "file:$OUT" \
	-kernel "$KDIR/vmlinuz" -initrd "$WORK/initrd.cpio" \
	-append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init bench.configs=$CONFIGS bench.reps=$REPS bench.ops=$OPS" \
	</dev/null >"$WORK/qemu.log" 2>&1 || log "qemu exited $?"
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
tr -d '\r' <"$OUT" | grep '^FB' | tee "$OUT.clean"
grep -q '^FB DONE' "$OUT.clean" || { log "guest did not finish (see $WORK/console.log)"; exit 1; }

echo
echo "kernel $(cat "$KDIR/release") ($(cat "$KDIR/version")), qemu TCG ${ICOUNT[*]:-(host time)}, $SMP vCPU, $REPS reps x $OPS open+close, configs interleaved (order rotated each rep);"
echo "host $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - T0)) s, commit $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), host load before $LOAD0, after $LOAD1"
echo
report "$OUT.clean"
