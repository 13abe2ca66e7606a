-- A block index replaces the per-row secondary indexes. Ids are assigned in
-- arrival order, so a block (1024 consecutive ids, id >> 10) is a contiguous
-- rowid range of `events`; `event_blocks` holds one row per (column, value)
-- that occurs in a block. A filter reads the value's blocks in order and
-- scans only those rowid ranges, re-checking the column.
--
-- Why: with five per-row indexes every event cost five random B-tree inserts
-- and SQLite managed ~105k rows per CPU-second; a process's events arrive in
-- runs, so a block holds a few dozen distinct values per column and the
-- index costs a small fraction of a row per event (BENCHMARKS.md, Store).
-- More columns are indexed than before (ppid, exe) because it is cheap.
--
-- col: 1 kind, 2 pid, 3 ppid, 4 uid, 5 comm, 6 exe, 7 container_id
-- (Store's BlockCol). value: the column's stored integer (strings.id for the
-- interned ones). NULLs are not indexed.
CREATE TABLE event_blocks (
    col   INTEGER NOT NULL,
    value INTEGER NOT NULL,
    block INTEGER NOT NULL,
    PRIMARY KEY (col, value, block)
) WITHOUT ROWID;

-- Blocks only grow at the end, so this index is an append; retention drops
-- the blocks wholly below the oldest kept id through it.
CREATE INDEX event_blocks_block ON event_blocks(block);

INSERT OR IGNORE INTO event_blocks (col, value, block)
    SELECT 1, kind, id >> 10 FROM events
    UNION ALL SELECT 2, pid, id >> 10 FROM events WHERE pid IS NOT NULL
    UNION ALL SELECT 3, ppid, id >> 10 FROM events WHERE ppid IS NOT NULL
    UNION ALL SELECT 4, uid, id >> 10 FROM events WHERE uid IS NOT NULL
    UNION ALL SELECT 5, comm, id >> 10 FROM events WHERE comm IS NOT NULL
    UNION ALL SELECT 6, exe, id >> 10 FROM events WHERE exe IS NOT NULL
    UNION ALL SELECT 7, container_id, id >> 10 FROM events WHERE container_id IS NOT NULL;

DROP INDEX events_kind;
DROP INDEX events_pid;
DROP INDEX events_comm;
DROP INDEX events_uid;
DROP INDEX events_container;
