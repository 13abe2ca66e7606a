-- Shipping the history elsewhere (issue 19: ClickHouse), exactly once.
--
-- store_identity: a random id made once per events.db. With the host label
-- and the event id it is the key of a shipped row: (host, store_id, id).
-- A store that is deleted and recreated starts ids at 1 again, and gets a
-- new store_id, so its rows never replace the old store's.
CREATE TABLE store_identity (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    store_id TEXT    NOT NULL
);
INSERT INTO store_identity (only_row, store_id) VALUES (1, lower(hex(randomblob(16))));

-- export_cursor: per sink ('clickhouse'), the highest event id the
-- destination acknowledged. Written only after the acknowledgement, so a
-- crash re-sends at most the batch in flight (which the destination's key
-- makes harmless). `target` is where it went (informational). Deleting a
-- row ships the whole history again.
CREATE TABLE export_cursor (
    sink       TEXT    PRIMARY KEY,
    target     TEXT    NOT NULL,
    last_id    INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
) WITHOUT ROWID;
