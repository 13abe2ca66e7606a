//! cgroup ids to cgroup paths and container ids. A cgroup v2 id is the
//! inode number of its directory under /sys/fs/cgroup, so one walk of that
//! tree maps ids to paths; the container id is the 64-hex segment that
//! docker, containerd, cri-o and podman all put in their cgroup names
//! (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
//! `libpod-<id>.scope`, `/docker/<id>`, `/kubepods/.../<id>`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::HashMap;

/// Where the cgroup v2 hierarchy (the one bpf_get_current_cgroup_id
/// reports) is mounted: /sys/fs/cgroup on unified systems, its `unified`
/// subdirectory on hybrid v1/v2 ones.
pub fn root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let unified = Path::new("/sys/fs/cgroup");
        if unified.join("cgroup.controllers").exists() {
            return unified.to_path_buf();
        }
        let hybrid = unified.join("unified");
        if hybrid.join("cgroup.procs").exists() {
            return hybrid;
        }
        unified.to_path_buf()
    })
}

/// The 64-hex container id in a cgroup path, if it has one.
pub fn container_id_from_path(path: &str) -> Option<&str> {
    path.split('/').rev().find_map(|seg| {
        let seg = seg.strip_suffix(".scope").unwrap_or(seg);
        let id = seg.rsplit(['-', ':']).next().unwrap_or(seg);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    })
}

/// Walk the cgroup tree: (id, path relative to the root).
pub fn walk(root: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let rel = dir
            .strip_prefix(root)
            .map(|p| format!("/{}", p.display()))
            .unwrap_or_default();
        out.push((meta.ino(), rel));
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for ent in rd.flatten() {
                if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(ent.path());
                }
            }
        }
    }
    out
}

/// id -> container id cache, refreshed by a re-walk when an unknown id
/// shows up (at most once a second: new cgroups are rare, events are not).
pub struct Containers {
    by_id: HashMap<u64, Option<Arc<str>>>,
    last_walk: Option<Instant>,
}

impl Default for Containers {
    fn default() -> Self {
        Self::new()
    }
}

impl Containers {
    pub fn new() -> Self {
        let mut c = Self {
            by_id: HashMap::default(),
            last_walk: None,
        };
        c.rewalk();
        c
    }

    fn rewalk(&mut self) {
        self.last_walk = Some(Instant::now());
        for (id, path) in walk(root()) {
            let cid = container_id_from_path(&path).map(Arc::from);
            self.by_id.insert(id, cid);
        }
    }

    pub fn container_of(&mut self, cgroup_id: u64) -> Option<Arc<str>> {
        if let Some(v) = self.by_id.get(&cgroup_id) {
            return v.clone();
        }
        if self
            .last_walk
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.rewalk();
        }
        // Remember misses too, so an unknown id costs one walk, not one per event.
        self.by_id.entry(cgroup_id).or_insert(None).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f9d2c1e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";

    #[test]
    fn runtimes_patterns() {
        for p in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/system.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/docker/{ID}"),
            format!("/kubepods/besteffort/pod1234/{ID}"),
        ] {
            assert_eq!(container_id_from_path(&p), Some(ID), "{p}");
        }
        assert_eq!(
            container_id_from_path("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_id_from_path("/"), None);
    }

    #[test]
    fn walk_finds_root() {
        let w = walk(root());
        assert!(w.iter().any(|(_, p)| p == "/"), "{}", root().display());
    }
}
