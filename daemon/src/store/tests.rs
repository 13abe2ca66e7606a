//! Unit tests of the store: round trips through the real Writer, the
//! planner against a scan, query plans, retention, upgrades.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Row, SqlitePool};
use tokio::sync::mpsc;
use traceed_wire::payload::Payload;
use traceed_wire::Event;

use super::live::Live;
use super::writer::PAUSED_RETRY_FOR_TESTS;
use super::{Query, Store, Writer, BLOCK_SHIFT, MIGRATOR};
use crate::service::metrics::Counters;
use crate::store::retention::{Policy, Retention};

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("traceed-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn ev(ts: i64, kind: &str, pid: u32, comm: &str) -> Event {
    let mut e = Event::lost(Some(0), "kernel", ts, ts, "core");
    e.kind = kind.to_string().into();
    e.pid = Some(pid);
    e.tid = Some(pid);
    e.uid = Some(pid % 3);
    e.comm = Some(comm.into());
    e.exe = Some(format!("/usr/bin/{comm}").into());
    e.container_id = pid
        .is_multiple_of(5)
        .then(|| format!("c0ffee{:x}{:057x}", pid % 2, pid % 2).into());
    e.args = serde_json::json!({"path": format!("/tmp/f{}", pid % 100), "flags": 0});
    e
}

/// Write `events` through a real Writer and wait until it stopped.
pub async fn write_all<A: Into<Payload>>(store: &Store, events: Vec<Event<A>>) -> Vec<Event> {
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel(events.len().max(1));
    let live = Live::new(events.len().max(1) + 1);
    let mut sub = live.subscribe();
    let w = Writer::new(store, rx, live, counters, 512).await.unwrap();
    let task = tokio::spawn(w.run());
    for e in events {
        tx.send(e.map_args(Into::into)).await.unwrap();
    }
    drop(tx);
    task.await.unwrap().unwrap();
    let mut out = Vec::new();
    while let Some(r) = sub.try_recv() {
        assert_eq!(r.skipped, 0);
        out.extend(
            r.batch
                .events
                .iter()
                .map(|e| e.clone().map_args(|a| a.to_value())),
        );
    }
    out
}

/// The decoder's typed args are stored as the same JSON they serialise to,
/// and their paths and addresses are indexed like JSON args.
#[tokio::test]
async fn typed_args_read_back_as_their_json() {
    use traceed_wire::payload::{self as p, Args, NameOrNumber};
    fn a<T>(fields: T, truncated: bool) -> Args<T> {
        Args {
            fields,
            truncated,
            escaped: false,
        }
    }
    let s = |x: &str| Some(x.to_string());
    let payloads: Vec<(&'static str, Payload)> = vec![
        (
            "exec",
            a(
                p::Exec {
                    filename: s("/bin/sh"),
                    argv: vec!["sh".into(), "-c".into(), "echo \"hi\\\"".into()],
                    interpreter: None,
                    exe_ctime: s("2026-01-01T00:00:00Z"),
                    argc: Some(3),
                    argv_bytes: None,
                    cwd: s("/root"),
                },
                true,
            )
            .into(),
        ),
        ("fork", a(p::Fork {}, false).into()),
        (
            "open",
            a(
                p::Open {
                    path: s("/etc/typed"),
                    flags: 0o101,
                    mode: 0o644,
                    count: None,
                    last: None,
                },
                false,
            )
            .into(),
        ),
        (
            "connect",
            a(
                p::Sock {
                    fd: 3,
                    family: s("inet6"),
                    addr: s("2001:db8::1"),
                    port: Some(443),
                },
                false,
            )
            .into(),
        ),
        (
            "kill",
            a(
                p::Kill {
                    target_pid: 4,
                    signal: 9,
                    target_tid: None,
                },
                false,
            )
            .into(),
        ),
        (
            "syscall",
            a(
                p::Syscall {
                    syscall: NameOrNumber::Number(451),
                    nr: 451,
                    args: [1, 2, 3, 4, 5, u64::MAX],
                },
                false,
            )
            .into(),
        ),
    ];
    let dir = temp_dir("typed");
    let store = Store::open(&dir).await.unwrap();
    let events: Vec<traceed_wire::LiveEvent> = payloads
        .iter()
        .enumerate()
        .map(|(i, (kind, args))| {
            let mut e = ev(1_000 + i as i64, kind, 7, "t").map_args(Payload::Json);
            e.args = args.clone();
            e
        })
        .collect();
    write_all(&store, events).await;
    let back = all(&store).await;
    assert_eq!(back.len(), payloads.len());
    for (e, (kind, args)) in back.iter().zip(&payloads) {
        assert_eq!(&*e.kind, *kind);
        assert_eq!(e.args, args.to_value(), "{kind}");
    }
    let found = |q: Query| async move { store.query(&q).await.unwrap().0 };
    let by_path = found(Query {
        path: Some(traceed_wire::query::PathMatch::parse("/etc/*").unwrap()),
        limit: 10,
        ..Query::default()
    })
    .await;
    assert_eq!(by_path.len(), 1);
    assert_eq!(by_path[0].kind, "open");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A queue full of execs with long command lines is written in batches of
/// at most BATCH_HEAVY_BYTES of them (or one exec), in order, each command
/// line whole; without the cut the writer took all 4,096 at once.
/// `[store] commit_interval`: a trickle is committed at most once per
/// interval, a whole batch waiting is committed at once, and a closed
/// queue does not wait out the interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_wait_for_the_interval_unless_a_batch_is_waiting() {
    let dir = temp_dir("linger");
    let store = Store::open(&dir).await.unwrap();
    let writer = |counters: Arc<Counters>, live: Live, rx, gap, batch| {
        let store = &store;
        async move {
            Writer::new(store, rx, live, counters, batch)
                .await
                .unwrap()
                .with_commit_interval(gap)
        }
    };

    // A trickle: each event sent once the writer has taken the one
    // before, so without the interval every event would be its own commit.
    let counters = Arc::new(Counters::default());
    let live = Live::new(1024);
    let mut sub = live.subscribe();
    let (tx, rx) = mpsc::channel(1024);
    let gap = Duration::from_millis(100);
    let task = tokio::spawn(writer(counters.clone(), live, rx, gap, 1024).await.run());
    let t0 = std::time::Instant::now();
    for i in 0..250 {
        tx.send(ev(1_000 + i, "open", 7, "t").map_args(Payload::Json))
            .await
            .unwrap();
        let taken = std::time::Instant::now();
        while tx.capacity() < tx.max_capacity() {
            assert!(
                taken.elapsed() < Duration::from_secs(10),
                "the writer did not take event {i}"
            );
            tokio::task::yield_now().await;
        }
    }
    let elapsed = t0.elapsed();
    drop(tx);
    task.await.unwrap().unwrap();
    let mut stored = 0;
    while let Some(r) = sub.try_recv() {
        stored += r.batch.events.len();
    }
    assert_eq!(stored, 250);
    let commits = counters.commits.load(Relaxed);
    let most = (elapsed.as_millis() / gap.as_millis()) as u64 + 2;
    assert!(
        (2..=most).contains(&commits),
        "{commits} commits in {elapsed:?}, with one allowed per {gap:?}"
    );

    // Three whole batches at once, with an interval longer than the wait.
    let counters = Arc::new(Counters::default());
    let live = Live::new(1024);
    let mut sub = live.subscribe();
    let (tx, rx) = mpsc::channel(1024);
    for i in 0..3 * 64 {
        tx.try_send(ev(5_000 + i, "open", 7, "t").map_args(Payload::Json))
            .unwrap();
    }
    let gap = Duration::from_secs(5);
    let task = tokio::spawn(writer(counters.clone(), live, rx, gap, 64).await.run());
    let t0 = std::time::Instant::now();
    let mut stored = 0;
    while stored < 3 * 64 {
        let r = tokio::time::timeout(Duration::from_secs(4), sub.recv())
            .await
            .expect("whole batches are committed without waiting for the interval")
            .unwrap();
        stored += r.batch.events.len();
    }
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(counters.commits.load(Relaxed), 3);
    // Closing the queue ends the wait too.
    tx.try_send(ev(9_000, "open", 7, "t").map_args(Payload::Json))
        .unwrap();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(4), task)
        .await
        .expect("a closed queue does not wait out the interval")
        .unwrap()
        .unwrap();
    assert_eq!(all(&store).await.len(), 250 + 3 * 64 + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn long_command_lines_cut_the_batch() {
    use traceed_wire::payload::{Args, Exec};
    let dir = temp_dir("heavy");
    let store = Store::open(&dir).await.unwrap();
    let arg = "x".repeat(100 << 10);
    let events: Vec<traceed_wire::LiveEvent> = (0..200)
        .map(|i| {
            let mut e = ev(1_000 + i, "open", 9, "t").map_args(Payload::Json);
            if i % 2 == 0 {
                e.kind = "exec".into();
                e.args = Args {
                    fields: Exec {
                        filename: Some("/bin/t".into()),
                        argv: vec!["t".into(), format!("{i}{arg}")],
                        interpreter: None,
                        exe_ctime: None,
                        argc: Some(2),
                        argv_bytes: None,
                        cwd: None,
                    },
                    truncated: false,
                    escaped: false,
                }
                .into();
            }
            e
        })
        .collect();
    let heavy: usize = events.iter().map(super::heavy_bytes).sum();
    assert!(heavy > 3 * super::BATCH_HEAVY_BYTES);
    let counters = Arc::new(Counters::default());
    counters.queue_heavy_bytes.store(heavy as u64, Relaxed);
    let (tx, rx) = mpsc::channel(events.len());
    for e in events {
        tx.try_send(e).unwrap();
    }
    drop(tx);
    let live = Live::new(1024);
    let mut sub = live.subscribe();
    let w = Writer::new(&store, rx, live, counters.clone(), 4096)
        .await
        .unwrap();
    w.run().await.unwrap();
    let mut batches = Vec::new();
    while let Some(r) = sub.try_recv() {
        batches.push(r.batch);
    }
    assert!(batches.len() > 3, "{} batches", batches.len());
    for b in &batches {
        let h: usize = b.events.iter().map(super::heavy_bytes).sum();
        assert!(
            b.events.len() == 1 || h <= super::BATCH_HEAVY_BYTES,
            "{h} bytes in a batch of {}",
            b.events.len()
        );
    }
    assert_eq!(counters.queue_heavy_bytes.load(Relaxed), 0);
    let back = all(&store).await;
    assert_eq!(back.len(), 200);
    for (i, e) in back.iter().enumerate() {
        assert_eq!(e.ts, 1_000 + i as i64);
        if i % 2 == 0 {
            assert_eq!(e.kind, "exec");
            let argv = e.args["argv"].as_array().unwrap();
            assert_eq!(argv[1].as_str().unwrap(), format!("{i}{arg}"));
        } else {
            assert_eq!(e.kind, "open");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn all(store: &Store) -> Vec<Event> {
    let mut out = Vec::new();
    let mut q = Query {
        limit: 10_000,
        ..Query::default()
    };
    loop {
        let (page, more) = store.query(&q).await.unwrap();
        q.after_id = page.last().map(|e| e.id);
        out.extend(page);
        if !more {
            return out;
        }
    }
}

/// The ids `f` selects, read page by page (`limit` rows, in `desc` order),
/// in ascending order. Each page keeps to its limit, and `more` never
/// comes with an empty page.
async fn paged_ids(store: &Store, f: &Query, desc: bool, limit: u32) -> Vec<i64> {
    let mut q = Query {
        desc,
        limit,
        ..f.clone()
    };
    let mut got = Vec::new();
    loop {
        let (page, more) = store.query(&q).await.unwrap();
        assert!(page.len() <= limit as usize);
        got.extend(page.iter().map(|e| e.id));
        if !more {
            break;
        }
        assert!(!page.is_empty(), "{f:?}: more with an empty page");
        q.after_id = got.last().copied();
    }
    if desc {
        got.reverse();
    }
    got
}

const MIN: i64 = 60_000_000_000;
const MS: i64 = 1_000_000;

/// `n` open events one a minute apart, the newest a minute before `now`.
fn minutely(now: i64, n: i64) -> Vec<Event> {
    (0..n)
        .map(|i| ev(now - (n - i) * MIN, "open", i as u32, "x"))
        .collect()
}

/// events_view (for sqlite3 CLI users and bench/) shows exactly what
/// the API shows: strings resolved, namespaces absolute, args an object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_view_agrees_with_the_api() {
    let dir = temp_dir("view");
    let store = Store::open(&dir).await.unwrap();
    let now = traceed_wire::now_ns();
    let mut exec = ev(now, "exec", 42, "sh");
    exec.mnt_ns = Some(4026531841);
    exec.args = serde_json::json!({"filename": "/bin/sh", "argv": ["sh", "-c", "a \"b\""], "truncated": false});
    // The top bit set: stored as a negative integer, shown as the API's hex.
    exec.proc = Some(traceed_wire::ProcKey(0xfedc_ba98_7654_3210));
    let mut unkeyed = ev(now + 1, "open", 43, "cat");
    unkeyed.args = serde_json::json!([1, "x"]);
    let lost = Event::lost(Some(7), "kernel", now - 5, now, "core");
    write_all(&store, vec![exec, unkeyed, lost]).await;
    let api = all(&store).await;
    // id, kind, comm, container_id, mnt_ns, args, fidelity, proc
    type ViewRow = (
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<i64>,
        String,
        String,
        Option<String>,
    );
    let view: Vec<ViewRow> = sqlx::query_as(
        "SELECT id, kind, comm, container_id, mnt_ns, args, fidelity, proc FROM events_view ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(view.len(), api.len());
    assert_eq!(
        view[0].7.as_deref(),
        Some("fedcba9876543210"),
        "the exec's key"
    );
    for (v, e) in view.iter().zip(&api) {
        assert_eq!(
            (v.0, &v.1, &v.2, &v.3, v.4, &v.6, &v.7),
            (
                e.id,
                &e.kind.to_string(),
                &e.comm.as_deref().map(String::from),
                &e.container_id.as_deref().map(String::from),
                e.mnt_ns.map(i64::from),
                &e.fidelity.to_string(),
                &e.proc.map(|k| k.to_string())
            )
        );
        let args: serde_json::Value = serde_json::from_str(&v.5).unwrap();
        assert_eq!(args, e.args, "row {}", e.id);
    }
    // What bench/ asks of it: counts by comm and kind, lost by count.
    let lost: i64 = sqlx::query_scalar(
        "SELECT sum(json_extract(args, '$.count')) FROM events_view WHERE kind = 'lost'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(lost, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_with_interned_strings_and_ids() {
    let dir = temp_dir("rt");
    let store = Store::open(&dir).await.unwrap();
    assert!(
        store.downtime_event("core").is_none(),
        "new db has no history"
    );
    let now = traceed_wire::now_ns();
    let input: Vec<Event> = (0..1000)
        .map(|i| {
            ev(
                now - 1000 + i,
                ["open", "exec", "exit"][i as usize % 3],
                100 + i as u32 % 7,
                &format!("c{}", i % 4),
            )
        })
        .collect();
    let published = write_all(&store, input.clone()).await;
    assert_eq!(published.len(), 1000);
    let ids: Vec<i64> = published.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
    let back = all(&store).await;
    assert_eq!(
        back, published,
        "stored rows read back exactly as published"
    );
    for (a, b) in back.iter().zip(&input) {
        assert_eq!(
            (&a.kind, &a.comm, &a.exe, &a.container_id, &a.args),
            (&b.kind, &b.comm, &b.exe, &b.container_id, &b.args)
        );
    }
    // Filters on interned columns.
    let q = |f: fn(&mut Query)| {
        let mut q = Query {
            limit: 10_000,
            ..Query::default()
        };
        f(&mut q);
        q
    };
    let n = |q: Query| {
        let store = store.clone();
        async move { store.query(&q).await.unwrap().0.len() }
    };
    assert_eq!(n(q(|q| q.comm = Some("c1".into()))).await, 250);
    assert_eq!(n(q(|q| q.comm = Some("nope".into()))).await, 0);
    assert_eq!(
        n(q(|q| q.kinds = vec!["exec".into(), "exit".into()])).await,
        666
    );
    assert_eq!(
        n(q(|q| q.container = Some("c0ffee".into()))).await,
        input.iter().filter(|e| e.container_id.is_some()).count()
    );
    assert_eq!(n(q(|q| q.container = Some("deadbeef".into()))).await, 0);
    // A second writer continues the ids and reuses the strings.
    let more = write_all(&store, vec![ev(now, "open", 1, "c1")]).await;
    assert_eq!(more[0].id, 1001);
    let strings: i64 = sqlx::query_scalar("SELECT count(*) FROM strings")
        .fetch_one(store.pool())
        .await
        .unwrap();
    // 3 kinds + core + 4 comms + 4 exes + 2 containers + 1 args key list
    assert_eq!(strings, 15);
    let raw: (String, i64) = sqlx::query_as("SELECT args, args_keys FROM events WHERE id = 1")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        raw.0, r#"[0,"/tmp/f0"]"#,
        "only the values are stored per row"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A batch that fails takes its new strings and block rows with it, but
/// the batches after it were encoded assuming both exist: the SQLite
/// thread writes them with the next batch, so what follows a failure is
/// found by every filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_batch_filters_still_find_what_follows() {
    let dir = temp_dir("carry");
    let store = Store::open(&dir).await.unwrap();
    // An injected failure: any batch with pid 666 is refused whole.
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.pid = 666 \
         BEGIN SELECT RAISE(FAIL, 'injected'); END",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel(64);
    let live = Live::new(64);
    let w = Writer::new(&store, rx, live, counters.clone(), 64)
        .await
        .unwrap();
    let now = traceed_wire::now_ns();
    let wait = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| async move {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    };
    // The failing batch introduces comm "fresh" and its block rows
    // (queued before the writer runs, so they are one batch).
    for pid in [5, 666, 5] {
        tx.send(ev(now, "exec", pid, "fresh").map_args(Payload::Json))
            .await
            .unwrap();
    }
    let task = tokio::spawn(w.run());
    let c = counters.clone();
    wait(
        "the refused batch",
        Box::new(move || c.lost_store.load(Relaxed) == 3),
    )
    .await;
    assert!(store.health().is_paused());
    sqlx::query("DROP TRIGGER refuse")
        .execute(store.pool())
        .await
        .unwrap();
    // Past the retry pause, the same values again, in the same block.
    tokio::time::sleep(PAUSED_RETRY_FOR_TESTS + Duration::from_millis(100)).await;
    for i in 0..3 {
        tx.send(ev(now + 1 + i, "exec", 5, "fresh").map_args(Payload::Json))
            .await
            .unwrap();
    }
    let c = counters.clone();
    wait(
        "the rows after it",
        Box::new(move || c.events_total.load(Relaxed) == 4),
    )
    .await;
    assert!(!store.health().is_paused());
    for q in [
        Query {
            comm: Some("fresh".into()),
            ..Query::default()
        },
        Query {
            exe: Some("/usr/bin/fresh".into()),
            ..Query::default()
        },
        Query {
            pid: Some(5),
            ..Query::default()
        },
        Query {
            kinds: vec!["exec".into()],
            ..Query::default()
        },
    ] {
        let (got, _) = store
            .query(&Query {
                limit: 10,
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(got.len(), 3, "{q:?}: {got:?}");
        assert!(got.iter().all(|e| e.comm.as_deref() == Some("fresh")));
    }
    let (lost, _) = store
        .query(&Query {
            kinds: vec!["lost".into()],
            limit: 10,
            ..Query::default()
        })
        .await
        .unwrap();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].args["count"], 3);
    drop(tx);
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under a flood the WAL is checkpointed off the writer and started
/// over: it stays near WAL_MAX_FRAMES pages instead of growing with the
/// data (400k events of ~250 B are ~100 MB of pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_stays_bounded_under_a_flood() {
    let dir = temp_dir("wal");
    let store = Store::open(&dir).await.unwrap();
    let wal = dir.join("events.db-wal");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (wal, done) = (wal.clone(), done.clone());
        tokio::spawn(async move {
            let mut max = 0;
            while !done.load(Relaxed) {
                max = max.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };
    let now = traceed_wire::now_ns();
    let n = 400_000;
    let input: Vec<Event> = (0..n)
        .map(|i| {
            let mut e = ev(now + i, "open", (i / 30 % 500) as u32, "flood");
            e.args = serde_json::json!({ "path": format!("/var/tmp/{i:0>200}") });
            e
        })
        .collect();
    let data: u64 = write_all(&store, input).await.len() as u64;
    assert_eq!(data, n as u64);
    done.store(true, Relaxed);
    let max = sampler.await.unwrap();
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let page: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(store.pool())
        .await
        .unwrap();
    // WAL_MAX_FRAMES plus what commits add before the writer's check.
    let bound = 6144 * page as u64;
    assert!(
        (pages * page) as u64 > 2 * bound,
        "the flood must outgrow the bound: {pages} pages"
    );
    assert!(max <= bound, "WAL reached {max} B, bound {bound} B");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The block index answers exactly what a scan would: every filter
/// combination, both orders, paged with small and large limits, over
/// several blocks where values come and go in runs (as processes do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_index_agrees_with_a_scan() {
    let dir = temp_dir("blocks");
    let store = Store::open(&dir).await.unwrap();
    let base = traceed_wire::now_ns() - 10_000 * MIN;
    let n = 5 << BLOCK_SHIFT;
    let input: Vec<Event> = (0..n)
        .map(|i| {
            // Runs of ~37 events per process; pid 59 only in the last
            // block, pid 58 only in the first.
            let pid = match i {
                i if i < 200 && i % 50 == 0 => 58,
                i if i >= n - 300 && i % 70 == 0 => 59,
                i => (i / 37) % 50,
            } as u32;
            let mut e = ev(
                base + i * MIN,
                ["open", "exec", "connect", "exit"][(i as usize / 5) % 4],
                pid,
                &format!("c{}", pid % 13),
            );
            e.ppid = (!pid.is_multiple_of(4)).then_some(pid / 4);
            e
        })
        .collect();
    let all = write_all(&store, input).await;
    assert_eq!(all.len() as i64, n);
    let t = |i: i64| Some(base + i * MIN);
    let q = |set: fn(&mut Query)| {
        let mut q = Query::default();
        set(&mut q);
        q
    };
    let filters: Vec<Query> = vec![
        Query::default(),
        q(|q| q.pid = Some(7)),
        q(|q| q.pid = Some(58)),
        q(|q| q.pid = Some(59)),
        q(|q| q.pid = Some(4242)),
        q(|q| q.ppid = Some(3)),
        q(|q| q.uid = Some(2)),
        q(|q| q.comm = Some("c5".into())),
        q(|q| q.exe = Some("/usr/bin/c6".into())),
        q(|q| q.container = Some("c0ffee1".into())),
        q(|q| q.kinds = vec!["exec".into()]),
        q(|q| q.kinds = vec!["exec".into(), "exit".into()]),
        q(|q| (q.kinds, q.pid, q.uid) = (vec!["exec".into()], Some(7), Some(1))),
        Query {
            comm: Some("c5".into()),
            since: t(1500),
            until: t(4000),
            ..Query::default()
        },
        Query {
            pid: Some(59),
            since: t(100),
            ..Query::default()
        },
        Query {
            since: t(3000),
            ..Query::default()
        },
        Query {
            until: t(10),
            ..Query::default()
        },
        q(|q| (q.fidelity, q.pid) = (Some("core".into()), Some(3))),
    ];
    for f in filters {
        let want: Vec<i64> = all.iter().filter(|e| f.matches(e)).map(|e| e.id).collect();
        for desc in [false, true] {
            // Limit 1 pages one event at a time: only where that is few.
            let small = if want.len() < 200 { 1 } else { 61 };
            for limit in [small, 7 * small, 1000] {
                let got = paged_ids(&store, &f, desc, limit).await;
                assert_eq!(got, want, "{f:?} desc={desc} limit={limit}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every common API query is an index search in id order: a rowid range
/// of events, driven by the block index when it filters; no table scan,
/// no sort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_queries_use_indexes() {
    let dir = temp_dir("plan");
    let store = Store::open(&dir).await.unwrap();
    let now = traceed_wire::now_ns();
    let input: Vec<Event> = (0..5000)
        .map(|i| {
            ev(
                now - 5000 * MIN + i * MIN,
                ["open", "exec"][i as usize % 2],
                i as u32 % 50,
                &format!("c{}", i % 40),
            )
        })
        .collect();
    write_all(&store, input).await;
    let since = Some(now - 60 * MIN);
    // The block lookup of a driving filter walks the primary key.
    let blocks =
        Some("SEARCH event_blocks USING PRIMARY KEY (col=? AND value=? AND block>? AND block<?)");
    let cases: Vec<(&str, Query, Option<&str>)> = vec![
        (
            "since",
            Query {
                since,
                ..Query::default()
            },
            None,
        ),
        (
            "until",
            Query {
                until: since,
                ..Query::default()
            },
            None,
        ),
        (
            "kind+since",
            Query {
                since,
                kinds: vec!["exec".into()],
                ..Query::default()
            },
            blocks,
        ),
        (
            "kind",
            Query {
                kinds: vec!["exec".into()],
                ..Query::default()
            },
            blocks,
        ),
        (
            "pid",
            Query {
                pid: Some(7),
                ..Query::default()
            },
            blocks,
        ),
        (
            "comm",
            Query {
                comm: Some("c3".into()),
                ..Query::default()
            },
            blocks,
        ),
        (
            "uid",
            Query {
                uid: Some(1),
                ..Query::default()
            },
            blocks,
        ),
        (
            "container",
            Query {
                container: Some(format!("c0ffee{:058x}", 1)[..20].into()),
                ..Query::default()
            },
            blocks,
        ),
        (
            "pid+since",
            Query {
                pid: Some(7),
                since,
                ..Query::default()
            },
            blocks,
        ),
        (
            "comm desc",
            Query {
                comm: Some("c3".into()),
                desc: true,
                ..Query::default()
            },
            blocks,
        ),
    ];
    for (name, mut q, want) in cases {
        q.limit = 100;
        let plan = store.explain(&q).await.unwrap();
        let text = plan.join("\n");
        assert!(
            plan.iter().any(|l| l.starts_with("SEARCH e ")
                && l.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)")),
            "{name}: wanted a rowid range search of events:\n{text}"
        );
        if let Some(want) = want {
            assert!(
                plan.iter().any(|l| l.starts_with(want)),
                "{name}: wanted {want:?}:\n{text}"
            );
        }
        assert!(
            !plan
                .iter()
                .any(|l| l.starts_with("SCAN") || l.contains("TEMP B-TREE")),
            "{name}: scans or sorts:\n{text}"
        );
    }
    // The probe of the time-to-id binary search.
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT id, ts FROM events WHERE id >= ? ORDER BY id LIMIT 1",
    )
    .bind(0i64)
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>("detail"))
    .collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("INTEGER PRIMARY KEY (rowid>?)")),
        "{plan:?}"
    );
    // And it finds the right boundary.
    for k in [0i64, 1, 2, 2500, 4999] {
        let t = now - 5000 * MIN + k * MIN;
        assert_eq!(store.first_id_at(t).await.unwrap(), Some(k + 1), "k={k}");
        assert_eq!(
            store.first_id_at(t - 1).await.unwrap(),
            Some(k + 1),
            "k={k}"
        );
    }
    assert_eq!(store.first_id_at(now).await.unwrap(), None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downtime_spans_from_clean_stop_or_last_event() {
    let dir = temp_dir("down");
    let store = Store::open(&dir).await.unwrap();
    let t_event = traceed_wire::now_ns() - 10 * MIN;
    write_all(&store, vec![ev(t_event, "exec", 1, "a")]).await;
    drop(store);
    // The writer stopped cleanly: the marker (now) bounds the downtime.
    let store = Store::open(&dir).await.unwrap();
    let d = store
        .downtime_event("core")
        .unwrap()
        .map_args(|a| a.to_value());
    let from =
        |d: &Event| traceed_wire::parse_time_spec(d.args["from"].as_str().unwrap(), 0).unwrap();
    assert!(
        from(&d) > t_event + 9 * MIN,
        "clean stop marker used: {d:?}"
    );
    assert_eq!(d.kind, "lost");
    assert_eq!(d.args["source"], "downtime");
    assert!(d.args["count"].is_null());
    drop(store);
    // No writer ran since (a crash): the marker was consumed, so the last
    // stored event bounds it.
    let store = Store::open(&dir).await.unwrap();
    let d = store
        .downtime_event("core")
        .unwrap()
        .map_args(|a| a.to_value());
    assert_eq!(from(&d), t_event);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_schema_1_keeps_rows_and_ids() {
    let dir = temp_dir("upg");
    let path = dir.join("events.db");
    {
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        MIGRATOR.run_to(1, &pool).await.unwrap();
        for i in 1..=3i64 {
            sqlx::query("INSERT INTO events (ts, kind, pid, comm, exe, container_id, args, fidelity) VALUES (?, 'exec', ?, 'old', '/bin/old', ?, '{\"argv\":[\"old\"]}', 'core')")
                .bind(1_000 + i)
                .bind(i)
                .bind((i == 2).then_some("abc123"))
                .execute(&pool)
                .await
                .unwrap();
        }
        // Retention had deleted a newer row: its id must stay unused.
        sqlx::query("UPDATE sqlite_sequence SET seq = 10 WHERE name = 'events'")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let store = Store::open(&dir).await.unwrap();
    assert_eq!(
        store.schema_version(),
        crate::store::MIGRATOR
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap()
    );
    let rows = all(&store).await;
    assert_eq!(rows.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(rows[1].comm.as_deref(), Some("old"));
    assert_eq!(rows[1].container_id.as_deref(), Some("abc123"));
    assert_eq!(rows[0].args["argv"][0], "old");
    let new = write_all(&store, vec![ev(2_000, "exec", 9, "old")]).await;
    assert_eq!(new[0].id, 11);
    // Migration 4 indexed the old rows: filters find them through the
    // block index, next to the new row.
    let store = &store;
    let ids = |q: Query| async move {
        let q = Query { limit: 10, ..q };
        let (page, _) = store.query(&q).await.unwrap();
        page.iter().map(|e| e.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(Query {
            pid: Some(2),
            ..Query::default()
        })
        .await,
        [2]
    );
    assert_eq!(
        ids(Query {
            comm: Some("old".into()),
            ..Query::default()
        })
        .await,
        [1, 2, 3, 11]
    );
    assert_eq!(
        ids(Query {
            container: Some("abc".into()),
            ..Query::default()
        })
        .await,
        [2]
    );
    assert_eq!(
        ids(Query {
            exe: Some("/bin/old".into()),
            ..Query::default()
        })
        .await,
        [1, 2, 3]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ids have gaps where batches failed (a full disk): the time-to-id
/// search must still end, with the same answer as a scan. It once
/// looped forever when the first stored id after the midpoint was the
/// upper bound itself, hanging retention, `--since` queries and shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_id_search_crosses_id_gaps() {
    let dir = temp_dir("gaps");
    let store = Store::open(&dir).await.unwrap();
    let now = traceed_wire::now_ns();
    write_all(&store, minutely(now, 3000)).await;
    // Gaps of every shape: one id, a long run, runs next to both ends.
    for (lo, hi) in [(2, 2), (11, 1999), (2100, 2101), (2990, 2999)] {
        sqlx::query("DELETE FROM events WHERE id BETWEEN ? AND ?")
            .bind(lo)
            .bind(hi)
            .execute(store.pool())
            .await
            .unwrap();
    }
    let stored: Vec<(i64, i64)> = sqlx::query_as("SELECT id, ts FROM events ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap();
    for &(id, ts) in &stored {
        for t in [ts - 1, ts, ts + 1] {
            let want = stored.iter().find(|(_, s)| *s >= t).map(|(i, _)| *i);
            let got = tokio::time::timeout(Duration::from_secs(5), store.first_id_at(t))
                .await
                .unwrap_or_else(|_| panic!("search for ts of id {id} did not end"))
                .unwrap();
            assert_eq!(got, want, "t = ts of id {id} {:+}", t - ts);
        }
    }
    // And the API's time filter over the same gaps.
    let (got, _) = store
        .query(&Query {
            since: Some(now - 1000 * MIN),
            limit: 10_000,
            ..Query::default()
        })
        .await
        .unwrap();
    let want: Vec<i64> = stored
        .iter()
        .filter(|(_, ts)| *ts >= now - 1000 * MIN)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_deletes_oldest_only() {
    let dir = temp_dir("age");
    let store = Store::open(&dir).await.unwrap();
    let now = traceed_wire::now_ns();
    // Out-of-order jitter is not needed: ids follow ts.
    let n = 12_000i64;
    write_all(&store, minutely(now, n)).await;
    // Alerts of the oldest and the newest event: only the first goes.
    for id in [1, n] {
        sqlx::query("INSERT INTO alerts (rule_id, title, level, tags, event_id, ts, pid) VALUES ('r', 't', 3, '[]', ?, 0, 1)")
            .bind(id)
            .execute(store.pool())
            .await
            .unwrap();
    }
    let mut r = by_age(&store, Duration::from_secs(100 * 60)).await;
    let p = r.pass().await.unwrap();
    let left = all(&store).await;
    assert!(
        left.iter().all(|e| e.ts >= now - 101 * MIN),
        "only rows within max_age remain"
    );
    assert!((99..=101).contains(&left.len()), "{} left", left.len());
    assert_eq!(p.by_age as usize, n as usize - left.len());
    // Oldest only: what remains is the newest contiguous id range.
    assert_eq!(left.last().unwrap().id, n);
    assert_eq!(left.first().unwrap().id, n - left.len() as i64 + 1);
    let alerts: Vec<i64> = sqlx::query_scalar("SELECT event_id FROM alerts")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(
        alerts,
        [n],
        "alerts are deleted with their events, not before"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pass skips the age search while the oldest stored event is within
/// max_age, and still deletes it once it is not (the clock given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_acts_once_the_oldest_event_is_due() {
    let dir = temp_dir("agedue");
    let store = Store::open(&dir).await.unwrap();
    let now = traceed_wire::now_ns();
    let max_age = Duration::from_secs(1);
    // Ten events due 300 ms from now, ten far from it.
    let mut events: Vec<Event> = (0..10)
        .map(|i| ev(now - 700 * MS, "open", 100 + i, "old"))
        .collect();
    events.extend((0..10).map(|i| ev(now + 60_000 * MS, "open", 200 + i, "new")));
    write_all(&store, events).await;
    let mut r = by_age(&store, max_age).await;
    assert_eq!(
        r.pass_at(now).await.unwrap(),
        super::retention::Pass::default()
    );
    // The same pass 400 ms later: the remembered oldest event is due.
    let deleted = r.pass_at(now + 400 * MS).await.unwrap().by_age;
    assert_eq!(deleted, 10);
    let left = all(&store).await;
    assert!(left.iter().all(|e| e.comm.as_deref() == Some("new")));
    assert_eq!(left.len(), 10);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_bounds_the_file() {
    let dir = temp_dir("size");
    let store = Store::open(&dir).await.unwrap();
    let max = 2u64 << 20;
    let mut r = Retention::new(
        &store,
        Policy {
            max_age: Duration::from_secs(365 * 86400),
            max_bytes: max,
            min_free_bytes: 0,
            interval: Duration::from_secs(1),
        },
    )
    .await
    .unwrap();
    let now = traceed_wire::now_ns();
    let mut sizes = Vec::new();
    let mut next = 0i64;
    // ~0.4 MiB per round, one retention pass after each, as the daemon
    // runs a pass every couple of seconds.
    let mut deleted = 0;
    for round in 0..30 {
        let input: Vec<Event> = (0..2_000)
            .map(|i| ev(now - 1_000_000 + next + i, "open", (next + i) as u32, "x"))
            .collect();
        next += 2_000;
        write_all(&store, input).await;
        let p = r.pass().await.unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(store.pool())
            .await
            .unwrap();
        let file = std::fs::metadata(store.path()).unwrap().len();
        sizes.push(file);
        let left = all(&store).await;
        assert_eq!(
            left.last().unwrap().id,
            next,
            "round {round}: newest row kept"
        );
        assert_eq!(
            left.first().unwrap().id,
            next - left.len() as i64 + 1,
            "round {round}: oldest deleted first"
        );
        deleted += p.by_size;
    }
    assert!(
        deleted > 20_000,
        "size retention deleted only {deleted} rows"
    );
    // The file reached its bound (the budget plus one round of writes)
    // and stopped growing: freed pages are reused.
    let bound = max + (1 << 20);
    assert!(
        sizes.iter().all(|s| *s <= bound),
        "file sizes {sizes:?} exceed {bound}"
    );
    // Past the bound it settles: over the last 15 rounds (~3 MiB written)
    // it grew by less than 5 % of the budget (page reuse is not perfect
    // while indexes rebalance).
    assert!(
        sizes[29] <= sizes[14] + max / 20,
        "file still growing: {sizes:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The writer keeps `procs` from fork/exec/exit; a tree and
/// descendants_of follow keys (a reused pid stays apart); retention deletes
/// process rows with their events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procs_follow_keys_and_go_with_their_events() {
    let dir = temp_dir("procs");
    let store = Store::open(&dir).await.unwrap();
    let now = traceed_wire::now_ns();
    let t0 = now - 1000 * MIN;
    let proc_ev = |ts: i64, kind: &str, pid: u32, ppid: u32, key: u64, parent: Option<u64>| {
        let mut e = ev(ts, kind, pid, "sh");
        e.ppid = Some(ppid);
        e.proc = Some(traceed_wire::ProcKey(key));
        e.lineage = Some(traceed_wire::Lineage {
            parent,
            start: Some(if key == 3 { now - MIN / 2 } else { t0 }),
            announce: vec![],
        });
        e.args = match kind {
            "exec" => serde_json::json!({"filename": "/bin/sh", "argv": ["sh", "-c", "x"]}),
            "exit" => serde_json::json!({"exit_code": 3, "signal": null}),
            _ => serde_json::json!({}),
        };
        e
    };
    // Old: pid 100 (key 1) with child pid 101 (key 2); both exit. Then pid
    // 101 is reused (key 3) by a child of an unrelated process (key 9).
    let mut evs = vec![
        proc_ev(t0, "fork", 100, 1, 1, None),
        proc_ev(t0 + 1, "fork", 101, 100, 2, Some(1)),
        proc_ev(t0 + 2, "exec", 101, 100, 2, Some(1)),
        proc_ev(t0 + 3, "exit", 101, 100, 2, Some(1)),
        proc_ev(t0 + 4, "exit", 100, 1, 1, None),
    ];
    evs.extend(minutely(now, 999));
    evs.push(proc_ev(now - MIN / 2, "fork", 101, 50, 3, Some(9)));
    evs.push(proc_ev(now - MIN / 3, "open", 101, 50, 3, Some(9)));
    write_all(&store, evs).await;

    let old = store.proc_at(101, Some(t0 + 2)).await.unwrap().unwrap();
    assert_eq!(old, 2);
    assert_eq!(store.proc_at(101, None).await.unwrap(), Some(3));
    let t = store.tree(1).await.unwrap().unwrap();
    assert_eq!(t.descendants.len(), 1, "the reused pid is not a descendant");
    assert_eq!(t.descendants[0].proc, traceed_wire::proc_key_hex(2));
    assert_eq!(t.descendants[0].exit_code, Some(3));
    assert_eq!(t.descendants[0].cmdline.as_deref(), Some("sh -c x"));
    let (keys, more) = store.proc_and_descendants(1).await.unwrap();
    assert!(!more);
    let q = Query {
        procs: Some(keys),
        limit: 100,
        ..Query::default()
    };
    let (got, _) = store.query(&q).await.unwrap();
    assert_eq!(got.len(), 5, "{got:#?}");
    // The hunt's cached ancestry is the plain one, asked twice.
    let mut cache = super::procs::ProcCache::default();
    let plain = store.ancestors(2).await.unwrap();
    assert_eq!(plain.iter().map(|a| a.pid).collect::<Vec<_>>(), [100]);
    for _ in 0..2 {
        assert_eq!(store.ancestors_with(2, &mut cache).await.unwrap(), plain);
    }
    assert!(store
        .ancestors_with(77, &mut cache)
        .await
        .unwrap()
        .is_empty());

    let mut r = by_age(&store, Duration::from_secs(100 * 60)).await;
    r.pass().await.unwrap();
    assert_eq!(store.proc_at(101, Some(t0 + 2)).await.unwrap(), None);
    assert!(store.tree(1).await.unwrap().is_none());
    assert_eq!(store.proc_at(101, None).await.unwrap(), Some(3));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run `stmts` on the closed store in `dir` (to make it look older).
async fn run_sql(dir: &std::path::Path, stmts: &[&'static str]) {
    let pool =
        SqlitePool::connect_with(SqliteConnectOptions::new().filename(dir.join("events.db")))
            .await
            .unwrap();
    for q in stmts {
        sqlx::query(*q).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

/// Events of every payload shape, in runs like a real host's.
fn payload_events(base: i64, n: i64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let pid = ((i / 29) % 40) as u32;
            let kind = ["open", "exec", "connect", "rename", "bind", "accept", "mount", "exit"]
                [(i as usize / 3) % 8];
            let mut e = ev(base + i * MIN, kind, pid, &format!("c{}", pid % 7));
            let dir = ["/etc/", "/etc/ssh/", "/tmp/", "/var/lib/x/", "/etcetera/"][(i % 5) as usize];
            let path = format!("{dir}f{}", i % 11);
            e.retval = Some(if i % 13 == 0 { -2 } else { 0 });
            e.args = match kind {
                "open" => serde_json::json!({"path": path, "flags": 0, "mode": 0}),
                "exec" => serde_json::json!({
                    "filename": path,
                    "argv": ["sh", "-c", format!("echo m{} \"q\"", i % 17)],
                }),
                "rename" => serde_json::json!({"old_path": path, "new_path": format!("/srv/n{}", i % 7), "flags": 0}),
                "mount" => serde_json::json!({"source": "none", "target": path, "fstype": "tmpfs", "flags": 0}),
                "connect" | "bind" | "accept" => {
                    let addr = match i % 4 {
                        0 => format!("10.0.{}.{}", i % 3, i % 9),
                        1 => format!("fd00::{:x}", i % 6),
                        2 => "127.0.0.1".to_string(),
                        _ => "/run/x.sock".to_string(),
                    };
                    serde_json::json!({"fd": 3, "family": "inet", "addr": addr, "port": 1000 + i % 4})
                }
                _ => serde_json::json!({"exit_code": 0, "signal": null}),
            };
            e
        })
        .collect()
}

fn payload_queries() -> Vec<Query> {
    use traceed_wire::query::{Cidr, PathMatch};
    let path = |s: &str| Some(PathMatch::parse(s).unwrap());
    let addr = |s: &str| Some(Cidr::parse(s).unwrap());
    let q = |set: &dyn Fn(&mut Query)| {
        let mut q = Query::default();
        set(&mut q);
        q
    };
    vec![
        q(&|q| q.path = path("/etc/ssh/f3")),
        q(&|q| q.path = path("/etc/*")),
        q(&|q| q.path = path("/etc*")),
        q(&|q| q.path = path("/etc/ssh/f1*")),
        q(&|q| q.path = path("/srv/n3")),
        q(&|q| q.path = path("/nowhere")),
        q(&|q| (q.path, q.kinds) = (path("/etc/*"), vec!["rename".into()])),
        q(&|q| (q.path, q.kinds) = (path("/etc/*"), vec!["connect".into()])),
        q(&|q| q.addr = addr("127.0.0.1")),
        q(&|q| q.addr = addr("::ffff:127.0.0.1")),
        q(&|q| q.addr = addr("10.0.1.4")),
        q(&|q| q.addr = addr("10.0.0.0/16")),
        q(&|q| q.addr = addr("fd00::/16")),
        q(&|q| q.addr = addr("fd00::5")),
        q(&|q| q.port = Some(1002)),
        q(&|q| (q.port, q.addr) = (Some(1000), addr("10.0.0.0/8"))),
        q(&|q| q.cmdline = Some("echo m4 ".into())),
        q(&|q| q.cmdline = Some("m1".into())),
        q(&|q| q.cmdline = Some("\"q\"".into())),
        q(&|q| q.failed = true),
        q(&|q| (q.failed, q.path) = (true, path("/tmp/*"))),
        q(&|q| (q.pid, q.path) = (Some(3), path("/etc/*"))),
        // 22..: networks (the indexed /24, /16, /8; /20 and /12 through
        // the next shorter one; wider than /8: no index).
        q(&|q| q.addr = addr("10.0.1.0/24")),
        q(&|q| q.addr = addr("10.0.0.0/20")),
        q(&|q| q.addr = addr("10.0.0.0/12")),
        q(&|q| q.addr = addr("11.0.0.0/8")),
        q(&|q| q.addr = addr("0.0.0.0/0")),
        q(&|q| q.addr = addr("fd00::/48")),
        q(&|q| q.addr = addr("fd00::/64")),
        q(&|q| q.addr = addr("fd01::/32")),
        // 30..: command lines through their trigrams (in every block, in
        // few, in none; shorter than a trigram: the kind's blocks).
        q(&|q| q.cmdline = Some("sh -c echo".into())),
        q(&|q| q.cmdline = Some("echo m16 \"q\"".into())),
        q(&|q| q.cmdline = Some("base64 -d".into())),
        q(&|q| q.cmdline = Some("m".into())),
    ]
}

/// Run `delete` on the closed store at `dir` (an index pass undone), open
/// it again: only that pass runs, saying `what` through the progress the
/// daemon extends systemd's start timeout with, and `queries` answer
/// exactly what `Query::matches` selects from `all`.
async fn reindexed(
    dir: &std::path::Path,
    delete: &[&'static str],
    what: &str,
    all: &[Event],
    queries: &[Query],
) {
    run_sql(dir, delete).await;
    let said = std::sync::Mutex::new(Vec::<String>::new());
    let store = Store::open_with_progress(dir, &|m| said.lock().unwrap().push(m.into()))
        .await
        .unwrap();
    let said = said.into_inner().unwrap();
    assert!(
        !said.is_empty() && said.iter().all(|m| m.starts_with(what)),
        "{said:?}"
    );
    for f in queries {
        let want: Vec<i64> = all.iter().filter(|e| f.matches(e)).map(|e| e.id).collect();
        assert_eq!(paged_ids(&store, f, false, 1000).await, want, "{f:?}");
    }
}

/// Every payload filter, alone and combined, selects exactly what
/// `Query::matches` (the follow path) selects, in both orders and page
/// sizes; the ones the index serves are driven by their own blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_filters_agree_with_a_scan() {
    let dir = temp_dir("payload");
    let store = Store::open(&dir).await.unwrap();
    let base = traceed_wire::now_ns() - 10_000 * MIN;
    let n = 5 << BLOCK_SHIFT;
    let all = write_all(&store, payload_events(base, n)).await;
    let check = |all: Vec<Event>, store: Store| async move {
        let mut nonempty = 0;
        for f in payload_queries() {
            let want: Vec<i64> = all.iter().filter(|e| f.matches(e)).map(|e| e.id).collect();
            nonempty += usize::from(!want.is_empty());
            for desc in [false, true] {
                for limit in [7, 1000] {
                    let got = paged_ids(&store, &f, desc, limit).await;
                    assert_eq!(got, want, "{f:?} desc={desc} limit={limit}");
                }
            }
        }
        assert!(
            nonempty >= 18,
            "the data exercises the filters ({nonempty})"
        );
    };
    check(all.clone(), store.clone()).await;
    // Spot checks against the ground truth of the generator.
    let f = |q: &Query| all.iter().filter(|e| q.matches(e)).count();
    let qs = payload_queries();
    assert!(f(&qs[0]) > 0 && f(&qs[1]) > f(&qs[0]) && f(&qs[2]) > f(&qs[1]));
    assert_eq!(f(&qs[8]), f(&qs[9]), "v4 and v4-mapped are one address");
    // Which index drives.
    for (q, driver) in [
        (&qs[0], "driver Path"),
        (&qs[1], "driver PathDir"),
        (&qs[3], "driver PathDir"),
        (&qs[8], "driver Addr"),
        (&qs[13], "driver Addr"),
        (&qs[14], "driver Port"),
        (&qs[11], "driver AddrNet"),
        (&qs[16], "driver CmdGram"),
        (&qs[32], "driver CmdGram"),
        (&qs[33], "driver Kind"),
        (&qs[22], "driver AddrNet"),
        (&qs[27], "driver AddrNet"),
    ] {
        let plan = store
            .explain(&Query {
                limit: 100,
                ..q.clone()
            })
            .await
            .unwrap();
        assert!(
            plan.iter().any(|l| l == driver),
            "{q:?}: wanted {driver}:\n{}",
            plan.join("\n")
        );
        // Several kinds drive through a sort of their blocks, never of rows
        // (as for kind=exec,exit).
        let sorts = |l: &String| l.contains("TEMP B-TREE") && driver != "driver Kind";
        assert!(
            !plan.iter().any(|l| l.starts_with("SCAN") || sorts(l)),
            "{q:?} scans or sorts:\n{}",
            plan.join("\n")
        );
    }
    // A store written before the payload keys existed is indexed at open.
    drop(store);
    run_sql(
        &dir,
        &[
            "DELETE FROM event_blocks WHERE col >= 8",
            "DELETE FROM block_blooms",
            "DELETE FROM meta WHERE key IN ('payload_index', 'net_index', 'cmdline_index')",
        ],
    )
    .await;
    let store = Store::open(&dir).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM event_blocks WHERE col >= 8")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let blooms: i64 = sqlx::query_scalar("SELECT count(DISTINCT block) FROM block_blooms")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(
        rows > 0 && blooms == 5,
        "backfilled: {rows} port rows, {blooms} filters"
    );
    check(all.clone(), store.clone()).await;
    drop(store);
    // A store indexed before networks were: only their pass runs, and the
    // CIDR queries answer as before.
    let nets = &payload_queries()[22..30];
    let delete = [
        "DELETE FROM block_blooms",
        "DELETE FROM meta WHERE key = 'net_index'",
    ];
    reindexed(&dir, &delete, "indexing the networks", &all, nets).await;
    // One indexed before command lines were: only their pass runs, over
    // the exec rows, and `--cmdline` answers as before.
    let cmdlines: Vec<Query> = payload_queries()
        .into_iter()
        .filter(|q| q.cmdline.is_some())
        .collect();
    let delete = [
        "DELETE FROM block_blooms WHERE slice >= 8",
        "DELETE FROM meta WHERE key = 'cmdline_index'",
    ];
    reindexed(&dir, &delete, "indexing the command lines", &all, &cmdlines).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Coverage reports exactly the lost rows whose span meets the window,
/// including a downtime row stamped long after the window it covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_reports_loss_in_the_window() {
    let dir = temp_dir("coverage");
    let store = Store::open(&dir).await.unwrap();
    let base = traceed_wire::now_ns() - 1000 * MIN;
    let t = |m: i64| base + m * MIN;
    let mut input = payload_events(base, 500);
    input.push(Event::lost(Some(1234), "kernel", t(100), t(105), "core"));
    input.push(Event::lost(Some(6), "userspace", t(300), t(301), "core"));
    // Stamped at 600, covering 200..600.
    input.push(Event::lost(None, "downtime", t(200), t(600), "core"));
    input.sort_by_key(|e| e.ts);
    write_all(&store, input).await;
    let c = store.coverage(Some(t(0)), Some(t(150))).await.unwrap();
    assert!(!c.complete);
    assert_eq!(c.lost, Some(1234));
    assert_eq!(c.gaps.len(), 1);
    assert_eq!(c.gaps[0].from, traceed_wire::format_ts(t(100)));
    assert_eq!(c.gaps[0].to, traceed_wire::format_ts(t(105)));
    assert_eq!(c.gaps[0].source, "kernel");
    let c = store.coverage(Some(t(106)), Some(t(199))).await.unwrap();
    assert!(
        c.complete && c.gaps.is_empty() && c.lost == Some(0),
        "{c:?}"
    );
    // Only the downtime row, stored long after the window, covers 250..260.
    let c = store.coverage(Some(t(250)), Some(t(260))).await.unwrap();
    assert_eq!(
        (c.complete, c.lost, c.gaps.len()),
        (false, None, 1),
        "{c:?}"
    );
    assert_eq!(c.gaps[0].source, "downtime");
    // No bounds: everything, oldest first.
    let c = store.coverage(None, None).await.unwrap();
    let sources: Vec<&str> = c.gaps.iter().map(|g| g.source.as_str()).collect();
    assert_eq!(sources, ["kernel", "downtime", "userspace"]);
    assert_eq!(c.lost, None);
    let c = store
        .coverage(Some(t(299)), Some(t(300) + 1))
        .await
        .unwrap();
    assert_eq!(c.lost, None, "downtime and userspace: unknown total");
    assert_eq!(c.gaps.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Retention by age alone (no size or free-space bound), checked every
/// second.
async fn by_age(store: &Store, max_age: Duration) -> Retention {
    Retention::new(
        store,
        Policy {
            max_age,
            max_bytes: u64::MAX,
            min_free_bytes: 0,
            interval: Duration::from_secs(1),
        },
    )
    .await
    .unwrap()
}

/// `count_by` on a column gives what counting the matching rows gives:
/// from block counts with a time-only window (edges from rows), from a
/// GROUP BY under filters, from rows for blocks whose counts predate
/// migration 9 or that retention cut, and from decoded rows for payload
/// fields. Batches (512) are smaller than blocks (1024), so a block's
/// counts are the sum of several upserts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_by_agrees_with_the_rows() {
    let dir = temp_dir("countby");
    let store = Store::open(&dir).await.unwrap();
    let base = traceed_wire::now_ns() - 10_000 * MIN;
    let n = (6 << BLOCK_SHIFT) + 300;
    let mut all = write_all(&store, payload_events(base, n)).await;
    let kinds: i64 = sqlx::query_scalar("SELECT sum(n) FROM event_blocks WHERE col = 1")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(kinds, n, "every event counted once in its block");
    let t = |i: i64| Some(base + i * MIN);
    let queries = [
        Query::default(),
        Query {
            since: t(1500),
            until: t(5000),
            ..Query::default()
        },
        Query {
            since: t(3),
            ..Query::default()
        },
        Query {
            until: t(2049),
            ..Query::default()
        },
        Query {
            kinds: vec!["exec".into(), "open".into()],
            since: t(700),
            ..Query::default()
        },
        Query {
            pid: Some(3),
            ..Query::default()
        },
        Query {
            failed: true,
            ..Query::default()
        },
        Query {
            path: Some(traceed_wire::query::PathMatch::parse("/etc/*").unwrap()),
            ..Query::default()
        },
    ];
    let check = |all: Vec<Event>, store: Store| {
        let queries = queries.clone();
        async move {
            for q in queries {
                for by in ["exe", "comm", "kind", "uid", "path", "port"] {
                    let mut want: std::collections::HashMap<String, u64> = Default::default();
                    for e in all.iter().filter(|e| q.matches(e)) {
                        let (k, a) = (&*e.kind, &e.args);
                        let values: Vec<String> = match by {
                            "exe" => e.exe.iter().map(|s| s.to_string()).collect(),
                            "comm" => e.comm.iter().map(|s| s.to_string()).collect(),
                            "kind" => vec![e.kind.to_string()],
                            "uid" => e.uid.iter().map(|u| u.to_string()).collect(),
                            "path" => super::payload::paths(k, a).map(str::to_owned).collect(),
                            _ => super::payload::port(k, a)
                                .iter()
                                .map(|p| p.to_string())
                                .collect(),
                        };
                        for v in values {
                            *want.entry(v).or_default() += 1;
                        }
                    }
                    let total: u64 = want.values().sum();
                    let mut want: Vec<(String, u64)> = want.into_iter().collect();
                    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                    want.truncate(3);
                    let other = total - want.iter().map(|(_, n)| n).sum::<u64>();
                    let got = store.count_by(&q, by, 3).await.unwrap();
                    assert_eq!(got, (want, other, total), "{by} {q:?}");
                }
            }
        }
    };
    check(all.clone(), store.clone()).await;
    // Blocks 2 and 4 as a store from before migration 9 has them: unknown
    // counts, recounted from rows.
    sqlx::query("UPDATE event_blocks SET n = NULL WHERE block IN (2, 4) AND col = 6")
        .execute(store.pool())
        .await
        .unwrap();
    check(all.clone(), store.clone()).await;
    // Retention deletes from the oldest up, mid-block: that block's counts
    // still hold the deleted rows.
    let cut = all[0].id + 1500;
    sqlx::query("DELETE FROM events WHERE id < ?")
        .bind(cut)
        .execute(store.pool())
        .await
        .unwrap();
    all.retain(|e| e.id >= cut);
    check(all, store).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hunt's reader (store/scan.rs) gives exactly the events
/// `Store::query` gives, for the whole history and for a time window, page
/// boundaries anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_reads_what_query_reads() {
    use super::scan::{Scanner, Window};
    let dir = temp_dir("scan");
    let store = Store::open(&dir).await.unwrap();
    let now = traceed_wire::now_ns();
    let mut input = payload_events(now - 3000 * MIN, 3000);
    for (i, e) in input.iter_mut().enumerate() {
        // Every column set on some rows, absent on others.
        if i % 3 == 0 {
            e.container_id = Some(format!("{:064x}", i % 5).into());
            e.exe = Some(format!("/usr/bin/x{}", i % 9).into());
            e.proc = Some(traceed_wire::ProcKey(0x1000 + i as u64 % 50));
            e.mnt_ns = Some(4_026_531_832 + i as u32 % 7);
            e.pid_ns = Some(4_026_531_836);
            e.cgroup_id = Some(9000 + i as u64);
            e.ppid = Some(1);
        }
    }
    write_all(&store, input).await;
    let everything = all(&store).await;
    assert_eq!(everything.len(), 3000);
    let (lo, hi) = (everything[0].id, everything[2999].id);
    for (since, until) in [
        (None, i64::MAX),
        (Some(everything[1000].ts), everything[2000].ts),
    ] {
        let want: Vec<Event> = everything
            .iter()
            .filter(|e| since.is_none_or(|s| e.ts >= s) && e.ts < until)
            .cloned()
            .collect();
        let path = store.path().to_owned();
        let got = tokio::task::spawn_blocking(move || {
            let mut sc = Scanner::open(&path).unwrap();
            let (mut out, mut after) = (Vec::new(), lo - 1);
            let w = Window {
                since,
                until,
                last: hi,
            };
            while let Some(id) = sc.read(after, w, 700, &mut out).unwrap() {
                after = id;
            }
            out
        })
        .await
        .unwrap();
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);
    }
}
