#!/usr/bin/env bash
# The daemon's user-space instructions per stored event, counted by valgrind
# (callgrind) while traceed records a paced open loop: a measure of its CPU
# cost that does not move with the host's load, for A/Bs of user-space
# changes that wall-clock CPU time is too noisy to show (~5 % here).
#
#   bench/instructions.sh [--events N] [--rate R] [--keep DIR] [BIN...]
#
# Each BIN (default target/release/traceed) runs under callgrind with
# instrumentation off until it is ready, then counts all of its threads
# while bw_open does N (default 50000) opens of one file at R (default 5000)
# per second, and for 3 s after (the writer drains). No rules, an otherwise
# default config, `--mode core`. Prints one line per binary; --keep copies
# each callgrind file into DIR for callgrind_annotate. Runs take ~1 min
# each; counts repeat to within ~0.3 %. Must run as root.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib/common.sh"

N=50000 RATE=5000 KEEP="" BINS=()
while [ $# -gt 0 ]; do
    case "$1" in
    --events) N=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --keep) KEEP=$2; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) BINS+=("$1") ;;
    esac
    shift
done
check_ab_bins
need_pkgs valgrind sqlite3 curl gcc libc6-dev

WORK=$(mktemp -d /tmp/traceed-instr.XXXX)
trap 'pkill -INT -f "callgrind.*--state-dir $WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
open_loop_files "$WORK"

for bin in "${BINS[@]}"; do
    d="$WORK/state"
    rm -rf "$d" && mkdir -p "$d"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
        "$bin" --mode core --config "$WORK/traceed.toml" --state-dir "$d" --socket "$d/s.sock" \
        > "$d/log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        curl -sf --unix-socket "$d/s.sock" http://x/healthz > /dev/null && break
        sleep 0.2
    done
    curl -sf --unix-socket "$d/s.sock" http://x/healthz > /dev/null || die "$bin: not ready under valgrind in 120 s (log: $(tail -3 "$d/log"))"
    sleep 2
    callgrind_control -i on "$pid" > /dev/null 2>&1
    "$WORK/bw_open" "$N" "$WORK/file" "$RATE" > /dev/null
    sleep 3
    callgrind_control -i off "$pid" > /dev/null 2>&1
    lost=$(curl -s --unix-socket "$d/s.sock" http://x/metrics | awk '/^traceed_lost_events_total/ {s += $2} END {print s + 0}')
    kill -INT "$pid"
    wait "$pid" || true
    stored=$(sqlite3 "$d/events.db" "SELECT count(*) FROM events e JOIN strings s ON s.id = e.comm WHERE s.s = 'bw_open'")
    ir=$(callgrind_annotate "$WORK/cg.out" 2> /dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    [ "$stored" -gt 0 ] && [ -n "$ir" ] || die "$bin: nothing counted (stored $stored)"
    echo "$bin: $((ir / stored)) instructions per event ($ir over $stored opens stored, $lost lost)"
    if [ -n "$KEEP" ]; then
        mkdir -p "$KEEP"
        cp "$WORK/cg.out" "$KEEP/callgrind.$(basename "$bin").$$"
    fi
done
