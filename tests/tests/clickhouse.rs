//! `[export.clickhouse]` end to end: real `clickhouse-server` processes (two
//! shards of a `remote_servers` cluster, each on its own free localhost
//! ports, data dir and config file), two traceed daemons as two hosts, and
//! the ground truth: every event of each local store (read through the
//! daemon's API) is in ClickHouse exactly once, also across a kill -9 of
//! traceed mid-shipping and a kill -9 + restart of one shard.
//!
//! Skipped, with a line saying so, where clickhouse-server is not installed
//! (`.ci/run` installs it). The config refusals need no ClickHouse.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use traceed_tests::{
    bin, http_get, poll, spawn_fresh, split_http_answer, traceed_command, unique, Daemon,
    DaemonOpts, Program,
};
use traceed_wire::{Event, EventsPage, ExportStatus, Status};

fn clickhouse_server() -> Option<PathBuf> {
    ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// None (and a visible SKIP line) without clickhouse-server.
fn require_clickhouse(test: &str) -> Option<PathBuf> {
    let bin = clickhouse_server();
    if bin.is_none() {
        eprintln!(
            "SKIP {test}: clickhouse-server is not installed (apt-get install clickhouse-server clickhouse-client)"
        );
    }
    bin
}

/// The password of user `shipper` on every test server.
const SHIPPER_PASSWORD: &str = "pw-5hipper";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `clickhouse-server` on 127.0.0.1 with its own directory and ports.
struct ClickHouse {
    bin: PathBuf,
    dir: PathBuf,
    http: u16,
    child: Option<Child>,
}

impl ClickHouse {
    /// Start a server whose `remote_servers` has cluster `fleet` over the
    /// given shards' TCP ports (in shard order).
    fn start(bin: &Path, name: &str, http: u16, tcp: u16, shards: &[u16]) -> Self {
        Self::start_with(bin, name, http, tcp, shards, "")
    }

    /// `start`, with `extra` inside <yandex> (e.g. an https_port).
    fn start_with(
        bin: &Path,
        name: &str,
        http: u16,
        tcp: u16,
        shards: &[u16],
        extra: &str,
    ) -> Self {
        assert!(
            shards.contains(&tcp),
            "a server is one of its cluster's shards"
        );
        let dir = std::env::temp_dir().join(format!("traceed-ch-{}", unique(name)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let d = dir.display();
        let shards: String = shards
            .iter()
            .map(|p| {
                format!("<shard><replica><host>127.0.0.1</host><port>{p}</port></replica></shard>")
            })
            .collect();
        std::fs::write(
            dir.join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/err.log</errorlog></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <remote_servers><fleet>{shards}</fleet></remote_servers>
  {extra}
</yandex>
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("users.xml"),
            format!(r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default>
    <shipper><password>{SHIPPER_PASSWORD}</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></shipper></users>
  <quotas><default></default></quotas>
</yandex>
"#),
        )
        .unwrap();
        let mut ch = ClickHouse {
            bin: bin.into(),
            dir,
            http,
            child: None,
        };
        ch.spawn();
        ch
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join("log/stdout")).unwrap())
            .stderr(std::fs::File::create(self.dir.join("log/stderr")).unwrap())
            .spawn()
            .expect("spawn clickhouse-server");
        self.child = Some(child);
        let (http, dir) = (self.http, self.dir.clone());
        poll(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                    panic!("clickhouse-server exited with {st}:\n{}", self.log());
                }
                matches!(self.try_query("SELECT 1"), Ok((200, _))).then_some(())
            },
            || {
                format!(
                    "clickhouse-server on :{http} not answering after 30 s:\n{}",
                    read_log(&dir)
                )
            },
        );
    }

    fn log(&self) -> String {
        read_log(&self.dir)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (status, body) of a POSTed query.
    fn try_query(&self, sql: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(split_http_answer(&String::from_utf8_lossy(&buf)))
    }

    fn query(&self, sql: &str) -> String {
        let (code, body) = self
            .try_query(sql)
            .unwrap_or_else(|e| panic!("clickhouse :{}: {sql}: {e}", self.http));
        assert_eq!(code, 200, "clickhouse :{}: {sql}: {body}", self.http);
        body
    }

    /// Run every statement of `traceed export clickhouse-schema ARGS`.
    fn apply_schema(&self, args: &[&str]) {
        let out = Command::new(bin("traceed"))
            .args(["--config", "/dev/null", "export", "clickhouse-schema"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let ddl = String::from_utf8(out.stdout).unwrap();
        let sql: String = ddl
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            self.query(stmt);
        }
    }

    fn ids(&self, sql: &str) -> Vec<i64> {
        self.query(sql)
            .lines()
            .map(|l| l.trim().parse().unwrap_or_else(|_| panic!("{sql}: {l:?}")))
            .collect()
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn status(d: &Daemon) -> Status {
    let (code, body) = http_get(&d.socket, "/v1/status").expect("status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn export(d: &Daemon) -> ExportStatus {
    status(d).export.expect("status has no export object")
}

/// Every event of the daemon's store, oldest first, through the API.
fn all_events(d: &Daemon) -> Vec<Event> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/events?limit=10000&cursor={c}"),
            None => "/v1/events?limit=10000".to_string(),
        };
        let (code, body) = http_get(&d.socket, &path).unwrap();
        assert_eq!(code, 200, "{body}");
        let page: EventsPage = serde_json::from_str(&body).unwrap();
        out.extend(page.events);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

fn daemon_config(url: &str, host: &str, comm: &str) -> String {
    format!(
        "[scope.include]\ncomm = [\"{comm}\"]\n\
         [export.clickhouse]\nurl = \"{url}\"\nhost = \"{host}\"\nbatch_size = 100\ninterval = \"200ms\"\n"
    )
}

/// Move the recorded ClickHouse cursor of a stopped daemon's store back by
/// `by` ids; returns the new cursor.
fn rewind_cursor(db: &Path, by: i64) -> i64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            let last: i64 = sqlx::query_scalar(
                "UPDATE export_cursor SET last_id = max(0, last_id - ?) WHERE sink = 'clickhouse' \
                 RETURNING last_id",
            )
            .bind(by)
            .fetch_one(&pool)
            .await
            .unwrap();
            pool.close().await;
            last
        })
}

/// A server's stderr and error log.
fn read_log(dir: &Path) -> String {
    ["log/stderr", "log/err.log"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `prog` in a loop on a thread until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start(prog: Arc<Program>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                // A clean environment: cargo's LD_LIBRARY_PATH would make
                // the loader try dozens of paths, ~70 open events a run.
                let st = Command::new(&prog.path).env_clear().status();
                if st.is_ok() {
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wait until the daemon has shipped everything it stored (lag 0, cursor
/// at the newest id), and return that newest id.
fn wait_caught_up(d: &Daemon, who: &str, timeout: Duration) -> i64 {
    poll(
        timeout,
        Duration::from_millis(200),
        || {
            let x = export(d);
            let newest = all_events(d).last().map(|e| e.id).unwrap_or(0);
            (x.lag_events == 0 && x.cursor >= newest && newest > 0).then_some(newest)
        },
        || {
            format!(
                "{who}: export not caught up within {timeout:?}: {:?}\n{}",
                export(d),
                d.log_text()
            )
        },
    )
}

/// The ground truth for one daemon: its store's ids up to `upto`, each in
/// ClickHouse exactly once (FINAL), with the same content.
fn check_exactly_once(ch: &ClickHouse, d: &Daemon, host: &str, upto: i64) -> usize {
    let local: Vec<Event> = all_events(d).into_iter().filter(|e| e.id <= upto).collect();
    let local_ids: Vec<i64> = local.iter().map(|e| e.id).collect();
    let mut kinds = std::collections::BTreeMap::new();
    for e in &local {
        *kinds
            .entry((e.comm.clone().unwrap_or_default(), e.kind.clone()))
            .or_insert(0u64) += 1;
    }
    eprintln!("{host}: {} events up to id {upto}: {kinds:?}", local.len());
    let remote = ch.ids(&format!(
        "SELECT id FROM traceed.events FINAL WHERE host = '{host}' AND id <= {upto} ORDER BY id FORMAT TabSeparated"
    ));
    if remote != local_ids {
        let missing: Vec<&i64> = local_ids
            .iter()
            .filter(|i| !remote.contains(i))
            .take(20)
            .collect();
        let extra: Vec<&i64> = remote
            .iter()
            .filter(|i| !local_ids.contains(i))
            .take(20)
            .collect();
        panic!(
            "{host}: {} events in the store, {} rows in ClickHouse (FINAL); missing {missing:?}, extra {extra:?}",
            local_ids.len(),
            remote.len()
        );
    }
    let count: usize = ch
        .query(&format!(
            "SELECT count() FROM traceed.events FINAL WHERE host = '{host}' AND id <= {upto}"
        ))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, local_ids.len(), "{host}: count() FINAL");
    // Content: an exec row as the API shows it.
    let exec = local
        .iter()
        .rev()
        .find(|e| e.kind == "exec")
        .expect("an exec event");
    let row: serde_json::Value = serde_json::from_str(ch.query(&format!(
        "SELECT ts, ts_ns, kind, pid, ppid, uid, comm, exe, args, fidelity FROM traceed.events FINAL \
         WHERE host = '{host}' AND id = {} FORMAT JSONEachRow",
        exec.id
    ))
    .trim())
    .unwrap();
    // JSONEachRow quotes 64-bit integers.
    assert_eq!(row["ts_ns"].as_str().unwrap(), exec.ts.to_string(), "{row}");
    assert_eq!(row["kind"], "exec");
    assert_eq!(row["pid"].as_u64().map(|p| p as u32), exec.pid);
    assert_eq!(row["comm"].as_str(), exec.comm.as_deref());
    assert_eq!(row["exe"].as_str(), exec.exe.as_deref());
    assert_eq!(row["fidelity"].as_str(), Some(&*exec.fidelity));
    let args: serde_json::Value = serde_json::from_str(row["args"].as_str().unwrap()).unwrap();
    assert_eq!(args, exec.args);
    assert!(
        row["ts"]
            .as_str()
            .unwrap()
            .starts_with(&traceed_wire::format_ts(exec.ts)[..10]),
        "{row}"
    );
    local_ids.len()
}

#[test]
fn two_hosts_two_shards_exactly_once_across_kills() {
    let Some(chbin) = require_clickhouse("two_hosts_two_shards_exactly_once_across_kills") else {
        return;
    };
    let (h1, t1, h2, t2) = (free_port(), free_port(), free_port(), free_port());
    let s1 = ClickHouse::start(&chbin, "s1", h1, t1, &[t1, t2]);
    let mut s2 = ClickHouse::start(&chbin, "s2", h2, t2, &[t1, t2]);
    for s in [&s1, &s2] {
        s.apply_schema(&["--cluster", "fleet", "--ttl-days", "30"]);
    }
    // Host labels that the cluster places on different shards: hosts[i]
    // lives on shard i (Distributed: cityHash64(host) % 2, in config order).
    let tag = unique("h");
    let mut hosts: [Option<String>; 2] = [None, None];
    for i in 0.. {
        let label = format!("{tag}-{i}");
        let shard: usize = s1
            .query(&format!("SELECT cityHash64('{label}') % 2"))
            .trim()
            .parse()
            .unwrap();
        hosts[shard].get_or_insert(label);
        if hosts.iter().all(Option::is_some) {
            break;
        }
    }
    let [host_a, host_b] = hosts.map(Option::unwrap);
    let prog = Arc::new(Program::new("chx"));
    let url1 = format!("http://127.0.0.1:{h1}");
    let url2 = format!("http://localhost:{h2}/");
    let cfg_a = daemon_config(&url1, &host_a, &prog.name);
    let a = Daemon::start_with(DaemonOpts {
        config: Some(cfg_a.clone()),
        ..Default::default()
    });
    let b = Daemon::start_with(DaemonOpts {
        config: Some(daemon_config(&url2, &host_b, &prog.name)),
        ..Default::default()
    });
    let mut load = Load::start(prog.clone());

    // kill -9 traceed A while it ships: some acknowledged, more waiting.
    let before = poll(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let x = export(&a);
            (x.cursor >= 500 && x.lag_events > 0).then_some(x)
        },
        || {
            format!(
                "A never shipped while behind: {:?}\n{}",
                export(&a),
                a.log_text()
            )
        },
    );
    let a_dir = a.dir.clone();
    let mut a = a;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(a.pid() as i32, libc::SIGKILL) };
    let _ = a.child.wait();
    // The store stays: the Daemon's Drop would delete its directory.
    std::mem::forget(a);
    eprintln!(
        "killed traceed A at cursor {} with {} events waiting",
        before.cursor, before.lag_events
    );
    // The worst case of a kill -9: ClickHouse acknowledged batches whose
    // cursor never reached SQLite. Move A's recorded cursor back 250 ids, so
    // the restart sends rows ClickHouse already has.
    let rewound = rewind_cursor(&a_dir.join("events.db"), 250);
    assert!(
        rewound + 250 >= before.cursor,
        "recorded cursor {} is behind the one status showed ({})",
        rewound + 250,
        before.cursor
    );

    // kill -9 shard 2 (B's own server, and the shard B's rows live on):
    // B keeps storing and reports the failure.
    s2.kill9();
    let failing = poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let x = export(&b);
            (x.errors > 0 && x.last_error.is_some()).then_some(x)
        },
        || format!("B reported no error with its shard down: {:?}", export(&b)),
    );
    eprintln!("B with shard 2 down: {:?}", failing.last_error);
    // Ingest goes on: B stores what the load runs while its shard is down.
    let at_failure = status(&b).events_total;
    poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (status(&b).events_total >= at_failure + 100).then_some(()),
        || format!("B stored nothing new with its shard down: {:?}", status(&b)),
    );
    let stored_meanwhile = status(&b).events_total;
    assert!(
        stored_meanwhile > 0,
        "ingest must go on while ClickHouse is down"
    );
    s2.spawn();

    // A again, on the same store: it resumes from its recorded cursor.
    let a = Daemon::start_with(DaemonOpts {
        config: Some(cfg_a),
        dir: Some(a_dir),
        ..Default::default()
    });
    let resumed = export(&a);
    assert!(
        resumed.cursor >= rewound,
        "cursor went back: {} < {rewound}",
        resumed.cursor
    );
    // Fresh events for the restarted A to ship after what it resends.
    poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (status(&a).events_total >= 200).then_some(()),
        || format!("A stored too little after its restart: {:?}", status(&a)),
    );
    let runs = load.stop();
    eprintln!("{runs} runs of {}", prog.name);

    // Backoff is at most 60 s; a shard down for a few seconds costs less.
    let upto_a = wait_caught_up(&a, "A", Duration::from_secs(120));
    let upto_b = wait_caught_up(&b, "B", Duration::from_secs(120));
    assert_eq!(export(&a).lag_s, 0.0);
    assert_eq!(export(&b).lag_s, 0.0);
    let n_a = check_exactly_once(&s1, &a, &host_a, upto_a);
    let n_b = check_exactly_once(&s2, &b, &host_b, upto_b);
    eprintln!("exactly once: {host_a} {n_a} events, {host_b} {n_b} events");

    // Each host's rows live on its shard only, under one store_id.
    for (i, (s, host)) in [(&s1, &host_a), (&s2, &host_b)].into_iter().enumerate() {
        let other = [&s2, &s1][i];
        let here: u64 = s
            .query(&format!(
                "SELECT count() FROM traceed.events_local WHERE host = '{host}'"
            ))
            .trim()
            .parse()
            .unwrap();
        let there: u64 = other
            .query(&format!(
                "SELECT count() FROM traceed.events_local WHERE host = '{host}'"
            ))
            .trim()
            .parse()
            .unwrap();
        assert!(
            here > 0 && there == 0,
            "{host}: {here} rows on its shard, {there} on the other"
        );
        let ids = s.query(&format!(
            "SELECT DISTINCT store_id FROM traceed.events_local WHERE host = '{host}'"
        ));
        assert_eq!(ids.lines().count(), 1, "{host}: store ids {ids:?}");
    }
    assert_eq!(
        export(&a).store_id.as_deref(),
        s1.query(&format!(
            "SELECT any(store_id) FROM traceed.events WHERE host = '{host_a}'"
        ))
        .lines()
        .next()
    );
    // Repeats (a batch re-sent after a kill) are rows until a merge; FINAL
    // hid them above, OPTIMIZE FINAL removes them.
    let raw: u64 = s1
        .query(&format!(
            "SELECT count() FROM traceed.events WHERE host = '{host_a}' AND id <= {upto_a}"
        ))
        .trim()
        .parse()
        .unwrap();
    eprintln!("{host_a}: {raw} rows before merging, {n_a} events");
    // A sent the 250 rows after its rewound cursor again (ids are dense
    // here: no batch failed), and they were counted once above.
    // Compared with the cursor of the same status: A keeps recording (the
    // test's own tracectl runs), so the newest id moves on.
    poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let e = export(&a);
            (e.cursor >= upto_a && e.events_shipped as i64 == e.cursor - rewound).then_some(())
        },
        || {
            let e = export(&a);
            format!(
                "A shipped {} events since its restart, but its cursor moved from {rewound} to {}",
                e.events_shipped, e.cursor
            )
        },
    );
    for s in [&s1, &s2] {
        s.query("OPTIMIZE TABLE traceed.events_local FINAL");
    }
    let merged: u64 = s1
        .query(&format!(
            "SELECT count() FROM traceed.events_local WHERE host = '{host_a}' AND id <= {upto_a}"
        ))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(merged as usize, n_a);
    // The view answers like the SQLite events_view.
    let v: u64 = s2
        .query(&format!(
            "SELECT count() FROM traceed.events_view WHERE host = '{host_b}' AND id <= {upto_b}"
        ))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(v as usize, n_b);
    // /metrics says the same as status.
    let (_, metrics) = http_get(&b.socket, "/metrics").unwrap();
    assert!(
        metrics.lines().any(|l| l == "traceed_export_lag_events 0"),
        "{metrics}"
    );
    assert!(metrics.contains("traceed_export_bytes_total "), "{metrics}");
    let text = String::from_utf8(b.ctl(&["status"]).stdout).unwrap();
    assert!(text.contains("export:") && text.contains(&host_b), "{text}");
}

#[test]
fn unreachable_server_or_missing_table_is_a_warning_with_retries() {
    let Some(chbin) =
        require_clickhouse("unreachable_server_or_missing_table_is_a_warning_with_retries")
    else {
        return;
    };
    let prog = Program::new("chy");
    // Nothing listens there: the daemon starts, and says why it cannot ship.
    let closed = free_port();
    let down = Daemon::start_with(DaemonOpts {
        config: Some(daemon_config(
            &format!("http://127.0.0.1:{closed}"),
            "nowhere",
            &prog.name,
        )),
        ..Default::default()
    });
    let (h, t) = (free_port(), free_port());
    let ch = ClickHouse::start(&chbin, "one", h, t, &[t]);
    let cfg = format!(
        "{}table = \"late_events\"\n",
        daemon_config(&format!("http://127.0.0.1:{h}"), "late", &prog.name)
    );
    let late = Daemon::start_with(DaemonOpts {
        config: Some(cfg),
        ..Default::default()
    });
    prog.run(&[]);
    let x = poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || export(&down).last_error.map(|e| (e, export(&down))),
        || format!("no error reported: {:?}", export(&down)),
    );
    assert!(x.0.contains("cannot reach"), "{x:?}");
    assert_eq!(x.1.cursor, 0);
    let x = poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || export(&late).last_error,
        || format!("no error reported: {:?}", export(&late)),
    );
    assert!(x.contains("404") && x.contains("doesn't exist"), "{x}");
    assert!(
        export(&late).server_version.is_some(),
        "{:?}",
        export(&late)
    );
    // The table appears: the retries find it, and the lag returns to 0.
    ch.apply_schema(&["--table", "late_events"]);
    prog.run(&[]);
    let upto = wait_caught_up(&late, "late", Duration::from_secs(90));
    let n: usize = ch
        .query(&format!(
            "SELECT count() FROM traceed.late_events FINAL WHERE host = 'late' AND id <= {upto}"
        ))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, all_events(&late).iter().filter(|e| e.id <= upto).count());
    // The unreachable one still runs and still stores.
    assert!(export(&down).errors >= 2, "{:?}", export(&down));
    assert!(status(&down).events_total > 0);
}

/// A table made by an older `clickhouse-schema` (no `proc` column): rows
/// are shipped without it instead of every batch being refused, status
/// names the column, and the journal gives the ALTER TABLE that adds it.
#[test]
fn a_table_from_an_older_schema_ships_and_names_the_missing_column() {
    let Some(chbin) =
        require_clickhouse("a_table_from_an_older_schema_ships_and_names_the_missing_column")
    else {
        return;
    };
    let (h, t) = (free_port(), free_port());
    let ch = ClickHouse::start(&chbin, "old", h, t, &[t]);
    ch.apply_schema(&[]);
    ch.query("ALTER TABLE traceed.events DROP COLUMN proc");
    let prog = Program::new("cho");
    let d = Daemon::start_with(DaemonOpts {
        config: Some(daemon_config(
            &format!("http://127.0.0.1:{h}"),
            "old",
            &prog.name,
        )),
        ..Default::default()
    });
    prog.run(&[]);
    let upto = wait_caught_up(&d, "old", Duration::from_secs(60));
    let x = export(&d);
    assert_eq!(x.missing_columns, ["proc"], "{x:?}");
    assert_eq!(x.format.as_deref(), Some("RowBinary"), "{x:?}");
    assert!(x.last_error.is_none(), "{x:?}");
    let n: usize = ch
        .query(&format!(
            "SELECT count() FROM traceed.events FINAL WHERE host = 'old' AND id <= {upto}"
        ))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, all_events(&d).iter().filter(|e| e.id <= upto).count());
    let text = String::from_utf8(d.ctl_ok(&["status"])).unwrap();
    assert!(
        text.contains("warning: the table has no column proc"),
        "{text}"
    );
    // The advice in the journal works as written.
    let log = d.log_text();
    let alter = log
        .split("restart traceed: ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("no ALTER TABLE in the log: {log}"));
    assert_eq!(
        alter,
        "ALTER TABLE traceed.events ADD COLUMN proc Nullable(String) AFTER ppid"
    );
    ch.query(alter);
    let cols = ch.query(
        "SELECT name FROM system.columns WHERE database = 'traceed' AND table = 'events' \
         FORMAT TabSeparated",
    );
    let cols: Vec<&str> = cols.lines().collect();
    assert_eq!(cols.iter().position(|c| *c == "proc"), Some(9), "{cols:?}");

    // A table with a type of the user's own (and no proc): RowBinary would
    // misread it, so rows go as JSONEachRow, which ClickHouse converts.
    ch.apply_schema(&["--table", "custom_events"]);
    ch.query("ALTER TABLE traceed.custom_events DROP COLUMN proc");
    ch.query("ALTER TABLE traceed.custom_events MODIFY COLUMN cgroup_id Nullable(Int64)");
    let cfg = format!(
        "{}table = \"custom_events\"\n",
        daemon_config(&format!("http://127.0.0.1:{h}"), "custom", &prog.name)
    );
    let custom = Daemon::start_with(DaemonOpts {
        config: Some(cfg),
        ..Default::default()
    });
    prog.run(&[]);
    let upto = wait_caught_up(&custom, "custom", Duration::from_secs(60));
    let x = export(&custom);
    assert_eq!(x.format.as_deref(), Some("JSONEachRow"), "{x:?}");
    assert_eq!(x.missing_columns, ["proc"], "{x:?}");
    let local: Vec<Event> = all_events(&custom)
        .into_iter()
        .filter(|e| e.id <= upto)
        .collect();
    let shipped = ch.ids(&format!(
        "SELECT id FROM traceed.custom_events FINAL WHERE host = 'custom' AND id <= {upto} \
         ORDER BY id FORMAT TabSeparated"
    ));
    assert_eq!(shipped, local.iter().map(|e| e.id).collect::<Vec<_>>());
    let cgroups = ch
        .query("SELECT count() FROM traceed.custom_events WHERE host = 'custom' AND cgroup_id > 0");
    assert_eq!(
        cgroups.trim().parse::<usize>().unwrap(),
        local
            .iter()
            .filter(|e| e.cgroup_id.is_some_and(|c| c > 0))
            .count()
    );
}

/// ClickHouse down and a short max_age: retention deletes what was never
/// shipped (the store stays bounded), records exactly that many events in
/// `lost` rows with source export (plus the metric and a warning), and the
/// cursor skips them; once ClickHouse is up, shipping resumes after them,
/// sending nothing twice and not stalling.
#[test]
fn retention_of_unshipped_events_is_a_lost_row_and_shipping_resumes() {
    let Some(chbin) =
        require_clickhouse("retention_of_unshipped_events_is_a_lost_row_and_shipping_resumes")
    else {
        return;
    };
    let prog = Program::new("chr");
    let host = unique("ret");
    // Nothing listens on the HTTP port until the server starts below.
    let (h, t) = (free_port(), free_port());
    let cfg = format!(
        "{}[store]\nmax_age = \"10s\"\n",
        daemon_config(&format!("http://127.0.0.1:{h}"), &host, &prog.name)
    );
    let d = Daemon::start_with(DaemonOpts {
        config: Some(cfg),
        ..Default::default()
    });
    let pids: Vec<u32> = (0..20).map(|_| prog.run(&[])).collect();
    // Every run stored (an exit is a process's last event); in this scope
    // nothing else is recorded, so these are all the events there are.
    let burst = poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let all = all_events(&d);
            let exits = all
                .iter()
                .filter(|e| e.kind == "exit" && e.pid.is_some_and(|p| pids.contains(&p)))
                .count();
            (exits == pids.len()).then_some(all)
        },
        || format!("the runs were not all stored: {}", d.log_text()),
    );
    assert!(burst.iter().all(|e| e.kind != "lost"), "{burst:?}");
    let ids: Vec<i64> = burst.iter().map(|e| e.id).collect();
    let x = export(&d);
    assert_eq!(x.cursor, 0, "{x:?}");

    // Retention deletes them unshipped: lost rows with their exact count.
    let lost = poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let now = all_events(&d);
            if now.iter().any(|e| ids.contains(&e.id)) {
                return None;
            }
            let rows: Vec<Event> = now
                .into_iter()
                .filter(|e| e.kind == "lost" && e.args["source"] == "export")
                .collect();
            let sum: u64 = rows.iter().map(|e| e.args["count"].as_u64().unwrap()).sum();
            (sum >= ids.len() as u64).then_some(rows)
        },
        || {
            format!(
                "no lost rows (source export) for the {} deleted events: {:?}\n{}",
                ids.len(),
                all_events(&d)
                    .iter()
                    .map(|e| (e.id, &e.kind))
                    .collect::<Vec<_>>(),
                d.log_text()
            )
        },
    );
    let sum: u64 = lost.iter().map(|e| e.args["count"].as_u64().unwrap()).sum();
    assert_eq!(sum, ids.len() as u64, "lost rows {lost:?}");
    let from = lost.iter().map(|e| e.args["from"].as_str().unwrap()).min();
    let to = lost.iter().map(|e| e.args["to"].as_str().unwrap()).max();
    assert_eq!(from, Some(traceed_wire::format_ts(burst[0].ts).as_str()));
    assert_eq!(
        to,
        Some(traceed_wire::format_ts(burst.last().unwrap().ts).as_str())
    );
    // The cursor skipped the deleted range; the lag counts only what is left
    // (the lost rows and whatever the host did since; refreshed by the
    // sink's next turn at the latest).
    let x = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let x = export(&d);
            (x.cursor >= *ids.last().unwrap() && x.lag_events <= 2 * lost.len() as u64).then_some(x)
        },
        || format!("the lag still counts deleted events: {:?}", export(&d)),
    );
    assert!(x.cursor >= *ids.last().unwrap(), "{x:?}");
    let (_, metrics) = http_get(&d.socket, "/metrics").unwrap();
    let line = format!("traceed_export_lost_events_total {sum}");
    assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    // tracectl status: the loss next to the cursor.
    assert_eq!(export(&d).events_lost, sum);
    let text = String::from_utf8(d.ctl(&["status"]).stdout).unwrap();
    assert!(
        text.contains(&format!(
            "; {sum} lost: retention deleted them before shipping"
        )),
        "{text}"
    );
    assert!(
        d.log_text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("not yet shipped")),
        "no warning in the journal:\n{}",
        d.log_text()
    );

    // ClickHouse comes up: shipping resumes after the deleted range.
    let ch = ClickHouse::start(&chbin, "ret", h, t, &[t]);
    ch.apply_schema(&[]);
    prog.run(&[]);
    let upto = wait_caught_up(&d, "retention", Duration::from_secs(120));
    let remote = ch.ids(&format!(
        "SELECT id FROM traceed.events WHERE host = '{host}' ORDER BY id FORMAT TabSeparated"
    ));
    // Nothing sent twice (no FINAL here), nothing from the deleted range.
    let mut distinct = remote.clone();
    distinct.dedup();
    assert_eq!(distinct, remote, "rows sent twice");
    assert!(
        remote.iter().all(|i| !ids.contains(i)),
        "deleted ids arrived: {remote:?}"
    );
    assert_eq!(export(&d).events_shipped, remote.len() as u64);
    // Every event still stored is there (older shipped ones may be gone
    // from the store by now: max_age is 10 s).
    let local: Vec<i64> = all_events(&d)
        .iter()
        .map(|e| e.id)
        .filter(|&i| i <= upto)
        .collect();
    assert!(
        local.iter().all(|i| remote.contains(i)),
        "store {local:?}, ClickHouse {remote:?}"
    );
    // The loss itself reached the fleet.
    let shipped_lost: u64 = ch
        .query(&format!(
            "SELECT count() FROM traceed.events WHERE host = '{host}' AND kind = 'lost' \
             AND visitParamExtractString(args, 'source') = 'export'"
        ))
        .trim()
        .parse()
        .unwrap();
    assert!(shipped_lost >= 1, "no lost row in ClickHouse");
    let text = String::from_utf8(d.ctl(&["status"]).stdout).unwrap();
    assert!(text.contains("export:"), "{text}");
}

/// A refused password is a status error and a journal warning with
/// retries, not a refused start; the right password (from a 0600 file)
/// ships. A non-200 answer's first line is in the journal.
#[test]
fn refused_password_is_a_warning_with_retries_and_the_right_one_ships() {
    let Some(chbin) =
        require_clickhouse("refused_password_is_a_warning_with_retries_and_the_right_one_ships")
    else {
        return;
    };
    let prog = Program::new("chp");
    let (h, t) = (free_port(), free_port());
    let ch = ClickHouse::start(&chbin, "pw", h, t, &[t]);
    ch.apply_schema(&[]);
    let dir = std::env::temp_dir().join(format!("traceed-chpw-{}", unique("p")));
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = |host: &str, password: &str| {
        use std::os::unix::fs::PermissionsExt;
        let pw = dir.join(host);
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        Daemon::start_with(DaemonOpts {
            config: Some(format!(
                "{}user = \"shipper\"\npassword_file = \"{}\"\n",
                daemon_config(&format!("http://127.0.0.1:{h}"), host, &prog.name),
                pw.display()
            )),
            ..Default::default()
        })
    };
    let wrong = daemon("wrongpw", "not-it");
    let right = daemon("rightpw", SHIPPER_PASSWORD);
    prog.run(&[]);
    let x = poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let x = export(&wrong);
            (x.errors >= 2).then_some(x)
        },
        || format!("no retried error: {:?}", export(&wrong)),
    );
    let err = x.last_error.clone().unwrap();
    assert!(err.contains("answered") && err.contains("shipper"), "{x:?}");
    assert!(!err.contains('\n'), "one line: {err:?}");
    assert_eq!(x.cursor, 0);
    // The journal has the answer's first line and the backoff.
    let log = wrong.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&err) && l.contains("retrying in")),
        "{err:?} not in the journal:\n{log}"
    );
    // It records all the same.
    assert!(status(&wrong).events_total > 0);
    // The same server with the right password: every event, once.
    let upto = wait_caught_up(&right, "rightpw", Duration::from_secs(60));
    let n: usize = ch
        .query(&format!(
            "SELECT count() FROM traceed.events WHERE host = 'rightpw' AND id <= {upto}"
        ))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        n,
        all_events(&right).iter().filter(|e| e.id <= upto).count()
    );
    // tracectl status shows the cursor, lag, bytes and the last error.
    let text = String::from_utf8(wrong.ctl(&["status"]).stdout).unwrap();
    assert!(
        text.contains("shipped through id 0")
            && text.contains("last error")
            && text.contains("MiB"),
        "{text}"
    );
    let (_, metrics) = http_get(&wrong.socket, "/metrics").unwrap();
    for name in [
        "traceed_export_cursor 0",
        "traceed_export_lag_events ",
        "traceed_export_lag_seconds ",
        "traceed_export_errors_total ",
        "traceed_export_bytes_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "{name} in\n{metrics}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A private CA and a certificate for 127.0.0.1 signed by it, made with
/// the openssl CLI in `dir`: (ca.pem, server.pem, server.key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package openssl)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=traceed test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// https: a real clickhouse-server's https_port with a certificate from a
/// private CA. With `ca_file` naming that CA every event arrives; without
/// it (the system's roots) the handshake is refused and status says why.
#[test]
fn https_with_a_private_ca_ships_and_an_unknown_ca_is_refused() {
    let Some(chbin) =
        require_clickhouse("https_with_a_private_ca_ships_and_an_unknown_ca_is_refused")
    else {
        return;
    };
    let certs = std::env::temp_dir().join(format!("traceed-chtls-{}", unique("c")));
    let (ca, cert, key) = make_certificates(&certs);
    let (h, t, hs) = (free_port(), free_port(), free_port());
    let ch = ClickHouse::start_with(
        &chbin,
        "tls",
        h,
        t,
        &[t],
        &format!(
            "<https_port>{hs}</https_port>\n  <openSSL><server><certificateFile>{}</certificateFile>\
             <privateKeyFile>{}</privateKeyFile><verificationMode>none</verificationMode>\
             <loadDefaultCAFile>false</loadDefaultCAFile><disableProtocols>sslv2,sslv3</disableProtocols>\
             </server></openSSL>",
            cert.display(),
            key.display()
        ),
    );
    ch.apply_schema(&[]);
    let prog = Program::new("chs");
    let url = format!("https://127.0.0.1:{hs}");
    let trusted = Daemon::start_with(DaemonOpts {
        config: Some(format!(
            "{}ca_file = \"{}\"\n",
            daemon_config(&url, "tls-ok", &prog.name),
            ca.display()
        )),
        ..Default::default()
    });
    let untrusted = Daemon::start_with(DaemonOpts {
        config: Some(daemon_config(&url, "tls-unknown", &prog.name)),
        ..Default::default()
    });
    prog.run(&[]);
    let upto = wait_caught_up(&trusted, "tls-ok", Duration::from_secs(60));
    let x = export(&trusted);
    assert_eq!(
        x.server_version.as_deref(),
        Some(ch.query("SELECT version()").trim())
    );
    let n: usize = ch
        .query(&format!(
            "SELECT count() FROM traceed.events FINAL WHERE host = 'tls-ok' AND id <= {upto}"
        ))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        n,
        all_events(&trusted).iter().filter(|e| e.id <= upto).count()
    );
    let err = poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || export(&untrusted).last_error,
        || format!("no error without the CA: {:?}", export(&untrusted)),
    );
    assert!(err.contains("certificate"), "{err}");
    let none: u64 = ch
        .query("SELECT count() FROM traceed.events WHERE host = 'tls-unknown'")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(none, 0);
    let _ = std::fs::remove_dir_all(&certs);
}

/// Config errors refuse the start with exit 78 and the key's name.
#[test]
fn clickhouse_config_errors_exit_78_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("traceed-chcfg-{}", unique("c")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ok = "url = \"http://127.0.0.1:9\"\n";
    for (body, key) in [
        (
            "url = \"ftp://127.0.0.1:8123\"\n".to_string(),
            "export.clickhouse.url",
        ),
        (
            "url = \"https://127.0.0.1:8443\"\nca_file = \"/dev/null\"\n".to_string(),
            "export.clickhouse.ca_file",
        ),
        (
            format!("{ok}batch_size = 0\n"),
            "export.clickhouse.batch_size",
        ),
        (
            format!("{ok}password_file = \"{}\"\n", pw.display()),
            "export.clickhouse.password_file",
        ),
    ] {
        let cfg = dir.join("traceed.toml");
        std::fs::write(&cfg, format!("[export.clickhouse]\n{body}")).unwrap();
        let out = traceed_command(false)
            .arg("--config")
            .arg(&cfg)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("s.sock"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{body:?}: {err}");
        assert!(
            err.contains(key) && err.contains("line "),
            "{body:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A ClickHouse integer as JSONEachRow prints it: 64-bit ones quoted.
fn ch_int(v: &serde_json::Value) -> Option<i128> {
    match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Every shipped row equals its local event, column by column: names and
/// args with bytes that are not UTF-8 (rendered `\xNN`), quotes, escapes
/// and newlines; args byte for byte as the API's JSON of them.
#[test]
fn shipped_rows_are_the_local_events_field_by_field() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let Some(chbin) = require_clickhouse("shipped_rows_are_the_local_events_field_by_field") else {
        return;
    };
    let (h, t) = (free_port(), free_port());
    let ch = ClickHouse::start(&chbin, "rows", h, t, &[t]);
    ch.apply_schema(&[]);
    // /bin/true under a directory whose name is not UTF-8.
    let name = unique("chf");
    let mut dir = std::env::temp_dir().into_os_string().into_vec();
    dir.extend_from_slice(format!("/traceed-ch-{name}-").as_bytes());
    dir.extend_from_slice(b"\xff\\x41\"q\"\nd");
    let dir = PathBuf::from(OsStr::from_bytes(&dir));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join(&name);
    std::fs::copy("/bin/true", &exe).unwrap();
    let host = unique("rows");
    let d = Daemon::start_with(DaemonOpts {
        config: Some(daemon_config(
            &format!("http://127.0.0.1:{h}"),
            &host,
            &name,
        )),
        ..Default::default()
    });
    let mut pids = Vec::new();
    for arg in [&b"arg\xfe\\x41\x1b\"q\"\n"[..], b"{\"k\":[1,2]}", b"plain"] {
        let mut child = spawn_fresh(Command::new(&exe).arg(OsStr::from_bytes(arg)));
        pids.push(child.id());
        child.wait().unwrap();
    }
    // A run whose fork the scope does not see (its parent is not in scope)
    // gets its key from /proc while it runs: one that waits to be seen.
    let sleeper_dir = std::env::temp_dir().join(format!("traceed-ch-{name}-sleep"));
    std::fs::create_dir_all(&sleeper_dir).unwrap();
    let sleeper = sleeper_dir.join(&name);
    std::fs::copy("/bin/sleep", &sleeper).unwrap();
    let mut child = spawn_fresh(Command::new(&sleeper).arg("60"));
    let sleeper_pid = child.id();
    poll(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            all_events(&d)
                .iter()
                .any(|e| e.kind == "exec" && e.pid == Some(sleeper_pid) && e.proc.is_some())
                .then_some(())
        },
        || format!("no keyed exec of the sleeper: {}", d.log_text()),
    );
    let _ = child.kill();
    child.wait().unwrap();
    pids.push(sleeper_pid);
    poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let all = all_events(&d);
            pids.iter()
                .all(|p| all.iter().any(|e| e.kind == "exit" && e.pid == Some(*p)))
                .then_some(())
        },
        || format!("the runs were not all stored: {}", d.log_text()),
    );
    let upto = wait_caught_up(&d, "rows", Duration::from_secs(60));
    assert_eq!(export(&d).format.as_deref(), Some("RowBinary"));
    let store_id = export(&d).store_id.expect("store_id");
    let local: Vec<Event> = all_events(&d)
        .into_iter()
        .filter(|e| e.id <= upto)
        .collect();
    let execs: Vec<&Event> = local
        .iter()
        .filter(|e| {
            e.kind == "exec"
                && e.comm.as_deref() == Some(name.as_str())
                && e.pid != Some(sleeper_pid)
        })
        .collect();
    assert!(
        execs.len() >= 3
            && execs
                .iter()
                .all(|e| e.exe.as_deref().is_some_and(|x| x.contains("\\xff"))),
        "execs with the rendered directory: {execs:?}"
    );
    let text = ch.query(&format!(
        "SELECT *, toUInt32(ts) AS ts_secs FROM traceed.events FINAL WHERE host = '{host}' \
         AND id <= {upto} ORDER BY id FORMAT JSONEachRow"
    ));
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(rows.len(), local.len(), "{text}");
    let mut columns: Vec<&str> = vec![
        "host",
        "store_id",
        "id",
        "ts",
        "ts_secs",
        "ts_ns",
        "kind",
        "pid",
        "tid",
        "ppid",
        "proc",
        "uid",
        "gid",
        "comm",
        "ns_pid",
        "exe",
        "cgroup_id",
        "container_id",
        "mnt_ns",
        "pid_ns",
        "retval",
        "args",
        "fidelity",
    ];
    columns.sort_unstable();
    for (row, e) in rows.iter().zip(&local) {
        let mut keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, columns, "a column not compared below: {row}");
        let int = |k: &str| ch_int(&row[k]);
        let s = |k: &str| row[k].as_str();
        let ctx = format!("{row}\n{e:?}");
        assert_eq!(s("host"), Some(host.as_str()), "{ctx}");
        assert_eq!(s("store_id"), Some(store_id.as_str()), "{ctx}");
        assert_eq!(int("id"), Some(e.id.into()), "{ctx}");
        assert_eq!(int("ts_ns"), Some(e.ts.into()), "{ctx}");
        assert_eq!(int("ts_secs"), Some((e.ts / 1_000_000_000).into()), "{ctx}");
        assert_eq!(s("kind"), Some(&*e.kind), "{ctx}");
        for (k, v) in [
            ("pid", e.pid),
            ("tid", e.tid),
            ("ppid", e.ppid),
            ("uid", e.uid),
            ("gid", e.gid),
            ("ns_pid", e.ns_pid),
            ("mnt_ns", e.mnt_ns),
            ("pid_ns", e.pid_ns),
        ] {
            assert_eq!(int(k), v.map(i128::from), "{k}: {ctx}");
        }
        assert_eq!(int("cgroup_id"), e.cgroup_id.map(i128::from), "{ctx}");
        assert_eq!(int("retval"), e.retval.map(i128::from), "{ctx}");
        assert_eq!(s("comm"), e.comm.as_deref(), "{ctx}");
        assert_eq!(s("exe"), e.exe.as_deref(), "{ctx}");
        assert_eq!(
            s("proc").map(String::from),
            e.proc.map(|k| k.to_string()),
            "{ctx}"
        );
        assert_eq!(s("container_id"), e.container_id.as_deref(), "{ctx}");
        assert_eq!(s("fidelity"), Some(&*e.fidelity), "{ctx}");
        // args: a JSON object text with the event's members (in the order
        // they were stored: a kind's field order, not the API's sorted one).
        let shipped: Option<serde_json::Value> = s("args").map(|t| {
            serde_json::from_str(t).unwrap_or_else(|err| panic!("args {t:?}: {err}: {ctx}"))
        });
        assert_eq!(shipped.as_ref(), Some(&e.args), "{ctx}");
    }
    // The argv that is not UTF-8 arrived as the API renders it.
    let argv: Vec<String> = execs
        .iter()
        .filter_map(|e| e.args["argv"].get(1)?.as_str().map(String::from))
        .collect();
    assert!(argv.iter().any(|a| a.contains("\\xfe")), "{argv:?}");
    // The README's query: one process's events by the key tracectl shows.
    let key = local
        .iter()
        .find(|e| e.kind == "exec" && e.pid == Some(sleeper_pid))
        .and_then(|e| e.proc)
        .expect("the sleeper's exec has a process key");
    let by_key = ch.ids(&format!(
        "SELECT id FROM traceed.events FINAL WHERE host = '{host}' AND proc = '{key}' \
         AND id <= {upto} ORDER BY id FORMAT TabSeparated"
    ));
    let want: Vec<i64> = local
        .iter()
        .filter(|e| e.proc == Some(key))
        .map(|e| e.id)
        .collect();
    assert!(want.len() >= 2, "exec and exit at least: {want:?}");
    assert_eq!(by_key, want);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&sleeper_dir);
}
