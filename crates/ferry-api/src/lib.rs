//! ferry's control API, version 1: HTTP/1.1 + JSON on a Unix socket in the profile directory
//! (`<profile>/ferry.sock`, mode 0600). Every CLI command other than `init`, `id` and `up` is a
//! client of it; the web dashboard will be another.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/status` | – | [`Status`] |
//! | GET | `/v1/dht/nodes` | – | `[`[`DhtNode`]`]` (the close list, closest first) |
//! | POST | `/v1/dht/bootstrap` | [`BootstrapRequest`] | [`Ok`] |
//! | POST | `/v1/dht/lookup` | [`LookupRequest`] | [`LookupResult`] (waits up to `timeout_ms`) |
//! | POST | `/v1/shutdown` | – | [`Ok`] |
//!
//! Errors answer with a 4xx/5xx status and [`ErrorBody`]. New fields may be added to any answer
//! within v1; none is removed or renamed.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

mod client;
pub use client::{Client, ClientError};

/// The API version prefix.
pub const API_PREFIX: &str = "/v1";
/// File name of the control socket inside the profile directory.
pub const SOCKET_NAME: &str = "ferry.sock";

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The node's DHT public key, 64 hex (new at every start).
    pub dht_public_key: String,
    /// The long-term public key, 64 hex.
    pub public_key: String,
    /// The Tox ID, 76 hex.
    pub tox_id: String,
    /// The bound UDP port.
    pub udp_port: u16,
    /// `"none"`, `"udp"` or `"tcp"`: how the node reaches the network.
    pub connection: String,
    /// Good nodes in the DHT close list.
    pub close_nodes: usize,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Datagrams received since start.
    pub packets_in: u64,
    /// Datagrams sent since start.
    pub packets_out: u64,
    /// Malformed datagrams dropped since start.
    pub malformed_dropped: u64,
    /// ferry's version.
    pub version: String,
}

/// One close-list entry of `GET /v1/dht/nodes`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DhtNode {
    /// DHT public key, 64 hex.
    pub public_key: String,
    /// `IP:PORT` (IPv6 as `[IP]:PORT`).
    pub address: String,
    /// Milliseconds since its last response.
    pub last_seen_ms: u64,
}

/// `POST /v1/dht/bootstrap`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootstrapRequest {
    /// `IP:PORT`.
    pub address: String,
    /// DHT public key, 64 hex.
    pub public_key: String,
}

/// `POST /v1/dht/lookup`: find a DHT key's IP address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LookupRequest {
    /// DHT public key, 64 hex.
    pub public_key: String,
    /// How long to wait, in ms (default 30 000, at most 600 000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Answer of `POST /v1/dht/lookup`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LookupResult {
    /// The key looked up.
    pub public_key: String,
    /// Whether its address was found in time.
    pub found: bool,
    /// `IP:PORT` when found.
    pub address: Option<String>,
    /// Milliseconds the lookup took (or waited).
    pub elapsed_ms: u64,
}

/// A plain success answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ok {
    /// Always `true`.
    pub ok: bool,
}

/// Error answer body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// A message a person understands.
    pub error: String,
}

/// An error a [`Backend`] returns: an HTTP status and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code (400 bad input, 404 unknown, 503 node stopped, …).
    pub status: u16,
    /// A message a person understands.
    pub message: String,
}

impl ApiError {
    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
    /// A 503 Service Unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: 503,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            code,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// A boxed `Send` future, the return type of [`Backend`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the daemon implements to serve the API.
pub trait Backend: Send + Sync + 'static {
    /// `GET /v1/status`.
    fn status(&self) -> BoxFuture<'_, Result<Status, ApiError>>;
    /// `GET /v1/dht/nodes`.
    fn dht_nodes(&self) -> BoxFuture<'_, Result<Vec<DhtNode>, ApiError>>;
    /// `POST /v1/dht/bootstrap`.
    fn bootstrap(&self, req: BootstrapRequest) -> BoxFuture<'_, Result<(), ApiError>>;
    /// `POST /v1/dht/lookup`.
    fn lookup(&self, req: LookupRequest) -> BoxFuture<'_, Result<LookupResult, ApiError>>;
    /// `POST /v1/shutdown`: begin an orderly stop.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// The v1 router over a backend.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    Router::new()
        .route("/v1/status", get(status::<B>))
        .route("/v1/dht/nodes", get(dht_nodes::<B>))
        .route("/v1/dht/bootstrap", post(bootstrap::<B>))
        .route("/v1/dht/lookup", post(lookup::<B>))
        .route("/v1/shutdown", post(shutdown::<B>))
        .with_state(backend)
}

async fn status<B: Backend>(State(b): State<Arc<B>>) -> Result<Json<Status>, ApiError> {
    b.status().await.map(Json)
}

async fn dht_nodes<B: Backend>(State(b): State<Arc<B>>) -> Result<Json<Vec<DhtNode>>, ApiError> {
    b.dht_nodes().await.map(Json)
}

async fn bootstrap<B: Backend>(
    State(b): State<Arc<B>>,
    Json(req): Json<BootstrapRequest>,
) -> Result<Json<Ok>, ApiError> {
    b.bootstrap(req).await.map(|()| Json(Ok { ok: true }))
}

async fn lookup<B: Backend>(
    State(b): State<Arc<B>>,
    Json(req): Json<LookupRequest>,
) -> Result<Json<LookupResult>, ApiError> {
    b.lookup(req).await.map(Json)
}

async fn shutdown<B: Backend>(State(b): State<Arc<B>>) -> Json<Ok> {
    b.shutdown().await;
    Json(Ok { ok: true })
}

/// Binds the control socket at `path` with mode 0600, replacing a stale socket file (one nobody
/// answers on).
///
/// # Errors
/// `AddrInUse` when a live daemon already answers on `path`; other I/O errors as they come.
pub async fn bind_socket(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a ferry daemon is already running on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// Serves `router` on `listener` until `shutdown` resolves.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: tokio::net::UnixListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Path of the control socket of the profile at `profile_dir`.
pub fn socket_path(profile_dir: &Path) -> PathBuf {
    profile_dir.join(SOCKET_NAME)
}
