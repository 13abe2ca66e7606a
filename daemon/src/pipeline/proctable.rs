//! The user-space process table: what the kernel record does not carry for
//! every event (the executable path, ppid on the fallback rung, and the
//! process instance key), kept per tgid. Seeded from /proc at start so
//! processes older than the daemon are known too.
//!
//! Process identity: a pid names a process only until it is reused, so every
//! event also gets `proc`, a key for the process *instance*:
//! `fnv1a64(boot_id, tgid, start)`, where `start` is the boot-clock time the
//! instance began, in ns, first found in:
//! - the record: the CO-RE and kernel-object rungs put the task's
//!   `start_boottime` in fork and exec records, so a process whose fork was
//!   out of scope (a comm scope sees it only from its exec) is keyed even
//!   if it is gone before its exec is handled, and its fork and exec give
//!   the same key;
//! - the fork record's own timestamp (the fallback rung; every rung fills
//!   `ts_ns` from CLOCK_BOOTTIME);
//! - `/proc/<pid>/stat` starttime (clock ticks since boot) in ns, for a
//!   process older than the daemon, or first met through another event
//!   while it runs; its fork or exec record later keeps that key.
//!
//! Not ticks for all: a pid can be reused within one tick (`ns_last_pid`
//! makes it so on purpose), and two instances must never share a key. Two
//! instances of one pid cannot share a start in ns: the second is forked
//! only after the first was reaped. The key is decided once per instance,
//! when it is first seen, and every later event of that tgid takes it from
//! here; records arrive in causal order (see `kernel::source`), so a new
//! instance's events never precede its fork.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use traceed_wire::{bytes, Announced, Lineage, LiveEvent};

use super::decoder::{is_escaped, raw_bytes, store_bytes, PathAt};

/// One process instance as the table knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Instance {
    key: u64,
    /// Boot-clock ns the instance started (tick resolution when from /proc).
    start: u64,
    parent: Option<u64>,
    /// Derived from /proc rather than from a fork record this daemon saw.
    from_proc: bool,
    /// A from_proc instance the store has been told of (Lineage::announce).
    announced: bool,
}

/// A process's executable: its bytes, and the string its events carry
/// when the bytes need no escaping (one string shared by all of them).
#[derive(Debug, Clone)]
struct Exe {
    raw: Arc<[u8]>,
    plain: Option<Arc<str>>,
}

impl From<Arc<[u8]>> for Exe {
    fn from(raw: Arc<[u8]>) -> Self {
        let plain = (!bytes::needs_escape(&raw))
            .then(|| std::str::from_utf8(&raw).ok().map(Arc::from))
            .flatten();
        Exe { raw, plain }
    }
}

pub struct ProcTable {
    exe: HashMap<u32, Exe>,
    /// Parent of each known process, from the last record that carried
    /// it (the kernel sends it only when it changed: task.h), else fork
    /// events and /proc (the fallback object cannot read it).
    ppid: HashMap<u32, u32>,
    /// ns_pid, mnt_ns, pid_ns of each process, from the last record that
    /// carried them (never on the fallback rung).
    ns: HashMap<u32, [u32; 3]>,
    /// The live instance of each tgid.
    live: HashMap<u32, Instance>,
    boot_id: [u8; 16],
    /// ns per clock tick of /proc/<pid>/stat starttime.
    tick_ns: u64,
    /// Wall minus boot clock (the decoder's offset), to get back to ts_ns.
    boot_to_wall: i64,
    /// Each process's cwd as last read from /proc, with the kernel's id
    /// of it then (`decoder::Decoded::cwd_id`).
    cwd: HashMap<u32, (u64, PathBuf)>,
    /// Each process's directory fds as last found, with the kernel's
    /// directory id of each (`decoder::PathAt::dir_id`).
    dirs: HashMap<u32, HashMap<i32, (u64, PathBuf)>>,
    /// Each process's last opens that returned an fd, with the path each
    /// opened (`note_open`): what the stream itself says a dirfd names,
    /// checked against the directory id before it is used.
    opened: HashMap<u32, Opened>,
    /// Processes found gone from /proc: the stream runs behind them, so
    /// their later records read nothing there (until their exit record,
    /// or a fork record of the pid).
    gone: HashSet<u32>,
}

/// How many of a process's last opens `Opened` remembers. A directory's
/// candidate is needed only until the first *at call relative to it, which
/// keeps it under its id; walkers (tar, find, rm -r) make that call right
/// after opening the directory.
const OPENED_PER_PROCESS: usize = 8;

/// A process's last opens as a ring of (fd, absolute path, the kernel's
/// id of the directory opened or 0); an empty path is an open whose path
/// could not be made absolute, which still shadows an older open of the
/// same number.
#[derive(Debug, Default)]
struct Opened {
    next: usize,
    slots: [(i32, PathBuf, u64); OPENED_PER_PROCESS],
    /// The last directory id no slot matched: not tried again until
    /// another open is noted (`push` forgets it).
    missed: Option<u64>,
}

impl Opened {
    /// The open that names the directory `id` at `fd`: the newest open
    /// that returned `fd` first, then the other opens, newest first (the
    /// directory may have moved to `fd` since). One whose record carries
    /// the kernel's id of what it opened matches on that alone, even once
    /// the directory is deleted; any other has its path checked now (a
    /// stat).
    fn find(&self, fd: i32, id: u64) -> Option<&Path> {
        let newest_first = (1..=OPENED_PER_PROCESS)
            .map(|back| &self.slots[(self.next + OPENED_PER_PROCESS - back) % OPENED_PER_PROCESS]);
        let on_fd = newest_first.clone().find(|s| s.0 == fd);
        on_fd
            .into_iter()
            .chain(newest_first.filter(move |s| s.0 != fd))
            .filter(|s| !s.1.as_os_str().is_empty())
            .find(|(_, path, known)| match *known {
                0 => is_dir_of(path, id),
                known => known == id,
            })
            .map(|s| s.1.as_path())
    }

    /// Note that `fd` now names `path` (None: a path not known as
    /// absolute), the directory `id` when the kernel said so (else 0),
    /// reusing the oldest slot's buffer.
    fn push(&mut self, fd: i32, path: Option<&[u8]>, id: u64) {
        let slot = &mut self.slots[self.next];
        self.next = (self.next + 1) % OPENED_PER_PROCESS;
        self.missed = None;
        slot.0 = fd;
        slot.2 = id;
        let buf = slot.1.as_mut_os_string();
        buf.clear();
        if let Some(p) = path {
            buf.push(std::ffi::OsStr::from_bytes(p));
        }
    }
}

/// FNV-1a over the boot id, the tgid and the start: stable across daemon
/// restarts (all three are facts of the kernel), and 64 bits so a clash of
/// two instances is negligible (and never of two instances of one pid with
/// different starts under the same boot, short of a hash collision).
pub fn derive_key(boot_id: &[u8; 16], pid: u32, start_boot_ns: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in boot_id
        .iter()
        .copied()
        .chain(pid.to_le_bytes())
        .chain(start_boot_ns.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// /proc/sys/kernel/random/boot_id (a UUID) as 16 bytes; zeros if absent.
fn read_boot_id() -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let hex: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        for (i, pair) in hex.chunks(2).take(16).enumerate() {
            let v = std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok());
            out[i] = v.unwrap_or(0);
        }
    }
    out
}

fn clock_tick_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        1_000_000_000 / hz as u64
    } else {
        10_000_000
    }
}

/// ppid and starttime (ticks since boot) from /proc/<pid>/stat, after the
/// parenthesised comm (which may itself contain spaces and parentheses).
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the comm: state(0) ppid(1) ... starttime is field 22 of the
    // line, index 19 here.
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

fn read_stat(pid: u32) -> Option<(u32, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn read_ppid(pid: u32) -> Option<u32> {
    read_stat(pid).map(|(pp, _)| pp)
}

fn read_exe(pid: u32) -> Option<Arc<[u8]>> {
    let p = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(Arc::from(exe_name(p.as_os_str().as_bytes())))
}

/// The exe of a `/proc/PID/exe` link: a binary deleted (or replaced by an
/// upgrade) since it started is named by the path it ran from. A memfd
/// never had a path: it keeps the link's whole text, `/memfd:NAME
/// (deleted)`, which is also the name an exited memfd program gets from
/// its exec record, so the exe does not depend on which was read.
fn exe_name(link: &[u8]) -> &[u8] {
    if link.starts_with(b"/memfd:") {
        return link;
    }
    link.strip_suffix(b" (deleted)").unwrap_or(link)
}

impl Default for ProcTable {
    fn default() -> Self {
        Self::new(read_boot_id(), clock_tick_ns(), 0)
    }
}

impl ProcTable {
    fn new(boot_id: [u8; 16], tick_ns: u64, boot_to_wall: i64) -> Self {
        Self {
            exe: HashMap::default(),
            ppid: HashMap::default(),
            ns: HashMap::default(),
            live: HashMap::default(),
            cwd: HashMap::default(),
            dirs: HashMap::default(),
            opened: HashMap::default(),
            gone: HashSet::default(),
            boot_id,
            tick_ns,
            boot_to_wall,
        }
    }

    pub fn seed_from_proc(boot_to_wall: i64) -> Self {
        let mut t = Self::new(read_boot_id(), clock_tick_ns(), boot_to_wall);
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for ent in dir.flatten() {
                let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(exe) = read_exe(pid) {
                    t.exe.insert(pid, exe.into());
                }
                if let Some((pp, start)) = read_stat(pid) {
                    t.ppid.insert(pid, pp);
                    t.live.insert(pid, t.instance_from_proc(pid, start));
                }
            }
        }
        // Parents once every instance is known (a parent may have a higher pid).
        let parents: Vec<(u32, Option<u64>)> = t
            .live
            .keys()
            .map(|&pid| {
                let pk = t
                    .ppid
                    .get(&pid)
                    .and_then(|pp| t.live.get(pp))
                    .map(|i| i.key);
                (pid, pk)
            })
            .collect();
        for (pid, pk) in parents {
            if let Some(i) = t.live.get_mut(&pid) {
                i.parent = pk;
            }
        }
        t
    }

    /// The key of `pid`'s instance that started at boot-clock `start` ns.
    fn key_of(&self, pid: u32, start: u64) -> u64 {
        derive_key(&self.boot_id, pid, start)
    }

    fn instance_from_proc(&self, pid: u32, start_ticks: u64) -> Instance {
        let start = start_ticks * self.tick_ns;
        Instance {
            key: self.key_of(pid, start),
            start,
            parent: None,
            from_proc: true,
            announced: false,
        }
    }

    pub fn len(&self) -> usize {
        self.exe.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exe.is_empty()
    }

    /// The instance of `pid` at boot-clock time `t`: the live one, or one
    /// read from /proc if it was running by then (a process whose fork this
    /// daemon did not see: older than the daemon, or its fork was lost).
    /// None when the pid now names a process that started after `t`: the
    /// event's process is gone and its key cannot be known.
    fn instance_at(&mut self, pid: u32, t: u64) -> Option<Instance> {
        if let Some(i) = self.live.get(&pid) {
            return Some(*i);
        }
        let (pp, ticks) = read_stat(pid)?;
        let mut i = self.instance_from_proc(pid, ticks);
        if i.start > t {
            return None;
        }
        i.parent = self.live.get(&pp).map(|p| p.key);
        self.ppid.entry(pid).or_insert(pp);
        self.live.insert(pid, i);
        Some(i)
    }

    /// A fork record: a new instance of the child's tgid starts at `t`.
    fn forked(&mut self, pid: u32, ppid: Option<u32>, t: u64) -> Instance {
        let parent = ppid.and_then(|pp| self.instance_at(pp, t)).map(|i| i.key);
        let tick = self.tick_ns.max(1);
        let inst = match self.live.get(&pid) {
            // Already read from /proc within this instance's tick: it is this
            // process, met before its fork record was handled (an event of the
            // child read /proc first). Keep the key its events already have.
            Some(old) if old.from_proc && old.start / tick + 1 >= t / tick && old.start <= t => {
                Instance {
                    parent: parent.or(old.parent),
                    start: t,
                    ..*old
                }
            }
            _ => Instance {
                key: self.key_of(pid, t),
                start: t,
                parent,
                from_proc: false,
                announced: true,
            },
        };
        self.live.insert(pid, inst);
        inst
    }

    /// An exec record that carries its process's start: the instance it
    /// names, made now if its fork was not seen (out of scope, or lost) or
    /// if the pid's live instance is an older one that was never reaped
    /// here.
    fn started(&mut self, pid: u32, ppid: Option<u32>, start: u64) -> Instance {
        let key = self.key_of(pid, start);
        let tick = self.tick_ns.max(1);
        if let Some(i) = self.live.get(&pid) {
            // This instance, or this one met through /proc first (whose
            // start is `start` in whole ticks): its events have that key.
            if i.key == key || (i.from_proc && i.start == start / tick * tick) {
                return *i;
            }
        }
        let parent = ppid
            .and_then(|pp| self.instance_at(pp, start))
            .map(|i| i.key);
        let inst = Instance {
            key,
            start,
            parent,
            from_proc: false,
            announced: true,
        };
        self.live.insert(pid, inst);
        inst
    }

    /// The instances from /proc on `pid`'s ancestry (itself included) not
    /// yet announced to the store, marked announced now. Each is read from
    /// /proc once; a fork's child is never among them.
    fn announce(&mut self, pid: u32, i: Instance) -> Vec<Announced> {
        let mut out = Vec::new();
        let (mut pid, mut i) = (pid, i);
        let mut first = true;
        while out.len() < 256 {
            let pending = i.from_proc && !i.announced;
            // Above the event's own process, the first one already told of
            // ends the walk: its ancestry was told with it.
            if !pending && !first {
                break;
            }
            first = false;
            let ppid = self.ppid.get(&pid).copied();
            if pending {
                if let Some(live) = self.live.get_mut(&pid) {
                    live.announced = true;
                }
                out.push(self.read_announced(pid, ppid, i));
            }
            let Some((pp, parent)) = ppid.and_then(|pp| Some((pp, *self.live.get(&pp)?))) else {
                break;
            };
            if pp == pid {
                break;
            }
            pid = pp;
            i = parent;
        }
        out
    }

    /// What /proc says of an instance older than the daemon.
    fn read_announced(&self, pid: u32, ppid: Option<u32>, i: Instance) -> Announced {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .filter(|c| !c.is_empty())
            .map(|c| {
                let s = String::from_utf8_lossy(&c);
                s.trim_end_matches('\0').replace('\0', " ")
            });
        // The owner of /proc/<pid> is the process's effective uid.
        let uid = std::fs::metadata(format!("/proc/{pid}"))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        Announced {
            key: i.key,
            pid,
            ppid,
            parent: i.parent,
            uid,
            start: (i.start as i64).saturating_add(self.boot_to_wall),
            exe: self
                .exe
                .get(&pid)
                .map(|s| String::from_utf8_lossy(&s.raw).into_owned()),
            cmdline,
        }
    }

    /// Fill `e.exe`, `e.proc` (and `e.ppid` and the namespaces when the
    /// record did not carry them) and update the table from what the event
    /// says; `start` is the process's start when the record carried it
    /// (`decoder::Decoded::start_boot`).
    pub fn enrich(&mut self, e: &mut LiveEvent, start: Option<u64>) {
        let Some(pid) = e.pid else { return };
        match (e.ns_pid, e.mnt_ns, e.pid_ns) {
            (Some(n), Some(m), Some(p)) => {
                self.ns.insert(pid, [n, m, p]);
            }
            (None, None, None) => {
                if let Some(&[n, m, p]) = self.ns.get(&pid) {
                    (e.ns_pid, e.mnt_ns, e.pid_ns) = (Some(n), Some(m), Some(p));
                }
            }
            _ => {}
        }
        match e.ppid {
            Some(pp) => {
                self.ppid.insert(pid, pp);
            }
            None => {
                e.ppid = self.ppid.get(&pid).copied().or_else(|| {
                    let pp = read_ppid(pid)?;
                    self.ppid.insert(pid, pp);
                    Some(pp)
                });
            }
        }
        let t = e.ts.saturating_sub(self.boot_to_wall).max(0) as u64;
        let inst = match start {
            _ if e.kind == "fork" => Some(self.forked(pid, e.ppid, start.unwrap_or(t))),
            Some(start) => Some(self.started(pid, e.ppid, start)),
            None => self.instance_at(pid, t),
        };
        if let Some(i) = inst {
            e.proc = Some(traceed_wire::ProcKey(i.key));
            e.lineage = Some(Lineage {
                parent: i.parent,
                start: Some((i.start as i64).saturating_add(self.boot_to_wall)),
                announce: self.announce(pid, i),
            });
        }
        // A failed exec (retval -errno) left the process as it was.
        let failed = e.retval.is_some_and(|r| r < 0);
        match &*e.kind {
            "exec" if !failed => {
                // The file the kernel loaded (the interpreter for a script),
                // as the caller named it; relative names are resolved against
                // the process's cwd while it is still there to ask.
                let loaded = ["interpreter", "filename"]
                    .iter()
                    .find_map(|k| e.args.get(k).and_then(|f| f.as_str()))
                    .map(|p| raw_bytes(e, p));
                let exe = match loaded {
                    // An exec through a descriptor (fexecve, execveat with
                    // AT_EMPTY_PATH, /proc/self/fd/N: how memfd programs
                    // run) names no file: the kernel's own link says which,
                    // while the process lives. (Once it is gone, the name
                    // as passed is all there is, but for a memfd: below.)
                    Some(p) if p.starts_with(b"/dev/fd/") || p.starts_with(b"/proc/") => {
                        read_exe(pid).or_else(|| Some(Arc::from(p)))
                    }
                    // A memfd, named by the kernel (process.bpf.c): as
                    // /proc/PID/exe shows it, even once the process is gone.
                    Some(p) if p.starts_with(b"memfd:") => read_exe(pid).or_else(|| {
                        Some(Arc::from([b"/", &p[..], b" (deleted)"].concat().as_slice()))
                    }),
                    Some(p) if p.starts_with(b"/") => Some(Arc::from(p)),
                    // Relative to the cwd the record names (the one the
                    // kernel resolved it against, and there after the
                    // process is gone), else to /proc's.
                    Some(p) => exec_cwd(e)
                        .or_else(|| std::fs::read_link(format!("/proc/{pid}/cwd")).ok())
                        .map(|cwd| {
                            let abs = cwd.join(std::ffi::OsStr::from_bytes(&p));
                            Arc::from(abs.as_os_str().as_bytes())
                        })
                        .or_else(|| read_exe(pid)),
                    None => read_exe(pid),
                };
                if let Some(exe) = exe {
                    self.exe.insert(pid, exe.into());
                }
            }
            "fork" => {
                // A new process of this pid (an exit record lost would
                // leave the old one's mark).
                self.gone.remove(&pid);
                // It starts in its parent's cwd: its events carry that id
                // until it moves.
                if let Some(cwd) = e.ppid.and_then(|pp| self.cwd.get(&pp).cloned()) {
                    self.cwd.insert(pid, cwd);
                }
                let parent = e.ppid.and_then(|pp| self.exe.get(&pp).cloned());
                if let Some(exe) = parent {
                    self.exe.insert(pid, exe);
                }
            }
            _ => {}
        }
        // Not for a process found gone: each of its events would ask again.
        if !self.exe.contains_key(&pid) && !self.gone.contains(&pid) {
            match read_exe(pid) {
                Some(exe) => {
                    self.exe.insert(pid, exe.into());
                }
                None => self.mark_if_gone(pid),
            }
        }
        if let Some(exe) = self.exe.get(&pid) {
            e.exe = Some(match &exe.plain {
                Some(s) if !is_escaped(e) => s.clone(),
                _ => store_bytes(e, &exe.raw).into(),
            });
        }
        if e.kind == "exit" {
            self.cwd.remove(&pid);
            self.dirs.remove(&pid);
            self.opened.remove(&pid);
            self.gone.remove(&pid);
            self.exe.remove(&pid);
            self.ppid.remove(&pid);
            self.ns.remove(&pid);
            self.live.remove(&pid);
        }
    }
}

pub const AT_FDCWD: i32 = -100;

/// The cwd an exec record names (walked in the kernel at the exec: the
/// process's own view of it), when it is a whole path.
fn exec_cwd(e: &LiveEvent) -> Option<PathBuf> {
    let traceed_wire::payload::Payload::Exec(a) = &e.args else {
        return None;
    };
    let cwd = a.fields.cwd.as_deref().filter(|c| c.starts_with('/'))?;
    let cwd = raw_bytes(e, cwd);
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(&cwd)))
}

/// The kernel's directory id (`dir_id` in task.h) of a file: its device
/// as the kernel numbers it (major << 20 | minor) above its inode number's
/// low 32 bits.
fn dir_id_of(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dev = u64::from(libc::major(meta.dev())) << 20 | u64::from(libc::minor(meta.dev()));
    (dev & 0xffff_ffff) << 32 | (meta.ino() & 0xffff_ffff)
}

/// Whether `dir` is now the directory the id names: same device, same
/// inode.
fn is_dir_of(dir: &Path, id: u64) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && dir_id_of(&m) == id)
}

/// Directories kept for one process's dirfds (`ProcTable::dirs`); past it
/// that process's are forgotten at once and read again as needed.
const DIRS_PER_PROCESS: usize = 256;

impl ProcTable {
    /// Make relative paths absolute against what they were relative to:
    /// the cwd (AT_FDCWD) or the directory fd, read from /proc while the
    /// process is still there; the cwd once per `cwd_id` when the record
    /// carries one (a readlink per relative path was most of the
    /// daemon's user-space work under a loop of relative opens). The
    /// decoder hands over each path with its dirfd; unresolvable paths
    /// stay as the process passed them.
    pub fn absolutize(
        &mut self,
        e: &mut LiveEvent,
        paths: &[PathAt],
        cwd_id: Option<u64>,
        opened_dir: Option<u64>,
    ) {
        let Some(pid) = e.pid else { return };
        for p in paths {
            // Read back from the event: adding `exe` may have escaped it since.
            let Some(cur) = e.args.get(p.field).and_then(|v| v.as_str()) else {
                continue;
            };
            let rel = raw_bytes(e, cur);
            let dir = if p.dirfd != AT_FDCWD {
                self.dir_of(pid, p.dirfd, p.dir_id)
            } else {
                self.cwd_of(pid, cwd_id)
            };
            if let Some(dir) = dir {
                let abs = dir.join(Path::new(std::ffi::OsStr::from_bytes(&rel)));
                let mut abs = Some(store_bytes(e, abs.as_os_str().as_bytes()));
                e.args.strings_mut(&mut |k, s| {
                    if k == p.field {
                        if let Some(a) = abs.take() {
                            *s = a;
                        }
                    }
                });
            }
        }
        if e.kind == "open" {
            self.note_open(pid, e, opened_dir);
        } else if e.kind == "exec" {
            self.note_exec_cwd(pid, e, cwd_id);
        }
    }

    /// An exec record names the process's cwd (walked in the kernel) with
    /// its id: kept as if read from /proc, so the process's cwd-relative
    /// paths resolve after it exited (a compiler opening headers relative
    /// to the cwd often has by the time the daemon gets there).
    fn note_exec_cwd(&mut self, pid: u32, e: &LiveEvent, cwd_id: Option<u64>) {
        if let (Some(id), Some(dir)) = (cwd_id, exec_cwd(e)) {
            self.cwd.insert(pid, (id, dir));
        }
    }

    /// What an open returned: its fd names the path it opened, until the
    /// process opens something else on that number. Noted for every open
    /// (whether it is a directory is not known here) and used only when a
    /// later *at call's directory id agrees with it (`dir_of`): a walker
    /// like `tar -c` closes each directory and reuses its number before
    /// /proc can be read, or exits, and then only the stream can say
    /// which directory its paths were relative to.
    fn note_open(&mut self, pid: u32, e: &LiveEvent, opened_dir: Option<u64>) {
        let Some(fd) = e
            .retval
            .and_then(|r| i32::try_from(r).ok())
            .filter(|fd| *fd >= 0)
        else {
            return;
        };
        let path = match &e.args {
            traceed_wire::payload::Payload::Open(a) => a.fields.path.as_deref(),
            _ => None,
        };
        let path = path.filter(|p| p.starts_with('/')).map(|p| raw_bytes(e, p));
        let opened = self.opened.entry(pid).or_default();
        opened.push(fd, path.as_deref(), opened_dir.unwrap_or(0));
    }

    /// The directory open at `pid`'s `fd` when the record was made. With
    /// the kernel's id of it: the one found for the id on this fd before,
    /// else one of the process's last opens that is the id's directory
    /// (the fd may have been moved to this number since: `rm -r` moves
    /// every directory it opens with F_DUPFD), else /proc's if it is the
    /// id's directory; another directory is never used, since the id says
    /// it is not the one. Without an id (kernel object, fallback): /proc's
    /// word, unchecked. As with the cwd, a directory renamed while it stays
    /// open keeps the path it had when found.
    fn dir_of(&mut self, pid: u32, fd: i32, id: Option<u64>) -> Option<PathBuf> {
        let link = || format!("/proc/{pid}/fd/{fd}");
        let Some(id) = id else {
            return self.read_proc_dir(pid, &link(), None).map(|(dir, _)| dir);
        };
        if let Some((known, dir)) = self.dirs.get(&pid).and_then(|d| d.get(&fd)) {
            if *known == id {
                return Some(dir.clone());
            }
        }
        // The stream's word: a stat each, and no /proc, so it answers
        // after the fd was closed or the process exited too.
        if let Some(opened) = self.opened.get_mut(&pid) {
            if opened.missed != Some(id) {
                if let Some(dir) = opened.find(fd, id).map(Path::to_path_buf) {
                    self.keep_dir(pid, fd, id, dir.clone());
                    return Some(dir);
                }
                opened.missed = Some(id);
            }
        }
        let (dir, same) = self.read_proc_dir(pid, &link(), Some(id))?;
        same.then(|| {
            self.keep_dir(pid, fd, id, dir.clone());
            dir
        })
    }

    fn keep_dir(&mut self, pid: u32, fd: i32, id: u64, dir: PathBuf) {
        let kept = self.dirs.entry(pid).or_default();
        if kept.len() >= DIRS_PER_PROCESS {
            kept.clear();
        }
        kept.insert(fd, (id, dir));
    }

    /// The directory behind `pid`'s `link` (/proc/PID/cwd or fd/N) as
    /// /proc shows it now, and whether it is the directory the record's id
    /// names (`dir_id` in task.h). /proc is read after the event, so the
    /// process may have moved on: an fd closed and its number reused for a
    /// file (tar does this with every directory it walks) names no
    /// directory, and another directory there is not the one the record
    /// named. A process found gone is marked so (one more stat) and not
    /// read again: `rm -r` of a large tree is over long before the daemon
    /// has handled its unlinks, which would cost a failed read each.
    fn read_proc_dir(&mut self, pid: u32, link: &str, id: Option<u64>) -> Option<(PathBuf, bool)> {
        if self.gone.contains(&pid) {
            return None;
        }
        match std::fs::metadata(link) {
            Ok(meta) if meta.is_dir() => {
                let dir = std::fs::read_link(link).ok()?;
                Some((dir, id == Some(dir_id_of(&meta))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.mark_if_gone(pid);
                None
            }
            _ => None,
        }
    }

    /// After a read of `pid`'s /proc entries found nothing: marks it gone
    /// when /proc/PID itself is (one more stat).
    fn mark_if_gone(&mut self, pid: u32) {
        if std::fs::metadata(format!("/proc/{pid}")).is_err() {
            self.gone.insert(pid);
        }
    }

    /// `pid`'s cwd when the record was made: the one read for this
    /// `cwd_id` if there is one, else read from /proc now and used (and
    /// kept) only if it is the id's directory: one that is not is where
    /// the process moved since. Without an id, /proc's word, unchecked.
    fn cwd_of(&mut self, pid: u32, cwd_id: Option<u64>) -> Option<PathBuf> {
        if let (Some(id), Some((known, dir))) = (cwd_id, self.cwd.get(&pid)) {
            if *known == id {
                return Some(dir.clone());
            }
        }
        let (dir, same) = self.read_proc_dir(pid, &format!("/proc/{pid}/cwd"), cwd_id)?;
        match cwd_id {
            None => Some(dir),
            Some(id) => same.then(|| {
                self.cwd.insert(pid, (id, dir.clone()));
                dir
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: [u8; 16] = [7; 16];
    const TICK: u64 = 10_000_000;

    fn ev(kind: &str, pid: u32, ppid: u32, t: i64) -> LiveEvent {
        let mut e = LiveEvent::new(kind, t, "core");
        e.pid = Some(pid);
        e.ppid = Some(ppid);
        e
    }

    /// A table that knows only `parent` (as if read from /proc) and cannot
    /// read /proc for the made-up pids below (they are above pid_max).
    fn table() -> (ProcTable, u32) {
        let mut t = ProcTable::new(BOOT, TICK, 0);
        let parent = 4_200_000_001;
        t.live.insert(parent, t.instance_from_proc(parent, 5));
        (t, parent)
    }

    /// An exec record of `filename` whose record names `cwd`.
    fn exec_in(pid: u32, ppid: u32, filename: &str, cwd: Option<&str>) -> LiveEvent {
        use traceed_wire::payload::{Args, Exec, Payload};
        let mut x = ev("exec", pid, ppid, 1);
        x.args = Payload::Exec(Box::new(Args {
            fields: Exec {
                filename: Some(filename.into()),
                argv: vec![],
                interpreter: None,
                exe_ctime: None,
                argc: None,
                argv_bytes: None,
                cwd: cwd.map(Into::into),
            },
            truncated: false,
            escaped: false,
        }));
        x
    }

    /// A directory made for one test, and its kernel directory id.
    fn test_dir(tag: &str) -> (PathBuf, u64) {
        let dir = std::env::temp_dir().join(format!("traceed-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let id = dir_id_of(&std::fs::metadata(&dir).unwrap());
        (dir, id)
    }

    /// Once /proc cannot say (the process is gone: pids above pid_max
    /// here), the process's last opens name a dirfd's directory, and it is
    /// kept for the id, when one of them is the id's directory: same inode
    /// and same device (a root of another file system has the same inode
    /// number). A later open of a file on the number shadows an older one;
    /// a directory moved to another number (F_DUPFD) is still found.
    #[test]
    fn an_opened_directory_names_its_fd_when_proc_cannot() {
        use crate::pipeline::coalesce::tests::open;
        let (dir, id) = test_dir("opened");
        let (mut t, _) = table();
        let pid = 4_200_000_020;
        let note = |t: &mut ProcTable, path: &Path, fd: i64| {
            let mut e = open(pid, path.to_str().unwrap(), 1, fd);
            t.absolutize(&mut e, &[], None, None);
        };
        assert_eq!(t.dir_of(pid, 5, Some(id)), None, "nothing opened yet");
        note(&mut t, &dir, 5);
        // Another fd number, and a failed open, change nothing for fd 5.
        note(&mut t, Path::new("/etc/hostname"), 6);
        note(&mut t, Path::new("/etc/none"), -2);
        let other_dev = id ^ (1 << 40);
        assert_eq!(t.dir_of(pid, 5, Some(id ^ 1)), None, "another inode");
        assert_eq!(t.dir_of(pid, 5, Some(other_dev)), None, "another device");
        assert_eq!(t.dir_of(pid, 5, Some(id)), Some(dir.clone()));
        assert_eq!(t.dirs[&pid][&5], (id, dir.clone()), "kept for the id");
        // Moved to another number since its open: found among the others.
        let (sub, sub_id) = test_dir("opened-sub");
        note(&mut t, &sub, 3);
        note(&mut t, Path::new("/etc/hostname"), 3);
        assert_eq!(t.dir_of(pid, 7, Some(sub_id)), Some(sub.clone()));
        // More opens than the ring holds push a directory out, and a
        // relative path shadows what its number named.
        let (third, third_id) = test_dir("opened-third");
        note(&mut t, &third, 9);
        for fd in 10..10 + OPENED_PER_PROCESS as i64 {
            note(&mut t, Path::new("/etc/hostname"), fd);
        }
        assert_eq!(t.dir_of(pid, 9, Some(third_id)), None);
        note(&mut t, &third, 9);
        assert_eq!(t.dir_of(pid, 9, Some(third_id)), Some(third.clone()));
        // Gone with the process.
        let mut x = ev("exit", pid, 1, 2);
        t.enrich(&mut x, None);
        assert_eq!(t.dir_of(pid, 9, Some(third_id)), None);
        // (The pid again, a new process.) An open whose record names the
        // directory it opened (O_DIRECTORY)
        // matches on the kernel's id alone: a deleted directory too.
        let deleted = dir.join("deleted");
        let mut e = open(pid, deleted.to_str().unwrap(), 3, 11);
        t.absolutize(&mut e, &[], None, Some(0x77));
        assert_eq!(t.dir_of(pid, 4, Some(0x78)), None);
        assert_eq!(t.dir_of(pid, 4, Some(0x77)), Some(deleted));
        for d in [dir, sub, third] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    /// A directory read from /proc is used for a kernel id, and kept for
    /// it, only when it is the id's directory: one read after the process
    /// moved on is not the one its record named.
    #[test]
    fn a_directory_is_used_for_an_id_only_when_it_is_the_ids() {
        use std::os::fd::AsRawFd;
        let (dir, good) = test_dir("dirid");
        let f = std::fs::File::open(&dir).unwrap();
        let (mut t, _) = table();
        let (pid, fd) = (std::process::id(), f.as_raw_fd());
        assert_eq!(t.dir_of(pid, fd, Some(good ^ 1)), None, "another inode");
        let kept = |t: &ProcTable| t.dirs.get(&pid).map_or(0, HashMap::len);
        assert_eq!(
            t.dir_of(pid, fd, Some(good ^ (1 << 40))),
            None,
            "another device"
        );
        assert_eq!(kept(&t), 0);
        assert_eq!(
            t.dir_of(pid, fd, None),
            Some(dir.clone()),
            "no id: /proc's word"
        );
        assert_eq!(t.dir_of(pid, fd, Some(good)), Some(dir.clone()));
        assert_eq!(kept(&t), 1);
        drop(f);
        assert_eq!(
            t.dir_of(pid, fd, Some(good)),
            Some(dir.clone()),
            "kept: no /proc read for the id"
        );
        // An fd that names a file now (closed, its number reused): no
        // directory to resolve against.
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(t.dir_of(pid, file.as_raw_fd(), Some(good ^ 2)), None);
        assert_eq!(t.dir_of(pid, file.as_raw_fd(), None), None);
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        let good = dir_id_of(&std::fs::metadata(&cwd).unwrap());
        assert_eq!(t.cwd_of(pid, Some(good ^ 1)), None, "moved since");
        assert_eq!(
            t.cwd_of(pid, None),
            Some(cwd.clone()),
            "no id: /proc's word"
        );
        assert!(t.cwd.is_empty());
        assert_eq!(t.cwd_of(pid, Some(good)), Some(cwd));
        assert_eq!(t.cwd.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An exec record's cwd (walked in the kernel, with its id) resolves
    /// the process's cwd-relative paths once it is gone from /proc, and a
    /// child forked later starts from it; another id still reads /proc.
    #[test]
    fn an_exec_names_the_cwd_of_a_process_gone_from_proc() {
        let (mut t, parent) = table();
        let pid = 4_200_000_022;
        let mut x = exec_in(pid, parent, "/usr/bin/cc", Some("/src/proj"));
        t.absolutize(&mut x, &[], Some(0x55), None);
        assert_eq!(t.cwd_of(pid, Some(0x55)), Some(PathBuf::from("/src/proj")));
        assert_eq!(t.cwd_of(pid, Some(0x56)), None, "moved since: not that one");
        let child = 4_200_000_023;
        let mut f = ev("fork", child, pid, 2);
        t.enrich(&mut f, None);
        assert_eq!(
            t.cwd_of(child, Some(0x55)),
            Some(PathBuf::from("/src/proj"))
        );
        // Without an id, nothing is kept from the record.
        let other = 4_200_000_024;
        let mut y = ev("exec", other, parent, 3);
        y.args = x.args.clone();
        t.absolutize(&mut y, &[], None, None);
        assert!(!t.cwd.contains_key(&other));
    }

    /// An exec of a relative name is named from the cwd its record carries
    /// (the process's, where the kernel resolved the name), also once the
    /// process is gone; without one, /proc's cwd, and nothing once gone.
    #[test]
    fn a_relative_exec_is_named_from_the_records_cwd() {
        let (mut t, parent) = table();
        let exec = |pid: u32, cwd: Option<&str>| exec_in(pid, parent, "./build/tool", cwd);
        let pid = 4_200_000_025;
        let mut x = exec(pid, Some("/src/proj"));
        t.enrich(&mut x, Some(7));
        assert_eq!(x.exe.as_deref(), Some("/src/proj/./build/tool"));
        let other = 4_200_000_026;
        let mut y = exec(other, None);
        t.enrich(&mut y, Some(8));
        assert_eq!(y.exe, None, "gone, and no cwd in the record");
    }

    /// A process found gone from /proc (its cwd, an fd or its exe) is not
    /// asked again until a fork record of its pid.
    #[test]
    fn a_process_gone_from_proc_is_not_read_again() {
        let (mut t, parent) = table();
        let pid = 4_200_000_021;
        assert_eq!(t.dir_of(pid, 3, None), None);
        assert!(t.gone.contains(&pid));
        t.exe
            .insert(parent, Exe::from(Arc::<[u8]>::from(&b"/usr/bin/sh"[..])));
        let mut f = ev("fork", pid, parent, 5);
        t.enrich(&mut f, None);
        assert!(!t.gone.contains(&pid), "a new process of the pid");
        assert_eq!(f.exe.as_deref(), Some("/usr/bin/sh"), "its parent's exe");
        // Its exe not in /proc and no /proc/PID: gone too.
        let other = 4_200_000_027;
        let mut o = ev("open", other, parent, 6);
        t.enrich(&mut o, None);
        assert!(t.gone.contains(&other));
        // A process marked gone is not asked for its exe (this one would
        // answer).
        let me = std::process::id();
        t.gone.insert(me);
        let mut o = ev("open", me, parent, 7);
        t.enrich(&mut o, None);
        assert_eq!(o.exe, None);
        t.gone.remove(&me);
        t.enrich(&mut o, None);
        assert!(o.exe.is_some());
        // A live process with its fd closed is not gone.
        assert_eq!(t.dir_of(me, 1_000_000, None), None);
        assert!(!t.gone.contains(&me));
    }

    /// A memfd program's exe is the same whether /proc was read while it
    /// ran or the exec record named it after it was gone.
    #[test]
    fn a_memfd_exe_keeps_its_deleted_mark_and_a_deleted_binary_its_path() {
        assert_eq!(exe_name(b"/memfd:x (deleted)"), b"/memfd:x (deleted)");
        assert_eq!(exe_name(b"/usr/bin/old (deleted)"), b"/usr/bin/old");
        assert_eq!(exe_name(b"/usr/bin/cat"), b"/usr/bin/cat");
    }

    #[test]
    fn the_key_depends_on_boot_pid_and_start() {
        let k = derive_key(&BOOT, 100, 1_000);
        assert_eq!(k, derive_key(&BOOT, 100, 1_000), "deterministic");
        assert_ne!(k, derive_key(&BOOT, 100, 1_001), "another start");
        assert_ne!(k, derive_key(&BOOT, 101, 1_000), "another pid");
        assert_ne!(k, derive_key(&[8; 16], 100, 1_000), "another boot");
    }

    #[test]
    fn a_reused_pid_is_a_new_instance() {
        let (mut t, parent) = table();
        let child = 4_200_000_002;
        let mut f1 = ev("fork", child, parent, 1_000_000_000);
        t.enrich(&mut f1, None);
        let mut o1 = ev("open", child, parent, 1_100_000_000);
        t.enrich(&mut o1, None);
        let mut x1 = ev("exit", child, parent, 1_200_000_000);
        t.enrich(&mut x1, None);
        // The same pid again, 1 µs later (ns_last_pid makes that possible).
        let mut f2 = ev("fork", child, parent, 1_200_001_000);
        t.enrich(&mut f2, None);
        let mut o2 = ev("open", child, parent, 1_300_000_000);
        t.enrich(&mut o2, None);
        assert!(f1.proc.is_some());
        assert_eq!(f1.proc, o1.proc);
        assert_eq!(o1.proc, x1.proc);
        assert_eq!(f2.proc, o2.proc);
        assert_ne!(f1.proc, f2.proc, "two instances of one pid share a key");
        let pk = t.live[&parent].key;
        assert_eq!(f1.lineage.unwrap().parent, Some(pk));
        assert_eq!(f2.lineage.unwrap().start, Some(1_200_001_000));
    }

    #[test]
    fn a_child_met_before_its_fork_record_keeps_its_key() {
        let (mut t, parent) = table();
        let child = 4_200_000_003;
        // As if an event of the child had read it from /proc (tick 100).
        t.live.insert(child, t.instance_from_proc(child, 100));
        let early = t.live[&child].key;
        let mut f = ev("fork", child, parent, 100 * TICK as i64 + 3_000);
        t.enrich(&mut f, None);
        assert_eq!(f.proc, Some(traceed_wire::ProcKey(early)));
        // A fork much later is another instance.
        let mut x = ev("exit", child, parent, 200 * TICK as i64);
        t.enrich(&mut x, None);
        let mut f2 = ev("fork", child, parent, 300 * TICK as i64);
        t.enrich(&mut f2, None);
        assert_ne!(f2.proc, f.proc);
    }

    #[test]
    fn a_fork_announces_the_ancestry_older_than_the_daemon_once() {
        let (mut t, parent) = table();
        let grand = 4_200_000_000;
        t.live.insert(grand, t.instance_from_proc(grand, 1));
        t.ppid.insert(parent, grand);
        let child = 4_200_000_004;
        let mut f = ev("fork", child, parent, 1_000_000_000);
        t.enrich(&mut f, None);
        let told: Vec<u32> = f.lineage.unwrap().announce.iter().map(|a| a.pid).collect();
        assert_eq!(told, [parent, grand]);
        let mut again = ev("fork", child + 1, parent, 1_100_000_000);
        t.enrich(&mut again, None);
        assert!(again.lineage.unwrap().announce.is_empty());
    }

    /// The kernel's start for a process whose fork was not seen (exec is
    /// its first record): the key its fork record would have given; later
    /// events and execs keep it; a pid reused even within one tick is
    /// another instance; one met through /proc first keeps that key.
    #[test]
    fn an_exec_with_its_start_is_keyed_like_proc_and_fork() {
        let (mut t, parent) = table();
        let child = 4_200_000_005;
        let start = 250 * TICK + 1_234_567;
        let mut x = ev("exec", child, parent, start as i64 + 5_000_000);
        t.enrich(&mut x, Some(start));
        assert_eq!(
            x.proc,
            Some(traceed_wire::ProcKey(derive_key(&BOOT, child, start)))
        );
        assert_eq!(
            x.lineage.as_ref().unwrap().parent,
            Some(t.live[&parent].key)
        );
        assert_eq!(x.lineage.unwrap().start, Some(start as i64));
        let mut o = ev("open", child, parent, start as i64 + 6_000_000);
        t.enrich(&mut o, None);
        assert_eq!(o.proc, x.proc);
        let mut again = ev("exec", child, parent, start as i64 + 7_000_000);
        t.enrich(&mut again, Some(start));
        assert_eq!(again.proc, x.proc);
        // A fork record with the kernel's start, on a fresh table.
        let (mut t2, _) = table();
        let mut f = ev("fork", child, parent, start as i64 + 3_000);
        t2.enrich(&mut f, Some(start));
        assert_eq!(f.proc, x.proc);
        // The pid reused in the same tick, its fork unseen: a new instance.
        let mut x2 = ev("exec", child, parent, start as i64 + 8_000_000);
        t.enrich(&mut x2, Some(start + 1_000));
        assert_ne!(x2.proc, x.proc);
        // Met through /proc first (tick 250): its exec keeps that key.
        let (mut t3, _) = table();
        t3.live.insert(child, t3.instance_from_proc(child, 250));
        let early = t3.live[&child].key;
        let mut x3 = ev("exec", child, parent, start as i64 + 5_000_000);
        t3.enrich(&mut x3, Some(start));
        assert_eq!(x3.proc, Some(traceed_wire::ProcKey(early)));
    }

    #[test]
    fn stat_fields_survive_a_comm_with_parentheses() {
        let line = "42 (a) b) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 100000 10";
        assert_eq!(parse_stat(line), Some((7, 12345)));
    }

    #[test]
    fn this_process_gets_a_key_from_proc() {
        let mut t = ProcTable::seed_from_proc(0);
        let me = std::process::id();
        let mut e = ev("open", me, 1, i64::MAX / 2);
        t.enrich(&mut e, None);
        let (_, ticks) = read_stat(me).unwrap();
        let want = derive_key(&read_boot_id(), me, ticks * clock_tick_ns());
        assert_eq!(e.proc, Some(traceed_wire::ProcKey(want)));
    }
}
