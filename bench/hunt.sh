#!/usr/bin/env bash
# Retro-hunt benchmark (issue 16): a stored history of N synthetic events
# (bench/store.sh's generator: execs, opens, connects and exits of a build
# host over 24 h), the daemon started on it, and one POST /v1/hunt of every
# rule under RULES that loads (`tracectl rules check` decides), timed from
# the request to the summary line. Prints the wall time, the events
# scanned, the rate, and the daemon's CPU time during the hunt.
#   bench/hunt.sh RULES... [--events N] [--dir DIR] [--runs N] [--rebuild]
# The history is built once in DIR (default /var/tmp/traceed-hunt-bench,
# ~1.1 GB for 10M) and reused while its event count matches. Not part of
# `make test`; run as root on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
events=10000000 dir=/var/tmp/traceed-hunt-bench runs=3 rebuild=0
rules=()
while [ $# -gt 0 ]; do
	case $1 in
	--events) events=$2; shift 2 ;;
	--dir) dir=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--rebuild) rebuild=1; shift ;;
	-*) echo "usage: bench/hunt.sh RULES... [--events N] [--dir DIR] [--runs N] [--rebuild]" >&2; exit 2 ;;
	*) rules+=("$1"); shift ;;
	esac
done
[ ${#rules[@]} -gt 0 ] || { echo "bench/hunt.sh: name rule files or directories" >&2; exit 2; }

cargo build --release --locked --workspace >&2
bin=$PWD/target/release
work=$(mktemp -d /tmp/traceed-hunt.XXXXXX)
daemon=
cleanup() {
	[ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

# The rules that load, as one body of YAML documents.
n_rules=0 n_refused=0
while IFS= read -r -d '' f; do
	if "$bin/tracectl" rules check "$f" >/dev/null 2>&1; then
		{ cat "$f"; printf '\n---\n'; } >>"$work/body.yml"
		n_rules=$((n_rules + 1))
	else
		n_refused=$((n_refused + 1))
	fi
done < <(find "${rules[@]}" -type f \( -name '*.yml' -o -name '*.yaml' \) -print0 | sort -z)
[ "$n_rules" -gt 0 ] || { echo "bench/hunt.sh: no rule loads" >&2; exit 1; }

if [ "$rebuild" = 1 ] || [ "$(cat "$dir/.events" 2>/dev/null)" != "$events" ]; then
	echo "--- building a history of $events events in $dir" >&2
	"$bin/traceed-store-bench" --dir "$dir" --events "$events" --runs 1 >"$work/store.md"
	echo "$events" >"$dir/.events"
fi

sock=$work/api.sock
"$bin/traceed" --config /dev/null --state-dir "$dir" --socket "$sock" 2>"$work/traceed.log" &
daemon=$!
for _ in $(seq 300); do
	curl -sf --unix-socket "$sock" http://localhost/healthz >/dev/null 2>&1 && break
	kill -0 "$daemon" 2>/dev/null || { cat "$work/traceed.log" >&2; exit 1; }
	sleep 0.1
done

cpu_s() { awk '{ printf "%.2f", ($14 + $15) / '"$(getconf CLK_TCK)"' }' "/proc/$daemon/stat"; }
echo "rules: $n_rules load, $n_refused refused; history: $events events in $dir; host $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git describe --always --dirty)"
echo
echo "| run | wall s | events scanned | events/s | matches | daemon CPU s | CPU µs/event |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for r in $(seq "$runs"); do
	c0=$(cpu_s)
	t0=$(date +%s.%N)
	curl -sf --unix-socket "$sock" -X POST -H 'Content-Type: application/yaml' \
		--data-binary "@$work/body.yml" 'http://localhost/v1/hunt?since=3d' >"$work/out.jsonl"
	t1=$(date +%s.%N)
	c1=$(cpu_s)
	tail -n 1 "$work/out.jsonl" | python3 -c '
import json, sys
s = json.load(sys.stdin)["summary"]
r = sys.argv[1]
t0, t1, c0, c1 = map(float, sys.argv[2:])
wall, cpu, n, m = t1 - t0, c1 - c0, s["scanned"], s["matches"]
print(f"| {r} | {wall:.1f} | {n:,} | {n / wall:,.0f} | {m:,} | {cpu:.1f} | {cpu * 1e6 / max(n, 1):.2f} |")
' "$r" "$t0" "$t1" "$c0" "$c1"
done
