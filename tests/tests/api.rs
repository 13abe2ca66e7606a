//! The query API and tracectl end to end: the real daemon on the real kernel,
//! real processes generating events, everything read back through the real
//! socket (raw HTTP where the status line matters, tracectl otherwise).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use traceed_tests::{bin, http_get, poll, Daemon, DaemonOpts, Program};
use traceed_wire::Event;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Send raw bytes, return the whole answer (the server closes).
fn raw(socket: &std::path::Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer and close before reading all of a huge request.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn paging_through_tracectl_returns_every_row_once() {
    let d = Daemon::start();
    let prog = Program::new("tdpage");
    for _ in 0..30 {
        prog.run(&[]);
    }
    // Every run has exited: once a later marker is visible, all 30 are stored.
    d.barrier();
    let all = d.events(&["--comm", &prog.name, "--page-size", "10000"]);
    assert_eq!(
        all.iter().filter(|e| e.kind == "exec").count(),
        30,
        "{all:?}"
    );
    assert_eq!(all.iter().filter(|e| e.kind == "exit").count(), 30);
    for page in ["1", "7", "60"] {
        let paged = d.events(&["--comm", &prog.name, "--page-size", page]);
        let ids: Vec<i64> = paged.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            all.iter().map(|e| e.id).collect::<Vec<_>>(),
            "page size {page}"
        );
    }
    // --limit stops across pages; desc returns the newest first.
    let limited = d.events(&["--comm", &prog.name, "--page-size", "7", "--limit", "25"]);
    assert_eq!(limited.len(), 25);
    assert_eq!(limited[..], all[..25]);
    let newest = d.events(&["--comm", &prog.name, "--order", "desc", "--limit", "3"]);
    let mut tail: Vec<Event> = all[all.len() - 3..].to_vec();
    tail.reverse();
    assert_eq!(newest, tail);
}

#[test]
fn follow_seam_has_no_gap_and_no_duplicate_under_load() {
    let d = Daemon::start();
    let prog = Arc::new(Program::new("tdseam"));
    let stop = Arc::new(AtomicBool::new(false));
    // Events are being generated before, during and after the follower
    // starts, so its history/live seam falls in the middle of the stream.
    let pids = Arc::new(Mutex::new(Vec::new()));
    let gen = {
        let (prog, stop, pids) = (prog.clone(), stop.clone(), pids.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let pid = prog.run(&[]);
                pids.lock().unwrap().push(pid);
                n += 1;
            }
            n
        })
    };
    // History first: some runs are stored before the follower starts.
    d.wait_for(&["--comm", &prog.name, "--kind", "exit"], |_| true);
    let mut follower = Command::new(bin("tracectl"))
        .args(["--socket"])
        .arg(&d.socket)
        .args(["events", "-f", "-o", "jsonl", "--comm", &prog.name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let followed = Arc::new(Mutex::new(Vec::<Event>::new()));
    let reader = {
        let followed = followed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let e = serde_json::from_str::<Event>(&line).unwrap();
                followed.lock().unwrap().push(e);
            }
        })
    };
    // Then live events: keep generating until the follower has printed
    // the exit of a run that started after its first line (so after the
    // history it was answered with was chosen), plus a few more.
    let n_at_first_line = poll(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || (!followed.lock().unwrap().is_empty()).then(|| pids.lock().unwrap().len()),
        || "the follower printed nothing".into(),
    );
    poll(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            let late = *pids.lock().unwrap().get(n_at_first_line + 5)?;
            let f = followed.lock().unwrap();
            f.iter()
                .any(|e| e.kind == "exit" && e.pid == Some(late))
                .then_some(())
        },
        || "no live event reached the follower".into(),
    );
    stop.store(true, Ordering::Relaxed);
    let runs = gen.join().unwrap();
    assert!(runs > 10, "only {runs} runs");
    // Wait until the store has every exit, then until the follower has
    // printed the newest of them (it prints in id order).
    let stored = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let s = d.events(&["--comm", &prog.name]);
            (s.iter().filter(|e| e.kind == "exit").count() == runs).then_some(s)
        },
        || "store incomplete".into(),
    );
    let last = stored.last().map(|e| e.id);
    poll(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (followed.lock().unwrap().last().map(|e| e.id) >= last).then_some(()),
        || "the follower did not print the newest stored event".into(),
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(follower.id() as i32, libc::SIGTERM) };
    let _ = follower.wait();
    reader.join().unwrap();
    let followed = std::mem::take(&mut *followed.lock().unwrap());
    let fids: Vec<i64> = followed.iter().map(|e| e.id).collect();
    let sids: Vec<i64> = stored.iter().map(|e| e.id).collect();
    assert!(
        followed.iter().all(|e| e.kind != "lost"),
        "a prompt reader lost events"
    );
    assert_eq!(
        fids,
        sids,
        "follow ({} events) differs from the store ({} events)",
        fids.len(),
        sids.len()
    );
}

/// tracectl copied where uid 65534 can run it.
fn ctl_as_nobody(d: &Daemon, groups: Option<u32>, args: &[&str]) -> std::process::Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "65534", "--regid", "65534"]);
    match groups {
        Some(g) => c.args(["--groups", &g.to_string()]),
        None => c.arg("--clear-groups"),
    };
    c.arg(bin("tracectl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .output()
        .expect("setpriv")
}

fn traceed_gid() -> u32 {
    // Packaging creates the group; tests on a fresh machine create it the
    // same way (idempotent) so membership can be exercised.
    let st = Command::new("groupadd")
        .args(["-f", "-r", "traceed"])
        .status()
        .expect("groupadd");
    assert!(st.success());
    let out = Command::new("getent")
        .args(["group", "traceed"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .expect("gid of traceed")
}

#[test]
fn only_root_and_group_traceed_are_served() {
    let gid = traceed_gid();
    let d = Daemon::start();
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid);

    // Not a member, socket as installed: the kernel refuses the connect.
    let out = ctl_as_nobody(&d, None, &["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("group `traceed`"), "{err}");

    // A member (supplementary group only) is served.
    let out = ctl_as_nobody(&d, Some(gid), &["status", "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))["rung"],
        "core-kernel-btf"
    );

    // Socket and its directory (0750, group traceed) opened up by mistake:
    // SO_PEERCRED still refuses a non-member.
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["status"][..], &["events", "--since", "1m"][..]] {
        let out = ctl_as_nobody(&d, None, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains("group `traceed`") && err.contains("65534") && !err.contains("HTTP"),
            "{err}"
        );
    }
    // The daemon logged who it refused.
    assert!(d
        .log_text()
        .contains("refusing a peer outside group traceed"));
}

#[test]
fn head_closing_the_pipe_is_not_an_error() {
    let d = Daemon::start();
    let prog = Program::new("tdpipe");
    for _ in 0..50 {
        prog.run(&["some-argument-to-make-lines-longer-and-fill-the-pipe"]);
    }
    d.wait_for(&["--comm", &prog.name, "--kind", "exit"], |_| true);
    for fmt in ["jsonl", "json", "table"] {
        // Many pages of small size so tracectl keeps writing after head exits.
        let cmd = format!(
            "set -o pipefail; {} --socket {} events -o {fmt} --page-size 1 | head -c 100 >/dev/null",
            bin("tracectl").display(),
            d.socket.display()
        );
        let out = Command::new("bash").args(["-c", &cmd]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{fmt}: {err}");
        assert!(err.is_empty(), "{fmt}: {err}");
    }
    // Follow, too: head exits after one line and tracectl must notice.
    let cmd = format!(
        "set -o pipefail; timeout 20 {} --socket {} events -f -o jsonl | head -1 >/dev/null",
        bin("tracectl").display(),
        d.socket.display()
    );
    let gen = std::thread::spawn(move || {
        for _ in 0..20 {
            prog.run(&[]);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let out = Command::new("bash").args(["-c", &cmd]).output().unwrap();
    gen.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn http_robustness_through_the_socket() {
    let d = Daemon::start();
    // 404 / 405 / 413 with JSON bodies.
    let (s, b) = http_get(&d.socket, "/nope").unwrap();
    assert_eq!(s, 404);
    assert!(json(&b)["error"].as_str().unwrap().contains("/v1/events"));
    let a = raw(
        &d.socket,
        b"DELETE /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&a), 405, "{a}");
    assert!(a.contains("{\"error\""));
    let a = raw(
        &d.socket,
        b"GET /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
    );
    assert_eq!(status_of(&a), 413, "{a}");
    assert!(a.contains("bodies are not accepted"));
    // Long target: JSON 414 below hyper's buffer, still a 4xx above it.
    let a = raw(
        &d.socket,
        format!(
            "GET /v1/events?comm={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "a".repeat(20_000)
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&a), 414, "{}", &a[..a.len().min(300)]);
    assert!(a.contains("{\"error\""));
    // Past 64 KiB hyper refuses the target itself: still a 414, no body
    // (what the OpenAPI document says of UriTooLong).
    let a = raw(
        &d.socket,
        format!(
            "GET /v1/events?comm={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "a".repeat(70_000)
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&a), 414, "{}", &a[..a.len().min(300)]);
    assert!(!a.contains("{\"error\""), "{a}");
    let a = raw(
        &d.socket,
        format!(
            "GET /v1/events HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "b".repeat(200_000)
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&a), 431, "{}", &a[..a.len().min(300)]);
    // Garbage is a 400, not a crash.
    let a = raw(&d.socket, b"\x16\x03\x01 not http at all\r\n\r\n");
    assert!(status_of(&a) == 400 || a.is_empty(), "{a}");
    let (s, _) = http_get(&d.socket, "/healthz").unwrap();
    assert_eq!(s, 200, "daemon still serving");

    // Connections are bounded: past the limit the answer is a JSON 503.
    // No wait needed: the daemon accepts connections in the order they
    // were made, and takes each one's slot as it accepts it, so the 129th
    // finds all 128 taken.
    let idle: Vec<UnixStream> = (0..128)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    let a = raw(
        &d.socket,
        b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&a), 503, "{a}");
    assert!(a.contains("too many connections"), "{a}");
    drop(idle);
    poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || (http_get(&d.socket, "/v1/status").map(|r| r.0).unwrap_or(0) == 200).then_some(()),
        || "slots not released".into(),
    );
}

/// `[api] header_timeout` for the tests that wait for it to pass.
const SHORT_HEADER_TIMEOUT: Duration = Duration::from_millis(500);

fn daemon_with_short_header_timeout() -> Daemon {
    Daemon::start_with(DaemonOpts {
        config: Some(format!(
            "[api]\nheader_timeout = \"{}ms\"\n",
            SHORT_HEADER_TIMEOUT.as_millis()
        )),
        ..Default::default()
    })
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let d = daemon_with_short_header_timeout();
    let mut slow = UnixStream::connect(&d.socket).unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let waited = t0.elapsed();
    // The clock starts when the daemon takes the connection, a moment
    // before t0; closed by the configured timeout, not the 10 s default.
    assert!(
        waited >= SHORT_HEADER_TIMEOUT - Duration::from_millis(100)
            && waited < Duration::from_secs(3),
        "slow client closed after {waited:?}"
    );
    let (s, _) = http_get(&d.socket, "/healthz").unwrap();
    assert_eq!(s, 200, "daemon still serving");
}

#[test]
fn metrics_openapi_and_status_through_the_socket() {
    let d = Daemon::start();
    let prog = Program::new("tdmet");
    prog.run(&[]);
    d.wait_for(&["--comm", &prog.name, "--kind", "exit"], |_| true);
    let (_, _) = http_get(&d.socket, "/v1/events?bogus=1").unwrap();
    let (s, text) = http_get(&d.socket, "/metrics").unwrap();
    assert_eq!(s, 200);
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert!(value("traceed_events_total{kind=\"exec\"}") >= 1.0);
    assert!(value("traceed_events_total{kind=\"exit\"}") >= 1.0);
    assert_eq!(value("traceed_lost_events_total{source=\"kernel\"}"), 0.0);
    assert!(value("traceed_api_requests_total{status=\"400\"}") >= 1.0);
    assert!(value("traceed_api_requests_total{status=\"200\"}") >= 1.0);
    assert!(value("traceed_db_bytes") > 0.0);
    let lag = value("traceed_ingest_lag_seconds");
    assert!((0.0..5.0).contains(&lag), "ingest lag {lag}");

    let (s, doc) = http_get(&d.socket, "/v1/openapi.json").unwrap();
    assert_eq!(s, 200);
    let doc = json(&doc);
    for p in [
        "/v1/events",
        "/v1/status",
        "/healthz",
        "/metrics",
        "/v1/openapi.json",
    ] {
        assert!(
            doc["paths"][p]["get"].is_object(),
            "{p} missing from OpenAPI"
        );
    }

    let out = d.ctl(&["status", "-o", "json"]);
    assert!(out.status.success());
    let st = json(&String::from_utf8_lossy(&out.stdout));
    assert!(st["events_total"].as_u64().unwrap() >= 2);
    let out = d.ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rung:") && text.contains("events:"), "{text}");
}

#[test]
fn tracectl_usage_completions_and_man() {
    let ctl = |args: &[&str]| Command::new(bin("tracectl")).args(args).output().unwrap();
    let out = ctl(&["events", "--bogus"]);
    assert_eq!(out.status.code(), Some(1), "bad usage is exit 1");
    let out = ctl(&["events", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let out = ctl(&["events", "--follow", "--order", "desc"]);
    assert_eq!(out.status.code(), Some(1));
    for shell in ["bash", "zsh", "fish"] {
        let out = ctl(&["completions", shell]);
        assert!(out.status.success());
        let s = String::from_utf8_lossy(&out.stdout);
        // fish spells long flags `-l since`.
        assert!(
            s.contains("since") && s.contains("follow") && s.contains("events"),
            "{shell}"
        );
    }
    let out = ctl(&["man"]);
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH tracectl"),
        "{man}"
    );
    for flag in ["since", "container", "fidelity", "follow", "Exit status"] {
        assert!(man.contains(flag), "man page lacks {flag}");
    }
}

#[test]
fn a_follow_stream_outlives_the_header_timeout() {
    // The header timeout limits sending request headers, not how long a
    // response may stream: an event three timeouts into a follow still
    // arrives.
    let d = daemon_with_short_header_timeout();
    let prog = Program::new("tdlong");
    let mut s = UnixStream::connect(&d.socket).unwrap();
    write!(
        s,
        "GET /v1/events?follow=true&kind=exec&comm={} HTTP/1.1\r\nHost: x\r\n\r\n",
        prog.name
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::thread::sleep(3 * SHORT_HEADER_TIMEOUT);
    let pid = prog.run(&[]);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    while !seen.contains(&format!("\"pid\":{pid},")) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(t0.elapsed() < Duration::from_secs(15), "no event: {seen}");
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("application/x-ndjson"));
}
