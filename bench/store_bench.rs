//! Store benchmark (run by bench/store.sh): drives the real Writer
//! and Store (the traceed library) with realistic synthetic events and
//! prints the sustained insert rate, bytes per event on disk and query
//! latencies over the resulting database.
//!
//! Rows imitate what the kernel side records: a mix of open (50 %),
//! connect, exec, fork, exit, unlink, rename, chmod, kill; a few hundred
//! live processes with real-looking comm/exe, 30 % of them in one of ten
//! containers; paths drawn from a few thousand with a unique tail.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::sync::mpsc;
use traceed::service::metrics;
use traceed::store::{self, retention};
use traceed_wire::LiveEvent;

const HOUR: i64 = 3_600_000_000_000;
const RARE_COMM: &str = "rare-comm-x";
/// Pool slots holding long-lived processes (services, sessions).
const ROOTS: usize = 40;
/// Deepest fork chain below a root.
const MAX_DEPTH: u8 = 6;
/// Mean length of a run of consecutive events from one process. Measured
/// with traceed during a cargo build on this machine (23,671 events, 184
/// pids): 96.6 % of events have the pid of the event before them, a mean
/// run of ~29. `--run-mean 1` gives the worst case for the indexes: every
/// event from a process picked anew.
const RUN_MEAN: f64 = 29.0;

struct Args {
    dir: std::path::PathBuf,
    events: u64,
    span_h: i64,
    runs: usize,
    retention: bool,
    run_mean: f64,
    /// The writer's largest transaction (`[store] batch_size`).
    batch: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        dir: std::env::temp_dir().join("traceed-store-bench"),
        events: 10_000_000,
        span_h: 24,
        runs: 51,
        retention: false,
        run_mean: RUN_MEAN,
        batch: traceed::service::config::StoreConfig::default().batch_size,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--dir" => a.dir = v()?.into(),
            "--events" => a.events = v()?.parse()?,
            "--span-hours" => a.span_h = v()?.parse()?,
            "--runs" => a.runs = v()?.parse()?,
            "--with-retention" => a.retention = true,
            "--run-mean" => a.run_mean = v()?.parse()?,
            "--batch" => a.batch = v()?.parse()?,
            _ => anyhow::bail!(
                "usage: traceed-store-bench [--dir DIR] [--events N] [--span-hours H] [--runs N] [--with-retention] [--run-mean N] [--batch N]"
            ),
        }
    }
    Ok(a)
}

/// Seeded, so every run generates the same store.
struct Rng(fastrand::Rng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.u64(..)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n)
    }
    /// Skewed towards small indexes, like real popularity.
    fn skewed(&mut self, n: usize) -> usize {
        let r = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((r * r * r) * n as f64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

#[derive(Clone)]
struct Proc {
    /// Instance key, parent's key and start: the procs table, trees and
    /// descendants_of (as the pipeline's process table gives them).
    key: u64,
    parent: Option<u64>,
    start: i64,
    /// Generations below the pool's roots: kept shallow, as real trees are.
    depth: u8,
    pid: u32,
    ppid: u32,
    uid: u32,
    comm: String,
    exe: String,
    container: Option<usize>,
    ns_pid: u32,
}

struct Gen {
    rng: Rng,
    procs: Vec<Proc>,
    next_pid: u32,
    next_key: u64,
    paths: Vec<String>,
    containers: Vec<String>,
    programs: Vec<(&'static str, &'static str)>,
    fidelity: String,
    /// The process of the current run of events and how many it has left.
    run: (usize, u64),
    run_mean: f64,
}

const PROGRAMS: &[(&str, &str)] = &[
    ("bash", "/usr/bin/bash"),
    ("sh", "/usr/bin/dash"),
    ("sshd", "/usr/sbin/sshd"),
    ("nginx", "/usr/sbin/nginx"),
    ("python3", "/usr/bin/python3.11"),
    ("node", "/usr/bin/node"),
    ("java", "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"),
    ("postgres", "/usr/lib/postgresql/15/bin/postgres"),
    ("systemd-journal", "/usr/lib/systemd/systemd-journald"),
    ("containerd-shim", "/usr/bin/containerd-shim-runc-v2"),
    ("dockerd", "/usr/bin/dockerd"),
    ("kubelet", "/usr/bin/kubelet"),
    ("cron", "/usr/sbin/cron"),
    ("git", "/usr/bin/git"),
    ("make", "/usr/bin/make"),
    ("cc1", "/usr/lib/gcc/x86_64-linux-gnu/12/cc1"),
    ("ld", "/usr/bin/x86_64-linux-gnu-ld.bfd"),
    ("ls", "/usr/bin/ls"),
    ("cat", "/usr/bin/cat"),
    ("grep", "/usr/bin/grep"),
    ("curl", "/usr/bin/curl"),
    ("apt-get", "/usr/bin/apt-get"),
    ("dpkg", "/usr/bin/dpkg"),
    ("runc", "/usr/sbin/runc"),
    ("redis-server", "/usr/bin/redis-server"),
    ("envoy", "/usr/local/bin/envoy"),
    ("prometheus", "/bin/prometheus"),
    ("coredns", "/coredns"),
    ("rsyslogd", "/usr/sbin/rsyslogd"),
    ("true", "/usr/bin/true"),
];

impl Gen {
    fn new(run_mean: f64) -> Self {
        let mut rng = Rng(fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15));
        let dirs = [
            "/usr/lib/x86_64-linux-gnu/",
            "/etc/",
            "/proc/self/",
            "/var/log/",
            "/tmp/",
            "/home/dev/project/src/",
            "/sys/fs/cgroup/system.slice/",
            "/var/lib/postgresql/15/main/base/16384/",
            "/usr/share/zoneinfo/",
            "/run/",
        ];
        let names = [
            "libc.so.6",
            "ld.so.cache",
            "passwd",
            "group",
            "nsswitch.conf",
            "status",
            "stat",
            "syslog",
            "auth.log",
            "main.rs",
            "lib.rs",
            "memory.max",
            "cpu.stat",
            "localtime",
            "resolv.conf",
            "hosts",
            "libssl.so.3",
            "libcrypto.so.3",
            "libz.so.1",
            "maps",
        ];
        let mut paths = Vec::new();
        for d in dirs {
            for n in names {
                paths.push(format!("{d}{n}"));
                for k in 0..15 {
                    paths.push(format!("{d}{k}{n}"));
                }
            }
        }
        let containers = (0..10)
            .map(|_| {
                format!(
                    "{:016x}{:016x}{:016x}{:016x}",
                    rng.next(),
                    rng.next(),
                    rng.next(),
                    rng.next()
                )
            })
            .collect();
        let mut g = Self {
            rng,
            procs: Vec::new(),
            next_pid: 1000,
            next_key: 1 << 40,
            paths,
            containers,
            programs: PROGRAMS.to_vec(),
            fidelity: "core".into(),
            run: (0, 0),
            run_mean,
        };
        for _ in 0..400 {
            let p = g.new_proc(1, None, 0);
            g.procs.push(p);
        }
        g
    }

    fn new_proc(&mut self, ppid: u32, parent: Option<u64>, start: i64) -> Proc {
        self.next_key += 1;
        self.next_pid = if self.next_pid >= 4_194_000 {
            1000
        } else {
            self.next_pid + 1 + self.rng.below(3) as u32
        };
        let (comm, exe) = self.programs[self.rng.skewed(self.programs.len())];
        let container = (self.rng.below(10) < 3).then(|| self.rng.skewed(10));
        let uid = match self.rng.below(20) {
            0..=9 => 0,
            10..=16 => 1000,
            17 => 33,
            18 => 999,
            _ => 65534,
        };
        Proc {
            key: self.next_key,
            parent,
            start,
            depth: 0,
            pid: self.next_pid,
            ppid,
            uid,
            comm: comm.into(),
            exe: exe.into(),
            container,
            ns_pid: if container.is_some() {
                1 + self.rng.below(300) as u32
            } else {
                self.next_pid
            },
        }
    }

    fn path(&mut self) -> String {
        if self.rng.below(5) == 0 {
            format!("/proc/{}/stat", self.rng.below(4_000_000))
        } else {
            let i = self.rng.skewed(self.paths.len());
            self.paths[i].clone()
        }
    }

    /// The process of the next event: runs of events from one process with
    /// geometric lengths of mean `run_mean` (1 = every event picks anew).
    fn next_proc(&mut self) -> usize {
        if self.run.1 == 0 {
            let u = ((self.rng.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let len = if self.run_mean <= 1.0 {
                1
            } else {
                1 + (u.ln() / (1.0 - 1.0 / self.run_mean).ln()) as u64
            };
            self.run = (self.rng.skewed(self.procs.len()), len);
        }
        self.run.1 -= 1;
        self.run.0
    }

    /// One event of a process outside the pool.
    fn row_of(&mut self, p: &Proc, ts: i64, kind: &str, args: serde_json::Value) -> LiveEvent {
        self.procs.push(p.clone());
        let idx = self.procs.len() - 1;
        let e = self.row(idx, ts, kind, args, Some(0));
        self.procs.pop();
        e
    }

    /// A parallel build started at `ts`: make, 10 sub-makes, 99 compilers
    /// under each (1,000 descendants), each forked, exec'd, opening a file
    /// and exiting. Returns its events and the root's pid and key.
    fn build_tree(&mut self, ts: i64) -> (Vec<LiveEvent>, u32, u64) {
        let mut out = Vec::new();
        let (ppid, pkey) = (self.procs[0].pid, self.procs[0].key);
        let mut root = self.new_proc(ppid, Some(pkey), ts);
        (root.comm, root.exe) = ("make".into(), "/usr/bin/make".into());
        out.push(self.row_of(&root, ts, "fork", json!({})));
        let mut t = ts;
        for _ in 0..10 {
            let mut sub = self.new_proc(root.pid, Some(root.key), t);
            (sub.comm, sub.exe) = ("make".into(), "/usr/bin/make".into());
            out.push(self.row_of(&sub, t, "fork", json!({})));
            for k in 0..99 {
                t += 1_000;
                let mut cc = self.new_proc(sub.pid, Some(sub.key), t);
                out.push(self.row_of(&cc, t, "fork", json!({})));
                (cc.comm, cc.exe) = ("cc1".into(), "/usr/lib/gcc/x86_64-linux-gnu/12/cc1".into());
                let src = format!("/home/dev/project/src/unit{k}.c");
                let argv = json!([cc.exe, "-O2", src]);
                out.push(self.row_of(&cc, t, "exec", json!({"filename": cc.exe, "argv": argv})));
                out.push(self.row_of(&cc, t, "open", json!({"path": src, "flags": 0, "mode": 0})));
                out.push(self.row_of(&cc, t, "exit", json!({"exit_code": 0, "signal": null})));
            }
        }
        (out, root.pid, root.key)
    }

    fn event(&mut self, ts: i64) -> LiveEvent {
        let idx = self.next_proc();
        let roll = self.rng.below(100);
        let (kind, args, retval): (&str, serde_json::Value, Option<i64>) = match roll {
            0..=49 => {
                let flags = *self.rng.pick(&[0u64, 524288, 577, 526336, 2]);
                let mode = if flags & 64 != 0 { 420 } else { 0 };
                let ret = if self.rng.below(5) == 0 {
                    -2
                } else {
                    3 + self.rng.below(40) as i64
                };
                (
                    "open",
                    json!({"path": self.path(), "flags": flags, "mode": mode}),
                    Some(ret),
                )
            }
            50..=59 => {
                let addr = format!(
                    "10.{}.{}.{}",
                    self.rng.below(4),
                    self.rng.below(256),
                    self.rng.below(256)
                );
                let port = *self.rng.pick(&[443u64, 80, 5432, 53, 6379, 8080]);
                let ret = if self.rng.below(4) == 0 { -115 } else { 0 };
                (
                    "connect",
                    json!({"family": "inet", "addr": addr, "port": port}),
                    Some(ret),
                )
            }
            60..=69 => {
                // exec: the same process (pid, key, parent) with a new image.
                let (comm, exe) = self.programs[self.rng.skewed(self.programs.len())];
                let mut child = self.procs[idx].clone();
                (child.comm, child.exe) = (comm.into(), exe.into());
                let argv: Vec<String> = std::iter::once(child.exe.clone())
                    .chain((0..self.rng.below(4)).map(|k| match k {
                        0 => "-c".to_string(),
                        1 => format!("/tmp/job-{}.sh", self.rng.below(100_000)),
                        _ => format!("--opt={}", self.rng.below(1000)),
                    }))
                    .collect();
                let args = json!({"filename": child.exe, "argv": argv});
                self.procs[idx] = child;
                ("exec", args, None)
            }
            70..=79 => {
                // fork: a child of this process, or of one of the pool's
                // long-lived roots (its first ROOTS slots, never replaced)
                // once the tree is MAX_DEPTH deep.
                let parent = if self.procs[idx].depth >= MAX_DEPTH {
                    idx % ROOTS
                } else {
                    idx
                };
                let p = self.procs[parent].clone();
                let child = self.new_proc(p.pid, Some(p.key), ts);
                let child = Proc {
                    comm: p.comm,
                    exe: p.exe,
                    container: p.container,
                    depth: p.depth + 1,
                    ..child
                };
                let slot = ROOTS + self.rng.below((self.procs.len() - ROOTS) as u64) as usize;
                self.procs[slot] = child;
                let e = self.row(slot, ts, "fork", json!({}), None);
                return e;
            }
            80..=89 => {
                let code = if self.rng.below(6) == 0 { 1 } else { 0 };
                ("exit", json!({"exit_code": code, "signal": null}), None)
            }
            90..=93 => ("unlink", json!({"path": self.path()}), Some(0)),
            94..=95 => {
                let from = format!("/tmp/tmp.{:x}", self.rng.next() >> 32);
                (
                    "rename",
                    json!({"old_path": from, "new_path": self.path()}),
                    Some(0),
                )
            }
            96..=97 => ("chmod", json!({"path": self.path(), "mode": 493}), Some(0)),
            _ => {
                let target = self.procs[self.rng.below(self.procs.len() as u64) as usize].pid;
                ("kill", json!({"target_pid": target, "signal": 15}), Some(0))
            }
        };
        self.row(idx, ts, kind, args, retval)
    }

    fn row(
        &mut self,
        idx: usize,
        ts: i64,
        kind: &str,
        args: serde_json::Value,
        retval: Option<i64>,
    ) -> LiveEvent {
        let p = &self.procs[idx];
        let tid = if self.rng.below(5) == 0 {
            p.pid + 1 + self.rng.below(8) as u32
        } else {
            p.pid
        };
        let (mnt_ns, pid_ns, cgroup) = match p.container {
            Some(c) => (
                4_026_532_500 + c as u32 * 7,
                4_026_532_501 + c as u32 * 7,
                9000 + c as u64 * 40,
            ),
            None => (4_026_531_841, 4_026_531_836, 1800 + (p.pid % 90) as u64),
        };
        LiveEvent {
            id: 0,
            ts,
            kind: traceed_wire::static_name(traceed_wire::KINDS, kind),
            pid: Some(p.pid),
            tid: Some(tid),
            ppid: Some(p.ppid),
            uid: Some(p.uid),
            gid: Some(p.uid),
            comm: Some(p.comm.as_str().into()),
            ns_pid: Some(p.ns_pid),
            exe: Some(p.exe.as_str().into()),
            cgroup_id: Some(cgroup),
            container_id: p.container.map(|c| self.containers[c].as_str().into()),
            mnt_ns: Some(mnt_ns),
            pid_ns: Some(pid_ns),
            retval,
            args: args.into(),
            fidelity: self.fidelity.clone().into(),
            proc: Some(traceed_wire::ProcKey(p.key)),
            lineage: Some(traceed_wire::Lineage {
                parent: p.parent,
                start: Some(p.start),
                announce: Vec::new(),
            }),
        }
    }
}

/// CPU seconds (user + system) so far of each of this process's threads,
/// summed by thread name (the writer's are traceed-sql and traceed-ckpt;
/// tokio-rt-worker encodes and publishes; the bench's main thread sends).
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // comm is in parentheses and may hold spaces; fields after it are
        // space-separated: utime and stime are the 12th and 13th.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
            .sum();
        *out.entry(name).or_default() += ticks / hz;
    }
    out
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir)?;
    let st = store::Store::open(&a.dir).await?;
    let counters = Arc::new(metrics::Counters::default());
    let (tx, rx) = mpsc::channel(65536);
    let live = store::live::Live::new(8);
    let writer = store::Writer::new(&st, rx, live, counters.clone(), a.batch).await?;
    let retention_stop = tokio::sync::watch::channel(false);
    let retention_task = if a.retention {
        // Age retention at half the span deletes continuously while writing.
        let r = retention::Retention::new(
            &st,
            retention::Policy {
                max_age: Duration::from_secs((a.span_h as u64 * 3600) / 2),
                max_bytes: u64::MAX,
                min_free_bytes: 0,
                interval: Duration::from_secs(1),
            },
        )
        .await?;
        Some(tokio::spawn(r.run(retention_stop.1.clone())))
    } else {
        None
    };

    let now = traceed_wire::now_ns();
    let span = a.span_h * HOUR;
    let start = now - span;
    let n = a.events;
    let rare_every = (n / 20).max(1);
    // Events are generated in rounds before the clock starts, so the rate
    // is the writer's (decoded events in, committed rows out), not the
    // generator's: on 2 cores a concurrent generator was the bottleneck.
    const ROUND: u64 = 500_000;
    let writer_task = tokio::spawn(writer.run());
    let mut g = Gen::new(a.run_mean);
    let mut insert_s = 0.0;
    let mut cpu_s: std::collections::BTreeMap<String, f64> = Default::default();
    let mut i = 0u64;
    // The build tree's root: pid, key and start.
    let mut build: Option<(u32, u64, i64)> = None;
    while i < n {
        let m = ROUND.min(n - i);
        let events: Vec<LiveEvent> = tokio::task::block_in_place(|| {
            (i..i + m)
                .map(|i| {
                    let ts = start + ((i as i128 * span as i128) / n as i128) as i64;
                    let mut e = g.event(ts);
                    if i % rare_every == rare_every / 2 {
                        e.comm = Some(RARE_COMM.into());
                    }
                    // The forensic needles: 20 reads of /etc/shadow and 20
                    // connects to 10.9.9.9:4444 in the whole store.
                    if i % rare_every == rare_every / 3 {
                        e.kind = "open".into();
                        e.args = serde_json::json!({"path": "/etc/shadow", "flags": 0, "mode": 0})
                            .into();
                    }
                    if i % rare_every == rare_every / 4 {
                        e.kind = "connect".into();
                        e.args =
                            serde_json::json!({"family": "inet", "addr": "10.9.9.9", "port": 4444})
                                .into();
                    }
                    e
                })
                .collect()
        });
        let mut events: Vec<LiveEvent> = events;
        if (i..i + m).contains(&(n / 2)) {
            let ts = start + span / 2;
            let (tree, pid, key) = g.build_tree(ts);
            events.extend(tree);
            build = Some((pid, key, ts));
        }
        let target = counters.events_total.load(Relaxed) + events.len() as u64;
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        for e in events {
            tx.send(e).await.context("writer stopped")?;
        }
        while counters.events_total.load(Relaxed) < target {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        insert_s += t0.elapsed().as_secs_f64();
        for (name, s) in thread_cpu() {
            *cpu_s.entry(name.clone()).or_default() += s - cpu0.get(&name).copied().unwrap_or(0.0);
        }
        i += m;
    }
    drop(tx);
    writer_task.await??;
    let _ = retention_stop.0.send(true);
    if let Some(t) = retention_task {
        t.await?;
    }
    let stored = counters.events_total.load(Relaxed);

    let pool = st.pool();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(pool)
        .await?;
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(pool)
        .await?;
    let psize: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(pool)
        .await?;
    let file = std::fs::metadata(st.path())?.len();
    let used = ((pages - free) * psize) as f64;

    let mut results: Vec<(String, f64, f64, usize)> = Vec::new();
    let queries: Vec<(&str, store::Query)> = vec![
        (
            "since=1h limit=100",
            store::Query {
                since: Some(traceed_wire::now_ns() - HOUR),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "comm=<rare> limit=100",
            store::Query {
                comm: Some(RARE_COMM.into()),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "since=1h kind=exec limit=100",
            store::Query {
                since: Some(traceed_wire::now_ns() - HOUR),
                kinds: vec!["exec".into()],
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "uid=33 limit=100",
            store::Query {
                uid: Some(33),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "comm=bash limit=1000",
            store::Query {
                comm: Some("bash".into()),
                limit: 1000,
                ..Default::default()
            },
        ),
        (
            "since=1h limit=10000",
            store::Query {
                since: Some(traceed_wire::now_ns() - HOUR),
                limit: 10000,
                ..Default::default()
            },
        ),
    ];
    use traceed_wire::query::{Cidr, PathMatch};
    let forensic: Vec<(&str, store::Query)> = vec![
        (
            "path=/etc/shadow (20 rows) limit=100",
            store::Query {
                path: Some(PathMatch::parse("/etc/shadow").map_err(anyhow::Error::msg)?),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "addr=10.9.9.9 (20 rows) limit=100",
            store::Query {
                addr: Some(Cidr::parse("10.9.9.9").map_err(anyhow::Error::msg)?),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "port=4444 (20 rows) limit=100",
            store::Query {
                port: Some(4444),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "path=/etc/* limit=100",
            store::Query {
                path: Some(PathMatch::parse("/etc/*").map_err(anyhow::Error::msg)?),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "path=/etc/* since=1h limit=1000",
            store::Query {
                path: Some(PathMatch::parse("/etc/*").map_err(anyhow::Error::msg)?),
                since: Some(traceed_wire::now_ns() - HOUR),
                limit: 1000,
                ..Default::default()
            },
        ),
        (
            "addr=10.9.0.0/16 (CIDR, 20 rows) limit=100",
            store::Query {
                addr: Some(Cidr::parse("10.9.0.0/16").map_err(anyhow::Error::msg)?),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "cmdline=base64 -d (no match) limit=100",
            store::Query {
                cmdline: Some("base64 -d".into()),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "cmdline=job-4242.sh (a few rows) limit=100",
            store::Query {
                cmdline: Some("job-4242.sh".into()),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "cmdline=-c /tmp/job-42 (thousands of rows) limit=100",
            store::Query {
                cmdline: Some("-c /tmp/job-42".into()),
                limit: 100,
                ..Default::default()
            },
        ),
    ];
    for (name, q) in queries.into_iter().chain(forensic) {
        let mut times = Vec::new();
        let mut got = 0;
        for _ in 0..a.runs {
            let t = Instant::now();
            let (evs, _) = st.query(&q).await?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            got = evs.len();
        }
        results.push((
            name.into(),
            pct(&mut times, 0.5),
            pct(&mut times, 0.95),
            got,
        ));
    }

    let day = store::Query {
        since: Some(traceed_wire::now_ns() - 24 * HOUR),
        ..Default::default()
    };
    let exec_day = store::Query {
        kinds: vec!["exec".into()],
        ..day.clone()
    };
    let hour = store::Query {
        since: Some(traceed_wire::now_ns() - HOUR),
        ..Default::default()
    };
    let counts = [
        ("count-by exe since=1d (top 20)", &day, "exe"),
        ("count-by comm since=1h (top 20)", &hour, "comm"),
        ("count-by exe kind=exec since=1d (top 20)", &exec_day, "exe"),
    ];
    for (name, q, by) in counts {
        let mut times = Vec::new();
        for _ in 0..a.runs.min(11) {
            let t = Instant::now();
            let (top, _, _) = st.count_by(q, by, 20).await?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(top);
        }
        results.push((name.into(), pct(&mut times, 0.5), pct(&mut times, 0.95), 20));
    }
    // Trees and descendants_of, as the API runs them: the pid at a time to
    // its instance, then the keys, then the rows.
    let (build_pid, build_key, build_ts) = build.context("no build tree generated")?;
    let leaf = g.procs[g.procs.len() / 2].key as i64;
    for (name, key) in [
        ("tree of a process (ancestry + descendants)", leaf),
        (
            "tree of the build root (1,000 descendants)",
            build_key as i64,
        ),
    ] {
        let mut times = Vec::new();
        let mut got = 0;
        for _ in 0..a.runs {
            let t = Instant::now();
            let tree = st.tree(key).await?.context("tree: no such process")?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            got = tree.ancestors.len() + tree.descendants.len();
        }
        results.push((
            name.into(),
            pct(&mut times, 0.5),
            pct(&mut times, 0.95),
            got,
        ));
    }
    let mut times = Vec::new();
    let mut got = 0;
    for _ in 0..a.runs {
        let t = Instant::now();
        let key = st
            .proc_at(build_pid, Some(build_ts + 1))
            .await?
            .context("descendants_of: no process at that time")?;
        let (keys, _) = st.proc_and_descendants(key).await?;
        let q = store::Query {
            procs: Some(keys),
            limit: 1000,
            ..Default::default()
        };
        got = st.query(&q).await?.0.len();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    results.push((
        "descendants_of the build root (1,001 processes) limit=1000".into(),
        pct(&mut times, 0.5),
        pct(&mut times, 0.95),
        got,
    ));
    let mut times = Vec::new();
    for _ in 0..a.runs {
        let t = Instant::now();
        std::hint::black_box(st.coverage(day.since, None).await?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    results.push((
        "coverage since=1d".into(),
        pct(&mut times, 0.5),
        pct(&mut times, 0.95),
        0,
    ));
    println!(
        "store benchmark: {n} events over {}h, runs of mean {} events per process, db {}",
        a.span_h,
        a.run_mean,
        st.path().display()
    );
    println!(
        "{}",
        if a.retention {
            "(age retention deleting concurrently)"
        } else {
            ""
        }
    );
    println!("| metric | value | target |");
    println!("|---|---|---|");
    println!("| sustained insert rate | {:.0} events/s ({stored} stored in {insert_s:.1} s) | >= 250000 |", stored as f64 / insert_s);
    println!(
        "| bytes per event (pages in use / rows) | {:.1} B | <= 150 |",
        used / rows.max(1) as f64
    );
    println!(
        "| file size / rows | {:.1} B ({} MiB, {rows} rows) | |",
        file as f64 / rows.max(1) as f64,
        file >> 20
    );
    let cpu_total: f64 = cpu_s.values().sum();
    println!(
        "| CPU per stored event while inserting | {:.2} us ({}) | |",
        cpu_total * 1e6 / stored.max(1) as f64,
        cpu_s
            .iter()
            .filter(|(_, s)| **s > 0.0)
            .map(|(n, s)| format!("{n} {:.2}", s * 1e6 / stored.max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (name, p50, p95, got) in results {
        let target = if name == "since=1h limit=100" || name.starts_with("comm=<rare>") {
            "p50 <= 50 ms"
        } else {
            ""
        };
        println!("| query {name} | p50 {p50:.2} ms, p95 {p95:.2} ms ({got} rows) | {target} |");
    }
    Ok(())
}
