//! Exit status on every rung, against the wait status the parent saw: a
//! process killed with SIGKILL by the test, one killed by a signal another
//! process sent, a plain exit_group(3), and two thread-group exits (a
//! non-main thread calls exit_group; the main thread leaves first and a
//! remaining thread ends the process). The fallback knows a status only
//! from exit_group: where it cannot know, both fields are null, never a
//! guessed 0.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;

use traceed_tests::{http_get, unique, Daemon, DaemonOpts, Program};
use traceed_wire::{Event, Status};

/// A C program with threads (a Rust test binary cannot make its main
/// thread leave): `group` = a second thread calls exit_group(4) while the
/// main thread waits; `leader` = the main thread calls exit (the thread
/// only) and the other thread later calls exit_group(5).
const THREADS_C: &str = r#"
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

static int after_leader;

/* The main thread has exited: its task is a zombie (or gone) until the
 * whole group ends. */
static int leader_gone(void)
{
	char path[64], buf[512], *r;
	size_t n;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", getpid());
	f = fopen(path, "r");
	if (!f)
		return 1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	r = strrchr(buf, ')');
	return r && (r[2] == 'Z' || r[2] == 'X');
}

static void *group_exit(void *code)
{
	while (after_leader && !leader_gone())
		sched_yield();
	syscall(SYS_exit_group, (long)code);
	return 0;
}

int main(int argc, char **argv)
{
	pthread_t t;
	if (argc < 2)
		return 2;
	if (!strcmp(argv[1], "group")) {
		pthread_create(&t, 0, group_exit, (void *)4L);
		for (;;)
			pause();
	}
	after_leader = 1;
	pthread_create(&t, 0, group_exit, (void *)5L);
	syscall(SYS_exit, 0); /* this thread only */
	return 2;
}
"#;

fn threads_binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Under target/tmp: built once per test process, kept by cargo.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("exitc"));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("threads.c");
        std::fs::write(&src, THREADS_C).unwrap();
        let bin = dir.join("threads");
        let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-O2", "-pthread", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("run the C compiler (apt-get install gcc)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

fn status(d: &Daemon) -> Status {
    let (code, body) = http_get(&d.socket, "/v1/status").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn exit_of(d: &Daemon, pid: u32) -> Event {
    d.wait_for(&["--kind", "exit", "--pid", &pid.to_string()], |_| true)
}

/// Both keys present; each a number equal to the expectation, or null.
fn assert_status(x: &Event, exit_code: Option<u64>, signal: Option<u64>, what: &str) {
    for (key, want) in [("exit_code", exit_code), ("signal", signal)] {
        let v = x
            .args
            .get(key)
            .unwrap_or_else(|| panic!("{what}: no {key} in {}", x.args));
        match want {
            Some(n) => assert_eq!(v.as_u64(), Some(n), "{what}: {key} in {}", x.args),
            None => assert!(v.is_null(), "{what}: {key} must be null: {}", x.args),
        }
    }
}

/// Start `prog args`, wait until its exec is recorded (it runs the image
/// under test, not the fork of ours), then `act` on its pid; returns the
/// pid and the wait status.
fn run_and(d: &Daemon, prog: &Program, args: &[&str], act: impl FnOnce(u32)) -> (u32, ExitStatus) {
    let mut c = prog.spawn(args);
    let pid = c.id();
    d.wait_for(&["--kind", "exec", "--pid", &pid.to_string()], |_| true);
    act(pid);
    (pid, c.wait().unwrap())
}

fn group_dead_in_tracefs() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .filter_map(|r| {
            std::fs::read_to_string(format!("{r}/events/sched/sched_process_exit/format")).ok()
        })
        .any(|f| f.contains("group_dead"))
}

fn cases(d: &Daemon, fallback: bool) {
    // The fallback never sees the terminating signal: unknown, both null.
    let signalled = |sig: u64| if fallback { None } else { Some(sig) };

    // 1. SIGKILL from the test.
    let sleeper = Program::copy_of("/bin/sleep", "xk");
    let (pid, st) = run_and(d, &sleeper, &["30"], |pid| {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    });
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    assert_status(&exit_of(d, pid), None, signalled(9), "kill -9 by the test");

    // 2. SIGTERM sent by another process.
    let sleeper = Program::copy_of("/bin/sleep", "xt");
    let (pid, st) = run_and(d, &sleeper, &["30"], |pid| {
        let k = Command::new("/bin/kill")
            .args(["-s", "TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(k.success());
    });
    assert_eq!(st.signal(), Some(libc::SIGTERM));
    assert_status(
        &exit_of(d, pid),
        None,
        signalled(15),
        "SIGTERM from /bin/kill",
    );

    // 3. exit_group(3): known everywhere.
    let sh = Program::copy_of("/bin/sh", "x3");
    let (pid, st) = run_and(d, &sh, &["-c", "sleep 0.2; exit 3"], |_| {});
    assert_eq!(st.code(), Some(3));
    assert_status(&exit_of(d, pid), Some(3), None, "exit 3");

    // 4. A non-main thread calls exit_group(4) while the main thread waits.
    let threads = Program::copy_of(threads_binary().to_str().unwrap(), "xg");
    let (pid, st) = run_and(d, &threads, &["group"], |_| {});
    assert_eq!(st.code(), Some(4));
    assert_status(
        &exit_of(d, pid),
        Some(4),
        None,
        "exit_group(4) from a thread",
    );

    // 5. The main thread leaves first; another thread calls exit_group(5).
    // The fallback records the exit when the last thread goes if the
    // kernel's sched_process_exit says group_dead; without it, the leader's
    // exit stands for the process and comes before exit_group: unknown.
    let threads = Program::copy_of(threads_binary().to_str().unwrap(), "xl");
    let (pid, st) = run_and(d, &threads, &["leader"], |_| {});
    assert_eq!(st.code(), Some(5));
    let code = (!fallback || group_dead_in_tracefs()).then_some(5);
    assert_status(
        &exit_of(d, pid),
        code,
        None,
        "main thread first, then exit_group(5)",
    );
}

#[test]
fn exit_status_on_the_fallback_rung() {
    let d = Daemon::start_with(DaemonOpts {
        args: vec!["--mode".into(), "fallback".into()],
        ..Default::default()
    });
    assert_eq!(status(&d).rung, "fallback");
    cases(&d, true);
}

#[test]
fn exit_status_on_the_core_rung() {
    let d = Daemon::start();
    assert_eq!(status(&d).rung, "core-kernel-btf");
    cases(&d, false);
}
