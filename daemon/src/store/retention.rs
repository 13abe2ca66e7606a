//! Retention: keeps the store within `[store] max_age`, `max_bytes` and
//! `min_free_bytes`. Runs as its own task on its own connection and deletes
//! the oldest rows (lowest ids) in small transactions, so the writer never
//! waits long for the lock and ingest never stalls. Freed pages stay in the
//! file for reuse (the file stops growing at the size budget); only when the
//! filesystem runs short are they handed back (incremental vacuum).
//!
//! With `[export.clickhouse]` a delete also runs the sink's accounting
//! (`clickhouse::ExportGuard`): unshipped events are deleted all the same,
//! and recorded as lost (source `export`) with the cursor moved past them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, SqliteConnection};
use tokio::sync::watch;

use crate::store::clickhouse::ExportGuard;
use crate::store::{connect_options, Store, StoreError};

/// Rows per DELETE transaction: a few ms with the block index, short enough
/// that the writer's next commit waits at most that long.
pub const DELETE_BATCH: i64 = 5_000;
/// Pause between delete transactions so the writer gets the lock.
const YIELD: Duration = Duration::from_millis(5);
/// Once over budget, delete down to this fraction of it, so retention runs
/// in bursts rather than on every check.
const HYSTERESIS: f64 = 0.9;

#[derive(Debug, Clone)]
pub struct Policy {
    pub max_age: Duration,
    pub max_bytes: u64,
    pub min_free_bytes: u64,
    pub interval: Duration,
}

/// What one pass removed, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub by_age: u64,
    pub by_size: u64,
    pub by_free_space: u64,
}

pub struct Retention {
    conn: SqliteConnection,
    store: Store,
    dir: PathBuf,
    policy: Policy,
    export: Option<Arc<ExportGuard>>,
    /// The timestamp of the lowest id stored, as of the last pass that
    /// looked (None: not looked yet, the store was empty, or rows went
    /// since). Ids only grow and only retention deletes, so until it falls
    /// behind the age cutoff the age limit has nothing to delete, and the
    /// pass skips the time-to-id search (~20 queries, each a round trip to
    /// sqlx's connection thread) that made it a quiet daemon's largest cost.
    oldest: Option<i64>,
}

impl Retention {
    pub async fn new(store: &Store, policy: Policy) -> Result<Self, StoreError> {
        // No automatic checkpoints from here: the writer schedules them, and
        // one started by a delete's commit would make the writer's own get
        // SQLITE_BUSY, so the WAL could not start over.
        let options = connect_options(store.path()).pragma("wal_autocheckpoint", "0");
        let conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(|source| StoreError::Open {
                path: store.path().into(),
                source,
            })?;
        let dir = store
            .path()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| ".".into());
        Ok(Self {
            conn,
            store: store.clone(),
            dir,
            policy,
            export: None,
            oldest: None,
        })
    }

    /// Account deletes of events the ClickHouse sink has not shipped.
    pub fn with_export(mut self, guard: Arc<ExportGuard>) -> Self {
        self.export = Some(guard);
        self
    }

    /// Check every `interval` until `stop` turns true. Errors are logged,
    /// never fatal: retention failing must not take ingest down.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.policy.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut passes = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            // A stop ends a pass under way too: shutdown must not wait for
            // a long delete run (the writer has flushed by then).
            let pass = tokio::select! {
                p = self.pass() => p,
                _ = stop.changed() => return,
            };
            match pass {
                Ok(p) if p != Pass::default() => {
                    tracing::info!(
                        by_age = p.by_age,
                        by_size = p.by_size,
                        by_free_space = p.by_free_space,
                        "retention deleted the oldest events"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed; retrying at the next interval")
                }
            }
            passes += 1;
            // Keep the planner's statistics current (cheap when nothing changed).
            if passes.is_multiple_of(3600) {
                let _ = sqlx::query("PRAGMA optimize").execute(&mut self.conn).await;
            }
        }
    }

    /// One check of every limit.
    pub async fn pass(&mut self) -> Result<Pass, StoreError> {
        self.pass_at(traceed_wire::now_ns()).await
    }

    /// `pass` as if the clock said `now` (ns since the epoch).
    pub(crate) async fn pass_at(&mut self, now: i64) -> Result<Pass, StoreError> {
        let mut p = Pass::default();
        let cutoff =
            now.saturating_sub(i64::try_from(self.policy.max_age.as_nanos()).unwrap_or(i64::MAX));
        let age_due = self.oldest.is_none_or(|ts| ts < cutoff);
        if age_due {
            // Everything before the first id at or after the cutoff is too old.
            let hi = match self.store.first_id_at(cutoff).await? {
                Some(id) => id,
                None => self.max_id().await? + 1,
            };
            loop {
                let n = self.delete_oldest(Some(hi)).await?;
                if n == 0 {
                    break;
                }
                p.by_age += n;
                tokio::time::sleep(YIELD).await;
            }
        }
        // The files bound the pages in use (a page not yet in the database
        // file is a frame in the WAL), so a store whose files fit asks
        // SQLite nothing.
        if self.store.db_bytes() > self.policy.max_bytes
            && self.used_bytes().await? > self.policy.max_bytes
        {
            let target = (self.policy.max_bytes as f64 * HYSTERESIS) as u64;
            while self.used_bytes().await? > target {
                let n = self.delete_oldest(None).await?;
                if n == 0 {
                    break;
                }
                p.by_size += n;
                tokio::time::sleep(YIELD).await;
            }
        }
        if self.policy.min_free_bytes > 0 && self.free_bytes() < self.policy.min_free_bytes {
            // Deleting rows only helps once their pages leave the file.
            loop {
                sqlx::query("PRAGMA incremental_vacuum")
                    .execute(&mut self.conn)
                    .await?;
                let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut self.conn)
                    .await;
                if self.free_bytes() >= self.policy.min_free_bytes {
                    break;
                }
                let n = self.delete_oldest(None).await?;
                if n == 0 {
                    break;
                }
                p.by_free_space += n;
                tokio::time::sleep(YIELD).await;
            }
            if self.free_bytes() < self.policy.min_free_bytes {
                tracing::warn!(
                    dir = %self.dir.display(),
                    free = self.free_bytes(),
                    min_free_bytes = self.policy.min_free_bytes,
                    "the state filesystem stays below min_free_bytes with no events left to delete"
                );
            }
        }
        if age_due || p != Pass::default() {
            self.oldest = self.oldest_ts().await?;
        }
        Ok(p)
    }

    async fn oldest_ts(&mut self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT ts FROM events ORDER BY id LIMIT 1")
                .fetch_optional(&mut self.conn)
                .await?,
        )
    }

    async fn max_id(&mut self) -> Result<i64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM events")
            .fetch_one(&mut self.conn)
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Delete up to DELETE_BATCH of the oldest rows, below `below` if given.
    async fn delete_oldest(&mut self, below: Option<i64>) -> Result<u64, StoreError> {
        let Some(lo): Option<i64> = sqlx::query_scalar("SELECT min(id) FROM events")
            .fetch_one(&mut self.conn)
            .await?
        else {
            return Ok(0);
        };
        let mut hi = lo + DELETE_BATCH;
        if let Some(b) = below {
            hi = hi.min(b);
        }
        if hi <= lo {
            return Ok(0);
        }
        let Some(guard) = self.export.clone() else {
            return delete_below(&mut self.conn, hi).await;
        };
        // One write transaction: the unshipped rows counted are the rows
        // deleted, and the cursor moves past them atomically.
        let _reads = guard.lock_reads().await;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await?;
        let done = async {
            let unshipped = guard.unshipped_below(&mut self.conn, hi).await?;
            let n = delete_below(&mut self.conn, hi).await?;
            let lost = guard.skip(&mut self.conn, &unshipped).await?;
            sqlx::query("COMMIT").execute(&mut self.conn).await?;
            Ok::<_, StoreError>((n, unshipped, lost))
        }
        .await;
        match done {
            Ok((n, unshipped, lost)) => {
                guard.deleted(&unshipped, lost);
                Ok(n)
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                Err(e)
            }
        }
    }

    /// Bytes of the database file in use: pages not on the freelist. The
    /// WAL is left out: it is bounded apart (journal_size_limit) and grows
    /// with the deletes themselves.
    async fn used_bytes(&mut self) -> Result<u64, StoreError> {
        let pragma = |name: &'static str| sqlx::query_scalar::<_, i64>(name);
        let pages = pragma("PRAGMA page_count")
            .fetch_one(&mut self.conn)
            .await?;
        let free = pragma("PRAGMA freelist_count")
            .fetch_one(&mut self.conn)
            .await?;
        let size = pragma("PRAGMA page_size").fetch_one(&mut self.conn).await?;
        Ok(((pages - free).max(0) * size) as u64)
    }

    fn free_bytes(&self) -> u64 {
        free_bytes(&self.dir).unwrap_or(u64::MAX)
    }
}

/// Delete the rows below id `hi`.
async fn delete_below(conn: &mut SqliteConnection, hi: i64) -> Result<u64, StoreError> {
    let r = sqlx::query("DELETE FROM events WHERE id < ?")
        .bind(hi)
        .execute(&mut *conn)
        .await?;
    // Alerts go with their events, not before (issue 16).
    sqlx::query("DELETE FROM alerts WHERE event_id < ?")
        .bind(hi)
        .execute(&mut *conn)
        .await?;
    // Block-index rows of blocks now wholly deleted; the block holding
    // the oldest kept id stays. A stale row would only cost a probe.
    sqlx::query("DELETE FROM event_blocks WHERE block < ?")
        .bind(hi >> crate::store::BLOCK_SHIFT)
        .execute(&mut *conn)
        .await?;
    // One range per slice: the primary key starts with the slice.
    for slice in 0..crate::store::bloom::SLICES as i64 {
        sqlx::query("DELETE FROM block_blooms WHERE slice = ? AND block < ?")
            .bind(slice)
            .bind(hi >> crate::store::BLOCK_SHIFT)
            .execute(&mut *conn)
            .await?;
    }
    // Process rows go with the newest event that touched them (their
    // fork, exec, exit or first sight), through procs_last_id.
    sqlx::query("DELETE FROM procs WHERE last_id < ?")
        .bind(hi)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected())
}

/// Space available to unprivileged writers on the filesystem holding `dir`.
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid C string and a pointer to writable statvfs storage.
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let s = unsafe { s.assume_init() };
    Some(s.f_bavail * s.f_frsize)
}
