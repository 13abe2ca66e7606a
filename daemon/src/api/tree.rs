//! `GET /v1/tree` (the ancestry and descendants of one process instance)
//! and the `descendants_of` filter of `GET /v1/events`: a pid (with `at`)
//! or a key resolved to one instance through the store's `procs` table.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{ApiError, AppState};
use crate::store::Store;

/// The parameters of `GET /v1/tree`, in the OpenAPI document's order.
pub const PARAMS: &[&str] = &["pid", "proc", "at"];

/// Which process a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pid { pid: u32, at: Option<i64> },
    Key(u64),
}

/// Strict: an unknown, repeated or empty parameter is a 400 naming it;
/// exactly one of `pid` and `proc`; `at` only with `pid`.
pub fn parse(raw: Option<&str>, now: i64) -> Result<Target, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| ApiError::bad(e.to_string()))?;
    let (mut pid, mut key, mut at) = (None, None, None);
    for (k, v) in pairs {
        if !PARAMS.contains(&k.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown parameter '{k}'; accepted: {}",
                PARAMS.join(", ")
            )));
        }
        if v.is_empty() {
            return Err(ApiError::bad(format!("parameter '{k}' is empty")));
        }
        let dup = match k.as_str() {
            "pid" => pid.is_some(),
            "proc" => key.is_some(),
            _ => at.is_some(),
        };
        if dup {
            return Err(ApiError::bad(format!("parameter '{k}' is given twice")));
        }
        match k.as_str() {
            "pid" => {
                let n = v
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| v.parse::<u32>().ok())
                    .flatten()
                    .ok_or_else(|| {
                        ApiError::bad(format!(
                            "parameter 'pid': '{v}' is not a non-negative integer"
                        ))
                    })?;
                pid = Some(n);
            }
            "proc" => {
                key = Some(traceed_wire::parse_proc_key(&v).ok_or_else(|| {
                    ApiError::bad(format!(
                        "parameter 'proc': '{v}' is not a process key (16 hex digits)"
                    ))
                })?);
            }
            _ => {
                at = Some(
                    traceed_wire::parse_time_spec(&v, now)
                        .map_err(|e| ApiError::bad(format!("parameter 'at': {e}")))?,
                );
            }
        }
    }
    match (pid, key, at) {
        (Some(pid), None, at) => Ok(Target::Pid { pid, at }),
        (None, Some(k), None) => Ok(Target::Key(k)),
        (None, Some(_), Some(_)) => Err(ApiError::bad(
            "parameter 'at': only meaningful with pid (a proc key names one process already)",
        )),
        (Some(_), Some(_), _) => Err(ApiError::bad(
            "parameters 'pid' and 'proc': give one of them, not both",
        )),
        (None, None, _) => Err(ApiError::bad("parameter 'pid' (or 'proc') is required")),
    }
}

fn no_process(pid: u32, at: Option<i64>) -> ApiError {
    let when = at.map_or_else(|| "now".to_string(), traceed_wire::format_ts);
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no process with pid {pid} at {when}"),
    )
}

/// The stored key of the process `pid` named at `at` (see
/// Store::proc_at), or the 404 saying there was none.
pub async fn resolve(store: &Store, pid: u32, at: Option<i64>) -> Result<i64, ApiError> {
    store
        .proc_at(pid, at)
        .await?
        .ok_or_else(|| no_process(pid, at))
}

pub async fn tree(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let key = match parse(raw.as_deref(), traceed_wire::now_ns())? {
        Target::Pid { pid, at } => resolve(&st.store, pid, at).await?,
        Target::Key(k) => k as i64,
    };
    match st.store.tree(key).await? {
        Some(mut t) => {
            let (from, to) = t.window();
            t.coverage = Some(st.store.coverage(from, to).await?);
            Ok(Json(t).into_response())
        }
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no process with key {}",
                traceed_wire::proc_key_hex(key as u64)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<Target, ApiError>) -> String {
        r.unwrap_err().1
    }

    #[test]
    fn tree_parameters_are_strict() {
        assert_eq!(
            parse(Some("pid=5"), 0).unwrap(),
            Target::Pid { pid: 5, at: None }
        );
        assert_eq!(
            parse(Some("proc=00000000000000ff"), 0).unwrap(),
            Target::Key(255)
        );
        assert!(msg(parse(Some("pid=5&at=yesterday"), 0)).contains("parameter 'at'"));
        assert!(msg(parse(Some("pid=-1"), 0)).contains("parameter 'pid'"));
        assert!(msg(parse(Some("proc=zz"), 0)).contains("parameter 'proc'"));
        assert!(msg(parse(Some("pid=1&pid=2"), 0)).contains("twice"));
        assert!(msg(parse(Some("pids=1"), 0)).contains("unknown parameter 'pids'"));
        assert!(msg(parse(None, 0)).contains("required"));
        assert_eq!(
            parse(Some("pid=7&at=2026-01-01T00:00:00Z"), 0).unwrap(),
            Target::Pid {
                pid: 7,
                at: Some(1_767_225_600_000_000_000)
            }
        );
    }
}
