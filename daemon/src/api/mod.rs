//! The REST API on the Unix socket (axum). Read-only: it queries the store
//! and subscribes to the writer's live broadcast for `follow=true`.
//! Every refused request is a 4xx with `{"error": "..."}` saying what was
//! wrong and what is accepted; `guard` applies the per-request limits, peer
//! check, metrics and logging in one place for every route.

mod alerts;
mod follow;
mod hunt;
mod query;
pub mod serve;
#[cfg(test)]
mod tests;
mod tree;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{RawQuery, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use traceed_wire::{Count, CountsPage, ErrorBody, EventsPage, Refusal, SkippedHook, Status};

use crate::service::metrics::{Counters, Metrics};
use crate::store::live::Live;
use crate::store::Store;
pub use query::{encode_cursor, parse_counts, parse_query};
use serve::Caller;

/// The OpenAPI 3.1 description of everything below.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Longest request target answered normally (414 beyond).
const MAX_URI: usize = 8 * 1024;
/// Largest total of header names and values answered normally (431 beyond).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What the loader decided, fixed for the daemon's lifetime.
#[derive(Clone, Default)]
pub struct LoadInfo {
    pub rung: String,
    pub fidelity: String,
    pub btf_source: Option<String>,
    pub refused: Vec<Refusal>,
    pub programs: Vec<String>,
    pub skipped_hooks: Vec<SkippedHook>,
    pub attach: Option<traceed_wire::AttachStatus>,
    pub transport: String,
    pub kernel_object: Option<traceed_wire::KernelObject>,
}

pub struct AppState {
    pub store: Store,
    pub counters: Arc<Counters>,
    pub live: Live,
    pub load: LoadInfo,
    pub ready: AtomicBool,
    pub started: Instant,
    pub retention: String,
    pub metrics: Metrics,
}

impl AppState {
    pub fn new(
        store: Store,
        counters: Arc<Counters>,
        live: Live,
        load: LoadInfo,
        retention: String,
        started: Instant,
    ) -> Self {
        let db = store.clone();
        Self {
            metrics: Metrics::new(counters.clone(), move || db.db_bytes()),
            store,
            counters,
            live,
            load,
            ready: AtomicBool::new(false),
            started,
            retention,
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get_only(healthz))
        .route("/metrics", get_only(metrics))
        .route("/v1/status", get_only(status))
        .route("/v1/events", get_only(events))
        .route("/v1/alerts", get_only(alerts::get))
        .route("/v1/tree", get_only(tree::tree))
        // The hunt's rules travel in its body (its own handler bounds it).
        .route("/v1/hunt", axum::routing::post(hunt::post))
        .route("/v1/events/counts", get_only(counts))
        .route("/v1/openapi.json", get_only(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// A GET (and HEAD) endpoint that refuses request bodies. As a route
/// layer it runs only once path and method matched: any other method is
/// routing's 405, whatever it carries.
fn get_only<H, T>(handler: H) -> MethodRouter<Arc<AppState>>
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    get(handler).route_layer(middleware::from_fn(refuse_body))
}

async fn refuse_body(req: Request, next: Next) -> Response {
    let h = req.headers();
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request bodies are not accepted: every endpoint but POST /v1/hunt is a GET with query parameters"
                .into(),
        )
        .into_response();
    }
    next.run(req).await
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

const ENDPOINTS: &str =
    "GET /v1/events, /v1/events/counts, /v1/tree, /v1/alerts, /v1/status, /v1/openapi.json, /healthz, /metrics; POST /v1/hunt";

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such endpoint; the API has {ENDPOINTS}"),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    let mut r = ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed here: the API is read-only, every endpoint answers GET (and HEAD) but POST /v1/hunt",
            req.method()
        ),
    )
    .into_response();
    let allow = if req.uri().path() == "/v1/hunt" {
        "POST"
    } else {
        "GET, HEAD"
    };
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Checks that apply to every request before it is routed, in order:
/// connection limit, peer, request size (bodies: `get_only`). Then counts
/// and logs.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().copied();
    let method = req.method().clone();
    let uri_len = req.uri().to_string().len();
    let path = req.uri().path().to_owned();
    let refusal = precheck(caller.as_ref(), &req, uri_len);
    let resp = match refusal {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    };
    let status = resp.status().as_u16();
    st.metrics.count_request(status);
    let (uid, pid) = caller.map_or((None, None), |c| (Some(c.peer.uid), c.peer.pid));
    // The path only: query strings can be long and are the caller's business.
    let path: String = path.chars().take(256).collect();
    tracing::debug!(?uid, ?pid, %method, path, status, "request");
    resp
}

fn precheck(caller: Option<&Caller>, req: &Request, uri_len: usize) -> Option<Response> {
    // No Caller: the request did not come through `serve`, so nobody
    // checked who sent it. Refused: an unchecked request must never be
    // served (in-process tests attach a Caller themselves).
    let Some(c) = caller else {
        tracing::warn!("refusing a request that carries no peer credentials");
        return Some(
            ApiError(
                StatusCode::FORBIDDEN,
                "permission denied: the request carries no peer credentials \
                 (the API answers only requests that came through its Unix socket)"
                    .into(),
            )
            .into_response(),
        );
    };
    if c.busy {
        let mut r = ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many connections (limit {}); retry shortly",
                serve::MAX_CONNECTIONS
            ),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Some(r);
    }
    if !c.allowed {
        return Some(
            ApiError(
                StatusCode::FORBIDDEN,
                crate::service::peer::refusal(&c.peer),
            )
            .into_response(),
        );
    }
    if uri_len > MAX_URI {
        return Some(
            ApiError(
                StatusCode::URI_TOO_LONG,
                format!("request target is {uri_len} bytes; the limit is {MAX_URI}"),
            )
            .into_response(),
        );
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(
            ApiError(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "request headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"
                ),
            )
            .into_response(),
        );
    }
    None
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "starting".into()).into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::service::metrics::CONTENT_TYPE)],
        st.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn status(State(st): State<Arc<AppState>>) -> Json<Status> {
    let uptime = st.started.elapsed();
    let total = st.counters.events_total.load(Relaxed);
    Json(Status {
        rung: st.load.rung.clone(),
        btf_source: st.load.btf_source.clone(),
        refused: st.load.refused.clone(),
        programs: st.load.programs.clone(),
        skipped_hooks: st.load.skipped_hooks.clone(),
        attach: st.load.attach.clone(),
        kernel_object: st.load.kernel_object.clone(),
        transport: st.load.transport.clone(),
        events_total: total,
        lost_total: st.counters.lost_total(),
        events_per_s: total as f64 / uptime.as_secs_f64().max(1e-3),
        db_path: st.store.path().display().to_string(),
        db_bytes: st.store.db_bytes(),
        schema_version: st.store.schema_version(),
        // Status is what a user asks when the store is in trouble (a full
        // disk can fail even reads): report the rest rather than a 500.
        oldest_ts: st.store.oldest_ts().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "status: cannot read the oldest event");
            None
        }),
        retention: st.retention.clone(),
        store_state: st.store.health().describe(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: uptime.as_secs(),
        export: st.counters.export.get().map(|x| x.snapshot()),
        detect: st
            .counters
            .detect
            .get()
            .map(|d| traceed_wire::DetectStatus {
                rules_loaded: d.rules_loaded.load(Relaxed),
                rules_skipped: d.rules_skipped.load(Relaxed),
                rule_errors: d.rule_errors.load(Relaxed),
                alerts_total: d.alerts_total.load(Relaxed),
                dropped_events: d.dropped_events.load(Relaxed),
            }),
    })
}

async fn counts(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Json<CountsPage>, ApiError> {
    let (q, by, top) = parse_counts(raw.as_deref())?;
    let coverage = st.store.coverage(q.since, q.until).await?;
    let (counts, other, total) = st.store.count_by(&q, &by, top).await?;
    Ok(Json(CountsPage {
        by,
        counts: counts
            .into_iter()
            .map(|(value, count)| Count { value, count })
            .collect(),
        other,
        total,
        coverage,
    }))
}

async fn events(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (mut q, follow, desc) = query::parse_query_full(raw.as_deref())?;
    if let Some(d) = desc {
        let key = tree::resolve(&st.store, d.pid, d.at).await?;
        let (keys, more) = st.store.proc_and_descendants(key).await?;
        if more {
            // Said in the log; the answer covers the first MAX_DESCENDANTS.
            tracing::warn!(
                pid = d.pid,
                cap = crate::store::procs::MAX_DESCENDANTS,
                "descendants_of: more descendants than the cap; the rest are left out"
            );
        }
        q.procs = Some(keys);
    }
    let coverage = st.store.coverage(q.since, q.until).await?;
    if follow {
        // A stream has no body to put it in: the coverage of its history
        // (the window up to now) travels in a header; loss after that
        // arrives as `lost` lines in the stream itself.
        let mut r = follow::stream(st, q);
        if let Some(v) = serde_json::to_string(&coverage)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            r.headers_mut().insert(traceed_wire::COVERAGE_HEADER, v);
        }
        return Ok(r);
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
        coverage: Some(coverage),
    })
    .into_response())
}
