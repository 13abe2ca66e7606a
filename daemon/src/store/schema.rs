//! The schema: connection options every connection shares, the embedded
//! migrations (migrations/), opening (creating and migrating) the database,
//! and the shape of the block index the writer fills and queries read.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};

use super::{Store, StoreError};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Ids per block of the block index (migration 0004): block = id >> 10.
/// Smaller blocks scan less per hit and index more rows per event.
pub(crate) const BLOCK_SHIFT: u32 = 10;

/// Namespace inode numbers are stored relative to this (migration 2): the
/// writer subtracts it, every reader adds it back.
pub(super) const NS_BASE: i64 = 0xF000_0000;

/// The columns of the block index (migration 0004): `event_blocks.col`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BlockCol {
    Kind = 1,
    Pid = 2,
    Ppid = 3,
    Uid = 4,
    Comm = 5,
    Exe = 6,
    Container = 7,
    /// The process instance key (migration 6); 8..15 are the payload
    /// filters'.
    Proc = 20,
    /// Payload keys (store/payload.rs), which have no column of their own:
    /// a 63-bit hash of each path an event names, of each directory above
    /// it, of its socket address; its port as is.
    Path = 8,
    PathDir = 9,
    Addr = 10,
    Port = 11,
    /// The address's network at the prefix lengths `payload::NET_PREFIXES`
    /// (a CIDR query's key), hashed with the length.
    AddrNet = 12,
    /// A trigram of an exec's command line (argv joined by spaces), its 3
    /// bytes in one integer (bloom::trigrams).
    CmdGram = 13,
}

impl BlockCol {
    /// The `events` column it indexes; None for payload keys, which rows
    /// are re-checked against in Rust (Query::matches).
    pub(super) fn column(self) -> Option<&'static str> {
        Some(match self {
            Self::Kind => "kind",
            Self::Pid => "pid",
            Self::Ppid => "ppid",
            Self::Uid => "uid",
            Self::Comm => "comm",
            Self::Exe => "exe",
            Self::Container => "container_id",
            Self::Proc => "proc",
            Self::Path
            | Self::PathDir
            | Self::Addr
            | Self::Port
            | Self::AddrNet
            | Self::CmdGram => return None,
        })
    }
}

pub(crate) fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // Only takes effect on a new file; older files are converted once in
        // Store::open. Lets retention hand freed pages back to the filesystem.
        .auto_vacuum(SqliteAutoVacuum::Incremental)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .pragma("temp_store", "memory")
        // Truncate the WAL back to this after checkpoints so it cannot keep
        // the size of its largest burst.
        .pragma("journal_size_limit", (16 << 20).to_string())
}

impl Store {
    /// Open (creating and migrating) `<state_dir>/events.db`.
    pub async fn open(state_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_progress(state_dir, &|_| {}).await
    }

    /// `open`, telling `progress` what a long one-time step is doing (the
    /// daemon extends systemd's start timeout with it: indexing a large
    /// store written by an older version takes minutes).
    pub async fn open_with_progress(
        state_dir: &Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir {
            path: state_dir.into(),
            source,
        })?;
        let path = state_dir.join("events.db");
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(connect_options(&path))
            .await
            .map_err(open_err)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.clone(),
                source,
            })?;
        let av: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&pool)
            .await
            .map_err(open_err)?;
        if av != 2 {
            tracing::info!(db = %path.display(), "converting the database to incremental auto-vacuum (one-time VACUUM)");
            let mut c = pool.acquire().await.map_err(open_err)?;
            sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
                .execute(&mut *c)
                .await
                .map_err(open_err)?;
            sqlx::query("VACUUM")
                .execute(&mut *c)
                .await
                .map_err(open_err)?;
        }
        super::payload::backfill(&pool, progress)
            .await
            .map_err(open_err)?;
        let marker: Option<i64> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'clean_stop'")
                .fetch_optional(&pool)
                .await
                .map_err(open_err)?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT ts FROM events ORDER BY id DESC LIMIT 1")
                .fetch_optional(&pool)
                .await
                .map_err(open_err)?;
        // The marker is consumed: a crash after this start must fall back to
        // the last stored event, not to this old stop.
        sqlx::query("DELETE FROM meta WHERE key = 'clean_stop'")
            .execute(&pool)
            .await
            .map_err(open_err)?;
        let resume_from = match (marker, last) {
            (Some(m), Some(l)) => Some(m.max(l)),
            (m, l) => m.or(l),
        };
        Ok(Self {
            pool,
            path,
            health: Arc::default(),
            resume_from,
        })
    }

    /// The migration the database is at: the newest one, since open()
    /// applied them all (it cannot change while the daemon runs).
    pub fn schema_version(&self) -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }
}
