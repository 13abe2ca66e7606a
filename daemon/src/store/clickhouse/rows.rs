//! One batch of the store as ClickHouse's insert body: the sink's own
//! SQLite connection reads the rows after the cursor and encodes each
//! straight from its columns, in the format the table allows (see
//! `Layout`), with no `Event` and no allocation per row.

use std::ffi::{c_int, CStr, CString};
use std::path::Path;

use libsqlite3_sys as ffi;

use super::schema::COLUMNS;
use crate::store::schema::NS_BASE;
use crate::store::sqlite::{Db, Stmt, STRING_BY_ID};

/// How a batch is encoded, from the table's own columns (`system.columns`,
/// read at start and after a failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `RowBinary` with an explicit column list: the columns of `COLUMNS`
    /// whose bit is set, each of which the table has with exactly the type
    /// `COLUMNS` gives it. ClickHouse 18.16 parses it for 3.0-3.5 µs of CPU
    /// a row here, JSONEachRow for 7.3 (BENCHMARKS.md).
    Binary { columns: u32 },
    /// `JSONEachRow`: the table has a column of another type (ClickHouse
    /// converts each JSON value), or its columns could not be listed;
    /// `skip_unknown` when it lacks some shipped columns.
    Json { skip_unknown: bool },
}

/// Every column of `COLUMNS`.
pub const ALL_COLUMNS: u32 = (1 << COLUMNS.len()) - 1;

impl Layout {
    /// The layout for a table with `have` (name, type) columns, and the
    /// shipped columns it lacks. No columns at all: the table does not
    /// exist (yet); the insert says so, and the next check sees it.
    pub fn for_table(have: &[(&str, &str)]) -> (Layout, Vec<String>) {
        if have.is_empty() {
            return (
                Layout::Binary {
                    columns: ALL_COLUMNS,
                },
                Vec::new(),
            );
        }
        let (mut columns, mut same_types, mut missing) = (0u32, true, Vec::new());
        for (i, (name, ty)) in COLUMNS.iter().enumerate() {
            match have.iter().find(|(n, _)| n == name) {
                Some((_, t)) => {
                    columns |= 1 << i;
                    same_types &= t == ty;
                }
                None => missing.push(name.to_string()),
            }
        }
        let layout = if same_types {
            Layout::Binary { columns }
        } else {
            Layout::Json {
                skip_unknown: !missing.is_empty(),
            }
        };
        (layout, missing)
    }

    /// The INSERT statement's text for `db.table`.
    pub fn insert(&self, db: &str, table: &str) -> String {
        match self {
            Layout::Binary { columns } => {
                let names: Vec<&str> = COLUMNS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| columns & (1 << i) != 0)
                    .map(|(_, c)| c.0)
                    .collect();
                format!(
                    "INSERT INTO {db}.{table} ({}) FORMAT RowBinary",
                    names.join(", ")
                )
            }
            Layout::Json { .. } => format!("INSERT INTO {db}.{table} FORMAT JSONEachRow"),
        }
    }

    pub fn format(&self) -> &'static str {
        match self {
            Layout::Binary { .. } => "RowBinary",
            Layout::Json { .. } => "JSONEachRow",
        }
    }
}

/// Positions in `COLUMNS` (a unit test checks them against the names).
mod k {
    pub const HOST: u32 = 0;
    pub const STORE_ID: u32 = 1;
    pub const ID: u32 = 2;
    pub const TS: u32 = 3;
    pub const TS_NS: u32 = 4;
    pub const KIND: u32 = 5;
    pub const PID: u32 = 6;
    pub const TID: u32 = 7;
    pub const PPID: u32 = 8;
    pub const PROC: u32 = 9;
    pub const UID: u32 = 10;
    pub const GID: u32 = 11;
    pub const COMM: u32 = 12;
    pub const NS_PID: u32 = 13;
    pub const EXE: u32 = 14;
    pub const CGROUP_ID: u32 = 15;
    pub const CONTAINER_ID: u32 = 16;
    pub const MNT_NS: u32 = 17;
    pub const PID_NS: u32 = 18;
    pub const RETVAL: u32 = 19;
    pub const ARGS: u32 = 20;
    pub const FIDELITY: u32 = 21;
}

/// The rows of a batch, straight from SQLite, without joins: the interned
/// columns (kind, comm, exe, container_id, fidelity, args_keys) are
/// resolved through `Names`, a cache of the `strings` rows the sink has met
/// (ids are never reused, so an entry never goes stale).
const BATCH_SQL: &CStr = c"SELECT id, ts, kind, pid, tid, ppid, uid, gid, comm, ns_pid, exe, \
    cgroup_id, container_id, mnt_ns, pid_ns, retval, args, fidelity, args_keys, proc \
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
const C_PROC: c_int = 19;
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
/// `v` as 16 lower-case hex digits (`traceed_wire::proc_key_hex`).
fn push_hex16(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

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

/// RowBinary's string length: unsigned LEB128.
fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A Nullable value: a null flag byte, then the value unless null.
fn put_null(out: &mut Vec<u8>, is_null: bool) -> bool {
    out.push(u8::from(is_null));
    !is_null
}

/// One args key: `"key":` as the args text has it (RowBinary), and the
/// same escaped for the inside of a JSON string (`\"key\":`, JSONEachRow).
struct KeyLit {
    raw: Box<[u8]>,
    escaped: Box<[u8]>,
}

/// An args key list's keys (see `Names::keys`).
type KeyList = Box<[KeyLit]>;

/// The interned strings the sink has met: as JSON string literals, and
/// args key lists as their keys' literals.
struct Names {
    stmt: Stmt,
    /// JSON literals (JSONEachRow).
    text: foldhash::HashMap<i64, Box<str>>,
    /// The strings themselves (RowBinary).
    raw: foldhash::HashMap<i64, Box<[u8]>>,
    /// Per key list: each key's literal followed by `:`.
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

    /// The text of string `id`; None when the row is missing.
    fn raw(&mut self, id: i64) -> Result<Option<&[u8]>, String> {
        if !self.raw.contains_key(&id) {
            let Some(s) = self.fetch(id)? else {
                return Ok(None);
            };
            if self.raw.len() >= NAMES_CAP {
                self.raw.clear();
            }
            self.raw.insert(id, s.into_bytes().into_boxed_slice());
        }
        Ok(self.raw.get(&id).map(|s| &**s))
    }

    /// The keys of args key list `id`, as stored in `keys`; None when it is
    /// missing or not a list of strings (args are then `null`, as a
    /// decoded row had them).
    fn keys(&mut self, id: i64) -> Result<Option<&[KeyLit]>, String> {
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
                            lit.push(b':');
                            KeyLit {
                                raw: lit.into_boxed_slice(),
                                escaped: esc.into_boxed_slice(),
                            }
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

/// An event's args as a JSON object's text, from the stored `text` (its
/// own JSON, or a values array whose keys are the key list `keys_id`):
/// `{"k1":v1,…}`, each value's text as stored, which is what re-serializing
/// its parsed value gives; `null` for unreadable args, as a decoded row
/// held. `escaped`: as the inside of a JSON string (JSONEachRow's args
/// column), else as is (RowBinary's).
fn push_args(
    out: &mut Vec<u8>,
    text: &[u8],
    keys_id: Option<i64>,
    names: &mut Names,
    spans: &mut Vec<(usize, usize)>,
    escaped: bool,
) -> Result<(), String> {
    let piece = |out: &mut Vec<u8>, b: &[u8]| match escaped {
        true => push_escaped(out, b),
        false => out.extend_from_slice(b),
    };
    let Some(kid) = keys_id else {
        piece(out, text);
        return Ok(());
    };
    match names.keys(kid)? {
        Some(keys) if split_array(text, spans) && spans.len() == keys.len() => {
            out.push(b'{');
            for (i, (k, &(s, e))) in keys.iter().zip(spans.iter()).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(if escaped { &k.escaped } else { &k.raw });
                piece(out, &text[s..e]);
            }
            out.push(b'}');
        }
        _ => out.extend_from_slice(b"null"),
    }
    Ok(())
}

/// What `read` put in the body.
pub(super) struct Batch {
    pub rows: usize,
    /// The highest id read.
    pub last: Option<i64>,
}

/// The sink's own connection (SQLite's C API, on a blocking thread) and
/// the buffers it reuses from batch to batch: a batch becomes one body in
/// a single pass over the rows, with no allocation per row. A JSONEachRow
/// body is byte for byte what `Row` (serde_json) made of the `Event` the
/// store decoded before; a RowBinary body holds the same values (the unit
/// tests below compare both).
pub(super) struct Reader {
    // Dropped in this order: the statements before their connection,
    // which only they use.
    batch: Stmt,
    names: Names,
    _db: Db,
    /// `{"host":"…","store_id":"…","id":`, the same on every row.
    prefix: Vec<u8>,
    host: Box<[u8]>,
    store_id: Box<[u8]>,
    /// The elements of one row's values array.
    spans: Vec<(usize, usize)>,
    /// One row's args text (RowBinary: its length goes first).
    args: Vec<u8>,
    pub body: Vec<u8>,
}

// SAFETY: the connection and its statements are used by one thread at a
// time (the Reader moves into a blocking task and back); SQLite is built
// threadsafe, so a connection may change threads.
unsafe impl Send for Reader {}

impl Reader {
    pub(super) fn open(path: &Path, host: &str, store_id: &str) -> Result<Self, String> {
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
                raw: Default::default(),
                keys: Default::default(),
            },
            _db: db,
            prefix,
            host: host.as_bytes().into(),
            store_id: store_id.as_bytes().into(),
            spans: Vec::new(),
            args: Vec::new(),
            body: Vec::new(),
        })
    }

    /// Encode up to `limit` rows after id `after` into `self.body`.
    pub(super) fn read(&mut self, after: i64, limit: u32, layout: Layout) -> Result<Batch, String> {
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
            let row = match layout {
                Layout::Binary { columns } => self.row_binary(columns),
                Layout::Json { .. } => self.row(),
            };
            match row {
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
        out.extend_from_slice(b",\"proc\":");
        match st.col_int(C_PROC) {
            // The API's spelling (16 hex digits), so a key from tracectl
            // can be pasted into a fleet query.
            Some(k) => {
                out.push(b'"');
                push_hex16(out, k as u64);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
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
        push_args(
            out,
            text,
            st.col_int(C_ARGS_KEYS),
            names,
            &mut self.spans,
            true,
        )?;
        out.push(b'"');
        name(out, names, b",\"fidelity\":", C_FIDELITY)?;
        out.extend_from_slice(b"}\n");
        Ok(id)
    }

    /// The current row of `batch` in RowBinary, the columns of `columns`
    /// in `COLUMNS` order (the INSERT names them); its id.
    fn row_binary(&mut self, columns: u32) -> Result<i64, String> {
        let st = &self.batch;
        let out = &mut self.body;
        let names = &mut self.names;
        let on = |c: u32| columns & (1 << c) != 0;
        let id = st.col_int(C_ID).unwrap_or(0);
        let ts_ns = st
            .col_int(C_TS)
            .map_or(0, |t| u64::try_from(t).unwrap_or(0));
        if on(k::HOST) {
            put_str(out, &self.host);
        }
        if on(k::STORE_ID) {
            put_str(out, &self.store_id);
        }
        if on(k::ID) {
            out.extend_from_slice(&id.to_le_bytes());
        }
        if on(k::TS) {
            let secs = u32::try_from(ts_ns / 1_000_000_000).unwrap_or(u32::MAX);
            out.extend_from_slice(&secs.to_le_bytes());
        }
        if on(k::TS_NS) {
            out.extend_from_slice(&ts_ns.to_le_bytes());
        }
        // A string column: Nullable(String), or String for kind and
        // fidelity, which a row cannot be without.
        let name = |out: &mut Vec<u8>, names: &mut Names, col: c_int, nullable: bool| {
            let text = match st.col_int(col) {
                Some(sid) => names.raw(sid)?,
                None => None,
            };
            match text {
                Some(t) => {
                    if nullable {
                        out.push(0);
                    }
                    put_str(out, t);
                }
                None if nullable => out.push(1),
                None => return Err(format!("event {id}: no string for column {col}")),
            }
            Ok::<(), String>(())
        };
        if on(k::KIND) {
            name(out, names, C_KIND, false)?;
        }
        let u32_col = |out: &mut Vec<u8>, c| {
            let v = st.col_int(c);
            if put_null(out, v.is_none()) {
                out.extend_from_slice(&(v.unwrap_or(0) as u32).to_le_bytes());
            }
        };
        for (key, col) in [(k::PID, C_PID), (k::TID, C_TID), (k::PPID, C_PPID)] {
            if on(key) {
                u32_col(out, col);
            }
        }
        if on(k::PROC) {
            let v = st.col_int(C_PROC);
            if put_null(out, v.is_none()) {
                out.push(16);
                push_hex16(out, v.unwrap_or(0) as u64);
            }
        }
        for (key, col) in [(k::UID, C_UID), (k::GID, C_GID)] {
            if on(key) {
                u32_col(out, col);
            }
        }
        if on(k::COMM) {
            name(out, names, C_COMM, true)?;
        }
        if on(k::NS_PID) {
            u32_col(out, C_NS_PID);
        }
        if on(k::EXE) {
            name(out, names, C_EXE, true)?;
        }
        if on(k::CGROUP_ID) {
            let v = st.col_int(C_CGROUP_ID);
            if put_null(out, v.is_none()) {
                out.extend_from_slice(&(v.unwrap_or(0) as u64).to_le_bytes());
            }
        }
        if on(k::CONTAINER_ID) {
            name(out, names, C_CONTAINER_ID, true)?;
        }
        for (key, col) in [(k::MNT_NS, C_MNT_NS), (k::PID_NS, C_PID_NS)] {
            if on(key) {
                let v = st.col_int(col);
                if put_null(out, v.is_none()) {
                    let ns = (v.unwrap_or(0) + NS_BASE) as u32;
                    out.extend_from_slice(&ns.to_le_bytes());
                }
            }
        }
        if on(k::RETVAL) {
            let v = st.col_int(C_RETVAL);
            if put_null(out, v.is_none()) {
                out.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
            }
        }
        if on(k::ARGS) {
            // The JSON object text, unescaped: what the JSONEachRow body's
            // args string holds once ClickHouse has read it.
            let text = st.col_text(C_ARGS).unwrap_or(b"");
            let args = &mut self.args;
            args.clear();
            push_args(
                args,
                text,
                st.col_int(C_ARGS_KEYS),
                names,
                &mut self.spans,
                false,
            )?;
            put_str(out, args);
        }
        if on(k::FIDELITY) {
            name(out, names, C_FIDELITY, false)?;
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::COLUMNS;
    use super::*;
    use crate::store::Store;
    use serde::Serialize;
    use traceed_wire::Event;

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
        proc: Option<String>,
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
                proc: e.proc.map(|k| k.to_string()),
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
        e.container_id = Some(("c0ffee".repeat(10) + "abcd").into());
        e.mnt_ns = Some(4_026_531_841);
        e.pid_ns = Some(u32::MAX);
        e.retval = Some(i64::MIN);
        e.proc = Some(traceed_wire::ProcKey(0x1234_5678_9abc));
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

    /// A store of awkward events around 300 plain opens, with the string
    /// row of one comm deleted (a LEFT JOIN's NULL), and its events as the
    /// store decodes them.
    async fn awkward_store(name: &str) -> (std::path::PathBuf, Store, Vec<Event>) {
        use crate::store::tests::{ev, temp_dir, write_all};
        use crate::store::Query;
        let dir = temp_dir(name);
        let store = Store::open(&dir).await.unwrap();
        let mut events = awkward_events();
        for i in 0..300u32 {
            events.push(ev(10 + i64::from(i), "open", i, &format!("p{}", i % 7)));
        }
        events.extend(awkward_events());
        write_all(&store, events).await;
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
        (dir, store, stored)
    }

    const JSON: Layout = Layout::Json {
        skip_unknown: false,
    };

    /// The body `Reader` makes from the store is byte for byte what the
    /// events the store decodes made before (`encode_as_before`), for every
    /// batch boundary, including a string row that is missing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reader_rows_are_the_decoded_events_byte_for_byte() {
        let (dir, store, stored) = awkward_store("chread").await;
        let path = store.path().to_path_buf();
        let host = "web-1 \"x\"";
        let store_id = "abc";
        let expected = encode_as_before(host, store_id, &stored);
        let expected_lines: Vec<&str> = expected.lines().collect();
        let got = tokio::task::spawn_blocking(move || {
            let mut r = Reader::open(&path, host, store_id).unwrap();
            let mut batches = Vec::new();
            for (after, limit) in [(0, 10_000), (0, 1), (5, 7), (300, 100), (400, 10)] {
                let b = r.read(after, limit, JSON).unwrap();
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
        let binary = Layout::Binary {
            columns: ALL_COLUMNS,
        };
        for (pass, layout) in (1..=3).flat_map(|p| [(p, JSON), (p, binary)]) {
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
                let b = r.read(after, 10_000, layout).unwrap();
                let Some(last) = b.last else { break };
                after = last;
                rows += b.rows;
                bytes += r.body.len();
            }
            let (cpu_s, wall) = (cpu() - c0, t0.elapsed().as_secs_f64());
            eprintln!(
                "pass {pass}, {}: {rows} rows, {:.0} bytes/row, CPU {:.3} us/row, wall {:.3} us/row",
                layout.format(),
                bytes as f64 / rows as f64,
                cpu_s / rows as f64 * 1e6,
                wall / rows as f64 * 1e6
            );
        }
    }

    /// A RowBinary body read back with the types of `COLUMNS`, one object
    /// per row, as ClickHouse would read it.
    fn decode_row_binary(
        mut b: &[u8],
        columns: u32,
    ) -> Vec<serde_json::Map<String, serde_json::Value>> {
        use serde_json::Value;
        fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
            assert!(b.len() >= n, "the body ends inside a value");
            let (h, t) = b.split_at(n);
            *b = t;
            h
        }
        let mut rows = Vec::new();
        while !b.is_empty() {
            let mut m = serde_json::Map::new();
            for (i, (name, ty)) in COLUMNS.iter().enumerate() {
                if columns & (1 << i) == 0 {
                    continue;
                }
                let inner = match ty.strip_prefix("Nullable(") {
                    Some(t) => match take(&mut b, 1)[0] {
                        0 => t.trim_end_matches(')'),
                        1 => {
                            m.insert(name.to_string(), Value::Null);
                            continue;
                        }
                        f => panic!("{name}: null flag {f}"),
                    },
                    None => ty,
                };
                let v: Value = match inner {
                    "String" => {
                        let (mut n, mut shift) = (0usize, 0);
                        loop {
                            let c = take(&mut b, 1)[0];
                            n |= usize::from(c & 0x7f) << shift;
                            shift += 7;
                            if c & 0x80 == 0 {
                                break;
                            }
                        }
                        String::from_utf8(take(&mut b, n).to_vec()).unwrap().into()
                    }
                    "UInt32" | "DateTime" => {
                        u32::from_le_bytes(take(&mut b, 4).try_into().unwrap()).into()
                    }
                    "UInt64" => u64::from_le_bytes(take(&mut b, 8).try_into().unwrap()).into(),
                    "Int64" => i64::from_le_bytes(take(&mut b, 8).try_into().unwrap()).into(),
                    t => panic!("{name}: no decoder for {t}"),
                };
                m.insert(name.to_string(), v);
            }
            rows.push(m);
        }
        rows
    }

    /// A RowBinary body holds, column for column, the values of the
    /// JSONEachRow rows (checked byte for byte above): every column, and
    /// a table without `proc`, for every batch boundary.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn row_binary_holds_the_values_of_the_json_rows() {
        let (dir, _store, stored) = awkward_store("chbin").await;
        let path = dir.join("events.db");
        let no_proc = ALL_COLUMNS & !(1 << k::PROC);
        let got = tokio::task::spawn_blocking(move || {
            let mut r = Reader::open(&path, "web-1 \"x\"", "abc").unwrap();
            let mut out = Vec::new();
            for columns in [ALL_COLUMNS, no_proc] {
                for (after, limit) in [(0, 10_000), (0, 1), (5, 7), (300, 100)] {
                    let j = r.read(after, limit, JSON).unwrap();
                    let json = r.body.clone();
                    let b = r.read(after, limit, Layout::Binary { columns }).unwrap();
                    assert_eq!((j.rows, j.last), (b.rows, b.last));
                    out.push((columns, json, r.body.clone()));
                }
            }
            out
        })
        .await
        .unwrap();
        let mut checked = 0;
        for (columns, json, binary) in got {
            let decoded = decode_row_binary(&binary, columns);
            let want: Vec<serde_json::Map<String, serde_json::Value>> = json
                .split(|&c| c == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let mut m: serde_json::Map<_, _> = serde_json::from_slice(l).unwrap();
                    if columns & (1 << k::PROC) == 0 {
                        m.remove("proc");
                    }
                    m
                })
                .collect();
            assert_eq!(decoded.len(), want.len());
            for (d, w) in decoded.iter().zip(&want) {
                assert_eq!(d, w);
                checked += 1;
            }
        }
        assert!(checked > 600, "{checked}");
        assert!(stored.iter().any(|e| e.proc.is_some()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn column_positions_are_those_of_columns() {
        let named = [
            (k::HOST, "host"),
            (k::STORE_ID, "store_id"),
            (k::ID, "id"),
            (k::TS, "ts"),
            (k::TS_NS, "ts_ns"),
            (k::KIND, "kind"),
            (k::PID, "pid"),
            (k::TID, "tid"),
            (k::PPID, "ppid"),
            (k::PROC, "proc"),
            (k::UID, "uid"),
            (k::GID, "gid"),
            (k::COMM, "comm"),
            (k::NS_PID, "ns_pid"),
            (k::EXE, "exe"),
            (k::CGROUP_ID, "cgroup_id"),
            (k::CONTAINER_ID, "container_id"),
            (k::MNT_NS, "mnt_ns"),
            (k::PID_NS, "pid_ns"),
            (k::RETVAL, "retval"),
            (k::ARGS, "args"),
            (k::FIDELITY, "fidelity"),
        ];
        assert_eq!(named.len(), COLUMNS.len());
        for (i, n) in named {
            assert_eq!(COLUMNS[i as usize].0, n);
        }
    }

    #[test]
    fn layout_follows_the_tables_columns() {
        let all: Vec<(&str, &str)> = COLUMNS.to_vec();
        assert_eq!(
            Layout::for_table(&all),
            (
                Layout::Binary {
                    columns: ALL_COLUMNS
                },
                vec![]
            )
        );
        // No table (yet): the insert names the problem.
        assert_eq!(
            Layout::for_table(&[]).0,
            Layout::Binary {
                columns: ALL_COLUMNS
            }
        );
        // An older schema: binary without the column, which is named.
        let old: Vec<(&str, &str)> = all.iter().copied().filter(|c| c.0 != "proc").collect();
        let (l, missing) = Layout::for_table(&old);
        assert_eq!(missing, ["proc"]);
        assert_eq!(
            l,
            Layout::Binary {
                columns: ALL_COLUMNS & !(1 << k::PROC)
            }
        );
        assert!(l.insert("traceed", "events").starts_with(
            "INSERT INTO traceed.events (host, store_id, id, ts, ts_ns, kind, pid, tid, ppid, uid,"
        ));
        // A type of the user's own (and an extra column): JSONEachRow.
        let mut custom = all.clone();
        custom[k::CGROUP_ID as usize].1 = "Nullable(Int64)";
        custom.push(("note", "String"));
        assert_eq!(
            Layout::for_table(&custom),
            (
                Layout::Json {
                    skip_unknown: false
                },
                vec![]
            )
        );
        custom.retain(|c| c.0 != "proc");
        assert_eq!(
            Layout::for_table(&custom).0,
            Layout::Json { skip_unknown: true }
        );
        assert_eq!(JSON.insert("d", "t"), "INSERT INTO d.t FORMAT JSONEachRow");
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
}
