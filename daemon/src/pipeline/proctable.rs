//! The user-space process table: what the kernel record does not carry for
//! every event (the executable path), kept per tgid. Seeded from /proc at
//! start so processes older than the daemon are known too.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use traceed_wire::Event;

use super::decoder::{raw_bytes, store_bytes, PathAt};

#[derive(Default)]
pub struct ProcTable {
    /// The path's bytes: it is rendered per event (`decoder::store_bytes`).
    exe: HashMap<u32, Arc<[u8]>>,
    /// Parent of each known process: what the fallback object cannot read
    /// from the kernel comes from fork events and /proc.
    ppid: HashMap<u32, u32>,
}

/// The ppid field of /proc/<pid>/stat (after the parenthesised comm, which
/// may itself contain spaces and parentheses).
fn read_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn read_exe(pid: u32) -> Option<Arc<[u8]>> {
    let p = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let b = p.as_os_str().as_bytes();
    Some(Arc::from(b.strip_suffix(b" (deleted)").unwrap_or(b)))
}

impl ProcTable {
    pub fn seed_from_proc() -> Self {
        let mut t = Self::default();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for ent in dir.flatten() {
                let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(exe) = read_exe(pid) {
                    t.exe.insert(pid, exe);
                }
                if let Some(pp) = read_ppid(pid) {
                    t.ppid.insert(pid, pp);
                }
            }
        }
        t
    }

    pub fn len(&self) -> usize {
        self.exe.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exe.is_empty()
    }

    /// Fill `e.exe` (and `e.ppid` when the kernel could not) and update the
    /// table from what the event says.
    pub fn enrich(&mut self, e: &mut Event) {
        let Some(pid) = e.pid else { return };
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
        // A failed exec (retval -errno) left the process as it was.
        let failed = e.retval.is_some_and(|r| r < 0);
        match e.kind.as_str() {
            "exec" if !failed => {
                // The file the kernel loaded (the interpreter for a script),
                // as the caller named it; relative names are resolved against
                // the process's cwd while it is still there to ask.
                let loaded = ["interpreter", "filename"]
                    .iter()
                    .find_map(|k| e.args.get(*k).and_then(|f| f.as_str()))
                    .map(|p| raw_bytes(e, p));
                let exe = match loaded {
                    Some(p) if p.starts_with(b"/") => Some(Arc::from(p)),
                    Some(p) => std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .ok()
                        .map(|cwd| {
                            let abs = cwd.join(std::ffi::OsStr::from_bytes(&p));
                            Arc::from(abs.as_os_str().as_bytes())
                        })
                        .or_else(|| read_exe(pid)),
                    None => read_exe(pid),
                };
                if let Some(exe) = exe {
                    self.exe.insert(pid, exe);
                }
            }
            "fork" => {
                let parent = e.ppid.and_then(|pp| self.exe.get(&pp).cloned());
                if let Some(exe) = parent {
                    self.exe.insert(pid, exe);
                }
            }
            _ => {}
        }
        if let Entry::Vacant(slot) = self.exe.entry(pid) {
            if let Some(exe) = read_exe(pid) {
                slot.insert(exe);
            }
        }
        if let Some(exe) = self.exe.get(&pid).cloned() {
            e.exe = Some(store_bytes(e, &exe));
        }
        if e.kind == "exit" {
            self.exe.remove(&pid);
            self.ppid.remove(&pid);
        }
    }
}

const AT_FDCWD: i32 = -100;

/// Make relative paths absolute against what they were relative to: the
/// cwd (AT_FDCWD) or the directory fd, read from /proc while the process
/// is still there. The decoder hands over each path with its dirfd;
/// unresolvable paths stay as the process passed them.
pub fn absolutize(e: &mut Event, paths: &[PathAt]) {
    let Some(pid) = e.pid else { return };
    for p in paths {
        if p.path.starts_with('/') || p.path.is_empty() {
            continue;
        }
        // Read back from the event: adding `exe` may have escaped it since.
        let Some(cur) = e.args.get(p.field).and_then(|v| v.as_str()) else {
            continue;
        };
        let rel = raw_bytes(e, cur);
        let base = if p.dirfd == AT_FDCWD {
            format!("/proc/{pid}/cwd")
        } else {
            format!("/proc/{pid}/fd/{}", p.dirfd)
        };
        if let Ok(dir) = std::fs::read_link(base) {
            let abs = dir.join(Path::new(std::ffi::OsStr::from_bytes(&rel)));
            let abs = store_bytes(e, abs.as_os_str().as_bytes());
            e.args[p.field] = serde_json::Value::String(abs);
        }
    }
}
