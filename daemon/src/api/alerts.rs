//! `GET /v1/alerts`: stored Sigma matches with their event and the
//! process's minute before, filtered by since/until, minimum level and rule
//! id; `follow=true` streams NDJSON, polling the table (alerts are rare,
//! and polling keeps the writer free of another subscriber).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::mpsc;
use traceed_wire::ErrorBody;

use super::{ApiError, AppState};
use crate::detect::alerts::{self, AlertQuery};

/// Every parameter, in the order openapi.json documents them (drift test).
pub const PARAMS: &[&str] = &["since", "until", "level", "rule", "follow", "limit"];
const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 10_000;
const POLL: Duration = Duration::from_millis(200);

fn parse(raw: Option<&str>) -> Result<(AlertQuery, bool), ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| ApiError::bad(e.to_string()))?;
    let now = traceed_wire::now_ns();
    let mut q = AlertQuery {
        limit: DEFAULT_LIMIT,
        ..AlertQuery::default()
    };
    let mut follow = false;
    let mut seen = Vec::new();
    for (k, v) in &pairs {
        if seen.contains(&k.as_str()) {
            return Err(ApiError::bad(format!("parameter '{k}' is given twice")));
        }
        seen.push(k.as_str());
        let time = |v: &str| {
            traceed_wire::parse_time_spec(v, now)
                .map_err(|e| ApiError::bad(format!("parameter '{k}': {e}")))
        };
        match k.as_str() {
            "since" => q.since = Some(time(v)?),
            "until" => q.until = Some(time(v)?),
            "level" => {
                q.min_level = Some(alerts::parse_level(v).ok_or_else(|| {
                    ApiError::bad(format!(
                        "parameter 'level': '{v}' is not one of informational, low, medium, high, critical"
                    ))
                })?)
            }
            "rule" if v.is_empty() => return Err(ApiError::bad("parameter 'rule' is empty")),
            "rule" if v.len() > traceed_wire::query::MAX_TEXT => {
                return Err(ApiError::bad(format!(
                    "parameter 'rule': longer than {} bytes",
                    traceed_wire::query::MAX_TEXT
                )))
            }
            "rule" => q.rule = Some(v.clone()),
            "follow" => {
                follow = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(ApiError::bad(format!("parameter 'follow': '{v}' is not true or false"))),
                }
            }
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| ApiError::bad(format!("parameter 'limit': '{v}' is not 1..={MAX_LIMIT}")))?
            }
            _ => {
                return Err(ApiError::bad(format!(
                    "unknown parameter '{k}'; accepted: {}",
                    PARAMS.join(", ")
                )))
            }
        }
    }
    if let (Some(s), Some(u)) = (q.since, q.until) {
        if s > u {
            return Err(ApiError::bad("parameter 'since' is after 'until'"));
        }
    }
    Ok((q, follow))
}

fn line(v: &impl serde::Serialize) -> Vec<u8> {
    let mut l = serde_json::to_vec(v).unwrap_or_default();
    l.push(b'\n');
    l
}

pub async fn get(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (mut q, follow) = parse(raw.as_deref())?;
    if !follow {
        return Ok(Json(alerts::query(&st.store, &q).await?).into_response());
    }
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(64);
    tokio::spawn(async move {
        loop {
            match alerts::query(&st.store, &q).await {
                Ok(page) => {
                    for a in &page {
                        q.after_id = Some(a.id);
                        if tx.send(Ok(line(a))).await.is_err() {
                            return;
                        }
                    }
                    if page.len() as u32 == q.limit {
                        continue;
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Ok(line(&ErrorBody {
                            error: format!("store: {e}"),
                        })))
                        .await;
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = tx.closed() => return,
            }
        }
    });
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|l| (l, rx)) });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}
