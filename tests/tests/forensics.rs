//! Forensic filters and coverage against a scripted incident with ground
//! truth: a shell starts a child shell that starts grandchildren; one reads
//! a marked file, one fails to open a missing one, one connects to a
//! listener this test holds, one runs a command with a marker in its argv.
//! Every filter must return exactly the incident's rows (the incident's
//! pids are found through exec ppids, since the daemon records the whole
//! host). Then a restart forces a downtime gap that `coverage` and
//! tracectl's warning must report.

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::Command;

use traceed_tests::{http_get, unique, Daemon, DaemonOpts};
use traceed_wire::{Count, CountsPage, Event, EventsPage};

/// Pids of `root` and everything it started, from the exec events.
fn tree(d: &Daemon, since: &str, root: u32) -> HashSet<u32> {
    let execs = d.events(&["--since", since, "--kind", "exec"]);
    let mut pids = HashSet::from([root]);
    loop {
        let before = pids.len();
        for e in &execs {
            if let (Some(p), Some(pp)) = (e.pid, e.ppid) {
                if pids.contains(&pp) {
                    pids.insert(p);
                }
            }
        }
        if pids.len() == before {
            return pids;
        }
    }
}

fn mine<'a>(events: &'a [Event], pids: &HashSet<u32>) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.pid.is_some_and(|p| pids.contains(&p)))
        .collect()
}

fn kinds(events: &[&Event]) -> Vec<String> {
    events.iter().map(|e| e.kind.to_string()).collect()
}

#[test]
fn forensic_filters_and_coverage_on_a_scripted_incident() {
    let d = Daemon::start();
    let since = traceed_wire::format_ts(traceed_wire::now_ns() - 1_000_000_000);
    let dir = std::env::temp_dir().join(format!("traceed-forensics-{}", unique("i")));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.display().to_string();
    let secret = format!("{dir}/secret");
    let missing = format!("{dir}/missing");
    std::fs::write(&secret, "s").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let marker = format!("forensic-{}", unique("m"));
    // The marker reaches argv only through $M (escaped from the outer
    // shell), so no shell's own argv holds it.
    let inner = format!(
        "cat {secret} >/dev/null; cat {missing} 2>/dev/null; \
         bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'; /bin/true \\\"\\$M\\\"-x; true"
    );
    let root = Command::new("sh")
        .arg("-c")
        .arg(format!("sh -c \"{inner}\"; true"))
        .env("M", &marker)
        .spawn()
        .unwrap();
    let root_pid = root.id();
    assert!(root.wait_with_output().unwrap().status.success());
    d.barrier();
    let pids = tree(&d, &since, root_pid);
    assert!(
        pids.len() >= 5,
        "root, child shell, cat x2, bash, true: {pids:?}"
    );
    let q = |args: &[&str]| -> Vec<Event> {
        let mut a = vec!["--since", since.as_str()];
        a.extend_from_slice(args);
        d.events(&a)
    };

    // path, exact: the one open of the marked file.
    let got = q(&["--path", &secret]);
    let m = mine(&got, &pids);
    assert_eq!(kinds(&m), ["open"], "{m:?}");
    assert_eq!(m[0].args["path"], secret.as_str());
    assert!(got.iter().all(|e| e.args["path"] == secret.as_str()));
    // path, prefix at a directory: both opens, the failed one too.
    let got = q(&["--path", &format!("{dir}/*")]);
    let m = mine(&got, &pids);
    let paths: Vec<&str> = m.iter().map(|e| e.args["path"].as_str().unwrap()).collect();
    assert_eq!(paths, [secret.as_str(), missing.as_str()], "{m:?}");
    // path, prefix inside a name: only the secret.
    let got = q(&["--path", &format!("{dir}/sec*")]);
    assert_eq!(kinds(&mine(&got, &pids)), ["open"]);
    assert!(got.iter().all(|e| e.args["path"] == secret.as_str()));
    // failed: the ENOENT open, and only failures.
    let got = q(&["--failed", "--path", &format!("{dir}/*")]);
    let m = mine(&got, &pids);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].args["path"], missing.as_str());
    assert_eq!(m[0].retval, Some(-2), "ENOENT");
    let got = q(&["--failed"]);
    assert!(got.iter().all(|e| e.retval.is_some_and(|r| r < 0)));
    assert!(got.iter().any(|e| e.id == m[0].id));
    // addr (IP and CIDR) and port: the one connect.
    for args in [
        vec!["--addr", "127.0.0.1", "--port", &port],
        vec!["--addr", "127.0.0.0/8", "--port", &port],
        vec!["--addr", "::ffff:127.0.0.1", "--port", &port],
        vec!["--port", &port],
    ] {
        let got = q(&args);
        let m = mine(&got, &pids);
        assert_eq!(kinds(&m), ["connect"], "{args:?}: {m:?}");
        assert_eq!(m[0].args["addr"], "127.0.0.1");
        assert_eq!(m[0].args["port"].to_string(), port);
        assert_eq!(m[0].comm.as_deref(), Some("bash"));
        assert!(got
            .iter()
            .all(|e| ["connect", "accept", "bind"].contains(&&*e.kind)));
    }
    let connector = mine(&q(&["--port", &port]), &pids)[0]
        .pid
        .unwrap()
        .to_string();
    let got = q(&["--addr", "10.0.0.0/8", "--port", &port]);
    assert!(mine(&got, &pids).is_empty(), "{got:?}");
    // cmdline: the exec of /bin/true with the marker (tracectl's own
    // exec, outside the incident, carries it too).
    let joined = |e: &Event| {
        let argv = e.args["argv"].as_array().unwrap();
        argv.iter()
            .map(|a| a.as_str().unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    };
    for text in [format!("{marker}-x"), format!("/bin/true {marker}")] {
        let got = q(&["--cmdline", &text]);
        assert!(got
            .iter()
            .all(|e| e.kind == "exec" && joined(e).contains(&text)));
        let m = mine(&got, &pids);
        assert_eq!(m.len(), 1, "{text}: {m:?}");
        assert_eq!(
            m[0].args["argv"],
            serde_json::json!(["/bin/true", format!("{marker}-x")])
        );
    }

    // count-by, other filters applied: the test's own write of the secret
    // and the incident's two opens.
    let counts = |args: &[&str]| -> CountsPage {
        let mut a = vec!["events", "-o", "json", "--since", since.as_str()];
        a.extend_from_slice(args);
        serde_json::from_value(d.ctl_json(&a)).expect("a counts page")
    };
    let c = counts(&["--count-by", "path", "--path", &format!("{dir}/*")]);
    let want = [(secret.clone(), 2), (missing.clone(), 1)];
    let got: Vec<(String, u64)> = c
        .counts
        .iter()
        .map(|c| (c.value.clone(), c.count))
        .collect();
    assert_eq!(got, want);
    assert_eq!((c.other, c.total, c.by.as_str()), (0, 3, "path"));
    let c = counts(&[
        "--count-by",
        "path",
        "--path",
        &format!("{dir}/*"),
        "--top",
        "1",
    ]);
    assert_eq!((c.counts.len(), c.other, c.total), (1, 1, 3));
    let c = counts(&[
        "--count-by",
        "port",
        "--pid",
        &connector,
        "--kind",
        "connect",
    ]);
    assert_eq!(
        c.counts,
        [Count {
            value: port.clone(),
            count: 1
        }]
    );
    // bash's own connects (glibc's nss trying nscd and friends over unix
    // sockets) vary by host, so the pid alone counts at least the one; the
    // port narrows it to exactly that one.
    let c = counts(&["--count-by", "kind", "--pid", &connector]);
    assert!(
        c.counts
            .iter()
            .any(|c| c.value == "connect" && c.count >= 1),
        "{c:?}"
    );
    assert!(
        c.counts.iter().any(|c| c.value == "exec" && c.count == 1),
        "{c:?}"
    );
    let c = counts(&["--count-by", "kind", "--pid", &connector, "--port", &port]);
    assert_eq!(
        c.counts,
        [Count {
            value: "connect".into(),
            count: 1
        }],
        "{c:?}"
    );
    let out = d.ctl(&[
        "events",
        "-o",
        "table",
        "--count-by",
        "path",
        "--path",
        &secret,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().next().unwrap().contains("COUNT"), "{text}");
    assert!(text.contains(&secret), "{text}");
    let out = d.ctl(&["events", "--count-by", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("'by'") && err.contains("exe, comm, path, addr, port, kind, uid"),
        "{err}"
    );

    // Bad input: 400 naming the parameter; tracectl exits 1 with it.
    for (args, name) in [
        (vec!["--path", "/etc/*.conf"], "'path'"),
        (vec!["--addr", "10.0.0.0/33"], "'addr'"),
        (vec!["--addr", "not-an-ip"], "'addr'"),
        (vec!["--port", "70000"], "--port"),
    ] {
        let mut a = vec!["events"];
        a.extend_from_slice(&args);
        let out = d.ctl(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(name), "{args:?}: {err}");
    }
    let (code, body) = http_get(&d.socket, "/v1/events?port=x").unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("'port'"), "{body}");

    // Coverage: nothing lost yet in this store; then a restart leaves a
    // downtime gap that every answer over the window reports.
    let path = format!("/v1/events?since={since}&path={secret}");
    let (code, body) = http_get(&d.socket, &path).unwrap();
    assert_eq!(code, 200, "{body}");
    let page: EventsPage = serde_json::from_str(&body).unwrap();
    let c = page.coverage.unwrap();
    assert!(c.complete, "{c:?}");
    assert_eq!((c.lost, c.gaps.len()), (Some(0), 0));
    let out = d.ctl(&[
        "events", "-o", "jsonl", "--since", &since, "--path", &secret,
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "complete: no warning"
    );

    let state = d.dir.clone();
    let mut d = d;
    let before_stop = traceed_wire::now_ns();
    assert_eq!(d.stop(), Some(0));
    let stopped = traceed_wire::now_ns();
    let d = Daemon::start_with(DaemonOpts {
        dir: Some(state),
        ..Default::default()
    });
    d.wait_for(&["--kind", "lost"], |e| e.args["source"] == "downtime");
    let (_, body) = http_get(&d.socket, &path).unwrap();
    let page: EventsPage = serde_json::from_str(&body).unwrap();
    assert_eq!(mine(&page.events, &pids).len(), 1, "the rows are unchanged");
    let rows = page.events.len();
    let c = page.coverage.unwrap();
    assert!(!c.complete, "{c:?}");
    assert_eq!(c.lost, None, "downtime: unknowable");
    assert_eq!(c.gaps.len(), 1, "{c:?}");
    let g = &c.gaps[0];
    assert_eq!(g.source, "downtime");
    let from = traceed_wire::parse_time_spec(&g.from, 0).unwrap();
    let to = traceed_wire::parse_time_spec(&g.to, 0).unwrap();
    assert!(
        (before_stop..=stopped).contains(&from),
        "gap starts at the stop: {g:?}"
    );
    assert!(to >= stopped && to <= traceed_wire::now_ns(), "{g:?}");
    // A window wholly before the stop is complete.
    let until = traceed_wire::format_ts(before_stop - 1);
    let (_, body) = http_get(
        &d.socket,
        &format!("/v1/events?since={since}&until={until}&limit=1"),
    )
    .unwrap();
    let page: EventsPage = serde_json::from_str(&body).unwrap();
    assert!(page.coverage.unwrap().complete);
    // tracectl: the rows on stdout, one warning line on stderr, exit 0.
    let out = d.ctl(&[
        "events", "-o", "jsonl", "--since", &since, "--path", &secret,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "warning: an unknown number of events lost between {} and ",
            g.from
        )) && err
            .trim_end()
            .ends_with("(traceed was not running); this answer may be incomplete"),
        "{err}"
    );
    // The test's own write of the file and the incident's read.
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), rows);
    // Counts carry the same coverage and warning.
    let out = d.ctl(&[
        "events",
        "-o",
        "json",
        "--since",
        &since,
        "--count-by",
        "path",
        "--path",
        &secret,
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    let c: CountsPage = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!c.coverage.complete && c.coverage.gaps[0].source == "downtime");
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}
