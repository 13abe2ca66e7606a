-- One row per event. Common fields are columns; kind-specific fields are a
-- JSON object in `args`. AUTOINCREMENT so ids are never reused after
-- retention deletes the newest rows: ids are the API's paging cursor.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    ts           INTEGER NOT NULL,   -- wall clock, ns since the Unix epoch
    kind         TEXT    NOT NULL,
    pid          INTEGER,
    tid          INTEGER,
    ppid         INTEGER,
    uid          INTEGER,
    gid          INTEGER,
    comm         TEXT,
    ns_pid       INTEGER,
    exe          TEXT,
    cgroup_id    INTEGER,
    container_id TEXT,
    mnt_ns       INTEGER,
    pid_ns       INTEGER,
    retval       INTEGER,
    args         TEXT    NOT NULL DEFAULT '{}',
    fidelity     TEXT    NOT NULL
);

-- Each single-column index also orders by rowid, so `col = ? ORDER BY id`
-- is an index range scan with no sort.
CREATE INDEX events_ts ON events(ts);
CREATE INDEX events_kind ON events(kind);
CREATE INDEX events_pid ON events(pid);
CREATE INDEX events_comm ON events(comm);
CREATE INDEX events_uid ON events(uid);
CREATE INDEX events_container ON events(container_id) WHERE container_id IS NOT NULL;
