//! The REST API on the Unix socket (axum). Read-only: it queries the store
//! and subscribes to the writer's live broadcast for `follow=true`.
//! Every bad request is a 4xx with `{"error": "..."}`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::broadcast;
use traceed_wire::{ErrorBody, Event, EventsPage, Refusal, SkippedHook, Status};

use crate::metrics::Counters;
use crate::store::{Query, Store};

pub const DEFAULT_LIMIT: u32 = 1000;
pub const MAX_LIMIT: u32 = 10_000;

/// What the loader decided, fixed for the daemon's lifetime.
#[derive(Clone, Default)]
pub struct LoadInfo {
    pub rung: String,
    pub fidelity: String,
    pub btf_source: Option<String>,
    pub kernel_object: Option<traceed_wire::KernelObject>,
    pub refused: Vec<Refusal>,
    pub programs: Vec<String>,
    pub skipped_hooks: Vec<SkippedHook>,
    pub transport: String,
}

pub struct AppState {
    pub store: Store,
    pub counters: Arc<Counters>,
    pub live: broadcast::Sender<Arc<Event>>,
    pub load: LoadInfo,
    pub ready: AtomicBool,
    pub started: Instant,
    pub retention: String,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .fallback(not_found)
        .with_state(state)
}

#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store query failed");
        Self(StatusCode::INTERNAL_SERVER_ERROR, format!("store: {e}"))
    }
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such endpoint; try /v1/events, /v1/status, /healthz".into(),
    )
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "starting".into()).into_response()
    }
}

async fn status(State(st): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    let uptime = st.started.elapsed();
    let total = st.counters.events_total.load(Relaxed);
    Ok(Json(Status {
        rung: st.load.rung.clone(),
        btf_source: st.load.btf_source.clone(),
        kernel_object: st.load.kernel_object.clone(),
        refused: st.load.refused.clone(),
        programs: st.load.programs.clone(),
        skipped_hooks: st.load.skipped_hooks.clone(),
        transport: st.load.transport.clone(),
        events_total: total,
        lost_total: st.counters.lost_total(),
        events_per_s: total as f64 / uptime.as_secs_f64().max(1e-3),
        db_path: st.store.path().display().to_string(),
        db_bytes: st.store.db_bytes(),
        schema_version: st.store.schema_version().await?,
        oldest_ts: st.store.oldest_ts().await?,
        retention: st.retention.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: uptime.as_secs(),
    }))
}

const PARAMS: &[&str] = &[
    "since",
    "until",
    "kind",
    "pid",
    "ppid",
    "uid",
    "comm",
    "exe",
    "container",
    "fidelity",
    "limit",
    "cursor",
    "order",
    "follow",
];

pub fn encode_cursor(id: i64) -> String {
    format!("i{id:x}")
}

fn decode_cursor(s: &str) -> Option<i64> {
    let hex = s.strip_prefix('i')?;
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    i64::from_str_radix(hex, 16).ok().filter(|v| *v >= 0)
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ApiError> {
    v.parse()
        .map_err(|_| ApiError::bad(format!("parameter '{name}': '{v}' is not a valid number")))
}

/// Strict parsing: unknown, repeated or empty parameters are errors.
pub fn parse_query(raw: Option<&str>) -> Result<(Query, bool), ApiError> {
    let mut q = Query {
        limit: DEFAULT_LIMIT,
        ..Query::default()
    };
    let mut follow = false;
    let mut seen = HashSet::new();
    let now = traceed_wire::now_ns();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::bad(format!("malformed query string: {e}")))?;
    for (k, v) in pairs {
        if !PARAMS.contains(&k.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown parameter '{k}'; accepted: {}",
                PARAMS.join(", ")
            )));
        }
        if !seen.insert(k.clone()) {
            return Err(ApiError::bad(format!(
                "parameter '{k}' given more than once"
            )));
        }
        if v.is_empty() {
            return Err(ApiError::bad(format!("parameter '{k}' is empty")));
        }
        let time = |v: &str| {
            traceed_wire::parse_time_spec(v, now)
                .map_err(|e| ApiError::bad(format!("parameter '{k}': {e}")))
        };
        match k.as_str() {
            "since" => q.since = Some(time(&v)?),
            "until" => q.until = Some(time(&v)?),
            "kind" => {
                for kind in v.split(',') {
                    if !traceed_wire::is_kind(kind) {
                        return Err(ApiError::bad(format!(
                            "parameter 'kind': unknown kind '{kind}'; known: {}",
                            traceed_wire::KINDS.join(", ")
                        )));
                    }
                    q.kinds.push(kind.to_string());
                }
            }
            "pid" => q.pid = Some(parse_num(&k, &v)?),
            "ppid" => q.ppid = Some(parse_num(&k, &v)?),
            "uid" => q.uid = Some(parse_num(&k, &v)?),
            "comm" => q.comm = Some(v),
            "exe" => q.exe = Some(v),
            "container" => q.container = Some(v),
            "fidelity" => {
                if !traceed_wire::FIDELITIES.contains(&v.as_str()) {
                    return Err(ApiError::bad(format!(
                        "parameter 'fidelity': '{v}' is not one of {}",
                        traceed_wire::FIDELITIES.join(", ")
                    )));
                }
                q.fidelity = Some(v);
            }
            "limit" => {
                let n: u32 = parse_num(&k, &v)?;
                if !(1..=MAX_LIMIT).contains(&n) {
                    return Err(ApiError::bad(format!(
                        "parameter 'limit': {n} is outside 1..={MAX_LIMIT}"
                    )));
                }
                q.limit = n;
            }
            "cursor" => {
                q.after_id = Some(decode_cursor(&v).ok_or_else(|| {
                    ApiError::bad("parameter 'cursor': not a cursor this server issued (use next_cursor as returned)")
                })?)
            }
            "order" => {
                q.desc = match v.as_str() {
                    "asc" => false,
                    "desc" => true,
                    _ => return Err(ApiError::bad(format!("parameter 'order': '{v}' is not asc or desc"))),
                }
            }
            "follow" => {
                follow = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(ApiError::bad(format!("parameter 'follow': '{v}' is not true or false"))),
                }
            }
            _ => unreachable!("checked against PARAMS"),
        }
    }
    if let (Some(s), Some(u)) = (q.since, q.until) {
        if s > u {
            return Err(ApiError::bad("parameter 'since' is after 'until'"));
        }
    }
    if follow && q.desc {
        return Err(ApiError::bad(
            "order=desc cannot be combined with follow=true",
        ));
    }
    Ok((q, follow))
}

/// Does a live event pass the query's filters (the SQL WHERE, in Rust)?
fn matches(q: &Query, e: &Event) -> bool {
    q.since.is_none_or(|s| e.ts >= s)
        && q.until.is_none_or(|u| e.ts < u)
        && (q.kinds.is_empty() || q.kinds.contains(&e.kind))
        && q.pid.is_none_or(|v| e.pid == Some(v))
        && q.ppid.is_none_or(|v| e.ppid == Some(v))
        && q.uid.is_none_or(|v| e.uid == Some(v))
        && q.comm.as_ref().is_none_or(|v| e.comm.as_ref() == Some(v))
        && q.exe.as_ref().is_none_or(|v| e.exe.as_ref() == Some(v))
        && q.container.as_ref().is_none_or(|v| {
            e.container_id
                .as_ref()
                .is_some_and(|c| c.starts_with(v.as_str()))
        })
        && q.fidelity.as_ref().is_none_or(|v| &e.fidelity == v)
}

async fn events(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (q, follow) = parse_query(raw.as_deref())?;
    if follow {
        return Ok(follow_stream(st, q));
    }
    let (events, more) = st.store.query(&q).await?;
    let next_cursor = if more {
        events.last().map(|e| encode_cursor(e.id))
    } else {
        None
    };
    Ok(Json(EventsPage {
        events,
        next_cursor,
    })
    .into_response())
}

fn ndjson_line(v: &impl serde::Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    line
}

/// History first, then live: subscribe before reading history so nothing
/// committed in between is missed, and skip live ids already sent.
fn follow_stream(st: Arc<AppState>, mut q: Query) -> Response {
    let mut live = st.live.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut last_id = q.after_id.unwrap_or(0);
        loop {
            q.after_id = Some(last_id);
            let (page, more) = match st.store.query(&q).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx
                        .send(Ok(ndjson_line(&ErrorBody {
                            error: e.to_string(),
                        })))
                        .await;
                    return;
                }
            };
            for e in &page {
                last_id = e.id;
                if tx.send(Ok(ndjson_line(e))).await.is_err() {
                    return;
                }
            }
            if !more {
                break;
            }
        }
        loop {
            match live.recv().await {
                Ok(e) => {
                    if e.id <= last_id || !matches(&q, &e) {
                        continue;
                    }
                    last_id = e.id;
                    if tx.send(Ok(ndjson_line(&*e))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let now = traceed_wire::now_ns();
                    let ev = crate::ingest::lost_event(n, "follower", now, now, &st.load.fidelity);
                    if tx.send(Ok(ndjson_line(&ev))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parameters() {
        assert!(parse_query(None).is_ok());
        for bad in [
            "kind=",
            "bogus=1",
            "limit=0",
            "limit=10001",
            "kind=exec,nope",
            "since=yesterday",
            "cursor=zz",
            "pid=-1",
            "since=1h&since=2h",
            "order=sideways",
        ] {
            let err = parse_query(Some(bad))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(err.0, StatusCode::BAD_REQUEST, "{bad}");
            let name = bad.split('=').next().unwrap();
            assert!(
                err.1.contains(name),
                "{bad}: message '{}' does not name the parameter",
                err.1
            );
        }
        let (q, follow) = parse_query(Some("kind=exec,exit&limit=5&follow=true")).unwrap();
        assert_eq!(q.kinds, ["exec", "exit"]);
        assert_eq!(q.limit, 5);
        assert!(follow);
    }

    #[test]
    fn cursor_roundtrip() {
        assert_eq!(decode_cursor(&encode_cursor(123456)), Some(123456));
        assert_eq!(decode_cursor("123"), None);
    }
}
