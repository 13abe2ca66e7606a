//! HTTP over the daemon's Unix socket, with typed errors that map to
//! tracectl's exit codes (2: daemon unreachable, 3: permission denied,
//! 1: the daemon refused the request).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector, Uri};
use traceed_wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach traceed at {path}: {reason}\nIs the daemon running? Start it with `systemctl start traceed` (or `traceed --socket {path}`), or point --socket / TRACEED_SOCKET at its socket.")]
    Unreachable { path: PathBuf, reason: String },
    #[error("permission denied on {path}: the socket is for root and members of group `traceed`.\nJoin it with `sudo usermod -aG traceed $USER` and log in again.")]
    PermissionDenied { path: PathBuf },
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    #[error("traceed at {path} did not answer within {after:?}.\nIt may be stuck: check `systemctl status traceed` and `journalctl -u traceed`, or wait longer with --timeout.")]
    Timeout {
        path: PathBuf,
        after: std::time::Duration,
    },
    #[error("bad answer from traceed: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable { .. } => 2,
            ClientError::PermissionDenied { .. } => 3,
            ClientError::Refused { status, .. } if *status == StatusCode::FORBIDDEN => 3,
            ClientError::Refused { .. } => 1,
            ClientError::Timeout { .. } => 2,
            ClientError::Protocol(_) => 2,
        }
    }
}

pub struct Api {
    socket: PathBuf,
    http: Client<UnixConnector, Empty<Bytes>>,
    /// Longest wait for an answer (for a follow, for its headers only).
    timeout: std::time::Duration,
}

impl Api {
    pub fn new(socket: &Path, timeout: std::time::Duration) -> Self {
        Self {
            socket: socket.to_path_buf(),
            http: Client::unix(),
            timeout,
        }
    }

    /// `f` within the request timeout.
    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.socket.clone(),
                after: self.timeout,
            })?
    }

    fn classify(&self, err: &(dyn std::error::Error + 'static)) -> ClientError {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::PermissionDenied {
                    return ClientError::PermissionDenied {
                        path: self.socket.clone(),
                    };
                }
                return ClientError::Unreachable {
                    path: self.socket.clone(),
                    reason: io.to_string(),
                };
            }
            cur = e.source();
        }
        ClientError::Unreachable {
            path: self.socket.clone(),
            reason: err.to_string(),
        }
    }

    /// GET `path_and_query`; a non-2xx answer becomes `Refused` with the
    /// daemon's own error message.
    pub async fn get(&self, path_and_query: &str) -> Result<Response<Incoming>, ClientError> {
        self.bounded(self.get_unbounded(path_and_query)).await
    }

    async fn get_unbounded(&self, path_and_query: &str) -> Result<Response<Incoming>, ClientError> {
        let uri: hyper::Uri = Uri::new(&self.socket, path_and_query).into();
        let resp = self.http.get(uri).await.map_err(|e| self.classify(&e))?;
        self.check(resp).await
    }

    /// POST `body` to `path_and_query` (the hunt); errors as `get`.
    pub async fn post(
        &self,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<Response<Incoming>, ClientError> {
        self.bounded(async {
            let http: Client<UnixConnector, Full<Bytes>> = Client::unix();
            let uri: hyper::Uri = Uri::new(&self.socket, path_and_query).into();
            let req = hyper::Request::post(uri)
                .header(hyper::header::CONTENT_TYPE, "application/yaml")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let resp = http.request(req).await.map_err(|e| self.classify(&e))?;
            self.check(resp).await
        })
        .await
    }

    async fn check(&self, resp: Response<Incoming>) -> Result<Response<Incoming>, ClientError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        Err(ClientError::Refused { status, message })
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, ClientError> {
        self.bounded(async {
            let resp = self.get_unbounded(path_and_query).await?;
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
        })
        .await
    }
}

/// An NDJSON answer (follow streams, hunts) read one line at a time as it
/// arrives, never the whole body at once.
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    pub fn new(resp: Response<Incoming>) -> Self {
        Self {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next line as a `T`; None at the end of the body.
    pub async fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| ClientError::Protocol(e.to_string()));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                self.buf.extend_from_slice(data);
            }
        }
    }
}
