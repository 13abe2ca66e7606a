#!/usr/bin/env bash
# ClickHouse shipping benchmark ([export.clickhouse], issue 19): how fast
# traceed ships a pre-filled store into a clickhouse-server on localhost,
# traceed's CPU per shipped event, and stored bytes per event in ClickHouse
# next to SQLite. Prints one line per repetition and a summary.
#   bench/ship.sh [--events N] [--reps N] [--batch N] [--dir DIR] [--perf FILE]
# --perf FILE: `perf record -g` traceed during the last repetition's
# shipping into FILE (its CPU figure then includes perf's overhead).
# Needs root (the daemon loads its eBPF programs), clickhouse-server,
# curl and python3. Not part of `make test`.
#
# Per repetition: the target table is dropped, the store's export cursor
# deleted, traceed started (its scope matches no process, so it records
# nothing: a shipping-only phase); while the table is missing every insert
# is a 404, so the daemon's idle CPU (with its retries) is measured first
# over IDLE_S seconds; then the table is created, and from the first batch
# in ClickHouse to the last (polling ClickHouse's count(), never traceed's
# API, whose answers would cost traceed CPU at a rate that varies with the
# load) the wall time and traceed's CPU time (utime + stime from /proc)
# are taken. CPU per event = (CPU during shipping - idle rate x duration) /
# events shipped in that window.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=1000000
REPS=3
BATCH=50000
IDLE_S=5
PERF_OUT=
WORK=${TMPDIR:-/tmp}/traceed-ship-bench
while [ $# -gt 0 ]; do
  case $1 in
    --events) EVENTS=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --batch) BATCH=$2; shift ;;
    --dir) WORK=$2; shift ;;
    --perf) PERF_OUT=$2; shift ;;
    *) echo "usage: bench/ship.sh [--events N] [--reps N] [--batch N] [--dir DIR] [--perf FILE]" >&2; exit 1 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench/ship.sh: run as root" >&2; exit 1; }
CH=$(command -v clickhouse-server || true)
[ -n "$CH" ] || { echo "bench/ship.sh: apt-get install clickhouse-server clickhouse-client" >&2; exit 1; }
TRACEED=${TRACEED:-target/release/traceed}
[ -x "$TRACEED" ] || cargo build --release --locked --bin traceed >&2
cargo build --release --locked --bin traceed-store-bench >&2

rm -rf "$WORK"; mkdir -p "$WORK/ch/log" "$WORK/state"
CH_PID=; TR_PID=
cleanup() {
  [ -n "$TR_PID" ] && kill "$TR_PID" 2>/dev/null && wait "$TR_PID" 2>/dev/null
  [ -n "$CH_PID" ] && kill "$CH_PID" 2>/dev/null && wait "$CH_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(free_port); TCP=$(free_port)
cat >"$WORK/ch/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$WORK/ch/log/server.log</log><errorlog>$WORK/ch/log/err.log</errorlog></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$HTTP</http_port>
  <tcp_port>$TCP</tcp_port>
  <path>$WORK/ch/data/</path>
  <tmp_path>$WORK/ch/tmp/</tmp_path>
  <users_config>$WORK/ch/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>67108864</mark_cache_size>
</yandex>
EOF
cat >"$WORK/ch/users.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
EOF
"$CH" --config-file="$WORK/ch/config.xml" >"$WORK/ch/log/stdout" 2>&1 &
CH_PID=$!
q() { curl -sS --fail-with-body "http://127.0.0.1:$HTTP/" --data-binary "$1"; }
for _ in $(seq 100); do q 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
VERSION=$(q 'SELECT version()')

# The DDL statements of `traceed export clickhouse-schema`, one per line.
ddl() {
  "$TRACEED" --config /dev/null export clickhouse-schema | grep -v '^ *--' | tr '\n' ' ' | tr ';' '\n' | sed 's/^ *//' | grep -v '^$'
}
create_tables() { ddl | while IFS= read -r stmt; do q "$stmt" >/dev/null; done; }

echo "prefilling $EVENTS events (bench/store_bench.rs generator, the daemon's own writer)" >&2
./target/release/traceed-store-bench --dir "$WORK/state" --events "$EVENTS" --runs 1 --span-hours 1 >/dev/null
DB="$WORK/state/events.db"
sqlite() { python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); r=c.execute(sys.argv[2]).fetchall(); c.commit(); print(*(x[0] for x in r))' "$DB" "$1"; }
ROWS=$(sqlite 'SELECT count(*) FROM events')
MAXID=$(sqlite 'SELECT max(id) FROM events')
printf '[scope.include]\ncomm = ["no-such-comm-xq"]\n[export.clickhouse]\nurl = "http://127.0.0.1:%s"\nbatch_size = %s\ninterval = "100ms"\nhost = "bench"\n' \
  "$HTTP" "$BATCH" >"$WORK/traceed.toml"

TCK=$(getconf CLK_TCK)
cpu_s() { awk -v t="$TCK" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }
now() { date +%s.%N; }
status() { curl -sS --unix-socket "$WORK/api.sock" http://x/v1/status; }
# A field of status' export object (its names are unique in status).
field() { grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }

echo "ClickHouse $VERSION on 127.0.0.1:$HTTP; $ROWS events (ids to $MAXID); batch $BATCH; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
RESULTS=()
for rep in $(seq "$REPS"); do
  q 'DROP TABLE IF EXISTS traceed.events' >/dev/null
  sqlite "DELETE FROM export_cursor" >/dev/null
  "$TRACEED" --config "$WORK/traceed.toml" --state-dir "$WORK/state" --socket "$WORK/api.sock" >"$WORK/traceed.log" 2>&1 &
  TR_PID=$!
  for _ in $(seq 300); do status >/dev/null 2>&1 && break; sleep 0.1; done
  status >/dev/null
  # Idle (table missing: 404s with backoff); nothing polls traceed from
  # here to the end of the repetition, so what is subtracted is only what
  # the daemon does by itself.
  c0=$(cpu_s $TR_PID); t0=$(now)
  sleep "$IDLE_S"
  idle_rate=$(python3 -c "print(($(cpu_s $TR_PID) - $c0) / ($(now) - $t0))")
  # Every row of the store: the prefill and each start's downtime row.
  target=$(sqlite 'SELECT count(*) FROM events')
  PERF_PID=
  if [ -n "$PERF_OUT" ] && [ "$rep" = "$REPS" ]; then
    perf record -g -o "$PERF_OUT" -p "$TR_PID" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  create_tables
  # From the first acknowledged batch to the last, seen in ClickHouse (a
  # count() there is metadata, and costs traceed nothing).
  count() { q 'SELECT count() FROM traceed.events'; }
  while [ "$(count)" = 0 ]; do sleep 0.005; done
  c1=$(cpu_s $TR_PID); t1=$(now); first=$(count); k1=$(cpu_s $CH_PID)
  while [ "$(count)" -lt "$target" ]; do sleep 0.005; done
  c2=$(cpu_s $TR_PID); t2=$(now); k2=$(cpu_s $CH_PID)
  if [ -n "$PERF_PID" ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; fi
  # And the daemon agrees: cursor at the newest id, no lag.
  st=$(status)
  [ "$(field cursor <<<"$st")" -ge "$MAXID" ] && [ "$(field lag_events <<<"$st")" = 0 ] ||
    { echo "rep $rep: ClickHouse has every row but status says $st" >&2; exit 1; }
  line=$(python3 - "$first" "$target" "$c1" "$c2" "$t1" "$t2" "$idle_rate" "$k1" "$k2" <<'EOF'
import sys
first, target = (int(x) for x in sys.argv[1:3])
c1, c2, t1, t2, idle, k1, k2 = (float(x) for x in sys.argv[3:10])
n = target - first
wall = t2 - t1
if n <= 0:
    sys.exit(f"the whole store shipped before the first poll saw a batch: use more --events")
cpu = (c2 - c1) - idle * wall
print(f"{n / wall:.0f} {cpu / n * 1e6:.2f} {n} {wall:.2f} {c2 - c1:.2f} {idle * 100:.2f} {(k2 - k1) / n * 1e6:.2f}")
EOF
)
  read -r rate us n wall cpu idlepct chus <<<"$line"
  echo "rep $rep: shipped $n events in ${wall}s = $rate events/s; traceed CPU ${cpu}s (idle ${idlepct}% of a core subtracted) = $us µs/event; clickhouse-server CPU $chus µs/event"
  RESULTS+=("$rate $us")
  kill "$TR_PID"; wait "$TR_PID" || true; TR_PID=
done

q 'OPTIMIZE TABLE traceed.events FINAL' >/dev/null
CH_ROWS=$(q "SELECT sum(rows) FROM system.parts WHERE active AND database = 'traceed' AND table = 'events'")
CH_BYTES=$(q "SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = 'traceed' AND table = 'events'")
CH_COUNT=$(q "SELECT count() FROM traceed.events FINAL")
ROWS=$(sqlite 'SELECT count(*) FROM events')
SQLITE_BYTES=$(stat -c %s "$DB")
python3 - "$CH_ROWS" "$CH_BYTES" "$CH_COUNT" "$ROWS" "$SQLITE_BYTES" "${RESULTS[@]}" <<'EOF'
import sys
ch_rows, ch_bytes, ch_count, rows, sq_bytes = (int(x) for x in sys.argv[1:6])
rates = [float(r.split()[0]) for r in sys.argv[6:]]
us = [float(r.split()[1]) for r in sys.argv[6:]]
assert ch_count == rows, f"ClickHouse has {ch_count} events (FINAL), the store {rows}"
print(f"shipped events/s: min {min(rates):.0f} max {max(rates):.0f}")
print(f"traceed CPU per shipped event: min {min(us):.2f} max {max(us):.2f} µs")
print(f"ClickHouse: {ch_bytes} bytes on disk for {ch_rows} rows = {ch_bytes / ch_rows:.1f} bytes/event (after OPTIMIZE FINAL)")
print(f"SQLite: {sq_bytes} bytes for {rows} rows = {sq_bytes / rows:.1f} bytes/event (events.db)")
EOF
