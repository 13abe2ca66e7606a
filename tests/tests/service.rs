//! traceed as a systemd service, without systemd: the test plays the service
//! manager's side of sd_notify (a datagram socket in NOTIFY_SOCKET) and
//! checks the order and content of what the real daemon sends: READY only
//! once the API answers, STATUS with the rung, WATCHDOG from the ingest loop
//! that stops while the writer is wedged or the process is stopped,
//! RELOADING/READY around SIGHUP, STOPPING on SIGTERM. Also: config errors
//! exit 78 naming file, line and key; log_level and RUST_LOG filter the log.
//! The boot test (tests/vm/boot.sh) does the same under a real systemd.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use traceed_tests::{bin, http_get, unique, Program};

struct Managed {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    notify: UnixDatagram,
    log: PathBuf,
}

impl Managed {
    fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("traceed-svc-{}", unique("s")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let config_path = dir.join("traceed.toml");
        std::fs::write(&config_path, config).unwrap();
        let socket = dir.join("api.sock");
        let log = dir.join("traceed.log");
        let mut cmd = Command::new(bin("traceed"));
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--state-dir")
            .arg(&dir)
            .arg("--socket")
            .arg(&socket)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn traceed");
        Managed {
            child,
            dir,
            socket,
            notify,
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Next notify datagram, or None after `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < timeout {
            match self.notify.recv(&mut buf) {
                Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("notify socket: {e}"),
            }
        }
        None
    }

    /// Read datagrams until one satisfies `pred`; returns it and those
    /// before it.
    fn recv_until(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> (String, Vec<String>) {
        let t0 = Instant::now();
        let mut seen = Vec::new();
        while t0.elapsed() < timeout {
            if let Some(m) = self.recv(Duration::from_millis(200)) {
                if pred(&m) {
                    return (m, seen);
                }
                seen.push(m);
            }
        }
        panic!(
            "no matching notify message within {timeout:?}; got {seen:?}\nlog:\n{}",
            self.log_text()
        );
    }

    /// Everything sent during `d`.
    fn collect(&self, d: Duration) -> Vec<String> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        while t0.elapsed() < d {
            if let Some(m) = self.recv(Duration::from_millis(100)) {
                out.push(m);
            }
        }
        out
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGCONT);
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn watchdogs(msgs: &[String]) -> usize {
    msgs.iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[test]
fn notify_protocol_ready_status_watchdog_reload_stop() {
    let mut d = Managed::start("", &[("WATCHDOG_USEC", "3000000")]);

    // READY=1 comes only when the API already answers: the moment it is
    // received, /healthz must be 200.
    let (_, before) = d.recv_until(Duration::from_secs(60), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    let (code, _) = http_get(&d.socket, "/healthz").expect("socket listens at READY=1");
    assert_eq!(code, 200);
    assert!(
        before
            .iter()
            .any(|m| m.contains("STATUS=loading eBPF programs")),
        "startup phases are reported: {before:?}"
    );

    // STATUS= carries the rung and the rate.
    let (status, _) = d.recv_until(Duration::from_secs(10), |m| m.starts_with("STATUS=rung "));
    assert!(status.contains("core-kernel-btf"), "{status}");
    assert!(status.contains("events/s"), "{status}");

    // The ingest loop pings about once a second.
    let msgs = d.collect(Duration::from_millis(3500));
    let n = watchdogs(&msgs);
    assert!((2..=5).contains(&n), "{n} WATCHDOG=1 in 3.5 s: {msgs:?}");

    // A stopped process sends nothing (what systemd's watchdog catches).
    d.signal(libc::SIGSTOP);
    let _ = d.collect(Duration::from_millis(300));
    let msgs = d.collect(Duration::from_millis(2500));
    assert_eq!(watchdogs(&msgs), 0, "pings while stopped: {msgs:?}");
    d.signal(libc::SIGCONT);
    d.recv_until(Duration::from_secs(5), |m| m == "WATCHDOG=1\n");

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1, same process.
    d.signal(libc::SIGHUP);
    let (reloading, _) = d.recv_until(Duration::from_secs(5), |m| m.contains("RELOADING=1"));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    d.recv_until(Duration::from_secs(5), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "SIGHUP must not end the daemon"
    );
    assert!(d.log_text().contains("reloaded"), "{}", d.log_text());

    // SIGTERM: STOPPING=1, then a clean exit.
    d.signal(libc::SIGTERM);
    d.recv_until(Duration::from_secs(10), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
    let st = d.child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{}", d.log_text());
}

/// Holds SQLite's WAL write lock on `db` from this process, as a second
/// writer would: byte 120 of the -shm file (UNIX_SHM_BASE, WAL_WRITE_LOCK),
/// an fcntl lock. The daemon's writer then waits in its busy handler
/// (busy_timeout 5 s) with events piling up in its queue: wedged.
struct WalWriteLock {
    _shm: std::fs::File,
}

impl WalWriteLock {
    fn take(db: &Path) -> Self {
        use std::os::fd::AsRawFd;
        let shm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(db.with_extension("db-shm"))
            .expect("events.db-shm exists (WAL mode)");
        // SAFETY: a zeroed flock filled in below; F_SETLKW on our own fd.
        let rc = unsafe {
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            fl.l_start = 120;
            fl.l_len = 1;
            libc::fcntl(shm.as_raw_fd(), libc::F_SETLKW, &fl)
        };
        assert_eq!(rc, 0, "fcntl: {}", std::io::Error::last_os_error());
        WalWriteLock { _shm: shm }
    }
}

#[test]
fn wedged_writer_stops_watchdog_pings() {
    let d = Managed::start("", &[("WATCHDOG_USEC", "3000000")]);
    d.recv_until(Duration::from_secs(60), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    d.recv_until(Duration::from_secs(5), |m| m == "WATCHDOG=1\n");
    let prog = Program::new("tdwedg");

    let lock = WalWriteLock::take(&d.dir.join("events.db"));
    // Keep events coming so the queue is never empty while the writer waits.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        let path = prog.path.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new(&path).status();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // One tick may still see the writer idle; after that it is stuck.
    let _ = d.collect(Duration::from_millis(1300));
    let wedged = d.collect(Duration::from_millis(2500));
    drop(lock);
    let resumed = d.collect(Duration::from_millis(3000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spawner.join().unwrap();

    assert_eq!(
        watchdogs(&wedged),
        0,
        "pings while the writer could not write: {wedged:?}"
    );
    assert!(
        watchdogs(&resumed) >= 1,
        "no pings after the writer got the lock back: {resumed:?}\n{}",
        d.log_text()
    );
}

#[test]
fn config_errors_exit_78_with_file_line_and_key() {
    for (text, line, key) in [
        (
            "mode = \"auto\"\n[store]\nmax_agee = \"2d\"\n",
            "line 3",
            "max_agee",
        ),
        (
            "[kernel]\nring_buffer_bytes = 1000\n",
            "line 2",
            "ring_buffer_bytes",
        ),
        ("log_level = \"info\"\nmode = [\n", "line 2", ""),
        ("log_level = \"very-loud=9\"\n", "line 1", "log_level"),
        (
            "[api]\nheader_timeout = \"1ms\"\n",
            "line 2",
            "api.header_timeout",
        ),
    ] {
        let dir = std::env::temp_dir().join(format!("traceed-cfg-{}", unique("c")));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("traceed.toml");
        std::fs::write(&path, text).unwrap();
        let t0 = Instant::now();
        let out = Command::new(bin("traceed"))
            .arg("--config")
            .arg(&path)
            .arg("--state-dir")
            .arg(&dir)
            .arg("--socket")
            .arg(dir.join("api.sock"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text:?}: {err}");
        assert!(err.contains(path.to_str().unwrap()), "{err}");
        assert!(err.contains(line), "{text:?} wants {line}: {err}");
        assert!(err.contains(key), "{text:?} wants {key}: {err}");
        // Refused before anything is loaded or created.
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(!dir.join("events.db").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn log_level_key_and_rust_log_filter_the_log() {
    // log_level = "warn": the info-level startup lines are filtered out.
    let d = Managed::start("log_level = \"warn\"\n", &[]);
    d.recv_until(Duration::from_secs(60), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    let log = d.log_text();
    assert!(!log.contains("ready: rung"), "{log}");
    drop(d);

    // RUST_LOG wins over the file.
    let d = Managed::start("log_level = \"warn\"\n", &[("RUST_LOG", "traceed=debug")]);
    d.recv_until(Duration::from_secs(60), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    let log = d.log_text();
    assert!(log.contains("ready: rung core-kernel-btf"), "{log}");
    assert!(log.contains("eBPF programs attached: rung"), "{log}");
    assert!(log.contains("DEBUG"), "debug lines shown: {log}");
}
