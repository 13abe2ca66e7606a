//! The `procs` table (migration 6) read back: which process instance a pid
//! named at a time, its ancestry and its descendants. The writer keeps the
//! table (writer.rs, `proc_row`); retention deletes rows with their events.
//! Joins go through instance keys (`parent`), never through pids, so a
//! reused pid never mixes two processes.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use traceed_wire::{proc_key_hex, ProcEntry, Tree};

use super::{Store, StoreError};

/// Longest ancestry followed (pid 1 is normally reached in a few steps).
const MAX_DEPTH: usize = 256;

/// Most descendants a tree or `descendants_of` covers.
pub const MAX_DESCENDANTS: usize = 100_000;

/// Descendants listed in one tree answer (the rest: `truncated`).
pub const TREE_DESCENDANTS: usize = 10_000;

macro_rules! select_procs {
    () => {
        "SELECT p.key, p.pid, p.ppid, p.parent, p.uid, c.s AS comm, x.s AS exe, p.cmdline, \
         p.start_ts, p.exit_ts, p.exit_code, p.signal \
         FROM procs p LEFT JOIN strings c ON c.id = p.comm LEFT JOIN strings x ON x.id = p.exe"
    };
}

fn entry(r: &SqliteRow) -> Result<ProcEntry, sqlx::Error> {
    let u = |n: &str| -> Result<Option<u32>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(n)?.map(|v| v as u32))
    };
    let start: Option<i64> = r.try_get("start_ts")?;
    let exit: Option<i64> = r.try_get("exit_ts")?;
    Ok(ProcEntry {
        proc: proc_key_hex(r.try_get::<i64, _>("key")? as u64),
        pid: r.try_get::<i64, _>("pid")? as u32,
        ppid: u("ppid")?,
        parent: r
            .try_get::<Option<i64>, _>("parent")?
            .map(|k| proc_key_hex(k as u64)),
        uid: u("uid")?,
        comm: r.try_get("comm")?,
        exe: r.try_get("exe")?,
        cmdline: r.try_get("cmdline")?,
        start,
        exit,
        exit_code: r.try_get("exit_code")?,
        signal: r.try_get("signal")?,
        lifetime_s: match (start, exit) {
            (Some(s), Some(e)) if e >= s => Some((e - s) as f64 / 1e9),
            _ => None,
        },
    })
}

async fn by_key(c: &mut SqliteConnection, key: i64) -> Result<Option<ProcEntry>, StoreError> {
    let r = sqlx::query(concat!(select_procs!(), " WHERE p.key = ?"))
        .bind(key)
        .fetch_optional(&mut *c)
        .await?;
    Ok(r.as_ref().map(entry).transpose()?)
}

/// The instance `pid` named at `at`: started by then (or start unknown) and
/// not exited before it, the latest such start. Without `at`: the live one
/// (no exit recorded), else the most recent.
async fn key_at(
    c: &mut SqliteConnection,
    pid: u32,
    at: Option<i64>,
) -> Result<Option<i64>, StoreError> {
    let q = match at {
        Some(_) => {
            "SELECT key FROM procs WHERE pid = ?1 AND (start_ts IS NULL OR start_ts <= ?2) \
             AND (exit_ts IS NULL OR exit_ts >= ?2) \
             ORDER BY start_ts IS NULL, start_ts DESC, last_id DESC LIMIT 1"
        }
        None => {
            "SELECT key FROM procs WHERE pid = ?1 \
             ORDER BY exit_ts IS NOT NULL, start_ts IS NULL, start_ts DESC, last_id DESC LIMIT 1"
        }
    };
    Ok(sqlx::query_scalar(q)
        .bind(i64::from(pid))
        .bind(at)
        .fetch_optional(&mut *c)
        .await?)
}

/// Keys of `key`'s descendants at any depth (not `key` itself), parents
/// before children, at most `cap`; true when there were more.
/// The ancestry of `process` (key `key`) up to pid 1, oldest first, as it
/// was when it started: parent keys where recorded, else the parent pid's
/// instance at the child's start.
/// Instances read by key, kept from one `ancestors_with` to the next: a
/// hunt asks for the ancestry of many processes that share ancestors (a
/// build's children, a service's workers), so each ancestor is read once.
/// Rows only change at exit (exit time, code), which an ancestry shown
/// with a match may lag; the hunt's matches are history anyway.
#[derive(Default)]
pub struct ProcCache(std::collections::HashMap<i64, Option<ProcEntry>>);

/// Entries a ProcCache holds before it starts over.
const PROC_CACHE: usize = 1 << 16;

async fn lookup(
    c: &mut SqliteConnection,
    cache: &mut Option<&mut ProcCache>,
    key: i64,
) -> Result<Option<ProcEntry>, StoreError> {
    let Some(cache) = cache.as_deref_mut() else {
        return by_key(c, key).await;
    };
    if let Some(e) = cache.0.get(&key) {
        return Ok(e.clone());
    }
    let e = by_key(c, key).await?;
    if cache.0.len() >= PROC_CACHE {
        cache.0.clear();
    }
    cache.0.insert(key, e.clone());
    Ok(e)
}

async fn ancestors_of(
    c: &mut SqliteConnection,
    process: &ProcEntry,
    key: i64,
    mut cache: Option<&mut ProcCache>,
) -> Result<Vec<ProcEntry>, StoreError> {
    let mut ancestors = Vec::new();
    let mut cur = process.clone();
    let mut seen = vec![key];
    while ancestors.len() < MAX_DEPTH && cur.pid > 1 {
        let parent = match cur.parent.as_deref().and_then(traceed_wire::parse_proc_key) {
            Some(k) => Some(k as i64),
            None => match cur.ppid {
                Some(pp) => key_at(&mut *c, pp, cur.start).await?,
                None => None,
            },
        };
        let Some(pk) = parent.filter(|k| !seen.contains(k)) else {
            break;
        };
        let Some(p) = lookup(&mut *c, &mut cache, pk).await? else {
            break;
        };
        seen.push(pk);
        ancestors.push(p.clone());
        cur = p;
    }
    ancestors.reverse();
    Ok(ancestors)
}

async fn descendant_keys(
    c: &mut SqliteConnection,
    key: i64,
    cap: usize,
) -> Result<(Vec<i64>, bool), StoreError> {
    // UNION (not UNION ALL) stops at a cycle, should a damaged table hold one.
    let keys: Vec<i64> = sqlx::query_scalar(
        "WITH RECURSIVE d(key) AS (SELECT ?1 UNION SELECT p.key FROM procs p JOIN d ON p.parent = d.key) \
         SELECT key FROM d WHERE key != ?1 LIMIT ?2",
    )
    .bind(key)
    .bind(cap as i64 + 1)
    .fetch_all(&mut *c)
    .await?;
    let more = keys.len() > cap;
    Ok((keys.into_iter().take(cap).collect(), more))
}

impl Store {
    /// The instance key `pid` named at `at` (see key_at).
    pub async fn proc_at(&self, pid: u32, at: Option<i64>) -> Result<Option<i64>, StoreError> {
        let mut c = self.pool.acquire().await?;
        key_at(&mut c, pid, at).await
    }

    /// `key` and all its descendants, at most MAX_DESCENDANTS + 1 keys;
    /// true when that cut some off.
    pub async fn proc_and_descendants(&self, key: i64) -> Result<(Vec<i64>, bool), StoreError> {
        let mut c = self.pool.acquire().await?;
        let (mut keys, more) = descendant_keys(&mut c, key, MAX_DESCENDANTS).await?;
        keys.push(key);
        Ok((keys, more))
    }

    /// The ancestry of instance `key` alone (oldest first, up to the
    /// parent), without the descendants `tree` also reads: what a hunt
    /// match carries. Empty when the key is not stored.
    /// `ancestors`, reading instances through `cache`.
    pub async fn ancestors_with(
        &self,
        key: i64,
        cache: &mut ProcCache,
    ) -> Result<Vec<ProcEntry>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let mut cache = Some(cache);
        let Some(process) = lookup(&mut c, &mut cache, key).await? else {
            return Ok(Vec::new());
        };
        ancestors_of(&mut c, &process, key, cache).await
    }

    pub async fn ancestors(&self, key: i64) -> Result<Vec<ProcEntry>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let Some(process) = by_key(&mut c, key).await? else {
            return Ok(Vec::new());
        };
        ancestors_of(&mut c, &process, key, None).await
    }

    /// The tree of instance `key`: ancestry by parent keys (where a parent
    /// key is unknown, the instance of the ppid alive when the child
    /// started), and descendants. None when the key is not stored.
    pub async fn tree(&self, key: i64) -> Result<Option<Tree>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(process) = by_key(&mut tx, key).await? else {
            return Ok(None);
        };
        let ancestors = ancestors_of(&mut tx, &process, key, None).await?;
        let (keys, mut truncated) = descendant_keys(&mut tx, key, TREE_DESCENDANTS).await?;
        let mut descendants = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut b = sqlx::QueryBuilder::new(concat!(select_procs!(), " WHERE p.key IN ("));
            let mut sep = b.separated(", ");
            for k in chunk {
                sep.push_bind(*k);
            }
            b.push(")");
            let rows = b.build().fetch_all(&mut *tx).await?;
            let mut by: std::collections::HashMap<i64, ProcEntry> =
                std::collections::HashMap::new();
            for r in &rows {
                by.insert(r.try_get::<i64, _>("key")?, entry(r)?);
            }
            // Keep the CTE's order: every parent before its children.
            descendants.extend(chunk.iter().filter_map(|k| by.remove(k)));
        }
        truncated |= descendants.len() < keys.len();
        tx.commit().await?;
        Ok(Some(Tree {
            process,
            ancestors,
            descendants,
            truncated,
            coverage: None,
        }))
    }
}
