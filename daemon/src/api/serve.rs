//! Serving the router on the Unix socket: one hyper HTTP/1 connection per
//! accepted stream, with the peer's SO_PEERCRED attached to every request,
//! a bounded number of connections, and timeouts and size limits that keep a
//! slow or hostile client from holding resources.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::service::peer::{self, Peer};

/// Connections served at once (follow streams each hold one).
pub const MAX_CONNECTIONS: usize = 128;
/// Connections beyond the limit that still get a 503 answer; past this
/// they are closed unanswered.
const OVERFLOW_CONNECTIONS: usize = 16;
/// Default time a client has to send a request's headers (also the idle
/// time allowed between requests on a kept-alive connection); the config's
/// `[api] header_timeout` sets it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's read buffer: heads larger than this are refused by hyper itself
/// with a bare 431; the JSON-answered limits in `guard` are well below it.
/// Large enough for any request whose parameters keep to the documented
/// maxLengths (every string at its maximum, percent-encoded: ~215 KiB).
/// The buffer only grows as a head needs it.
const MAX_BUF: usize = 256 * 1024;
const MAX_HEADERS: usize = 64;

/// What the accept loop learned about a connection, for every request on it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub peer: Peer,
    pub allowed: bool,
    /// Over the connection limit: every request is answered 503.
    pub busy: bool,
}

/// Accept connections until `shutdown` resolves, then let in-flight
/// requests finish (the caller bounds how long it waits for that). A
/// client that has not sent a request's headers within `header_timeout`
/// of connecting (or of its previous answer) is disconnected.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let peer = match Peer::of(&stream) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "SO_PEERCRED failed; closing the connection");
                continue;
            }
        };
        let (permit, busy) = match slots.clone().try_acquire_owned() {
            Ok(p) => (p, false),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(p) => (p, true),
                Err(_) => {
                    tracing::warn!(uid = peer.uid, pid = ?peer.pid, "connection limit reached; closing");
                    continue;
                }
            },
        };
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let allowed = peer.uid == 0
                || tokio::task::spawn_blocking(move || peer::allowed(&peer, peer::group_gid()))
                    .await
                    .unwrap_or(false);
            let caller = Caller {
                peer,
                allowed,
                busy,
            };
            if !allowed {
                tracing::info!(uid = peer.uid, pid = ?peer.pid, "refusing a peer outside group traceed");
            }
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(caller);
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_BUF)
                .max_headers(MAX_HEADERS)
                .keep_alive(allowed && !busy);
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(uid = peer.uid, pid = ?peer.pid, error = %e, "connection ended");
            }
        });
    }
    let _ = stop_tx.send(true);
    // Every connection task holds a slot; all slots back means all are done.
    let _ = slots.acquire_many(MAX_CONNECTIONS as u32).await;
}
