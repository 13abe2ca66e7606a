//! Who is on the other end of an API connection (SO_PEERCRED), and whether
//! they may read events: root, and members of group `traceed` — by the
//! peer's primary gid, its process's supplementary groups, or the user
//! database's groups for its uid. The socket's 0660 mode is the first gate;
//! this is the second, so a socket made world-accessible by mistake still
//! leaks nothing.

pub const GROUP: &str = "traceed";

/// The credentials the kernel recorded for the connecting process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Self> {
        let c = stream.peer_cred()?;
        Ok(Self {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        })
    }
}

/// The gid of group `traceed`, if the group exists: the one group lookup
/// of the daemon (socket ownership at start, the peer check per
/// connection; the group may be created after the daemon starts). It runs
/// on blocking threads concurrently, hence the reentrant getgrnam_r, with a
/// buffer grown on ERANGE (a group with many members needs more than the
/// first guess).
pub fn group_gid() -> Option<u32> {
    let name = std::ffi::CString::new(GROUP).expect("no NUL in the group name");
    let mut len = 16 * 1024;
    loop {
        let mut buf = vec![0u8; len];
        // SAFETY: group is plain old data; all-zero is a valid value.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::group = std::ptr::null_mut();
        // SAFETY: getgrnam_r writes only into our buffers; `res` is null or `&grp`.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut res,
            )
        };
        match rc {
            0 => return (!res.is_null()).then_some(grp.gr_gid),
            libc::ERANGE if len < 16 << 20 => len *= 4,
            libc::EINTR => {}
            _ => return None,
        }
    }
}

/// Supplementary groups of a live process, from /proc/<pid>/status.
fn process_groups(pid: i32) -> Vec<u32> {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Groups the user database gives `uid` (getgrouplist), for peers whose
/// process we cannot inspect.
fn user_groups(uid: u32, gid: u32) -> Vec<u32> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain old data; all-zero is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into our buffers; `res` is null or points at `pw`.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut res) };
    if rc != 0 || res.is_null() {
        return Vec::new();
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: pw_name is a valid C string inside `buf`; `groups` holds `n`.
    let rc = unsafe { libc::getgrouplist(pw.pw_name, gid, groups.as_mut_ptr(), &mut n) };
    if rc < 0 {
        // More than 256 groups: the first 256 were still written.
        n = groups.len() as libc::c_int;
    }
    groups.truncate(n.max(0) as usize);
    groups
}

/// May this peer read events? `group` is the gid of `traceed`, if it exists.
pub fn allowed(peer: &Peer, group: Option<u32>) -> bool {
    if peer.uid == 0 {
        return true;
    }
    let Some(g) = group else {
        return false;
    };
    peer.gid == g
        || peer.pid.is_some_and(|p| process_groups(p).contains(&g))
        || user_groups(peer.uid, peer.gid).contains(&g)
}

pub fn refusal(peer: &Peer) -> String {
    format!(
        "permission denied: uid {} is neither root nor a member of group `{GROUP}`; \
         join it with `sudo usermod -aG {GROUP} <user>` and log in again",
        peer.uid
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_always_allowed() {
        let p = Peer {
            uid: 0,
            gid: 0,
            pid: None,
        };
        assert!(allowed(&p, None));
        assert!(allowed(&p, Some(12345)));
    }

    #[test]
    fn membership_by_primary_or_process_groups() {
        let nobody = Peer {
            uid: 65534,
            gid: 65534,
            pid: None,
        };
        assert!(!allowed(&nobody, None), "no group: root only");
        assert!(!allowed(&nobody, Some(4242)));
        assert!(allowed(
            &Peer {
                gid: 4242,
                ..nobody
            },
            Some(4242)
        ));
        // Our own process's supplementary groups are read from /proc.
        let me = std::process::id() as i32;
        let groups = process_groups(me);
        if let Some(&g) = groups.first() {
            assert!(allowed(
                &Peer {
                    pid: Some(me),
                    ..nobody
                },
                Some(g)
            ));
        }
    }

    #[test]
    fn group_lookup_agrees_with_getent() {
        let out = std::process::Command::new("getent")
            .args(["group", "traceed"])
            .output()
            .unwrap();
        let want: Option<u32> = String::from_utf8_lossy(&out.stdout)
            .split(':')
            .nth(2)
            .and_then(|g| g.trim().parse().ok());
        assert_eq!(group_gid(), want);
    }

    #[test]
    fn user_database_groups() {
        // root's primary group is always in its own list.
        assert!(user_groups(0, 0).contains(&0));
        assert!(user_groups(4_000_000_000, 1).is_empty(), "unknown uid");
    }

    #[test]
    fn refusal_says_how_to_join() {
        let m = refusal(&Peer {
            uid: 1000,
            gid: 1000,
            pid: Some(1),
        });
        assert!(
            m.contains("group `traceed`") && m.contains("usermod"),
            "{m}"
        );
    }
}
