//! Owners of SQLite C API handles, for the two readers and writers that go
//! around sqlx on purpose: the writer's insert loop and checkpoints
//! (raw.rs) and the ClickHouse sink's row reader (clickhouse.rs). Both bind
//! and read columns without a round trip to sqlx's worker thread or an
//! allocation per value.
//!
//! A `Stmt` keeps a raw pointer to its connection: the owner declares its
//! statements before the `Db`, so they are finalized before it is closed.

use std::ffi::{c_char, c_int, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;

use libsqlite3_sys as ffi;

/// One interned string by id: the statement `Stmt::text_by_id` runs.
pub(super) const STRING_BY_ID: &CStr = c"SELECT s FROM strings WHERE id = ?1";

#[derive(Debug, thiserror::Error)]
#[error("{msg} (sqlite code {code})")]
pub(super) struct SqliteError {
    pub code: i32,
    pub msg: String,
}

impl SqliteError {
    /// SQLITE_FULL (the primary code, whatever the extended one).
    pub fn is_full(&self) -> bool {
        self.code & 0xff == ffi::SQLITE_FULL
    }
}

fn error(db: *mut ffi::sqlite3, code: c_int) -> SqliteError {
    // SAFETY: db is a live connection; errmsg returns a NUL-terminated
    // string owned by SQLite, copied at once.
    let msg = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) }
        .to_string_lossy()
        .into_owned();
    SqliteError { code, msg }
}

/// An open connection, closed on drop. Used from one thread at a time.
pub(super) struct Db(NonNull<ffi::sqlite3>);

// SAFETY: SQLite is built threadsafe, so a connection may move between
// threads; a Db is never shared, only moved.
unsafe impl Send for Db {}

impl Db {
    /// Open the (already created and migrated) database read-write and run
    /// `pragmas` on the new connection.
    pub fn open(path: &Path, pragmas: &CStr) -> Result<Self, SqliteError> {
        let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| SqliteError {
            code: ffi::SQLITE_CANTOPEN,
            msg: format!("{}: path contains a NUL byte", path.display()),
        })?;
        let mut db = std::ptr::null_mut();
        // SAFETY: NUL-terminated path; db receives the handle, which must be
        // closed even when opening fails (Db's drop does).
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                cpath.as_ptr(),
                &mut db,
                ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX,
                std::ptr::null(),
            )
        };
        let Some(nn) = NonNull::new(db) else {
            return Err(SqliteError {
                code: rc,
                msg: "out of memory opening the database".into(),
            });
        };
        let conn = Self(nn);
        if rc != ffi::SQLITE_OK {
            return Err(conn.error(rc));
        }
        conn.exec(pragmas)?;
        Ok(conn)
    }

    pub fn ptr(&self) -> *mut ffi::sqlite3 {
        self.0.as_ptr()
    }

    /// The connection's message for result code `rc`.
    pub fn error(&self, rc: c_int) -> SqliteError {
        error(self.ptr(), rc)
    }

    /// Run `sql` (no rows).
    pub fn exec(&self, sql: &CStr) -> Result<(), SqliteError> {
        // SAFETY: live connection, NUL-terminated SQL, no callback.
        let rc = unsafe {
            ffi::sqlite3_exec(
                self.ptr(),
                sql.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc));
        }
        Ok(())
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // SAFETY: closing the handle we opened, exactly once; its owner
        // finalized every statement first.
        unsafe { ffi::sqlite3_close(self.ptr()) };
    }
}

/// A prepared statement, finalized on drop.
pub(super) struct Stmt {
    db: *mut ffi::sqlite3,
    stmt: NonNull<ffi::sqlite3_stmt>,
    /// The integer (or NULL) each parameter holds, by index; None where it
    /// holds text or is not known. SQLite keeps bindings across runs, so
    /// `bind_int` skips a value already bound: a loop's rows repeat most
    /// columns, and a bind cost as much as the rest of the row's insert.
    ints: Vec<Option<Option<i64>>>,
}

impl Stmt {
    /// `persistent`: kept for the connection's life (SQLite then allocates
    /// it outside its lookaside memory).
    pub fn prepare(db: &Db, sql: &CStr, persistent: bool) -> Result<Self, SqliteError> {
        let mut stmt = std::ptr::null_mut();
        let flags = if persistent {
            ffi::SQLITE_PREPARE_PERSISTENT
        } else {
            0
        };
        // SAFETY: db is a live connection used by one thread at a time;
        // sql is NUL-terminated; stmt receives the new statement.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db.ptr(),
                sql.as_ptr(),
                -1,
                flags as _,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        match NonNull::new(stmt) {
            Some(stmt) if rc == ffi::SQLITE_OK => Ok(Self {
                db: db.ptr(),
                stmt,
                ints: Vec::new(),
            }),
            _ => Err(db.error(rc)),
        }
    }

    fn ptr(&self) -> *mut ffi::sqlite3_stmt {
        self.stmt.as_ptr()
    }

    /// The connection's message for result code `rc`.
    pub fn error(&self, rc: c_int) -> SqliteError {
        error(self.db, rc)
    }

    /// Bind parameter `i` (1-based); the result code (SQLITE_OK is 0, so
    /// callers OR several and check once).
    pub fn bind_int(&mut self, i: usize, v: Option<i64>) -> c_int {
        if self.ints.get(i) == Some(&Some(v)) {
            return ffi::SQLITE_OK;
        }
        // SAFETY: live statement; i is in range.
        let rc = unsafe {
            match v {
                Some(v) => ffi::sqlite3_bind_int64(self.ptr(), i as c_int, v),
                None => ffi::sqlite3_bind_null(self.ptr(), i as c_int),
            }
        };
        self.note(i, (rc == ffi::SQLITE_OK).then_some(v));
        rc
    }

    /// What parameter `i` now holds (None: not an integer or NULL bound
    /// by `bind_int`).
    fn note(&mut self, i: usize, v: Option<Option<i64>>) {
        if self.ints.len() <= i {
            if v.is_none() {
                return;
            }
            self.ints.resize(i + 1, None);
        }
        self.ints[i] = v;
    }

    /// Bind without a copy: the caller keeps `v` alive and unchanged until
    /// the statement is stepped for the last time with it (every caller
    /// binds from the batch being written, and binds again before the
    /// next batch's steps: a kept statement holds the stale pointer
    /// meanwhile, and SQLite reads a binding only when stepped).
    pub fn bind_text_static(&mut self, i: usize, v: &[u8]) -> c_int {
        self.note(i, None);
        // SAFETY: pointer and length describe valid UTF-8 that outlives its
        // use (see above); SQLITE_STATIC tells SQLite not to copy.
        unsafe {
            ffi::sqlite3_bind_text(
                self.ptr(),
                i as c_int,
                v.as_ptr().cast::<c_char>(),
                v.len() as c_int,
                ffi::SQLITE_STATIC(),
            )
        }
    }

    /// As bind_text_static, for a BLOB.
    pub fn bind_blob_static(&mut self, i: usize, v: &[u8]) -> c_int {
        self.note(i, None);
        // SAFETY: as bind_text_static: `v` outlives its use.
        unsafe {
            ffi::sqlite3_bind_blob(
                self.ptr(),
                i as c_int,
                v.as_ptr().cast(),
                v.len() as c_int,
                ffi::SQLITE_STATIC(),
            )
        }
    }

    /// Run a statement that returns no rows once with the bound values,
    /// then reset it for the next ones. `bind_rc` is the OR of the bind
    /// results.
    pub fn run(&mut self, bind_rc: c_int) -> Result<(), SqliteError> {
        if bind_rc != ffi::SQLITE_OK {
            return Err(self.error(bind_rc));
        }
        let rc = self.step();
        self.reset();
        if rc != ffi::SQLITE_DONE {
            return Err(self.error(rc));
        }
        Ok(())
    }

    /// SQLITE_ROW, SQLITE_DONE or an error code.
    pub fn step(&mut self) -> c_int {
        // SAFETY: live, fully bound statement.
        unsafe { ffi::sqlite3_step(self.ptr()) }
    }

    /// Ready for the next run; also ends a read statement's snapshot, so
    /// checkpoints are not held back by it.
    pub fn reset(&mut self) {
        // SAFETY: live statement.
        unsafe { ffi::sqlite3_reset(self.ptr()) };
    }

    /// Run this one-column query with `id` bound to ?1: the first row's
    /// text (lossy UTF-8), None when there is no row or it is NULL.
    pub fn text_by_id(&mut self, id: i64) -> Result<Option<String>, SqliteError> {
        self.bind_int(1, Some(id));
        let rc = self.step();
        let s = (rc == ffi::SQLITE_ROW)
            .then(|| {
                self.col_text(0)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .flatten();
        self.reset();
        if rc != ffi::SQLITE_ROW && rc != ffi::SQLITE_DONE {
            return Err(self.error(rc));
        }
        Ok(s)
    }

    /// Column `col` of the current row as an integer; None for NULL.
    pub fn col_int(&self, col: c_int) -> Option<i64> {
        // One column lookup, not two (column_type + column_int64 each
        // look the column up again).
        // SAFETY: live statement positioned on a row; col in range; the
        // value is read at once, before the statement moves.
        unsafe {
            let v = ffi::sqlite3_column_value(self.ptr(), col);
            (ffi::sqlite3_value_type(v) != ffi::SQLITE_NULL).then(|| ffi::sqlite3_value_int64(v))
        }
    }

    /// The text of `col`, valid until the next step or reset of this
    /// statement (the borrow of self keeps both away).
    pub fn col_text(&self, col: c_int) -> Option<&[u8]> {
        // SAFETY: live statement positioned on a row; SQLite owns the
        // returned bytes until this statement is stepped, reset or
        // finalized, which all need &mut self.
        unsafe {
            let p = ffi::sqlite3_column_text(self.ptr(), col);
            if p.is_null() {
                return None;
            }
            let n = ffi::sqlite3_column_bytes(self.ptr(), col);
            Some(std::slice::from_raw_parts(p, n.max(0) as usize))
        }
    }
}

impl Drop for Stmt {
    fn drop(&mut self) {
        // SAFETY: finalizing the statement we prepared, exactly once.
        unsafe { ffi::sqlite3_finalize(self.ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integers already bound are kept, not bound again: what each row
    /// stores must still be what was bound for it, through NULLs, repeats
    /// and a text in between.
    #[test]
    fn kept_bindings_store_what_was_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        // Db opens an existing database only; an empty file is one.
        std::fs::File::create(&path).unwrap();
        let db = Db::open(&path, c"CREATE TABLE t (i INTEGER, v)").unwrap();
        let mut st = Stmt::prepare(&db, c"INSERT INTO t VALUES (?1, ?2)", true).unwrap();
        let rows: [(i64, Option<i64>); 7] = [
            (1, Some(5)),
            (2, Some(5)),
            (3, None),
            (4, None),
            (5, Some(5)),
            (6, Some(0)),
            (8, Some(0)),
        ];
        for (i, v) in &rows[..6] {
            let rc = st.bind_int(1, Some(*i)) | st.bind_int(2, *v);
            st.run(rc).unwrap();
        }
        let text = b"five";
        let rc = st.bind_int(1, Some(7)) | st.bind_text_static(2, text);
        st.run(rc).unwrap();
        let (i, v) = rows[6];
        let rc = st.bind_int(1, Some(i)) | st.bind_int(2, v);
        st.run(rc).unwrap();
        drop(st);
        let mut q = Stmt::prepare(&db, c"SELECT i, v, typeof(v) FROM t ORDER BY i", false).unwrap();
        let mut got = Vec::new();
        while q.step() == ffi::SQLITE_ROW {
            let ty = String::from_utf8(q.col_text(2).unwrap().to_vec()).unwrap();
            got.push((q.col_int(0).unwrap(), q.col_int(1), ty));
        }
        let want: Vec<(i64, Option<i64>, String)> = [
            (1, Some(5), "integer"),
            (2, Some(5), "integer"),
            (3, None, "null"),
            (4, None, "null"),
            (5, Some(5), "integer"),
            (6, Some(0), "integer"),
            (7, Some(0), "text"),
            (8, Some(0), "integer"),
        ]
        .into_iter()
        .map(|(i, v, t)| (i, v, t.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}
