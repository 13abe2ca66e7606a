//! Whole command lines, failed execs and the working directory at exec
//! (issue 20 parts 2 and 3, issue 16's CurrentDirectory), on the CO-RE rung
//! and on the fallback, with the default `max_argv_bytes` (32 KiB).
//!
//! CO-RE reads argv in one block after the exec, so it is whole up to the
//! limit and argc/argv_bytes are always exact. The fallback (and every
//! failed exec) reads argv pointer by pointer at most 1024 arguments, the
//! fallback at most 32 KiB: beyond that the event is `truncated` and
//! argc/argv_bytes are absent rather than guessed.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use traceed_tests::{spawn_fresh, unique, Daemon, DaemonOpts, Program};
use traceed_wire::Event;

const ENOENT: i64 = 2;
const ENOEXEC: i64 = 8;
const EACCES: i64 = 13;

fn daemon(mode: &str) -> Daemon {
    Daemon::start_with(DaemonOpts {
        args: vec!["--mode".into(), mode.into()],
        ..Default::default()
    })
}

fn exec_of(d: &Daemon, pid: u32) -> Event {
    d.wait_for(&["--pid", &pid.to_string(), "--kind", "exec"], |_| true)
}

fn argv_of(e: &Event) -> Vec<String> {
    serde_json::from_value(e.args["argv"].clone()).unwrap()
}

fn truncated(e: &Event) -> bool {
    e.args.get("truncated") == Some(&serde_json::json!(true))
}

/// The length the kernel gives argv: every argument with its NUL.
fn argv_len(argv: &[String]) -> u64 {
    argv.iter().map(|a| a.len() as u64 + 1).sum()
}

/// Run `prog` with `args` (argv[0] is the path) in `cwd`; returns the pid.
fn run_in(cwd: &Path, prog: &Path, args: &[String]) -> u32 {
    let mut c = spawn_fresh(Command::new(prog).args(args).current_dir(cwd));
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// fork + execve(path, argv) directly (no libc PATH search and no ENOEXEC
/// retry through /bin/sh, as execvp does); returns the child's pid and the
/// errno execve failed with.
fn failed_exec(cwd: &Path, path: &Path, argv: &[&str]) -> (u32, i64) {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let dir = CString::new(cwd.as_os_str().as_encoded_bytes()).unwrap();
    let args: Vec<CString> = argv.iter().map(|a| CString::new(*a).unwrap()).collect();
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: the child calls only async-signal-safe functions (chdir,
    // execve, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        unsafe {
            if libc::chdir(dir.as_ptr()) != 0 {
                libc::_exit(255);
            }
            libc::execve(p.as_ptr(), ptrs.as_ptr(), envp.as_ptr());
            libc::_exit(*libc::__errno_location());
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child did not exit: {status}");
    (pid as u32, i64::from(libc::WEXITSTATUS(status)))
}

fn work_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("traceed argv {}", unique("cwd")));
    std::fs::create_dir_all(&d).unwrap();
    d.canonicalize().unwrap()
}

fn check(mode: &str) {
    let core = mode == "core";
    let d = daemon(mode);
    let cwd = work_dir();
    let prog = Program::new("argv");
    let path = prog.path.to_string_lossy().into_owned();

    // 10,000 arguments (about 20 KiB: within the 32 KiB default), the
    // last one a marker.
    let marker = unique("MARKER");
    let mut many: Vec<String> = (0..9_999)
        .map(|i| ((b'a' + (i % 26) as u8) as char).to_string())
        .collect();
    many.push(marker.clone());
    let pid = run_in(&cwd, &prog.path, &many);
    let e = exec_of(&d, pid);
    let mut want = vec![path.clone()];
    want.extend(many.iter().cloned());
    let got = argv_of(&e);
    if core {
        assert!(!truncated(&e), "{:?}", e.args.get("truncated"));
        assert_eq!(got.len(), 10_001);
        assert_eq!(got, want, "argv recorded whole, marker last");
        assert_eq!(e.args["argc"], 10_001);
        assert_eq!(e.args["argv_bytes"], argv_len(&want));
        assert_eq!(e.args["cwd"], cwd.to_str().unwrap());
    } else {
        // Argument by argument, at most 1024 of them: cut, and said so.
        assert!(truncated(&e));
        assert_eq!(got[..], want[..got.len()], "a prefix, never garbage");
        assert!(got.len() >= 1000, "{}", got.len());
        assert!(e.args.get("argc").is_none(), "unknown, not guessed");
        assert!(e.args.get("cwd").is_none(), "the fallback has no cwd");
    }

    // One argument padded past 2 KiB, the command after the padding.
    let marker = unique("TAIL");
    let script = format!("{}; : {marker}", " ".repeat(3 << 10));
    let pid = run_in(&cwd, Path::new("/bin/sh"), &["-c".into(), script.clone()]);
    let e = exec_of(&d, pid);
    let want = vec!["/bin/sh".to_string(), "-c".into(), script];
    assert!(!truncated(&e), "{}", e.args);
    assert_eq!(argv_of(&e), want, "the tail after the padding is there");
    assert!(argv_of(&e)[2].ends_with(&marker));
    assert_eq!(e.args["argc"], 3);
    assert_eq!(e.args["argv_bytes"], argv_len(&want));

    // Over max_argv_bytes (32 KiB): cut, with the true size when known.
    let big: Vec<String> = (0..40)
        .map(|i| format!("{i:04}{}", "y".repeat(996)))
        .collect();
    let pid = run_in(&cwd, &prog.path, &big);
    let e = exec_of(&d, pid);
    let mut want = vec![path.clone()];
    want.extend(big.iter().cloned());
    assert!(truncated(&e));
    let got = argv_of(&e);
    // The last, cut argument has no NUL.
    let kept: u64 = argv_len(&got) - 1;
    assert!(kept <= 32 << 10, "{kept} bytes kept");
    assert!(kept > 30 << 10, "{kept} bytes kept");
    assert_eq!(
        got[..got.len() - 1],
        want[..got.len() - 1],
        "whole arguments first"
    );
    if core {
        assert_eq!(e.args["argc"], 41);
        assert_eq!(e.args["argv_bytes"], argv_len(&want));
    } else {
        assert!(e.args.get("argv_bytes").is_none());
    }

    // Failed execs: -errno, the filename and argv as passed.
    let missing = cwd.join(unique("missing"));
    let plain = cwd.join(unique("plain"));
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let garbage = cwd.join(unique("garbage"));
    std::fs::write(&garbage, [0x7fu8, 0x01, 0x02, 0x03, 0xff, 0xfe, 0, 1, 2, 3]).unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (file, errno) in [(&missing, ENOENT), (&plain, EACCES), (&garbage, ENOEXEC)] {
        let argv = ["probe", "--flag", "x y"];
        let (pid, got_errno) = failed_exec(&cwd, file, &argv);
        assert_eq!(got_errno, errno, "{}", file.display());
        let e = exec_of(&d, pid);
        assert_eq!(e.retval, Some(-errno), "{}", file.display());
        assert_eq!(e.args["filename"], file.to_str().unwrap());
        assert_eq!(argv_of(&e), argv);
        assert_eq!(e.args["argc"], 3);
        assert_eq!(e.args["argv_bytes"], 17);
        if core {
            assert_eq!(e.args["cwd"], cwd.to_str().unwrap());
        }
        // The caller's exe, not the file that failed to load.
        assert_ne!(e.exe.as_deref(), file.to_str());
        let table = d.ctl(&[
            "events",
            "-o",
            "table",
            "--pid",
            &pid.to_string(),
            "--kind",
            "exec",
        ]);
        let text = String::from_utf8_lossy(&table.stdout);
        let name = match errno {
            ENOENT => "[ENOENT]",
            EACCES => "[EACCES]",
            _ => "[ENOEXEC]",
        };
        assert!(text.contains(name), "{text}");
    }
    if core {
        failed_exec_argv_limits(&d, &cwd, &missing);
    }
    // A successful exec has no retval, as before.
    let pid = run_in(&cwd, &prog.path, &[]);
    assert_eq!(exec_of(&d, pid).retval, None);
    let _ = std::fs::remove_dir_all(&cwd);
}

/// A failed exec's argv, read pointer by pointer: 1024 arguments whole
/// (every kernel with bpf_loop, and 6.12+: this host), one more cut; an
/// argument cut at `max_argv_bytes`. On this kernel the daemon runs the
/// bpf_loop build (status names `exit_execve_loop` or its fexit twin).
fn failed_exec_argv_limits(d: &Daemon, cwd: &Path, missing: &Path) {
    let status: traceed_wire::Status =
        serde_json::from_value(d.ctl_json(&["status", "-o", "json"])).unwrap();
    assert!(
        status.programs.iter().any(|p| p.ends_with("_execve_loop")),
        "{:?}",
        status.programs
    );
    let args: Vec<String> = (0..1024).map(|i| format!("a{i}")).collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (pid, errno) = failed_exec(cwd, missing, &refs);
    assert_eq!(errno, ENOENT);
    let e = exec_of(d, pid);
    assert!(!truncated(&e), "{}", e.args);
    assert_eq!(argv_of(&e), args);
    assert_eq!(e.args["argc"], 1024);
    assert_eq!(e.args["argv_bytes"], argv_len(&args));

    let (pid, _) = failed_exec(cwd, missing, &[&refs[..], &["one-more"]].concat());
    let e = exec_of(d, pid);
    assert!(truncated(&e));
    assert_eq!(argv_of(&e), args, "the first 1024, whole");
    assert!(e.args.get("argc").is_none(), "unknown, not guessed");

    // 40 arguments of 1000 bytes: cut inside the 33rd, at 32 KiB.
    let big: Vec<String> = (0..40)
        .map(|i| format!("{i:04}{}", "z".repeat(996)))
        .collect();
    let refs: Vec<&str> = big.iter().map(String::as_str).collect();
    let (pid, _) = failed_exec(cwd, missing, &refs);
    let e = exec_of(d, pid);
    assert!(truncated(&e));
    let got = argv_of(&e);
    assert_eq!(got.len(), 33, "32 whole and the cut one");
    assert_eq!(got[..32], big[..32]);
    assert!(big[32].starts_with(&got[32]) && got[32].len() < 1000);
    // The cut argument is NUL-terminated by the string read.
    assert_eq!(argv_len(&got), 32 << 10, "cut at max_argv_bytes");
    assert!(e.args.get("argc").is_none());
}

#[test]
fn core_records_whole_argv_failed_execs_and_cwd() {
    check("core");
}

#[test]
fn fallback_records_argv_and_failed_execs() {
    check("fallback");
}
