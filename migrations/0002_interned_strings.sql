-- Repeated strings (kind, comm, exe, container_id, fidelity) are stored once
-- in `strings` and referenced by integer: a row and its indexes shrink, and
-- an equality filter compares integers. `args` is JSON text, its key list
-- interned too (args_keys).
-- Namespace inode numbers are stored relative to 0xF0000000 (4026531840),
-- where the kernel allocates them: 1-2 bytes instead of 6.
-- There is no index on ts: ids follow arrival order and ts follows ids
-- within a small slack, so a time bound is found by a binary search over
-- the rowid (Store::first_id_at), ~20 B per event cheaper.
-- Forward only: rows of schema 1 are copied over with their ids, and the
-- AUTOINCREMENT high-water mark is carried so ids are never reused.
CREATE TABLE strings (
    id INTEGER PRIMARY KEY,
    s  TEXT    NOT NULL UNIQUE
);

-- Small key/value facts about the store itself (e.g. the clean-shutdown
-- marker that bounds the next downtime row).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE events_v2 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    ts           INTEGER NOT NULL,   -- wall clock, ns since the Unix epoch
    kind         INTEGER NOT NULL,   -- strings.id
    pid          INTEGER,
    tid          INTEGER,
    ppid         INTEGER,
    uid          INTEGER,
    gid          INTEGER,
    comm         INTEGER,            -- strings.id
    ns_pid       INTEGER,
    exe          INTEGER,            -- strings.id
    cgroup_id    INTEGER,
    container_id INTEGER,            -- strings.id
    mnt_ns       INTEGER,            -- inode - 4026531840
    pid_ns       INTEGER,            -- inode - 4026531840
    retval       INTEGER,
    args         TEXT    NOT NULL DEFAULT '{}',
    fidelity     INTEGER NOT NULL,   -- strings.id
    -- strings.id of the JSON array of args' keys; then `args` holds only the
    -- values array, in that order (the keys repeat on every row of a kind).
    -- NULL: `args` is the JSON itself.
    args_keys    INTEGER
);

INSERT INTO strings (s)
    SELECT kind FROM events
    UNION SELECT fidelity FROM events
    UNION SELECT comm FROM events WHERE comm IS NOT NULL
    UNION SELECT exe FROM events WHERE exe IS NOT NULL
    UNION SELECT container_id FROM events WHERE container_id IS NOT NULL;

INSERT INTO events_v2 (id, ts, kind, pid, tid, ppid, uid, gid, comm, ns_pid, exe, cgroup_id,
                       container_id, mnt_ns, pid_ns, retval, args, fidelity)
    SELECT e.id, e.ts,
           (SELECT id FROM strings WHERE s = e.kind),
           e.pid, e.tid, e.ppid, e.uid, e.gid,
           (SELECT id FROM strings WHERE s = e.comm),
           e.ns_pid,
           (SELECT id FROM strings WHERE s = e.exe),
           e.cgroup_id,
           (SELECT id FROM strings WHERE s = e.container_id),
           e.mnt_ns - 4026531840, e.pid_ns - 4026531840, e.retval, e.args,
           (SELECT id FROM strings WHERE s = e.fidelity)
    FROM events e ORDER BY e.id;

DELETE FROM sqlite_sequence WHERE name = 'events_v2';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'events_v2', max(seq) FROM sqlite_sequence WHERE name = 'events' HAVING count(*) > 0;

DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;

-- Each single-column index also orders by rowid, so `col = ? ORDER BY id`
-- (and `col = ? AND id >= ?`) is an index range scan with no sort. Time
-- ranges become id ranges (Store::query).
CREATE INDEX events_kind ON events(kind);
CREATE INDEX events_pid ON events(pid);
CREATE INDEX events_comm ON events(comm);
CREATE INDEX events_uid ON events(uid);
CREATE INDEX events_container ON events(container_id) WHERE container_id IS NOT NULL;
