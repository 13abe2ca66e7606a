#!/usr/bin/env bash
# traceed benchmarks side by side with the tools users pick instead.
#
#   bench/run.sh            full run: untraced, traceed core + fallback rungs,
#                           auditd and bpftrace; 1M-event history queries;
#                           zero-loss rate search.  ~10-20 min on 2 cores.
#   bench/run.sh --quick    <= 2 min: untraced + traceed rungs only, small
#                           volumes. Exits 1 only on gross regressions
#                           (daemon not ready, or events missing that no
#                           `lost` row accounts for), never on noisy ratios.
#
# Options: --reps N, --configs a,b,..  (untraced,floor,core,coalesce,fallback,auditd,bpftrace;
#          floor: core's hooks with programs that return at once;
#          coalesce: core with [events] coalesce = "1s"),
#          --query-events N, --out FILE (markdown table; default stdout only),
#          --keep (leave the work dir for inspection),
#          --rules DIR (traceed's configs load the Sigma rules in DIR: the
#          detection cost, e.g. the zero-loss rate with and without rules),
#          --pin (the workloads on every CPU but the last, the tracers'
#          processes on the last: a host where the daemon has a core of its
#          own; unpinned, they share every CPU, as on a small VM).
# Environment: EXTRA_WL="build tar" (the full run's default; "" in --quick)
#          adds a `make -j2` of N_BUILD=100 C files and a tar copy of
#          /usr/include (into /dev/shm) to every session (timed only: no
#          ground truth).
#          TRACEED_TOML='[kernel]\nring_buffer_bytes = 8388608' appends
#          those lines (printf %b) to every traceed configuration's file.
# Must run as root. Every daemon, audit rule and sysctl it changes is undone
# on exit (trap), also on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib/common.sh"

QUICK=0 REPS="" CONFIGS="" OUT="" KEEP=0 QEVENTS="" RULES="" PIN=0 PINNED=""
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --reps) REPS=$2; shift ;;
    --configs) CONFIGS=$2; shift ;;
    --query-events) QEVENTS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --keep) KEEP=1 ;;
    --rules) RULES=$(cd "$2" && pwd); shift ;;
    --pin) PIN=1 ;;
    -h | --help) sed -n '2,29p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || die "run as root: tracers need CAP_BPF/CAP_AUDIT_CONTROL"

if [ $QUICK = 1 ]; then
    : "${REPS:=3}" "${CONFIGS:=untraced,core,fallback}" "${QEVENTS:=30000}"
    : "${N_EXEC:=150}" "${N_OPEN:=10000}" "${N_CONN:=1000}" "${N_MIXED:=30}" "${RATE_STEPS:=2}" "${RATE_SECS:=2}"
    : "${EXTRA_WL=}"
else
    : "${REPS:=5}" "${CONFIGS:=untraced,floor,core,fallback,auditd,bpftrace}" "${QEVENTS:=1000000}"
    : "${N_EXEC:=600}" "${N_OPEN:=20000}" "${N_CONN:=3000}" "${N_MIXED:=100}" "${RATE_STEPS:=6}" "${RATE_SECS:=20}"
    : "${EXTRA_WL=build tar}"
fi

WORK=$(mktemp -d /tmp/traceed-bench.XXXXXX)
BIN=$WORK/bin
N_BUILD=${N_BUILD:-100}
RES=$WORK/runs.tsv       # config rep workload ns ops expected... recorded... lost
TRC=$WORK/tracers.tsv    # config rep ready_ms rss_kb cpu_s stored_events disk_bytes
BPF=$WORK/bpf.tsv        # config prog run_time_ns run_cnt
NOTES=$WORK/notes.txt
: >"$RES"; : >"$TRC"; : >"$BPF"; : >"$NOTES"
trap cleanup EXIT INT TERM
if [ $PIN = 1 ]; then pin_cpus; fi

log "work dir $WORK; mode $([ $QUICK = 1 ] && echo quick || echo full); reps $REPS; configs $CONFIGS"
log "machine: $(nproc) cpus, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

enabled() { [[ ",$CONFIGS," == *,$1,* ]]; }
if enabled auditd; then need_pkgs auditd; fi
if enabled bpftrace; then need_pkgs bpftrace; fi
need_pkgs gcc libc6-dev sqlite3 curl bpftool
TRACEED=${TRACEED:-$ROOT/target/release/traceed}
TRACECTL=${TRACECTL:-$ROOT/target/release/tracectl}
if { enabled core || enabled fallback || enabled floor || enabled coalesce; } && { [ ! -x "$TRACEED" ] || [ ! -x "$TRACECTL" ]; }; then
    log "building traceed (make build)"
    make -C "$ROOT" build >&2
fi

build_workloads
audit_hygiene_on
bpf_stats_save_off
note "other BPF programs loaded at start (other tracers on this machine): $(other_bpf_progs)"

# ---- interleaved workload runs ------------------------------------------
IFS=, read -r -a CFGS <<<"$CONFIGS"
for rep in $(seq 1 "$REPS"); do
    for cfg in "${CFGS[@]}"; do
        if skipped "$cfg"; then continue; fi
        if ! tracer_start "$cfg" "$rep"; then
            skip "$cfg" "$(cat "$WORK/skipreason" 2>/dev/null || echo 'failed to start')"
            continue
        fi
        for wl in exec open connect mixed $EXTRA_WL; do
            run_workload "$cfg" "$rep" "$wl"
        done
        tracer_settle "$cfg" "$rep"
        tracer_snapshot "$cfg" "$rep"
        tracer_stop "$cfg"
        tracer_collect "$cfg" "$rep"
    done
    log "rep $rep/$REPS done (load $(cut -d' ' -f1-3 /proc/loadavg))"
done

# ---- BPF run time per program (its accounting is off while timing) ------
bpf_pass

# ---- history queries over QEVENTS events --------------------------------
if [ "$QEVENTS" -gt 0 ]; then query_bench; fi

# ---- maximum sustained rate with zero loss (traceed core) ---------------
if enabled core && ! skipped core && [ "$RATE_STEPS" -gt 0 ]; then rate_search; fi

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
report | tee "${OUT:-/dev/null}"
gate
