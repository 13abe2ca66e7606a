//! Reading a window of the history back whole, in id order, without sqlx:
//! the retro-hunt's path through every row. sqlx copies each value of each
//! row and the shared SELECT joins five strings per row; a hunt reads
//! millions, so this reads `events` bare on its own connection and resolves
//! the interned columns through a cache (string ids are never reused, so an
//! entry never goes stale). The rows are the same `Event`s `Store::query`
//! returns (a test compares them).

use std::ffi::{c_int, CStr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libsqlite3_sys as ffi;
use traceed_wire::{static_name, Event, FIDELITIES, KINDS};

use super::schema::NS_BASE;
use super::sqlite::{Db, SqliteError, Stmt, STRING_BY_ID};
use super::StoreError;

const ROWS_SQL: &CStr = c"SELECT id, ts, kind, pid, tid, ppid, uid, gid, comm, ns_pid, exe, \
    cgroup_id, container_id, mnt_ns, pid_ns, retval, args, fidelity, args_keys, proc \
    FROM events WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3";
/// Past this many cached strings the cache starts over (a bound for a
/// store with endless distinct names).
const CACHE_CAP: usize = 1 << 16;

/// One reader of the history; used from one (blocking) thread at a time.
pub struct Scanner {
    rows: Stmt,
    strings: Stmt,
    cache: foldhash::HashMap<i64, Option<Arc<str>>>,
    path: PathBuf,
    _db: Db,
}

/// The window a scan keeps: ids (after, last], ts in [since, until).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub since: Option<i64>,
    pub until: i64,
    pub last: i64,
}

impl Scanner {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |e: SqliteError| StoreError::Scan {
            path: path.into(),
            msg: e.to_string(),
        };
        let db = Db::open(
            path,
            c"PRAGMA busy_timeout = 5000; PRAGMA query_only = 1; PRAGMA mmap_size = 268435456",
        )
        .map_err(err)?;
        Ok(Self {
            rows: Stmt::prepare(&db, ROWS_SQL, true).map_err(err)?,
            strings: Stmt::prepare(&db, STRING_BY_ID, true).map_err(err)?,
            cache: Default::default(),
            path: path.into(),
            _db: db,
        })
    }

    fn string(&mut self, id: Option<i64>) -> Result<Option<Arc<str>>, SqliteError> {
        let Some(id) = id else { return Ok(None) };
        if let Some(s) = self.cache.get(&id) {
            return Ok(s.clone());
        }
        let s = self.strings.text_by_id(id)?.map(Arc::from);
        if self.cache.len() >= CACHE_CAP {
            self.cache.clear();
        }
        self.cache.insert(id, s.clone());
        Ok(s)
    }

    /// Up to `limit` rows after id `after` into `out` (those of the window
    /// only); the last id read, None when there was none (the scan is
    /// over).
    pub fn read(
        &mut self,
        after: i64,
        w: Window,
        limit: u32,
        out: &mut Vec<Event>,
    ) -> Result<Option<i64>, StoreError> {
        self.rows.bind_int(1, Some(after));
        self.rows.bind_int(2, Some(w.last));
        self.rows.bind_int(3, Some(i64::from(limit)));
        let mut last = None;
        let res = 'rows: loop {
            let rc = self.rows.step();
            if rc == ffi::SQLITE_DONE {
                break Ok(());
            }
            if rc != ffi::SQLITE_ROW {
                break Err(self.rows.error(rc));
            }
            let int = |c: c_int| self.rows.col_int(c);
            let id = int(0).unwrap_or_default();
            let ts = int(1).unwrap_or_default();
            last = Some(id);
            if w.since.is_some_and(|s| ts < s) || ts >= w.until {
                continue;
            }
            let u32_of = |c: c_int| int(c).map(|v| v as u32);
            let (pid, tid, ppid, uid, gid) =
                (u32_of(3), u32_of(4), u32_of(5), u32_of(6), u32_of(7));
            let (ns_pid, cgroup_id, retval, proc) =
                (u32_of(9), int(11).map(|v| v as u64), int(15), int(19));
            let mnt_ns = int(13).map(|v| (v + NS_BASE) as u32);
            let pid_ns = int(14).map(|v| (v + NS_BASE) as u32);
            // kind, comm, exe, container_id, fidelity, args_keys.
            let ids = [int(2), int(8), int(10), int(12), int(17), int(18)];
            let args_text = self
                .rows
                .col_text(16)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let mut names: [Option<Arc<str>>; 6] = Default::default();
            for (slot, sid) in names.iter_mut().zip(ids) {
                match self.string(sid) {
                    Ok(s) => *slot = s,
                    Err(e) => break 'rows Err(e),
                }
            }
            let [kind, comm, exe, container_id, fidelity, keys] = names;
            out.push(Event {
                id,
                ts,
                kind: static_name(KINDS, kind.as_deref().unwrap_or_default()),
                pid,
                tid,
                ppid,
                uid,
                gid,
                comm,
                ns_pid,
                exe,
                cgroup_id,
                container_id,
                mnt_ns,
                pid_ns,
                retval,
                args: super::query::decode_args(&args_text, keys.as_deref()),
                fidelity: static_name(FIDELITIES, fidelity.as_deref().unwrap_or_default()),
                proc: proc.map(|k| traceed_wire::ProcKey(k as u64)),
                lineage: None,
            });
        };
        self.rows.reset();
        res.map(|()| last).map_err(|e| StoreError::Scan {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }
}
