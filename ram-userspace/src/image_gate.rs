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
//! Runs on a thread and runtime of its own, so that a large pull never delays the daemon's
//! enforcement events, and the daemon's load never slows a pull.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    thread,
    time::Duration,
};

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::{authz::Decision, image::Rules};

/// How the audit log names decisions of the gate.
pub const VIA: &str = "pull_gate";

/// The path prefix of the token realms the gate stands in for.
const TOKEN_PATH: &str = "/ram/token/";
/// At most this many distinct token realms are remembered (Docker Hub has one). A challenge
/// naming a further realm is passed on unchanged, and the client's request to it is refused
/// by Registry Access Management: fail closed.
const MAX_REALMS: usize = 16;
/// Largest token request body forwarded (an OAuth2 form with a refresh token).
const MAX_TOKEN_BODY: usize = 64 << 10;
/// Request headers a pull needs upstream. Nothing else of the client's is sent on.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 6] = [
    header::ACCEPT,
    header::AUTHORIZATION,
    header::RANGE,
    header::IF_NONE_MATCH,
    header::USER_AGENT,
    header::CONTENT_TYPE,
];
/// Response headers a client of a registry reads. `WWW-Authenticate` is rewritten.
const FORWARDED_RESPONSE_HEADERS: [&str; 12] = [
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
    "link",
    "docker-content-digest",
    "docker-distribution-api-version",
    "docker-ratelimit-source",
    "ratelimit-limit",
    "ratelimit-remaining",
];

/// What the gate applies; swapped as a whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRules {
    pub rules: Rules,
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
    thread: Option<thread::JoinHandle<()>>,
}

impl Gate {
    /// Serves the gate on `listener` (already bound, so the caller sees bind errors).
    pub fn start(
        listener: std::net::TcpListener,
        rules: SharedGateRules,
        decisions: impl Fn(Decision) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listen = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let client = reqwest::Client::builder()
            // The machine's proxy settings are not the policy's: the gate goes direct.
            .no_proxy()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(std::io::Error::other)?;
        let state = Arc::new(State {
            rules,
            client,
            listen,
            realms: Mutex::new(Vec::new()),
            decisions: Box::new(decisions),
        });
        let (shutdown, mut stop) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::Builder::new()
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
                            let service = service_fn(move |request| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(state.handle(request).await) }
                            });
                            if let Err(err) = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                            {
                                log::debug!("image gate connection: {err}");
                            }
                        });
                    }
                });
                // The runtime drops here, ending the connections still open.
            })?;
        Ok(Self {
            listen,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct State {
    rules: SharedGateRules,
    client: reqwest::Client,
    listen: SocketAddr,
    /// Token realms the upstream named, by index in `/ram/token/<n>`.
    realms: Mutex<Vec<String>>,
    decisions: Box<dyn Fn(Decision) + Send + Sync>,
}

/// What a request to the gate asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Ping,
    /// A read of repository `name`: `kind` is `manifests`, `blobs`, `tags` or `referrers`,
    /// `reference` the tag or digest (`list` for tags).
    Repository {
        name: String,
        kind: &'static str,
        reference: String,
    },
    /// `/ram/token/<n>`: a token request for the upstream's n-th realm.
    Token(usize),
}

/// Reads the request path as the registry API routes it. Only plain paths are accepted: no
/// `%`-escapes, no empty, `.` or `..` segments (an upstream, or the URL parser on the way to
/// it, would resolve those and fetch another repository than the one judged).
pub fn route(path: &str) -> Result<Route, String> {
    if let Some(index) = path.strip_prefix(TOKEN_PATH) {
        return index
            .parse()
            .map(Route::Token)
            .map_err(|_| format!("no token realm {index}"));
    }
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Ping);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Err("not a registry API path".into());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == ".." || s.contains('%'))
    {
        return Err("the path has empty, dot or escaped segments".into());
    }
    let n = segments.len();
    if n < 3 {
        return Err("not a repository path".into());
    }
    let kind = match segments[n - 2] {
        "manifests" => "manifests",
        "blobs" => "blobs",
        "tags" if segments[n - 1] == "list" => "tags",
        "referrers" => "referrers",
        _ => return Err("not a read of a repository (pushes are not served)".into()),
    };
    let reference = segments[n - 1];
    let valid_reference = reference.len() <= 256
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-+=".contains(&b));
    if !valid_reference {
        return Err(format!("`{reference}` is not a tag or digest"));
    }
    Ok(Route::Repository {
        name: segments[..n - 2].join("/"),
        kind,
        reference: reference.to_owned(),
    })
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
            Route::Token(index) => {
                let realm = self.realms.lock().ok().and_then(|r| r.get(index).cloned());
                match realm {
                    Some(realm) => format!("{realm}{query}"),
                    None => {
                        return registry_error(
                            StatusCode::NOT_FOUND,
                            "UNSUPPORTED",
                            "no such token realm at ram's image gate",
                        );
                    }
                }
            }
            Route::Repository {
                name,
                kind,
                reference,
            } => {
                let image = if reference.contains(':') {
                    format!("{name}@{reference}")
                } else {
                    format!("{name}:{reference}")
                };
                let verdict = rules.judge(&format!("docker.io/{name}"));
                // Manifests name what is pulled; blobs follow from them. So every denial is
                // audited, and of the allowed requests only manifest GETs.
                let audit = verdict.is_err() || (kind == "manifests" && method == Method::GET);
                if audit {
                    let (allowed, reason) = match &verdict {
                        Ok(category) => (
                            true,
                            category.map_or("other_registry", |c| c.as_str()).to_owned(),
                        ),
                        Err(message) => (false, message.clone()),
                    };
                    (self.decisions)(Decision {
                        allowed,
                        action: kind,
                        image,
                        reason,
                        user: None,
                        via: VIA,
                    });
                }
                if let Err(message) = verdict {
                    let code = if message.starts_with("image access denied") {
                        "DENIED"
                    } else {
                        "NAME_INVALID"
                    };
                    let status = if code == "DENIED" {
                        StatusCode::FORBIDDEN
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    return registry_error(status, code, &message);
                }
                format!("{upstream}{path}{query}")
            }
        };
        match self.forward(request, &target).await {
            Ok(response) => response,
            Err(err) => registry_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                &format!("ram's image gate cannot reach {}: {err}", origin(&target)),
            ),
        }
    }

    /// Sends the request on to `target` and streams the answer back.
    async fn forward(
        &self,
        request: Request<Incoming>,
        target: &str,
    ) -> Result<Response<GateBody>, String> {
        let url = reqwest::Url::parse(target).map_err(|err| err.to_string())?;
        let method = request.method().clone();
        let mut upstream = self.client.request(method.clone(), url);
        for name in &FORWARDED_REQUEST_HEADERS {
            for value in request.headers().get_all(name) {
                upstream = upstream.header(name, value);
            }
        }
        if method == Method::POST {
            let limited = http_body_util::Limited::new(request.into_body(), MAX_TOKEN_BODY);
            let body = limited
                .collect()
                .await
                .map_err(|err| format!("reading the token request: {err}"))?
                .to_bytes();
            upstream = upstream.body(body);
        }
        let answer = upstream.send().await.map_err(|err| error_chain(&err))?;
        let mut response = Response::builder().status(answer.status().as_u16());
        for name in FORWARDED_RESPONSE_HEADERS {
            for value in answer.headers().get_all(name) {
                response = response.header(name, value);
            }
        }
        for value in answer.headers().get_all(header::WWW_AUTHENTICATE) {
            response = response.header(header::WWW_AUTHENTICATE, self.challenge(value));
        }
        let body: GateBody = if method == Method::HEAD {
            Empty::new().map_err(|never| match never {}).boxed()
        } else {
            let frames = answer
                .bytes_stream()
                .map_ok(Frame::data)
                .map_err(|err| Box::new(err) as Box<dyn std::error::Error + Send + Sync>);
            StreamBody::new(frames).boxed()
        };
        response.body(body).map_err(|err| err.to_string())
    }

    /// The upstream's challenge with its token realm pointed at the gate.
    fn challenge(&self, value: &HeaderValue) -> HeaderValue {
        let Ok(text) = value.to_str() else {
            return value.clone();
        };
        let Some((realm, start, end)) = realm_of(text) else {
            return value.clone();
        };
        let Ok(mut realms) = self.realms.lock() else {
            return value.clone();
        };
        let index = match realms.iter().position(|r| *r == realm) {
            Some(index) => index,
            None if realms.len() < MAX_REALMS => {
                realms.push(realm);
                realms.len() - 1
            }
            None => {
                log::warn!(
                    "image gate: the upstream named more than {MAX_REALMS} token realms; {realm} \
                     is passed on as is (clients cannot reach it: pulls needing it fail)"
                );
                return value.clone();
            }
        };
        let rewritten = format!(
            "{}http://{}{TOKEN_PATH}{index}{}",
            &text[..start],
            self.listen,
            &text[end..]
        );
        HeaderValue::from_str(&rewritten).unwrap_or_else(|_| value.clone())
    }
}

/// The realm of a `Bearer` challenge and the byte range of its value.
pub fn realm_of(challenge: &str) -> Option<(String, usize, usize)> {
    if !challenge
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("bearer "))
    {
        return None;
    }
    let lower = challenge.to_ascii_lowercase();
    let key = lower.find("realm=\"")?;
    let start = key + "realm=\"".len();
    let end = start + challenge[start..].find('"')?;
    let realm = &challenge[start..end];
    let url = reqwest::Url::parse(realm).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| (realm.to_owned(), start, end))
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

/// `scheme://host[:port]` of a URL, for messages (no path or query: they may carry tokens).
fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "the upstream".into())
}

/// An error with its causes (reqwest's top-level message alone says little).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str, kind: &'static str, reference: &str) -> Route {
        Route::Repository {
            name: name.into(),
            kind,
            reference: reference.into(),
        }
    }

    #[test]
    fn routes_follow_the_registry_api() {
        assert_eq!(route("/v2/"), Ok(Route::Ping));
        assert_eq!(
            route("/v2/library/busybox/manifests/latest"),
            Ok(repo("library/busybox", "manifests", "latest"))
        );
        assert_eq!(
            route("/v2/someuser/nested/image/blobs/sha256:abc123"),
            Ok(repo("someuser/nested/image", "blobs", "sha256:abc123"))
        );
        assert_eq!(
            route("/v2/mycompany/app/tags/list"),
            Ok(repo("mycompany/app", "tags", "list"))
        );
        assert_eq!(route("/ram/token/0"), Ok(Route::Token(0)));
        for bad in [
            "/",
            "/v2/_catalog",
            "/v2/library/busybox/blobs/uploads/",
            "/v2/library/busybox/blobs/uploads/abc",
            "/v2/library/../someuser/x/manifests/latest",
            "/v2/library/./busybox/manifests/latest",
            "/v2/library//busybox/manifests/latest",
            "/v2/library%2fbusybox/manifests/latest",
            "/v2/library/busybox/manifests/late$t",
            "/v2/library/busybox/tags/other",
            "/ram/token/x",
        ] {
            assert!(route(bad).is_err(), "{bad} was routed");
        }
    }

    #[test]
    fn challenges_give_their_realm() {
        let hub = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        let (realm, start, end) = realm_of(hub).unwrap();
        assert_eq!(realm, "https://auth.docker.io/token");
        assert_eq!(&hub[start..end], realm);
        assert_eq!(realm_of(r#"Basic realm="Registry""#), None);
        assert_eq!(realm_of(r#"Bearer realm="file:///etc/passwd""#), None);
        assert_eq!(realm_of("Bearer realm=\"https://x"), None);
    }
}
