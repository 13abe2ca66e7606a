//! `POST /v1/hunt`: the retro-hunt. Sigma rules in the body (YAML
//! documents separated by `---` lines) are matched against the stored
//! history of the window, in id order, and each match is streamed as an
//! NDJSON line as soon as it is found, with progress lines every
//! `PROGRESS` and a final summary carrying the window's coverage.
//!
//! The rows come from a `store::scan::Scanner` (its own connection, no
//! sqlx: a hunt reads millions of rows) on a blocking thread, in pages of
//! `CHUNK`, at most two pages ahead of the matching; WAL readers never
//! block the writer. Lines go through a small bounded channel: a slow
//! reader slows the scan, never memory; a reader that goes away closes the
//! channel and the scan stops at the next page or line.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;
use traceed_detect::{Engine, ProcessMap, Rule, WireSubject};

use super::{ApiError, AppState};
use crate::store::scan::{Scanner, Window};
use crate::store::{Query, StoreError};

/// Every parameter, in the order openapi.json documents them (drift test).
pub const PARAMS: &[&str] = &["since", "until"];
/// Largest request body (all rules together).
pub const MAX_BODY: usize = traceed_detect::MAX_RULE_BYTES;
/// Events read per page.
const CHUNK: u32 = 2000;
/// Batches of lines buffered between the scan and the socket.
const LINES: usize = 8;
/// Pages of matches between the matcher and the emitter.
const OUT_PAGES: usize = 4;
/// A batch goes out once it holds this much, at the end of each page, and
/// with each progress line: matches are on the wire within a page's time
/// (milliseconds), and a hunt with half a million matches sends a few
/// thousand writes, not one per match.
const BATCH_BYTES: usize = 64 * 1024;
const PROGRESS: Duration = Duration::from_millis(500);
/// Ancestries kept per hunt (then the cache starts over).
const ANCESTRIES: usize = 4096;

fn parse(raw: Option<&str>) -> Result<(Option<i64>, i64), ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| ApiError::bad(e.to_string()))?;
    let now = traceed_wire::now_ns();
    let (mut since, mut until) = (None, None);
    let mut seen = Vec::new();
    for (k, v) in &pairs {
        if seen.contains(&k.as_str()) {
            return Err(ApiError::bad(format!("parameter '{k}' is given twice")));
        }
        seen.push(k.as_str());
        let t = traceed_wire::parse_time_spec(v, now)
            .map_err(|e| ApiError::bad(format!("parameter '{k}': {e}")));
        match k.as_str() {
            "since" => since = Some(t?),
            "until" => until = Some(t?),
            _ => {
                return Err(ApiError::bad(format!(
                    "unknown parameter '{k}'; accepted: {}",
                    PARAMS.join(", ")
                )))
            }
        }
    }
    // Without an end, the window ends when the hunt starts: the scan ends.
    let until = until.unwrap_or(now);
    if since.is_some_and(|s| s > until) {
        return Err(ApiError::bad("parameter 'since' is after 'until'"));
    }
    Ok((since, until))
}

/// The body's YAML documents (split on `---` lines), each loaded as
/// `rules check` loads a file; any that does not load refuses the hunt
/// with the same messages.
pub fn load_rules(text: &str) -> Result<Vec<Rule>, String> {
    let mut docs: Vec<String> = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let d = docs.last_mut().expect("one document at least");
            d.push_str(line);
            d.push('\n');
        }
    }
    let blank = |d: &str| {
        d.lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    };
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for (n, d) in docs.iter().filter(|d| !blank(d)).enumerate() {
        let name = format!("body document {}", n + 1);
        match traceed_detect::parse_rule(&name, d) {
            Ok(Ok(r)) => rules.push(r),
            Ok(Err(s)) => problems.push(format!("warning: {s}")),
            Err(e) => problems.push(format!("error: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    if rules.is_empty() {
        return Err(
            "the body holds no rule: send Sigma rule YAML documents, separated by '---' lines"
                .into(),
        );
    }
    Ok(rules)
}

fn line(v: &impl serde::Serialize) -> Vec<u8> {
    let mut l = serde_json::to_vec(v).unwrap_or_default();
    l.push(b'\n');
    l
}

type Line = Result<Vec<u8>, std::io::Error>;

pub async fn post(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let (since, until) = parse(raw.as_deref())?;
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the rules are over the {MAX_BODY} byte limit"),
        )
    })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad("the body is not UTF-8 text (Sigma rule YAML)"))?;
    let rules = load_rules(text).map_err(ApiError::bad)?;
    let engine = Arc::new(Engine::new(rules));
    let (tx, rx) = mpsc::channel::<Line>(LINES);
    st.counters.hunts_active.fetch_add(1, Relaxed);
    tokio::spawn(async move {
        let outcome = scan(&st, &engine, since, until, &tx).await;
        st.counters.hunts_active.fetch_sub(1, Relaxed);
        match outcome {
            Ok(s) => tracing::info!(
                scanned = s.scanned,
                matches = s.matches,
                "hunt done: {} events scanned, {} matches",
                s.scanned,
                s.matches
            ),
            Err(Stop::Gone(s)) => {
                st.counters.hunts_abandoned.fetch_add(1, Relaxed);
                tracing::info!(
                    scanned = s.scanned,
                    "hunt stopped: the client went away after {} events scanned",
                    s.scanned
                );
            }
            Err(Stop::Store(e)) => {
                tracing::error!(error = %e, "hunt: store query failed");
                let _ = tx
                    .send(Ok(line(&json!({ "error": format!("store: {e}") }))))
                    .await;
            }
        }
    });
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|l| (l, rx)) });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    scanned: u64,
    total: u64,
    matches: u64,
}

enum Stop {
    Gone(Progress),
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for Stop {
    fn from(e: crate::store::StoreError) -> Self {
        Stop::Store(e)
    }
}

/// The first or last stored id of the window.
async fn edge(
    st: &AppState,
    since: Option<i64>,
    until: i64,
    desc: bool,
) -> Result<Option<i64>, crate::store::StoreError> {
    let q = Query {
        since,
        until: Some(until),
        desc,
        limit: 1,
        ..Query::default()
    };
    Ok(st.store.query(&q).await?.0.first().map(|e| e.id))
}

/// What the matcher hands the emitter, in scan order.
enum Out {
    /// Matches of one page: (indices into the engine's rules, the event).
    Hits(Vec<(Vec<usize>, traceed_wire::Event)>),
    Progress(Progress),
}

/// Three stages, so that no one waits on another's latency: the reader (a
/// blocking thread, store/scan.rs) reads pages a page or two ahead; the
/// matcher (this task) runs the rules and keeps the process map, in id
/// order; the emitter (a task of its own) looks up each matching process's
/// ancestry (store queries, whose round trips the matcher used to wait
/// on: it ran at half a core) and writes the lines. A hunt that stops
/// drops the channels, and each stage ends at its next send.
async fn scan(
    st: &Arc<AppState>,
    engine: &Arc<Engine>,
    since: Option<i64>,
    until: i64,
    tx: &mpsc::Sender<Line>,
) -> Result<Progress, Stop> {
    let mut p = Progress::default();
    let first = edge(st, since, until, false).await?;
    let last = edge(st, since, until, true).await?;
    // Ids are assigned in order by the writer: the id span of the window
    // is its size (an upper bound where retention or loss left holes).
    p.total = match (first, last) {
        (Some(a), Some(b)) => (b - a + 1).max(0) as u64,
        _ => 0,
    };
    let (otx, orx) = mpsc::channel::<Out>(OUT_PAGES);
    let emitter = tokio::spawn(emit(st.clone(), engine.clone(), orx, tx.clone()));
    let matched = match_pages(st, engine, since, until, (first, last), &otx, &mut p).await;
    drop(otx);
    // The emitter's own end explains a send that failed: the client went
    // away, or a store query failed.
    let emitted = match emitter.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Stop::Gone(p)),
    };
    match (matched, emitted) {
        (_, Err(Stop::Store(e))) => return Err(Stop::Store(e)),
        (Err(Stop::Store(e)), _) => return Err(Stop::Store(e)),
        (Err(Stop::Gone(_)), _) | (_, Err(Stop::Gone(_))) => return Err(Stop::Gone(p)),
        (Ok(()), Ok(())) => {}
    }
    p.total = p.total.max(p.scanned);
    let coverage = st.store.coverage(since, Some(until)).await?;
    let summary = json!({ "summary": {
        "scanned": p.scanned,
        "matches": p.matches,
        "rules": engine.rules().len(),
        "coverage": coverage,
    }});
    tx.send(Ok(line(&summary)))
        .await
        .map_err(|_| Stop::Gone(p))?;
    Ok(p)
}

/// The matcher: every event of the window through the rules, in id order.
async fn match_pages(
    st: &AppState,
    engine: &Engine,
    since: Option<i64>,
    until: i64,
    (first, last): (Option<i64>, Option<i64>),
    out: &mpsc::Sender<Out>,
    p: &mut Progress,
) -> Result<(), Stop> {
    let send = |o: Out, p: Progress| async move { out.send(o).await.map_err(|_| Stop::Gone(p)) };
    send(Out::Progress(*p), *p).await?;
    let mut procs = ProcessMap::default();
    let mut users: HashMap<u32, Option<String>> = HashMap::new();
    let mut last_progress = Instant::now();
    let mut hits: Vec<&Rule> = Vec::new();
    let (ptx, mut prx) = mpsc::channel::<Result<Vec<traceed_wire::Event>, StoreError>>(2);
    if let (Some(lo), Some(hi)) = (first, last) {
        let window = Window {
            since,
            until,
            last: hi,
        };
        let path = st.store.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let mut sc = match Scanner::open(&path) {
                Ok(sc) => sc,
                Err(e) => {
                    let _ = ptx.blocking_send(Err(e));
                    return;
                }
            };
            let mut after = lo - 1;
            loop {
                let mut page = Vec::with_capacity(CHUNK as usize);
                match sc.read(after, window, CHUNK, &mut page) {
                    Ok(Some(id)) => after = id,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = ptx.blocking_send(Err(e));
                        return;
                    }
                }
                if ptx.blocking_send(Ok(page)).is_err() {
                    return;
                }
            }
        });
    } else {
        drop(ptx);
    }
    while let Some(page) = prx.recv().await {
        if out.is_closed() {
            return Err(Stop::Gone(*p));
        }
        let mut found = Vec::new();
        for ev in page? {
            p.scanned += 1;
            if let Some(uid) = ev.uid {
                users
                    .entry(uid)
                    .or_insert_with(|| crate::detect::user_name(uid));
            }
            let user = ev
                .uid
                .and_then(|u| users.get(&u))
                .and_then(|u| u.as_deref());
            hits.clear();
            let subject = WireSubject::new(&ev, &procs, user);
            if subject.is_candidate() {
                engine.matches(&subject, &mut hits);
            }
            procs.observe(&ev);
            if !hits.is_empty() {
                p.matches += hits.len() as u64;
                found.push((hits.iter().map(|r| engine.index_of(r)).collect(), ev));
            }
        }
        if !found.is_empty() {
            send(Out::Hits(found), *p).await?;
        }
        if last_progress.elapsed() >= PROGRESS {
            last_progress = Instant::now();
            send(Out::Progress(*p), *p).await?;
        }
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// The emitter: match lines (each with the process's ancestry, looked up
/// and written as JSON once per process) and progress lines, in the
/// matcher's order, in batches.
async fn emit(
    st: Arc<AppState>,
    engine: Arc<Engine>,
    mut rx: mpsc::Receiver<Out>,
    tx: mpsc::Sender<Line>,
) -> Result<(), Stop> {
    let rules = engine.rules();
    // Match lines, written straight from the event and a cached ancestry
    // (no serde_json::Value per match), sent in batches.
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES * 2);
    let flush = |batch: &mut Vec<u8>| {
        let out = std::mem::replace(batch, Vec::with_capacity(BATCH_BYTES * 2));
        let tx = &tx;
        async move {
            if out.is_empty() {
                return Ok(());
            }
            // The matcher's own count goes in the summary: scan() maps this.
            tx.send(Ok(out))
                .await
                .map_err(|_| Stop::Gone(Progress::default()))
        }
    };
    let mut ancestries = Ancestries::default();
    while let Some(o) = rx.recv().await {
        match o {
            Out::Progress(p) => {
                flush(&mut batch).await?;
                flush(&mut line(&json!({ "progress": p.json() }))).await?;
            }
            Out::Hits(found) => {
                for (idx, ev) in &found {
                    let ancestry = ancestries.of(&st, ev).await?;
                    for &i in idx {
                        match_line(&mut batch, &rules[i], ev, &ancestry);
                    }
                    if batch.len() >= BATCH_BYTES {
                        flush(&mut batch).await?;
                    }
                }
                flush(&mut batch).await?;
            }
        }
    }
    Ok(())
}

/// Each matching process's ancestry as JSON, looked up once: a process
/// that matches once tends to match again (a run of its events).
#[derive(Default)]
struct Ancestries {
    json: HashMap<u64, Arc<[u8]>>,
    /// Most matching processes are distinct, their ancestors are not.
    instances: crate::store::procs::ProcCache,
}

impl Ancestries {
    async fn of(&mut self, st: &AppState, ev: &traceed_wire::Event) -> Result<Arc<[u8]>, Stop> {
        let Some(traceed_wire::ProcKey(k)) = ev.proc else {
            return Ok(Arc::from(&b"[]"[..]));
        };
        if let Some(a) = self.json.get(&k) {
            return Ok(a.clone());
        }
        let chain = st
            .store
            .ancestors_with(k as i64, &mut self.instances)
            .await?;
        let a: Arc<[u8]> = serde_json::to_vec(&chain)
            .unwrap_or_else(|_| b"[]".to_vec())
            .into();
        if self.json.len() >= ANCESTRIES {
            self.json.clear();
        }
        self.json.insert(k, a.clone());
        Ok(a)
    }
}

/// Append one match line: `{"match":{"rule":{…},"event":{…},"ancestry":[…]}}`.
fn match_line(out: &mut Vec<u8>, rule: &Rule, ev: &traceed_wire::Event, ancestry: &[u8]) {
    #[derive(serde::Serialize)]
    struct RuleRef<'a> {
        id: &'a str,
        title: &'a str,
        level: &'a str,
    }
    let r = RuleRef {
        id: &rule.id,
        title: &rule.title,
        level: rule.level.name(),
    };
    // Writing plain structs into a Vec cannot fail.
    out.extend_from_slice(b"{\"match\":{\"rule\":");
    let _ = serde_json::to_writer(&mut *out, &r);
    out.extend_from_slice(b",\"event\":");
    let _ = serde_json::to_writer(&mut *out, ev);
    out.extend_from_slice(b",\"ancestry\":");
    out.extend_from_slice(ancestry);
    out.extend_from_slice(b"}}\n");
}

impl Progress {
    fn json(&self) -> serde_json::Value {
        json!({ "scanned": self.scanned, "total": self.total, "matches": self.matches })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A match line written by hand says what the `json!` of the same
    /// parts says: the rule, the event (awkward strings too), the ancestry.
    #[test]
    fn a_match_line_is_the_json_of_its_parts() {
        let yaml = "title: Shadow read\nid: 5b1f2b1e-0000-4000-8000-000000000001\nlevel: high\n\
                    logsource:\n  product: linux\n  category: process_creation\n\
                    detection:\n  sel:\n    Image|endswith: /cat\n  condition: sel\n";
        let rule = load_rules(yaml).unwrap().remove(0);
        let mut ev = traceed_wire::Event::new("exec", 1_764_017_445_123_456_789, "core");
        ev.pid = Some(42);
        ev.comm = Some("c\"a\\t\n\\xff".into());
        ev.proc = Some(traceed_wire::ProcKey(7));
        ev.args = json!({"argv": ["cat", "/etc/shadow"], "filename": "/bin/cat"});
        let ancestry = vec![traceed_wire::ProcEntry {
            proc: traceed_wire::proc_key_hex(1),
            pid: 1,
            ppid: None,
            parent: None,
            uid: Some(0),
            comm: Some("init".into()),
            exe: None,
            cmdline: Some("/sbin/init splash".into()),
            start: Some(5),
            exit: None,
            exit_code: None,
            signal: None,
            lifetime_s: None,
        }];
        let mut out = Vec::new();
        match_line(
            &mut out,
            &rule,
            &ev,
            &serde_json::to_vec(&ancestry).unwrap(),
        );
        match_line(&mut out, &rule, &ev, b"[]");
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want = |a: &[traceed_wire::ProcEntry]| {
            json!({ "match": {
                "rule": { "id": rule.id, "title": rule.title, "level": rule.level.name() },
                "event": ev,
                "ancestry": a,
            }})
        };
        assert_eq!(lines, [want(&ancestry), want(&[])]);
        assert!(text.ends_with('\n') && text.lines().count() == 2);
    }
}
