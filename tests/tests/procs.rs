//! Process identity and trees (issue 15) against ground truth the test
//! makes itself: a shell that starts a child that starts grandchildren
//! (their pids printed by the shells), and pids reused on purpose by writing
//! `ns_last_pid`, on the host and inside a new pid namespace.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use traceed_tests::{http_get, poll, unique, Daemon, DaemonOpts, Program};
use traceed_wire::{Event, Tree};

/// The last exit of the process and its descendants (all have exited).
fn g_last_exit(t: &Tree) -> Option<i64> {
    std::iter::once(&t.process)
        .chain(&t.descendants)
        .map(|p| p.exit)
        .max()
        .flatten()
}

fn tree(d: &Daemon, args: &[&str]) -> Tree {
    let mut a = vec!["tree", "-o", "json"];
    a.extend_from_slice(args);
    serde_json::from_value(d.ctl_json(&a)).expect("tree JSON")
}

/// Wait until `pid`'s exit is stored, then for everything before it.
fn wait_exit(d: &Daemon, pid: u32) -> Event {
    let e = d.wait_for(&["--pid", &pid.to_string(), "--kind", "exit"], |e| {
        e.pid == Some(pid)
    });
    d.barrier();
    e
}

#[test]
fn tree_and_descendants_of_a_scripted_incident() {
    let d = Daemon::start();
    let dir = d.dir.join(unique("inc"));
    std::fs::create_dir_all(&dir).unwrap();
    let child = dir.join("child.sh");
    std::fs::write(
        &child,
        "echo \"child $$\"\n\
         sh -c 'exit 3' & echo \"gc $!\"\nwait\n\
         cat /etc/hostname > /dev/null & echo \"gc $!\"\nwait\n\
         exit 4\n",
    )
    .unwrap();
    let top_cmd = format!("echo \"top $$\"; sh {}; exit 0", child.display());
    let out = Command::new("sh").args(["-c", &top_cmd]).output().unwrap();
    assert!(out.status.success());
    let truth = String::from_utf8(out.stdout).unwrap();
    let pid_of = |tag: &str| -> Vec<u32> {
        truth
            .lines()
            .filter_map(|l| l.strip_prefix(tag)?.trim().parse().ok())
            .collect()
    };
    let (top, kid, gcs) = (pid_of("top ")[0], pid_of("child ")[0], pid_of("gc "));
    assert_eq!(gcs.len(), 2, "{truth}");
    wait_exit(&d, top);

    let t = tree(&d, &[&top.to_string()]);
    assert_eq!(t.process.pid, top);
    assert_eq!(
        t.process.cmdline.as_deref(),
        Some(&*format!("sh -c {top_cmd}"))
    );
    assert_eq!(t.process.exit_code, Some(0));
    assert!(t.process.lifetime_s.is_some());
    // Ancestry: this test process is the parent, and it reaches pid 1.
    let me = std::process::id();
    assert_eq!(t.ancestors.last().map(|a| a.pid), Some(me), "{t:#?}");
    assert_eq!(t.ancestors.first().map(|a| a.pid), Some(1), "{t:#?}");
    assert_eq!(
        t.process.parent.as_ref(),
        Some(&t.ancestors.last().unwrap().proc)
    );
    // Descendants: exactly the child and the two grandchildren.
    let by_pid: HashMap<u32, &traceed_wire::ProcEntry> =
        t.descendants.iter().map(|p| (p.pid, p)).collect();
    let want: BTreeSet<u32> = [kid, gcs[0], gcs[1]].into();
    assert_eq!(
        by_pid.keys().copied().collect::<BTreeSet<_>>(),
        want,
        "{t:#?}"
    );
    assert_eq!(t.descendants.len(), 3);
    let k = by_pid[&kid];
    assert_eq!(k.parent.as_ref(), Some(&t.process.proc));
    assert_eq!(k.exit_code, Some(4));
    assert_eq!(
        k.cmdline.as_deref(),
        Some(&*format!("sh {}", child.display()))
    );
    let (g1, g2) = (by_pid[&gcs[0]], by_pid[&gcs[1]]);
    assert_eq!(g1.parent.as_ref(), Some(&k.proc));
    assert_eq!(g2.parent.as_ref(), Some(&k.proc));
    assert_eq!(g1.cmdline.as_deref(), Some("sh -c exit 3"));
    assert_eq!(g1.exit_code, Some(3));
    assert_eq!(g2.cmdline.as_deref(), Some("cat /etc/hostname"));
    assert_eq!(g2.exit_code, Some(0));
    let keys: BTreeSet<String> = [&t.process, k, g1, g2]
        .iter()
        .map(|p| p.proc.clone())
        .collect();
    assert_eq!(keys.len(), 4, "every instance has its own key");
    // The answer says whether loss touched the lifetimes it spans.
    let c = t.coverage.as_ref().expect("a tree carries its coverage");
    assert_eq!(c.complete, c.gaps.is_empty(), "{c:?}");
    assert_eq!(t.window(), (t.process.start, g_last_exit(&t)));

    // --descendants-of: exactly the events of these four processes, from
    // the top's fork on (its pid may have run something before).
    let start = t.process.start.unwrap();
    let mut expected = BTreeSet::new();
    for pid in [top, kid, gcs[0], gcs[1]] {
        for e in d.events(&["--pid", &pid.to_string()]) {
            if e.ts >= start && e.pid == Some(pid) {
                expected.insert(e.id);
            }
        }
    }
    let got = d.events(&["--descendants-of", &top.to_string(), "--page-size", "7"]);
    let got_ids: BTreeSet<i64> = got.iter().map(|e| e.id).collect();
    assert_eq!(got_ids.len(), got.len(), "no duplicates across pages");
    assert_eq!(got_ids, expected);
    assert!(got
        .iter()
        .all(|e| e.proc.as_ref().is_some_and(|p| keys.contains(p))));
    // Every kind of the incident is there: forks, execs, exits.
    for kind in ["fork", "exec", "exit", "open"] {
        assert!(got.iter().any(|e| e.kind == kind), "no {kind} in {got:#?}");
    }

    // A terminal-less tree is JSON; the text form escapes control
    // characters and marks the process.
    let text = d.ctl(&["tree", &top.to_string(), "-o", "table"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains(&format!("* {top} [{}]", t.process.proc)),
        "{text}"
    );

    // Bad input: a pid with no process, a bad --at.
    let none = d.ctl(&["tree", "4194305"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no process with pid 4194305 at now"));
    let (code, body) = http_get(&d.socket, "/v1/tree?pid=1&at=tomorrow").unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("parameter 'at'"), "{body}");
    let bad = d.ctl(&["events", "--descendants-of", "1", "--at", "soon"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("parameter 'at'"));
    let (code, body) = http_get(&d.socket, "/v1/events?descendants_of=4194305").unwrap();
    assert_eq!(code, 404, "{body}");
}

/// Run `prog` until its pid is `want` (ns_last_pid set just before the
/// fork; other processes on the host may take the pid first: retried).
fn run_as_pid(prog: &Program, want: u32) -> Option<u32> {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (want - 1).to_string()).unwrap();
        let pid = prog.run(&[]);
        if pid == want {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_reused_host_pid_is_two_processes() {
    let d = Daemon::start();
    let a = Program::new("reuse-a");
    let b = Program::new("reuse-b");
    let pid = a.run(&[]);
    let reused = run_as_pid(&b, pid).expect("could not get the same pid again in 50 tries");
    let exit_a = wait_exit(&d, pid);
    let ea = d.events(&["--comm", &a.name]);
    // Only the run that got the pid: a retry that lost the race to another
    // process ran with some other pid.
    let eb: Vec<Event> = d
        .events(&["--comm", &b.name])
        .into_iter()
        .filter(|e| e.pid == Some(reused))
        .collect();
    let exit_b = eb.iter().find(|e| e.kind == "exit").unwrap().clone();
    assert_eq!(exit_a.pid, exit_b.pid);
    assert_eq!(exit_b.pid, Some(reused));
    let (ka, kb) = (exit_a.proc.clone().unwrap(), exit_b.proc.clone().unwrap());
    assert_ne!(ka, kb, "two processes that shared pid {pid} have one key");
    assert!(ea
        .iter()
        .filter(|e| e.pid == Some(pid))
        .all(|e| e.proc.as_ref() == Some(&ka)));
    assert!(eb.iter().all(|e| e.proc.as_ref() == Some(&kb)));

    // The tree at each one's time is that one's, and --at now is the latest.
    let at_a = traceed_wire::format_ts(exit_a.ts);
    let ta = tree(&d, &[&pid.to_string(), "--at", &at_a]);
    assert_eq!(ta.process.proc, ka);
    let at_b = traceed_wire::format_ts(exit_b.ts);
    let tb = tree(&d, &[&pid.to_string(), "--at", &at_b]);
    assert_eq!(tb.process.proc, kb);
    assert_eq!(tree(&d, &[&pid.to_string()]).process.proc, kb);
    // Both are children of this test process: siblings, not parent and child.
    assert_eq!(ta.process.parent, tb.process.parent);
    assert!(ta.descendants.is_empty() && tb.descendants.is_empty());

    let only_a = d.events(&["--descendants-of", &pid.to_string(), "--at", &at_a]);
    assert!(!only_a.is_empty());
    assert!(
        only_a.iter().all(|e| e.proc.as_ref() == Some(&ka)),
        "{only_a:#?}"
    );
    assert!(only_a.iter().any(|e| e.kind == "exit" && e.id == exit_a.id));
}

#[test]
fn a_reused_pid_inside_a_pid_namespace_is_two_processes() {
    let d = Daemon::start();
    let p = Program::new("nsreuse");
    // The shell is pid 1 of a new namespace; it runs the program, then sets
    // ns_last_pid so the second run gets the same namespace pid.
    let script = format!(
        "{p} & a=$!; wait $a; echo $((a - 1)) > /proc/sys/kernel/ns_last_pid; \
         {p} & b=$!; wait $b; echo \"$a $b\"",
        p = p.path.display()
    );
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let ns: Vec<u32> = line
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ns[0], ns[1], "the namespace pid was not reused: {line}");
    let exits = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let v: Vec<Event> = d
                .events(&["--comm", &p.name, "--kind", "exit"])
                .into_iter()
                .collect();
            (v.len() == 2).then_some(v)
        },
        || format!("two exits of {} not stored:\n{}", p.name, d.log_text()),
    );
    assert_eq!(exits[0].ns_pid, Some(ns[0]));
    assert_eq!(exits[1].ns_pid, Some(ns[0]));
    assert_ne!(exits[0].proc, exits[1].proc);
    for e in &exits {
        let host = e.pid.unwrap();
        let t = tree(
            &d,
            &[&host.to_string(), "--at", &traceed_wire::format_ts(e.ts)],
        );
        assert_eq!(Some(&t.process.proc), e.proc.as_ref());
        // The namespace's init (the shell) is the parent of both.
        assert_eq!(
            t.ancestors.last().map(|a| a.comm.as_deref()),
            Some(Some("sh"))
        );
    }
}

/// A comm scope sees a program only from its exec (its fork is its
/// parent's, out of scope), and a short one is gone before its exec is
/// handled, so /proc cannot say when it started: the exec record carries
/// the start (CO-RE rung), and every event of each run gets that run's key,
/// with the parent's instance in its tree. Runs are told apart by their
/// exec..exit span, not by pid: on a busy host two runs can get one pid.
#[test]
fn a_process_seen_only_from_its_exec_is_keyed() {
    const RUNS: usize = 5;
    let prog = Program::new("scoped");
    let d = Daemon::start_with(DaemonOpts {
        config: Some(format!("[scope.include]\ncomm = [\"{}\"]\n", prog.name)),
        ..Default::default()
    });
    for _ in 0..RUNS {
        prog.run(&[]);
    }
    // No barrier: its marker would be out of scope. A process's exit is
    // stored after everything it did, so once every exit is in, all is.
    let mut all: Vec<Event> = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let all = d.events(&["--comm", &prog.name]);
            (all.iter().filter(|e| e.kind == "exit").count() >= RUNS).then_some(all)
        },
        || format!("{RUNS} exits not stored:\n{}", d.log_text()),
    );
    all.sort_by_key(|e| e.id);
    assert!(
        !all.iter().any(|e| e.kind == "fork"),
        "the forks are out of scope"
    );
    let mut keys = Vec::new();
    for (at, exec) in all.iter().enumerate().filter(|(_, e)| e.kind == "exec") {
        let pid = exec.pid.unwrap();
        let run: Vec<&Event> = all[at..]
            .iter()
            .filter(|e| e.pid == Some(pid))
            .scan(false, |done, e| {
                let out = (!*done).then_some(e);
                *done |= e.kind == "exit";
                out
            })
            .collect();
        let exit = run.last().filter(|e| e.kind == "exit");
        let exit = exit.unwrap_or_else(|| panic!("pid {pid}: no exit after its exec: {run:#?}"));
        let key = exec
            .proc
            .clone()
            .unwrap_or_else(|| panic!("pid {pid}: no key: {run:#?}"));
        assert!(
            run.iter().all(|e| e.proc.as_ref() == Some(&key)),
            "{run:#?}"
        );
        let t = tree(
            &d,
            &[&pid.to_string(), "--at", &traceed_wire::format_ts(exit.ts)],
        );
        assert_eq!(t.process.proc, key);
        assert!(t.process.parent.is_some(), "{t:#?}");
        keys.push(key);
    }
    assert_eq!(keys.len(), RUNS, "one exec per run: {all:#?}");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), RUNS, "one key per run");
}
