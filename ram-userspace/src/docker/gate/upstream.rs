//! The pull gate's side towards the upstream registry: forwarding allowed requests and
//! streaming the answers back, standing in for the upstream's token realms, following
//! redirects (Docker Hub sends layers from a CDN) without sending credentials to another host.

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use futures_util::TryStreamExt as _;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::{
    Method, Request, Response,
    body::{Frame, Incoming},
    header::{self, HeaderName, HeaderValue},
};

use super::{GateBody, routes::TOKEN_PATH};

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

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("reading the token request")]
    TokenRequest(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Upstream(#[from] reqwest::Error),
    #[error("the upstream's answer cannot be passed on")]
    Answer(#[source] hyper::http::Error),
}

/// The gate's clients and the token realms it stands in for.
pub(super) struct Upstream {
    client: reqwest::Client,
    token_client: reqwest::Client,
    /// Where the gate listens: the realms it names in challenges.
    listen: SocketAddr,
    realms: Mutex<Realms>,
}

/// Token realms the upstream named, by index in `/ram/token/<n>`; forgotten when the upstream
/// changes.
#[derive(Default)]
struct Realms {
    upstream: String,
    urls: Vec<String>,
}

impl Upstream {
    pub(super) fn new(listen: SocketAddr) -> Result<Self, reqwest::Error> {
        let client = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                // The machine's proxy settings are not the policy's: the gate goes direct.
                .no_proxy()
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(Duration::from_secs(120))
                .redirect(redirects)
                .build()
        };
        Ok(Self {
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
        })
    }

    /// The n-th token realm `upstream` named, if it is still the upstream.
    pub(super) fn realm(&self, index: usize, upstream: &str) -> Option<String> {
        let realms = self.realms.lock().ok()?;
        (realms.upstream == upstream)
            .then(|| realms.urls.get(index).cloned())
            .flatten()
    }

    /// Sends the request on to `target` and streams the answer back.
    pub(super) async fn forward(
        &self,
        request: Request<Incoming>,
        target: &str,
        upstream_base: &str,
    ) -> Result<Response<GateBody>, ForwardError> {
        let method = request.method().clone();
        let client = if request.uri().path().starts_with(TOKEN_PATH) {
            &self.token_client
        } else {
            &self.client
        };
        let mut upstream = client.request(method.clone(), target);
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
                .map_err(ForwardError::TokenRequest)?
                .to_bytes();
            upstream = upstream.body(body);
        }
        let answer = upstream.send().await?;
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
        response.body(body).map_err(ForwardError::Answer)
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
/// [`Upstream::challenge`]).
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
pub(super) fn with_query(base: &str, query: Option<&str>) -> String {
    match query {
        None | Some("") => base.to_owned(),
        Some(query) if base.contains('?') => format!("{base}&{query}"),
        Some(query) => format!("{base}?{query}"),
    }
}

/// `scheme://host[:port]` of a URL, for messages (no path or query: they may carry tokens).
pub(super) fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "the upstream".into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn challenges_are_pointed_at_the_gate() {
        let upstream = Upstream::new("127.0.0.1:442".parse().unwrap()).unwrap();
        let hub = "https://registry-1.docker.io";
        let challenge = HeaderValue::from_static(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
        );
        assert_eq!(
            upstream.challenge(&challenge, hub),
            r#"Bearer realm="http://127.0.0.1:442/ram/token/0",service="registry.docker.io""#
        );
        assert_eq!(
            upstream.realm(0, hub).as_deref(),
            Some("https://auth.docker.io/token")
        );
        assert_eq!(upstream.realm(1, hub), None);
        assert_eq!(
            upstream.realm(0, "http://other.test"),
            None,
            "another upstream"
        );
        let elsewhere = HeaderValue::from_static(r#"Bearer realm="https://evil.test/token""#);
        assert_eq!(upstream.challenge(&elsewhere, hub), elsewhere);
    }
}
