//! Ground truth for every event kind: the test performs the action itself
//! (or in a child it controls) and checks the stored event's fields.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use traceed_tests::{poll, unique, Daemon, DaemonOpts, Program};
use traceed_wire::Event;

fn me() -> String {
    std::process::id().to_string()
}

fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// Run `body` in a forked child that then `_exit`s with what it returns,
/// and wait for it: the child's pid and wait status. `body` may make only
/// async-signal-safe calls, on memory prepared before the fork (the test
/// process has other threads).
fn in_child(body: impl FnOnce() -> i32) -> (i32, i32) {
    // SAFETY: the child runs only `body` (see above) and _exits; the
    // parent waits for its own child.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            libc::_exit(body());
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        (pid, status)
    }
}

fn tmp_path(tag: &str) -> String {
    std::env::temp_dir()
        .join(format!("traceed-{tag}-{}", unique("p")))
        .display()
        .to_string()
}

#[test]
fn file_events() {
    let d = Daemon::start();
    let pid = me();
    // open (create), chmod, rename, unlink, all on unique paths.
    let p1 = tmp_path("open");
    let p2 = format!("{p1}.renamed");
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&p1)
            .unwrap();
    }
    let missing = tmp_path("missing");
    assert!(std::fs::File::open(&missing).is_err());
    let c = CString::new(p1.clone()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::chmod(c.as_ptr(), 0o600) }, 0);
    std::fs::rename(&p1, &p2).unwrap();
    std::fs::remove_file(&p2).unwrap();

    let e = d.wait_for(&["--kind", "open", "--pid", &pid], |e| {
        e.args["path"] == p1.as_str()
    });
    assert_eq!(e.tid, Some(gettid()));
    assert!(e.retval.unwrap() >= 0, "fd expected: {e:?}");
    let flags = e.args["flags"].as_i64().unwrap() as i32;
    assert_ne!(flags & libc::O_CREAT, 0, "O_CREAT in {flags:#x}");
    assert_ne!(flags & libc::O_EXCL, 0);
    assert_eq!(e.args["mode"], 0o640);
    assert_eq!(e.fidelity, "core");

    let e = d.wait_for(&["--kind", "open", "--pid", &pid], |e| {
        e.args["path"] == missing.as_str()
    });
    assert_eq!(
        e.retval,
        Some(-(libc::ENOENT as i64)),
        "failed opens are recorded with -errno"
    );

    let e = d.wait_for(&["--kind", "chmod", "--pid", &pid], |e| {
        e.args["path"] == p1.as_str()
    });
    assert_eq!(e.args["mode"], 0o600);
    assert_eq!(e.retval, Some(0));

    let e = d.wait_for(&["--kind", "rename", "--pid", &pid], |e| {
        e.args["old_path"] == p1.as_str()
    });
    assert_eq!(e.args["new_path"], p2.as_str());
    assert_eq!(e.retval, Some(0));

    let e = d.wait_for(&["--kind", "unlink", "--pid", &pid], |e| {
        e.args["path"] == p2.as_str()
    });
    assert_eq!(e.retval, Some(0));
}

#[test]
fn relative_paths_are_made_absolute() {
    let d = Daemon::start();
    let dir = tmp_path("reldir");
    std::fs::create_dir_all(&dir).unwrap();
    let dirf = std::fs::File::open(&dir).unwrap();
    let name = unique("rel");
    let cname = CString::new(name.clone()).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: valid fd and C string.
    let fd = unsafe {
        libc::openat(
            dirf.as_raw_fd(),
            cname.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        )
    };
    assert!(fd >= 0);
    let want = format!("{dir}/{name}");
    let e = d.wait_for(&["--kind", "open", "--pid", &me()], |e| {
        e.args["path"] == want.as_str()
    });
    assert_eq!(e.retval, Some(fd as i64));
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Paths relative to a directory fd follow what the fd is: the directory
/// is read once per id the kernel gives it (`dir_fd_id`), and an fd number
/// made to name another directory (dup2) is read again, back and forth.
/// Each step waits until its event is stored before the fd changes (user
/// space reads /proc/PID/fd/N on a new id: a change first would be a race
/// this test does not measure).
#[test]
fn relative_paths_follow_the_dirfd() {
    use std::os::fd::AsRawFd;
    let d = Daemon::start();
    let root = tmp_path("dirfds");
    let (a, b) = (format!("{root}/a"), format!("{root}/b"));
    for dir in [&a, &b] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let (fa, fb) = (
        std::fs::File::open(&a).unwrap(),
        std::fs::File::open(&b).unwrap(),
    );
    // One fd number that names a, then b, then a again.
    let fd = std::fs::File::open(&a).unwrap();
    let n = fd.as_raw_fd();
    let f = unique("dirf");
    let me = me();
    for (i, dir) in [&a, &a, &b, &a].into_iter().enumerate() {
        let src = if dir == &a { &fa } else { &fb };
        // SAFETY: both fds are open; dup2 onto our own fd.
        assert_eq!(unsafe { libc::dup2(src.as_raw_fd(), n) }, n);
        let name = CString::new(format!("{f}{i}")).unwrap();
        // SAFETY: valid fd and C string.
        let made = unsafe { libc::openat(n, name.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) };
        assert!(made >= 0);
        // SAFETY: closing our own fd.
        unsafe { libc::close(made) };
        let want = format!("{dir}/{f}{i}");
        d.wait_for(&["--kind", "open", "--pid", &me], |e| {
            e.args["path"] == want.as_str()
        });
        // SAFETY: valid fd and C string.
        assert_eq!(unsafe { libc::fchmodat(n, name.as_ptr(), 0o600, 0) }, 0);
        d.wait_for(&["--kind", "chmod", "--pid", &me], |e| {
            e.args["path"] == want.as_str()
        });
    }
    drop(fd);
    std::fs::remove_dir_all(&root).unwrap();
}

/// A walker's dirfd-relative paths, as `tar -c` and `rm -r` make them:
/// open a directory, open a file relative to it, close the directory, open
/// another file on its number; open another directory (O_DIRECTORY), move
/// it to another number (F_DUPFD), unlink in it, remove it; exit. By the
/// time the daemon handles the events /proc names a file at those numbers,
/// or nothing, and the second directory is gone: each directory comes from
/// the open that returned it, checked against the kernel's directory id
/// (the second one's open record carries the id of what it opened).
#[test]
fn dirfd_paths_of_a_process_that_moved_on() {
    let d = Daemon::start();
    let root = tmp_path("walker");
    std::fs::create_dir_all(format!("{root}/sub")).unwrap();
    std::fs::create_dir_all(format!("{root}/gone")).unwrap();
    let f = unique("walk");
    std::fs::write(format!("{root}/gone/{f}"), "").unwrap();
    let c = |s: &str| CString::new(s).unwrap();
    let (dir, sub, name, other) = (c(&root), c("sub"), c(&f), c("/etc/hostname"));
    let gone = c("gone");
    // SAFETY (the child's calls): C strings made before the fork.
    let (pid, status) = in_child(|| unsafe {
        let top = libc::open(dir.as_ptr(), libc::O_RDONLY);
        let n = libc::openat(top, sub.as_ptr(), libc::O_RDONLY);
        let made = libc::openat(n, name.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        libc::close(made);
        libc::close(n);
        // The directory's number now names a file.
        libc::open(other.as_ptr(), libc::O_RDONLY);
        let g = libc::openat(top, gone.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        let moved = libc::fcntl(g, libc::F_DUPFD_CLOEXEC, 40);
        libc::close(g);
        libc::open(other.as_ptr(), libc::O_RDONLY);
        libc::unlinkat(moved, name.as_ptr(), 0);
        libc::close(moved);
        libc::unlinkat(top, gone.as_ptr(), libc::AT_REMOVEDIR);
        0
    });
    assert_eq!(status, 0);
    let want = format!("{root}/sub/{f}");
    let pid = pid.to_string();
    d.wait_for(&["--kind", "open", "--pid", &pid], |e| {
        e.args["path"] == want.as_str()
    });
    let want = format!("{root}/gone/{f}");
    d.wait_for(&["--kind", "unlink", "--pid", &pid], |e| {
        e.args["path"] == want.as_str()
    });
    assert!(!std::path::Path::new(&format!("{root}/gone")).exists());
    std::fs::remove_dir_all(&root).unwrap();
}

/// One process's relative opens follow its chdirs: the cwd is read once
/// per directory the kernel names (`cwd_id`), and never reused across a
/// change, back and forth. The shell reads a line from the test after
/// each open, sent once that open is stored, so each is resolved while
/// the shell is still in the directory it opened from (user space reads the cwd from
/// /proc: a process that moved on or exited first is a race this test
/// does not measure).
#[test]
fn relative_paths_follow_the_cwd() {
    let d = Daemon::start();
    let root = tmp_path("cwds");
    let (a, b) = (format!("{root}/a"), format!("{root}/b"));
    for dir in [&a, &b] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let f = unique("cwdf");
    let steps = [(&a, 1), (&a, 2), (&b, 2), (&a, 3), (&b, 4)];
    let mut script = format!("cd {a}");
    for (dir, n) in steps {
        std::fs::write(format!("{dir}/{f}{n}"), "").unwrap();
        // Relative to the cwd: ../a from b and back.
        let rel = if dir == &a { "../a" } else { "../b" };
        script += &format!(" && cd {rel} && : < {f}{n} && read go");
    }
    // Killed if the test fails first.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(
        Command::new("/bin/dash")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id().to_string();
    let mut go = child.0.stdin.take().unwrap();
    for (dir, n) in steps {
        let want = format!("{dir}/{f}{n}");
        d.wait_for(&["--kind", "open", "--pid", &pid], |e| {
            e.args["path"] == want.as_str()
        });
        go.write_all(b"\n").unwrap();
    }
    drop(go);
    assert!(child.0.wait().unwrap().success());
    std::fs::remove_dir_all(&root).unwrap();
}

/// An exec of a relative name is named from the cwd the kernel resolved
/// it against (the exec record's), not from the one /proc shows when the
/// daemon gets to the record: the program moves to / first thing, and the
/// record usually waits for the drain timer.
#[test]
fn a_relative_exec_is_named_from_its_cwd_at_the_exec() {
    let d = Daemon::start();
    let prog = Program::copy_of("/bin/dash", "relx");
    let dir = prog.path.parent().unwrap();
    let rel = format!("./{}", prog.name);
    let mut child = traceed_tests::spawn_fresh(
        Command::new(&rel)
            .current_dir(dir)
            .args(["-c", "cd / && read go"])
            .stdin(std::process::Stdio::piped()),
    );
    let pid = child.id();
    let e = d.wait_for(&["--kind", "exec", "--pid", &pid.to_string()], |e| {
        e.args["filename"] == rel.as_str()
    });
    let _ = child.stdin.take().unwrap().write_all(b"\n");
    assert!(child.wait().unwrap().success());
    assert_eq!(
        e.exe.as_deref(),
        Some(dir.join(&rel).to_str().unwrap()),
        "{e:?}"
    );
}

/// Two file systems' roots share an inode number (every tmpfs root is
/// inode 1): a process opens one, points the fd number at the other with
/// dup2 (which the stream does not see), creates a file relative to it
/// and exits. The directory id carries the device, so the open that
/// returned the number (the wrong root) is not taken for it; the other
/// root, which the process opened too, is.
#[test]
fn a_root_of_another_file_system_is_not_taken_for_a_dirfd() {
    let d = Daemon::start();
    let root = tmp_path("roots");
    let (a, b) = (format!("{root}/a"), format!("{root}/b"));
    struct Mounts(Vec<String>);
    impl Drop for Mounts {
        fn drop(&mut self) {
            for m in &self.0 {
                let _ = Command::new("umount").arg(m).status();
            }
        }
    }
    let mut mounts = Mounts(vec![]);
    for m in [&a, &b] {
        std::fs::create_dir_all(m).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "traceed-test", m])
            .status();
        assert!(ok.unwrap().success(), "mount tmpfs on {m}");
        mounts.0.push(m.clone());
    }
    use std::os::unix::fs::MetadataExt;
    let (ma, mb) = (
        std::fs::metadata(&a).unwrap(),
        std::fs::metadata(&b).unwrap(),
    );
    assert_eq!(ma.ino(), mb.ino(), "the premise: the roots share an inode");
    assert_ne!(ma.dev(), mb.dev());
    let f = unique("root");
    let c = |s: &str| CString::new(s).unwrap();
    let (ca, cb, name) = (c(&a), c(&b), c(&f));
    // SAFETY (the child's calls): C strings made before the fork.
    let (pid, status) = in_child(|| unsafe {
        let fb = libc::open(cb.as_ptr(), libc::O_RDONLY);
        let n = libc::open(ca.as_ptr(), libc::O_RDONLY);
        libc::dup2(fb, n);
        let made = libc::openat(n, name.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        if made >= 0 {
            0
        } else {
            1
        }
    });
    assert_eq!(status, 0);
    assert!(std::path::Path::new(&format!("{b}/{f}")).exists());
    let want = format!("{b}/{f}");
    let stored = d.wait_for(&["--kind", "open", "--pid", &pid.to_string()], |e| {
        e.args["path"].as_str().is_some_and(|p| p.ends_with(&f))
    });
    assert_eq!(stored.args["path"], want.as_str());
    drop(mounts);
    std::fs::remove_dir_all(&root).unwrap();
}

/// A short-lived process's cwd-relative open, handled after it exited:
/// its exec record names the cwd (walked in the kernel, with its id), so
/// the path is resolved without /proc.
#[test]
fn cwd_paths_of_a_process_that_exited() {
    let d = Daemon::start();
    let dir = tmp_path("gonecwd");
    std::fs::create_dir_all(&dir).unwrap();
    let f = unique("cwdx");
    std::fs::write(format!("{dir}/{f}"), "").unwrap();
    let child = Command::new("/bin/dash")
        .args(["-c", &format!(": < {f}")])
        .current_dir(&dir)
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    assert!(child.wait_with_output().unwrap().status.success());
    let want = format!("{dir}/{f}");
    d.wait_for(&["--kind", "open", "--pid", &pid], |e| {
        e.args["path"] == want.as_str()
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn network_events_ipv4_and_ipv6() {
    let d = Daemon::start();
    let pid = me();
    for host in ["127.0.0.1", "::1"] {
        let l = TcpListener::bind((host, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let mut c = TcpStream::connect((host, port)).unwrap();
        let (mut s, peer) = l.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        let family = if host == "::1" { "inet6" } else { "inet" };

        let e = d.wait_for(&["--kind", "connect", "--pid", &pid], |e| {
            e.args["port"] == port
        });
        assert_eq!(e.args["addr"], host);
        assert_eq!(e.args["family"], family);
        assert_eq!(e.retval, Some(0));

        let e = d.wait_for(&["--kind", "accept", "--pid", &pid], |e| {
            e.args["port"] == peer.port()
        });
        assert_eq!(e.args["addr"], host);
        assert_eq!(e.args["family"], family);
        assert!(e.retval.unwrap() >= 0);

        let e = d.wait_for(&["--kind", "bind", "--pid", &pid], |e| {
            e.args["addr"] == host && e.args["port"] == 0 && e.tid == Some(gettid())
        });
        assert_eq!(e.retval, Some(0));
    }
}

#[test]
fn process_lifecycle_fork_exit_kill_signal() {
    let d = Daemon::start();
    let pid = me();
    let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let cpid = child.id();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(cpid as i32, libc::SIGTERM) }, 0);
    child.wait().unwrap();

    let f = d.wait_for(&["--kind", "fork", "--pid", &cpid.to_string()], |_| true);
    assert_eq!(f.ppid, Some(std::process::id()));
    let k = d.wait_for(&["--kind", "kill", "--pid", &pid], |e| {
        e.args["target_pid"] == cpid
    });
    assert_eq!(k.args["signal"], libc::SIGTERM);
    assert_eq!(k.retval, Some(0));
    let x = d.wait_for(&["--kind", "exit", "--pid", &cpid.to_string()], |_| true);
    assert_eq!(x.args["signal"], libc::SIGTERM);
    assert!(x.args["exit_code"].is_null());
    assert_eq!(x.comm.as_deref(), Some("sleep"));

    let st = Command::new("/bin/sh")
        .args(["-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(3));
    let x = d.wait_for(&["--kind", "exit", "--comm", "sh", "--ppid", &pid], |e| {
        e.args["exit_code"] == 3
    });
    assert!(x.args["signal"].is_null());
}

#[test]
fn setuid_in_a_child() {
    let d = Daemon::start();
    // SAFETY (the child's call): setuid is async-signal-safe.
    let (cpid, status) = in_child(|| unsafe {
        if libc::setuid(65534) == 0 {
            0
        } else {
            1
        }
    });
    assert!(cpid > 0);
    assert_eq!(libc::WEXITSTATUS(status), 0);
    let e = d.wait_for(&["--kind", "setuid", "--pid", &cpid.to_string()], |_| true);
    assert_eq!(e.args["uid"], 65534);
    assert_eq!(e.retval, Some(0));
    assert_eq!(e.uid, Some(0), "uid is the caller's before the call");
}

#[test]
fn ptrace_a_child() {
    let d = Daemon::start();
    let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let cpid = child.id() as i32;
    const PTRACE_SEIZE: libc::c_uint = 0x4206;
    // SAFETY: seizing our own child, then killing it.
    let rc = unsafe { libc::ptrace(PTRACE_SEIZE, cpid, 0, 0) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    child.kill().unwrap();
    child.wait().unwrap();
    let e = d.wait_for(&["--kind", "ptrace", "--pid", &me()], |e| {
        e.args["target_pid"] == cpid
    });
    assert_eq!(e.args["request"], PTRACE_SEIZE);
    assert_eq!(e.retval, Some(0));
}

#[test]
fn memfd_and_bpf() {
    let d = Daemon::start();
    let name = unique("memfd");
    let c = CString::new(name.clone()).unwrap();
    // SAFETY: valid C string.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    let e = d.wait_for(&["--kind", "memfd_create", "--pid", &me()], |e| {
        e.args["name"] == name.as_str()
    });
    assert_eq!(e.retval, Some(fd as i64));
    assert_eq!(e.args["flags"], libc::MFD_CLOEXEC);

    // BPF_PROG_GET_NEXT_ID (11) with start_id 0: harmless, always allowed to root.
    let attr = [0u32; 4];
    // SAFETY: attr is a valid 16-byte buffer for this command.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 11, attr.as_ptr(), 16) };
    let tid = gettid();
    let e = d.wait_for(&["--kind", "bpf", "--pid", &me()], |e| e.tid == Some(tid));
    assert_eq!(e.args["cmd"], "BPF_PROG_GET_NEXT_ID");
    assert_eq!(e.retval, Some(rc));
}

/// A program run from a memfd (fileless) that is gone at once: /proc has
/// nothing left to say, so the exec record names the file the kernel
/// loaded (CO-RE rungs), and the exe is what /proc/PID/exe would have
/// shown.
#[test]
fn a_memfd_program_gone_at_once_is_named_by_the_kernel() {
    let d = Daemon::start();
    let name = unique("mfdx");
    let pid = traceed_tests::run_from_memfd(&name);
    let e = d.wait_for(&["--kind", "exec", "--pid", &pid.to_string()], |e| {
        e.pid == Some(pid)
    });
    assert_eq!(e.args["interpreter"], format!("memfd:{name}"), "{e:?}");
    assert_eq!(
        e.exe.as_deref(),
        Some(format!("/memfd:{name} (deleted)").as_str())
    );
}

#[test]
fn mount_in_a_private_namespace() {
    let d = Daemon::start();
    let src = unique("mnt");
    let target = tmp_path("mnt");
    std::fs::create_dir_all(&target).unwrap();
    let st = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "mount",
            "-t",
            "tmpfs",
            &src,
            &target,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let e = d.wait_for(&["--kind", "mount", "--comm", "mount"], |e| {
        e.args["source"] == src.as_str()
    });
    assert_eq!(e.args["target"], target.as_str());
    assert_eq!(e.args["fstype"], "tmpfs");
    assert_eq!(e.retval, Some(0));
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        ours.to_str().unwrap(),
        format!("mnt:[{}]", e.mnt_ns.unwrap()),
        "mount ran in its own (unshared) mount namespace"
    );
    std::fs::remove_dir(&target).unwrap();
}

#[test]
fn module_load_hook_is_probed() {
    let d = Daemon::start();
    let (_, body) = traceed_tests::http_get(&d.socket, "/v1/status").unwrap();
    let s: traceed_wire::Status = serde_json::from_str(&body).unwrap();
    let has_tp = std::path::Path::new("/sys/kernel/tracing/events/module/module_load").exists()
        || std::path::Path::new("/sys/kernel/debug/tracing/events/module/module_load").exists();
    if has_tp {
        assert!(
            s.programs.iter().any(|p| p == "tp_module_load"),
            "{:?}",
            s.programs
        );
    } else {
        // This kernel has no module support: the hook is skipped with a reason, not fatal.
        let skipped = s
            .skipped_hooks
            .iter()
            .find(|h| h.hook == "tp_module_load")
            .expect("listed as skipped");
        assert!(skipped.reason.contains("module_load"), "{}", skipped.reason);
    }
}

#[test]
fn the_daemon_never_records_itself() {
    let d = Daemon::start();
    // The daemon's work for an exec (its /proc and cgroup reads) is done
    // once the exec is visible.
    let prog = Program::new("self");
    prog.run(&[]);
    d.wait_for(&["--kind", "exec", "--comm", &prog.name], |_| true);
    // Its periodic work: loss accounting (BPF map reads) every 1 s and
    // retention every 2 s, both from the start: an uptime of 3 s covers a
    // few of each after a start that takes 1-2 s (the daemon is usually
    // that old by now; this waits on its clock, not a fixed sleep).
    poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let (_, body) = traceed_tests::http_get(&d.socket, "/v1/status").ok()?;
            let s: traceed_wire::Status = serde_json::from_str(&body).ok()?;
            (s.uptime_s >= 3).then_some(())
        },
        || "uptime did not reach 3 s".into(),
    );
    // Everything it did until now is stored.
    d.barrier();
    let own = d.events(&["--pid", &d.pid().to_string()]);
    assert!(
        own.is_empty(),
        "the daemon recorded itself: {:?}",
        own.first()
    );
}

fn in_thread<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn scope_excludes_comm_and_uid_in_the_kernel() {
    let excluded = unique("exc");
    let cfg = format!("[scope.exclude]\ncomm = [\"{excluded}\"]\nuid = [65533]\n");
    let d = Daemon::start_with(DaemonOpts {
        config: Some(cfg),
        ..Default::default()
    });
    let p_excl = tmp_path("excl");
    let p_ctrl = tmp_path("ctrl");
    let p_uid = tmp_path("uid");
    {
        let p = p_excl.clone();
        in_thread(&excluded, move || std::fs::File::open(p).is_err());
    }
    // A child running as the excluded uid.
    let st = Command::new("setpriv")
        .args([
            "--reuid",
            "65533",
            "--regid",
            "65533",
            "--clear-groups",
            "cat",
            &p_uid,
        ])
        .status()
        .unwrap();
    assert!(!st.success());
    let _ = std::fs::File::open(&p_ctrl);
    // The control open (same daemon, not excluded) arrives; the others never do.
    d.wait_for(&["--kind", "open", "--pid", &me()], |e| {
        e.args["path"] == p_ctrl.as_str()
    });
    d.barrier();
    let opens = d.events(&["--kind", "open", "--since", "1m"]);
    assert!(
        !opens.iter().any(|e| e.args["path"] == p_excl.as_str()),
        "excluded comm recorded"
    );
    assert!(
        !opens.iter().any(|e| e.args["path"] == p_uid.as_str()),
        "excluded uid recorded"
    );
    assert!(!d
        .events(&["--uid", "65533"])
        .iter()
        .any(|e| e.kind != "lost"));
}

/// A daemon with a ring of `bytes` that records only the thread named
/// `comm`: everything generated is known.
fn tiny_ring(bytes: u32, comm: &str) -> Daemon {
    Daemon::start_with(DaemonOpts {
        config: Some(format!(
            "[kernel]\nring_buffer_bytes = {bytes}\n[scope.include]\ncomm = [\"{comm}\"]\n"
        )),
        ..Default::default()
    })
}

/// Wait until the opens whose path is `mine`, stored, and the events the
/// `lost` rows count add up to `n` (at most 20 s): (stored, lost).
fn opens_and_lost(d: &Daemon, n: u64, every: Duration, mine: impl Fn(&str) -> bool) -> (u64, u64) {
    let last = std::cell::Cell::new((0, 0));
    poll(
        Duration::from_secs(20),
        every,
        || {
            let evs: Vec<Event> = d.events(&["--since", "5m", "--limit", "100000"]);
            let stored = evs
                .iter()
                .filter(|e| e.kind == "open")
                .filter_map(|e| e.args["path"].as_str())
                .filter(|p| mine(p))
                .count() as u64;
            let lost: u64 = evs
                .iter()
                .filter(|e| e.kind == "lost")
                .map(|e| e.args["count"].as_u64().unwrap())
                .sum();
            last.set((stored, lost));
            (stored + lost >= n).then_some((stored, lost))
        },
        || {
            let (stored, lost) = last.get();
            format!("stored {stored} + lost {lost} of {n} generated, after 20 s")
        },
    )
}

#[test]
fn a_flood_larger_than_the_ring_is_accounted_as_lost() {
    let flooder = unique("fld");
    let d = tiny_ring(8192, &flooder);
    const N: u64 = 20_000;
    let path = tmp_path("flood");
    {
        let path = path.clone();
        in_thread(&flooder, move || {
            for _ in 0..N {
                let _ = std::fs::File::open(&path);
            }
        });
    }
    let (stored, lost) = opens_and_lost(&d, N, Duration::from_millis(300), |p| p == path.as_str());
    assert!(
        lost > 0,
        "a {N}-event burst into an 8 KiB ring lost nothing? stored {stored}"
    );
    assert_eq!(
        stored + lost,
        N,
        "stored {stored} + lost {lost} must equal generated {N}"
    );
    let lost_rows: Vec<Event> = d.events(&["--kind", "lost", "--since", "5m"]);
    assert!(lost_rows
        .iter()
        .all(|e| e.args["source"] == "kernel" || e.args["source"] == "userspace"));
}

/// The ring's data pages are mapped once (daemon/src/kernel/ring.rs): a
/// record that runs past the end is read in two parts. Paths of 97
/// lengths through a 64 KiB ring put records across the end at many
/// offsets; every stored path must be one that was opened, whole, and
/// stored + lost must be all of them.
#[test]
fn records_across_the_end_of_the_ring_arrive_whole() {
    let opener = unique("wrp");
    let d = tiny_ring(65536, &opener);
    const N: usize = 5_000;
    let base = tmp_path("wrap");
    let paths: Vec<String> = (0..N)
        .map(|i| format!("{base}-{i:05}-{}", "x".repeat(i % 97)))
        .collect();
    // In chunks of ~50 KiB of records, each accounted for (stored or lost)
    // before the next, so that most get through the tiny ring.
    let mine = |p: &str| p.starts_with(&base);
    let mut accounted = (0, 0);
    for (k, chunk) in paths.chunks(200).enumerate() {
        let chunk = chunk.to_vec();
        in_thread(&opener, move || {
            for p in &chunk {
                let _ = std::fs::File::open(p);
            }
        });
        let done = ((k + 1) * 200).min(N) as u64;
        accounted = opens_and_lost(&d, done, Duration::from_millis(50), mine);
    }
    let (stored, lost) = accounted;
    let want: std::collections::HashSet<&str> = paths.iter().map(String::as_str).collect();
    let evs: Vec<Event> = d.events(&["--kind", "open", "--since", "5m", "--limit", "100000"]);
    for p in evs
        .iter()
        .filter_map(|e| e.args["path"].as_str())
        .filter(|p| mine(p))
    {
        assert!(want.contains(p), "a path that was never opened: {p:?}");
    }
    assert_eq!(stored + lost, N as u64, "stored {stored} + lost {lost}");
    assert!(stored > N as u64 / 2, "stored {stored} of {N}");
    // Lost only because the ring was full, never a record read wrong.
    let sources: Vec<String> = d
        .events(&["--kind", "lost", "--since", "5m"])
        .iter()
        .map(|e| e.args["source"].to_string())
        .collect();
    assert!(sources.iter().all(|s| s == "\"kernel\""), "{sources:?}");
}

#[test]
fn generic_syscalls_from_the_config() {
    let d = Daemon::start_with(DaemonOpts {
        config: Some("[events]\nsyscalls = [\"ioctl\", \"mprotect\"]\n".into()),
        ..Default::default()
    });
    // ioctl(fd, FIONREAD, &n) on /dev/null: known fd, request and result.
    let f = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to n.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) };
    // The kernel's return value: -errno where libc says -1.
    let want = if rc < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap() as i64)
    } else {
        rc as i64
    };
    let tid = gettid();
    let e = d.wait_for(&["--kind", "syscall", "--pid", &me()], |e| {
        e.tid == Some(tid) && e.args["syscall"] == "ioctl" && e.args["args"][0] == f.as_raw_fd()
    });
    assert_eq!(e.args["nr"], libc::SYS_ioctl);
    assert_eq!(e.args["args"][1], libc::FIONREAD);
    assert_eq!(e.retval, Some(want));
}

#[test]
fn unknown_generic_syscall_is_a_config_error() {
    let dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("traceed.toml");
    std::fs::write(&cfg, "[events]\nsyscalls = [\"frobnicate\"]\n").unwrap();
    let out = Command::new(traceed_tests::bin("traceed"))
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("frobnicate") && err.contains(cfg.to_str().unwrap()),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The v2 hierarchy, wherever this system mounts it.
fn cgroup2_root() -> std::path::PathBuf {
    let unified = std::path::Path::new("/sys/fs/cgroup");
    if unified.join("cgroup.controllers").exists() {
        unified.to_path_buf()
    } else {
        unified.join("unified")
    }
}

#[test]
fn container_id_from_a_real_cgroup_and_scope_by_container() {
    // A cgroup named the way docker names its scopes; a process moved into
    // it is, as far as the kernel can tell, in that container.
    let id: String = format!("{:016x}", std::process::id() as u64 * 0x9e37_79b9_7f4a_7c15)
        .repeat(4)
        .chars()
        .take(64)
        .collect();
    let parent = cgroup2_root().join(unique("tdcg"));
    let scope = parent.join(format!("docker-{id}.scope"));
    std::fs::create_dir_all(&scope).unwrap();
    let run_in_container = |tag: &str| {
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec /bin/true {tag}",
                scope.display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
    };

    let d = Daemon::start();
    let tag = unique("ctr");
    run_in_container(&tag);
    let e = d.wait_for(&["--kind", "exec", "--container", &id[..12]], |e| {
        e.args["argv"][1] == tag.as_str()
    });
    assert_eq!(e.container_id.as_deref(), Some(id.as_str()));
    // The kernel's cgroup v2 id is the cgroup directory's inode number.
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&scope).unwrap());
    assert_eq!(e.cgroup_id, Some(ino), "cgroup_id of {e:?}");
    drop(d);

    // Scope: only this container's processes.
    let d = Daemon::start_with(DaemonOpts {
        config: Some(format!(
            "[scope.include]\ncontainer = [\"{}\"]\n",
            &id[..12]
        )),
        ..Default::default()
    });
    let inside = unique("in");
    run_in_container(&inside);
    let outside = Program::new("out");
    outside.run(&[]);
    d.wait_for(&["--kind", "exec"], |e| {
        e.args["argv"][1] == inside.as_str()
    });
    // The barrier's marker must be inside the container (the scope
    // records nothing else): run after `outside`, once it is visible, so
    // is anything `outside` caused.
    let marker = unique("mk");
    run_in_container(&marker);
    d.wait_for(&["--kind", "exec"], |e| {
        e.args["argv"][1] == marker.as_str()
    });
    let all = d.events(&["--kind", "exec"]);
    assert!(
        all.iter()
            .all(|e| e.container_id.as_deref() == Some(id.as_str())
                || e.comm.as_deref() == Some("traceed")),
        "an exec outside the container was recorded: {:?}",
        all.iter().find(|e| e.container_id.is_none())
    );
    drop(d);
    let _ = std::fs::remove_dir(&scope);
    let _ = std::fs::remove_dir(&parent);
}

/// `open(path, flags)` `n` times, closing each fd, in a forked child that
/// then exits; returns its pid. The child only calls async-signal-safe
/// functions on memory prepared before the fork.
fn opens_in_child(runs: &[(&CString, i32, usize)]) -> u32 {
    // SAFETY: see above.
    let (pid, _) = in_child(|| unsafe {
        for &(path, flags, n) in runs {
            for _ in 0..n {
                let fd = libc::open(path.as_ptr(), flags);
                if fd >= 0 {
                    libc::close(fd);
                }
            }
        }
        0
    });
    pid as u32
}

#[test]
fn coalesce_folds_identical_opens_and_keeps_the_rest_apart() {
    // A window far longer than the test: what shows up was released by the
    // child's exit or the daemon's stop, not by the clock.
    let d = Daemon::start_with(DaemonOpts {
        config: Some("[events]\ncoalesce = \"60s\"\n".into()),
        ..Default::default()
    });
    let file = tmp_path("coalesce");
    std::fs::write(&file, b"x").unwrap();
    let missing = tmp_path("coalesce-missing");
    let (f, m) = (
        CString::new(file.clone()).unwrap(),
        CString::new(missing.clone()).unwrap(),
    );
    let cloexec = libc::O_RDONLY | libc::O_CLOEXEC;
    let pid = opens_in_child(&[
        (&f, libc::O_RDONLY, 50),
        (&m, libc::O_RDONLY, 5),
        (&f, cloexec, 1),
    ]);
    let pid_s = pid.to_string();
    // The exit comes after the opens it released.
    d.wait_for(&["--kind", "exit", "--pid", &pid_s], |_| true);
    let opens: Vec<Event> = d
        .events(&["--kind", "open", "--pid", &pid_s])
        .into_iter()
        .filter(|e| e.args["path"] == file.as_str() || e.args["path"] == missing.as_str())
        .collect();
    let row = |path: &str, flags: i32| {
        let rows: Vec<&Event> = opens
            .iter()
            .filter(|e| e.args["path"] == path && e.args["flags"].as_i64() == Some(flags.into()))
            .collect();
        assert_eq!(rows.len(), 1, "one row for {path} {flags:#o}: {opens:#?}");
        rows[0].clone()
    };
    let many = row(&file, libc::O_RDONLY);
    assert_eq!(many.args["count"], 50, "{many:?}");
    assert!(many.retval.unwrap() >= 0, "the first open's fd: {many:?}");
    let last = traceed_wire::parse_time_spec(many.args["last"].as_str().unwrap(), 0).unwrap();
    assert!(last > many.ts, "last {last} after the first {}", many.ts);
    let failed = row(&missing, libc::O_RDONLY);
    assert_eq!(failed.args["count"], 5);
    assert_eq!(failed.retval, Some(-(libc::ENOENT as i64)));
    let once = row(&file, cloexec);
    assert!(once.args.get("count").is_none(), "a lone open: {once:?}");
    assert!(once.args.get("last").is_none());
    let (_, metrics) = traceed_tests::http_get(&d.socket, "/metrics").unwrap();
    let folded: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("traceed_coalesced_opens_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no traceed_coalesced_opens_total in {metrics}"));
    assert!(folded >= 49 + 4, "folded {folded}");

    // Held when the daemon stops: stored, not lost.
    let held = tmp_path("coalesce-held");
    std::fs::write(&held, b"x").unwrap();
    let h = CString::new(held.clone()).unwrap();
    let pid = in_thread("coalesce-held", move || {
        for _ in 0..10 {
            // SAFETY: valid C string; the fd is closed at once.
            unsafe { libc::close(libc::open(h.as_ptr(), libc::O_RDONLY)) };
        }
        std::process::id()
    });
    let state = d.dir.clone();
    let mut d = d;
    // The kernel has the opens once the ring is drained: wait for the
    // daemon to have read past them (a later, uncoalesced event) first.
    d.barrier();
    assert_eq!(d.stop(), Some(0));
    let d2 = Daemon::start_with(DaemonOpts {
        dir: Some(state),
        ..Default::default()
    });
    let rows: Vec<Event> = d2
        .events(&["--kind", "open", "--pid", &pid.to_string()])
        .into_iter()
        .filter(|e| e.args["path"] == held.as_str() && e.args["flags"] == libc::O_RDONLY)
        .collect();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].args["count"], 10);
}
