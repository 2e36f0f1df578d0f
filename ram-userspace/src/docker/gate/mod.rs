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
//! This file holds the server and its lifecycle ([`Gate`], [`keep`]); [`routes`] reads request
//! paths (with the image-reference grammar of `policy/reference.rs`, the plugin's);
//! [`upstream`] forwards to the upstream, stands in for its token realms and follows redirects.
//!
//! Served with hyper on the Docker servers' runtime (`daemon/docker_servers.rs`), a thread of
//! its own shared with the authorization plugin, so that a large pull never delays the
//! daemon's enforcement events, and the daemon's load never slows a pull.

pub(crate) mod clients;
pub mod routes;
pub mod upstream;

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, RwLock},
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
use tokio::{
    net::TcpListener,
    sync::{Semaphore, oneshot, watch},
    task::{JoinHandle, JoinSet},
};

use self::{
    routes::{Route, route},
    upstream::{Upstream, origin, with_query},
};
use super::{Decisions, image_access};
use crate::{error_chain, events::records::ImageDecision, policy::ImageRules};

/// How the audit log names decisions of the gate.
pub const VIA: &str = "pull_gate";

/// Connections served at once; more wait to be accepted. dockerd opens a few per pull, so
/// this is far above need, and keeps a local flood from using up the daemon's descriptors
/// (which the authorization plugin and the control socket share).
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request head within this time (an idle connection is closed):
/// engines send theirs at once; a slow one only holds a connection of its own user's share.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new gate retries its address while the old one lets go of it.
const REBIND_TRIES: usize = 10;
const REBIND_PAUSE: Duration = Duration::from_millis(100);

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

/// Why a gate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(io::Error),
    #[error("cannot read the listener's address")]
    Address(#[source] io::Error),
    #[error("cannot build the gate's HTTP client")]
    Client(#[source] reqwest::Error),
}

/// A running gate. Dropping it stops the gate: it stops accepting, and pulls in flight end.
pub struct Gate {
    listen: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<()>>,
}

impl Gate {
    /// Serves the gate on `listener`, on the runtime this is called on (the Docker servers').
    pub fn start(
        listener: TcpListener,
        rules: SharedGateRules,
        decisions: Decisions,
    ) -> Result<Self, StartError> {
        let listen = listener.local_addr().map_err(StartError::Address)?;
        let state = Arc::new(State {
            rules,
            upstream: Upstream::new(listen).map_err(StartError::Client)?,
            decisions,
        });
        let (shutdown, stop) = oneshot::channel();
        let served = tokio::spawn(accept(listener, state, stop));
        Ok(Self {
            listen,
            shutdown: Some(shutdown),
            served: Some(served),
        })
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Stops the gate, as dropping it does; resolves once its listener is closed (its address
    /// free again).
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Accepts connections until `stop` (or its sender is dropped). Then the listener closes and
/// the connections still open end (dropping the set aborts them).
async fn accept(listener: TcpListener, state: Arc<State>, mut stop: oneshot::Receiver<()>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let users = clients::UserShares::new(MAX_CONNECTIONS / 2);
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = &mut stop => return,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
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
        // The connections that ended since the last one was accepted.
        while connections.try_join_next().is_some() {}
        let Some(share) = users.admit(&stream) else {
            // Over its user's share: closed at once (the client sees a reset).
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _share = share;
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
}

/// Keeps a gate listening on the address `wanted` says (`None`: no gate) until the sender of
/// `wanted` is dropped: the gate's lifecycle, run as a task on the Docker servers' runtime, so
/// that the daemon's event loop never waits for an address to be free. Logs what it does.
///
/// A new address: the new gate binds before the old one stops, so there is no moment without
/// a gate, unless the old one holds the address (another spelling of it); then the old one
/// stops first and the new one retries for about a second. A gate that cannot listen is
/// retried at the next change of `wanted` (each policy reload sends one).
pub async fn keep(
    mut wanted: watch::Receiver<Option<SocketAddr>>,
    rules: SharedGateRules,
    decisions: Decisions,
) {
    // The address as the policy gives it (which may differ from `Gate::listen`, e.g. port 0).
    let mut current: Option<(SocketAddr, Gate)> = None;
    loop {
        let address = *wanted.borrow_and_update();
        if address != current.as_ref().map(|(at, _)| *at) {
            let old = current.take().map(|(_, gate)| gate);
            match address {
                None => {
                    if let Some(old) = old {
                        old.stop().await;
                        log::info!("image access off: the Docker Hub pull gate stopped");
                    }
                }
                Some(address) => {
                    current = rebind(address, old, &rules, &decisions)
                        .await
                        .map(|gate| (address, gate));
                }
            }
        }
        if wanted.changed().await.is_err() {
            break;
        }
    }
    if let Some((_, gate)) = current {
        gate.stop().await;
    }
}

/// A gate on `address`, in place of `old` (see [`keep`]).
async fn rebind(
    address: SocketAddr,
    mut old: Option<Gate>,
    rules: &SharedGateRules,
    decisions: &Decisions,
) -> Option<Gate> {
    let mut bound = TcpListener::bind(address).await;
    if bound.is_err()
        && let Some(gate) = old.take()
    {
        gate.stop().await;
        for _ in 0..REBIND_TRIES {
            bound = TcpListener::bind(address).await;
            if bound.is_ok() {
                break;
            }
            tokio::time::sleep(REBIND_PAUSE).await;
        }
    }
    let started = bound
        .map_err(StartError::Bind)
        .and_then(|listener| Gate::start(listener, rules.clone(), decisions.clone()));
    // The old gate (if it did not stop above) stops now, whether or not the new one started:
    // the policy names another address.
    if let Some(old) = old {
        old.stop().await;
    }
    match started {
        Ok(gate) => {
            let upstream = match rules.read() {
                Ok(rules) => rules.upstream.clone(),
                Err(poisoned) => poisoned.into_inner().upstream.clone(),
            };
            log::info!(
                "image access: Docker Hub pull gate on http://{} (upstream {upstream}; give \
                 dockerd \"registry-mirrors\": [\"http://{}\"])",
                gate.listen(),
                gate.listen()
            );
            Some(gate)
        }
        Err(err) => {
            let err = error_chain(&err);
            log::error!(
                "image access: the Docker Hub pull gate cannot listen on {address}: {err}; pulls \
                 through it fail (Docker Hub stays unreachable: fail closed). Stop what listens \
                 there, or set image_access.gate to another port below 1024"
            );
            None
        }
    }
}

struct State {
    rules: SharedGateRules,
    upstream: Upstream,
    decisions: Decisions,
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
                    let (allowed, reason, exception) = match &verdict {
                        Ok(allowed) => (
                            true,
                            allowed.category.as_str().to_owned(),
                            allowed.exception.as_ref().map(ToString::to_string),
                        ),
                        Err(denial) => (false, denial.to_string(), None),
                    };
                    (self.decisions)(ImageDecision {
                        allowed,
                        action: kind,
                        image,
                        reason,
                        exception,
                        user: None,
                        via: VIA,
                    });
                }
                if let Err(denial) = verdict {
                    return denied(&denial.to_string());
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
/// A refusal: the registry error `DENIED` with Docker's message, which is also the status
/// line's reason phrase (`403 image access denied: …`) for clients that show the status line
/// and not the body (containerd's resolver, a `HEAD` request).
fn denied(message: &str) -> Response<GateBody> {
    let mut response = registry_error(StatusCode::FORBIDDEN, "DENIED", message);
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(message.as_bytes()) {
        response.extensions_mut().insert(reason);
    }
    response
}

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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::docker::image_access::tests::rules;

    fn gate_rules() -> SharedGateRules {
        Arc::new(RwLock::new(GateRules {
            rules: rules(),
            // Nothing listens there: nothing allowed is forwarded in these tests.
            upstream: "http://127.0.0.1:9".into(),
        }))
    }

    fn decisions() -> (Decisions, Arc<Mutex<Vec<ImageDecision>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let decisions: Decisions = Arc::new(move |d| sink.lock().unwrap().push(d));
        (decisions, seen)
    }

    /// `GET path` at `address`: the answer, or `None` if nothing listens.
    async fn get(address: SocketAddr, path: &str) -> Option<String> {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        Some(answer)
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn the_gate_judges_before_it_forwards() {
        let (decisions, seen) = decisions();
        let gate = rebind(loopback(0), None, &gate_rules(), &decisions)
            .await
            .expect("the gate listens");
        let at = gate.listen();
        let denied = get(at, "/v2/someuser/x/manifests/latest").await.unwrap();
        assert!(
            denied
                .starts_with("HTTP/1.1 403 image access denied: community images not allowed\r\n"),
            "{denied}"
        );
        assert!(
            denied.contains(
                r#"{"errors":[{"code":"DENIED","message":"image access denied: community images not allowed"}]}"#
            ),
            "{denied}"
        );
        let decision = seen.lock().unwrap().pop().expect("the denial is audited");
        assert_eq!(
            (decision.allowed, decision.action, decision.image.as_str()),
            (false, "manifests", "someuser/x:latest")
        );
        assert_eq!(decision.via, VIA);
        let refused = get(at, "/v2/some..user/x/manifests/latest").await.unwrap();
        assert!(refused.starts_with("HTTP/1.1 404 "), "{refused}");
        assert!(refused.contains("UNSUPPORTED"), "{refused}");
        // Allowed, and the upstream is down: 502, naming only its origin.
        let unreachable = get(at, "/v2/library/busybox/manifests/latest")
            .await
            .unwrap();
        assert!(unreachable.starts_with("HTTP/1.1 502 "), "{unreachable}");
        assert!(
            unreachable.contains("ram's image gate cannot reach http://127.0.0.1:9"),
            "{unreachable}"
        );
        gate.stop().await;
        assert!(
            get(at, "/v2/").await.is_none(),
            "a stopped gate still listens"
        );
    }

    #[tokio::test]
    async fn a_repository_exception_opens_the_gate_to_its_repository_only() {
        let (decisions, seen) = decisions();
        let shared = gate_rules();
        shared.write().unwrap().rules.allow_repositories = vec!["someuser/tool".parse().unwrap()];
        let gate = rebind(loopback(0), None, &shared, &decisions)
            .await
            .expect("the gate listens");
        // Allowed, so forwarded (to an upstream that is down: 502), and audited as such.
        let allowed = get(gate.listen(), "/v2/someuser/tool/manifests/latest")
            .await
            .unwrap();
        assert!(allowed.starts_with("HTTP/1.1 502 "), "{allowed}");
        let decision = seen
            .lock()
            .unwrap()
            .pop()
            .expect("the allowed pull is audited");
        assert!(decision.allowed);
        assert_eq!(
            (decision.reason.as_str(), decision.exception.as_deref()),
            ("community", Some("someuser/tool"))
        );
        let denied = get(gate.listen(), "/v2/someuser/other/manifests/latest")
            .await
            .unwrap();
        assert!(denied.starts_with("HTTP/1.1 403 "), "{denied}");
        let decision = seen.lock().unwrap().pop().expect("the denial is audited");
        assert_eq!((decision.allowed, decision.exception), (false, None));
        gate.stop().await;
    }

    #[tokio::test]
    async fn a_new_address_takes_over_from_the_old() {
        let (decisions, _) = decisions();
        let rules = gate_rules();
        let first = rebind(loopback(0), None, &rules, &decisions).await.unwrap();
        let port = first.listen().port();
        // Another spelling of the address the old gate holds: it stops, the new one binds.
        let everywhere = SocketAddr::from(([0, 0, 0, 0], port));
        let second = rebind(everywhere, Some(first), &rules, &decisions)
            .await
            .expect("the new gate binds once the old one let go");
        assert_eq!(second.listen(), everywhere);
        assert!(get(loopback(port), "/v2/_catalog").await.is_some());
        // A free address: the new gate binds first, then the old one stops.
        let third = rebind(loopback(0), Some(second), &rules, &decisions)
            .await
            .unwrap();
        assert!(get(third.listen(), "/v2/_catalog").await.is_some());
        assert!(get(loopback(port), "/v2/_catalog").await.is_none());
        // An address someone else holds: no gate, and the old one stops all the same.
        let squatter = std::net::TcpListener::bind(loopback(0)).unwrap();
        let taken = squatter.local_addr().unwrap();
        let third_at = third.listen();
        assert!(
            rebind(taken, Some(third), &rules, &decisions)
                .await
                .is_none()
        );
        assert!(get(third_at, "/v2/_catalog").await.is_none());
    }

    #[tokio::test]
    async fn the_keeper_follows_the_wanted_address() {
        let (decisions, _) = decisions();
        let free = std::net::TcpListener::bind(loopback(0)).unwrap();
        let at = free.local_addr().unwrap();
        drop(free);
        let (wanted, receiver) = watch::channel(Some(at));
        let keeper = tokio::spawn(keep(receiver, gate_rules(), decisions));
        let listening = || async {
            for _ in 0..100 {
                if get(at, "/v2/_catalog").await.is_some() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        };
        assert!(listening().await, "the gate did not start");
        wanted.send_replace(None);
        let mut stopped = false;
        for _ in 0..100 {
            if get(at, "/v2/_catalog").await.is_none() {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(stopped, "the gate did not stop");
        wanted.send_replace(Some(at));
        assert!(listening().await, "the gate did not start again");
        drop(wanted);
        tokio::time::timeout(Duration::from_secs(5), keeper)
            .await
            .expect("the keeper ends with its sender")
            .unwrap();
        assert!(get(at, "/v2/_catalog").await.is_none());
    }
}
