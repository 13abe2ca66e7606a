//! Router-level tests: the real router on a real SQLite store in a temp dir,
//! rows written by the real Writer (which also feeds the live broadcast),
//! requests sent with `tower::ServiceExt::oneshot`. No kernel needed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower::ServiceExt;
use traceed_wire::{Event, EventsPage};

use super::serve::Caller;
use super::{router, AppState, LoadInfo};
use crate::service::metrics::Counters;
use crate::service::peer::Peer;
use crate::store::live::Live;
use crate::store::{Store, Writer};

const SEC: i64 = 1_000_000_000;
const CONTAINER: &str = "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

struct Fixture {
    st: Arc<AppState>,
    app: Router,
    tx: mpsc::Sender<traceed_wire::LiveEvent>,
    _dir: tempfile::TempDir,
}

fn event(kind: &str, ts: i64, pid: u32) -> Event {
    Event {
        id: 0,
        ts,
        kind: kind.to_string().into(),
        pid: Some(pid),
        tid: Some(pid),
        ppid: Some(1),
        uid: Some(0),
        gid: Some(0),
        comm: Some("sh".into()),
        ns_pid: Some(pid),
        exe: Some("/bin/sh".into()),
        cgroup_id: Some(1),
        container_id: None,
        mnt_ns: Some(4026531841),
        pid_ns: Some(4026531836),
        retval: None,
        args: serde_json::json!({}),
        fidelity: "core".into(),
        proc: None,
        lineage: None,
    }
}

impl Fixture {
    async fn new(live_capacity: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(1024);
        let live = Live::new(live_capacity);
        let writer = Writer::new(&store, rx, live.clone(), counters.clone(), 64)
            .await
            .unwrap();
        tokio::spawn(writer.run());
        let st = Arc::new(AppState::new(
            store,
            counters,
            live,
            LoadInfo {
                rung: "core-kernel-btf".into(),
                fidelity: "core".into(),
                ..LoadInfo::default()
            },
            "max_age=30d".into(),
            std::time::Instant::now(),
        ));
        st.ready.store(true, Relaxed);
        Self {
            app: router(st.clone()).layer(axum::middleware::map_request(as_root)),
            st,
            tx,
            _dir: dir,
        }
    }

    /// Write `events` through the Writer and wait until they are committed.
    async fn insert(&self, events: Vec<Event>) {
        let want = self.st.counters.events_total.load(Relaxed) + events.len() as u64;
        for e in events {
            self.tx.send(e.map_args(Into::into)).await.unwrap();
        }
        let t0 = std::time::Instant::now();
        while self.st.counters.events_total.load(Relaxed) < want {
            assert!(t0.elapsed() < Duration::from_secs(10), "writer stuck");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A fixed data set covering every filterable column.
    async fn seeded() -> Self {
        let f = Self::new(4096).await;
        let now = traceed_wire::now_ns();
        let old = now - 7200 * SEC;
        let mut rows = Vec::new();
        rows.push(event("exec", old, 100));
        let mut e = event("open", old + SEC, 101);
        e.ppid = Some(100);
        e.uid = Some(1000);
        e.comm = Some("cat".into());
        e.exe = Some("/usr/bin/cat".into());
        e.container_id = Some(CONTAINER.into());
        rows.push(e);
        let mut e = event("connect", old + 2 * SEC, 102);
        e.ppid = Some(100);
        e.uid = Some(1000);
        e.comm = Some("curl".into());
        e.exe = Some("/usr/bin/curl".into());
        e.container_id = Some(format!("ffff{}", &CONTAINER[4..]).into());
        e.fidelity = "fallback".into();
        rows.push(e);
        let mut e = event("exit", old + 3 * SEC, 100);
        e.fidelity = "kernel".into();
        rows.push(e);
        // Recent forks for paging and `since`.
        for i in 0..25 {
            rows.push(event("fork", now - 60 * SEC + i * SEC, 200 + i as u32));
        }
        f.insert(rows).await;
        f
    }

    /// Open a streaming GET (a follower): the response, body unread.
    async fn stream(&self, uri: &str) -> axum::response::Response {
        self.app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn request(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Vec<u8>) {
        let (s, _, b) = self
            .request(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        (s, b)
    }

    async fn page(&self, query: &str) -> EventsPage {
        let (s, b) = self.get(&format!("/v1/events?{query}")).await;
        assert_eq!(
            s,
            StatusCode::OK,
            "{query}: {}",
            String::from_utf8_lossy(&b)
        );
        serde_json::from_slice(&b).unwrap()
    }

    /// (kind, pid) of every event the query selects, following cursors.
    async fn select(&self, query: &str) -> Vec<(String, u32)> {
        self.page(query)
            .await
            .events
            .into_iter()
            .map(|e| (e.kind.into_owned(), e.pid.unwrap()))
            .collect()
    }

    /// Assert a 4xx with a JSON error naming `needle`.
    async fn refused(&self, uri: &str, status: StatusCode, needle: &str) {
        let (s, b) = self.get(uri).await;
        assert_eq!(s, status, "{uri}: {}", String::from_utf8_lossy(&b));
        let v: serde_json::Value = serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("{uri}: body is not JSON ({e}): {b:?}"));
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{uri}: no error in {v}"));
        assert!(
            msg.contains(needle),
            "{uri}: '{msg}' does not mention '{needle}'"
        );
    }
}

fn kinds(v: &[(String, u32)]) -> Vec<&str> {
    v.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_selects_exactly_its_rows() {
    let f = Fixture::seeded().await;
    assert_eq!(f.select("").await.len(), 29);
    // Time: durations and RFC 3339, `until` exclusive.
    assert_eq!(f.select("since=1h").await.len(), 25);
    assert_eq!(
        kinds(&f.select("until=1h").await),
        ["exec", "open", "connect", "exit"]
    );
    let first = f.page("limit=1").await.events[0].ts;
    let t = |ns| traceed_wire::format_ts(ns);
    let sel = f
        .select(&format!(
            "since={}&until={}",
            t(first + SEC),
            t(first + 3 * SEC)
        ))
        .await;
    assert_eq!(kinds(&sel), ["open", "connect"]);
    let sel = f
        .select(&format!("since={}&until={}", t(first), t(first)))
        .await;
    assert!(sel.is_empty(), "since == until is an empty window");
    // Kinds: one, several, duplicates harmless.
    assert_eq!(kinds(&f.select("kind=exit").await), ["exit"]);
    assert_eq!(
        kinds(&f.select("kind=exit,exec,exec").await),
        ["exec", "exit"]
    );
    assert!(f.select("kind=ptrace").await.is_empty());
    // Task fields.
    assert_eq!(
        f.select("pid=100").await,
        [("exec".into(), 100), ("exit".into(), 100)]
    );
    assert_eq!(kinds(&f.select("ppid=100").await), ["open", "connect"]);
    assert_eq!(kinds(&f.select("uid=1000").await), ["open", "connect"]);
    assert_eq!(f.select("uid=0").await.len(), 27);
    assert_eq!(kinds(&f.select("comm=curl").await), ["connect"]);
    assert_eq!(kinds(&f.select("exe=%2Fusr%2Fbin%2Fcat").await), ["open"]);
    assert!(f.select("comm=cur").await.is_empty(), "comm is exact");
    // Container: full id, short prefix, upper case.
    assert_eq!(
        kinds(&f.select(&format!("container={CONTAINER}")).await),
        ["open"]
    );
    assert_eq!(kinds(&f.select("container=abcdef012345").await), ["open"]);
    assert_eq!(kinds(&f.select("container=ABCDEF012345").await), ["open"]);
    assert_eq!(kinds(&f.select("container=ffff").await), ["connect"]);
    // Fidelity.
    assert_eq!(kinds(&f.select("fidelity=fallback").await), ["connect"]);
    assert_eq!(kinds(&f.select("fidelity=kernel").await), ["exit"]);
    assert_eq!(f.select("fidelity=core").await.len(), 27);
    // Filters combine with AND.
    assert_eq!(kinds(&f.select("uid=1000&fidelity=core").await), ["open"]);
    assert!(f.select("pid=100&kind=open").await.is_empty());
    // Order.
    let desc = f.select("order=desc&limit=3").await;
    assert_eq!(
        desc.iter().map(|x| x.1).collect::<Vec<_>>(),
        [224, 223, 222]
    );
    assert_eq!(kinds(&f.select("order=asc&limit=1").await), ["exec"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_every_row_once_in_both_orders() {
    let f = Fixture::seeded().await;
    for order in ["asc", "desc"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut q = format!("limit=4&order={order}");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let p = f.page(&q).await;
            assert!(p.events.len() <= 4);
            seen.extend(p.events.iter().map(|e| e.id));
            pages += 1;
            // Rows inserted while paging (newer ids) must not disturb
            // an ascending walk: they are simply picked up at the end.
            if pages == 2 && order == "asc" {
                f.insert(vec![event("fork", traceed_wire::now_ns(), 999)])
                    .await;
            }
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        if order == "desc" {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "{order}: not in order");
        let mut dedup = seen.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), seen.len(), "{order}: duplicates");
        assert_eq!(seen.len(), 30, "{order}");
    }
    // The last full page says there is no more, exactly at the boundary.
    let all = f.page("limit=30").await;
    assert_eq!(all.events.len(), 30);
    assert!(all.next_cursor.is_none());
    let p = f.page("limit=29").await;
    assert!(p.next_cursor.is_some());
    let rest = f.page(&format!("cursor={}", p.next_cursor.unwrap())).await;
    assert_eq!(rest.events.len(), 1);
    assert_eq!(rest.events[0].pid, Some(999));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_and_maximum_limit() {
    let f = Fixture::new(4096).await;
    let now = traceed_wire::now_ns();
    f.insert((0..1001).map(|i| event("fork", now + i, 1)).collect())
        .await;
    let p = f.page("").await;
    assert_eq!(p.events.len(), 1000, "default limit is 1000");
    assert!(p.next_cursor.is_some());
    assert_eq!(f.page("limit=10000").await.events.len(), 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_parameter_is_a_400_naming_it() {
    let f = Fixture::seeded().await;
    let bad = StatusCode::BAD_REQUEST;
    for (q, needle) in [
        ("bogus=1", "bogus"),
        ("kind=", "kind"),
        ("kind", "kind"),
        ("kind=exec,nope", "nope"),
        ("kind=exec,,exit", "kind"),
        ("since=yesterday", "since"),
        ("since=-1h", "since"),
        ("until=12", "until"),
        ("since=1h&until=2h", "since"),
        ("since=1h&since=2h", "more than once"),
        ("pid=-1", "pid"),
        ("pid=%2B5", "pid"),
        ("pid=4294967296", "pid"),
        ("pid=abc", "pid"),
        ("ppid=1.5", "ppid"),
        ("uid=x", "uid"),
        ("container=xyz", "container"),
        ("container=abc%25", "container"),
        (&format!("container={CONTAINER}0"), "container"),
        ("fidelity=best", "fidelity"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=many", "limit"),
        ("cursor=zz", "cursor"),
        ("cursor=123", "cursor"),
        ("cursor=i", "cursor"),
        ("cursor=i-1", "cursor"),
        ("order=sideways", "order"),
        ("follow=yes", "follow"),
        ("follow=true&order=desc", "order"),
        ("comm=a%00b", "comm"),
        (&format!("exe={}", "a".repeat(5000)), "exe"),
        ("%FF=1", "unknown parameter"),
    ] {
        f.refused(&format!("/v1/events?{q}"), bad, needle).await;
    }
    // The messages also say what is accepted.
    let (_, b) = f.get("/v1/events?bogus=1").await;
    assert!(String::from_utf8_lossy(&b).contains("since, until, kind"));
    let (_, b) = f.get("/v1/events?kind=nope").await;
    assert!(String::from_utf8_lossy(&b).contains("exec, fork"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_errors_are_json() {
    let f = Fixture::seeded().await;
    f.refused("/", StatusCode::NOT_FOUND, "/v1/events").await;
    f.refused("/v2/events", StatusCode::NOT_FOUND, "/v1/events")
        .await;
    f.refused("/v1/events/", StatusCode::NOT_FOUND, "no such endpoint")
        .await;
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for path in [
            "/v1/events",
            "/healthz",
            "/metrics",
            "/v1/status",
            "/v1/openapi.json",
        ] {
            let (s, h, b) = f
                .request(
                    Request::builder()
                        .method(method)
                        .uri(path)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(h["allow"], "GET, HEAD");
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert!(v["error"].as_str().unwrap().contains(method));
        }
    }
    // HEAD works wherever GET does.
    let (s, _, b) = f
        .request(Request::head("/v1/status").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_bodies_are_refused() {
    let f = Fixture::seeded().await;
    let json_error = |s: StatusCode, b: &[u8], want: StatusCode, needle: &str| {
        assert_eq!(s, want, "{}", String::from_utf8_lossy(b));
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{v}");
    };
    let long = format!("/v1/events?comm={}", "a".repeat(9000));
    let (s, b) = f.get(&long).await;
    json_error(s, &b, StatusCode::URI_TOO_LONG, "limit");

    let mut req = Request::get("/v1/status");
    for i in 0..20 {
        req = req.header(format!("x-filler-{i}"), "v".repeat(1000));
    }
    let (s, _, b) = f.request(req.body(Body::empty()).unwrap()).await;
    json_error(
        s,
        &b,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers",
    );

    for (h, v) in [("content-length", "5"), ("transfer-encoding", "chunked")] {
        let req = Request::get("/v1/events")
            .header(h, v)
            .body(Body::from("hello"))
            .unwrap();
        let (s, _, b) = f.request(req).await;
        json_error(
            s,
            &b,
            StatusCode::PAYLOAD_TOO_LARGE,
            "bodies are not accepted",
        );
    }
    // A method the path lacks is a 405 whatever it carries: GET on the
    // POST-only hunt, or TRACE anywhere.
    for (method, path) in [("GET", "/v1/hunt"), ("TRACE", "/v1/events")] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-length", "5")
            .body(Body::from("hello"))
            .unwrap();
        let (s, _, b) = f.request(req).await;
        json_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, method);
    }
    // An explicit empty body is fine.
    let req = Request::get("/v1/status")
        .header("content-length", "0")
        .body(Body::empty())
        .unwrap();
    assert_eq!(f.request(req).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_outside_the_group_get_403_and_busy_gets_503() {
    let f = Fixture::seeded().await;
    let peer = Peer {
        uid: 65534,
        gid: 65534,
        pid: Some(1),
    };
    let with = |c: Caller, uri: &str| {
        let mut r = Request::get(uri).body(Body::empty()).unwrap();
        r.extensions_mut().insert(c);
        r
    };
    for uri in ["/v1/events", "/healthz", "/nope"] {
        let c = Caller {
            peer,
            allowed: false,
            busy: false,
        };
        let (s, _, b) = f.request(with(c, uri)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{uri}");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains("group `traceed`") && msg.contains("65534"),
            "{msg}"
        );
    }
    let c = Caller {
        peer,
        allowed: true,
        busy: false,
    };
    assert_eq!(f.request(with(c, "/v1/status")).await.0, StatusCode::OK);
    let c = Caller {
        peer,
        allowed: true,
        busy: true,
    };
    let (s, h, b) = f.request(with(c, "/v1/status")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h["retry-after"], "1");
    assert!(
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("too many connections")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_health_openapi_and_metrics() {
    let f = Fixture::seeded().await;
    let (s, b) = f.get("/healthz").await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, b"ok\n".as_slice()));
    f.st.ready.store(false, Relaxed);
    f.refused("/healthz", StatusCode::SERVICE_UNAVAILABLE, "starting")
        .await;
    f.st.ready.store(true, Relaxed);

    let (s, b) = f.get("/v1/status").await;
    assert_eq!(s, StatusCode::OK);
    let st: traceed_wire::Status = serde_json::from_slice(&b).unwrap();
    assert_eq!(st.events_total, 29);
    assert_eq!(st.rung, "core-kernel-btf");
    assert!(st.db_bytes > 0);
    assert!(st.oldest_ts.is_some());

    let (s, h, b) = f
        .request(
            Request::get("/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "application/json");
    let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    f.get("/nope").await;
    let (s, h, b) = f
        .request(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(b).unwrap();
    for line in [
        "traceed_events_total{kind=\"fork\"} 25",
        "traceed_events_total{kind=\"exec\"} 1",
        "traceed_lost_events_total{source=\"kernel\"} 0",
        "traceed_api_requests_total{status=\"404\"} 1",
        "traceed_api_requests_total{status=\"503\"} 1",
        "traceed_queue_depth 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
    }
    assert!(text.contains("traceed_db_bytes "), "{text}");
}

/// Read NDJSON lines from a streaming body until `n` lines or the deadline.
async fn read_lines(body: &mut Body, buf: &mut Vec<u8>, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            out.push(serde_json::from_slice(&line).unwrap());
        }
        if out.len() >= n {
            break;
        }
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    buf.extend_from_slice(d);
                }
            }
            other => panic!(
                "stream ended or stalled after {} lines: {other:?}",
                out.len()
            ),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_sends_history_then_live_without_gap_or_duplicate() {
    let f = Fixture::seeded().await;
    let resp = f
        .stream("/v1/events?follow=true&kind=fork,exec&since=3h")
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let history = read_lines(&mut body, &mut buf, 26).await;
    assert_eq!(history.len(), 26);
    // Live: matching and non-matching events, interleaved.
    let now = traceed_wire::now_ns();
    let mut live = Vec::new();
    for i in 0..50 {
        live.push(event(
            if i % 2 == 0 { "exec" } else { "open" },
            now + i,
            500 + i as u32,
        ));
    }
    f.insert(live).await;
    let got = read_lines(&mut body, &mut buf, 25).await;
    assert!(got.iter().all(|e| e.kind == "exec"));
    let ids: Vec<i64> = history.iter().chain(&got).map(|e| e.id).collect();
    let (all, _) =
        f.st.store
            .query(&crate::store::Query {
                kinds: vec!["exec".into(), "fork".into()],
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
    assert_eq!(ids, all.iter().map(|e| e.id).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_history_longer_than_the_live_ring_keeps_the_seam_exact() {
    // A ring of 2 batches (of at most 64) while 200 events land during a
    // 1000-row history.
    let f = Fixture::new(2).await;
    let now = traceed_wire::now_ns();
    f.insert((0..1000).map(|i| event("fork", now + i, 1)).collect())
        .await;
    let resp = f.stream("/v1/events?follow=true").await;
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let head = read_lines(&mut body, &mut buf, 10).await;
    // The follower is blocked on its line buffer now; more history lands.
    f.insert((0..200).map(|i| event("exec", now + 2000 + i, 2)).collect())
        .await;
    let rest = read_lines(&mut body, &mut buf, 1190).await;
    let ids: Vec<i64> = head.iter().chain(&rest).map(|e| e.id).collect();
    assert!(rest.iter().all(|e| e.kind != "lost"), "lost at the seam");
    assert_eq!(ids, (1..=1200).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_follower_gets_a_lost_line_and_does_not_block_ingest() {
    let f = Fixture::new(16).await;
    let resp = f.stream("/v1/events?follow=true").await;
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    // First get the follower into its live phase (a follower still reading
    // history would take the flood from the store instead, losing nothing).
    let now = traceed_wire::now_ns();
    f.insert(vec![event("exec", now - 1, 7)]).await;
    let first = read_lines(&mut body, &mut buf, 1).await;
    assert_eq!(first[0].kind, "exec");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Nothing read while 2000 events are committed: the writer must not
    // wait for this reader (insert() would time out if it did).
    let t0 = std::time::Instant::now();
    f.insert((0..2000).map(|i| event("fork", now + i, 1)).collect())
        .await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Then one more, so the follower wakes up past the overrun.
    f.insert(vec![event("exit", now + 5000, 7)]).await;
    let mut got = Vec::new();
    while !got.iter().any(|e: &Event| e.kind == "exit") {
        got.extend(read_lines(&mut body, &mut buf, 1).await);
    }
    let lost: Vec<&Event> = got.iter().filter(|e| e.kind == "lost").collect();
    assert!(!lost.is_empty(), "no lost line among {} lines", got.len());
    assert_eq!(lost[0].args["source"], "follower");
    let missed: u64 = lost.iter().map(|e| e.args["count"].as_u64().unwrap()).sum();
    let delivered = got.iter().filter(|e| e.kind != "lost").count() as u64;
    // Everything is accounted for: delivered + reported lost = committed.
    assert_eq!(
        delivered + missed,
        2001,
        "delivered {delivered} + lost {missed}"
    );
    // What waited for the reader is bounded by the ring (16 batches of at
    // most 64) plus the line channel (64), not by what was committed
    // meanwhile.
    assert!(delivered < 16 * 64 + 64 + 2, "delivered {delivered}");
    assert_eq!(f.st.counters.follow_dropped.load(Relaxed), missed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_code() {
    let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
    // The documented parameters of an operation.
    let params_of = |path: &str, method: &str| -> Vec<serde_json::Value> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path}: no parameters"))
            .clone()
    };
    let names_of = |path: &str, method: &str| -> Vec<String> {
        params_of(path, method)
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let events = params_of("/v1/events", "get");
    // The parameters, their order, types and descriptions are the wire
    // crate's table (the one EventsQuery and tracectl use).
    let params: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|p| {
            assert_eq!(p["in"], "query", "{p}");
            assert_eq!(p["required"], false, "{p}");
            (
                p["name"].as_str().unwrap(),
                p["schema"]["type"].as_str().unwrap(),
                p["description"].as_str().unwrap(),
            )
        })
        .collect();
    let table: Vec<(&str, &str, &str)> = traceed_wire::query::PARAMS
        .iter()
        .map(|p| (p.name, p.ty.as_str(), p.description))
        .collect();
    assert_eq!(params, table, "documented parameters");
    let limit = &events.iter().find(|p| p["name"] == "limit").unwrap()["schema"];
    assert_eq!(limit["maximum"], traceed_wire::query::MAX_LIMIT);
    assert_eq!(limit["default"], traceed_wire::query::DEFAULT_LIMIT);
    let kind = events.iter().find(|p| p["name"] == "kind").unwrap();
    let pattern = kind["schema"]["pattern"].as_str().unwrap();
    let documented: Vec<&str> = pattern
        .trim_start_matches("^(")
        .split(')')
        .next()
        .unwrap()
        .split('|')
        .collect();
    assert_eq!(documented, traceed_wire::KINDS, "kind pattern is stale");
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    // /v1/alerts: the parameters the parser accepts, in its order.
    assert_eq!(
        names_of("/v1/alerts", "get"),
        super::alerts::PARAMS,
        "documented /v1/alerts parameters"
    );
    assert_eq!(
        names_of("/v1/hunt", "post"),
        super::hunt::PARAMS,
        "documented /v1/hunt parameters"
    );
    assert_eq!(
        doc["paths"]["/v1/hunt"]["post"]["requestBody"]["content"]["application/yaml"]["schema"]
            ["maxLength"],
        super::hunt::MAX_BODY
    );
    for p in [
        "/v1/events",
        "/v1/alerts",
        "/v1/tree",
        "/v1/status",
        "/healthz",
        "/metrics",
        "/v1/openapi.json",
        "/v1/hunt",
    ] {
        assert!(paths.iter().any(|x| *x == p), "{p} undocumented");
    }
    assert_eq!(
        names_of("/v1/tree", "get"),
        super::tree::PARAMS,
        "documented tree parameters"
    );
    let entry = traceed_wire::ProcEntry {
        proc: traceed_wire::proc_key_hex(1),
        pid: 1,
        ppid: None,
        parent: None,
        uid: None,
        comm: None,
        exe: None,
        cmdline: None,
        start: None,
        exit: None,
        exit_code: None,
        signal: None,
        lifetime_s: None,
    };
    let tree = serde_json::to_value(traceed_wire::Tree {
        process: entry.clone(),
        ancestors: vec![],
        descendants: vec![],
        truncated: false,
        coverage: Some(traceed_wire::Coverage::default()),
    })
    .unwrap();
    for (schema, sample) in [
        ("ProcEntry", serde_json::to_value(&entry).unwrap()),
        ("Tree", tree),
    ] {
        let props = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap();
        let keys: Vec<&String> = sample.as_object().unwrap().keys().collect();
        assert_eq!(
            props.keys().collect::<Vec<_>>(),
            keys,
            "{schema} documented"
        );
    }
    // Every field the daemon sends is documented, and only those.
    let status = &doc["components"]["schemas"]["Status"]["properties"];
    let event = &doc["components"]["schemas"]["Event"]["properties"];
    let sample_event = serde_json::to_value(event_sample()).unwrap();
    for k in sample_event.as_object().unwrap().keys() {
        assert!(event.get(k).is_some(), "Event.{k} undocumented");
    }
    assert_eq!(
        event.as_object().unwrap().len(),
        sample_event.as_object().unwrap().len()
    );
    // The live answer, so a field added to Status must be documented too.
    let f = Fixture::seeded().await;
    let (_, body) = f.get("/v1/status").await;
    let st: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for k in st.as_object().unwrap().keys() {
        assert!(status.get(k).is_some(), "Status.{k} undocumented");
    }
    assert_eq!(
        status.as_object().unwrap().len(),
        st.as_object().unwrap().len()
    );
}

fn event_sample() -> Event {
    event("exec", 0, 1)
}

/// What `serve` attaches for a root peer, unless the test attached its own
/// Caller: the router refuses requests that carry none.
async fn as_root(mut req: axum::extract::Request) -> axum::extract::Request {
    if req.extensions().get::<Caller>().is_none() {
        req.extensions_mut().insert(Caller {
            peer: Peer {
                uid: 0,
                gid: 0,
                pid: None,
            },
            allowed: true,
            busy: false,
        });
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_peer_credentials_is_refused() {
    let f = Fixture::seeded().await;
    // The bare router, as `serve` hands it requests, minus the Caller
    // that `serve` attaches.
    let bare = router(f.st.clone());
    for uri in ["/v1/events", "/v1/status", "/healthz", "/metrics", "/nope"] {
        let resp = bare
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{uri}");
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("{uri}: body is not JSON ({e}): {b:?}"));
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{uri}: {v}"));
        assert!(msg.contains("no peer credentials"), "{uri}: {msg}");
    }
    // The same request with a root Caller is served.
    assert_eq!(f.get("/v1/status").await.0, StatusCode::OK);
}
