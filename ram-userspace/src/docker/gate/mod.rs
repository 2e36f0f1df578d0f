//! The Docker Hub pull gate: Image Access Management at the registry API. A registry (OCI
//! distribution, "v2") endpoint on a loopback address, which dockerd uses as its
//! `registry-mirrors` entry. Pulls the engine API never shows the authorization plugin (a
//! build's `FROM`, BuildKit resolving an image) come here, and are judged by the repository
//! they name before anything is fetched.
//!
//! - `GET`/`HEAD /v2/<name>/manifests/<ref>`, `…/blobs/<digest>`, `…/tags/list`,
//!   `…/referrers/<digest>`: `<name>` is judged as `docker.io/<name>`. Denied: `403` with the
//!   registry error `DENIED` and Docker's message. Allowed: forwarded to the upstream
//!   (Docker Hub unless `image_access.upstream` says otherwise), the answer streamed back as
//!   it arrives (never a whole layer in memory).
//! - `/v2/` (the ping) is forwarded.
//! - Token authentication: the upstream's `WWW-Authenticate` challenge is passed back with its
//!   realm pointed at the gate (`/ram/token/<n>`), which forwards the token request, with the
//!   client's credentials, to the realm the upstream named. So dockerd needs no way to
//!   Docker Hub's token service either.
//! - Redirects (Docker Hub sends layers from a CDN) are followed by the gate; credentials are
//!   not sent to another host.
//! - Everything else (pushes, the catalog, paths that do not parse): refused.
//!
//! This file holds the server and its lifecycle ([`Gate`]); [`routes`] reads request paths
//! (with the image-reference grammar of `docker/reference.rs`, the plugin's); [`upstream`]
//! forwards to the upstream, stands in for its token realms and follows redirects.
//!
//! Runs on a thread and runtime of its own, so that a large pull never delays the daemon's
//! enforcement events, and the daemon's load never slows a pull.

pub mod routes;
pub mod upstream;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, RwLock},
    thread,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use self::{
    routes::{Route, route},
    upstream::{Upstream, origin, with_query},
};
use super::image_access;
use crate::{error_chain, events::records::ImageDecision, policy::ImageRules};

/// How the audit log names decisions of the gate.
pub const VIA: &str = "pull_gate";

/// Connections served at once; more wait to be accepted. dockerd opens a few per pull, so
/// this is far above need, and keeps a local flood from using up the daemon's descriptors
/// (which the authorization plugin and the control socket share).
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request head within this time (an idle connection is closed).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// What the gate applies; swapped as a whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRules {
    pub rules: ImageRules,
    /// Base URL, `http(s)://host[:port]`.
    pub upstream: String,
}

/// The rules in force, shared with the daemon.
pub type SharedGateRules = Arc<RwLock<GateRules>>;

type GateBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A running gate. Dropping it stops the gate: it stops accepting, and pulls in flight end.
pub struct Gate {
    listen: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Gate {
    /// Serves the gate on `listener` (already bound, so the caller sees bind errors).
    pub fn start(
        listener: std::net::TcpListener,
        rules: SharedGateRules,
        decisions: impl Fn(ImageDecision) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listen = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let state = Arc::new(State {
            rules,
            upstream: Upstream::new(listen).map_err(std::io::Error::other)?,
            decisions: Box::new(decisions),
        });
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let (shutdown, mut stop) = tokio::sync::oneshot::channel::<()>();
        thread::Builder::new()
            .name("image-gate".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        log::error!("image gate: cannot start its runtime: {err}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(err) => {
                            log::error!("image gate: cannot use its socket: {err}");
                            return;
                        }
                    };
                    loop {
                        let Ok(permit) = connections.clone().acquire_owned().await else {
                            return;
                        };
                        let stream = tokio::select! {
                            _ = &mut stop => return,
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => stream,
                                Err(err) => {
                                    // E.g. out of file descriptors: do not spin.
                                    log::warn!("image gate: accept failed: {err}");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    continue;
                                }
                            },
                        };
                        let state = state.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            let service = service_fn(move |request| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(state.handle(request).await) }
                            });
                            if let Err(err) = http1::Builder::new()
                                .timer(TokioTimer::new())
                                .header_read_timeout(HEADER_READ_TIMEOUT)
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                            {
                                log::debug!("image gate connection: {err}");
                            }
                        });
                    }
                });
                // Ends the connections still open; a lookup in progress on a blocking thread
                // is not waited for beyond this.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Self {
            listen,
            shutdown: Some(shutdown),
        })
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Not joined: the daemon's event loop must not wait on the gate's connections. The
        // listener closes as the gate's loop returns.
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

struct State {
    rules: SharedGateRules,
    upstream: Upstream,
    decisions: Box<dyn Fn(ImageDecision) + Send + Sync>,
}

impl State {
    async fn handle(&self, request: Request<Incoming>) -> Response<GateBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let route = match route(&path) {
            Ok(route) => route,
            Err(why) => {
                return registry_error(
                    StatusCode::NOT_FOUND,
                    "UNSUPPORTED",
                    &format!("ram's image gate serves image pulls only: {why}"),
                );
            }
        };
        let read = method == Method::GET || method == Method::HEAD;
        if !(read || (method == Method::POST && matches!(route, Route::Token(_)))) {
            return registry_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "ram's image gate serves image pulls only",
            );
        }
        let GateRules { rules, upstream } = match self.rules.read() {
            Ok(rules) => rules.clone(),
            // A writer panicked: the rules it left are still the last ones set.
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let query = request
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let target = match route {
            Route::Ping => format!("{upstream}{path}{query}"),
            Route::Token(index) => match self.upstream.realm(index, &upstream) {
                Some(realm) => with_query(&realm, request.uri().query()),
                None => {
                    return registry_error(
                        StatusCode::NOT_FOUND,
                        "UNSUPPORTED",
                        "no such token realm at ram's image gate",
                    );
                }
            },
            Route::Repository {
                name,
                repository,
                kind,
                reference,
            } => {
                let image = if reference.contains(':') {
                    format!("{name}@{reference}")
                } else {
                    format!("{name}:{reference}")
                };
                let verdict = image_access::judge_repository(&rules, &repository);
                // Manifests name what is pulled; blobs follow from them. So every denial is
                // audited, and of the allowed requests only manifest GETs.
                let audit = verdict.is_err() || (kind == "manifests" && method == Method::GET);
                if audit {
                    let (allowed, reason) = match &verdict {
                        Ok(category) => (true, category.as_str().to_owned()),
                        Err(denial) => (false, denial.to_string()),
                    };
                    (self.decisions)(ImageDecision {
                        allowed,
                        action: kind,
                        image,
                        reason,
                        user: None,
                        via: VIA,
                    });
                }
                if let Err(denial) = verdict {
                    return registry_error(StatusCode::FORBIDDEN, "DENIED", &denial.to_string());
                }
                format!("{upstream}{path}{query}")
            }
        };
        match self.upstream.forward(request, &target, &upstream).await {
            Ok(response) => response,
            Err(err) => registry_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                &format!(
                    "ram's image gate cannot reach {}: {}",
                    origin(&target),
                    error_chain(&err)
                ),
            ),
        }
    }
}

/// A registry API error (the distribution spec's JSON), as Docker clients print it.
fn registry_error(status: StatusCode, code: &str, message: &str) -> Response<GateBody> {
    let body = json!({ "errors": [{ "code": code, "message": message }] }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("docker-distribution-api-version", "registry/2.0")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a fixed response is valid")
}
