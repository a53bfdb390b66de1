//! Broadcast sites (issue 10 item 4; `data-layer.md` §3.6): `ferry site publish DIR --name
//! NAME` binds a username to the latest version of a directory, `ferry site get NAME` fetches
//! it, and the HTTP gateway of `ferry up --gateway PORT` lets a normal browser open it at
//! `http://127.0.0.1:PORT/site/NAME/…`.
//!
//! * **Publish**: the directory becomes content ([`crate::content`]: manifest, blobs, provider
//!   records), then the name's site head ([`ferry_data::site`]: signed with the name's owner
//!   key, sealed under the name) points at its content id. Only the name's owner can publish
//!   under it; a newer publication replaces the older one (its sequence number is the time).
//! * **Resolve**: name record (owner key, Tox ID) → head at the owner's site target → content
//!   id.
//! * **Gateway**: loopback only. `GET /site/NAME/PATH` resolves the name (cached for
//!   [`RESOLVE_CACHE`]), serves `PATH` (`index.html` for a directory) from the local content
//!   store, and when this node does not hold that version yet, fetches it first (into
//!   `<profile>/sites/<content id>/`, verified as it streams, from every provider at once).
//!   `GET /site/NAME` redirects to `/site/NAME/` so relative links resolve. Content types come
//!   from the file extension (`mime_guess`); responses carry `X-Content-Type-Options:
//!   nosniff`. Errors are plain text: 404 (no such name, site or file), 502 (the fetch failed),
//!   504 (no fetch slot within [`FETCH_TIMEOUT`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use ferry_api::{ApiError, ContentFetch, ContentPublish, SiteInfo, SitePublish};
use ferry_net::NodeHandle;

use crate::content::ContentShared;
use crate::data::DataShared;

/// How long the gateway trusts a name → content id resolution: 30 s.
pub const RESOLVE_CACHE: Duration = Duration::from_secs(30);
/// Most names cached at once (oldest dropped first).
pub const MAX_CACHED_NAMES: usize = 256;
/// Longest the gateway waits for a site version to arrive: 120 s.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Directory of fetched site versions, in the profile.
pub const SITES_DIR: &str = "sites";

/// `POST /v1/site/publish`: the directory as content, then the name's head pointing at it.
///
/// # Errors
/// 400 not a directory or unreadable; 409 the name is someone else's; 404 the name is not
/// registered; 503 no DHT node stored the head.
pub async fn publish(
    node: &NodeHandle,
    data: &Arc<DataShared>,
    content: &Arc<ContentShared>,
    req: SitePublish,
) -> Result<SiteInfo, ApiError> {
    let dir = PathBuf::from(&req.path);
    if !dir.is_dir() {
        return Err(ApiError::bad_request(format!(
            "{}: a site is a directory",
            req.path
        )));
    }
    // Check the name first: a site under someone else's name is refused before any hashing.
    let _ = ferry_data::name::normalize(&req.name)
        .map_err(|_| ApiError::bad_request("invalid name (a-z 0-9 . _ -, 1-63 bytes)"))?;
    let published = content
        .publish(
            node,
            Some(Arc::clone(data)),
            ContentPublish {
                path: req.path.clone(),
            },
        )
        .await?;
    let id = ferry_content::ContentId::from_hex(&published.id)
        .ok_or_else(|| ApiError::bad_request("content id"))?;
    let (head, info) = data.site_publish(node, &req.name, id.0).await?;
    Ok(SiteInfo {
        name: info.name,
        id: published.id,
        tox_id: info.tox_id,
        fingerprint: info.fingerprint,
        published_unix: head.published_unix,
    })
}

/// `POST /v1/site/resolve`: the latest version of the site under `name`.
///
/// # Errors
/// 400 invalid name; 404 no such name or no site under it.
pub async fn resolve(
    node: &NodeHandle,
    data: &Arc<DataShared>,
    name: &str,
) -> Result<SiteInfo, ApiError> {
    let (head, info) = data.site_resolve(node, name).await?;
    Ok(SiteInfo {
        name: info.name,
        id: hex::encode(head.content_id),
        tox_id: info.tox_id,
        fingerprint: info.fingerprint,
        published_unix: head.published_unix,
    })
}

struct Gateway {
    node: NodeHandle,
    data: Arc<DataShared>,
    content: Arc<ContentShared>,
    sites_dir: PathBuf,
    cache: Mutex<HashMap<String, (Instant, SiteInfo)>>,
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into(),
    )
        .into_response()
}

fn api_error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
    text(status, format!("{}\n", e.message))
}

impl Gateway {
    async fn resolve(&self, name: &str) -> Result<SiteInfo, ApiError> {
        let key = name.to_ascii_lowercase();
        if let Some((at, info)) = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            && at.elapsed() < RESOLVE_CACHE
        {
            return Ok(info.clone());
        }
        let info = resolve(&self.node, &self.data, name).await?;
        let mut c = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.len() >= MAX_CACHED_NAMES
            && let Some(oldest) = c
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
        {
            c.remove(&oldest);
        }
        c.insert(key, (Instant::now(), info.clone()));
        Ok(info)
    }

    /// Fetches content `id` into `<profile>/sites/<id>/` (waiting for a fetch slot).
    async fn fetch(&self, id: &str) -> Result<(), Response> {
        let to = self.sites_dir.join(id);
        std::fs::create_dir_all(&to)
            .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let deadline = Instant::now() + FETCH_TIMEOUT;
        let mut job = loop {
            let req = ContentFetch {
                id: id.to_string(),
                to: to.display().to_string(),
            };
            match self
                .content
                .fetch(&self.node, Some(Arc::clone(&self.data)), req)
                .await
            {
                Ok(j) => break j,
                // Another fetch runs (one at a time): wait for it.
                Err(e) if e.status == 409 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(api_error(&e)),
            }
        };
        while !matches!(job.state.as_str(), "done" | "failed") {
            if Instant::now() >= deadline {
                return Err(text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("the site's content {id} did not arrive in time\n"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            job = self.content.job(job.job).map_err(|e| api_error(&e))?;
        }
        if job.state == "failed" {
            return Err(text(
                StatusCode::BAD_GATEWAY,
                format!(
                    "fetching the site failed: {}\n",
                    job.error.unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    async fn serve(&self, name: &str, path: &str) -> Response {
        let info = match self.resolve(name).await {
            Ok(i) => i,
            Err(e) => return api_error(&e),
        };
        let rel = if path.is_empty() || path.ends_with('/') {
            format!("{path}index.html")
        } else {
            path.to_string()
        };
        let mut found = self.content.local_file(&info.id, &rel);
        if found.is_none() {
            if let Err(r) = self.fetch(&info.id).await {
                return r;
            }
            found = self.content.local_file(&info.id, &rel);
        }
        let (file, _) = match found {
            Some(Ok(f)) => f,
            Some(Err(())) => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("{rel}: not in site {:?}\n", info.name),
                );
            }
            None => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the site's content {} is not here after its fetch\n",
                        info.id
                    ),
                );
            }
        };
        let read = tokio::task::spawn_blocking(move || std::fs::read(&file)).await;
        match read.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
            Ok(body) => {
                let mime = mime_guess::from_path(&rel).first_or_octet_stream();
                (
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, mime.essence_str().to_string()),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
                        (header::CACHE_CONTROL, "no-cache".to_string()),
                        (
                            header::HeaderName::from_static("x-ferry-content-id"),
                            info.id.clone(),
                        ),
                    ],
                    body,
                )
                    .into_response()
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{rel}: {e}\n")),
        }
    }
}

async fn site_root(UrlPath(name): UrlPath<String>) -> Redirect {
    Redirect::permanent(&format!("/site/{name}/"))
}

async fn site_index(State(g): State<Arc<Gateway>>, UrlPath(name): UrlPath<String>) -> Response {
    g.serve(&name, "").await
}

async fn site_file(
    State(g): State<Arc<Gateway>>,
    UrlPath((name, path)): UrlPath<(String, String)>,
) -> Response {
    g.serve(&name, &path).await
}

async fn home() -> Response {
    text(
        StatusCode::OK,
        "ferry gateway: open /site/NAME/ for the site published under the username NAME\n",
    )
}

/// Starts the gateway on 127.0.0.1:`port` (0: any free port); returns the bound address and
/// the server task.
///
/// # Errors
/// The port cannot be bound.
pub async fn spawn(
    port: u16,
    node: NodeHandle,
    data: Arc<DataShared>,
    content: Arc<ContentShared>,
    profile_dir: &std::path::Path,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| anyhow::anyhow!("gateway on 127.0.0.1:{port}: {e}"))?;
    let addr = listener.local_addr()?;
    let g = Arc::new(Gateway {
        node,
        data,
        content,
        sites_dir: profile_dir.join(SITES_DIR),
        cache: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/", get(home))
        .route("/site/{name}", get(site_root))
        .route("/site/{name}/", get(site_index))
        .route("/site/{name}/{*path}", get(site_file))
        .with_state(g);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "gateway stopped");
        }
    });
    tracing::info!(%addr, "site gateway listening");
    Ok((addr, task))
}
