#!/usr/bin/env bash
# Where an open's BPF time goes: the run time of traceed's programs per
# open+close (kernel.bpf_stats_enabled), and a perf profile of the open
# program split by what it called (each helper, or its own code: SELF),
# while bw_open does N open+close of one file flat out.
#
#   bench/bpf_profile.sh [--events N] [BIN...]
#
# Each BIN (default target/release/traceed) runs `--mode core`, no rules.
# Prints per binary: BPF ns per open (all of the daemon's programs), the
# open program's ns per run (exit_openat, or fexit_openat where the kernel
# takes trampolines), the loop's ns per open+close, then one line per
# callee: its share of the program's samples and that share of its run
# time in ns. Alternate binaries and repeat: one run moves by ~5 % here.
# Must run as root; installs linux-perf.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib/common.sh"

N=300000 BINS=()
while [ $# -gt 0 ]; do
    case "$1" in
    --events) N=$2; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) BINS+=("$1") ;;
    esac
    shift
done
check_ab_bins
need_pkgs linux-perf bpftool curl gcc libc6-dev

WORK=$(mktemp -d /tmp/traceed-bpfprof.XXXX)
stats_before=$(sysctl -n kernel.bpf_stats_enabled)
trap 'pkill -INT -f "traceed.*--state-dir $WORK" 2>/dev/null || true; sysctl -qw kernel.bpf_stats_enabled=$stats_before; rm -rf "$WORK"' EXIT
open_loop_files "$WORK"
sysctl -qw kernel.bpf_stats_enabled=1

# "id run_time_ns run_cnt name" for each of the daemon's programs.
progs() {
    for f in /proc/"$1"/fdinfo/*; do
        awk '/^prog_id/ {id = $2} /^run_time_ns/ {t = $2} /^run_cnt/ {c = $2}
             END {if (id && t != "") print id, t, c}' "$f" 2> /dev/null
    done | sort -u | while read -r id t c; do
        echo "$id $t $c $(bpftool prog show id "$id" 2> /dev/null | awk 'NR == 1 {print $4}')"
    done
}

for bin in "${BINS[@]}"; do
    d="$WORK/state"
    rm -rf "$d" && mkdir -p "$d"
    "$bin" --mode core --config "$WORK/traceed.toml" --state-dir "$d" --socket "$d/s.sock" > "$d/log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do
        curl -sf --unix-socket "$d/s.sock" http://x/healthz > /dev/null && break
        sleep 0.2
    done
    curl -sf --unix-socket "$d/s.sock" http://x/healthz > /dev/null || die "$bin: not ready in 60 s (log: $(tail -3 "$d/log"))"
    progs "$pid" > "$WORK/a"
    perf record -q -a -g -F 2999 -o "$WORK/perf.data" -- "$WORK/bw_open" "$N" "$WORK/file" 0 > "$WORK/wl" 2> /dev/null
    progs "$pid" > "$WORK/b"
    kill -INT "$pid"
    wait "$pid" || true
    prog=$(join "$WORK/a" "$WORK/b" | awk '$7 ~ /^(f?exit_openat)$/ {print $7; exit}')
    [ -n "$prog" ] || die "$bin: no exit_openat or fexit_openat program ran"
    read -r all per_run < <(join "$WORK/a" "$WORK/b" | awk -v n="$N" -v p="$prog" '
        {t += $5 - $2} $7 == p {r = ($5 - $2) / ($6 - $3)} END {printf "%d %d\n", t / n, r}')
    loop=$(awk '{for (i = 1; i <= NF; i++) if ($i ~ /^ns=/) {sub("ns=", "", $i); print int($i / '"$N"')}}' "$WORK/wl")
    echo "$bin: BPF ${all} ns per open, $prog ${per_run} ns per run, loop ${loop} ns per open+close"
    # Samples with the program on the stack, by the frame it called
    # (perf script prints the leaf first).
    perf script -i "$WORK/perf.data" --comm bw_open -F ip,sym 2> /dev/null | awk -v p="$prog" -v r="$per_run" '
        /^$/ {
            for (i = 1; i <= n; i++) if (st[i] ~ "_" p "$") { c = i > 1 ? st[i - 1] : "SELF"; cnt[c]++; tot++; break }
            n = 0; next
        }
        { st[++n] = $2 }
        END {
            for (k in cnt) printf "  %5.1f%% %5d ns  %s\n", 100 * cnt[k] / tot, r * cnt[k] / tot, k
            printf "  (%d samples)\n", tot
        }' | sort -k2 -rn
done
