//! `[export.clickhouse]`: ship the history into ClickHouse over its HTTP
//! interface, in id order and exactly once.
//!
//! The sink reads the local store after its cursor (`Store::query` with
//! `after_id`, ascending), sends one `INSERT ... FORMAT JSONEachRow` per
//! batch and records the new cursor in SQLite (`export_cursor`, migration
//! 0005) only after ClickHouse answered 200. A crash between the answer and
//! the cursor write sends that batch again; every row carries the key
//! (host, store_id, id) and the table is a `ReplacingMergeTree` ordered by
//! it, so the repeat collapses (at once under `FINAL`, on disk at the next
//! merge). Anything but a 200 is a failure: logged with the first line of
//! the answer, shown in status, retried after 1 s, doubling up to 60 s.
//!
//! The sink only reads the store: ClickHouse being slow or down never
//! blocks ingest; the lag grows (status, /metrics, STATUS=) instead.
//!
//! Not yet: retention (store/retention.rs) may delete events the sink has
//! not shipped; they are skipped silently. The next increment records such
//! a deletion as a `lost` row with source `export` (see the note there).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::watch;
use traceed_wire::{Event, ExportStatus};

use crate::service::config::ClickHouseConfig;
use crate::store::{Query, Store};

/// The `export_cursor.sink` of this sink.
const SINK: &str = "clickhouse";
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// One request (connect, send, ClickHouse's work, answer) at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Keep at most this much of an error answer.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What status, /metrics and the STATUS= line show; updated by the sink.
pub struct ExportState {
    pub target: String,
    pub host: String,
    store_id: Mutex<Option<String>>,
    server_version: Mutex<Option<String>>,
    cursor: AtomicI64,
    lag_events: AtomicU64,
    /// Age of the oldest unshipped event, ns.
    lag_ns: AtomicI64,
    events_shipped: AtomicU64,
    bytes_shipped: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<(i64, String)>>,
    last_success_ns: AtomicI64,
}

impl ExportState {
    fn new(target: String, host: String) -> Self {
        Self {
            target,
            host,
            store_id: Mutex::new(None),
            server_version: Mutex::new(None),
            cursor: AtomicI64::new(0),
            lag_events: AtomicU64::new(0),
            lag_ns: AtomicI64::new(0),
            events_shipped: AtomicU64::new(0),
            bytes_shipped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_success_ns: AtomicI64::new(0),
        }
    }

    pub fn snapshot(&self) -> ExportStatus {
        let last_error = lock(&self.last_error).clone();
        let success = self.last_success_ns.load(Relaxed);
        ExportStatus {
            sink: SINK.into(),
            target: self.target.clone(),
            host: self.host.clone(),
            store_id: lock(&self.store_id).clone(),
            server_version: lock(&self.server_version).clone(),
            cursor: self.cursor.load(Relaxed),
            lag_events: self.lag_events.load(Relaxed),
            lag_s: self.lag_seconds(),
            events_shipped: self.events_shipped.load(Relaxed),
            bytes_shipped: self.bytes_shipped.load(Relaxed),
            errors: self.errors.load(Relaxed),
            last_error_ts: last_error.as_ref().map(|e| e.0),
            last_error: last_error.map(|e| e.1),
            last_success_ts: (success != 0).then_some(success),
        }
    }

    pub fn lag_seconds(&self) -> f64 {
        self.lag_ns.load(Relaxed).max(0) as f64 / 1e9
    }

    pub fn lag_events(&self) -> u64 {
        self.lag_events.load(Relaxed)
    }

    pub fn cursor(&self) -> i64 {
        self.cursor.load(Relaxed)
    }

    pub fn bytes_shipped(&self) -> u64 {
        self.bytes_shipped.load(Relaxed)
    }

    pub fn events_shipped(&self) -> u64 {
        self.events_shipped.load(Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    pub fn last_success_ns(&self) -> i64 {
        self.last_success_ns.load(Relaxed)
    }

    fn fail(&self, what: String) {
        self.errors.fetch_add(1, Relaxed);
        *lock(&self.last_error) = Some((traceed_wire::now_ns(), what));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One row as ClickHouse receives it (JSONEachRow): the key, the time twice
/// (DateTime seconds for partitions and humans, UInt64 nanoseconds exact),
/// every event column, and `args` as a JSON string.
#[derive(Serialize)]
struct Row<'a> {
    host: &'a str,
    store_id: &'a str,
    id: i64,
    ts: u32,
    ts_ns: u64,
    kind: &'a str,
    pid: Option<u32>,
    tid: Option<u32>,
    ppid: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    comm: Option<&'a str>,
    ns_pid: Option<u32>,
    exe: Option<&'a str>,
    cgroup_id: Option<u64>,
    container_id: Option<&'a str>,
    mnt_ns: Option<u32>,
    pid_ns: Option<u32>,
    retval: Option<i64>,
    args: String,
    fidelity: &'a str,
}

/// The JSONEachRow body of a batch: one object per line.
fn encode(host: &str, store_id: &str, events: &[Event]) -> String {
    let mut out = String::with_capacity(events.len() * 400);
    for e in events {
        let ts_ns = u64::try_from(e.ts).unwrap_or(0);
        let row = Row {
            host,
            store_id,
            id: e.id,
            ts: u32::try_from(ts_ns / 1_000_000_000).unwrap_or(u32::MAX),
            ts_ns,
            kind: &e.kind,
            pid: e.pid,
            tid: e.tid,
            ppid: e.ppid,
            uid: e.uid,
            gid: e.gid,
            comm: e.comm.as_deref(),
            ns_pid: e.ns_pid,
            exe: e.exe.as_deref(),
            cgroup_id: e.cgroup_id,
            container_id: e.container_id.as_deref(),
            mnt_ns: e.mnt_ns,
            pid_ns: e.pid_ns,
            retval: e.retval,
            args: e.args.to_string(),
            fidelity: &e.fidelity,
        };
        // Serializing plain fields into a String cannot fail.
        if let Ok(line) = serde_json::to_string(&row) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// A failed request: what status and the log say.
#[derive(Debug)]
struct Failure(String);

/// ClickHouse's HTTP interface (hyper's client; plain http only).
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    /// scheme://authority/path, without a trailing slash.
    base: String,
    user: String,
    password: Option<String>,
}

impl Http {
    fn new(cfg: &ClickHouseConfig, password: Option<String>) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build(conn);
        Self {
            client,
            base: cfg.url.trim_end_matches('/').to_string(),
            user: cfg.user.clone(),
            password,
        }
    }

    /// POST `body` with the URL parameters `params`: the answer's body on
    /// 200, else the status and the first line of the answer.
    async fn post(&self, params: &[(&str, &str)], body: String) -> Result<String, Failure> {
        let qs = serde_urlencoded::to_string(params).map_err(|e| Failure(e.to_string()))?;
        let uri = format!("{}/?{qs}", self.base);
        // ClickHouse refuses a POST without a length (411), even an empty one.
        let mut req = hyper::Request::post(&uri)
            .header(hyper::header::CONTENT_LENGTH, body.len())
            .header("X-ClickHouse-User", &self.user)
            .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8");
        if let Some(p) = &self.password {
            req = req.header("X-ClickHouse-Key", p);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure(format!("building the request: {e}")))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| Failure(describe_client_error(&e, &self.base)))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure(format!("reading the answer from {}: {e}", self.base)))?
                .to_bytes();
            let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]);
            if status == hyper::StatusCode::OK {
                Ok(text.into_owned())
            } else {
                let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                Err(Failure(format!(
                    "{} answered {}: {}",
                    self.base,
                    status.as_u16(),
                    first.trim()
                )))
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| {
                Failure(format!(
                    "{} did not answer within {}s",
                    self.base,
                    REQUEST_TIMEOUT.as_secs()
                ))
            })?
    }
}

/// hyper-util's error chain, flattened: "connection refused" is in a source.
fn describe_client_error(e: &hyper_util::client::legacy::Error, base: &str) -> String {
    let mut msg = format!("cannot reach {base}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

pub struct Sink {
    store: Store,
    http: Http,
    database: String,
    table: String,
    batch_size: u32,
    interval: Duration,
    state: Arc<ExportState>,
}

impl Sink {
    /// The sink for `cfg`; reads the password file now (the config check
    /// already refused a missing or world-readable one).
    pub fn new(store: &Store, cfg: &ClickHouseConfig) -> anyhow::Result<Self> {
        let password = cfg.password().map_err(anyhow::Error::msg)?;
        let target = format!(
            "{} {}.{}",
            cfg.url.trim_end_matches('/'),
            cfg.database,
            cfg.table
        );
        Ok(Self {
            store: store.clone(),
            http: Http::new(cfg, password),
            database: cfg.database.clone(),
            table: cfg.table.clone(),
            batch_size: u32::try_from(cfg.batch_size).unwrap_or(u32::MAX),
            interval: cfg.interval,
            state: Arc::new(ExportState::new(target, cfg.host.clone())),
        })
    }

    pub fn state(&self) -> Arc<ExportState> {
        self.state.clone()
    }

    /// Ship until `stop` turns true. Never returns an error: every failure
    /// is reported in the state and retried.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let st = self.state.clone();
        let (store_id, mut cursor) = loop {
            match self.load_identity().await {
                Ok(v) => break v,
                Err(e) => {
                    let msg = format!("reading the export cursor: {e}");
                    tracing::warn!(error = %msg, "clickhouse export: {msg}");
                    st.fail(msg);
                    if sleep_or_stop(&mut stop, BACKOFF_MAX).await {
                        return;
                    }
                }
            }
        };
        *lock(&st.store_id) = Some(store_id.clone());
        st.cursor.store(cursor, Relaxed);
        tracing::info!(
            target_db = %st.target,
            host = %st.host,
            store_id,
            cursor,
            "clickhouse export: shipping events after id {cursor} to {}",
            st.target
        );
        let mut backoff = BACKOFF_MIN;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut version_known = false;
        loop {
            self.refresh_lag(cursor).await;
            let now = tokio::time::Instant::now();
            let mut full = false;
            if retry_at.is_none_or(|t| now >= t) {
                let attempt = async {
                    if !version_known {
                        self.hello().await?;
                        version_known = true;
                    }
                    self.ship(&store_id, cursor).await
                };
                match attempt.await {
                    Ok((last, n)) => {
                        if retry_at.take().is_some() {
                            tracing::info!("clickhouse export: {} answers again", st.target);
                        }
                        backoff = BACKOFF_MIN;
                        if let Some(last) = last {
                            cursor = last;
                            self.refresh_lag(cursor).await;
                        }
                        full = n >= self.batch_size as usize;
                    }
                    Err(Failure(msg)) => {
                        tracing::warn!(
                            error = %msg,
                            retry_s = backoff.as_secs(),
                            "clickhouse export: {msg} (retrying in {}s)",
                            backoff.as_secs()
                        );
                        st.fail(msg);
                        retry_at = Some(now + backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            if *stop.borrow() {
                return;
            }
            // A full batch: more is waiting, go on at once.
            if full {
                continue;
            }
            let wait = match retry_at {
                Some(t) => self.interval.min(t.saturating_duration_since(now)),
                None => self.interval,
            };
            if sleep_or_stop(&mut stop, wait.max(Duration::from_millis(10))).await {
                return;
            }
        }
    }

    /// `SELECT version()`: logged once per start, shown in status.
    async fn hello(&self) -> Result<(), Failure> {
        let v = self
            .http
            .post(&[("query", "SELECT version()")], String::new())
            .await?;
        let v = v.trim().to_string();
        tracing::info!(version = %v, "clickhouse export: {} runs ClickHouse {v}", self.http.base);
        *lock(&self.state.server_version) = Some(v);
        Ok(())
    }

    /// Send the batch after `cursor`; on 200 record the new cursor.
    /// Returns the new cursor (None: nothing to send) and the batch size.
    async fn ship(&self, store_id: &str, cursor: i64) -> Result<(Option<i64>, usize), Failure> {
        let q = Query {
            after_id: Some(cursor),
            limit: self.batch_size,
            ..Query::default()
        };
        let (events, _) = self
            .store
            .query(&q)
            .await
            .map_err(|e| Failure(format!("reading the store: {e}")))?;
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok((None, 0));
        };
        let body = encode(&self.state.host, store_id, &events);
        let bytes = body.len() as u64;
        let insert = format!(
            "INSERT INTO {}.{} FORMAT JSONEachRow",
            self.database, self.table
        );
        // insert_distributed_sync: a Distributed table answers only once
        // every shard has the rows, so a 200 means stored, not queued.
        // wait_end_of_query: the status line is sent after the insert ended.
        self.http
            .post(
                &[
                    ("query", insert.as_str()),
                    ("insert_distributed_sync", "1"),
                    ("wait_end_of_query", "1"),
                ],
                body,
            )
            .await?;
        // Acknowledged: only now does the cursor move.
        self.save_cursor(last)
            .await
            .map_err(|e| Failure(format!("recording the export cursor: {e}")))?;
        let st = &self.state;
        st.cursor.store(last, Relaxed);
        st.events_shipped.fetch_add(events.len() as u64, Relaxed);
        st.bytes_shipped.fetch_add(bytes, Relaxed);
        st.last_success_ns.store(traceed_wire::now_ns(), Relaxed);
        tracing::debug!(
            events = events.len(),
            bytes,
            cursor = last,
            "clickhouse export: batch acknowledged"
        );
        Ok((Some(last), events.len()))
    }

    async fn load_identity(&self) -> Result<(String, i64), sqlx::Error> {
        let pool = self.store.pool();
        let store_id: String =
            sqlx::query_scalar("SELECT store_id FROM store_identity WHERE only_row = 1")
                .fetch_one(pool)
                .await?;
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT last_id, target FROM export_cursor WHERE sink = ?")
                .bind(SINK)
                .fetch_optional(pool)
                .await?;
        let cursor = match row {
            Some((last, target)) => {
                if target != self.state.target {
                    tracing::warn!(
                        previous = %target,
                        now = %self.state.target,
                        "clickhouse export: the target changed; continuing after id {last} (DELETE FROM export_cursor to ship the whole history again)"
                    );
                }
                last
            }
            None => 0,
        };
        Ok((store_id, cursor))
    }

    async fn save_cursor(&self, last: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO export_cursor (sink, target, last_id, updated_ns) VALUES (?, ?, ?, ?) \
             ON CONFLICT (sink) DO UPDATE SET target = excluded.target, \
             last_id = excluded.last_id, updated_ns = excluded.updated_ns",
        )
        .bind(SINK)
        .bind(&self.state.target)
        .bind(last)
        .bind(traceed_wire::now_ns())
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Lag: events stored after the cursor (by id: the writer assigns ids
    /// in order, gaps only where a batch failed) and the age of the first.
    async fn refresh_lag(&self, cursor: i64) {
        let pool = self.store.pool();
        let max: Result<Option<i64>, _> = sqlx::query_scalar("SELECT max(id) FROM events")
            .fetch_one(pool)
            .await;
        let first: Result<Option<i64>, _> =
            sqlx::query_scalar("SELECT ts FROM events WHERE id > ? ORDER BY id LIMIT 1")
                .bind(cursor)
                .fetch_optional(pool)
                .await;
        if let (Ok(max), Ok(first)) = (max, first) {
            let st = &self.state;
            let behind = max.unwrap_or(0).saturating_sub(cursor).max(0) as u64;
            st.lag_events.store(behind, Relaxed);
            let age = first
                .map(|ts| traceed_wire::now_ns().saturating_sub(ts).max(0))
                .unwrap_or(0);
            st.lag_ns.store(if behind == 0 { 0 } else { age }, Relaxed);
        }
    }
}

/// Sleep `d`; true when `stop` turned true (or its sender is gone) first.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

/// `traceed export clickhouse-schema`: the DDL for the tables the sink
/// inserts into. Types that ClickHouse 18.16 (Debian 12) accepts.
pub struct SchemaOptions {
    pub database: String,
    pub table: String,
    /// A `remote_servers` cluster: `<table>_local` on every shard plus a
    /// `Distributed` `<table>` over them. None: one server, `<table>` itself.
    pub cluster: Option<String>,
    /// Keep this many days (0: forever).
    pub ttl_days: u32,
    /// The oldest server the DDL must run on, (major, minor): TTL clauses
    /// need 19.6.
    pub server_version: (u32, u32),
}

/// Every column of a shipped row, in order, with its ClickHouse type.
pub const COLUMNS: &[(&str, &str)] = &[
    ("host", "String"),
    ("store_id", "String"),
    ("id", "Int64"),
    ("ts", "DateTime"),
    ("ts_ns", "UInt64"),
    ("kind", "String"),
    ("pid", "Nullable(UInt32)"),
    ("tid", "Nullable(UInt32)"),
    ("ppid", "Nullable(UInt32)"),
    ("uid", "Nullable(UInt32)"),
    ("gid", "Nullable(UInt32)"),
    ("comm", "Nullable(String)"),
    ("ns_pid", "Nullable(UInt32)"),
    ("exe", "Nullable(String)"),
    ("cgroup_id", "Nullable(UInt64)"),
    ("container_id", "Nullable(String)"),
    ("mnt_ns", "Nullable(UInt32)"),
    ("pid_ns", "Nullable(UInt32)"),
    ("retval", "Nullable(Int64)"),
    ("args", "String"),
    ("fidelity", "String"),
];

pub fn schema(o: &SchemaOptions) -> String {
    let db = &o.database;
    let local = match &o.cluster {
        Some(_) => format!("{}_local", o.table),
        None => o.table.clone(),
    };
    let mut s = String::new();
    s.push_str(&format!(
        "-- traceed events in ClickHouse: `traceed export clickhouse-schema`.\n\
         -- Types for ClickHouse {}.{} and later; the sink inserts into {db}.{}.\n",
        o.server_version.0, o.server_version.1, o.table
    ));
    if let Some(c) = &o.cluster {
        s.push_str(&format!(
            "-- Run all of it on every server of cluster `{c}` (remote_servers): each shard\n\
             -- keeps its rows in {db}.{local}; {db}.{t} spreads inserts by host and reads\n\
             -- from all shards. A host's rows all live on one shard, so FINAL on a shard\n\
             -- sees every copy of a row.\n",
            t = o.table
        ));
    }
    s.push_str(&format!("CREATE DATABASE IF NOT EXISTS {db};\n\n"));
    s.push_str(&format!(
        "-- One row per event, keyed (host, store_id, id): a batch sent twice collapses\n\
         -- (ReplacingMergeTree; use FINAL, or argMax, to see each event once before\n\
         -- the merge). ts is the second (partitions, TTL), ts_ns the exact time.\n\
         CREATE TABLE IF NOT EXISTS {db}.{local}\n(\n"
    ));
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|(n, t)| format!("    {n} {t}"))
        .collect();
    s.push_str(&cols.join(",\n"));
    s.push_str("\n)\nENGINE = ReplacingMergeTree\nPARTITION BY toYYYYMMDD(ts)\nORDER BY (host, store_id, id)");
    let ttl_clause = o.server_version >= (19, 6);
    if o.ttl_days > 0 && ttl_clause {
        s.push_str(&format!("\nTTL ts + INTERVAL {} DAY", o.ttl_days));
    }
    s.push_str(";\n");
    if o.ttl_days > 0 && !ttl_clause {
        s.push_str(&format!(
            "-- Retention, {n} days: ClickHouse before 19.6 has no TTL clause (with 19.6+,\n\
             -- `--clickhouse-version 19.6` adds `TTL ts + INTERVAL {n} DAY`). Drop whole days\n\
             -- instead, on every server, e.g. daily from cron:\n\
             --   clickhouse-client -q \"SELECT DISTINCT partition FROM system.parts WHERE database = '{db}'\n\
             --     AND table = '{local}' AND active AND toUInt32(partition) < toYYYYMMDD(today() - {n})\" |\n\
             --   while read p; do clickhouse-client -q \"ALTER TABLE {db}.{local} DROP PARTITION $p\"; done\n",
            n = o.ttl_days
        ));
    }
    if let Some(c) = &o.cluster {
        s.push_str(&format!(
            "\n-- Inserts and queries go here: rows are placed by cityHash64(host).\n\
             CREATE TABLE IF NOT EXISTS {db}.{t} AS {db}.{local}\n\
             ENGINE = Distributed({c}, {db}, {local}, cityHash64(host));\n",
            t = o.table
        ));
    }
    // The columns of the SQLite events_view (migrations/0003), ts in
    // nanoseconds as there, plus where each row came from; one row per event.
    let view_cols = [
        "host",
        "store_id",
        "id",
        "ts_ns AS ts",
        "kind",
        "pid",
        "tid",
        "ppid",
        "uid",
        "gid",
        "comm",
        "ns_pid",
        "exe",
        "cgroup_id",
        "container_id",
        "mnt_ns",
        "pid_ns",
        "retval",
        "args",
        "fidelity",
    ];
    s.push_str(&format!(
        "\n-- The columns of traceed's SQLite events_view (ts in nanoseconds), plus host\n\
         -- and store_id; FINAL: each event once, even before a merge.\n\
         CREATE VIEW IF NOT EXISTS {db}.{t}_view AS\nSELECT {}\nFROM {db}.{t} FINAL;\n",
        view_cols.join(", "),
        t = o.table
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_key_times_and_args_as_a_string() {
        let mut e = Event::new("exec", 1_764_017_445_123_456_789, "core");
        e.id = 42;
        e.pid = Some(7);
        e.comm = Some("sh".into());
        e.cgroup_id = Some(u64::MAX);
        e.args = serde_json::json!({"argv": ["sh", "-c", "echo \"hi\"\n"]});
        let body = encode("web-1", "abc", &[e.clone(), e]);
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["host"], "web-1");
        assert_eq!(v["store_id"], "abc");
        assert_eq!(v["id"], 42);
        assert_eq!(v["ts"], 1_764_017_445u64);
        assert_eq!(v["ts_ns"], 1_764_017_445_123_456_789u64);
        assert_eq!(v["cgroup_id"], u64::MAX);
        assert!(v["ppid"].is_null());
        let args: serde_json::Value = serde_json::from_str(v["args"].as_str().unwrap()).unwrap();
        assert_eq!(args["argv"][2], "echo \"hi\"\n");
        // Every column of the DDL is in a row, and only those.
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut cols: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
        keys.sort_unstable();
        cols.sort_unstable();
        assert_eq!(keys, cols);
    }

    #[test]
    fn schema_for_a_cluster_and_for_one_server() {
        let mut o = SchemaOptions {
            database: "traceed".into(),
            table: "events".into(),
            cluster: Some("fleet".into()),
            ttl_days: 30,
            server_version: (18, 16),
        };
        let s = schema(&o);
        assert!(
            s.contains("CREATE TABLE IF NOT EXISTS traceed.events_local"),
            "{s}"
        );
        assert!(s.contains("ENGINE = Distributed(fleet, traceed, events_local, cityHash64(host))"));
        assert!(s.contains("ORDER BY (host, store_id, id)"));
        assert!(s.contains("PARTITION BY toYYYYMMDD(ts)"));
        assert!(!s.contains("\nTTL "), "18.16 has no TTL clause:\n{s}");
        assert!(s.contains("DROP PARTITION"));
        assert!(s.contains("FROM traceed.events FINAL"));
        for bad in ["DateTime64", "LowCardinality", "JSONExtract"] {
            assert!(!s.contains(bad), "{bad} does not work on 18.16");
        }
        o.server_version = (23, 8);
        o.cluster = None;
        let s = schema(&o);
        assert!(s.contains("TTL ts + INTERVAL 30 DAY"), "{s}");
        assert!(s.contains("CREATE TABLE IF NOT EXISTS traceed.events\n"));
        assert!(!s.contains("Distributed"));
    }
}
