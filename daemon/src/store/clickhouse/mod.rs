//! `[export.clickhouse]`: ship the history into ClickHouse over its HTTP
//! interface, in id order and exactly once.
//!
//! The sink reads the local store after its cursor (its own connection,
//! `rows.rs`), sends one `INSERT` per batch (`RowBinary`, or `JSONEachRow`
//! for a table whose column types are not the DDL's: `rows::Layout`) and
//! records the new cursor in SQLite (`export_cursor`, migration 0005) only
//! after ClickHouse answered 200. The DDL is `schema.rs`. A crash between the answer and
//! the cursor write sends that batch again; every row carries the key
//! (host, store_id, id) and the table is a `ReplacingMergeTree` ordered by
//! it, so the repeat collapses (at once under `FINAL`, on disk at the next
//! merge). Anything but a 200 is a failure: logged with the first line of
//! the answer, shown in status, retried after 1 s, doubling up to 60 s.
//!
//! The sink only reads the store: ClickHouse being slow or down never
//! blocks ingest; the lag grows (status, /metrics, STATUS=) instead.
//!
//! Retention (store/retention.rs) deletes old events whether shipped or
//! not, so the disk never fills. `ExportGuard`, shared by the two, makes
//! that loss exact: a delete of ids above the cursor moves the cursor past
//! them (in the same transaction) and reports them as a `lost` row (source
//! `export`), the `traceed_export_lost_events` counter and a warning. Rows
//! deleted while a batch holding them is in flight are lost only if that
//! batch then fails; if ClickHouse acknowledges it, they arrived.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};
use traceed_wire::{ExportStatus, LiveEvent};

use crate::service::config::ClickHouseConfig;
use crate::store::Store;

mod rows;
mod schema;

use rows::{Layout, Reader};
pub use schema::{missing_columns_ddl, schema, SchemaOptions, COLUMNS};

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
    /// Unshipped events retention deleted since start.
    events_lost: AtomicU64,
    last_error: Mutex<Option<(i64, String)>>,
    last_success_ns: AtomicI64,
    /// Shipped columns the table lacks, as last found.
    missing_columns: Mutex<Vec<String>>,
    /// How batches are encoded, once the table's columns were read (status
    /// shows its format).
    layout: Mutex<Option<Layout>>,
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
            events_lost: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_success_ns: AtomicI64::new(0),
            missing_columns: Mutex::new(Vec::new()),
            layout: Mutex::new(None),
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
            events_lost: self.events_lost.load(Relaxed),
            last_error_ts: last_error.as_ref().map(|e| e.0),
            last_error: last_error.map(|e| e.1),
            last_success_ts: (success != 0).then_some(success),
            missing_columns: lock(&self.missing_columns).clone(),
            format: lock(&self.layout).map(|l| l.format().to_string()),
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

    pub fn events_lost(&self) -> u64 {
        self.events_lost.load(Relaxed)
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

/// Unshipped events that retention deleted: how many, and the times of
/// the first and the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    pub count: u64,
    pub from: i64,
    pub to: i64,
}

impl Loss {
    /// The loss of `(id, ts)` rows, None for none.
    fn of<'a>(rows: impl Iterator<Item = &'a (i64, i64)>) -> Option<Loss> {
        rows.fold(None, |acc: Option<Loss>, &(_, ts)| {
            let one = Loss {
                count: 1,
                from: ts,
                to: ts,
            };
            Some(acc.map_or(one, |a| a.merge(one)))
        })
    }

    fn merge(self, o: Loss) -> Loss {
        Loss {
            count: self.count + o.count,
            from: self.from.min(o.from),
            to: self.to.max(o.to),
        }
    }

    /// The `lost` row: stamped now (when the loss happened, so it outlives
    /// the events it counts under the same max_age), `from`/`to` the
    /// times of the deleted events.
    pub fn event(&self, fidelity: &str) -> LiveEvent {
        let mut e = LiveEvent::lost(Some(self.count), "export", self.from, self.to, fidelity);
        e.ts = traceed_wire::now_ns().max(self.to);
        e
    }
}

/// The batch the sink has read and ClickHouse has not yet answered.
#[derive(Default)]
struct Flight {
    /// Its highest id; None while nothing is in flight.
    hi: Option<i64>,
    /// Its rows that retention deleted meanwhile: lost only if it fails.
    pending: Option<Loss>,
}

/// Shared by the sink and retention (see the top of this module).
pub struct ExportGuard {
    state: Arc<ExportState>,
    /// Held by the sink while it reads a batch and marks it in flight, and
    /// by retention around a delete, so no batch is read half-deleted and
    /// the two agree on the cursor.
    reads: tokio::sync::Mutex<()>,
    flight: Mutex<Flight>,
    losses: mpsc::UnboundedSender<Loss>,
}

impl ExportGuard {
    fn new(state: Arc<ExportState>) -> (Arc<Self>, mpsc::UnboundedReceiver<Loss>) {
        let (losses, rx) = mpsc::unbounded_channel();
        let g = Self {
            state,
            reads: tokio::sync::Mutex::new(()),
            flight: Mutex::new(Flight::default()),
            losses,
        };
        (Arc::new(g), rx)
    }

    /// Retention, before it deletes ids below `hi`: hold this until
    /// `deleted` has run.
    pub async fn lock_reads(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reads.lock().await
    }

    /// Retention, inside its write transaction, before deleting ids below
    /// `hi`: the (id, ts) of those the sink has not shipped.
    pub async fn unshipped_below(
        &self,
        conn: &mut sqlx::SqliteConnection,
        hi: i64,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        let cursor: Option<i64> =
            sqlx::query_scalar("SELECT last_id FROM export_cursor WHERE sink = ?")
                .bind(SINK)
                .fetch_optional(&mut *conn)
                .await?;
        sqlx::query_as("SELECT id, ts FROM events WHERE id > ? AND id < ? ORDER BY id")
            .bind(cursor.unwrap_or(0))
            .bind(hi)
            .fetch_all(&mut *conn)
            .await
    }

    /// Retention, in the same transaction, after deleting `unshipped`:
    /// moves the recorded cursor past them and splits them into the loss
    /// to report now and the part of the batch in flight (decided by its
    /// answer). Then `deleted` after the commit.
    pub async fn skip(
        &self,
        conn: &mut sqlx::SqliteConnection,
        unshipped: &[(i64, i64)],
    ) -> Result<Option<Loss>, sqlx::Error> {
        let Some(&(top, _)) = unshipped.last() else {
            return Ok(None);
        };
        save_cursor(conn, &self.state.target, top).await?;
        // Read while the transaction holds the write lock: a successful
        // batch clears `hi` only after its cursor write, which waits for us.
        let mut f = lock(&self.flight);
        let split =
            f.hi.map_or(0, |hi| unshipped.partition_point(|r| r.0 <= hi));
        if let Some(p) = Loss::of(unshipped[..split].iter()) {
            f.pending = Some(f.pending.map_or(p, |q| q.merge(p)));
        }
        Ok(Loss::of(unshipped[split..].iter()))
    }

    /// Retention, after the commit (still holding `lock_reads`).
    pub fn deleted(&self, unshipped: &[(i64, i64)], now_lost: Option<Loss>) {
        if let Some(&(top, _)) = unshipped.last() {
            self.state.cursor.fetch_max(top, Relaxed);
            // Deleted events are no longer behind: the lag says so now, not
            // at the sink's next turn (status would show them as both lost
            // and waiting).
            let n = unshipped.len() as u64;
            let _ = self
                .state
                .lag_events
                .fetch_update(Relaxed, Relaxed, |lag| Some(lag.saturating_sub(n)));
        }
        if let Some(l) = now_lost {
            self.report(l);
        }
    }

    fn report(&self, l: Loss) {
        self.state.events_lost.fetch_add(l.count, Relaxed);
        tracing::warn!(
            count = l.count,
            from = %traceed_wire::format_ts(l.from),
            to = %traceed_wire::format_ts(l.to),
            target_db = %self.state.target,
            "clickhouse export: retention deleted {} events not yet shipped to {} (recorded as a lost row, source export)",
            l.count,
            self.state.target
        );
        let _ = self.losses.send(l);
    }

    /// The sink: the batch up to `hi` is on its way.
    fn sending(&self, hi: i64) {
        *lock(&self.flight) = Flight {
            hi: Some(hi),
            pending: None,
        };
    }

    /// The sink: ClickHouse answered (`shipped`) or the attempt failed.
    fn answered(&self, shipped: bool) {
        let pending = std::mem::take(&mut *lock(&self.flight)).pending;
        if let (Some(l), false) = (pending, shipped) {
            self.report(l);
        }
    }
}

/// Turn reported losses into `lost` rows, through the writer's queue
/// (weakly held: the queue closing at shutdown must not wait for this).
pub fn spawn_lost_rows(
    mut losses: mpsc::UnboundedReceiver<Loss>,
    queue: mpsc::WeakSender<LiveEvent>,
    fidelity: &'static str,
) {
    tokio::spawn(async move {
        while let Some(l) = losses.recv().await {
            let Some(q) = queue.upgrade() else { return };
            if q.send(l.event(fidelity)).await.is_err() {
                return;
            }
        }
    });
}

/// The recorded cursor moves forward only: retention may have moved it
/// past a deleted range while a batch below that was in flight.
async fn save_cursor(
    conn: &mut sqlx::SqliteConnection,
    target: &str,
    last: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO export_cursor (sink, target, last_id, updated_ns) VALUES (?, ?, ?, ?) \
         ON CONFLICT (sink) DO UPDATE SET target = excluded.target, \
         last_id = max(export_cursor.last_id, excluded.last_id), updated_ns = excluded.updated_ns",
    )
    .bind(SINK)
    .bind(target)
    .bind(last)
    .bind(traceed_wire::now_ns())
    .execute(conn)
    .await?;
    Ok(())
}

/// A failed request: what status and the log say.
#[derive(Debug)]
struct Failure(String);

/// ClickHouse's HTTP interface (hyper's client; http, or https through
/// rustls with the ring provider).
struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// scheme://authority/path, without a trailing slash.
    base: String,
    user: String,
    password: Option<String>,
}

impl Http {
    fn new(cfg: &ClickHouseConfig, password: Option<String>) -> anyhow::Result<Self> {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        conn.set_nodelay(true);
        conn.enforce_http(false);
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(cfg)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build(conn);
        Ok(Self {
            client,
            base: cfg.url.trim_end_matches('/').to_string(),
            user: cfg.user.clone(),
            password,
        })
    }

    /// POST `body` with the URL parameters `params`: the answer's body on
    /// 200, else the status and the first line of the answer.
    async fn post(&self, params: &[(&str, &str)], body: Bytes) -> Result<String, Failure> {
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
            .body(Full::new(body))
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

/// The TLS client: the certificates of `ca_file` when set, else the
/// system's roots (Debian: /etc/ssl/certs, package ca-certificates).
fn tls_config(cfg: &ClickHouseConfig) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let private = cfg.ca_certificates().map_err(anyhow::Error::msg)?;
    if private.is_empty() {
        if cfg.url.starts_with("https:") {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "clickhouse export: reading the system's CA certificates");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "clickhouse export: no system CA certificates found (install ca-certificates, or set export.clickhouse.ca_file); https will fail"
                );
            }
        }
    } else {
        for c in private {
            roots.add(c).map_err(|e| {
                anyhow::anyhow!("export.clickhouse.ca_file: not a usable CA certificate: {e}")
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
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
    guard: Arc<ExportGuard>,
    losses: Option<mpsc::UnboundedReceiver<Loss>>,
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
        let state = Arc::new(ExportState::new(target, cfg.host.clone()));
        let (guard, losses) = ExportGuard::new(state.clone());
        Ok(Self {
            store: store.clone(),
            http: Http::new(cfg, password)?,
            database: cfg.database.clone(),
            table: cfg.table.clone(),
            batch_size: u32::try_from(cfg.batch_size).unwrap_or(u32::MAX),
            interval: cfg.interval,
            state,
            guard,
            losses: Some(losses),
        })
    }

    pub fn state(&self) -> Arc<ExportState> {
        self.state.clone()
    }

    /// For retention (`Retention::with_export`).
    pub fn guard(&self) -> Arc<ExportGuard> {
        self.guard.clone()
    }

    /// The losses retention reports, for `spawn_lost_rows` (once).
    pub fn take_losses(&mut self) -> Option<mpsc::UnboundedReceiver<Loss>> {
        self.losses.take()
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
        // Retention may have moved it meanwhile (never backwards).
        cursor = st.cursor.fetch_max(cursor, Relaxed).max(cursor);
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
        let mut reader: Option<Reader> = None;
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
                    self.ship(&mut reader, &store_id, cursor).await
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
                        // The table may be made or altered meanwhile:
                        // look at its columns again before the retry.
                        version_known = false;
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
            .post(&[("query", "SELECT version()")], Bytes::new())
            .await?;
        let v = v.trim().to_string();
        tracing::info!(version = %v, "clickhouse export: {} runs ClickHouse {v}", self.http.base);
        *lock(&self.state.server_version) = Some(v);
        // Not a reason to hold the history back: a user who may insert but
        // not read system.columns ships JSONEachRow, which names the fields.
        if let Err(Failure(e)) = self.check_columns().await {
            tracing::warn!(error = %e, "clickhouse export: cannot list the table's columns: {e}");
            *lock(&self.state.layout) = Some(Layout::Json {
                skip_unknown: false,
            });
        }
        Ok(())
    }

    /// Compare the table's columns with what is shipped, and choose the
    /// layout (`Layout::for_table`). A table made by an older
    /// `clickhouse-schema` lacks newer columns; inserting them would be
    /// refused, so shipping would stop at an upgrade. Instead rows go
    /// without those columns, and the journal and status say which and how
    /// to add them. A table that does not exist yet (no columns) is left to
    /// the insert, which names it.
    async fn check_columns(&self) -> Result<(), Failure> {
        let sql = format!(
            "SELECT name, type FROM system.columns WHERE database = '{}' AND table = '{}' \
             FORMAT TabSeparated",
            self.database, self.table
        );
        let text = self
            .http
            .post(&[("query", sql.as_str())], Bytes::new())
            .await?;
        let have: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('\t')).collect();
        let (layout, missing) = Layout::for_table(&have);
        if Some(layout) != *lock(&self.state.layout) {
            tracing::info!(
                format = layout.format(),
                "clickhouse export: batches go to {}.{} as {}",
                self.database,
                self.table,
                layout.format()
            );
        }
        *lock(&self.state.layout) = Some(layout);
        if !missing.is_empty() {
            let alter = missing_columns_ddl(&self.database, &self.table, &missing);
            tracing::warn!(
                columns = %missing.join(","),
                "clickhouse export: {}.{} has no column {}; rows are shipped without it. \
                 Add it (on a cluster: to the _local table of every shard, then to the \
                 Distributed one) and restart traceed: {alter}",
                self.database,
                self.table,
                missing.join(", ")
            );
        }
        *lock(&self.state.missing_columns) = missing;
        Ok(())
    }

    /// Send the batch after `cursor`; on 200 record the new cursor.
    /// Returns the new cursor (None: nothing to send) and the batch size.
    /// `reader` is opened on first use and dropped after a read error, so
    /// the next attempt starts on a fresh connection.
    async fn ship(
        &self,
        reader: &mut Option<Reader>,
        store_id: &str,
        cursor: i64,
    ) -> Result<(Option<i64>, usize), Failure> {
        let mut r = reader.take();
        // The body and the INSERT that names its format agree.
        // hello set it before the first batch.
        let layout = lock(&self.state.layout).unwrap_or(Layout::Binary {
            columns: rows::ALL_COLUMNS,
        });
        let (mut r, batch) = {
            let _reads = self.guard.lock_reads().await;
            // Past what retention deleted unshipped (it moved the cursor).
            let after = cursor.max(self.state.cursor());
            let (limit, path) = (self.batch_size, self.store.path().to_path_buf());
            let (host, store) = (self.state.host.clone(), store_id.to_string());
            let (r, batch) = tokio::task::spawn_blocking(move || {
                let mut r = match r.take() {
                    Some(r) => r,
                    None => match Reader::open(&path, &host, &store) {
                        Ok(r) => r,
                        Err(e) => return (None, Err(e)),
                    },
                };
                let b = r.read(after, limit, layout);
                (b.is_ok().then_some(r), b)
            })
            .await
            .map_err(|e| Failure(format!("reading the store: {e}")))?;
            let batch = batch.map_err(|e| Failure(format!("reading the store: {e}")))?;
            let Some(r) = r else {
                return Err(Failure("reading the store: no connection".into()));
            };
            if let Some(hi) = batch.last {
                self.guard.sending(hi);
            }
            (r, batch)
        };
        let Some(last) = batch.last else {
            *reader = Some(r);
            return Ok((None, 0));
        };
        let body = Bytes::from(std::mem::take(&mut r.body));
        let bytes = body.len() as u64;
        let sent = self.send(body.clone(), layout).await;
        // The body's buffer back for the next batch, when the client let
        // go of it (it has, once the answer is read).
        if let Ok(m) = body.try_into_mut() {
            r.body = Vec::from(m);
            // A backlog grows the buffer to a full batch (~12 MB at
            // 50,000 rows); once batches are small again it need not stay.
            if r.body.capacity() > (1 << 20) && bytes < r.body.capacity() as u64 / 8 {
                r.body = Vec::new();
            }
        }
        *reader = Some(r);
        if let Err(f) = sent {
            self.guard.answered(false);
            return Err(f);
        }
        // Acknowledged: only now does the cursor move. The batch stays in
        // flight until then, so a delete meanwhile does not count it lost.
        let saved = async {
            let mut c = self.store.pool().acquire().await?;
            save_cursor(&mut c, &self.state.target, last).await
        }
        .await;
        self.guard.answered(true);
        saved.map_err(|e| Failure(format!("recording the export cursor: {e}")))?;
        let st = &self.state;
        st.cursor.fetch_max(last, Relaxed);
        st.events_shipped.fetch_add(batch.rows as u64, Relaxed);
        st.bytes_shipped.fetch_add(bytes, Relaxed);
        st.last_success_ns.store(traceed_wire::now_ns(), Relaxed);
        tracing::debug!(
            events = batch.rows,
            bytes,
            cursor = last,
            "clickhouse export: batch acknowledged"
        );
        Ok((Some(st.cursor()), batch.rows))
    }

    /// One INSERT of `body`, encoded as `layout`.
    async fn send(&self, body: Bytes, layout: Layout) -> Result<(), Failure> {
        let insert = layout.insert(&self.database, &self.table);
        // insert_distributed_sync: a Distributed table answers only once
        // every shard has the rows, so a 200 means stored, not queued.
        // wait_end_of_query: the status line is sent after the insert ended.
        let mut params = vec![
            ("query", insert.as_str()),
            ("insert_distributed_sync", "1"),
            ("wait_end_of_query", "1"),
        ];
        if let Layout::Json { skip_unknown: true } = layout {
            params.push(("input_format_skip_unknown_fields", "1"));
        }
        self.http.post(&params, body).await?;
        Ok(())
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

    /// Lag: events stored after the cursor and the age of the first.
    /// Counted up to LAG_COUNT_CAP rows; past it, by id (the writer assigns
    /// ids in order, with gaps where a batch failed, which a count avoids).
    /// The cap is small: the count is a scan, and it runs on every turn of
    /// the loop; at 100,000 it cost 8 % of a core in a daemon whose
    /// ClickHouse was down, and a scan of the whole lag per batch shipped.
    async fn refresh_lag(&self, cursor: i64) {
        const LAG_COUNT_CAP: i64 = 1_000;
        let cursor = cursor.max(self.state.cursor());
        let pool = self.store.pool();
        let counted: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM events WHERE id > ? LIMIT ?)")
                .bind(cursor)
                .bind(LAG_COUNT_CAP)
                .fetch_one(pool)
                .await;
        let max: Result<Option<i64>, _> = match counted {
            Ok(n) if n < LAG_COUNT_CAP => Ok(Some(cursor + n)),
            _ => {
                sqlx::query_scalar("SELECT max(id) FROM events")
                    .fetch_one(pool)
                    .await
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Retention deletes ids 1..=500 of a store whose cursor is at 100 while
    /// the batch 101..=300 is in flight: 301..=500 are lost at once, the
    /// in-flight ones only when their batch fails; the cursor skips to 500.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_of_unshipped_events_is_counted_once_and_skipped() {
        use crate::store::retention::{Policy, Retention};
        use crate::store::tests::{ev, temp_dir, write_all};
        const MIN: i64 = 60_000_000_000;
        let dir = temp_dir("chloss");
        let store = Store::open(&dir).await.unwrap();
        let now = traceed_wire::now_ns();
        // ids 1..=1000, one a minute; 500 of them older than 500.5 minutes.
        let events: Vec<traceed_wire::Event> = (0..1000i64)
            .map(|i| ev(now - (1000 - i) * MIN, "open", i as u32, "x"))
            .collect();
        write_all(&store, events).await;
        let ts_of = |id: i64| now - (1000 - (id - 1)) * MIN;
        let state = Arc::new(ExportState::new("t".into(), "h".into()));
        let (guard, mut losses) = ExportGuard::new(state.clone());
        let mut c = store.pool().acquire().await.unwrap();
        save_cursor(&mut c, "t", 100).await.unwrap();
        drop(c);
        guard.sending(300);
        let policy = Policy {
            max_age: Duration::from_secs(500 * 60 + 30),
            max_bytes: u64::MAX,
            min_free_bytes: 0,
            interval: Duration::from_secs(1),
        };
        let mut r = Retention::new(&store, policy.clone())
            .await
            .unwrap()
            .with_export(guard.clone());
        assert_eq!(r.pass().await.unwrap().by_age, 500);
        let now_lost = losses.try_recv().expect("a loss reported at once");
        assert_eq!(
            now_lost,
            Loss {
                count: 200,
                from: ts_of(301),
                to: ts_of(500)
            }
        );
        assert!(losses.try_recv().is_err());
        assert_eq!(state.events_lost(), 200);
        assert_eq!(state.cursor(), 500);
        let recorded: i64 = sqlx::query_scalar("SELECT last_id FROM export_cursor")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(recorded, 500);
        // The batch fails: its deleted rows are lost too.
        guard.answered(false);
        let l = losses.try_recv().expect("the failed batch's rows");
        assert_eq!((l.count, l.from, l.to), (200, ts_of(101), ts_of(300)));
        assert_eq!(state.events_lost(), 400);
        // A lost row is stamped now, so it outlives the rows it counts.
        let row = l.event("core");
        let args = row.args.to_value();
        assert!(row.ts >= now && args["source"] == "export" && args["count"] == 200);

        // A batch that ClickHouse acknowledges after its rows were deleted
        // shipped them: nothing lost; and shipped rows are never counted.
        guard.sending(700);
        let mut c = store.pool().acquire().await.unwrap();
        save_cursor(&mut c, "t", 600).await.unwrap();
        // The cursor never moves back.
        save_cursor(&mut c, "t", 550).await.unwrap();
        drop(c);
        let mut r = Retention::new(
            &store,
            Policy {
                max_age: Duration::from_secs(200 * 60 + 30),
                ..policy
            },
        )
        .await
        .unwrap()
        .with_export(guard.clone());
        assert_eq!(r.pass().await.unwrap().by_age, 300);
        // 701..=800 deleted unshipped; 601..=700 in flight.
        let l = losses.try_recv().unwrap();
        assert_eq!((l.count, l.from, l.to), (100, ts_of(701), ts_of(800)));
        guard.answered(true);
        assert!(losses.try_recv().is_err());
        assert_eq!(state.events_lost(), 500);
        assert_eq!(state.cursor(), 800);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
