//! Scope keys a process cannot spoof by renaming itself: `comm` is whatever
//! the process set with prctl(PR_SET_NAME) (here: a write to
//! /proc/self/comm, the same call), `exe` is the file the kernel loaded.

use traceed_tests::{unique, Daemon, DaemonOpts, Program};
use traceed_wire::Event;

/// Renames itself to $0, then opens $1 from the shell itself (a builtin's
/// redirection: no child, so the renamed process does the open).
const RENAME_THEN_OPEN: &str = "printf %s \"$0\" > /proc/self/comm && : < \"$1\"";

fn target(tag: &str) -> String {
    let p = std::env::temp_dir().join(format!("traceed-scope-{tag}-{}", unique("s")));
    std::fs::write(&p, "").unwrap();
    p.display().to_string()
}

/// The open of `path` by `pid` (the test itself created the file).
fn opened(events: &[Event], pid: u32, path: &str) -> Option<Event> {
    events
        .iter()
        .find(|e| e.kind == "open" && e.pid == Some(pid) && e.args["path"] == path)
        .cloned()
}

#[test]
fn exe_scope_holds_whatever_a_process_calls_itself_comm_does_not() {
    let shell = std::fs::canonicalize("/bin/sh").unwrap();
    let shell = shell.to_str().unwrap();
    let excluded_bin = Program::copy_of(shell, "exb");
    let other_bin = Program::copy_of(shell, "oth");
    let excluded_comm = unique("exc");
    let cfg = format!(
        "[scope.exclude]\ncomm = [\"{excluded_comm}\"]\nexe = [\"{}\"]\n",
        excluded_bin.path.display()
    );
    let d = Daemon::start_with(DaemonOpts {
        config: Some(cfg),
        ..Default::default()
    });
    let run = |p: &Program, name: &str, path: &str| p.run(&["-c", RENAME_THEN_OPEN, name, path]);

    // The excluded binary, renamed to anything: still excluded.
    let (p_renamed, p_plain) = (target("renamed"), target("plain"));
    let renamed = run(&excluded_bin, &unique("any"), &p_renamed);
    let plain = run(&excluded_bin, &excluded_bin.name, &p_plain);
    // Another binary taking the excluded binary's name: recorded.
    let p_impostor = target("impostor");
    let impostor = run(&other_bin, &excluded_bin.name, &p_impostor);
    // Another binary taking the excluded comm: vanishes (comm is a name).
    let p_comm = target("comm");
    let by_comm = run(&other_bin, &excluded_comm, &p_comm);

    let e = d.wait_for(&["--kind", "open", "--pid", &impostor.to_string()], |e| {
        e.args["path"] == p_impostor.as_str()
    });
    assert_eq!(e.comm.as_deref(), Some(excluded_bin.name.as_str()));
    assert_eq!(
        e.exe.as_deref(),
        Some(other_bin.path.to_str().unwrap()),
        "{e:?}"
    );
    d.barrier();
    let all = d.events(&["--since", "5m"]);
    for (pid, path) in [(renamed, &p_renamed), (plain, &p_plain)] {
        let o = opened(&all, pid, path);
        assert!(o.is_none(), "excluded exe: open of {path} recorded: {o:?}");
        // Before its exec the child was still this test binary: the fork
        // is in scope, nothing after it is.
        let of_pid: Vec<&Event> = all
            .iter()
            .filter(|e| e.pid == Some(pid) && e.kind != "fork")
            .collect();
        assert!(of_pid.is_empty(), "excluded exe, pid {pid}: {of_pid:?}");
    }
    // comm exclusion starts at the rename (the loader's opens before it are
    // kept), and from then on the process is gone, exit included.
    assert!(
        opened(&all, by_comm, &p_comm).is_none(),
        "excluded comm: open recorded"
    );
    assert!(
        !all.iter()
            .any(|e| e.pid == Some(by_comm) && e.kind == "exit"),
        "excluded comm: exit recorded"
    );
    for p in [p_renamed, p_plain, p_impostor, p_comm] {
        let _ = std::fs::remove_file(p);
    }
}
