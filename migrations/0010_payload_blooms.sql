-- Paths, directories and socket addresses leave `event_blocks` for a Bloom
-- filter per block (store/bloom.rs), split into 8 slices so that a lookup
-- reads one: they were most of its rows and ~28 B per event; a 2 kB filter
-- per 1024 events is ~2 B. Ports keep their rows (a few per block).
--
-- The filters are built in Rust (the keys are hashes of args), so this
-- only drops the old rows and asks for the one-time backfill at open
-- (store/payload.rs), as when payload keys were first added.
CREATE TABLE block_blooms (
    slice INTEGER NOT NULL,
    block INTEGER NOT NULL,
    bits  BLOB NOT NULL,
    PRIMARY KEY (slice, block)
) WITHOUT ROWID;
DELETE FROM event_blocks WHERE col IN (8, 9, 10);
DELETE FROM meta WHERE key = 'payload_index';
