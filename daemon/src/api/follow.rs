//! `follow=true`: an NDJSON stream of the selected history, then live events
//! from the writer's broadcast, with no gap and no duplicate at the seam.
//!
//! Memory per follower is bounded twice: the broadcast ring is shared and
//! fixed-size (a follower that falls behind is skipped ahead, which never
//! blocks the writer), and the lines waiting for the socket sit in a small
//! bounded channel. A follower skipped ahead gets a `lost` line saying how
//! many events it missed (they are in the store; `cursor` can fetch them).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use traceed_wire::{ErrorBody, Event};

use super::AppState;
use crate::store::Query;

/// Lines buffered between the follower task and the socket.
const LINES: usize = 64;

fn ndjson_line(v: &impl serde::Serialize) -> Vec<u8> {
    // Event and ErrorBody serialize infallibly (plain structs, string keys).
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    line
}

type Line = Result<Vec<u8>, std::io::Error>;

/// Send the history after `last_id` page by page; returns the new `last_id`,
/// or None when the client went away or the store failed (already reported).
async fn send_history(
    st: &AppState,
    q: &mut Query,
    mut last_id: i64,
    tx: &mpsc::Sender<Line>,
) -> Option<i64> {
    loop {
        q.after_id = Some(last_id);
        let (page, more) = match st.store.query(q).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "follow: store query failed");
                let _ = tx
                    .send(Ok(ndjson_line(&ErrorBody {
                        error: format!("store: {e}"),
                    })))
                    .await;
                return None;
            }
        };
        for e in &page {
            last_id = e.id;
            tx.send(Ok(ndjson_line(e))).await.ok()?;
        }
        if !more {
            return Some(last_id);
        }
    }
}

pub fn stream(st: Arc<AppState>, mut q: Query) -> Response {
    // Subscribe before reading history: everything committed after the last
    // history query is then in the broadcast (the writer publishes after
    // commit), and ids already sent are skipped.
    let mut live = st.live.subscribe();
    let (tx, rx) = mpsc::channel::<Line>(LINES);
    tokio::spawn(async move {
        let mut last_id = q.after_id.unwrap_or(0);
        let mut last_ts = traceed_wire::now_ns();
        loop {
            let Some(id) = send_history(&st, &mut q, last_id, &tx).await else {
                return;
            };
            last_id = id;
            // A long history can take longer than the broadcast ring lasts.
            // Then start over from a fresh subscription and read the rest of
            // the history, so the seam stays exact no matter how much
            // history there was.
            if live.len() < st.live.capacity() {
                break;
            }
            live = st.live.subscribe();
        }
        while let Some(r) = live.recv().await {
            if r.skipped > 0 {
                st.counters.follow_dropped.fetch_add(r.skipped, Relaxed);
                let now = traceed_wire::now_ns();
                // `count` is what the ring skipped before filtering: an
                // upper bound on the matching events missed.
                let ev: Event =
                    Event::lost(Some(r.skipped), "follower", last_ts, now, &st.load.fidelity);
                if tx.send(Ok(ndjson_line(&ev))).await.is_err() {
                    return;
                }
            }
            for e in &r.batch.events {
                if e.id <= last_id || !q.matches(e) {
                    continue;
                }
                last_id = e.id;
                last_ts = e.ts;
                if tx.send(Ok(ndjson_line(e))).await.is_err() {
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (line, rx))
    }));
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
