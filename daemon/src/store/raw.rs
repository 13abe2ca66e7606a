//! The writer's own SQLite connections, driven through the C API: the hot
//! insert loop (prepared multi-row INSERTs bound directly; through sqlx each
//! row cost a round trip to its worker thread and an allocation per value)
//! and WAL checkpoints, both on dedicated threads (writer.rs).
//!
//! A batch arrives fully encoded (`Encoded`): this side only binds and
//! steps, so encoding the next batch overlaps with SQLite writing this one.
//! The handles themselves (connection, statement) are sqlite.rs's.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use libsqlite3_sys as ffi;

use super::bloom;
pub(super) use super::sqlite::SqliteError as WriteError;
use super::sqlite::{Db, Stmt};

/// Integer columns of one `events` row, in the order of EVENTS' parameters
/// with `args` (parameter 17) left out: the values, and a bit per column
/// that is NULL. Half the size of `[Option<i64>; 19]` (160 bytes, not
/// 304): the writer keeps three batches of them encoded, 4,096 rows each,
/// and writes every one once per event.
#[derive(Clone, Copy)]
pub(super) struct IntCols {
    vals: [i64; INT_COLS],
    nulls: u32,
}

const INT_COLS: usize = 19;

impl IntCols {
    pub fn new(cols: [Option<i64>; INT_COLS]) -> Self {
        let mut packed = IntCols {
            vals: [0; INT_COLS],
            nulls: 0,
        };
        for (c, v) in cols.into_iter().enumerate() {
            match v {
                Some(v) => packed.vals[c] = v,
                None => packed.nulls |= 1 << c,
            }
        }
        packed
    }

    /// Each column in order, None for NULL.
    pub fn iter(&self) -> impl Iterator<Item = Option<i64>> + '_ {
        (self.vals.iter().enumerate()).map(|(c, &v)| (self.nulls & (1 << c) == 0).then_some(v))
    }
}

/// One batch as it is written: every column bound from here, so the events
/// themselves stay with the async side for publishing. Reused between
/// batches (its vectors keep their capacity).
#[derive(Default)]
pub(super) struct Encoded {
    pub ints: Vec<IntCols>,
    /// Every row's `args` text back to back; `arg_ends[i]` ends row i's.
    pub args: Vec<u8>,
    pub arg_ends: Vec<usize>,
    /// Interned strings first used by this batch (or carried over from a
    /// batch that failed).
    pub fresh: Vec<(i64, String)>,
    /// event_blocks rows: (col, value, block, occurrences in this batch),
    /// added to the stored count.
    pub blocks: Vec<[i64; 4]>,
    /// Upserts of the `procs` table (store::procs).
    pub procs: Vec<ProcRow>,
    /// block_blooms rows: the blocks this batch touched and, back to back,
    /// each one's whole filter (bloom::BYTES) as the writer holds it.
    pub bloom_blocks: Vec<i64>,
    pub bloom_bits: Vec<u8>,
}

/// One upsert of a `procs` row: known fields replace, unknown ones (None)
/// keep what the row has.
#[derive(Debug, Default, Clone)]
pub(super) struct ProcRow {
    /// key, pid, ppid, parent, uid, start_ts, exit_ts, exit_code, signal,
    /// exe, comm, last_id.
    pub ints: [Option<i64>; 12],
    pub cmdline: Option<String>,
}

impl Encoded {
    pub fn clear(&mut self) {
        self.ints.clear();
        self.args.clear();
        self.arg_ends.clear();
        self.fresh.clear();
        self.blocks.clear();
        self.procs.clear();
        self.bloom_blocks.clear();
        self.bloom_bits.clear();
    }
}

const EVENTS: &CStr = c"INSERT OR FAIL INTO events (id, ts, kind, pid, tid, ppid, uid, gid, comm, \
    ns_pid, exe, cgroup_id, container_id, mnt_ns, pid_ns, retval, args, fidelity, args_keys, proc) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)";
const PROCS: &CStr = c"INSERT INTO procs (key, pid, ppid, parent, uid, start_ts, exit_ts, \
    exit_code, signal, exe, comm, last_id, cmdline) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
    ON CONFLICT (key) DO UPDATE SET ppid = coalesce(excluded.ppid, ppid), \
    parent = coalesce(parent, excluded.parent), uid = coalesce(excluded.uid, uid), \
    start_ts = coalesce(start_ts, excluded.start_ts), \
    exit_ts = coalesce(excluded.exit_ts, exit_ts), \
    exit_code = coalesce(excluded.exit_code, exit_code), \
    signal = coalesce(excluded.signal, signal), exe = coalesce(excluded.exe, exe), \
    comm = coalesce(excluded.comm, comm), cmdline = coalesce(excluded.cmdline, cmdline), \
    last_id = max(last_id, excluded.last_id)";
/// OR IGNORE: a string carried over from a failed batch, or re-offered
/// after a restart, may already be stored.
const STRINGS: &CStr = c"INSERT OR IGNORE INTO strings (id, s) VALUES (?1, ?2)";
/// Each batch adds its own occurrences to a block's count (migration 9), so
/// a batch that fails leaves no trace and none depends on another. A row
/// from before counts existed keeps n NULL: unknown, never a wrong count.
const BLOCKS: &CStr = c"INSERT INTO event_blocks (col, value, block, n) VALUES (?1, ?2, ?3, ?4) \
    ON CONFLICT (col, value, block) DO UPDATE SET n = n + excluded.n";
/// The writer holds the filter of the block it is filling, loaded at
/// start: each batch writes it whole.
const BLOOMS: &CStr =
    c"INSERT OR REPLACE INTO block_blooms (slice, block, bits) VALUES (?1, ?2, ?3)";
const COLS: usize = 20;
const ARGS_PARAM: usize = 17;

/// Rows per multi-row INSERT: amortizes what SQLite does once per statement
/// (cursors, the AUTOINCREMENT counter); 160k -> 196k rows/s when measured.
const ROWS_PER_STMT: usize = 32;

/// `one`'s VALUES tuple repeated for ROWS_PER_STMT rows (what follows the
/// tuple, an upsert clause, is kept).
fn multi_row(one: &CStr, cols: usize) -> CString {
    let tuple = format!("({})", vec!["?"; cols].join(","));
    let one = one.to_str().expect("ASCII");
    let values = one.find("VALUES").expect("VALUES") + 7;
    let tail = &one[values..][one[values..].find(')').expect("a tuple") + 1..];
    CString::new(format!(
        "{}{}{tail}",
        &one[..values],
        vec![tuple; ROWS_PER_STMT].join(",")
    ))
    .expect("no NUL")
}

/// (single-row SQL, ROWS_PER_STMT-row SQL, parameters per row)
type Sql = (&'static CStr, &'static CStr, usize);

fn events_sql() -> Sql {
    static MANY: OnceLock<CString> = OnceLock::new();
    (EVENTS, MANY.get_or_init(|| multi_row(EVENTS, COLS)), COLS)
}

fn strings_sql() -> Sql {
    static MANY: OnceLock<CString> = OnceLock::new();
    (STRINGS, MANY.get_or_init(|| multi_row(STRINGS, 2)), 2)
}

fn blocks_sql() -> Sql {
    static MANY: OnceLock<CString> = OnceLock::new();
    (BLOCKS, MANY.get_or_init(|| multi_row(BLOCKS, 4)), 4)
}

/// The writer's statements, each prepared at its first use and kept for
/// the connection's life: a batch of a paced loop is a few dozen events,
/// and parsing the 640-parameter INSERT again for each batch cost as much
/// as binding its rows. Every run binds every text and blob parameter of
/// its statement again, so no binding of an earlier batch (pointing into
/// its freed buffers) is ever stepped; integers equal to the ones already
/// bound are kept (`Stmt::bind_int`).
#[derive(Default)]
struct Stmts(Vec<(*const c_char, Stmt)>);

// SAFETY: the pointers are only compared, never read (they name 'static
// SQL); the statements move with their connection, used by one thread at a
// time.
unsafe impl Send for Stmts {}

impl Stmts {
    fn get(&mut self, db: &Db, sql: &'static CStr) -> Result<&mut Stmt, WriteError> {
        let at = match self.0.iter().position(|(p, _)| *p == sql.as_ptr()) {
            Some(i) => i,
            None => {
                self.0.push((sql.as_ptr(), Stmt::prepare(db, sql, true)?));
                self.0.len() - 1
            }
        };
        Ok(&mut self.0[at].1)
    }
}

/// Insert rows 0..n with `sql`; `bind(st, base, i)` binds row i's values
/// at parameters base+1.. and returns the OR of the bind results.
fn insert_rows(
    db: &Db,
    stmts: &mut Stmts,
    (one, many, cols): Sql,
    n: usize,
    mut bind: impl FnMut(&mut Stmt, usize, usize) -> c_int,
) -> Result<(), WriteError> {
    let full = n - n % ROWS_PER_STMT;
    if full > 0 {
        let st = stmts.get(db, many)?;
        for chunk in (0..full).step_by(ROWS_PER_STMT) {
            let mut rc = 0;
            for r in 0..ROWS_PER_STMT {
                rc |= bind(st, r * cols, chunk + r);
            }
            st.run(rc)?;
        }
    }
    if full < n {
        let st = stmts.get(db, one)?;
        for i in full..n {
            let rc = bind(st, 0, i);
            st.run(rc)?;
        }
    }
    Ok(())
}

/// Passed to the WAL hook: the WAL's frame count after each commit.
type Frames = Arc<AtomicI64>;

unsafe extern "C" fn wal_hook(
    arg: *mut c_void,
    _db: *mut ffi::sqlite3,
    _name: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: arg is the AtomicI64 of the Frames the connection holds, so
    // it outlives the connection's hook.
    let frames_seen = unsafe { &*arg.cast::<AtomicI64>() };
    frames_seen.store(frames.into(), Relaxed);
    ffi::SQLITE_OK
}

/// An open connection, closed on drop. Used from one thread at a time.
pub(super) struct Conn {
    /// Declared before `db`: finalized before it is closed.
    stmts: Stmts,
    db: Db,
    /// Frames in the WAL after the last commit (writer connections).
    frames: Option<Frames>,
}

impl Conn {
    /// Open the (already created and migrated) database for writing.
    /// `count_frames`: install a WAL hook that records the WAL's size after
    /// each commit, which also turns SQLite's automatic checkpoint off on
    /// this connection (the writer schedules checkpoints itself).
    pub fn open(path: &Path, count_frames: bool) -> Result<Self, WriteError> {
        // Same settings as the pool (Store::connect_options); journal_mode
        // WAL is a property of the file, set when it was created.
        let db = Db::open(
            path,
            c"PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; \
              PRAGMA temp_store = MEMORY; PRAGMA journal_size_limit = 16777216",
        )?;
        let mut conn = Self {
            stmts: Stmts::default(),
            db,
            frames: None,
        };
        if count_frames {
            let frames = Frames::default();
            // SAFETY: live connection; the AtomicI64 lives in `frames`,
            // which the connection keeps until it is closed.
            unsafe {
                ffi::sqlite3_wal_hook(
                    conn.db.ptr(),
                    Some(wal_hook),
                    Arc::as_ptr(&frames).cast_mut().cast::<c_void>(),
                )
            };
            conn.frames = Some(frames);
        }
        Ok(conn)
    }

    /// Frames in the WAL after the last commit on this connection.
    pub fn wal_frames(&self) -> i64 {
        self.frames.as_ref().map_or(0, |f| f.load(Relaxed))
    }

    /// Copy what the WAL holds into the database file (PASSIVE: never waits
    /// for readers, never blocks the writer). Run by the writer itself
    /// between transactions it copies every frame no reader still needs, and
    /// the next commit starts the WAL over.
    pub fn checkpoint(&mut self) -> Result<(), WriteError> {
        // SAFETY: live connection; NULL database name = all attached.
        let rc = unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                self.db.ptr(),
                std::ptr::null(),
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.db.error(rc));
        }
        Ok(())
    }

    /// One transaction: the batch's strings, rows (ids from `first_id`) and
    /// block rows. On any error nothing stays written and no transaction is
    /// left open (SQLITE_FULL may already have rolled back by itself, or
    /// leave a failed COMMIT pending); the transaction is driven here rather
    /// than by sqlx so that state is always known.
    pub fn write(&mut self, b: &Encoded) -> Result<(), WriteError> {
        self.stmts.get(&self.db, c"BEGIN IMMEDIATE")?.run(0)?;
        let res = self
            .insert(b)
            .and_then(|()| self.stmts.get(&self.db, c"COMMIT")?.run(0));
        // SAFETY: live connection.
        if res.is_err() && unsafe { ffi::sqlite3_get_autocommit(self.db.ptr()) } == 0 {
            let _ = self.db.exec(c"ROLLBACK");
        }
        res
    }

    fn insert(&mut self, b: &Encoded) -> Result<(), WriteError> {
        let Self { db, stmts, .. } = self;
        insert_rows(db, stmts, strings_sql(), b.fresh.len(), |st, base, i| {
            let (id, s) = &b.fresh[i];
            st.bind_int(base + 1, Some(*id)) | st.bind_text_static(base + 2, s.as_bytes())
        })?;
        insert_rows(db, stmts, events_sql(), b.ints.len(), |st, base, i| {
            let start = if i == 0 { 0 } else { b.arg_ends[i - 1] };
            let mut rc = st.bind_text_static(base + ARGS_PARAM, &b.args[start..b.arg_ends[i]]);
            for (c, v) in b.ints[i].iter().enumerate() {
                // Parameters 1..=16, then 18..=20 (17 is args).
                let p = if c + 1 < ARGS_PARAM { c + 1 } else { c + 2 };
                rc |= st.bind_int(base + p, v);
            }
            rc
        })?;
        insert_rows(db, stmts, blocks_sql(), b.blocks.len(), |st, base, i| {
            let [col, value, block, n] = b.blocks[i];
            st.bind_int(base + 1, Some(col))
                | st.bind_int(base + 2, Some(value))
                | st.bind_int(base + 3, Some(block))
                | st.bind_int(base + 4, Some(n))
        })?;
        if !b.bloom_blocks.is_empty() {
            let st = stmts.get(db, BLOOMS)?;
            for (block, filter) in b.bloom_blocks.iter().zip(b.bloom_bits.chunks(bloom::BYTES)) {
                for (slice, bits) in bloom::slices(filter) {
                    let rc = st.bind_int(1, Some(slice as i64))
                        | st.bind_int(2, Some(*block))
                        | st.bind_blob_static(3, bits);
                    st.run(rc)?;
                }
            }
        }
        if !b.procs.is_empty() {
            // One row per statement: an upsert cannot be batched by
            // multi_row, and these are a few per process, not per event.
            let st = stmts.get(db, PROCS)?;
            for p in &b.procs {
                let mut rc = 0;
                for (i, v) in p.ints.iter().enumerate() {
                    rc |= st.bind_int(i + 1, *v);
                }
                rc |= match &p.cmdline {
                    Some(c) => st.bind_text_static(13, c.as_bytes()),
                    None => st.bind_int(13, None),
                };
                st.run(rc)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::IntCols;

    #[test]
    fn int_cols_keep_every_value_and_every_null() {
        let mut cols = [None; 19];
        cols[1] = Some(i64::MIN);
        cols[2] = Some(-1);
        cols[3] = Some(0);
        cols[17] = Some(i64::MAX);
        let back: Vec<Option<i64>> = IntCols::new(cols).iter().collect();
        assert_eq!(back, cols);
        let all = [Some(7); 19];
        assert_eq!(IntCols::new(all).iter().collect::<Vec<_>>(), all);
    }
}
