//! Harness for the end-to-end tests: starts the real `traceed` (built in the
//! same target directory) on a private state dir and socket, drives the real
//! `tracectl`, and speaks raw HTTP to the socket where a test needs the
//! status code. Everything runs as root against the real kernel.
//!
//! Two rules keep the results honest:
//! - Wait for facts, not time: poll (`poll`, `Daemon::wait_for`) for what
//!   must appear, and before asserting that something did NOT happen (or
//!   happened exactly N times) call `Daemon::barrier`. A sleep is for
//!   making time itself pass (a timeout, a downtime), never for "surely it
//!   is stored by now".
//! - No silent skips: a test never `return`s early because the host lacks
//!   something (the runner would count it as passed). It creates the
//!   condition it needs (`traceed_hiding`, `DaemonOpts::hide_btf`, a
//!   tmpfs), or, where that is impossible, is marked
//!   `#[ignore = "needs ...; run with --ignored"]` so it is counted as
//!   ignored and can still be run on a host that has it.

pub mod btf;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use traceed_wire::Event;

/// target/<profile>/ — the test binary lives in target/<profile>/deps/.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --release` / `make test`)",
        p.display()
    );
    p
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call, usable as comm (<= 15
/// bytes) when the prefix is at most 6 bytes.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let s = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(s.len() <= 15, "{s} is longer than a comm");
    s
}

/// A fresh directory under the temp dir for one test, removed with its
/// contents when dropped; kept when the test panics, for a look (as a
/// Daemon's directory is).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Self {
        let d = std::env::temp_dir().join(format!("traceed-{}", unique(prefix)));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A command running the real `traceed`; with `hide_btf`, in a private
/// mount namespace with a tmpfs over /sys/kernel/btf: the real kernel, but
/// traceed cannot see its BTF.
pub fn traceed_command(hide_btf: bool) -> Command {
    if !hide_btf {
        return Command::new(bin("traceed"));
    }
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /sys/kernel/btf && exec \"$0\" \"$@\"")
        .arg(bin("traceed"));
    c
}

/// Call `f` every `every` until it yields a value; past `timeout`, fail
/// with `why()`.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
    why: impl Fn() -> String,
) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < timeout, "{}", why());
        std::thread::sleep(every);
    }
}

/// The real `traceed` in a private mount namespace where each of `dirs`
/// that exists is an empty tmpfs: the real kernel and host, minus what a
/// test needs to be absent (a header tree, installed objects), so the test
/// runs the same on every host instead of only where those are missing.
pub fn traceed_hiding(dirs: &[&str]) -> Command {
    let mut script = String::new();
    for d in dirs {
        assert!(!d.contains(['\'', ' ']), "{d}: quote it");
        script.push_str(&format!(
            "if [ -d '{d}' ]; then mount -t tmpfs none '{d}' || exit 1; fi; "
        ));
    }
    script.push_str("exec \"$0\" \"$@\"");
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(script)
        .arg(bin("traceed"));
    c
}

/// `traceed_command(hide_btf)` with an empty config, `args`, and its state
/// and socket in `dir`: for starts that are expected to be refused.
pub fn traceed_in(dir: &Path, hide_btf: bool, args: &[&str]) -> Command {
    let mut c = traceed_command(hide_btf);
    c.args(["--config", "/dev/null"])
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .arg("--socket")
        .arg(dir.join("s.sock"));
    c
}

/// Run `cmd`, which must fail; returns its stderr, where the reason is.
pub fn refused_start(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Why the ladder refused `rung` at start, from a status (panics if it did not).
pub fn refusal<'a>(s: &'a traceed_wire::Status, rung: &str) -> &'a str {
    &s.refused
        .iter()
        .find(|r| r.rung == rung)
        .unwrap_or_else(|| panic!("{rung} not in refused: {:?}", s.refused))
        .reason
}

pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

#[derive(Default)]
pub struct DaemonOpts {
    pub args: Vec<String>,
    /// Run in a private mount namespace with a tmpfs over /sys/kernel/btf:
    /// the real kernel, but traceed cannot see its BTF.
    pub hide_btf: bool,
    pub config: Option<String>,
    pub dir: Option<PathBuf>,
}

impl Daemon {
    pub fn start() -> Self {
        Self::start_with(DaemonOpts::default())
    }

    pub fn start_with(opts: DaemonOpts) -> Self {
        let dir = opts.dir.unwrap_or_else(|| {
            let d = std::env::temp_dir().join(format!("traceed-test-{}", unique("d")));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            d
        });
        let socket = dir.join("api.sock");
        let config = dir.join("traceed.toml");
        std::fs::write(&config, opts.config.unwrap_or_default()).unwrap();
        let log = dir.join("traceed.log");
        let child = traceed_command(opts.hide_btf)
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&dir)
            .arg("--socket")
            .arg(&socket)
            .args(&opts.args)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn traceed");
        let mut d = Daemon {
            child,
            dir,
            socket,
            log,
        };
        d.wait_ready(Duration::from_secs(30));
        d
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "traceed exited with {st} before it was ready:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = http_get(&self.socket, "/healthz") {
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "traceed not ready after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Run tracectl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("tracectl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tracectl")
    }

    /// `tracectl <args>`, which must succeed: its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "tracectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `tracectl <args>` that must succeed and print one JSON document.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_slice(&self.ctl_ok(args))
            .unwrap_or_else(|e| panic!("tracectl {args:?}: not JSON: {e}"))
    }

    /// `tracectl <args>` that must succeed and print JSON lines, parsed.
    pub fn ctl_jsonl(&self, args: &[&str]) -> Vec<serde_json::Value> {
        String::from_utf8(self.ctl_ok(args))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad jsonl line {l:?}: {e}"))
            })
            .collect()
    }

    /// `tracectl events -o jsonl <args>`, parsed.
    pub fn events(&self, args: &[&str]) -> Vec<Event> {
        let mut a = vec!["events", "-o", "jsonl"];
        a.extend_from_slice(args);
        self.ctl_jsonl(&a)
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("an event"))
            .collect()
    }

    /// Poll until `pred` selects at least one event, or fail after 10 s.
    pub fn wait_for(&self, args: &[&str], pred: impl Fn(&Event) -> bool) -> Event {
        poll(
            Duration::from_secs(10),
            Duration::from_millis(100),
            || self.events(args).into_iter().find(|e| pred(e)),
            || {
                format!(
                    "no matching event for {args:?} within 10 s; daemon log:\n{}",
                    self.log_text()
                )
            },
        )
    }

    /// Wait until everything that happened before this call is visible
    /// through the API, so a test can then assert that something did NOT
    /// happen (or was recorded exactly N times) without guessing how long
    /// the pipeline takes. Runs a marker (a uniquely named copy of
    /// /bin/true) and waits for its exit event, the last record the marker
    /// causes. Sound because the order of the kernel's ring buffer (one
    /// queue for every CPU) is kept by the pipeline and the writer (batches
    /// commit in id order): what was recorded before the marker started is
    /// stored before the marker's exit is. With per-CPU perf buffers
    /// (`transport = "perf"`) the order holds per CPU only. A daemon whose
    /// scope leaves the marker out never shows it: such a test runs a
    /// marker of its own that the scope admits. Returns the marker's exit.
    pub fn barrier(&self) -> Event {
        let marker = Program::new("mark");
        let pid = marker.run(&[]);
        poll(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                self.events(&["--comm", &marker.name, "--kind", "exit"])
                    .into_iter()
                    .find(|e| e.pid == Some(pid))
            },
            || {
                format!(
                    "barrier: the marker {} (pid {pid}) did not show up within 10 s; daemon log:\n{}",
                    marker.name,
                    self.log_text()
                )
            },
        )
    }

    /// SIGTERM and wait; returns the exit status code. A daemon that has
    /// not exited after STOP_TIMEOUT is a bug: it is killed (so the test
    /// run ends instead of hanging) and the test fails with its log.
    pub fn stop(&mut self) -> Option<i32> {
        self.terminate().unwrap_or_else(|why| panic!("{why}"))
    }

    fn terminate(&mut self) -> Result<Option<i32>, String> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < STOP_TIMEOUT {
            match self.child.try_wait() {
                Ok(Some(st)) => return Ok(st.code()),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("waiting for traceed: {e}")),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!(
            "traceed did not stop within {STOP_TIMEOUT:?} of SIGTERM (killed):\n{}",
            self.log_text()
        ))
    }
}

/// How long a SIGTERM'd daemon may take to drain and exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Err(why) = self.terminate() {
                // Not a panic while unwinding: that would abort the run.
                if std::thread::panicking() {
                    eprintln!("{why}");
                } else {
                    panic!("{why}");
                }
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A minimal HTTP/1.1 GET over the Unix socket: (status, body).
pub fn http_get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: traceed\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (status, body) = split_http_answer(&text);
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

/// (status, body) of a whole HTTP/1.x answer; status 0 when unreadable.
pub fn split_http_answer(text: &str) -> (u16, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Spawn `cmd` whose executable a test has just copied. The copy can still
/// be open for writing in a child that another test thread forked
/// meanwhile: ETXTBSY until that child execs. Wait for the spawn to succeed
/// (at most 5 s) rather than fail on the race.
pub fn spawn_fresh(cmd: &mut Command) -> std::process::Child {
    let what = format!("{:?}", cmd.get_program());
    poll(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => None,
            r => Some(r.unwrap_or_else(|e| panic!("spawn {what}: {e}"))),
        },
        || format!("{what}: still ETXTBSY after 5 s"),
    )
}

/// Run a copy of /bin/true from a memfd named `name` (a fileless program)
/// through /proc/self/fd, and wait for it: its pid. Exec needs no writer
/// left, so the child inherits a read-only reopen (no O_CLOEXEC) and the
/// writer is closed first.
pub fn run_from_memfd(name: &str) -> u32 {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid C string; the fd is owned right away.
    let w = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(w >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let mut w = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(w) });
    w.write_all(&std::fs::read("/bin/true").unwrap()).unwrap();
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", w.as_raw_fd())).unwrap();
    // SAFETY: a valid C string; the fd is owned right away.
    let r = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(r >= 0, "reopen memfd: {}", std::io::Error::last_os_error());
    let r = unsafe { OwnedFd::from_raw_fd(r) };
    drop(w);
    let mut child = spawn_fresh(&mut Command::new(format!(
        "/proc/self/fd/{}",
        r.as_raw_fd()
    )));
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A copy of /bin/true under a unique name, so comm and filename identify
/// exactly the process a test started.
pub struct Program {
    pub path: PathBuf,
    pub name: String,
}

impl Program {
    pub fn new(prefix: &str) -> Self {
        Self::copy_of("/bin/true", prefix)
    }

    pub fn copy_of(src: &str, prefix: &str) -> Self {
        let name = unique(prefix);
        let dir = std::env::temp_dir().join(format!("traceed-prog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(&name);
        std::fs::copy(src, &path).unwrap();
        Program { path, name }
    }

    /// Start it with `args` (see `spawn_fresh`).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        spawn_fresh(Command::new(&self.path).args(args))
    }

    /// Run it to completion with `args`; returns its pid.
    pub fn run(&self, args: &[&str]) -> u32 {
        let mut c = self.spawn(args);
        let pid = c.id();
        c.wait().unwrap();
        pid
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
