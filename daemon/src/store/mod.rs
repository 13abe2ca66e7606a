//! The event store: SQLite through sqlx. Owns the schema (migrations/) and
//! the read queries the API runs; the writer (writer.rs, on its own
//! connections through raw.rs) is the only thing that inserts. Retention
//! (retention.rs) deletes through its own connection.
//!
//! Repeated strings are interned in `strings` (schema 2); the writer keeps
//! the string -> id map in memory and assigns row ids itself. Filters are
//! served by a block index (schema 4, `event_blocks`): which values occur in
//! each run of 1024 ids, and how often, instead of one B-tree entry per row
//! per column.
//!
//! Files: `schema.rs` (connection options, migrations, open), `query.rs`
//! (the `Query` type and its planner), `writer.rs` and `raw.rs` (the
//! batching writer), `retention.rs`, `export.rs`; unit tests in `tests.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use sqlx::SqlitePool;
use traceed_wire::LiveEvent;

pub(crate) mod bloom;
pub mod clickhouse;
pub mod export;
pub mod live;
mod payload;
pub mod procs;
mod query;
mod raw;
pub mod retention;
pub mod scan;
mod schema;
mod sqlite;
#[cfg(test)]
pub(crate) mod tests;
mod writer;

pub use query::Query;
pub use schema::MIGRATOR;
pub(crate) use schema::{connect_options, BlockCol, BLOCK_SHIFT};
pub use writer::Writer;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("migrating database {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("query: {0}")]
    Query(#[from] sqlx::Error),
    #[error("database {path}: opening the writer's connection: {msg}")]
    Writer { path: PathBuf, msg: String },
    #[error("{0}")]
    WriterThread(String),
    #[error("database {path}: reading the history: {msg}")]
    Scan { path: PathBuf, msg: String },
}

/// The queue between the pipeline and the writer holds at most this many
/// bytes of `heavy_bytes` (besides `[store] queue_capacity` events): 1,024
/// execs with a whole 32 KiB command line.
pub const QUEUE_HEAVY_BYTES: usize = 32 << 20;

/// The writer cuts a batch once its events hold this many bytes of
/// `heavy_bytes` (besides `[store] batch_size` events): a batch is in
/// memory three times over while it is encoded and written (the events,
/// their args text and command lines, SQLite's statement), and up to
/// three batches are on their way at once.
pub const BATCH_HEAVY_BYTES: usize = 2 << 20;

/// What an event holds that may be large: an exec's strings (argv up to
/// `[events] max_argv_bytes`, up to four times that once hostile bytes are
/// escaped). Every other kind's strings are bounded by the kernel's
/// per-string cut and weigh nothing here, so the open path does not pay
/// for the count. The queue and the writer's batches are bounded by this as
/// well as by count: without it, a burst of execs with long command lines
/// held a batch of 4,096 of them, over 800 MiB at 128 KiB each.
pub fn heavy_bytes(ev: &LiveEvent) -> usize {
    let traceed_wire::payload::Payload::Exec(a) = &ev.args else {
        return 0;
    };
    let e = &a.fields;
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    // Each argument is its own allocation: its bytes, the String in the
    // vector (24) and the allocator's header (~16).
    e.argv.iter().map(|a| a.len() + 40).sum::<usize>()
        + opt(&e.filename)
        + opt(&e.interpreter)
        + opt(&e.cwd)
}

/// Whether the writer is storing; shared with the API's status.
#[derive(Default)]
pub struct StoreHealth {
    /// Wall-clock ns when writes started failing; 0 while healthy.
    paused_since: AtomicI64,
    reason: Mutex<String>,
}

impl StoreHealth {
    /// "ok", or why ingest is paused and since when.
    pub fn describe(&self) -> String {
        let since = self.paused_since.load(Relaxed);
        if since == 0 {
            return "ok".into();
        }
        let reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        format!("paused since {}: {reason}", traceed_wire::format_ts(since))
    }

    pub fn is_paused(&self) -> bool {
        self.paused_since.load(Relaxed) != 0
    }

    fn pause(&self, reason: String) -> bool {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.paused_since
            .compare_exchange(0, traceed_wire::now_ns(), Relaxed, Relaxed)
            .is_ok()
    }

    fn resume(&self) -> bool {
        self.paused_since.swap(0, Relaxed) != 0
    }
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    health: Arc<StoreHealth>,
    /// Where recorded history stopped before this start (clean-shutdown
    /// marker, else the last stored event); None on a new database.
    resume_from: Option<i64>,
}

impl Store {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For tests and bench/store_bench.rs, which inspect the file directly.
    #[allow(dead_code)]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn health(&self) -> &StoreHealth {
        &self.health
    }

    /// The `lost` row (source `downtime`) that covers the time traceed was
    /// not recording, from the end of the stored history to now.
    pub fn downtime_event(&self, fidelity: &str) -> Option<LiveEvent> {
        let from = self.resume_from?;
        let now = traceed_wire::now_ns();
        // How many events were missed is unknowable.
        Some(LiveEvent::lost(
            None,
            "downtime",
            from,
            now.max(from),
            fidelity,
        ))
    }

    pub fn db_bytes(&self) -> u64 {
        let mut total = 0;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        total
    }
}
