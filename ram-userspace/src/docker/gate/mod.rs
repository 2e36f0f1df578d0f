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
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use super::image_access::Judge as _;
use crate::events::records::ImageDecision;
use crate::policy::ImageRules;

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
/// Connections served at once; more wait to be accepted. dockerd opens a few per pull, so
/// this is far above need, and keeps a local flood from using up the daemon's descriptors
/// (which the authorization plugin and the control socket share).
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request head within this time (an idle connection is closed).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
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
const FORWARDED_RESPONSE_HEADERS: [&str; 13] = [
    "content-type",
    "retry-after",
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
        let client = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                // The machine's proxy settings are not the policy's: the gate goes direct.
                .no_proxy()
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(Duration::from_secs(120))
                .redirect(redirects)
                .build()
                .map_err(std::io::Error::other)
        };
        let state = Arc::new(State {
            rules,
            // Redirects (layers on a CDN) are followed, never from https to http: reqwest
            // drops credentials on another host, not on a downgrade.
            client: client(reqwest::redirect::Policy::custom(|attempt| {
                let downgrade = attempt.url().scheme() == "http"
                    && attempt.previous().iter().any(|u| u.scheme() == "https");
                if downgrade {
                    attempt.error("the upstream redirected from https to http")
                } else if attempt.previous().len() > 5 {
                    attempt.error("more than 5 redirects")
                } else {
                    attempt.follow()
                }
            }))?,
            // A token request carries credentials in its body: never re-sent elsewhere.
            token_client: client(reqwest::redirect::Policy::none())?,
            listen,
            realms: Mutex::new(Realms::default()),
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
    client: reqwest::Client,
    token_client: reqwest::Client,
    listen: SocketAddr,
    realms: Mutex<Realms>,
    decisions: Box<dyn Fn(ImageDecision) + Send + Sync>,
}

/// Token realms the upstream named, by index in `/ram/token/<n>`; forgotten when the upstream
/// changes.
#[derive(Default)]
struct Realms {
    upstream: String,
    urls: Vec<String>,
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
    // Docker Hub repositories are `name` or `namespace/name`: two components at most.
    if !(3..=4).contains(&n) {
        return Err("not a Docker Hub repository path".into());
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
    if let Some(bad) = segments[..n - 2].iter().find(|c| !is_name_component(c)) {
        return Err(format!(
            "`{bad}` is not a repository name component (lowercase letters and digits, \
             joined by single . or _, by __, or by dashes)"
        ));
    }
    Ok(Route::Repository {
        name: segments[..n - 2].join("/"),
        kind,
        reference: reference.to_owned(),
    })
}

/// The distribution spec's path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`. Anything
/// else could be read one way here and another way by an upstream.
fn is_name_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
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
                let realm = self.realms.lock().ok().and_then(|r| {
                    (r.upstream == upstream)
                        .then(|| r.urls.get(index).cloned())
                        .flatten()
                });
                match realm {
                    Some(realm) => with_query(&realm, request.uri().query()),
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
                    (self.decisions)(ImageDecision {
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
        match self.forward(request, &target, &upstream).await {
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
        upstream_base: &str,
    ) -> Result<Response<GateBody>, String> {
        let url = reqwest::Url::parse(target).map_err(|err| err.to_string())?;
        let method = request.method().clone();
        let client = if request.uri().path().starts_with(TOKEN_PATH) {
            &self.token_client
        } else {
            &self.client
        };
        let mut upstream = client.request(method.clone(), url);
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
        let answer = upstream
            .send()
            .await
            .map_err(|err| crate::error_chain(&err))?;
        let mut response = Response::builder().status(answer.status().as_u16());
        for name in FORWARDED_RESPONSE_HEADERS {
            for value in answer.headers().get_all(name) {
                response = response.header(name, value);
            }
        }
        for value in answer.headers().get_all(header::WWW_AUTHENTICATE) {
            response = response.header(
                header::WWW_AUTHENTICATE,
                self.challenge(value, upstream_base),
            );
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
    /// Only realms on the upstream's own host, or Docker Hub's token service when the
    /// upstream is Docker Hub, and over https unless the upstream itself is plain http, are
    /// stood in for: the gate must not become a way to other hosts.
    fn challenge(&self, value: &HeaderValue, upstream: &str) -> HeaderValue {
        let Ok(text) = value.to_str() else {
            return value.clone();
        };
        let Some((realm, start, end)) = realm_of(text) else {
            return value.clone();
        };
        if !realm_fits_upstream(&realm, upstream) {
            log::warn!(
                "image gate: the upstream {upstream} named the token realm {realm}, which is \
                 neither on its own host nor Docker Hub's token service; passed on as is \
                 (clients cannot reach it: pulls needing it fail)"
            );
            return value.clone();
        }
        let Ok(mut realms) = self.realms.lock() else {
            return value.clone();
        };
        if realms.upstream != upstream {
            *realms = Realms {
                upstream: upstream.to_owned(),
                urls: Vec::new(),
            };
        }
        let realms = &mut realms.urls;
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
    // Parameters are `key="value"` or `key=token`, separated by commas: walk them, so that
    // `realm=` inside another parameter's quoted value is not taken for the realm.
    let bytes = challenge.as_bytes();
    let mut i = 7;
    let (mut start, mut end) = (None, 0);
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b',') {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' {
            i += 1;
        }
        let key = challenge[key_start..i].trim();
        i += 1;
        let value_start;
        if bytes.get(i) == Some(&b'"') {
            i += 1;
            value_start = i;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    return None; // escapes: not a realm a registry sends
                }
                i += 1;
            }
            if i >= bytes.len() {
                return None;
            }
        } else {
            value_start = i;
            while i < bytes.len() && bytes[i] != b',' {
                i += 1;
            }
        }
        if key.eq_ignore_ascii_case("realm") {
            if start.is_some() {
                return None; // two realms: ambiguous
            }
            (start, end) = (Some(value_start), i);
        }
        i += 1;
    }
    let start = start?;
    let realm = &challenge[start..end];
    let url = reqwest::Url::parse(realm).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| (realm.to_owned(), start, end))
}

/// Whether the gate may stand in for token realm `realm` of `upstream` (see
/// [`State::challenge`]).
fn realm_fits_upstream(realm: &str, upstream: &str) -> bool {
    let (Ok(realm), Ok(upstream)) = (reqwest::Url::parse(realm), reqwest::Url::parse(upstream))
    else {
        return false;
    };
    let scheme_ok = realm.scheme() == "https" || upstream.scheme() == "http";
    let upstream_is_hub = upstream
        .host_str()
        .and_then(|h| h.parse::<crate::policy::HostPattern>().ok())
        .is_some_and(|h| crate::policy::presets::reaches_docker_hub(&h));
    let host_ok = realm.host_str() == upstream.host_str()
        || (upstream_is_hub && realm.host_str() == Some("auth.docker.io"));
    scheme_ok && host_ok
}

/// `base` with the client's query appended to any query it has.
fn with_query(base: &str, query: Option<&str>) -> String {
    match query {
        None | Some("") => base.to_owned(),
        Some(query) if base.contains('?') => format!("{base}&{query}"),
        Some(query) => format!("{base}?{query}"),
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

/// `scheme://host[:port]` of a URL, for messages (no path or query: they may carry tokens).
fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "the upstream".into())
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
            route("/v2/someuser/image/blobs/sha256:abc123"),
            Ok(repo("someuser/image", "blobs", "sha256:abc123"))
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
            "/v2/mycompany@x/someuser/custom-image/manifests/latest",
            "/v2/library/busybox:x/manifests/latest",
            "/v2/library/a/b/manifests/latest",
            "/v2/Library/busybox/manifests/latest",
            "/v2/library/busy..box/manifests/latest",
            "/v2/library/-busybox/manifests/latest",
            "/v2/library\\..\\x/manifests/latest",
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
        // `realm=` inside another parameter is not the realm; two realms are ambiguous.
        let tricky = r#"Bearer error_description="realm=\"http://evil\"",realm="https://a/t""#;
        assert_eq!(realm_of(tricky), None);
        let inner = r#"Bearer scope="x,realm=http://evil",realm="https://a/t""#;
        assert_eq!(realm_of(inner).unwrap().0, "https://a/t");
        assert_eq!(
            realm_of(r#"Bearer realm="https://a/t",realm="https://b/t""#),
            None
        );
        assert!(realm_fits_upstream(
            "https://auth.docker.io/token",
            "https://registry-1.docker.io"
        ));
        assert!(realm_fits_upstream(
            "http://hub.test:5002/token",
            "http://hub.test:5001"
        ));
        assert!(!realm_fits_upstream(
            "http://169.254.169.254/",
            "http://hub.test:5001"
        ));
        assert!(!realm_fits_upstream(
            "http://auth.docker.io/token",
            "https://registry-1.docker.io"
        ));
        assert_eq!(
            with_query("https://a/t?x=1", Some("y=2")),
            "https://a/t?x=1&y=2"
        );
        assert_eq!(with_query("https://a/t", Some("y=2")), "https://a/t?y=2");
    }

    #[test]
    fn name_components_follow_the_distribution_spec() {
        for good in [
            "busybox", "a", "my-app", "my--app", "my_app", "my__app", "v1.2", "a0",
        ] {
            assert!(is_name_component(good), "{good}");
        }
        for bad in [
            "", "-a", "a-", ".a", "a.", "a..b", "a___b", "a._b", "A", "a@b", "a:b",
        ] {
            assert!(!is_name_component(bad), "{bad}");
        }
    }
}
