//! Turns a raw record from the kernel (`struct event` of
//! daemon-ebpf/include/events.h) into a wire `Event`. This is the only
//! reader of a record's `args[]` slots and strings: each kind has one small
//! function below building its typed payload (`traceed_wire::payload`) from
//! the slots events.h names (`pipeline::contract`), and paths relative to a
//! directory fd come out decoded (`PathAt`) for the process table to
//! resolve. Byte strings come out in the one reversible rendering of
//! `traceed_wire::bytes` (the event-level helpers at the end of this file
//! keep an event's strings in one form when enrichment adds more).

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;

use traceed_wire::bytes;
use traceed_wire::payload::{self, Args, NameOrNumber, Payload};
use traceed_wire::{Event, LiveEvent};

pub use super::contract::RawHeader;
use super::contract::{self as c, Kind};

pub mod syscall_table {
    include!(concat!(env!("OUT_DIR"), "/syscalls.rs"));

    pub fn name(nr: u32) -> Option<&'static str> {
        SYSCALLS.iter().find(|(_, n)| *n == nr).map(|(s, _)| *s)
    }

    pub fn number(name: &str) -> Option<u32> {
        SYSCALLS.iter().find(|(s, _)| *s == name).map(|(_, n)| *n)
    }
}

/// Indexed by `enum bpf_cmd`.
const BPF_CMDS: &[&str] = &[
    "BPF_MAP_CREATE",
    "BPF_MAP_LOOKUP_ELEM",
    "BPF_MAP_UPDATE_ELEM",
    "BPF_MAP_DELETE_ELEM",
    "BPF_MAP_GET_NEXT_KEY",
    "BPF_PROG_LOAD",
    "BPF_OBJ_PIN",
    "BPF_OBJ_GET",
    "BPF_PROG_ATTACH",
    "BPF_PROG_DETACH",
    "BPF_PROG_TEST_RUN",
    "BPF_PROG_GET_NEXT_ID",
    "BPF_MAP_GET_NEXT_ID",
    "BPF_PROG_GET_FD_BY_ID",
    "BPF_MAP_GET_FD_BY_ID",
    "BPF_OBJ_GET_INFO_BY_FD",
    "BPF_PROG_QUERY",
    "BPF_RAW_TRACEPOINT_OPEN",
    "BPF_BTF_LOAD",
    "BPF_BTF_GET_FD_BY_ID",
    "BPF_TASK_FD_QUERY",
    "BPF_MAP_LOOKUP_AND_DELETE_ELEM",
    "BPF_MAP_FREEZE",
    "BPF_BTF_GET_NEXT_ID",
    "BPF_MAP_LOOKUP_BATCH",
    "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
    "BPF_MAP_UPDATE_BATCH",
    "BPF_MAP_DELETE_BATCH",
    "BPF_LINK_CREATE",
    "BPF_LINK_UPDATE",
    "BPF_LINK_GET_FD_BY_ID",
    "BPF_LINK_GET_NEXT_ID",
    "BPF_ENABLE_STATS",
    "BPF_ITER_CREATE",
    "BPF_LINK_DETACH",
    "BPF_PROG_BIND_MAP",
    "BPF_TOKEN_CREATE",
];

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// (family, addr, port) of a raw `struct sockaddr`; `text` renders a unix
/// socket's path.
fn sockaddr(
    b: &[u8],
    text: &dyn Fn(&[u8]) -> String,
) -> (Option<&'static str>, Option<String>, Option<u16>) {
    if b.len() < 2 {
        return (None, None, None);
    }
    let family = u16::from_ne_bytes([b[0], b[1]]);
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    match family {
        AF_INET if b.len() >= 8 => {
            let ip = std::net::Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            (Some("inet"), Some(ip.to_string()), Some(port(b)))
        }
        AF_INET6 if b.len() >= 24 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[8..24]);
            (
                Some("inet6"),
                Some(std::net::Ipv6Addr::from(o).to_string()),
                Some(port(b)),
            )
        }
        AF_UNIX => {
            let path = &b[2..];
            // Abstract sockets start with NUL; show them as '@name'.
            let s = match path.first() {
                Some(0) => format!("@{}", text(until_nul(&path[1..]))),
                _ => text(until_nul(path)),
            };
            (Some("unix"), Some(s), None)
        }
        _ => (Some("other"), None, None),
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the {1}-byte header")]
    Short(usize, usize),
    #[error("record declares {declared} data bytes but carries {actual}")]
    DataLen { declared: usize, actual: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
}

/// A decoded record before enrichment: the header plus its strings.
pub struct Record<'a> {
    pub h: RawHeader,
    pub strs: [Option<&'a [u8]>; c::EV_NUM_STRS],
    /// Render byte strings escaped (`to_event`'s second pass).
    escape: Cell<bool>,
    /// A string rendered unescaped was not UTF-8: the pass must be redone.
    saw_invalid: Cell<bool>,
}

impl Record<'_> {
    /// String `i` (a `STR_*` slot), up to its NUL; None when absent.
    fn str(&self, i: usize) -> Option<String> {
        self.strs[i].map(|b| self.text(until_nul(b)))
    }

    /// A byte string as this pass renders it.
    fn text(&self, b: &[u8]) -> String {
        if self.escape.get() {
            return bytes::render(b, true);
        }
        match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                // This pass is thrown away; the escaped one keeps the bytes.
                self.saw_invalid.set(true);
                String::new()
            }
        }
    }

    /// The raw u64 in `args[slot]` (a `SLOT_*`).
    fn arg(&self, slot: usize) -> u64 {
        self.h.args[slot]
    }

    /// A C int argument: syscall arguments arrive as u64 slots, an int is
    /// their low 32 bits.
    fn int(&self, slot: usize) -> i32 {
        self.h.args[slot] as u32 as i32
    }

    fn has(&self, flag: u32) -> bool {
        self.h.flags & flag != 0
    }
}

pub fn parse(buf: &[u8]) -> Result<Record<'_>, DecodeError> {
    if buf.len() < c::HEADER_SIZE {
        return Err(DecodeError::Short(buf.len(), c::HEADER_SIZE));
    }
    // SAFETY: length checked above; RawHeader is plain old data and the
    // read is unaligned-safe.
    let h: RawHeader = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    let data = &buf[c::HEADER_SIZE..];
    let declared = h.data_len as usize;
    if declared > data.len() {
        return Err(DecodeError::DataLen {
            declared,
            actual: data.len(),
        });
    }
    let mut strs = [None; c::EV_NUM_STRS];
    let mut off = 0usize;
    for (i, len) in h.str_len.iter().enumerate() {
        let len = *len as usize;
        if len == 0 || off + len > declared {
            continue;
        }
        strs[i] = Some(&data[off..off + len]);
        off += len;
    }
    Ok(Record {
        h,
        strs,
        escape: Cell::new(false),
        saw_invalid: Cell::new(false),
    })
}

pub fn kind_name(kind: u32) -> Option<&'static str> {
    Kind::from_raw(kind).map(Kind::name)
}

/// A C string up to its first NUL.
fn until_nul(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

/// argv as the kernel keeps it: NUL-separated, NUL-terminated; each
/// argument rendered by `text`.
fn split_argv(b: &[u8], text: &dyn Fn(&[u8]) -> String) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    b.split(|&c| c == 0).map(text).collect()
}

/// A path an event names relative to a directory fd (AT_FDCWD for the
/// cwd), decoded: what `proctable::absolutize` resolves while the process
/// is still there. `field` is the key of the path in the event's `args`.
#[derive(Debug, Clone, PartialEq)]
pub struct PathAt {
    pub field: &'static str,
    pub dirfd: i32,
    /// The kernel's id of the directory open at `dirfd` when the record
    /// was made (`dir_fd_id` in task.h; CO-RE rungs): /proc/PID/fd/N is
    /// read once per id.
    pub dir_id: Option<u64>,
}

/// An event and what the decoder knows about it that is not stored.
pub struct Decoded {
    pub event: LiveEvent,
    pub paths_at: Vec<PathAt>,
    /// The process's start (boot clock ns) when the record carries it:
    /// fork and exec on the CO-RE and kernel-object rungs. The process
    /// table keys the instance by it (`proctable::derive_key`).
    pub start_boot: Option<u64>,
    /// Which directory the task's relative paths started from when the
    /// record was made (`cwd_id` in task.h; CO-RE rungs, path kinds), so
    /// /proc/PID/cwd is read once per id; on an exec, the id of the cwd
    /// the record names.
    pub cwd_id: Option<u64>,
    /// The directory an O_DIRECTORY open returned its fd for (`dir_fd_id`
    /// in task.h; CO-RE rungs): what that fd names, from the kernel.
    pub opened_dir: Option<u64>,
}

/// One kind's payload, read from a record's slots.
trait FromRecord: Sized {
    fn from_record(r: &Record<'_>, at: &mut Vec<PathAt>) -> Self;
}

/// Note `path` (string `str_slot`) as relative to the dirfd in `dirfd_slot`,
/// when it is relative (absolute and empty paths need nothing).
fn path_at(
    r: &Record<'_>,
    at: &mut Vec<PathAt>,
    field: &'static str,
    str_slot: usize,
    dirfd_slot: usize,
) -> Option<String> {
    let path = r.str(str_slot);
    if path
        .as_ref()
        .is_some_and(|p| !p.is_empty() && !p.starts_with('/'))
    {
        at.push(PathAt {
            field,
            dirfd: r.int(dirfd_slot),
            dir_id: None,
        });
    }
    path
}

impl FromRecord for payload::Exec {
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        let filename = r.str(c::STR_EXEC_FILENAME);
        let ctime = r.arg(c::SLOT_EXEC_CTIME);
        let sized = r.arg(c::SLOT_EXEC_ARGV_KNOWN) == c::ARGV_SIZE_KNOWN;
        Self {
            argv: r.strs[c::STR_EXEC_ARGV]
                .map(|b| split_argv(b, &|a| r.text(a)))
                .unwrap_or_default(),
            interpreter: r
                .str(c::STR_EXEC_INTERP)
                .filter(|i| Some(i) != filename.as_ref()),
            exe_ctime: (ctime != 0).then(|| traceed_wire::format_ts(ctime as i64)),
            argc: sized.then(|| r.arg(c::SLOT_EXEC_ARGC)),
            argv_bytes: sized.then(|| r.arg(c::SLOT_EXEC_ARGV_BYTES)),
            cwd: r.str(c::STR_EXEC_CWD),
            filename,
        }
    }
}

impl FromRecord for payload::Fork {
    fn from_record(_: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        Self {}
    }
}

impl FromRecord for payload::Exit {
    /// Unknown status (the fallback saw no exit_group) is null and null;
    /// a process killed by a signal passed no status to exit.
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        if r.arg(c::SLOT_EXIT_STATUS_KNOWN) != c::EXIT_STATUS_KNOWN {
            return Self {
                exit_code: None,
                signal: None,
            };
        }
        match r.arg(c::SLOT_EXIT_SIGNAL) {
            0 => Self {
                exit_code: Some(r.arg(c::SLOT_EXIT_CODE)),
                signal: None,
            },
            sig => Self {
                exit_code: None,
                signal: Some(sig),
            },
        }
    }
}

impl FromRecord for payload::Open {
    fn from_record(r: &Record<'_>, at: &mut Vec<PathAt>) -> Self {
        Self {
            path: path_at(r, at, "path", c::STR_OPEN_PATH, c::SLOT_OPEN_DIRFD),
            flags: r.int(c::SLOT_OPEN_FLAGS),
            mode: r.arg(c::SLOT_OPEN_MODE) as u32,
            count: None,
            last: None,
        }
    }
}

impl FromRecord for payload::Unlink {
    fn from_record(r: &Record<'_>, at: &mut Vec<PathAt>) -> Self {
        Self {
            path: path_at(r, at, "path", c::STR_UNLINK_PATH, c::SLOT_UNLINK_DIRFD),
            flags: r.int(c::SLOT_UNLINK_FLAGS),
        }
    }
}

impl FromRecord for payload::Rename {
    fn from_record(r: &Record<'_>, at: &mut Vec<PathAt>) -> Self {
        Self {
            old_path: path_at(
                r,
                at,
                "old_path",
                c::STR_RENAME_OLD,
                c::SLOT_RENAME_OLD_DIRFD,
            ),
            new_path: path_at(
                r,
                at,
                "new_path",
                c::STR_RENAME_NEW,
                c::SLOT_RENAME_NEW_DIRFD,
            ),
            flags: r.arg(c::SLOT_RENAME_FLAGS) as u32,
        }
    }
}

impl FromRecord for payload::Chmod {
    fn from_record(r: &Record<'_>, at: &mut Vec<PathAt>) -> Self {
        Self {
            // fchmod (V_FD) has no path, so nothing to resolve.
            path: path_at(r, at, "path", c::STR_CHMOD_PATH, c::SLOT_CHMOD_DIRFD),
            mode: r.arg(c::SLOT_CHMOD_MODE) as u32,
        }
    }
}

impl FromRecord for payload::Mount {
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        Self {
            source: r.str(c::STR_MOUNT_SOURCE),
            target: r.str(c::STR_MOUNT_TARGET),
            fstype: r.str(c::STR_MOUNT_FSTYPE),
            flags: r.arg(c::SLOT_MOUNT_FLAGS),
        }
    }
}

impl FromRecord for payload::MemfdCreate {
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        Self {
            name: r.str(c::STR_MEMFD_NAME),
            flags: r.arg(c::SLOT_MEMFD_FLAGS) as u32,
        }
    }
}

impl FromRecord for payload::ModuleLoad {
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        Self {
            name: r.str(c::STR_MODULE_NAME),
        }
    }
}

impl FromRecord for payload::Sock {
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        let (family, addr, port) = r.strs[c::STR_SOCK_ADDR]
            .map(|b| sockaddr(b, &|p| r.text(p)))
            .unwrap_or((None, None, None));
        Self {
            fd: r.int(c::SLOT_SOCK_FD),
            family: family.map(String::from),
            addr,
            port,
        }
    }
}

impl FromRecord for payload::Setuid {
    /// The uid the caller asked to become: setuid's argument, setre[s]uid's
    /// euid unless it is -1 ("unchanged"), then ruid.
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        let set = |slot: usize| Some(r.arg(slot) as u32).filter(|v| *v != u32::MAX);
        let (uid, syscall) = match r.h.aux {
            c::V_RE | c::V_RES => (
                set(c::SLOT_SETUID_EUID).or_else(|| set(c::SLOT_SETUID_RUID)),
                if r.h.aux == c::V_RE {
                    "setreuid"
                } else {
                    "setresuid"
                },
            ),
            _ => (Some(r.arg(c::SLOT_SETUID_UID) as u32), "setuid"),
        };
        Self {
            uid,
            syscall: syscall.into(),
        }
    }
}

impl FromRecord for payload::Ptrace {
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        Self {
            request: r.arg(c::SLOT_PTRACE_REQUEST) as i64,
            target_pid: r.int(c::SLOT_PTRACE_PID),
        }
    }
}

impl FromRecord for payload::Kill {
    /// tkill names a thread only: it is also shown as the target pid.
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        match r.h.aux {
            c::V_TG => Self {
                target_pid: r.int(c::SLOT_TGKILL_TGID),
                signal: r.int(c::SLOT_TGKILL_SIG),
                target_tid: Some(r.int(c::SLOT_TGKILL_TID)),
            },
            c::V_T => Self {
                target_pid: r.int(c::SLOT_TKILL_TID),
                signal: r.int(c::SLOT_KILL_SIG),
                target_tid: Some(r.int(c::SLOT_TKILL_TID)),
            },
            _ => Self {
                target_pid: r.int(c::SLOT_KILL_PID),
                signal: r.int(c::SLOT_KILL_SIG),
                target_tid: None,
            },
        }
    }
}

impl FromRecord for payload::Bpf {
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        let cmd = r.int(c::SLOT_BPF_CMD);
        Self {
            cmd: BPF_CMDS
                .get(cmd as usize)
                .map_or(NameOrNumber::Number(cmd.into()), |n| {
                    NameOrNumber::Name((*n).into())
                }),
        }
    }
}

impl FromRecord for payload::Syscall {
    fn from_record(r: &Record<'_>, _: &mut Vec<PathAt>) -> Self {
        let nr = r.h.aux;
        let mut args = [0u64; 6];
        args.copy_from_slice(&r.h.args[c::SLOT_SYSCALL_ARGS..c::SLOT_SYSCALL_ARGS + 6]);
        Self {
            syscall: syscall_table::name(nr).map_or(NameOrNumber::Number(nr.into()), |n| {
                NameOrNumber::Name(n.into())
            }),
            nr,
            args,
        }
    }
}

/// `args` of an event: the kind's payload plus `truncated` and `escaped`.
fn args_of<T: FromRecord>(r: &Record<'_>, at: &mut Vec<PathAt>) -> Args<T> {
    Args {
        fields: T::from_record(r, at),
        truncated: r.has(c::EF_TRUNCATED),
        escaped: r.escape.get(),
    }
}

/// The comm strings of recent records, shared: a process's events repeat
/// its comm, and one string per (comm, form) saves one per event.
#[derive(Default)]
pub struct Comms(foldhash::HashMap<([u8; 16], bool), Arc<str>>);

impl Comms {
    /// Distinct comms kept; past it the cache starts over.
    const MAX: usize = 4096;

    fn get(&mut self, rec: &Record<'_>) -> Arc<str> {
        let key = (rec.h.comm, rec.escape.get());
        if let Some(s) = self.0.get(&key) {
            return s.clone();
        }
        let b = until_nul(&rec.h.comm);
        let s: Arc<str> = rec.text(b).into();
        // Not UTF-8 and not escaped: this pass is thrown away
        // (`Record::text`), and so is its placeholder.
        if !rec.escape.get() && std::str::from_utf8(b).is_err() {
            return s;
        }
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(key, s.clone());
        s
    }
}

/// Build the event (without id, exe, container: enrichment fills those).
pub fn to_event(
    rec: &Record<'_>,
    boot_to_wall_ns: i64,
    fidelity: &'static str,
    comms: &mut Comms,
) -> Result<Decoded, DecodeError> {
    let h = &rec.h;
    let kind = Kind::from_raw(h.kind).ok_or(DecodeError::Kind(h.kind))?;
    rec.escape.set(false);
    rec.saw_invalid.set(false);
    let (args, comm, mut at) = match render(rec, kind, comms) {
        // Rare (a name that is not UTF-8): render every string again,
        // escaped, so the event's strings are all in one form.
        _ if rec.saw_invalid.get() => {
            rec.escape.set(true);
            render(rec, kind, comms)
        }
        first => first,
    };
    let has_ns = rec.has(c::EF_HAS_NS);
    let ns = |v: u32| has_ns.then_some(v);
    let event = Event {
        id: 0,
        ts: (h.ts_ns as i64).saturating_add(boot_to_wall_ns),
        kind: kind.name().into(),
        pid: Some(h.pid),
        tid: Some(h.tid),
        ppid: rec.has(c::EF_HAS_PPID).then_some(h.ppid),
        uid: Some(h.uid),
        gid: Some(h.gid),
        comm: Some(comm),
        ns_pid: ns(h.ns_pid),
        exe: None,
        cgroup_id: (h.cgroup_id != 0).then_some(h.cgroup_id),
        container_id: None,
        mnt_ns: ns(h.mnt_ns),
        pid_ns: ns(h.pid_ns),
        retval: rec.has(c::EF_HAS_RETVAL).then_some(h.retval),
        args,
        fidelity: fidelity.into(),
        proc: None,
        lineage: None,
    };
    let start = match kind {
        Kind::Exec => rec.arg(c::SLOT_EXEC_START),
        Kind::Fork => rec.arg(c::SLOT_FORK_START),
        _ => 0,
    };
    let (cwd_id, dir_id) = match kind {
        Kind::Open | Kind::Unlink | Kind::Rename | Kind::Chmod => {
            (rec.arg(c::SLOT_CWD_ID), rec.arg(c::SLOT_DIR_ID))
        }
        Kind::Exec => (rec.arg(c::SLOT_EXEC_CWD_ID), 0),
        _ => (0, 0),
    };
    // The kernel names the directory of the first path when it is relative
    // to a dirfd (rename's old path; paths are noted in order): the id goes
    // to each path on that fd.
    let first_fd = at.first().map(|p| p.dirfd);
    if let Some(fd) = first_fd.filter(|&fd| dir_id != 0 && fd != super::proctable::AT_FDCWD) {
        for p in at.iter_mut().filter(|p| p.dirfd == fd) {
            p.dir_id = Some(dir_id);
        }
    }
    let opened_dir = match kind {
        Kind::Open => rec.arg(c::SLOT_OPEN_DIR_ID),
        _ => 0,
    };
    Ok(Decoded {
        event,
        paths_at: at,
        start_boot: (start != 0).then_some(start),
        cwd_id: (cwd_id != 0).then_some(cwd_id),
        opened_dir: (opened_dir != 0).then_some(opened_dir),
    })
}

/// One rendering pass over a record's strings: (args, comm, paths).
fn render(rec: &Record<'_>, kind: Kind, comms: &mut Comms) -> (Payload, Arc<str>, Vec<PathAt>) {
    let mut at = Vec::new();
    let at_ = &mut at;
    let args = match kind {
        Kind::Exec => args_of::<payload::Exec>(rec, at_).into(),
        Kind::Fork => Payload::Fork(args_of(rec, at_)),
        Kind::Exit => Payload::Exit(args_of(rec, at_)),
        Kind::Open => Payload::Open(args_of(rec, at_)),
        Kind::Connect | Kind::Accept | Kind::Bind => Payload::Sock(args_of(rec, at_)),
        Kind::Unlink => Payload::Unlink(args_of(rec, at_)),
        Kind::Rename => Payload::Rename(args_of(rec, at_)),
        Kind::Chmod => Payload::Chmod(args_of(rec, at_)),
        Kind::Setuid => Payload::Setuid(args_of(rec, at_)),
        Kind::Ptrace => Payload::Ptrace(args_of(rec, at_)),
        Kind::Kill => Payload::Kill(args_of(rec, at_)),
        Kind::Mount => Payload::Mount(args_of(rec, at_)),
        Kind::ModuleLoad => Payload::ModuleLoad(args_of(rec, at_)),
        Kind::Bpf => Payload::Bpf(args_of(rec, at_)),
        Kind::MemfdCreate => Payload::MemfdCreate(args_of(rec, at_)),
        Kind::Syscall => Payload::Syscall(args_of(rec, at_)),
    };
    (args, comms.get(rec), at)
}

/// Whether `e`'s byte strings are in the escaped form (`args.escaped`).
pub fn is_escaped(e: &LiveEvent) -> bool {
    e.args.escaped()
}

/// The bytes a string of `e` stands for (as passed to `store_bytes`):
/// the string itself unless the event is escaped, so the common case
/// copies nothing.
pub fn raw_bytes<'s>(e: &LiveEvent, s: &'s str) -> Cow<'s, [u8]> {
    if !is_escaped(e) {
        return Cow::Borrowed(s.as_bytes());
    }
    // A string of this event was rendered by `bytes::render` with this
    // flag, so it always parses; the fallback keeps a bug from panicking.
    bytes::unrender(s, true).map_or(Cow::Borrowed(s.as_bytes()), Cow::Owned)
}

/// `b` rendered as a string of `e`, escaping the event first when `b` is
/// not UTF-8 and the event is not escaped yet (enrichment adds `exe` and
/// resolved paths after decoding).
pub fn store_bytes(e: &mut LiveEvent, b: &[u8]) -> String {
    if !is_escaped(e) && bytes::needs_escape(b) {
        escape_event(e);
    }
    bytes::render(b, is_escaped(e))
}

/// Move an unescaped event to the escaped form: its strings are all valid
/// UTF-8, so escaping them only doubles backslashes. The strings in args
/// that are not byte strings (family, syscall and bpf command names,
/// times, IP addresses) never hold a backslash.
fn escape_event(e: &mut LiveEvent) {
    let doubled = |s: &str| s.contains('\\').then(|| s.replace('\\', "\\\\"));
    e.args.strings_mut(&mut |_, s| {
        if let Some(d) = doubled(s) {
            *s = d;
        }
    });
    for s in [&mut e.comm, &mut e.exe].into_iter().flatten() {
        if let Some(d) = doubled(s) {
            *s = d.into();
        }
    }
    e.args.set_escaped();
}

#[cfg(test)]
pub(crate) mod tests {
    use std::mem::{offset_of, size_of};

    use serde_json::{json, Map, Value};

    use super::*;

    fn record_with(kind: u32, strs: &[&[u8]], f: impl FnOnce(&mut RawHeader)) -> Vec<u8> {
        // SAFETY: RawHeader is plain old data; all zeroes is a valid value.
        let mut h: RawHeader = unsafe { std::mem::zeroed() };
        h.kind = kind;
        h.pid = 42;
        h.tid = 43;
        h.flags = c::EF_HAS_PPID;
        h.ppid = 1;
        h.comm[..4].copy_from_slice(b"true");
        let mut data = Vec::new();
        for (i, s) in strs.iter().enumerate() {
            h.str_len[i] = s.len() as u32;
            data.extend_from_slice(s);
        }
        h.data_len = data.len() as u32;
        f(&mut h);
        let mut buf = vec![0u8; size_of::<RawHeader>()];
        // SAFETY: buf holds exactly one header.
        unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().cast(), h) };
        buf.extend_from_slice(&data);
        buf
    }

    /// xorshift64*: random records without a dependency, seeded so a
    /// failure reproduces.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }

        /// A record as the kernel could never send it: random bytes, a
        /// valid header with lying lengths or an unknown kind, a valid
        /// record cut short, random strings.
        pub(crate) fn malformed_record(&mut self) -> Vec<u8> {
            let kinds: Vec<u32> = Kind::ALL.iter().map(|k| *k as u32).collect();
            match self.below(5) {
                0 => {
                    let n = self.below(2 * c::HEADER_SIZE as u64) as usize;
                    self.bytes(n)
                }
                shape => {
                    let kind = if shape == 1 {
                        self.next() as u32
                    } else {
                        kinds[self.below(kinds.len() as u64) as usize]
                    };
                    let strs: Vec<Vec<u8>> = (0..self.below(5))
                        .map(|_| {
                            let n = self.below(300) as usize;
                            self.bytes(n)
                        })
                        .collect();
                    let refs: Vec<&[u8]> = strs.iter().map(|s| s.as_slice()).collect();
                    let (a, b, d) = (self.next(), self.next(), self.next());
                    let mut buf = record_with(kind, &refs, |h| {
                        h.flags = a as u32;
                        h.aux = (a >> 32) as u32;
                        h.args = [a, b, d, a ^ b, b ^ d, d.rotate_left(7)];
                        h.ts_ns = b;
                        h.comm.copy_from_slice(&d.to_ne_bytes().repeat(2));
                        if shape == 3 {
                            // Lengths that lie: past the data, or summing
                            // past it.
                            h.data_len = (d >> 40) as u32;
                            h.str_len = [a as u32, (a >> 32) as u32, b as u16 as u32, u32::MAX];
                        }
                    });
                    if shape == 4 {
                        let cut = self.below(buf.len() as u64 + 1) as usize;
                        buf.truncate(cut);
                    }
                    buf
                }
            }
        }
    }

    /// Every string of a decoded event gives back bytes (the escaped
    /// form parses).
    fn strings_unrender(e: &LiveEvent) {
        fn walk(v: &Value, esc: bool) {
            match v {
                Value::String(s) => {
                    bytes::unrender(s, esc).unwrap_or_else(|x| panic!("{s:?}: {x}"));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, esc)),
                Value::Object(m) => m.values().for_each(|v| walk(v, esc)),
                _ => {}
            }
        }
        let esc = is_escaped(e);
        walk(&e.args.to_value(), esc);
        walk(&json!(e.comm), esc);
    }

    #[test]
    fn malformed_records_never_panic() {
        let mut rng = Rng(0x00de_c0de);
        let (mut ok, mut err) = (0, 0);
        for _ in 0..100_000 {
            let buf = rng.malformed_record();
            match parse(&buf).and_then(|r| to_event(&r, i64::MAX, "core", &mut Comms::default())) {
                Ok(d) => {
                    ok += 1;
                    strings_unrender(&d.event);
                    serde_json::to_string(&d.event).unwrap();
                }
                Err(_) => err += 1,
            }
        }
        assert!(ok > 10_000 && err > 10_000, "ok {ok} err {err}");
    }

    #[test]
    fn bytes_that_are_not_utf8_survive_decoding() {
        let mut rng = Rng(0x000b_17e5);
        for _ in 0..20_000 {
            // Mostly ASCII with a backslash or an invalid byte now and then.
            let s = |rng: &mut Rng| -> Vec<u8> {
                (0..rng.below(20))
                    .map(|_| match rng.below(8) {
                        0 => b'\\',
                        1 => 0x80 | rng.next() as u8,
                        _ => b'a' + rng.below(26) as u8,
                    })
                    .collect()
            };
            let (old, new, comm) = (s(&mut rng), s(&mut rng), s(&mut rng));
            let comm: Vec<u8> = comm.into_iter().take(15).collect();
            let with_nul = |b: &[u8]| [b, b"\0"].concat();
            let buf = record_with(c::EK_RENAME, &[&with_nul(&old), &with_nul(&new)], |h| {
                h.comm = [0; 16];
                h.comm[..comm.len()].copy_from_slice(&comm);
            });
            let e = decode(&buf).event;
            let want_escape = [&old, &new, &comm].iter().any(|b| bytes::needs_escape(b));
            assert_eq!(is_escaped(&e), want_escape);
            let back = |k: &str| raw_bytes(&e, e.args.to_value()[k].as_str().unwrap()).into_owned();
            let or_null = |b: &Vec<u8>| (!b.is_empty()).then(|| b.clone());
            assert_eq!(or_null(&back("old_path")), or_null(&old));
            assert_eq!(or_null(&back("new_path")), or_null(&new));
            assert_eq!(raw_bytes(&e, e.comm.as_deref().unwrap()), comm);
        }
    }

    #[test]
    fn shared_comms_decode_as_fresh_ones() {
        let mut rng = Rng(0x00c0_3305);
        let mut shared = Comms::default();
        let comms: [&[u8]; 4] = [b"sh", b"a\\b", b"\xff\xfe", b"make"];
        let paths: [&[u8]; 3] = [b"/ok\0", b"/\xff\0", b"/a\\b\0"];
        for _ in 0..5000 {
            let comm = comms[rng.below(4) as usize];
            let path = paths[rng.below(3) as usize];
            let buf = record_with(c::EK_OPEN, &[path], |h| {
                h.comm = [0; 16];
                h.comm[..comm.len()].copy_from_slice(comm);
            });
            let rec = parse(&buf).unwrap();
            let a = to_event(&rec, 0, "core", &mut shared).unwrap().event;
            let b = to_event(&rec, 0, "core", &mut Comms::default())
                .unwrap()
                .event;
            assert_eq!(a, b);
        }
        assert!(shared.0.len() <= 8, "{}", shared.0.len());
    }

    #[test]
    fn enrichment_escapes_an_event_that_was_plain() {
        let mut e = decode(&record(c::EK_OPEN, &[b"C:\\dir\0"])).event;
        assert!(!is_escaped(&e));
        assert_eq!(e.args.to_value()["path"], "C:\\dir");
        let exe = store_bytes(&mut e, b"/opt/\xff\\x");
        e.exe = Some(exe.into());
        assert!(is_escaped(&e));
        assert_eq!(e.args.to_value()["path"], "C:\\\\dir");
        assert_eq!(e.exe.as_deref(), Some("/opt/\\xff\\\\x"));
        assert_eq!(
            raw_bytes(&e, e.args.to_value()["path"].as_str().unwrap()).into_owned(),
            b"C:\\dir"
        );
        assert_eq!(
            raw_bytes(&e, e.exe.as_deref().unwrap()).into_owned(),
            b"/opt/\xff\\x"
        );
        // Already escaped: nothing doubles twice.
        assert_eq!(store_bytes(&mut e, b"a\\b"), "a\\\\b");
        assert_eq!(e.args.to_value()["path"], "C:\\\\dir");
    }

    fn record(kind: u32, strs: &[&[u8]]) -> Vec<u8> {
        record_with(kind, strs, |_| {})
    }

    fn decode(buf: &[u8]) -> Decoded {
        to_event(&parse(buf).unwrap(), 1000, "core", &mut Comms::default()).unwrap()
    }

    #[test]
    fn header_matches_c_layout() {
        // The const asserts in contract.rs are the real check; this keeps
        // a test that fails loudly if someone removes them.
        assert_eq!(size_of::<RawHeader>(), c::HEADER_SIZE);
        assert_eq!(offset_of!(RawHeader, data_len), c::OFF_DATA_LEN);
        assert_eq!(offset_of!(RawHeader, aux), c::OFF_AUX);
        assert_eq!(c::EVENT_SIZE, c::HEADER_SIZE + c::EV_BUF_SIZE);
    }

    #[test]
    fn exec_decodes_filename_and_argv() {
        let buf = record(
            c::EK_EXEC,
            &[b"/bin/true\0", b"", b"", b"true\0--marker\0x y\0"],
        );
        let e = decode(&buf).event;
        assert_eq!(e.kind, "exec");
        assert_eq!(e.pid, Some(42));
        assert_eq!(e.ppid, Some(1));
        assert_eq!(e.comm.as_deref(), Some("true"));
        assert_eq!(e.mnt_ns, None, "namespaces unknown without EF_HAS_NS");
        assert_eq!(e.args.to_value()["filename"], "/bin/true");
        assert_eq!(
            e.args.to_value()["argv"],
            json!(["true", "--marker", "x y"])
        );
        assert_eq!(
            e.args.to_value(),
            json!({"filename": "/bin/true", "argv": ["true", "--marker", "x y"]}),
            "no interpreter, exe_ctime or truncated key when there is none"
        );
    }

    /// argc and argv_bytes come with their "known" marker only (also when
    /// argv was cut); cwd is string 2; a failed exec carries its -errno.
    #[test]
    fn exec_sizes_cwd_and_failure() {
        let buf = record_with(
            c::EK_EXEC,
            &[b"/nope\0", b"", b"/tmp/w d\0", b"nope\0a\0"],
            |h| {
                h.args[c::SLOT_EXEC_ARGC] = 3;
                h.args[c::SLOT_EXEC_ARGV_BYTES] = 9000;
                h.args[c::SLOT_EXEC_ARGV_KNOWN] = c::ARGV_SIZE_KNOWN;
                h.flags |= c::EF_TRUNCATED | c::EF_HAS_RETVAL;
                h.retval = -2;
            },
        );
        let e = decode(&buf).event;
        assert_eq!(e.retval, Some(-2));
        assert_eq!(
            e.args.to_value(),
            json!({"filename": "/nope", "argv": ["nope", "a"], "argc": 3, "argv_bytes": 9000,
                   "cwd": "/tmp/w d", "truncated": true})
        );
        let buf = record_with(c::EK_EXEC, &[b"/x\0"], |h| {
            h.args[c::SLOT_EXEC_ARGC] = 3;
            h.args[c::SLOT_EXEC_ARGV_BYTES] = 9;
        });
        let e = decode(&buf).event;
        assert_eq!(
            e.args.to_value(),
            json!({"filename": "/x", "argv": []}),
            "sizes unknown"
        );
        assert_eq!(e.retval, None, "a successful exec has no retval");
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(matches!(parse(&[0u8; 10]), Err(DecodeError::Short(10, _))));
        let mut buf = record(c::EK_EXEC, &[b"/bin/true\0"]);
        buf.truncate(buf.len() - 3);
        assert!(matches!(parse(&buf), Err(DecodeError::DataLen { .. })));
        let buf = record(999, &[]);
        assert_eq!(
            to_event(&parse(&buf).unwrap(), 0, "core", &mut Comms::default()).err(),
            Some(DecodeError::Kind(999))
        );
    }

    #[test]
    fn exit_status_unknown_is_null_never_zero() {
        // The fallback without an exit_group: nothing known.
        let e = decode(&record(c::EK_EXIT, &[])).event;
        assert_eq!(
            e.args.to_value(),
            json!({"exit_code": null, "signal": null})
        );
        let known = |code: u64, sig: u64| {
            decode(&record_with(c::EK_EXIT, &[], |h| {
                h.args[c::SLOT_EXIT_CODE] = code;
                h.args[c::SLOT_EXIT_SIGNAL] = sig;
                h.args[c::SLOT_EXIT_STATUS_KNOWN] = c::EXIT_STATUS_KNOWN;
            }))
            .event
            .args
            .to_value()
        };
        assert_eq!(known(0, 0), json!({"exit_code": 0, "signal": null}));
        assert_eq!(known(3, 0), json!({"exit_code": 3, "signal": null}));
        assert_eq!(known(0, 9), json!({"exit_code": null, "signal": 9}));
    }

    #[test]
    fn relative_paths_come_with_their_dirfd() {
        let d = decode(&record_with(c::EK_RENAME, &[b"a\0", b"b/c\0"], |h| {
            h.args[c::SLOT_RENAME_OLD_DIRFD] = -100i64 as u64;
            h.args[c::SLOT_RENAME_NEW_DIRFD] = 7;
        }));
        assert_eq!(
            d.paths_at,
            vec![
                PathAt {
                    field: "old_path",
                    dirfd: -100,
                    dir_id: None,
                },
                PathAt {
                    field: "new_path",
                    dirfd: 7,
                    dir_id: None,
                },
            ]
        );
        // Absolute paths need no resolving.
        let d = decode(&record_with(c::EK_RENAME, &[b"a\0", b"/b\0"], |h| {
            h.args[c::SLOT_RENAME_OLD_DIRFD] = -100i64 as u64;
            h.args[c::SLOT_RENAME_NEW_DIRFD] = 7;
        }));
        assert_eq!(
            d.paths_at,
            vec![PathAt {
                field: "old_path",
                dirfd: -100,
                dir_id: None,
            }]
        );
        // The directory id is the old path's fd's: the new path shares it
        // only when it names the same fd.
        let ids = |new_fd: u64| {
            decode(&record_with(c::EK_RENAME, &[b"a\0", b"b\0"], |h| {
                h.args[c::SLOT_RENAME_OLD_DIRFD] = 5;
                h.args[c::SLOT_RENAME_NEW_DIRFD] = new_fd;
                h.args[c::SLOT_DIR_ID] = 0xd1;
            }))
            .paths_at
            .iter()
            .map(|p| p.dir_id)
            .collect::<Vec<_>>()
        };
        assert_eq!(ids(5), [Some(0xd1), Some(0xd1)]);
        assert_eq!(ids(6), [Some(0xd1), None]);
        assert_eq!(ids(-100i64 as u64), [Some(0xd1), None]);
        // fchmod: no path, nothing to resolve.
        let d = decode(&record_with(c::EK_CHMOD, &[], |h| h.aux = c::V_FD));
        assert!(d.paths_at.is_empty());
        assert!(d.event.args.get("path").is_some_and(|p| p.is_null()));
    }

    /// The decoder before payload types (one match building JSON by hand),
    /// kept as the oracle: every kind must serialise exactly as it did.
    fn legacy_args(h: &RawHeader, strs: &[Option<&[u8]>; 4]) -> Value {
        const V_T: u32 = 5;
        const V_TG: u32 = 6;
        const V_RE: u32 = 3;
        const V_RES: u32 = 4;
        let kind = kind_name(h.kind).unwrap();
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let s = |i: usize| strs[i].map(|b| lossy(until_nul(b)));
        let mut args = Map::new();
        let a = &h.args;
        let int = |v: u64| v as u32 as i32;
        match kind {
            "exec" => {
                args.insert("filename".into(), json!(s(0)));
                // Since argc, argv_bytes and cwd: argv is string 3, cwd 2.
                let argv = strs[3].map(|b| split_argv(b, &lossy)).unwrap_or_default();
                args.insert("argv".into(), json!(argv));
                if let Some(interp) = s(1).filter(|i| Some(i) != s(0).as_ref()) {
                    args.insert("interpreter".into(), json!(interp));
                }
                if a[3] != 0 {
                    args.insert(
                        "exe_ctime".into(),
                        json!(traceed_wire::format_ts(a[3] as i64)),
                    );
                }
                if a[2] == c::ARGV_SIZE_KNOWN {
                    args.insert("argc".into(), json!(a[0]));
                    args.insert("argv_bytes".into(), json!(a[1]));
                }
                if let Some(cwd) = s(2) {
                    args.insert("cwd".into(), json!(cwd));
                }
            }
            "exit" => {
                // A process killed by a signal passed no status to exit.
                let sig = a[1];
                let (code, sig) = if sig == 0 {
                    (json!(a[0]), Value::Null)
                } else {
                    (Value::Null, json!(sig))
                };
                args.insert("exit_code".into(), code);
                args.insert("signal".into(), sig);
            }
            "open" => {
                args.insert("path".into(), json!(s(0)));
                args.insert("flags".into(), json!(int(a[0])));
                args.insert("mode".into(), json!(a[1] as u32));
            }
            "unlink" => {
                args.insert("path".into(), json!(s(0)));
                args.insert("flags".into(), json!(int(a[1])));
            }
            "rename" => {
                args.insert("old_path".into(), json!(s(0)));
                args.insert("new_path".into(), json!(s(1)));
                args.insert("flags".into(), json!(a[1] as u32));
            }
            "chmod" => {
                args.insert("path".into(), json!(s(0)));
                args.insert("mode".into(), json!(a[0] as u32));
            }
            "mount" => {
                args.insert("source".into(), json!(s(0)));
                args.insert("target".into(), json!(s(1)));
                args.insert("fstype".into(), json!(s(2)));
                args.insert("flags".into(), json!(a[0]));
            }
            "memfd_create" => {
                args.insert("name".into(), json!(s(0)));
                args.insert("flags".into(), json!(a[0] as u32));
            }
            "module_load" => {
                args.insert("name".into(), json!(s(0)));
            }
            "connect" | "bind" | "accept" => {
                args.insert("fd".into(), json!(int(a[0])));
                let (family, addr, port) = strs[0]
                    .map(|b| sockaddr(b, &lossy))
                    .unwrap_or((None, None, None));
                args.insert("family".into(), json!(family));
                args.insert("addr".into(), json!(addr));
                args.insert("port".into(), json!(port));
            }
            "setuid" => {
                // The uid the caller asked to become: setuid's argument,
                // setre[s]uid's euid unless it is -1 ("unchanged"), then ruid.
                let unchanged = |v: u64| v as u32 == u32::MAX;
                let uid = match h.aux {
                    V_RE | V_RES if !unchanged(a[1]) => Some(a[1] as u32),
                    V_RE | V_RES if !unchanged(a[0]) => Some(a[0] as u32),
                    V_RE | V_RES => None,
                    _ => Some(a[0] as u32),
                };
                args.insert("uid".into(), json!(uid));
                let sys = match h.aux {
                    V_RE => "setreuid",
                    V_RES => "setresuid",
                    _ => "setuid",
                };
                args.insert("syscall".into(), json!(sys));
            }
            "ptrace" => {
                args.insert("request".into(), json!(a[0] as i64));
                args.insert("target_pid".into(), json!(int(a[1])));
            }
            "kill" => {
                let (target, sig) = match h.aux {
                    V_TG => (int(a[0]), int(a[2])),
                    _ => (int(a[0]), int(a[1])),
                };
                args.insert("target_pid".into(), json!(target));
                args.insert("signal".into(), json!(sig));
                if h.aux == V_T || h.aux == V_TG {
                    args.insert(
                        "target_tid".into(),
                        json!(int(a[if h.aux == V_TG { 1 } else { 0 }])),
                    );
                }
            }
            "syscall" => {
                let name = syscall_table::name(h.aux).map_or_else(|| json!(h.aux), |n| json!(n));
                args.insert("syscall".into(), name);
                args.insert("nr".into(), json!(h.aux));
                args.insert("args".into(), json!(a));
            }
            "bpf" => {
                let cmd = int(a[0]);
                args.insert(
                    "cmd".into(),
                    BPF_CMDS
                        .get(cmd as usize)
                        .map_or_else(|| json!(cmd), |n| json!(n)),
                );
            }
            _ => {}
        }

        if h.flags & c::EF_TRUNCATED != 0 {
            args.insert("truncated".into(), json!(true));
        }
        Value::Object(args)
    }

    #[test]
    fn every_kind_serialises_as_before() {
        let sockaddrs: [&[u8]; 4] = [
            &[2, 0, 0x1f, 0x90, 127, 0, 0, 1],
            &[
                10, 0, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            ],
            b"\x01\x00\x00abstract\0",
            &[99, 0],
        ];
        let slot_values: [[u64; 6]; 4] = [
            [0; 6],
            [1, 2, 3, 4, 5, 6],
            [
                u32::MAX as u64,
                0o644,
                -100i64 as u64,
                1_700_000_000_000_000_000,
                9,
                u64::MAX,
            ],
            [u64::MAX, u32::MAX as u64, 15, 0, 37, 1],
        ];
        let strings: [&[&[u8]]; 3] = [
            &[],
            &[b"/bin/sh\0", b"sh\0-c\0\0", b"/bin/sh\0"],
            &[b"rel/path\0", b"/abs\0", b"ext4\0", b"x\0"],
        ];
        let mut n = 0;
        for kind in Kind::ALL {
            for aux in [0, 1, 2, 3, 4, 5, 6, 7, 8, 59, 100_000] {
                for args in &slot_values {
                    for (si, strs) in strings.iter().enumerate() {
                        for flags in [0, c::EF_TRUNCATED] {
                            let mut strs: Vec<&[u8]> = strs.to_vec();
                            if matches!(kind, Kind::Connect | Kind::Bind | Kind::Accept) {
                                strs = vec![sockaddrs[(si + aux as usize) % 4]];
                            }
                            let buf = record_with(*kind as u32, &strs, |h| {
                                h.aux = aux;
                                h.args = *args;
                                h.flags |= flags;
                                if *kind == Kind::Exit {
                                    // The old decoder ignored the marker.
                                    h.args[c::SLOT_EXIT_STATUS_KNOWN] = c::EXIT_STATUS_KNOWN;
                                }
                            });
                            let rec = parse(&buf).unwrap();
                            let new = to_event(&rec, 0, "core", &mut Comms::default())
                                .unwrap()
                                .event
                                .args
                                .to_value();
                            assert_eq!(
                                new,
                                legacy_args(&rec.h, &rec.strs),
                                "{kind:?} aux {aux} args {args:?} strs {si}"
                            );
                            n += 1;
                        }
                    }
                }
            }
        }
        assert!(n > 1000);
    }
}
