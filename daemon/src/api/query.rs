//! `GET /v1/events` parameters: strict parsing into a store `Query` and the
//! opaque keyset cursor.

use std::collections::HashSet;

use super::ApiError;
use crate::store::Query;

pub const DEFAULT_LIMIT: u32 = 1000;
pub const MAX_LIMIT: u32 = 10_000;
/// Longest container id accepted (a full docker/containerd id is 64 hex).
const MAX_CONTAINER: usize = 64;
/// comm is 15 bytes in the kernel; exe a path. Anything longer cannot match.
const MAX_TEXT: usize = 4096;

pub const PARAMS: &[&str] = &[
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

pub fn decode_cursor(s: &str) -> Option<i64> {
    let hex = s.strip_prefix('i')?;
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(hex, 16).ok().filter(|v| *v >= 0)
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ApiError> {
    // `+5` parses as a Rust integer; a query parameter is digits only.
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad(format!(
            "parameter '{name}': '{v}' is not a non-negative integer"
        )));
    }
    v.parse().map_err(|_| {
        ApiError::bad(format!(
            "parameter '{name}': '{v}' is out of range (0..={})",
            u32::MAX
        ))
    })
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
        let text = |v: String| {
            if v.len() > MAX_TEXT || v.contains('\0') {
                Err(ApiError::bad(format!(
                    "parameter '{k}': longer than {MAX_TEXT} bytes or contains NUL"
                )))
            } else {
                Ok(v)
            }
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
                    if !q.kinds.iter().any(|k| k == kind) {
                        q.kinds.push(kind.to_string());
                    }
                }
            }
            "pid" => q.pid = Some(parse_num(&k, &v)?),
            "ppid" => q.ppid = Some(parse_num(&k, &v)?),
            "uid" => q.uid = Some(parse_num(&k, &v)?),
            "comm" => q.comm = Some(text(v)?),
            "exe" => q.exe = Some(text(v)?),
            "container" => {
                if v.len() > MAX_CONTAINER || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ApiError::bad(format!(
                        "parameter 'container': '{v}' is not a container id \
                         (1 to {MAX_CONTAINER} hex digits; a prefix is enough)"
                    )));
                }
                q.container = Some(v.to_ascii_lowercase());
            }
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
                let n: u32 = parse_num(&k, &v)
                    .map_err(|_| ApiError::bad(format!("parameter 'limit': '{v}' is not an integer in 1..={MAX_LIMIT}")))?;
                if !(1..=MAX_LIMIT).contains(&n) {
                    return Err(ApiError::bad(format!(
                        "parameter 'limit': {n} is outside 1..={MAX_LIMIT}"
                    )));
                }
                q.limit = n;
            }
            "cursor" => {
                q.after_id = Some(decode_cursor(&v).ok_or_else(|| {
                    ApiError::bad("parameter 'cursor': not a cursor this server issued (pass next_cursor exactly as returned)")
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
            "parameter 'order': desc cannot be combined with follow=true (a stream runs oldest to newest)",
        ));
    }
    Ok((q, follow))
}
