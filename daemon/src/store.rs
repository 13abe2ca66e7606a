//! The event store: SQLite through sqlx. Owns the schema (migrations/), the
//! single writer task that batches rows into transactions, and the read
//! queries the API runs. Nothing else touches the database file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{broadcast, mpsc};
use traceed_wire::Event;

use crate::metrics::Counters;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How far ingest order may lag wall-clock order (CPU ring jitter, decode
/// delays). Time bounds are turned into id bounds with this much slack, then
/// applied exactly on `ts`.
const TS_SLACK_NS: i64 = 2_000_000_000;

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
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

/// A validated query; the API builds it from request parameters.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub kinds: Vec<String>,
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub container: Option<String>,
    pub fidelity: Option<String>,
    /// Rows with id strictly after (asc) or before (desc) this one.
    pub after_id: Option<i64>,
    pub desc: bool,
    pub limit: u32,
}

const COLUMNS: &str = "id, ts, kind, pid, tid, ppid, uid, gid, comm, ns_pid, exe, cgroup_id, \
                       container_id, mnt_ns, pid_ns, retval, args, fidelity";

fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .pragma("temp_store", "memory")
}

impl Store {
    /// Open (creating and migrating) `<state_dir>/events.db`.
    pub async fn open(state_dir: &Path) -> Result<Self, StoreError> {
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
        Ok(Self { pool, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
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

    pub async fn oldest_ts(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT min(ts) FROM events")
            .fetch_one(&self.pool)
            .await?)
    }

    /// First id whose ts is >= `ts` (by the ts index), if any.
    async fn first_id_at(&self, ts: i64) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM events WHERE ts >= ? ORDER BY ts LIMIT 1")
                .bind(ts)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Run `q`, returning at most `q.limit` events and whether more follow.
    pub async fn query(&self, q: &Query) -> Result<(Vec<Event>, bool), StoreError> {
        let mut b: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM events WHERE 1=1"));
        if let Some(since) = q.since {
            match self.first_id_at(since.saturating_sub(TS_SLACK_NS)).await? {
                Some(lo) => {
                    b.push(" AND id >= ").push_bind(lo);
                }
                None => return Ok((Vec::new(), false)),
            }
            b.push(" AND ts >= ").push_bind(since);
        }
        if let Some(until) = q.until {
            if let Some(hi) = self.first_id_at(until.saturating_add(TS_SLACK_NS)).await? {
                b.push(" AND id < ").push_bind(hi);
            }
            b.push(" AND ts < ").push_bind(until);
        }
        if !q.kinds.is_empty() {
            b.push(" AND kind IN (");
            let mut sep = b.separated(", ");
            for k in &q.kinds {
                sep.push_bind(k.clone());
            }
            b.push(")");
        }
        if let Some(v) = q.pid {
            b.push(" AND pid = ").push_bind(v as i64);
        }
        if let Some(v) = q.ppid {
            b.push(" AND ppid = ").push_bind(v as i64);
        }
        if let Some(v) = q.uid {
            b.push(" AND uid = ").push_bind(v as i64);
        }
        if let Some(v) = &q.comm {
            b.push(" AND comm = ").push_bind(v.clone());
        }
        if let Some(v) = &q.exe {
            b.push(" AND exe = ").push_bind(v.clone());
        }
        if let Some(v) = &q.container {
            // Users paste short ids (12 chars) as docker shows them.
            b.push(" AND container_id LIKE ")
                .push_bind(format!("{}%", v.replace(['%', '_'], "")));
        }
        if let Some(v) = &q.fidelity {
            b.push(" AND fidelity = ").push_bind(v.clone());
        }
        if let Some(c) = q.after_id {
            b.push(if q.desc { " AND id < " } else { " AND id > " })
                .push_bind(c);
        }
        b.push(if q.desc {
            " ORDER BY id DESC"
        } else {
            " ORDER BY id"
        });
        b.push(" LIMIT ").push_bind(q.limit as i64 + 1);
        let rows = b.build().fetch_all(&self.pool).await?;
        let more = rows.len() > q.limit as usize;
        let events = rows
            .iter()
            .take(q.limit as usize)
            .map(row_to_event)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((events, more))
    }
}

fn row_to_event(r: &SqliteRow) -> Result<Event, sqlx::Error> {
    let u32_col = |name: &str| -> Result<Option<u32>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(name)?.map(|v| v as u32))
    };
    let args: String = r.try_get("args")?;
    Ok(Event {
        id: r.try_get("id")?,
        ts: r.try_get("ts")?,
        kind: r.try_get("kind")?,
        pid: u32_col("pid")?,
        tid: u32_col("tid")?,
        ppid: u32_col("ppid")?,
        uid: u32_col("uid")?,
        gid: u32_col("gid")?,
        comm: r.try_get("comm")?,
        ns_pid: u32_col("ns_pid")?,
        exe: r.try_get("exe")?,
        cgroup_id: r.try_get::<Option<i64>, _>("cgroup_id")?.map(|v| v as u64),
        container_id: r.try_get("container_id")?,
        mnt_ns: u32_col("mnt_ns")?,
        pid_ns: u32_col("pid_ns")?,
        retval: r.try_get("retval")?,
        args: serde_json::from_str(&args).unwrap_or(serde_json::Value::Null),
        fidelity: r.try_get("fidelity")?,
    })
}

/// The single writer: receives decoded events, writes them in batched
/// transactions, then publishes them (with their ids) to live followers.
pub struct Writer {
    conn: SqliteConnection,
    rx: mpsc::Receiver<Event>,
    live: broadcast::Sender<Arc<Event>>,
    counters: Arc<Counters>,
    batch_size: usize,
}

impl Writer {
    pub async fn new(
        store: &Store,
        rx: mpsc::Receiver<Event>,
        live: broadcast::Sender<Arc<Event>>,
        counters: Arc<Counters>,
        batch_size: usize,
    ) -> Result<Self, StoreError> {
        let conn = SqliteConnection::connect_with(&connect_options(&store.path))
            .await
            .map_err(|source| StoreError::Open {
                path: store.path.clone(),
                source,
            })?;
        Ok(Self {
            conn,
            rx,
            live,
            counters,
            batch_size,
        })
    }

    /// Runs until every sender is dropped and the queue is drained, so a
    /// clean shutdown loses nothing that was accepted.
    pub async fn run(mut self) -> Result<(), StoreError> {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            batch.clear();
            if self.rx.recv_many(&mut batch, self.batch_size).await == 0 {
                return Ok(());
            }
            self.counters
                .queue_depth
                .store(self.rx.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = self.write_batch(&mut batch).await {
                // The batch is lost; say so loudly and keep going (a full
                // disk must not kill the daemon).
                tracing::error!(error = %e, rows = batch.len(), "writing a batch failed");
                self.counters.add_lost_store(batch.len() as u64);
                continue;
            }
            for e in batch.drain(..) {
                self.counters.count_stored(&e.kind);
                let _ = self.live.send(Arc::new(e));
            }
        }
    }

    async fn write_batch(&mut self, batch: &mut [Event]) -> Result<(), sqlx::Error> {
        let mut tx = self.conn.begin().await?;
        for e in batch.iter_mut() {
            let res = sqlx::query(
                "INSERT INTO events (ts, kind, pid, tid, ppid, uid, gid, comm, ns_pid, exe, cgroup_id, \
                 container_id, mnt_ns, pid_ns, retval, args, fidelity) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(e.ts)
            .bind(&e.kind)
            .bind(e.pid.map(i64::from))
            .bind(e.tid.map(i64::from))
            .bind(e.ppid.map(i64::from))
            .bind(e.uid.map(i64::from))
            .bind(e.gid.map(i64::from))
            .bind(&e.comm)
            .bind(e.ns_pid.map(i64::from))
            .bind(&e.exe)
            .bind(e.cgroup_id.map(|v| v as i64))
            .bind(&e.container_id)
            .bind(e.mnt_ns.map(i64::from))
            .bind(e.pid_ns.map(i64::from))
            .bind(e.retval)
            .bind(e.args.to_string())
            .bind(&e.fidelity)
            .execute(&mut *tx)
            .await?;
            e.id = res.last_insert_rowid();
        }
        tx.commit().await
    }
}
