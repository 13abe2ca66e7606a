-- Process identity (issue 15). `proc` is the process instance key the
-- pipeline derives (pipeline/proctable.rs: boot id, tgid, start time): two
-- processes that shared a pid have different keys. Stored as the key's 64
-- bits in a signed integer; the API shows 16 hex digits. Indexed through
-- event_blocks (col 20), not a per-row index.
ALTER TABLE events ADD COLUMN proc INTEGER;

-- One row per process instance, kept by the writer from fork, exec and exit
-- events and the first event of each instance it meets. `parent` is the
-- parent's key; ppid alone would join a reused pid. exe and comm are
-- strings.id; cmdline is the last exec's argv joined by spaces. start_ts
-- and exit_ts are wall-clock ns (start: the fork, or /proc starttime for a
-- process older than the daemon). last_id is the newest event id that
-- touched the row: retention deletes rows whose last_id it deleted.
CREATE TABLE procs (
    key       INTEGER PRIMARY KEY,
    pid       INTEGER NOT NULL,
    ppid      INTEGER,
    parent    INTEGER,
    uid       INTEGER,
    start_ts  INTEGER,
    exit_ts   INTEGER,
    exit_code INTEGER,
    signal    INTEGER,
    exe       INTEGER,
    comm      INTEGER,
    cmdline   TEXT,
    last_id   INTEGER NOT NULL
);
CREATE INDEX procs_pid ON procs(pid, start_ts);
CREATE INDEX procs_parent ON procs(parent);
CREATE INDEX procs_last_id ON procs(last_id);
