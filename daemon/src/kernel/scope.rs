//! Scope filters: turns `[scope]` from the config into the keys the kernel
//! programs check (uid, comm, tgid, cgroup id, mount-namespace inode) and
//! pushes them into the BPF maps before any program is attached.

use std::os::unix::fs::MetadataExt;

use aya::maps::HashMap as BpfHashMap;
use aya::Ebpf;

use crate::pipeline::cgroup;
use crate::service::config::{ScopeConfig, ScopeLists};

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

fn resolve_lists(l: &ScopeLists) -> Result<Keys, ScopeError> {
    let mut k = Keys {
        uid: l.uid.clone(),
        comm: l.comm.iter().map(|c| comm_key(c)).collect(),
        pid: l.pid.clone(),
        cgroup: Vec::new(),
        mnt_ns: l.mnt_ns.clone(),
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
