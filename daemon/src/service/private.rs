//! The history is as private as the socket, whatever started the daemon.
//!
//! Owns: the process umask (so every file traceed creates is at most
//! 0640 and every directory 0750, under systemd or `make run` alike),
//! tightening a state directory and database created earlier with looser
//! modes, and refusing to start on a config file, state directory or rules
//! directory that someone other than root and the service user could
//! change (as sshd's StrictModes and auditd do): such a user could exclude
//! themselves from the record or rewrite it.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Group and others lose write; others lose read and search.
pub const UMASK: libc::mode_t = 0o027;
pub const DIR_MODE: u32 = 0o750;
pub const FILE_MODE: u32 = 0o640;

/// The files of the history in a state directory (SQLite keeps the WAL and
/// shared-memory index next to the database).
const HISTORY_FILES: &[&str] = &["events.db", "events.db-wal", "events.db-shm"];

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error(
        "refusing to start: {what} {} is {problem} (mode {mode:04o}, owner uid {uid}, group gid {gid}); \
         a user who can change it could hide from or rewrite the record. Fix it with `{fix}`",
        path.display()
    )]
    Untrusted {
        what: &'static str,
        path: PathBuf,
        problem: &'static str,
        mode: u32,
        uid: u32,
        gid: u32,
        fix: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivacyError + '_ {
    move |source| PrivacyError::Io {
        path: path.into(),
        source,
    }
}

/// Set the process umask; call first thing in `main`, before any thread.
pub fn restrict_umask() {
    // SAFETY: umask has no failure mode and touches only this process.
    unsafe { libc::umask(UMASK) };
}

/// Who may own and write traceed's own files: root and the user the daemon
/// runs as (the service user under the shipped unit).
fn trusted_uid(uid: u32) -> bool {
    // SAFETY: geteuid cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// Refuse a path that an untrusted user owns or can write. Group write is
/// accepted only for group root: any other group (traceed's included) has
/// members who are not the service user.
pub fn check_trusted(what: &'static str, path: &Path) -> Result<(), PrivacyError> {
    let md = std::fs::metadata(path).map_err(io(path))?;
    let mode = md.mode() & 0o7777;
    let (uid, gid) = (md.uid(), md.gid());
    // A root-owned character device (`--config /dev/null`) carries no text
    // anyone could plant.
    if md.file_type().is_char_device() && uid == 0 {
        return Ok(());
    }
    let untrusted = |problem: &'static str, fix: String| PrivacyError::Untrusted {
        what,
        path: path.into(),
        problem,
        mode,
        uid,
        gid,
        fix,
    };
    if !trusted_uid(uid) {
        return Err(untrusted(
            "owned by a user other than root and the service user",
            format!("chown root {}", path.display()),
        ));
    }
    if mode & 0o002 != 0 {
        return Err(untrusted(
            "writable by every user",
            format!("chmod o-w {}", path.display()),
        ));
    }
    if mode & 0o020 != 0 && gid != 0 {
        return Err(untrusted(
            "writable by its group, which is not root",
            format!("chmod g-w {}", path.display()),
        ));
    }
    Ok(())
}

/// Clear the given permission bits of `path` if it has any of them, and
/// give it group `traceed` where that group exists (best effort: an
/// unprivileged daemon may not be allowed to, and then the mode alone keeps
/// it private).
fn tighten(path: &Path, keep: u32, share_gid: Option<u32>) -> Result<(), PrivacyError> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    if md.file_type().is_symlink() {
        // Never follow a link planted in the state directory.
        return Ok(());
    }
    let mode = md.mode() & 0o7777;
    if mode & !keep != 0 {
        tracing::warn!(path = %path.display(), old = format!("{mode:04o}"), new = format!("{:04o}", mode & keep), "tightening the mode of a history file created earlier");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & keep))
            .map_err(io(path))?;
    }
    if let Some(gid) = share_gid {
        if md.gid() != gid {
            let _ = std::os::unix::fs::lchown(path, None, Some(gid));
        }
    }
    Ok(())
}

/// Create the state directory 0750 (or tighten one created earlier),
/// refuse one an untrusted user controls, and tighten the history files
/// already in it to 0640.
/// `share_gid`: the group files carry (group `traceed` where it exists).
pub fn prepare_state_dir(dir: &Path, gid: Option<u32>) -> Result<(), PrivacyError> {
    create_private_dir(dir, gid)?;
    check_trusted("the state directory", dir)?;
    tighten(dir, DIR_MODE, gid)?;
    for name in HISTORY_FILES {
        tighten(&dir.join(name), FILE_MODE, gid)?;
    }
    Ok(())
}

/// Create `dir` (and missing parents) with mode 0750, whatever the umask.
pub fn create_private_dir(dir: &Path, share_gid: Option<u32>) -> Result<(), PrivacyError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io(dir))?;
    // DirBuilder's mode is filtered by the umask; set it exactly.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io(dir))?;
    if let Some(gid) = share_gid {
        let _ = std::os::unix::fs::chown(dir, None, Some(gid));
    }
    Ok(())
}

/// A file traceed writes history into (the JSON-lines export): 0640.
pub fn tighten_file(path: &Path, share_gid: Option<u32>) -> Result<(), PrivacyError> {
    tighten(path, FILE_MODE, share_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn state_dir_is_created_private_and_old_files_are_tightened() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/b/state");
        prepare_state_dir(&dir, None).unwrap();
        assert_eq!(mode(&dir), 0o750);

        // A directory and database left world-readable by an earlier run.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = dir.join("events.db");
        std::fs::write(&db, b"x").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        prepare_state_dir(&dir, None).unwrap();
        assert_eq!(mode(&dir), 0o750);
        assert_eq!(mode(&db), 0o640);
    }

    #[test]
    fn writable_by_others_is_refused_with_the_fix() {
        let t = tempfile::tempdir().unwrap();
        let cfg = t.path().join("traceed.toml");
        std::fs::write(&cfg, b"").unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        check_trusted("the config file", &cfg).unwrap();

        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_trusted("the config file", &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("writable by every user"), "{e}");
        assert!(e.contains("mode 0666"), "{e}");
        assert!(e.contains(&format!("chmod o-w {}", cfg.display())), "{e}");

        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o664)).unwrap();
        std::os::unix::fs::chown(&cfg, None, Some(65534)).unwrap();
        let e = check_trusted("the config file", &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("writable by its group"), "{e}");

        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::chown(&cfg, Some(65534), Some(0)).unwrap();
        let e = check_trusted("the config file", &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("owned by a user other than root"), "{e}");
        assert!(e.contains("chown root"), "{e}");
    }
}
