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
//! Retention (store/retention.rs) deletes old events whether shipped or
//! not, so the disk never fills. `ExportGuard`, shared by the two, makes
//! that loss exact: a delete of ids above the cursor moves the cursor past
//! them (in the same transaction) and reports them as a `lost` row (source
//! `export`), the `traceed_export_lost_events` counter and a warning. Rows
//! deleted while a batch holding them is in flight are lost only if that
//! batch then fails; if ClickHouse acknowledges it, they arrived.

use std::ffi::{c_int, CStr, CString};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use libsqlite3_sys as ffi;
use tokio::sync::{mpsc, watch};
use traceed_wire::{Event, ExportStatus};

use crate::service::config::ClickHouseConfig;
use crate::store::schema::NS_BASE;
use crate::store::sqlite::{Db, Stmt, STRING_BY_ID};
use crate::store::Store;

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
    pub fn event(&self, fidelity: &str) -> Event {
        let mut e = Event::lost(Some(self.count), "export", self.from, self.to, fidelity);
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
    queue: mpsc::WeakSender<Event>,
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

/// The rows of a batch, straight from SQLite, without joins: the interned
/// columns (kind, comm, exe, container_id, fidelity, args_keys) are
/// resolved through `Names`, a cache of the `strings` rows the sink has met
/// (ids are never reused, so an entry never goes stale).
const BATCH_SQL: &CStr = c"SELECT id, ts, kind, pid, tid, ppid, uid, gid, comm, ns_pid, exe, \
    cgroup_id, container_id, mnt_ns, pid_ns, retval, args, fidelity, args_keys \
    FROM events WHERE id > ?1 ORDER BY id LIMIT ?2";
const C_ID: c_int = 0;
const C_TS: c_int = 1;
const C_KIND: c_int = 2;
const C_PID: c_int = 3;
const C_TID: c_int = 4;
const C_PPID: c_int = 5;
const C_UID: c_int = 6;
const C_GID: c_int = 7;
const C_COMM: c_int = 8;
const C_NS_PID: c_int = 9;
const C_EXE: c_int = 10;
const C_CGROUP_ID: c_int = 11;
const C_CONTAINER_ID: c_int = 12;
const C_MNT_NS: c_int = 13;
const C_PID_NS: c_int = 14;
const C_RETVAL: c_int = 15;
const C_ARGS: c_int = 16;
const C_FIDELITY: c_int = 17;
const C_ARGS_KEYS: c_int = 18;
/// Past this many cached strings the cache starts over: a bound for a
/// store with endless distinct names (the writer's own map holds them all
/// anyway; this only caps the sink's copy).
const NAMES_CAP: usize = 1 << 16;
/// SQLite may map this much of the database instead of a pread per page:
/// the sink reads every row once, in id order.
const MMAP_BYTES: i64 = 256 << 20;

/// Append `s` as a JSON string (serde_json's escaping, as `Row` had).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
}

/// Append `b` escaped as the inside of a JSON string, byte for byte as
/// serde_json escapes a str: `"` and `\` get a backslash, the control
/// characters with a short form (\b \t \n \f \r) use it, the others are
/// \u00xx; everything else (UTF-8 included) is copied.
fn push_escaped(out: &mut Vec<u8>, b: &[u8]) {
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        if c >= 0x20 && c != b'"' && c != b'\\' {
            continue;
        }
        out.extend_from_slice(&b[run..i]);
        run = i + 1;
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            b'\t' => b't',
            b'\n' => b'n',
            0x0c => b'f',
            b'\r' => b'r',
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
                continue;
            }
        };
        out.push(b'\\');
        out.push(short);
    }
    out.extend_from_slice(&b[run..]);
}

/// Append `v` in decimal (what serde_json writes), with no call out: a
/// constant-length extend is a few stores where a copy of the digits from
/// a buffer (itoa's way) is a memcpy call, and there are a dozen per row.
fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let len = v.checked_ilog10().map_or(1, |d| d as usize + 1);
    let start = out.len();
    out.extend_from_slice(&[b'0'; 20]);
    for d in out[start..start + len].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.truncate(start + len);
}

/// `field` then the number, or null.
fn push_u(out: &mut Vec<u8>, field: &[u8], v: Option<u64>) {
    out.extend_from_slice(field);
    match v {
        Some(v) => push_decimal(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_i(out: &mut Vec<u8>, field: &[u8], v: Option<i64>) {
    match v {
        Some(v) if v < 0 => {
            out.extend_from_slice(field);
            out.push(b'-');
            push_decimal(out, v.unsigned_abs());
        }
        v => push_u(out, field, v.map(|v| v as u64)),
    }
}

/// An args key list's keys, each `\"key\":` (see `Names::keys`).
type KeyList = Box<[Box<[u8]>]>;

/// The interned strings the sink has met: as JSON string literals, and
/// args key lists as their keys' literals.
struct Names {
    stmt: Stmt,
    text: foldhash::HashMap<i64, Box<str>>,
    /// Per key list: each key's literal followed by `:`, escaped for the
    /// inside of the args string (`\"path\":`).
    keys: foldhash::HashMap<i64, Option<KeyList>>,
}

impl Names {
    fn fetch(&mut self, id: i64) -> Result<Option<String>, String> {
        self.stmt
            .text_by_id(id)
            .map_err(|e| format!("strings row {id}: {e}"))
    }

    /// The JSON literal of string `id`; None when the row is missing (a
    /// LEFT JOIN's NULL).
    fn literal(&mut self, id: i64) -> Result<Option<&str>, String> {
        if !self.text.contains_key(&id) {
            let Some(s) = self.fetch(id)? else {
                return Ok(None);
            };
            if self.text.len() >= NAMES_CAP {
                self.text.clear();
            }
            // A string always serializes.
            let lit = serde_json::to_string(&s).unwrap_or_default();
            self.text.insert(id, lit.into());
        }
        Ok(self.text.get(&id).map(|s| &**s))
    }

    /// The keys of args key list `id`, as stored in `keys`; None when it is
    /// missing or not a list of strings (args are then `null`, as a
    /// decoded row had them).
    fn keys(&mut self, id: i64) -> Result<Option<&[Box<[u8]>]>, String> {
        if !self.keys.contains_key(&id) {
            let parsed = self
                .fetch(id)?
                .and_then(|s| serde_json::from_str::<Vec<String>>(&s).ok())
                .map(|ks| {
                    ks.iter()
                        .map(|k| {
                            let mut lit = Vec::new();
                            push_json_str(&mut lit, k);
                            let mut esc = Vec::new();
                            push_escaped(&mut esc, &lit);
                            esc.push(b':');
                            esc.into_boxed_slice()
                        })
                        .collect()
                });
            if self.keys.len() >= NAMES_CAP {
                self.keys.clear();
            }
            self.keys.insert(id, parsed);
        }
        Ok(self.keys.get(&id).and_then(|k| k.as_deref()))
    }
}

/// The top-level elements of the JSON array `s`, as byte ranges into it
/// (`out` is cleared first); false when `s` is not a well-formed array.
/// Stored values arrays are serde_json's compact output, so an element's
/// text is exactly what re-serializing its parsed value would give.
fn split_array(s: &[u8], out: &mut Vec<(usize, usize)>) -> bool {
    out.clear();
    let n = s.len();
    if n < 2 || s[0] != b'[' || s[n - 1] != b']' {
        return false;
    }
    if n == 2 {
        return true;
    }
    let (mut depth, mut start, mut i) = (0u32, 1, 1);
    while i < n - 1 {
        match s[i] {
            b'"' => {
                i += 1;
                while i < n - 1 && s[i] != b'"' {
                    // An escape: the next byte cannot end the string.
                    i += if s[i] == b'\\' { 2 } else { 1 };
                }
                if i >= n - 1 {
                    return false;
                }
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            b',' if depth == 0 => {
                if start == i {
                    return false;
                }
                out.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 || start == n - 1 {
        return false;
    }
    out.push((start, n - 1));
    true
}

/// What `read` put in the body.
struct Batch {
    rows: usize,
    /// The highest id read.
    last: Option<i64>,
}

/// The sink's own connection (SQLite's C API, on a blocking thread) and
/// the buffers it reuses from batch to batch: a batch becomes one
/// JSONEachRow body in a single pass over the rows, with no allocation per
/// row. Every byte is what `Row` (serde_json) made of the `Event` the store
/// decoded before (the unit test below compares the two).
struct Reader {
    // Dropped in this order: the statements before their connection,
    // which only they use.
    batch: Stmt,
    names: Names,
    _db: Db,
    /// `{"host":"…","store_id":"…","id":`, the same on every row.
    prefix: Vec<u8>,
    /// The elements of one row's values array.
    spans: Vec<(usize, usize)>,
    body: Vec<u8>,
}

// SAFETY: the connection and its statements are used by one thread at a
// time (the Reader moves into a blocking task and back); SQLite is built
// threadsafe, so a connection may change threads.
unsafe impl Send for Reader {}

impl Reader {
    fn open(path: &Path, host: &str, store_id: &str) -> Result<Self, String> {
        let pragmas = CString::new(format!(
            "PRAGMA busy_timeout = 5000; PRAGMA mmap_size = {MMAP_BYTES}"
        ))
        .map_err(|e| e.to_string())?;
        let db = Db::open(path, &pragmas).map_err(|e| e.to_string())?;
        let batch = Stmt::prepare(&db, BATCH_SQL, true).map_err(|e| e.to_string())?;
        let strings = Stmt::prepare(&db, STRING_BY_ID, true).map_err(|e| e.to_string())?;
        let mut prefix = b"{\"host\":".to_vec();
        push_json_str(&mut prefix, host);
        prefix.extend_from_slice(b",\"store_id\":");
        push_json_str(&mut prefix, store_id);
        prefix.extend_from_slice(b",\"id\":");
        Ok(Self {
            batch,
            names: Names {
                stmt: strings,
                text: Default::default(),
                keys: Default::default(),
            },
            _db: db,
            prefix,
            spans: Vec::new(),
            body: Vec::new(),
        })
    }

    /// Encode up to `limit` rows after id `after` into `self.body`.
    fn read(&mut self, after: i64, limit: u32) -> Result<Batch, String> {
        self.body.clear();
        self.batch.bind_int(1, Some(after));
        self.batch.bind_int(2, Some(i64::from(limit)));
        let mut b = Batch {
            rows: 0,
            last: None,
        };
        let res = loop {
            match self.batch.step() {
                ffi::SQLITE_ROW => {}
                ffi::SQLITE_DONE => break Ok(()),
                rc => break Err(self.batch.error(rc).to_string()),
            }
            match self.row() {
                Ok(id) => {
                    b.rows += 1;
                    b.last = Some(id);
                }
                Err(e) => break Err(e),
            }
        };
        self.batch.reset();
        res.map(|()| b)
    }

    /// The current row of `batch` as one JSONEachRow line; its id.
    fn row(&mut self) -> Result<i64, String> {
        let st = &self.batch;
        let out = &mut self.body;
        let names = &mut self.names;
        let id = st.col_int(C_ID).unwrap_or(0);
        out.extend_from_slice(&self.prefix);
        push_i(out, b"", Some(id));
        let ts_ns = st
            .col_int(C_TS)
            .map_or(0, |t| u64::try_from(t).unwrap_or(0));
        let secs = u32::try_from(ts_ns / 1_000_000_000).unwrap_or(u32::MAX);
        push_u(out, b",\"ts\":", Some(u64::from(secs)));
        push_u(out, b",\"ts_ns\":", Some(ts_ns));
        let name = |out: &mut Vec<u8>, names: &mut Names, field: &[u8], col: c_int| {
            out.extend_from_slice(field);
            let lit = match st.col_int(col) {
                Some(sid) => names.literal(sid)?,
                None => None,
            };
            out.extend_from_slice(lit.unwrap_or("null").as_bytes());
            // kind and fidelity are NOT NULL: a row without them cannot
            // be shipped (the decoded Event could not be read either).
            if lit.is_none() && (col == C_KIND || col == C_FIDELITY) {
                return Err(format!("event {id}: no string for column {col}"));
            }
            Ok::<(), String>(())
        };
        name(out, names, b",\"kind\":", C_KIND)?;
        let u32_col = |c| st.col_int(c).map(|v| u64::from(v as u32));
        push_u(out, b",\"pid\":", u32_col(C_PID));
        push_u(out, b",\"tid\":", u32_col(C_TID));
        push_u(out, b",\"ppid\":", u32_col(C_PPID));
        push_u(out, b",\"uid\":", u32_col(C_UID));
        push_u(out, b",\"gid\":", u32_col(C_GID));
        name(out, names, b",\"comm\":", C_COMM)?;
        push_u(out, b",\"ns_pid\":", u32_col(C_NS_PID));
        name(out, names, b",\"exe\":", C_EXE)?;
        push_u(
            out,
            b",\"cgroup_id\":",
            st.col_int(C_CGROUP_ID).map(|v| v as u64),
        );
        name(out, names, b",\"container_id\":", C_CONTAINER_ID)?;
        let ns = |c| st.col_int(c).map(|v| u64::from((v + NS_BASE) as u32));
        push_u(out, b",\"mnt_ns\":", ns(C_MNT_NS));
        push_u(out, b",\"pid_ns\":", ns(C_PID_NS));
        push_i(out, b",\"retval\":", st.col_int(C_RETVAL));
        out.extend_from_slice(b",\"args\":\"");
        // Stored text is the serde_json output of what was a str, so it is
        // escaped as it stands (a byte that is not UTF-8 could only come
        // from outside traceed; it is shipped as is rather than stall the
        // sink, where the decoded Event failed the batch for good).
        let text = st.col_text(C_ARGS).unwrap_or(b"");
        match st.col_int(C_ARGS_KEYS) {
            // Stored as is: its own JSON.
            None => push_escaped(out, text),
            Some(kid) => {
                let spans = &mut self.spans;
                match names.keys(kid)? {
                    // `{"k1":v1,…}`: each value's text as stored, which is
                    // what re-serializing its parsed value gives.
                    Some(keys) if split_array(text, spans) && spans.len() == keys.len() => {
                        out.push(b'{');
                        for (i, (k, &(s, e))) in keys.iter().zip(spans.iter()).enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            out.extend_from_slice(k);
                            push_escaped(out, &text[s..e]);
                        }
                        out.push(b'}');
                    }
                    // What a decoded row of an unreadable args held.
                    _ => out.extend_from_slice(b"null"),
                }
            }
        }
        out.push(b'"');
        name(out, names, b",\"fidelity\":", C_FIDELITY)?;
        out.extend_from_slice(b"}\n");
        Ok(id)
    }
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
                let b = r.read(after, limit);
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
        let sent = self.send(body.clone()).await;
        // The body's buffer back for the next batch, when the client let
        // go of it (it has, once the answer is read).
        if let Ok(m) = body.try_into_mut() {
            r.body = Vec::from(m);
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

    /// One INSERT of a JSONEachRow `body`.
    async fn send(&self, body: Bytes) -> Result<(), Failure> {
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
    async fn refresh_lag(&self, cursor: i64) {
        const LAG_COUNT_CAP: i64 = 100_000;
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
    use serde::Serialize;

    /// How rows were made before `Reader` (kept as the reference the
    /// bytes `Reader` makes are compared with): one row as ClickHouse receives it (JSONEachRow): the key, the time twice
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
    fn encode_as_before(host: &str, store_id: &str, events: &[Event]) -> String {
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

    /// Events that stress every column: absent and extreme values, names
    /// with quotes, newlines and non-UTF-8 bytes rendered `\xNN`, args that
    /// hold the splitter's delimiters inside strings, nested values,
    /// non-object args.
    fn awkward_events() -> Vec<Event> {
        let mut out = Vec::new();
        let mut e = Event::new("exec", 1_764_017_445_123_456_789, "core");
        e.pid = Some(7);
        e.tid = Some(u32::MAX);
        e.ppid = Some(1);
        e.uid = Some(0);
        e.gid = Some(65534);
        e.comm = Some("c\\xff\\x1b[7m\n\\x".into());
        e.ns_pid = Some(3);
        e.exe = Some("/tmp/tru\\xffe\\x\nbin \"q\"".into());
        e.cgroup_id = Some(u64::MAX);
        e.container_id = Some("c0ffee".repeat(10) + "abcd");
        e.mnt_ns = Some(4_026_531_841);
        e.pid_ns = Some(u32::MAX);
        e.retval = Some(i64::MIN);
        e.proc = Some(traceed_wire::proc_key_hex(0x1234_5678_9abc));
        e.args = serde_json::json!({
            "argv": ["sh", "-c", "echo \"hi\"\n],[{}\\", "arg\\xfe\\x41\u{1b}", "\u{202e}é"],
            "filename": "/tmp/tru\\xffe",
            "nested": {"a": [1, -2, {"b": null}], "c": "}{"},
            "big": u64::MAX,
            "neg": -1,
            "float": 0.5,
            "t": true,
            "escaped": true,
        });
        out.push(e);
        let mut e = Event::new("open", 1, "core");
        e.args = serde_json::json!({});
        out.push(e);
        let mut e = Event::new("open", 0, "degraded");
        e.args = serde_json::Value::Null;
        e.comm = Some("gone".into());
        out.push(e);
        let mut e = Event::new("weird", 2_000_000_000_000_000_000, "core");
        e.args = serde_json::json!([1, "x", {"y": 2}]);
        e.mnt_ns = Some(0);
        e.retval = Some(0);
        out.push(e);
        let mut e = Event::new("connect", 5, "core");
        e.args = serde_json::json!({"addr": "::1", "port": 22, "k,\"ey": "v"});
        out.push(e);
        out.push(Event::lost(Some(12), "export", 3, 4, "core"));
        out
    }

    /// The body `Reader` makes from the store is byte for byte what the
    /// events the store decodes made before (`encode_as_before`), for every
    /// batch boundary, including a string row that is missing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reader_rows_are_the_decoded_events_byte_for_byte() {
        use crate::store::tests::{ev, temp_dir, write_all};
        use crate::store::Query;
        let dir = temp_dir("chread");
        let store = Store::open(&dir).await.unwrap();
        let mut events = awkward_events();
        for i in 0..300u32 {
            events.push(ev(10 + i64::from(i), "open", i, &format!("p{}", i % 7)));
        }
        events.extend(awkward_events());
        write_all(&store, events).await;
        // A LEFT JOIN's NULL: the string row of a comm is gone.
        sqlx::query("DELETE FROM strings WHERE s = 'gone'")
            .execute(store.pool())
            .await
            .unwrap();
        let (stored, more) = store
            .query(&Query {
                limit: 10_000,
                ..Query::default()
            })
            .await
            .unwrap();
        assert!(!more);
        assert_eq!(stored.len(), 312);
        assert!(stored.iter().any(|e| e.comm.is_none() && e.kind == "open"));
        let path = store.path().to_path_buf();
        let host = "web-1 \"x\"";
        let store_id = "abc";
        let expected = encode_as_before(host, store_id, &stored);
        let expected_lines: Vec<&str> = expected.lines().collect();
        let got = tokio::task::spawn_blocking(move || {
            let mut r = Reader::open(&path, host, store_id).unwrap();
            let mut batches = Vec::new();
            for (after, limit) in [(0, 10_000), (0, 1), (5, 7), (300, 100), (400, 10)] {
                let b = r.read(after, limit).unwrap();
                batches.push((after, limit, b.rows, b.last, r.body.clone()));
            }
            batches
        })
        .await
        .unwrap();
        for (after, limit, rows, last, body) in got {
            let body = String::from_utf8(body).unwrap();
            let want: Vec<&str> = stored
                .iter()
                .zip(&expected_lines)
                .filter(|(e, _)| e.id > after)
                .take(limit as usize)
                .map(|(_, l)| *l)
                .collect();
            assert_eq!(rows, want.len(), "after {after} limit {limit}");
            assert_eq!(
                last,
                stored
                    .iter()
                    .filter(|e| e.id > after)
                    .take(limit as usize)
                    .last()
                    .map(|e| e.id)
            );
            let lines: Vec<&str> = body.lines().collect();
            for (g, w) in lines.iter().zip(&want) {
                assert_eq!(g, w);
            }
            assert_eq!(lines.len(), want.len());
        }
        // The fields as ClickHouse reads them.
        let v: serde_json::Value = serde_json::from_str(expected_lines[0]).unwrap();
        assert_eq!(v["host"], host);
        assert_eq!(v["store_id"], "abc");
        assert_eq!(v["id"], 1);
        assert_eq!(v["ts"], 1_764_017_445u64);
        assert_eq!(v["ts_ns"], 1_764_017_445_123_456_789u64);
        assert_eq!(v["cgroup_id"], u64::MAX);
        assert_eq!(v["comm"], "c\\xff\\x1b[7m\n\\x");
        let args: serde_json::Value = serde_json::from_str(v["args"].as_str().unwrap()).unwrap();
        assert_eq!(args, stored[0].args);
        // Every column of the DDL is in a row, and only those.
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut cols: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
        keys.sort_unstable();
        cols.sort_unstable();
        assert_eq!(keys, cols);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The read-and-encode half of shipping alone, on an existing store:
    /// `SHIP_STORE=<state dir> cargo test --release -p traceed --lib --
    /// --ignored --nocapture reader_cost`. CPU per row of `Reader::read`,
    /// batch 10,000, each of 3 passes over the whole store.
    #[test]
    #[ignore]
    fn reader_cost() {
        let dir = std::env::var("SHIP_STORE").expect("SHIP_STORE=<state dir>");
        let path = Path::new(&dir).join("events.db");
        let mut r = Reader::open(&path, "bench", "0123456789abcdef0123456789abcdef").unwrap();
        for pass in 1..=3 {
            // SAFETY: getrusage fills the struct it is given.
            let cpu = || unsafe {
                let mut u: libc::rusage = std::mem::zeroed();
                libc::getrusage(libc::RUSAGE_THREAD, &mut u);
                let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
                t(u.ru_utime) + t(u.ru_stime)
            };
            let (c0, t0) = (cpu(), std::time::Instant::now());
            let (mut after, mut rows, mut bytes) = (0, 0, 0);
            loop {
                let b = r.read(after, 10_000).unwrap();
                let Some(last) = b.last else { break };
                after = last;
                rows += b.rows;
                bytes += r.body.len();
            }
            let (cpu_s, wall) = (cpu() - c0, t0.elapsed().as_secs_f64());
            eprintln!(
                "pass {pass}: {rows} rows, {:.0} bytes/row, CPU {:.3} us/row, wall {:.3} us/row",
                bytes as f64 / rows as f64,
                cpu_s / rows as f64 * 1e6,
                wall / rows as f64 * 1e6
            );
        }
    }

    #[test]
    fn numbers_are_serde_jsons() {
        for v in [
            0,
            1,
            9,
            10,
            99,
            100,
            4_026_531_840,
            i64::MAX,
            -1,
            -10,
            i64::MIN,
        ] {
            let mut ours = Vec::new();
            push_i(&mut ours, b"", Some(v));
            assert_eq!(ours, serde_json::to_vec(&v).unwrap());
        }
        for v in [0, 7, 1_000_000_000_000_000_000, u64::MAX] {
            let mut ours = b"x".to_vec();
            push_u(&mut ours, b":", Some(v));
            assert_eq!(ours[2..], serde_json::to_vec(&v).unwrap());
        }
        let mut n = Vec::new();
        push_u(&mut n, b"a", None);
        push_i(&mut n, b"b", None);
        assert_eq!(n, b"anullbnull");
    }

    #[test]
    fn escaping_is_serde_jsons() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é\u{202e}\u{1F600}\\xff\"");
        for s in [all.as_str(), "", "plain", "\"", "\\"] {
            let mut ours = b"\"".to_vec();
            push_escaped(&mut ours, s.as_bytes());
            ours.push(b'"');
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn split_array_finds_top_level_elements_only() {
        let split = |s: &str| {
            let mut v = Vec::new();
            split_array(s.as_bytes(), &mut v).then(|| {
                v.iter()
                    .map(|&(a, b)| s[a..b].to_string())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(split("[]"), Some(vec![]));
        assert_eq!(split("[1]"), Some(vec!["1".to_string()]));
        assert_eq!(
            split(r#"["a,]\"",[1,[2]],{"k":"}"},null,-0.5]"#).unwrap(),
            [r#""a,]\"""#, "[1,[2]]", r#"{"k":"}"}"#, "null", "-0.5"]
        );
        for bad in [
            "", "[", "{}", "[1,]", "[,1]", "[1", r#"["x]"#, "[[1]", "[1]]",
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }

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
        let events: Vec<Event> = (0..1000i64)
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
        assert!(row.ts >= now && row.args["source"] == "export" && row.args["count"] == 200);

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
