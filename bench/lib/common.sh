# Helpers of bench/run.sh: tracer lifecycles (traceed, auditd, bpftrace),
# counting what each recorded, BPF run-time stats, the history-query and
# zero-loss phases, and the markdown report. Sourced, not run.
# Globals set by run.sh: ROOT WORK BIN RES TRC BPF NOTES TRACEED TRACECTL QUICK PINNED
# N_* REPS QEVENTS RATE_STEPS RATE_SECS.

# Comms the workloads run under; every count is restricted to them so the
# other processes on the machine (traced too: all tracers here are
# system-wide) never inflate completeness.
OUR_COMMS="'bwtrue','bwmtrue','bw_open','bw_connect','bw_mixed'"
AUDIT_KEY=traceed-bench
# Workloads and tracers alike run at nice -10: the machine is shared, and
# this keeps other load from dominating the comparison without favouring
# either side.
NICE="nice -n -10"
# With --pin (pin_cpus) the workloads run on every CPU but the last and the
# tracers' processes on the last: the host where the daemon has a core of
# its own. Unpinned (the default) both share every CPU.
WNICE=$NICE TNICE=$NICE
# What each workload is expected to leave in a store, by (kind, comm).
OUR_ROWS="(kind='exec' AND comm IN ('bwtrue','bwmtrue')) OR (kind='open' AND comm IN ('bw_open','bw_mixed')) OR (kind='connect' AND comm IN ('bw_connect','bw_mixed'))"
PIDS=()
AUDIT_RULES_ON=0
NEVER_TASK_ON=0

log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 2; }
note() { echo "$*" >>"$NOTES"; log "note: $*"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

pin_cpus() {
    local n
    n=$(nproc)
    [ "$n" -ge 2 ] || die "--pin needs two CPUs or more (this machine has $n)"
    WNICE="$NICE taskset -c 0-$((n - 2))" TNICE="$NICE taskset -c $((n - 1))"
    PINNED="workloads on CPU 0-$((n - 2)), the tracers' processes on CPU $((n - 1))"
    note "pinned: $PINNED (what the kernel does for a traced syscall runs on the workload's CPU)"
}

skip() { # config reason
    echo "$1" >>"$WORK/skipped"
    note "$1 skipped: $2"
}
skipped() { grep -qx "$1" "$WORK/skipped" 2>/dev/null; }

need_pkgs() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
            { DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; }
    fi
}

# The A/B scripts (instructions.sh, bpf_profile.sh): root, and BINS (the
# binaries to compare) defaulting to the tree's daemon, each executable.
check_ab_bins() {
    [ "$(id -u)" = 0 ] || die "run as root: traceed loads eBPF programs"
    [ ${#BINS[@]} -gt 0 ] || BINS=("$ROOT/target/release/traceed")
    local b
    for b in "${BINS[@]}"; do [ -x "$b" ] || die "$b: not an executable (build with make build)"; done
}

# What their open loop needs, in $1: bw_open, the file it opens, and a
# configuration without rules.
open_loop_files() {
    gcc -O2 -static -o "$1/bw_open" "$ROOT/bench/workloads/open.c"
    echo x > "$1/file"
    printf '[detect]\nrules = []\n' > "$1/traceed.toml"
}

# Undo everything this run changed, whatever state it died in.
cleanup() {
    local rc=$?
    set +e
    if [ $AUDIT_RULES_ON = 1 ]; then audit_rules del; fi
    for p in "${PIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$p" 2>/dev/null
        fi
    done
    wait 2>/dev/null
    if [ $NEVER_TASK_ON = 1 ]; then auditctl -d never,task >/dev/null 2>&1; fi
    if [ -n "${AUDIT_SAVED:-}" ]; then
        # shellcheck disable=SC2086
        auditctl $AUDIT_SAVED >/dev/null 2>&1
    fi
    if [ -n "${BPF_STATS_SAVED:-}" ]; then sysctl -q kernel.bpf_stats_enabled="$BPF_STATS_SAVED"; fi
    rm -rf "/dev/shm/traceed-bench-tar.$$"
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}

build_workloads() {
    mkdir -p "$BIN"
    # Static, so the workloads themselves open no shared libraries.
    for w in exec open connect mixed; do
        gcc -O2 -static -Wall -o "$BIN/bw_$w" "$ROOT/bench/workloads/$w.c"
    done
    # Copies of /bin/true under their own names: the exec'd task's comm
    # tells the exec loop's execs from the mixed loop's.
    cp /bin/true "$BIN/bwtrue"
    cp /bin/true "$BIN/bwmtrue"
    echo data >"$BIN/file"
    # The build workload's project (100 C files with system headers).
    if [[ " $EXTRA_WL " == *" build "* ]]; then
        "$ROOT/bench/workloads/build.sh" setup "$BIN/cbuild" "$N_BUILD"
    fi
}

# Audit hygiene (docs/ARCHITECTURE.md): once audit was ever enabled, every task forked
# without a `never,task` rule pays the audit syscall path until reboot.
audit_hygiene_on() {
    command -v auditctl >/dev/null || return 0
    AUDIT_SAVED="-e $(auditctl -s | awk '$1=="enabled"{print $2}') -b $(auditctl -s | awk '$1=="backlog_limit"{print $2}')"
    if auditctl -l 2>/dev/null | grep -q 'never,task'; then return 0; fi
    auditctl -a never,task >/dev/null && NEVER_TASK_ON=1
}

# kernel.bpf_stats_enabled times every run of every BPF program: two clock
# reads each, ~100 ns per traced open on this VM (floor and core alike). The
# timed runs go without it; bpf_pass turns it on for sessions of its own.
bpf_stats_save_off() {
    BPF_STATS_SAVED=$(sysctl -n kernel.bpf_stats_enabled)
    sysctl -q kernel.bpf_stats_enabled=0
}

other_bpf_progs() {
    bpftool prog show 2>/dev/null | awk '/^[0-9]+:/ && ($2=="tracepoint" || $2=="raw_tracepoint" || $2=="kprobe" || $2=="tracing") {n++} END {print n+0}'
}

# ---- tracer lifecycle ---------------------------------------------------
# tracer_start sets TD (its work dir), TPID (daemon pid or empty), READY_MS.
tracer_start() { # cfg rep
    local cfg=$1 rep=$2
    TD=$WORK/$cfg-$rep TPID="" READY_MS=""
    mkdir -p "$TD"
    case $cfg in
    untraced) return 0 ;;
    core | fallback) traceed_start "$cfg" ;;
    # The same object, hooks and attach method as core, with every syscall
    # program returning at once: what the attach method itself costs.
    floor) FLOOR=1 traceed_start core ;;
    # core with the optional [events] coalesce: the open loop's repeated
    # opens of one file become a row per second with a count.
    coalesce) COALESCE=1s traceed_start core ;;
    auditd) auditd_start ;;
    bpftrace) bpftrace_start ;;
    *) echo "unknown configuration" >"$WORK/skipreason"; return 1 ;;
    esac
}

traceed_start() { # mode [dir]
    local mode=$1 t0
    # Without --rules, none: explicitly, or a host with the .deb installed
    # would load the packaged ones.
    if [ -n "${RULES:-}" ]; then
        printf '[detect]\nrules = ["%s"]\n' "$RULES" >"$TD/traceed.toml"
    else
        printf '[detect]\nrules = []\n' >"$TD/traceed.toml"
    fi
    if [ -n "${COALESCE:-}" ]; then
        printf '[events]\ncoalesce = "%s"\n' "$COALESCE" >>"$TD/traceed.toml"
    fi
    if [ -n "${TRACEED_TOML:-}" ]; then
        printf '%b\n' "$TRACEED_TOML" >>"$TD/traceed.toml"
    fi
    t0=$(now_ms)
    env ${FLOOR:+TRACEED_BENCH_FLOOR=1} $TNICE "$TRACEED" --config "$TD/traceed.toml" \
        --state-dir "$TD" --socket "$TD/api.sock" --mode "$mode" >"$TD/daemon.log" 2>&1 &
    TPID=$!
    PIDS+=("$TPID")
    until [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$TD/api.sock" http://l/healthz 2>/dev/null)" = 200 ]; do
        if ! kill -0 "$TPID" 2>/dev/null; then
            echo "traceed --mode $mode exited: $(tail -n 3 "$TD/daemon.log" | tr '\n' ' ')" >"$WORK/skipreason"
            return 1
        fi
        if [ $(($(now_ms) - t0)) -gt 60000 ]; then
            echo "traceed --mode $mode not ready after 60 s" >"$WORK/skipreason"
            kill -KILL "$TPID"
            return 1
        fi
        sleep 0.02
    done
    READY_MS=$(($(now_ms) - t0))
}

audit_rules() { # add|del
    local op=-a
    [ "$1" = del ] && op=-d
    for sc in execve openat connect; do
        auditctl $op always,exit -F arch=b64 -S $sc -k $AUDIT_KEY >/dev/null 2>&1 || [ "$1" = del ]
    done
    if [ "$1" = add ]; then AUDIT_RULES_ON=1; else AUDIT_RULES_ON=0; fi
}

auditd_start() {
    if ! command -v auditd >/dev/null; then
        echo "auditd not installed (apt-get install auditd)" >"$WORK/skipreason"
        return 1
    fi
    if [ "$(auditctl -s | awk '$1=="pid"{print $2}')" != 0 ]; then
        echo "another audit daemon is registered with the kernel" >"$WORK/skipreason"
        return 1
    fi
    # Debian's defaults, with the log in our dir and no rotation or
    # suspension: the figure is auditd as shipped, writing one file.
    sed -e "s|^log_file *=.*|log_file = $TD/audit.log|" \
        -e 's|^max_log_file_action *=.*|max_log_file_action = ignore|' \
        -e 's|^space_left_action *=.*|space_left_action = ignore|' \
        -e 's|^admin_space_left_action *=.*|admin_space_left_action = ignore|' \
        -e 's|^disk_full_action *=.*|disk_full_action = ignore|' \
        /etc/audit/auditd.conf >"$TD/auditd.conf"
    chmod 0640 "$TD/auditd.conf"
    AUDIT_LOST0=$(auditctl -s | awk '$1=="lost"{print $2}')
    local t0
    t0=$(now_ms)
    $TNICE auditd -n -c "$TD" >"$TD/daemon.log" 2>&1 &
    TPID=$!
    PIDS+=("$TPID")
    until [ "$(auditctl -s | awk '$1=="pid"{print $2}')" = "$TPID" ]; do
        if ! kill -0 "$TPID" 2>/dev/null || [ $(($(now_ms) - t0)) -gt 30000 ]; then
            echo "auditd did not register: $(tail -n 3 "$TD/daemon.log" | tr '\n' ' ')" >"$WORK/skipreason"
            return 1
        fi
        sleep 0.02
    done
    # The tasks to be traced must be forked without the never,task rule.
    if [ $NEVER_TASK_ON = 1 ]; then auditctl -d never,task >/dev/null; fi
    auditctl -b 8192 >/dev/null # Debian's audit.rules default
    audit_rules add
    auditctl -e 1 >/dev/null
    READY_MS=$(($(now_ms) - t0))
}

bpftrace_start() {
    if ! command -v bpftrace >/dev/null; then
        echo "bpftrace not installed (apt-get install bpftrace)" >"$WORK/skipreason"
        return 1
    fi
    cat >"$TD/trace.bt" <<'EOF'
BEGIN { printf("READY\n"); }
tracepoint:syscalls:sys_enter_execve { printf("exec %s %d %s\n", comm, pid, str(args->filename)); }
tracepoint:syscalls:sys_enter_openat { printf("open %s %d %s\n", comm, pid, str(args->filename)); }
tracepoint:syscalls:sys_enter_connect { printf("connect %s %d %d\n", comm, pid, args->fd); }
EOF
    local t0
    t0=$(now_ms)
    $TNICE bpftrace -o "$TD/out.txt" "$TD/trace.bt" >"$TD/daemon.log" 2>&1 &
    TPID=$!
    PIDS+=("$TPID")
    until grep -q READY "$TD/out.txt" 2>/dev/null; do
        if ! kill -0 "$TPID" 2>/dev/null || [ $(($(now_ms) - t0)) -gt 60000 ]; then
            echo "bpftrace did not start: $(tail -n 3 "$TD/daemon.log" | tr '\n' ' ')" >"$WORK/skipreason"
            kill -KILL "$TPID" 2>/dev/null
            return 1
        fi
        sleep 0.02
    done
    READY_MS=$(($(now_ms) - t0))
}

# Poll a command until its output stops changing (2 equal polls 300 ms
# apart), so a tracer's backlog never spills into the next measurement.
settle_on() { # max_s cmd...
    local max=$1 prev="" cur t0
    shift
    t0=$(now_ms)
    while [ $(($(now_ms) - t0)) -lt $((max * 1000)) ]; do
        cur=$("$@" 2>/dev/null || echo err)
        if [ "$cur" = "$prev" ]; then return 0; fi
        prev=$cur
        sleep 0.3
    done
    log "settle: still changing after ${max}s"
}

# Until the daemon's queue is empty (no count to wait for: the machine's
# own activity, sqlite3 and curl included, keeps adding rows).
td_drain() { # max_s
    local t0
    t0=$(now_ms)
    while [ $(($(now_ms) - t0)) -lt $(($1 * 1000)) ]; do
        [ "$(curl -s --unix-socket "$TD/api.sock" http://l/metrics | awk '$1=="traceed_queue_depth" {print $2}')" = 0 ] && return 0
        sleep 0.2
    done
    log "settle: traceed queue not empty after ${1}s"
}
# The events a row stands for: a coalesced open's args.count, else one.
N_EVENTS="sum(CASE WHEN kind='open' THEN coalesce(json_extract(args,'\$.count'),1) ELSE 1 END)"
td_our_rows() { sqlite3 -cmd '.timeout 5000' "$TD/events.db" "SELECT $N_EVENTS FROM events_view WHERE $OUR_ROWS"; }

# traceed: wait until every operation done so far in this store is there
# (fast path), else until the count stops moving for 1.5 s (loss).
td_wait() { # expected max_s
    local want=$1 max=$2 t0 prev=-1 same=0 cur
    t0=$(now_ms)
    while [ $(($(now_ms) - t0)) -lt $((max * 1000)) ]; do
        cur=$(td_our_rows 2>/dev/null || echo -1)
        [ "$cur" -ge "$want" ] && return 0
        if [ "$cur" = "$prev" ]; then same=$((same + 1)); else same=0; fi
        [ $same -ge 3 ] && return 0
        prev=$cur
        sleep 0.5
    done
    log "settle: traceed still short of $want after ${max}s"
}
session_ops() { awk -v c="$1" -v r="$2" '$1==c && $2==r {s+=$5} END{print s+0}' "$WORK/raw.tsv"; }
# The log also grows with everything else the machine does: settle on the
# kernel backlog being empty and our workloads' records no longer growing.
audit_backlog_and_ours() { echo "$(auditctl -s | awk '$1=="backlog"{print ($2 > 0)}') $(grep -c 'comm="bw' "$TD/audit.log")"; }
file_size() { stat -c %s "$1"; }

tracer_settle() { # cfg rep
    case $1 in
    core | fallback | coalesce) td_wait "$(session_ops "$1" "$2")" 60 ;;
    floor) td_drain 60 ;;
    auditd) settle_on 60 audit_backlog_and_ours ;;
    bpftrace) settle_on 30 file_size "$TD/out.txt" ;;
    esac
}

# Peak RSS and CPU time: read while the tracer runs.
tracer_snapshot() { # cfg rep
    local cfg=$1 rep=$2 rss cpu
    [ -n "$TPID" ] || return 0
    rss=$(awk '/^VmHWM:/{print $2}' "/proc/$TPID/status")
    cpu=$(awk -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / hz}' "/proc/$TPID/stat")
    echo "$rss $cpu" >"$TD/snapshot"
}

# The run time and count of each of the tracer's BPF programs.
bpf_snapshot() { # cfg
    local cfg=$1
    # One bpftool call for the names; the counters come from the tracer's
    # own prog fds (fdinfo), so other tracers' programs never mix in.
    bpftool prog show | awk '/^[0-9]+:/ {id=$1; sub(/:/, "", id); for (i = 2; i < NF; i++) if ($i == "name") print id, $(i+1)}' >"$TD/prognames"
    local f
    for f in /proc/"$TPID"/fdinfo/*; do
        awk '$1=="prog_id:"{id=$2} $1=="run_time_ns:"{rt=$2} $1=="run_cnt:"{rc=$2} END{if (id) print id, rt+0, rc+0}' "$f" 2>/dev/null
    done | sort -u -k1,1 | awk -v cfg="$cfg" 'NR==FNR {name[$1]=$2; next} {print cfg, ($1 in name ? name[$1] : "id" $1), $2, $3}' "$TD/prognames" - >>"$BPF"
}

tracer_stop() { # cfg
    case $1 in
    untraced) return 0 ;;
    auditd)
        AUDIT_LOST1=$(auditctl -s | awk '$1=="lost"{print $2}')
        audit_rules del
        auditctl -e 0 >/dev/null
        if [ $NEVER_TASK_ON = 1 ]; then auditctl -a never,task >/dev/null; fi
        kill -TERM "$TPID"
        ;;
    bpftrace) kill -INT "$TPID" ;;
    *) kill -TERM "$TPID" ;;
    esac
    local i
    for i in $(seq 300); do kill -0 "$TPID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$TPID" 2>/dev/null; then
        log "$1 did not exit in 30 s: killed"
        kill -KILL "$TPID"
    fi
    wait "$TPID" 2>/dev/null || true
}

# Writes $TD/counts ("comm kind n" lines, exec keyed by the exec'd comm) and
# prints "lost stored_events disk_bytes".
tracer_count() { # cfg
    case $1 in
    core | fallback | floor | coalesce)
        sqlite3 -cmd '.timeout 5000' -separator ' ' "$TD/events.db" \
            "SELECT comm, kind, $N_EVENTS FROM events_view WHERE comm IN ($OUR_COMMS) GROUP BY comm, kind" >"$TD/counts"
        echo "$(sqlite3 "$TD/events.db" "SELECT coalesce(sum(json_extract(args,'\$.count')),0) FROM events_view WHERE kind='lost'")" \
            "$(sqlite3 "$TD/events.db" "SELECT count(*) FROM events_view WHERE kind<>'lost'")" \
            "$(cat "$TD"/events.db* | wc -c)"
        ;;
    auditd)
        awk '/^type=SYSCALL/ {
                s = ""; c = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^syscall=/) s = substr($i, 9)
                    else if ($i ~ /^comm=/) { c = substr($i, 6); gsub(/"/, "", c) }
                }
                k = s == "59" ? "exec" : s == "257" ? "open" : s == "42" ? "connect" : ""
                if (k != "") n[c " " k]++
            }
            END { for (x in n) print x, n[x] }' "$TD/audit.log" >"$TD/counts"
        echo "$((AUDIT_LOST1 - AUDIT_LOST0))" "$(grep -c '^type=SYSCALL' "$TD/audit.log")" "$(stat -c %s "$TD/audit.log")"
        ;;
    bpftrace)
        # Exec is seen at syscall entry, under the caller's comm.
        awk '$1 == "exec" { c = $2; if (c == "bw_exec") c = "bwtrue"; else if (c == "bw_mixed") c = "bwmtrue"
                            n[c " exec"]++; if (NF < 4 && (c == "bwtrue" || c == "bwmtrue")) empty++ }
             $1 == "open" || $1 == "connect" { n[$2 " " $1]++ }
             END { for (x in n) print x, n[x]; print "_ exec_empty_filename", empty + 0 }' "$TD/out.txt" >"$TD/counts"
        echo "$(grep -ho 'Lost [0-9]* events' "$TD/daemon.log" "$TD/out.txt" | awk '{s+=$2} END{print s+0}')" \
            "$(($(wc -l <"$TD/out.txt") - 1))" "$(stat -c %s "$TD/out.txt")"
        ;;
    esac
}

count_of() { awk -v c="$1" -v k="$2" '$1==c && $2==k {print $3; f=1} END{if(!f) print 0}' "$TD/counts"; }

# Join this session's workload runs with what the tracer recorded.
tracer_collect() { # cfg rep
    local cfg=$1 rep=$2 lost=0 stored=0 disk=0 rss="" cpu=""
    if [ "$cfg" != untraced ]; then
        read -r lost stored disk < <(tracer_count "$cfg")
        read -r rss cpu <"$TD/snapshot"
        echo "$cfg $rep $READY_MS $rss $cpu $stored $disk $lost $(count_of _ exec_empty_filename)" >>"$TRC"
    else
        : >"$TD/counts"
    fi
    local wl ns ops rec
    while read -r _ _ wl ns ops; do
        case $wl in
        exec) rec=$(count_of bwtrue exec) ;;
        open) rec=$(count_of bw_open open) ;;
        connect) rec=$(count_of bw_connect connect) ;;
        mixed) rec=$(($(count_of bwmtrue exec) + $(count_of bw_mixed open) + $(count_of bw_mixed connect))) ;;
        esac
        echo "$cfg $rep $wl $ns $ops $rec" >>"$RES"
    done < <(awk -v c="$cfg" -v r="$rep" '$1==c && $2==r' "$WORK/raw.tsv")
}

# Run workload `wl`; it prints "ops=N ns=T".
workload() { # wl
    case $1 in
    exec) $WNICE "$BIN/bw_exec" "$N_EXEC" "$BIN/bwtrue" ;;
    open) $WNICE "$BIN/bw_open" "$N_OPEN" "$BIN/file" ;;
    connect) $WNICE "$BIN/bw_connect" "$N_CONN" ;;
    mixed) $WNICE "$BIN/bw_mixed" "$N_MIXED" "$BIN/bwmtrue" "$BIN/file" ;;
    build) $WNICE "$ROOT/bench/workloads/build.sh" run "$BIN/cbuild" ;;
    # Into tmpfs: a copy to disk is bound by writeback, which varied 4x
    # from run to run here and hid the tracer.
    tar) $WNICE "$ROOT/bench/workloads/tar.sh" /usr/include "/dev/shm/traceed-bench-tar.$$" ;;
    esac
}

run_workload() { # cfg rep wl
    local out
    out=$(workload "$3")
    local ns ops
    ns=$(sed -n 's/.*ns=\([0-9]*\).*/\1/p' <<<"$out")
    ops=$(sed -n 's/^ops=\([0-9]*\).*/\1/p' <<<"$out")
    case $3 in
    build | tar)
        # No ground truth to count against: timed only, and kept out of the
        # completeness table and the gate. Let the tracer drain before the
        # next timed run.
        echo "$1 $2 $3 $ns $ops" >>"$WORK/extra.tsv"
        case $1 in
        core | fallback | floor | coalesce) td_drain 60 ;;
        *) tracer_settle "$1" "$2" ;;
        esac
        ;;
    *)
        echo "$1 $2 $3 $ns $ops" >>"$WORK/raw.tsv"
        tracer_settle "$1" "$2"
        ;;
    esac
}

# ---- history-query latency ----------------------------------------------
# The fill is paced below the zero-loss rate, so the store holds the volume.
FILL_RATE=${FILL_RATE:-20000}
time_ms() { # cmd... ; prints "ms lines"
    local t0 n
    t0=$(date +%s%N)
    n=$("$@" 2>/dev/null | wc -l)
    echo "$((($(date +%s%N) - t0) / 1000000)) $n"
}
tctl() { "$TRACECTL" --socket "$QTD/api.sock" "$@"; }

# Same data in traceed and auditd: both run while the open/exec loops write
# AEVENTS events, then each is asked "exec events of the last hour" and
# "events of one comm". Then traceed alone is filled to QEVENTS and asked
# again. ausearch gets a time limit; a timeout is reported as such.
query_bench() {
    local with_audit=0 aevents qtimeout=${QUERY_TIMEOUT:-180}
    if ! enabled core || skipped core; then return 0; fi
    if enabled auditd && ! skipped auditd; then with_audit=1; fi
    aevents=$((QEVENTS < 100000 ? QEVENTS : 100000))
    log "history queries: traceed$([ $with_audit = 1 ] && echo " + auditd") over $aevents events, then traceed alone over $QEVENTS"
    TD=$WORK/query-core
    mkdir -p "$TD"
    traceed_start core || die "traceed did not start for the query phase: $(cat "$WORK/skipreason")"
    QTD=$TD QPID=$TPID
    if [ $with_audit = 1 ]; then
        TD=$WORK/query-auditd
        mkdir -p "$TD"
        auditd_start || with_audit=0
        ATD=$TD APID=$TPID
    fi
    $WNICE "$BIN/bw_exec" $((QUICK ? 100 : 1000)) "$BIN/bwtrue" >/dev/null
    $WNICE "$BIN/bw_open" $((aevents - (QUICK ? 100 : 1000))) "$BIN/file" "$FILL_RATE" >/dev/null
    TD=$QTD
    td_wait "$aevents" 120
    local vol
    vol=$(sqlite3 "$QTD/events.db" "SELECT count(*) FROM events")
    echo "traceed $vol exec_1h $(time_ms tctl events --since 1h --kind exec -o jsonl)" >>"$WORK/queries.tsv"
    echo "traceed $vol comm $(time_ms tctl events --comm bwtrue -o jsonl)" >>"$WORK/queries.tsv"
    if [ $with_audit = 1 ]; then
        TD=$ATD TPID=$APID
        settle_on 120 audit_backlog_and_ours
        tracer_stop auditd
        local avol
        avol=$(grep -c '^type=SYSCALL' "$ATD/audit.log")
        echo "ausearch $avol exec_1h $(time_ms timeout $qtimeout ausearch -if "$ATD/audit.log" -ts recent -sc execve)" >>"$WORK/queries.tsv"
        echo "ausearch $avol comm $(time_ms timeout $qtimeout ausearch -if "$ATD/audit.log" -c bwtrue)" >>"$WORK/queries.tsv"
        note "ausearch log: $(stat -c %s "$ATD/audit.log") bytes for $avol syscall events; timeout ${qtimeout}s per query"
    fi
    if [ "$QEVENTS" -gt "$aevents" ]; then
        $WNICE "$BIN/bw_open" $((QEVENTS - aevents)) "$BIN/file" "$FILL_RATE" >/dev/null
        TD=$QTD
        td_wait "$QEVENTS" 300
        vol=$(sqlite3 "$QTD/events.db" "SELECT count(*) FROM events")
        echo "traceed $vol exec_1h $(time_ms tctl events --since 1h --kind exec -o jsonl)" >>"$WORK/queries.tsv"
        echo "traceed $vol comm $(time_ms tctl events --comm bwtrue -o jsonl)" >>"$WORK/queries.tsv"
    fi
    note "traceed query db: $(cat "$QTD"/events.db* | wc -c) bytes for $vol events ($(sqlite3 "$QTD/events.db" "SELECT coalesce(sum(json_extract(args,'\$.count')),0) FROM events_view WHERE kind='lost'") counted lost); filled at ${FILL_RATE}/s"
    TD=$QTD TPID=$QPID
    tracer_stop core
}

# ---- maximum sustained rate with zero loss ------------------------------
# Binary search on a paced open loop: a rate passes when traceed stored
# every open and wrote no `lost` row (and, with --rules, the detector
# skipped none). Fresh daemon per probe. A probe must
# offer far more events than the ring buffer plus the user-space queue hold
# (~100k with the defaults), or buffering passes rates that are not
# sustainable: hence 20 s probes in full mode.
rate_probe() { # rate -> prints "pass|fail achieved_rate"
    local rate=$1 n out ns ops lost rec
    n=$((rate * RATE_SECS))
    TD=$WORK/rate-$rate
    mkdir -p "$TD"
    traceed_start core || { echo "fail 0"; return; }
    out=$($WNICE "$BIN/bw_open" "$n" "$BIN/file" "$rate")
    td_wait "$n" 60
    # With rules loaded the detector must have kept up too: it handles
    # what the writer stored, a little after it; once its count settles,
    # any event it skipped is in traceed_detect_dropped_events.
    local dropped=0 seen=-1 now
    if [ -n "${RULES:-}" ]; then
        for _ in $(seq 100); do
            now=$(detect_metric events)
            [ "$now" = "$seen" ] && break
            seen=$now
            sleep 0.3
        done
        dropped=$(detect_metric dropped_events)
    fi
    tracer_stop core
    ns=$(sed -n 's/.*ns=\([0-9]*\).*/\1/p' <<<"$out")
    ops=$(sed -n 's/^ops=\([0-9]*\).*/\1/p' <<<"$out")
    lost=$(sqlite3 "$TD/events.db" "SELECT coalesce(sum(json_extract(args,'\$.count')),0) FROM events_view WHERE kind='lost'")
    rec=$(sqlite3 "$TD/events.db" "SELECT count(*) FROM events_view WHERE comm='bw_open' AND kind='open'")
    local achieved=$((ops * 1000000000 / ns))
    echo "rate $rate achieved $achieved ops $ops stored $rec lost $lost detector_dropped $dropped" >>"$WORK/rate.log"
    if [ "$lost" = 0 ] && [ "$dropped" = 0 ] && [ "$rec" -ge "$ops" ]; then echo "pass $achieved"; else echo "fail $achieved"; fi
    rm -rf "$TD"
}

detect_metric() { # NAME -> traceed_detect_NAME_total of the running daemon (TD)
    curl -s --unix-socket "$TD/api.sock" http://l/metrics |
        awk -v m="traceed_detect_$1_total" '$1 == m { print $2; f = 1 } END { if (!f) print 0 }'
}

rate_search() {
    # Upper bound: what the open loop reaches flat out, untraced, right now.
    local top out lo=0 hi mid res ach best_ach=0
    out=$($WNICE "$BIN/bw_open" 50000 "$BIN/file")
    top=$(($(sed -n 's/^ops=\([0-9]*\).*/\1/p' <<<"$out") * 1000000000 / $(sed -n 's/.*ns=\([0-9]*\).*/\1/p' <<<"$out")))
    hi=$top
    if [ "$QUICK" = 1 ]; then
        # CI: one probe at a modest fixed rate, a smoke test of the path.
        read -r res ach < <(rate_probe 10000)
        echo "$ach quick $res" >"$WORK/rate.tsv"
        return
    fi
    log "zero-loss search: open loop reaches $top/s untraced"
    read -r res ach < <(rate_probe "$hi")
    if [ "$res" = pass ]; then
        echo "$ach workload-bound" >"$WORK/rate.tsv"
        return
    fi
    for _ in $(seq 2 "$RATE_STEPS"); do
        mid=$(((lo + hi) / 2))
        read -r res ach < <(rate_probe "$mid")
        if [ "$res" = pass ]; then lo=$mid best_ach=$ach; else hi=$mid; fi
    done
    echo "$best_ach bounded $lo $hi" >"$WORK/rate.tsv"
}

# ---- report -------------------------------------------------------------
stats() { # reads numbers on stdin; prints "median min max n"
    sort -g | awk '{a[NR]=$1} END { if (NR == 0) { print "- - - 0"; exit }
        m = NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; print m, a[1], a[NR], NR }'
}
# "median min max n" (from stats) as "median<unit> [min-max]".
span() { awk -v u="${2:-}" '{printf "%s%s [%s-%s]", $1, u, $2, $3}' <<<"$1"; }
# Per repetition, a configuration's run of a workload against the untraced
# run of the same repetition: "ratio" (t/u), "added_ms" ((t-u)/1e6) or
# "added_ns" per operation ((t-u)/ops).
paired() { # file cfg wl ratio|added_ms|added_ns
    awk -v c="$2" -v w="$3" -v how="$4" '$3==w && $1=="untraced" {u[$2]=$4} $3==w && $1==c {t[$2]=$4; o[$2]=$5}
        END { for (r in t) if (r in u) {
            if (how == "ratio") printf "%.3f\n", t[r] / u[r]
            else if (how == "added_ms") printf "%.0f\n", (t[r] - u[r]) / 1e6
            else if (o[r] > 0) printf "%.0f\n", (t[r] - u[r]) / o[r] } }' "$1"
}

label() {
    case $1 in
    untraced) echo "untraced" ;;
    core) echo "traceed core" ;;
    fallback) echo "traceed fallback" ;;
    floor) echo "floor (core's hooks, programs return at once)" ;;
    coalesce) echo "traceed core, coalesce = 1s" ;;
    auditd) echo "auditd $(auditctl -v 2>/dev/null | awk '{print $3}')" ;;
    bpftrace) echo "bpftrace $(bpftrace --version 2>/dev/null | awk '{print $2}')" ;;
    esac
}

# BPF run time per program: after the timed repetitions, one more session
# of each BPF tracer with kernel.bpf_stats_enabled on, running every
# workload once, untimed (see bpf_stats_save_off).
bpf_pass() {
    local cfg wl
    sysctl -q kernel.bpf_stats_enabled=1
    for cfg in "${CFGS[@]}"; do
        case $cfg in untraced | auditd) continue ;; esac
        if skipped "$cfg" || ! tracer_start "$cfg" bpf; then continue; fi
        for wl in exec open connect mixed $EXTRA_WL; do
            workload "$wl" >/dev/null
            case $cfg in
            bpftrace) settle_on 30 file_size "$TD/out.txt" ;;
            *) td_drain 60 ;;
            esac
        done
        bpf_snapshot "$cfg"
        tracer_stop "$cfg"
    done
    sysctl -q kernel.bpf_stats_enabled=0
    log "BPF run-time pass done"
}

report() {
    local cfg wl
    if [ -n "$PINNED" ]; then
        echo "Pinned (--pin): $PINNED."
        echo
    fi
    echo "### Workload slowdown and completeness"
    echo
    echo "Slowdown: per repetition, the configuration's wall time over the untraced run of the same"
    echo "repetition (runs interleaved); median [min-max] over $REPS repetitions. Completeness: events"
    echo "recorded / operations done, summed over repetitions (lost = events the tool reported losing)."
    echo
    echo "| configuration | exec loop | open loop | connect loop | mixed | exec compl. | open compl. | connect compl. | mixed compl. | lost (reported) |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for cfg in "${CFGS[@]}"; do
        skipped "$cfg" && { echo "| $(label "$cfg") | skipped: see notes |||||||||"; continue; }
        local row="| $(label "$cfg") |" comp=""
        for wl in exec open connect mixed; do
            if [ "$cfg" = untraced ]; then
                read -r m lo hi n < <(awk -v w=$wl '$1=="untraced" && $3==w {printf "%.3f\n", $5 / ($4 / 1e9) / 1000}' "$RES" | stats)
                row="$row ${m}k ops/s [${lo}-${hi}] |"
                comp="$comp - |"
            else
                read -r m lo hi n < <(paired "$RES" "$cfg" "$wl" ratio | stats)
                row="$row ${m}x [${lo}-${hi}] |"
                if [ "$cfg" = floor ]; then comp="$comp - |"; continue; fi
                comp="$comp $(awk -v c="$cfg" -v w=$wl '$1==c && $3==w {o+=$5; r+=$6} END { if (o) printf "%.2f%%", 100 * r / o; else print "-" }' "$RES") |"
            fi
        done
        local lost
        lost=$(awk -v c="$cfg" '$1==c {s+=$8} END{print s+0}' "$TRC")
        [ "$cfg" = untraced ] && lost="-"
        echo "$row$comp $lost |"
    done
    echo
    echo "### Added time per operation"
    echo
    echo "Per repetition, (configuration's wall time - untraced wall time of the same repetition) / operations;"
    echo "median [min-max] ns per operation. The untraced row is the operation's own time. \"floor\" is"
    echo "traceed core's hooks with programs that return at once: what the attach method alone costs."
    echo
    echo "| configuration | exec loop | open loop | connect loop | mixed |"
    echo "|---|---|---|---|---|"
    for cfg in "${CFGS[@]}"; do
        skipped "$cfg" && continue
        local row="| $(label "$cfg") |"
        for wl in exec open connect mixed; do
            if [ "$cfg" = untraced ]; then
                row="$row $(span "$(awk -v w=$wl '$1=="untraced" && $3==w && $5>0 {printf "%.0f\n", $4 / $5}' "$RES" | stats)" " ns") |"
            else
                row="$row $(span "$(paired "$RES" "$cfg" "$wl" added_ns | stats)") |"
            fi
        done
        echo "$row"
    done
    if [ -s "$WORK/extra.tsv" ]; then
        echo
        echo "### Build and copy workloads"
        echo
        echo "\`make -j2\` of $N_BUILD C files with system headers (bench/workloads/build.sh) and \`tar -c /usr/include | tar -x\`"
        echo "(bench/workloads/tar.sh: three copies of $(($(awk '$3=="tar" {print $5; exit}' "$WORK/extra.tsv") / 3)) entries into tmpfs). Wall time per run, median [min-max];"
        echo "slowdown and added time against the untraced run of the same repetition."
        echo
        echo "| configuration | build: s/run | build: slowdown | build: added ms/run | tar: s/run | tar: slowdown | tar: added ms/run |"
        echo "|---|---|---|---|---|---|---|"
        for cfg in "${CFGS[@]}"; do
            skipped "$cfg" && continue
            local row="| $(label "$cfg") |"
            for wl in build tar; do
                local t r="-" a="-"
                t=$(span "$(awk -v c="$cfg" -v w=$wl '$1==c && $3==w {printf "%.2f\n", $4 / 1e9}' "$WORK/extra.tsv" | stats)")
                if [ "$cfg" != untraced ]; then
                    r=$(span "$(paired "$WORK/extra.tsv" "$cfg" "$wl" ratio | stats)" x)
                    a=$(span "$(paired "$WORK/extra.tsv" "$cfg" "$wl" added_ms | stats)")
                fi
                row="$row $t | $r | $a |"
            done
            echo "$row"
        done
    fi
    echo
    echo "### Cost of the tracer itself"
    echo
    echo "Per session (one tracer start, the four workloads, stop); median [min-max]. Events stored"
    echo "include everything else the machine did meanwhile (all tools trace system-wide)."
    echo
    echo "| configuration | time to ready | peak RSS | CPU time / session | CPU per stored event | bytes on disk / event |"
    echo "|---|---|---|---|---|---|"
    for cfg in "${CFGS[@]}"; do
        [ "$cfg" = untraced ] && continue
        skipped "$cfg" && continue
        local r rss cpu cpe bpe
        r=$(awk -v c="$cfg" '$1==c {print $3}' "$TRC" | stats)
        rss=$(awk -v c="$cfg" '$1==c {printf "%.1f\n", $4/1024}' "$TRC" | stats)
        cpu=$(awk -v c="$cfg" '$1==c {print $5}' "$TRC" | stats)
        cpe=$(awk -v c="$cfg" '$1==c && $6>0 {printf "%.2f\n", $5 * 1e6 / $6}' "$TRC" | stats)
        bpe=$(awk -v c="$cfg" '$1==c && $6>0 {printf "%.0f\n", $7 / $6}' "$TRC" | stats)
        echo "| $(label "$cfg") | $(span "$r" " ms") | $(span "$rss" " MiB") | $(span "$cpu" " s") | $(span "$cpe" " µs") | $(span "$bpe" " B") |"
    done
    if grep -q '^bpftrace' "$TRC"; then
        echo
        echo "bpftrace exec events with an empty filename (of those recorded for the workloads): $(awk '$1=="bpftrace" {s+=$9} END{print s+0}' "$TRC")"
    fi
    if [ -s "$BPF" ]; then
        echo
        echo "### BPF-side cost (kernel.bpf_stats_enabled: run_time_ns / run_cnt, one untimed session per tracer after the timed ones)"
        echo
        echo "| configuration | program | runs | ns per run |"
        echo "|---|---|---|---|"
        awk '{rt[$1" "$2]+=$3; rc[$1" "$2]+=$4} END { for (k in rt) if (rc[k] > 0) { split(k, a, " "); printf "%s %s %d %.0f\n", a[1], a[2], rc[k], rt[k] / rc[k] } }' "$BPF" |
            sort -k1,1 -k3,3nr | awk '++n[$1] <= 12 {printf "| %s | %s | %d | %.0f |\n", $1, $2, $3, $4}'
        echo
        echo "(the 12 programs with the most runs per configuration; names are cut to 15 bytes by the kernel)"
    fi
    if [ -s "$WORK/queries.tsv" ]; then
        echo
        echo "### History queries (wall time of the whole command, output to a pipe)"
        echo
        echo "| tool | events in store | exec events of the last hour | events of one comm (bwtrue) |"
        echo "|---|---|---|---|"
        awk '{k=$1" "$2; t[k, $3]=$4 " ms (" $5 " lines)"; order[k]=NR} END { for (k in order) { split(k, a, " "); cmd = a[1] == "traceed" ? "tracectl" : "ausearch -ts recent / -c"; printf "| %s | %s | %s | %s |\n", cmd, a[2], t[k, "exec_1h"], t[k, "comm"] } }' "$WORK/queries.tsv" | sort -t'|' -k3,3n
    fi
    if [ -s "$WORK/rate.tsv" ]; then
        echo
        echo "### Maximum sustained rate with zero loss (traceed core, paced open loop, ${RATE_SECS} s per probe)"
        echo
        read -r ach kind lo hi <"$WORK/rate.tsv"
        if [ "$kind" = quick ]; then
            echo "Quick mode, one probe at 10000/s: $lo (achieved $ach/s)."
        elif [ "$kind" = workload-bound ]; then
            echo "No loss at the open loop's flat-out rate here: ≥ $ach events/s (the workload, not traceed, is the limit)."
        else
            echo "$ach events/s stored with zero loss (search bracket: $lo passes, $hi fails)."
        fi
        echo
        echo '```'
        cat "$WORK/rate.log"
        echo '```'
    fi
    echo
    echo "Load average at start: $LOAD_START; at end: $LOAD_END. $(nproc) CPUs, kernel $(uname -r)."
    echo "Iterations per run: exec $N_EXEC, open $N_OPEN, connect $N_CONN, mixed $N_MIXED (x23 ops)."
    if [ -s "$NOTES" ]; then
        echo
        echo "Notes:"
        sed 's/^/- /' "$NOTES"
    fi
}

# CI gate: only gross failures. Events missing from traceed that no `lost`
# row accounts for (more than 1 %), or a traceed rung that failed to start.
gate() {
    local bad=0 cfg
    for cfg in core fallback coalesce; do
        [[ ",$CONFIGS," == *,$cfg,* ]] || continue
        if skipped "$cfg"; then
            log "FAIL: traceed $cfg did not run"
            bad=1
            continue
        fi
        local v
        v=$(awk -v c="$cfg" '$1==c {o+=$5; r+=$6} END{print o - r, o}' "$RES")
        local lost
        lost=$(awk -v c="$cfg" '$1==c {s+=$8} END{print s+0}' "$TRC")
        read -r missing ops <<<"$v"
        if [ "$missing" -gt $((ops / 100)) ] && [ "$missing" -gt "$lost" ]; then
            log "FAIL: traceed $cfg missed $missing of $ops events with only $lost counted lost"
            bad=1
        fi
    done
    [ $bad = 0 ] && log "gate: ok"
    return $bad
}
