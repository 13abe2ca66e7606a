//! `GET /v1/events` parameters: the strict `EventsQuery` of the wire crate
//! (every single-parameter check, in request order) turned into a store
//! `Query`: times resolved against the clock, the cursor decoded, and the
//! checks that take two parameters.

use traceed_wire::query::{decode_cursor, Cidr, Order, PathMatch, BAD_CURSOR, DEFAULT_LIMIT};
use traceed_wire::EventsQuery;

use super::ApiError;
use crate::store::Query;

pub use traceed_wire::query::encode_cursor;

/// `descendants_of` and its `at` (resolved against the clock), which the
/// handler turns into `Query::procs` with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descendants {
    pub pid: u32,
    pub at: Option<i64>,
}

/// Strict parsing: unknown, repeated or empty parameters are errors.
pub fn parse_query(raw: Option<&str>) -> Result<(Query, bool), ApiError> {
    parse_query_full(raw).map(|(q, f, _)| (q, f))
}

/// [`parse_query`], and the `descendants_of` request if any.
pub fn parse_query_full(raw: Option<&str>) -> Result<(Query, bool, Option<Descendants>), ApiError> {
    // The only errors are EventsQuery's own, each naming the parameter.
    let p: EventsQuery =
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| ApiError::bad(e.to_string()))?;
    let now = traceed_wire::now_ns();
    let time = |k: &str, v: &Option<String>| {
        v.as_deref()
            .map(|v| {
                traceed_wire::parse_time_spec(v, now)
                    .map_err(|e| ApiError::bad(format!("parameter '{k}': {e}")))
            })
            .transpose()
    };
    let q = Query {
        since: time("since", &p.since)?,
        until: time("until", &p.until)?,
        kinds: p.kind,
        pid: p.pid,
        ppid: p.ppid,
        uid: p.uid,
        comm: p.comm,
        exe: p.exe,
        container: p.container,
        fidelity: p.fidelity,
        procs: None,
        // EventsQuery checked both; these cannot fail here.
        path: p
            .path
            .as_deref()
            .map(|v| {
                PathMatch::parse(v).map_err(|e| ApiError::bad(format!("parameter 'path': {e}")))
            })
            .transpose()?,
        addr: p
            .addr
            .as_deref()
            .map(|v| Cidr::parse(v).map_err(|e| ApiError::bad(format!("parameter 'addr': {e}"))))
            .transpose()?,
        port: p.port,
        cmdline: p.cmdline,
        failed: p.failed,
        after_id: p
            .cursor
            .as_deref()
            .map(|c| decode_cursor(c).ok_or_else(|| ApiError::bad(BAD_CURSOR)))
            .transpose()?,
        desc: p.order == Some(Order::Desc),
        limit: p.limit.unwrap_or(DEFAULT_LIMIT),
    };
    if let (Some(s), Some(u)) = (q.since, q.until) {
        if s > u {
            return Err(ApiError::bad("parameter 'since' is after 'until'"));
        }
    }
    if p.follow && q.desc {
        return Err(ApiError::bad(
            "parameter 'order': desc cannot be combined with follow=true (a stream runs oldest to newest)",
        ));
    }
    let at = time("at", &p.at)?;
    let desc = match (p.descendants_of, at) {
        (Some(pid), at) => Some(Descendants { pid, at }),
        (None, Some(_)) => {
            return Err(ApiError::bad(
                "parameter 'at': only meaningful with descendants_of",
            ))
        }
        (None, None) => None,
    };
    if desc.is_some() && p.follow {
        return Err(ApiError::bad(
            "parameter 'descendants_of': cannot be combined with follow=true \
             (the set of processes is decided when the request is made)",
        ));
    }
    Ok((q, p.follow, desc))
}

/// `GET /v1/events/counts`: `by` (required), `top`, and every filter of
/// `/v1/events` except paging, order and follow.
pub fn parse_counts(raw: Option<&str>) -> Result<(Query, String, usize), ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| ApiError::bad(e.to_string()))?;
    let (mut by, mut top) = (None, None);
    let mut rest = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "by" if by.is_some() => {
                return Err(ApiError::bad("parameter 'by' given more than once"))
            }
            "top" if top.is_some() => {
                return Err(ApiError::bad("parameter 'top' given more than once"))
            }
            "by" => {
                if !traceed_wire::COUNT_BY.contains(&v.as_str()) {
                    return Err(ApiError::bad(format!(
                        "parameter 'by': unknown field '{v}'; known: {}",
                        traceed_wire::COUNT_BY.join(", ")
                    )));
                }
                by = Some(v);
            }
            "top" => {
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| {
                        (1..=traceed_wire::MAX_TOP).contains(n)
                            && v.bytes().all(|b| b.is_ascii_digit())
                    })
                    .ok_or_else(|| {
                        ApiError::bad(format!(
                            "parameter 'top': '{v}' is not an integer in 1..={}",
                            traceed_wire::MAX_TOP
                        ))
                    })?;
                top = Some(n);
            }
            "limit" | "cursor" | "order" | "follow" => {
                return Err(ApiError::bad(format!(
                    "parameter '{k}' does not apply to counts"
                )))
            }
            _ => rest.push((k, v)),
        }
    }
    let by = by.ok_or_else(|| {
        ApiError::bad(format!(
            "parameter 'by' is required: one of {}",
            traceed_wire::COUNT_BY.join(", ")
        ))
    })?;
    let rest = serde_urlencoded::to_string(&rest).map_err(|e| ApiError::bad(e.to_string()))?;
    let (q, _) = parse_query(Some(&rest))?;
    Ok((q, by, top.unwrap_or(traceed_wire::DEFAULT_TOP)))
}
