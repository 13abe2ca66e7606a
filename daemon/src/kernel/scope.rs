//! Scope filters: turns `[scope]` from the config into the keys the kernel
//! programs check (uid, comm, tgid, cgroup id, mount-namespace inode) and
//! pushes them into the BPF maps before any program is attached; and the
//! `exe` key (`ExeScope`), which user space checks right after enrichment.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use aya::maps::HashMap as BpfHashMap;
use aya::Ebpf;

use crate::pipeline::cgroup;
use crate::service::config::{ScopeConfig, ScopeLists};
use traceed_wire::LiveEvent;

const SCOPE_UID_INCLUDE: u32 = 1 << 0;
const SCOPE_COMM_INCLUDE: u32 = 1 << 1;
const SCOPE_PID_INCLUDE: u32 = 1 << 2;
const SCOPE_CGROUP_INCLUDE: u32 = 1 << 3;
const SCOPE_MNTNS_INCLUDE: u32 = 1 << 4;
const SCOPE_IN: u8 = 1;
const SCOPE_OUT: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("scope cgroup {path}: {source}; give a directory under /sys/fs/cgroup")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("scope map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// Concrete kernel keys of one list (include or exclude).
#[derive(Debug, Default, Clone)]
pub struct Keys {
    pub uid: Vec<u32>,
    pub comm: Vec<[u8; 16]>,
    pub pid: Vec<u32>,
    pub cgroup: Vec<u64>,
    pub mnt_ns: Vec<u32>,
    /// Executable paths, resolved (see `exe_key`).
    pub exe: Vec<Vec<u8>>,
}

#[derive(Debug, Default, Clone)]
pub struct Resolved {
    pub include: Keys,
    pub exclude: Keys,
    include_containers_configured: bool,
}

fn comm_key(s: &str) -> [u8; 16] {
    let mut k = [0u8; 16];
    let n = s.len().min(15);
    k[..n].copy_from_slice(&s.as_bytes()[..n]);
    k
}

/// The path as the kernel names a loaded file (`/proc/<pid>/exe`): with
/// symlinks resolved, so `/bin/sh` matches what it points to. A path that
/// does not exist (yet) is kept as written.
fn exe_key(p: &std::path::Path) -> Vec<u8> {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    p.as_os_str().as_bytes().to_vec()
}

fn resolve_lists(l: &ScopeLists) -> Result<Keys, ScopeError> {
    let mut k = Keys {
        uid: l.uid.clone(),
        comm: l.comm.iter().map(|c| comm_key(c)).collect(),
        pid: l.pid.clone(),
        cgroup: Vec::new(),
        mnt_ns: l.mnt_ns.clone(),
        exe: l.exe.iter().map(|p| exe_key(p)).collect(),
    };
    for p in &l.cgroup {
        let full = if p.is_absolute() {
            p.clone()
        } else {
            cgroup::root().join(p)
        };
        let meta = std::fs::metadata(&full).map_err(|source| ScopeError::Cgroup {
            path: full.display().to_string(),
            source,
        })?;
        k.cgroup.push(meta.ino());
    }
    if !l.container.is_empty() {
        for (id, path) in cgroup::walk(cgroup::root()) {
            let Some(cid) = cgroup::container_id_from_path(&path) else {
                continue;
            };
            if l.container
                .iter()
                .any(|want| cid.starts_with(want.as_str()))
            {
                k.cgroup.push(id);
            }
        }
        if k.cgroup.is_empty() {
            tracing::warn!(containers = ?l.container, "no running container matches the scope's container list");
        }
    }
    Ok(k)
}

impl Resolved {
    pub fn from_config(c: &ScopeConfig) -> Result<Self, ScopeError> {
        Ok(Self {
            include: resolve_lists(&c.include)?,
            exclude: resolve_lists(&c.exclude)?,
            include_containers_configured: !c.include.container.is_empty(),
        })
    }

    /// `scope_flags`: which keys have an include list.
    pub fn flags(&self) -> u32 {
        let i = &self.include;
        let mut f = 0;
        let cfg_nonempty = |v: bool, bit| if v { bit } else { 0 };
        f |= cfg_nonempty(!i.uid.is_empty(), SCOPE_UID_INCLUDE);
        f |= cfg_nonempty(!i.comm.is_empty(), SCOPE_COMM_INCLUDE);
        f |= cfg_nonempty(!i.pid.is_empty(), SCOPE_PID_INCLUDE);
        // A container include list that matched no running container still
        // restricts: it must match nothing, not everything.
        f |= cfg_nonempty(
            !i.cgroup.is_empty() || self.include_containers_configured,
            SCOPE_CGROUP_INCLUDE,
        );
        f |= cfg_nonempty(!i.mnt_ns.is_empty(), SCOPE_MNTNS_INCLUDE);
        f
    }

    pub fn any(&self) -> bool {
        let e = &self.exclude;
        self.flags() != 0
            || !(e.uid.is_empty()
                && e.comm.is_empty()
                && e.pid.is_empty()
                && e.cgroup.is_empty()
                && e.mnt_ns.is_empty())
    }

    /// Fill the scope maps (before attaching anything).
    pub fn push(&self, ebpf: &mut Ebpf) -> Result<(), ScopeError> {
        fn put<K: aya::Pod + Copy>(
            ebpf: &mut Ebpf,
            map: &'static str,
            keys: &[K],
            v: u8,
        ) -> Result<(), ScopeError> {
            if keys.is_empty() {
                return Ok(());
            }
            let m = ebpf.map_mut(map).ok_or(ScopeError::Map {
                map,
                source: aya::maps::MapError::InvalidName { name: map.into() },
            })?;
            let mut h: BpfHashMap<_, K, u8> =
                BpfHashMap::try_from(m).map_err(|source| ScopeError::Map { map, source })?;
            for k in keys {
                h.insert(*k, v, 0)
                    .map_err(|source| ScopeError::Map { map, source })?;
            }
            Ok(())
        }
        // Includes first, then excludes, so an id in both is excluded.
        for (keys, v) in [(&self.include, SCOPE_IN), (&self.exclude, SCOPE_OUT)] {
            put(ebpf, "scope_uid", &keys.uid, v)?;
            put(ebpf, "scope_comm", &keys.comm, v)?;
            put(ebpf, "scope_pid", &keys.pid, v)?;
            put(ebpf, "scope_cgroup", &keys.cgroup, v)?;
            put(ebpf, "scope_mntns", &keys.mnt_ns, v)?;
        }
        Ok(())
    }
}

/// `[scope.*] exe`: the executable the kernel loaded, as the process table
/// knows it from the exec (and /proc/<pid>/exe), which neither
/// `prctl(PR_SET_NAME)` nor argv[0] can change. Checked in user space right
/// after enrichment, so an excluded process still costs its records in the
/// ring buffer; they are dropped before the store, and not counted as lost.
#[derive(Debug, Default, Clone)]
pub struct ExeScope {
    include: Vec<Vec<u8>>,
    exclude: Vec<Vec<u8>>,
}

impl ExeScope {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether `e` is in scope: with an include list only a known, listed
    /// exe is; a listed exe is never (excludes win).
    pub fn admits(&self, e: &LiveEvent) -> bool {
        if self.is_empty() {
            return true;
        }
        let exe = e
            .exe
            .as_deref()
            .map(|s| crate::pipeline::decoder::raw_bytes(e, s));
        let listed = |l: &[Vec<u8>]| exe.as_deref().is_some_and(|x| l.iter().any(|v| v == x));
        if listed(&self.exclude) {
            return false;
        }
        self.include.is_empty() || listed(&self.include)
    }
}

impl Resolved {
    pub fn exe_scope(&self) -> ExeScope {
        ExeScope {
            include: self.include.exe.clone(),
            exclude: self.exclude.exe.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(exe: Option<&str>, escaped: bool) -> LiveEvent {
        let mut e = LiveEvent::new("open", 0, "core");
        e.exe = exe.map(Into::into);
        if escaped {
            e.args = serde_json::json!({"escaped": true}).into();
        }
        e
    }

    #[test]
    fn exe_scope_matches_the_bytes_of_the_exe() {
        let s = ExeScope {
            include: vec![],
            exclude: vec![b"/opt/a\\b".to_vec(), b"/opt/\\xff".to_vec()],
        };
        assert!(s.admits(&ev(Some("/usr/bin/true"), false)));
        assert!(s.admits(&ev(None, false)), "unknown exe: not excluded");
        assert!(!s.admits(&ev(Some("/opt/a\\b"), false)));
        // Escaped: the rendering doubles the backslash, the bytes match.
        assert!(!s.admits(&ev(Some("/opt/a\\\\b"), true)));
        // "\xff" escaped is the byte 0xff, not the four characters listed.
        assert!(s.admits(&ev(Some("/opt/\\xff"), true)));
        let inc = ExeScope {
            include: vec![b"/usr/bin/true".to_vec()],
            exclude: vec![],
        };
        assert!(inc.admits(&ev(Some("/usr/bin/true"), false)));
        assert!(!inc.admits(&ev(Some("/usr/bin/false"), false)));
        assert!(!inc.admits(&ev(None, false)), "unknown exe: not included");
    }
}
