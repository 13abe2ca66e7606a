#!/usr/bin/env bash
# What SQLite itself costs on this machine for traceed's row shape: 1M rows
# into the events table of migrations/ (schema 2) in one INSERT ... SELECT,
# with no secondary index, with each of the API's indexes alone, and with all
# of them. No Rust, no daemon: the ceiling any writer on this schema has.
#   bench/sqlite_ceiling.sh [ROWS]      (needs the sqlite3 CLI: apt-get install sqlite3)
set -euo pipefail
ROWS=${1:-1000000}
command -v sqlite3 >/dev/null || { echo "sqlite3 missing: apt-get install sqlite3" >&2; exit 1; }
DIR=$(mktemp -d /tmp/traceed-sqlite-ceiling.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
# Same columns and types as migrations/0002; values spread like the store
# bench's: 17 kinds, 400 pids, 300 comms, 5 uids, a third in 10 containers.
TABLE="CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL,
  kind INTEGER NOT NULL, pid INTEGER, tid INTEGER, ppid INTEGER, uid INTEGER, gid INTEGER,
  comm INTEGER, ns_pid INTEGER, exe INTEGER, cgroup_id INTEGER, container_id INTEGER,
  mnt_ns INTEGER, pid_ns INTEGER, retval INTEGER, args TEXT NOT NULL DEFAULT '{}',
  fidelity INTEGER NOT NULL, args_keys INTEGER);"
FILL="WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $ROWS)
INSERT INTO events (ts, kind, pid, tid, ppid, uid, gid, comm, ns_pid, exe, cgroup_id,
  container_id, mnt_ns, pid_ns, retval, args, fidelity, args_keys)
SELECT x * 1000, x % 17, 1000 + (x * 7919) % 400, 1000 + (x * 7919) % 400, 1, (x % 5) * 1000, 0,
  (x * 31) % 300, 5, (x * 31) % 300 + 400, 77, CASE WHEN x % 3 = 0 THEN x % 10 END, 1, 2, 0,
  '[\"/usr/lib/x86_64-linux-gnu/libc.so.6\",524288,0]', 1, 3 FROM c;"
run() { # label index-DDL
	rm -f "$DIR"/db*
	# .timer prints "Run Time: real R user U sys S" per statement; the fill
	# is the one between BEGIN and COMMIT.
	t=$(printf '%s\n' "PRAGMA journal_mode=WAL;" "PRAGMA synchronous=NORMAL;" "$TABLE" "$2" \
		"BEGIN;" ".timer on" "$FILL" ".timer off" "COMMIT;" | sqlite3 "$DIR/db" | grep '^Run Time' | head -n 1)
	user=$(echo "$t" | awk '{ print $6 }')
	printf '| %s | %s | %.0f |\n' "$1" "$user" "$(awk -v r="$ROWS" -v u="$user" 'BEGIN { print r / u }')"
}
echo "SQLite $(sqlite3 --version | cut -d' ' -f1), $ROWS rows, CPU seconds of the INSERT (user)"
echo
echo "| indexes | user s | rows per CPU-second |"
echo "|---|---:|---:|"
run "none" ""
for c in kind pid comm uid; do run "$c only" "CREATE INDEX i_$c ON events($c);"; done
run "container only (partial)" "CREATE INDEX i_ct ON events(container_id) WHERE container_id IS NOT NULL;"
run "all five (traceed's schemas 2-3; schema 4 has a block index instead)" "CREATE INDEX a ON events(kind); CREATE INDEX b ON events(pid);
CREATE INDEX c ON events(comm); CREATE INDEX d ON events(uid);
CREATE INDEX e ON events(container_id) WHERE container_id IS NOT NULL;"
