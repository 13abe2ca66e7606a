//! The walking skeleton, end to end: a process we start is recorded by the
//! kernel program, stored, and read back through the socket with the right
//! fields, and time windows include and exclude it.

use std::time::Duration;

use traceed_tests::{http_get, Daemon, Program};

#[test]
fn exec_is_recorded_with_ground_truth() {
    let d = Daemon::start();
    let prog = Program::new("tdexec");
    let marker = format!("--marker={}", prog.name);
    let pid = prog.run(&[&marker, "two words"]);

    let e = d.wait_for(&["--since", "1m", "--kind", "exec"], |e| e.pid == Some(pid));
    assert_eq!(e.kind, "exec");
    assert_eq!(e.tid, Some(pid));
    assert_eq!(
        e.ppid,
        Some(std::process::id()),
        "parent is this test process"
    );
    assert_eq!(e.uid, Some(0));
    assert_eq!(e.gid, Some(0));
    assert_eq!(e.comm.as_deref(), Some(prog.name.as_str()));
    assert_eq!(e.args["filename"], prog.path.to_str().unwrap());
    assert_eq!(
        e.args["argv"],
        serde_json::json!([prog.path.to_str().unwrap(), marker, "two words"])
    );
    assert_eq!(e.exe.as_deref(), prog.path.to_str());
    // The inode's change time, read through whichever layout this kernel has.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&prog.path).unwrap();
    let ctime = m.ctime() * 1_000_000_000 + m.ctime_nsec();
    assert_eq!(e.args["exe_ctime"], traceed_wire::format_ts(ctime));
    assert_eq!(e.fidelity, "core");
    // Same pid namespace as us: the namespace view equals the host view.
    assert_eq!(e.ns_pid, Some(pid));
    let our_mnt_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_eq!(
        our_mnt_ns.to_str().unwrap(),
        format!("mnt:[{}]", e.mnt_ns.expect("mnt_ns known in the core rung"))
    );
    let our_pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_eq!(
        our_pid_ns.to_str().unwrap(),
        format!("pid:[{}]", e.pid_ns.unwrap())
    );
    let now = traceed_wire::now_ns();
    assert!(
        (now - e.ts).abs() < 60_000_000_000,
        "ts {} is not near now {now}",
        e.ts
    );

    // The exit of the same process, with its status.
    let x = d.wait_for(
        &["--since", "1m", "--kind", "exit", "--pid", &pid.to_string()],
        |_| true,
    );
    assert_eq!(x.args["exit_code"], 0);
    assert!(x.args["signal"].is_null());
}

#[test]
fn time_windows_include_and_exclude() {
    let d = Daemon::start();
    let prog = Program::new("tdwin");
    let before = traceed_wire::format_ts(traceed_wire::now_ns());
    let pid = prog.run(&[]);
    let e = d.wait_for(&["--kind", "exec", "--comm", &prog.name], |e| {
        e.pid == Some(pid)
    });
    let after = traceed_wire::format_ts(e.ts + 1);
    let pid_s = pid.to_string();
    let count = |extra: &[&str]| {
        let mut a = vec!["--kind", "exec", "--pid", &pid_s];
        a.extend_from_slice(extra);
        d.events(&a).len()
    };
    assert_eq!(count(&["--since", "1h"]), 1);
    assert_eq!(count(&["--since", &before]), 1);
    assert_eq!(count(&["--since", &before, "--until", &after]), 1);
    assert_eq!(
        count(&["--since", &after]),
        0,
        "since after the event excludes it"
    );
    assert_eq!(
        count(&["--until", &before]),
        0,
        "until before the event excludes it"
    );
    assert_eq!(
        count(&["--until", "1h"]),
        0,
        "until an hour ago excludes it"
    );
}

#[test]
fn bad_since_is_a_400_with_a_json_error() {
    let d = Daemon::start();
    let (status, body) = http_get(&d.socket, "/v1/events?since=yesterday").unwrap();
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("since"), "{msg}");

    let out = d.ctl(&["events", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("since") && !err.contains("HTTP"), "{err}");

    for q in [
        "kind=",
        "limit=0",
        "limit=10001",
        "kind=nope",
        "cursor=zz",
        "frobnicate=1",
    ] {
        let (status, body) = http_get(&d.socket, &format!("/v1/events?{q}")).unwrap();
        assert_eq!(status, 400, "{q}: {body}");
        assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
    }
}

#[test]
fn unreachable_daemon_is_exit_2_and_names_the_socket() {
    let out = std::process::Command::new(traceed_tests::bin("tracectl"))
        .args([
            "--socket",
            "/nonexistent/traceed.sock",
            "events",
            "--since",
            "1h",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/traceed.sock") && err.contains("traceed"),
        "{err}"
    );
}

/// A daemon that accepts but never answers (stuck) ends tracectl with exit
/// 2 and a message after --timeout, for a query and for a follow alike.
#[test]
fn silent_daemon_times_out_with_exit_2() {
    let dir = std::env::temp_dir().join(traceed_tests::unique("to"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // Accepted connections are kept open and never read or answered.
    let keep = std::thread::spawn(move || listener.incoming().take(2).collect::<Vec<_>>());
    for args in [&["status"][..], &["events", "--follow"][..]] {
        let t0 = std::time::Instant::now();
        let out = std::process::Command::new(traceed_tests::bin("tracectl"))
            .arg("--socket")
            .arg(&sock)
            .args(["--timeout", "1s"])
            .args(args)
            .output()
            .unwrap();
        let took = t0.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("did not answer within 1s") && err.contains(&*sock.to_string_lossy()),
            "{args:?}: {err}"
        );
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
    }
    drop(keep.join());
    let bad = std::process::Command::new(traceed_tests::bin("tracectl"))
        .args(["--timeout", "soon", "status"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--timeout"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_reports_the_rung() {
    let d = Daemon::start();
    let (code, body) = http_get(&d.socket, "/v1/status").unwrap();
    assert_eq!(code, 200);
    let s: traceed_wire::Status = serde_json::from_str(&body).unwrap();
    assert_eq!(s.rung, "core-kernel-btf");
    assert_eq!(s.btf_source.as_deref(), Some("/sys/kernel/btf/vmlinux"));
    assert!(
        s.programs.iter().any(|p| p.contains("exec")),
        "{:?}",
        s.programs
    );
    let out = d.ctl(&["status"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("core-kernel-btf"));
}
