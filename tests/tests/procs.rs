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
        .all(|e| e.proc.is_some_and(|p| keys.contains(&p.to_string()))));
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
    let (ka, kb) = (exit_a.proc.unwrap(), exit_b.proc.unwrap());
    assert_ne!(ka, kb, "two processes that shared pid {pid} have one key");
    assert!(ea
        .iter()
        .filter(|e| e.pid == Some(pid))
        .all(|e| e.proc == Some(ka)));
    assert!(eb.iter().all(|e| e.proc == Some(kb)));

    // The tree at each one's time is that one's, and --at now is the latest.
    let at_a = traceed_wire::format_ts(exit_a.ts);
    let ta = tree(&d, &[&pid.to_string(), "--at", &at_a]);
    assert_eq!(ta.process.proc, ka.to_string());
    let at_b = traceed_wire::format_ts(exit_b.ts);
    let tb = tree(&d, &[&pid.to_string(), "--at", &at_b]);
    assert_eq!(tb.process.proc, kb.to_string());
    assert_eq!(tree(&d, &[&pid.to_string()]).process.proc, kb.to_string());
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
        assert_eq!(Some(t.process.proc.clone()), e.proc.map(|k| k.to_string()));
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
            .unwrap_or_else(|| panic!("pid {pid}: no key: {run:#?}"));
        assert!(run.iter().all(|e| e.proc == Some(key)), "{run:#?}");
        let t = tree(
            &d,
            &[&pid.to_string(), "--at", &traceed_wire::format_ts(exit.ts)],
        );
        assert_eq!(t.process.proc, key.to_string());
        assert!(t.process.parent.is_some(), "{t:#?}");
        keys.push(key);
    }
    assert_eq!(keys.len(), RUNS, "one exec per run: {all:#?}");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), RUNS, "one key per run");
}

/// An open event carries its process's ppid and namespaces as the kernel
/// saw them at the open, also where the kernel sent them only once
/// (task.h: they are sent again when the parent or the namespaces
/// change). A grandchild opens a file, is orphaned (its parent exits),
/// opens another, unshares its mount namespace without an exec and opens
/// two more. Ground truth: the pids from fork, the new parent from
/// /proc, the new mount namespace from the grandchild's stat of
/// /proc/self/ns/mnt.
#[test]
fn ppid_and_namespaces_follow_a_reparent_and_an_unshare() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let d = Daemon::start();
    let dir = d.dir.join(unique("kin"));
    std::fs::create_dir_all(&dir).unwrap();
    let names = ["first", "orphaned", "unshared", "after"];
    let paths: Vec<std::path::PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    for p in &paths {
        std::fs::write(p, "x").unwrap();
    }
    // Everything the forked processes use is made before the fork: they
    // make only system calls (the test process has other threads).
    let c: Vec<CString> = paths
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()).unwrap())
        .collect();
    let ns_link = CString::new("/proc/self/ns/mnt").unwrap();
    let (mut go, mut info, mut ready) = ([0i32; 2], [0i32; 2], [0i32; 2]);
    // SAFETY: pipe, fork, open, close, read, write, unshare, stat and
    // _exit on memory allocated before the fork.
    let child = unsafe {
        assert_eq!(libc::pipe(go.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(info.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        let child = libc::fork();
        assert!(child >= 0);
        if child == 0 {
            if libc::fork() == 0 {
                let open = |i: usize| libc::close(libc::open(c[i].as_ptr(), libc::O_RDONLY));
                open(0);
                // The parent exits only after this first open.
                libc::write(ready[1], [1u8].as_ptr().cast(), 1);
                let me = libc::getpid();
                libc::write(info[1], (&me as *const i32).cast(), 4);
                let mut b = 0u8;
                libc::read(go[0], (&mut b as *mut u8).cast(), 1);
                open(1);
                open(2);
                libc::unshare(libc::CLONE_NEWNS);
                open(3);
                let mut st: libc::stat = std::mem::zeroed();
                libc::stat(ns_link.as_ptr(), &mut st);
                libc::write(info[1], (&st.st_ino as *const u64).cast(), 8);
                libc::_exit(0);
            }
            let mut b = 0u8;
            libc::read(ready[0], (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
        child
    };
    let read_exact = |buf: &mut [u8]| {
        // SAFETY: reads into a buffer of its length.
        let n = unsafe { libc::read(info[0], buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, buf.len() as isize);
    };
    let mut b4 = [0u8; 4];
    read_exact(&mut b4);
    let gc = i32::from_ne_bytes(b4) as u32;
    // SAFETY: waits for the child this test forked.
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    // Orphaned now (the grandchild waits on the pipe): its new parent.
    let stat = std::fs::read_to_string(format!("/proc/{gc}/stat")).unwrap();
    let new_ppid: u32 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(new_ppid, child as u32);
    // SAFETY: writes one byte from a local.
    unsafe { libc::write(go[1], [1u8].as_ptr().cast(), 1) };
    let mut b8 = [0u8; 8];
    read_exact(&mut b8);
    let new_mnt = u64::from_ne_bytes(b8) as u32;
    wait_exit(&d, gc);

    let opens = d.events(&["--pid", &gc.to_string(), "--kind", "open"]);
    let open_of = |i: usize| -> &Event {
        let want = paths[i].to_str().unwrap();
        opens
            .iter()
            .find(|e| e.args["path"] == want)
            .unwrap_or_else(|| panic!("no open of {want} in {opens:#?}"))
    };
    let ns_of = |link: &str| -> u32 {
        let l = std::fs::read_link(link).unwrap();
        let l = l.to_str().unwrap();
        l[l.find('[').unwrap() + 1..l.len() - 1].parse().unwrap()
    };
    let (host_mnt, host_pid_ns) = (ns_of("/proc/self/ns/mnt"), ns_of("/proc/self/ns/pid"));
    assert_ne!(new_mnt, host_mnt);
    let want = [
        (child as u32, host_mnt),
        (new_ppid, host_mnt),
        (new_ppid, host_mnt),
        (new_ppid, new_mnt),
    ];
    for (i, (ppid, mnt)) in want.into_iter().enumerate() {
        let e = open_of(i);
        assert_eq!(e.ppid, Some(ppid), "{}: {e:#?}", names[i]);
        assert_eq!(e.mnt_ns, Some(mnt), "{}: {e:#?}", names[i]);
        assert_eq!(e.pid_ns, Some(host_pid_ns), "{}", names[i]);
        assert_eq!(e.ns_pid, Some(gc), "{}", names[i]);
    }
    // SAFETY: closes the pipe ends this test opened.
    unsafe {
        for fd in go.into_iter().chain(info).chain(ready) {
            libc::close(fd);
        }
    }
}
