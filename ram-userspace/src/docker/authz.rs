//! A Docker Engine authorization plugin (`dockerd --authorization-plugin=ram`): Image Access
//! Management on the engine's API. dockerd asks the plugin, over HTTP on a unix socket in
//! `/run/docker/plugins/`, about every API request before serving it.
//!
//! Longer than 600 lines: a third of it is tests, one per way a request could make the plugin
//! judge another image than dockerd uses.
//!
//! The protocol (Docker's plugin API, v1.2), one `POST` per call:
//! - `/Plugin.Activate` → `{"Implements":["authz"]}`;
//! - `/AuthZPlugin.AuthZReq` → `{"Allow":…,"Msg":…}`: [`authorize`];
//! - `/AuthZPlugin.AuthZRes` → `{"Allow":true}` (answers are not judged);
//! - anything else → 404 `{"Err":…}`; a body over 4 MiB → 413 `{"Err":…}`, which dockerd takes
//!   for a plugin error and so refuses the request.
//!
//! What is judged, and what happens when a request cannot be read:
//! - `POST /images/create?fromImage=…` (docker pull, compose pull): the image's category.
//!   Unreadable: **denied** (fail closed: it is a pull).
//! - `POST /containers/create` (docker run/create, compose up): the `Image` of the body.
//!   Unreadable: **denied**.
//! - `POST /images/{name}/push?tag=…` (docker push), when `registry_access.push` is set: the
//!   destination (registry and repository) against that list. Unreadable: **denied**.
//! - Everything else (the engine's many other calls; `/build`, whose `FROM` the pull gate in
//!   `gate/` judges as dockerd pulls it): allowed at once, never parsed (fail open: the plugin
//!   must not stall the engine).
//!
//! Image references are read with the grammar of [`super::reference`], the pull gate's: one
//! that grammar refuses is denied with its message (see there for what it refuses).
//!
//! Served with hyper (HTTP/1.1) on the Docker servers' runtime (`daemon/docker_servers.rs`), a
//! thread of its own, so that the engine never waits on the daemon's event loop. No header-read
//! or idle timeout: dockerd keeps connections open, and a connection closed under a request it
//! is sending makes its client retry with an empty body. No connection limit: the socket is
//! root's only.

use std::{
    borrow::Cow,
    convert::Infallible,
    sync::{Arc, RwLock},
    time::Duration,
};

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::{
    Request, Response, StatusCode, body::Incoming, header, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{UnixListener, UnixStream};

use super::{Decisions, image_access};
use crate::{
    events::records::ImageDecision,
    policy::{ImageRules, push},
};

/// The plugin's name, as dockerd's `--authorization-plugin=` gives it.
pub const PLUGIN_NAME: &str = "ram";
/// Where dockerd looks for plugin sockets.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/ram.sock";
/// Largest request body read: dockerd passes bodies of up to 1 MiB (1.4 in base64) to plugins.
const MAX_REQUEST: usize = 4 << 20;
/// Largest request head, and hyper's read buffer (bodies stream through it).
const MAX_HEADER: usize = 64 << 10;
/// The content type of the plugin API.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// How the audit log names decisions of the plugin.
pub const VIA: &str = "authorization_plugin";

/// The rules in force (`None`: image access off, everything allowed), swapped on reload.
pub type SharedRules = Arc<RwLock<Option<ImageRules>>>;

/// Serves the plugin on `listener`, on the runtime it is spawned on, until that runtime ends:
/// a task per connection (dockerd keeps a few open).
pub async fn serve(listener: UnixListener, rules: SharedRules, decisions: Decisions) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, rules.clone(), decisions.clone()));
            }
            Err(err) => {
                // E.g. out of file descriptors: do not spin.
                log::warn!("authorization plugin: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers the requests of one connection until the client closes it.
async fn serve_connection(stream: UnixStream, rules: SharedRules, decisions: Decisions) {
    let service = service_fn(move |request| {
        let rules = rules.clone();
        let decisions = decisions.clone();
        async move { Ok::<_, Infallible>(answer(request, &rules, &decisions).await) }
    });
    // No timer, and so no timeouts (see the module's doc).
    let served = http1::Builder::new()
        .header_read_timeout(None)
        .max_header_size(MAX_HEADER)
        .max_buf_size(MAX_HEADER)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = served {
        log::debug!("authorization plugin connection: {err}");
    }
}

/// The answer to one call of the plugin API.
async fn answer(
    request: Request<Incoming>,
    rules: &SharedRules,
    decisions: &Decisions,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let body = match Limited::new(request.into_body(), MAX_REQUEST)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            log::warn!("authorization plugin: cannot read a request to {path}: {err}");
            let status = if err.is::<LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            let message = format!("ram's plugin cannot read this request: {err}");
            return reply(status, &json!({ "Err": message }));
        }
    };
    match path.as_str() {
        "/Plugin.Activate" => {
            log::info!("a Docker Engine activated the authorization plugin");
            reply(StatusCode::OK, &json!({ "Implements": ["authz"] }))
        }
        "/AuthZPlugin.AuthZReq" => {
            let rules = match rules.read() {
                Ok(rules) => rules.clone(),
                // A writer panicked: the rules it left are still the last ones set.
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            let (allow, message, decision) = authorize(&body, rules.as_ref());
            if let Some(decision) = decision {
                decisions(decision);
            }
            reply(StatusCode::OK, &json!({ "Allow": allow, "Msg": message }))
        }
        "/AuthZPlugin.AuthZRes" => reply(StatusCode::OK, &json!({ "Allow": true })),
        _ => {
            log::warn!("authorization plugin: unknown call {path}");
            let message = format!("ram's plugin has no {path}");
            reply(StatusCode::NOT_FOUND, &json!({ "Err": message }))
        }
    }
}

fn reply(status: StatusCode, answer: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Full::new(Bytes::from(answer.to_string())))
        .expect("a response of a status and a fixed header is valid")
}

/// The decision on one `AuthZReq`: (allow, message for the user, what to audit).
pub fn authorize(body: &[u8], rules: Option<&ImageRules>) -> (bool, String, Option<ImageDecision>) {
    let Some(rules) = rules else {
        return (true, String::new(), None);
    };
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // Docker's field is `RequestUri` (authorization.Request in moby's pkg/authorization).
    let (Some(method), Some(uri)) = (
        request["RequestMethod"].as_str(),
        request["RequestUri"]
            .as_str()
            .or_else(|| request["RequestURI"].as_str()),
    ) else {
        // Not a request dockerd would send (or one cut short): it might be a pull.
        return deny_unreadable("request", None);
    };
    let user = request["User"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    let (target, query) = uri.split_once('?').unwrap_or((uri, ""));
    // dockerd routes on the decoded path of the request target, which may be in absolute
    // form (`http://host/v1.41/...`); judge what it routes. A POST whose path still holds an
    // escape after that cannot be matched with certainty: refused.
    let target = match target.find("://") {
        Some(scheme) => target[scheme + 3..]
            .find('/')
            .map_or("/", |slash| &target[scheme + 3 + slash..]),
        None => target,
    };
    let decoded = decode_path(target);
    if method.eq_ignore_ascii_case("POST") && (decoded.contains('%') || !decoded.starts_with('/')) {
        return deny_unreadable("request", user);
    }
    // `/v1.41/images/create` → `/images/create`; duplicate and trailing slashes as mux sees
    // them (it cleans paths).
    let cleaned: String = decoded
        .split('/')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    let path = match cleaned.split_once('/') {
        Some((version, rest))
            if version.starts_with('v')
                && version[1..].starts_with(|c: char| c.is_ascii_digit()) =>
        {
            format!("/{rest}")
        }
        _ => format!("/{cleaned}"),
    };
    if method.eq_ignore_ascii_case("POST")
        && let Some(name) = path
            .strip_prefix("/images/")
            .and_then(|rest| rest.strip_suffix("/push"))
    {
        return authorize_push(rules, name, query, &request, user);
    }
    let (action, image) = match (method.to_ascii_uppercase().as_str(), path.as_str()) {
        ("POST", "/images/create") => {
            // A form body would override the query in Go's r.Form, and dockerd does not send
            // such bodies to plugins: refuse rather than judge the wrong image.
            if has_body(&request) {
                return deny_unreadable("image_pull", user);
            }
            let params = query_params(query);
            // As dockerd reads them (Go's `r.Form.Get`): a key's first value, even if a later
            // one differs, and an empty first value is no value.
            let get = |key: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .filter(|v| !v.is_empty())
            };
            let from_image = get("fromImage");
            if from_image.is_none() && get("fromSrc").is_some() {
                // docker import: builds an image from a tarball, nothing is pulled (dockerd
                // pulls whenever fromImage is set, fromSrc or not).
                return (true, String::new(), None);
            }
            let image = from_image.map(|from| match get("tag") {
                Some(tag) if !from.contains('@') => {
                    if tag.starts_with("sha256:") {
                        format!("{from}@{tag}")
                    } else {
                        format!("{from}:{tag}")
                    }
                }
                _ => from,
            });
            ("image_pull", image)
        }
        ("POST", "/containers/create") => {
            let image = request["RequestBody"]
                .as_str()
                .and_then(base64_decode)
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
                .and_then(|body| container_image(&body));
            ("container_create", image)
        }
        _ => return (true, String::new(), None),
    };
    let Some(image) = image else {
        return deny_unreadable(action, user);
    };
    if looks_like_image_id(&image) {
        let message = "image access denied: ram cannot tell the kind of an image given by its \
                       ID; use its name";
        return decided(false, message.into(), message.into(), action, image, user);
    }
    match image_access::judge(rules, &image) {
        Ok(allowed) => {
            let kind = allowed
                .as_ref()
                .map_or("other_registry", |a| a.category.as_str());
            let exception = allowed
                .and_then(|a| a.exception)
                .map(|pattern| pattern.to_string());
            let (allow, message, decision) =
                decided(true, String::new(), kind.into(), action, image, user);
            let decision = decision.map(|d| ImageDecision { exception, ..d });
            (allow, message, decision)
        }
        Err(why) => {
            let message = why.to_string();
            decided(false, message.clone(), message, action, image, user)
        }
    }
}

/// `POST /images/{name}/push?tag=…` (docker push): the destination against
/// `registry_access.push`. No list: not judged, not audited (today's behaviour). The name is
/// the decoded path's, as dockerd's router reads it; a tag, as dockerd does, comes from the
/// query (or after the name's last `:`), and is not judged: rules name repositories.
fn authorize_push(
    rules: &ImageRules,
    name: &str,
    query: &str,
    request: &Value,
    user: Option<String>,
) -> (bool, String, Option<ImageDecision>) {
    let Some(push_rules) = rules.push.as_deref() else {
        return (true, String::new(), None);
    };
    const ACTION: &str = "image_push";
    if has_body(request) || name.is_empty() {
        let message = "registry access denied: ram could not read the destination of this push";
        return decided(
            false,
            message.into(),
            "unreadable".into(),
            ACTION,
            String::new(),
            user,
        );
    }
    let tag = query_params(query)
        .into_iter()
        .find(|(key, _)| key == "tag")
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty());
    let image = match &tag {
        Some(tag) => format!("{name}:{tag}"),
        None => name.to_owned(),
    };
    if looks_like_image_id(name) {
        let message = "registry access denied: ram cannot tell where a push of an image given                        by its ID goes; use its name";
        return decided(false, message.into(), message.into(), ACTION, image, user);
    }
    match push::judge_push(push_rules, name) {
        Ok(destination) => {
            let reason = format!("registry_access.push allows {destination}");
            decided(true, String::new(), reason, ACTION, image, user)
        }
        Err(message) => decided(false, message.clone(), message, ACTION, image, user),
    }
}

/// The plugin's answer (allow, message for the user) and what goes to the audit log.
fn decided(
    allowed: bool,
    message: String,
    reason: String,
    action: &'static str,
    image: String,
    user: Option<String>,
) -> (bool, String, Option<ImageDecision>) {
    let decision = ImageDecision {
        allowed,
        action,
        image,
        reason,
        exception: None,
        user,
        via: VIA,
    };
    (allowed, message, Some(decision))
}

/// The answer for a request ram cannot read with certainty: refused, and audited.
fn deny_unreadable(
    action: &'static str,
    user: Option<String>,
) -> (bool, String, Option<ImageDecision>) {
    let message = format!("image access denied: ram could not read the image of this {action}");
    decided(
        false,
        message,
        "unreadable".into(),
        action,
        String::new(),
        user,
    )
}

/// Whether the request carries a body (a header says so).
fn has_body(request: &Value) -> bool {
    let Some(headers) = request["RequestHeaders"].as_object() else {
        return false;
    };
    headers.iter().any(|(name, value)| {
        let value = value.as_str().unwrap_or("");
        // Go's net/http drops Content-Length and Transfer-Encoding from the headers it hands
        // on for a chunked body, and parses a form whatever the media type's case: a form
        // media type alone means a body dockerd reads.
        (name.eq_ignore_ascii_case("content-length") && value.trim() != "0")
            || (name.eq_ignore_ascii_case("content-type")
                && value.to_ascii_lowercase().contains("form"))
            || name.eq_ignore_ascii_case("transfer-encoding")
    })
}

/// The `Image` of a container-create body. Go matches JSON keys case-insensitively (the last
/// one wins), so every spelling is read; more than one, or not a string: unreadable.
fn container_image(body: &Value) -> Option<String> {
    let object = body.as_object()?;
    let mut images = object
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case("image"));
    let (_, image) = images.next()?;
    if images.next().is_some() {
        return None;
    }
    image.as_str().map(str::to_owned)
}

/// `sha256:…`, or a bare string of hex digits of any length: dockerd looks a name it has no
/// image for up as an image-ID prefix (`abc1` runs the image whose ID starts with abc1), so
/// such a string may name any image, whatever its repository.
fn looks_like_image_id(image: &str) -> bool {
    image.starts_with("sha256:")
        || (!image.is_empty() && image.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Percent-decodes a path (`+` is a `+` in a path; invalid escapes stay as written).
fn decode_path(path: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(path).decode_utf8_lossy()
}

/// A query as Go's `url.ParseQuery` reads it: `a=1&b=x%2Fy+z` → [(a, 1), (b, x/y z)].
fn query_params(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// How dockerd encodes request bodies: Go's `encoding/json` writes `[]byte` as standard base64
/// with padding. Read as leniently as Go's decoder: padding optional, trailing bits ignored,
/// line breaks skipped.
const BODY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A request body as dockerd sends it. `None` if malformed.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text: Cow<'_, str> = if text.contains(['\r', '\n']) {
        text.replace(['\r', '\n'], "").into()
    } else {
        text.into()
    };
    BODY_BASE64.decode(text.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::docker::image_access::tests::rules;

    fn request(method: &str, uri: &str, body: Option<&str>) -> Vec<u8> {
        json!({
            "User": "",
            "RequestMethod": method,
            "RequestUri": uri,
            "RequestBody": body,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn pulls_are_judged_by_category() {
        let rules = rules();
        let pull = |uri: &str| authorize(&request("POST", uri, None), Some(&rules));
        let (allow, message, decision) =
            pull("/v1.41/images/create?fromImage=someuser%2Fcustom-image&tag=latest");
        assert!(!allow);
        assert_eq!(message, "image access denied: community images not allowed");
        assert_eq!(decision.unwrap().image, "someuser/custom-image:latest");
        assert!(pull("/v1.41/images/create?fromImage=busybox&tag=latest").0);
        assert!(pull("/images/create?fromImage=mycompany%2Fapp&tag=").0);
        assert!(pull("/v1.41/images/create?fromImage=ghcr.io%2Fx%2Fy&tag=1").0);
        assert!(
            pull("/v1.41/images/create?fromSrc=-&repo=someuser%2Fx").0,
            "import"
        );
        let (allow, message, _) = pull("/v1.41/images/create?tag=latest");
        assert!(!allow, "a pull without an image is refused");
        assert!(message.contains("could not read"));
        let (allow, _, decision) =
            pull("/v1.41/images/create?fromImage=someuser%2Fx&tag=sha256%3Aabc");
        assert!(!allow);
        assert_eq!(decision.unwrap().image, "someuser/x@sha256:abc");
    }

    #[test]
    fn a_repository_exception_allows_and_is_audited() {
        let rules = ImageRules {
            allow_repositories: vec!["someuser/tool".parse().unwrap()],
            ..rules()
        };
        let pull = |image: &str| {
            let uri = format!("/v1.41/images/create?fromImage={image}&tag=latest");
            authorize(&request("POST", &uri, None), Some(&rules))
        };
        let (allow, message, decision) = pull("someuser%2Ftool");
        assert!(allow, "{message}");
        let decision = decision.unwrap();
        assert_eq!(
            (decision.reason.as_str(), decision.exception.as_deref()),
            ("community", Some("someuser/tool"))
        );
        let (allow, message, decision) = pull("someuser%2Fother");
        assert!(!allow);
        assert_eq!(message, "image access denied: community images not allowed");
        assert_eq!(decision.unwrap().exception, None);
        let (_, _, decision) = pull("busybox");
        assert_eq!(decision.unwrap().exception, None);
    }

    #[test]
    fn container_creation_reads_the_image_from_the_body() {
        let rules = rules();
        let body = base64_encode(br#"{"Image":"someuser/custom-image","Cmd":["sh"]}"#);
        let (allow, message, _) = authorize(
            &request("POST", "/v1.41/containers/create?name=x", Some(&body)),
            Some(&rules),
        );
        assert!(!allow);
        assert_eq!(message, "image access denied: community images not allowed");
        let (allow, ..) = authorize(
            &request("POST", "/v1.41/containers/create", Some("not base64!")),
            Some(&rules),
        );
        assert!(!allow, "unreadable: fail closed");
    }

    #[test]
    fn disguised_pulls_are_judged_or_refused() {
        let rules = rules();
        let allowed = |uri: &str| authorize(&request("POST", uri, None), Some(&rules)).0;
        for uri in [
            "/v1.41/images%2Fcreate?fromImage=someuser%2Fx",
            "/v1.41/images/cre%61te?fromImage=someuser%2Fx",
            "http://docker/v1.41/images/create?fromImage=someuser%2Fx",
            "//v1.41//images/create/?fromImage=someuser%2Fx",
            "/v1.41/images/create?fromImage=someuser%2Fx&fromSrc=-",
            // dockerd reads a key's first value: the community image is the one it pulls.
            "/v1.41/images/create?fromImage=someuser%2Fx&fromImage=busybox",
            "/v1.41/images/create?fromImage=someuser%2Fx&fromImage=&fromSrc=-",
            "/v1.41/images/create?fromImage=registry-1.docker.io:443%2Fsomeuser%2Fx",
            "/v1.41/images/create?fromImage=Docker.IO%2Fsomeuser%2Fx",
        ] {
            assert!(!allowed(uri), "{uri} was allowed");
        }
        // ... and where the first value is an official image, that is what dockerd pulls.
        for uri in [
            "/v1.41/images/create?fromImage=busybox&fromImage=someuser%2Fx",
            "/v1.41/images/create?fromImage=busybox&tag=latest&tag=..%2F..%2Fsomeuser%2Fx",
        ] {
            assert!(allowed(uri), "{uri} was refused");
        }
        let with_form_body = json!({
            "RequestMethod": "POST",
            "RequestUri": "/v1.41/images/create?fromImage=busybox",
            "RequestHeaders": {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "24"},
        });
        assert!(!authorize(with_form_body.to_string().as_bytes(), Some(&rules)).0);
        // Chunked: Go hands on neither length header; the media type in any case is enough.
        let chunked_form = json!({
            "RequestMethod": "POST",
            "RequestUri": "/v1.41/images/create?fromImage=busybox",
            "RequestHeaders": {"Content-Type": "Application/X-WWW-Form-Urlencoded"},
        });
        assert!(!authorize(chunked_form.to_string().as_bytes(), Some(&rules)).0);
        // What the docker CLI sends with a pull is still judged.
        let cli_pull = json!({
            "RequestMethod": "POST",
            "RequestUri": "/v1.41/images/create?fromImage=busybox&tag=latest",
            "RequestHeaders": {"Content-Type": "text/plain", "Content-Length": "0"},
        });
        assert!(authorize(cli_pull.to_string().as_bytes(), Some(&rules)).0);
        let create = |body: &[u8]| {
            let body = base64_encode(body);
            authorize(
                &request("POST", "/containers/create", Some(&body)),
                Some(&rules),
            )
            .0
        };
        assert!(!create(br#"{"Image":"busybox","image":"someuser/x"}"#));
        assert!(!create(br#"{"image":"someuser/x"}"#));
        assert!(!create(
            br#"{"Image":"sha256:0123456789ab0123456789ab0123456789ab0123456789ab0123456789abcdef"}"#
        ));
        assert!(!create(br#"{"Image":"0123456789ab"}"#));
        // dockerd falls back to an image-ID prefix search for a name it has no image for.
        for id in ["sha256:abc", "abc1", "123456789012", "f"] {
            let body = format!(r#"{{"Image":"{id}"}}"#);
            assert!(!create(body.as_bytes()), "{id} was judged as a name");
        }
        assert!(create(br#"{"Image":"busybox:1.36"}"#));
        // A malformed request might be a pull: refused.
        assert!(!authorize(b"{not json", Some(&rules)).0);
        assert!(!authorize(br#"{"RequestMethod":"POST"}"#, Some(&rules)).0);
    }

    #[test]
    fn everything_else_passes() {
        let rules = rules();
        assert!(
            authorize(
                &request("GET", "/v1.41/containers/json", None),
                Some(&rules)
            )
            .0
        );
        assert!(authorize(&request("POST", "/v1.41/build?t=x", None), Some(&rules)).0);
        assert!(authorize(&request("GET", "/_ping", None), Some(&rules)).0);
        assert!(
            authorize(
                &request("POST", "/images/create?fromImage=someuser%2Fx", None),
                None
            )
            .0,
            "image access off"
        );
    }

    #[test]
    fn decoders_handle_their_inputs() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ").unwrap(), b"hello world");
        assert_eq!(base64_decode("aGVs\r\nbG8=").unwrap(), b"hello");
        assert!(base64_decode("a$").is_none());
        assert_eq!(
            query_params("k=a%2Fb+c%zz&&x&k2=%C3%A9"),
            [
                ("k".to_owned(), "a/b c%zz".to_owned()),
                ("x".to_owned(), String::new()),
                ("k2".to_owned(), "é".to_owned()),
            ]
        );
        assert_eq!(
            query_params("t=trailing%2"),
            [("t".into(), "trailing%2".into())]
        );
        assert_eq!(decode_path("/a+b%2Fc%zz%2"), "/a+b/c%zz%2");
        assert_eq!(decode_path("/%ff"), "/\u{fffd}");
    }

    fn base64_encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Sends raw HTTP/1.1 `requests` on one connection to the plugin; its answers, once it has
    /// given `answers` of them or closed the connection.
    async fn exchange(requests: &[u8], answers: usize) -> Vec<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut client, server) = UnixStream::pair().unwrap();
        let rules = Arc::new(RwLock::new(Some(rules())));
        tokio::spawn(serve_connection(server, rules, Arc::new(|_| {})));
        client.write_all(requests).await.unwrap();
        let (mut read, mut buffer) = (String::new(), [0; 4096]);
        while read.matches("HTTP/1.1 ").count() < answers || !read.ends_with('}') {
            let reading = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer));
            let n = reading.await.expect("the plugin answers").unwrap();
            if n == 0 {
                break;
            }
            read.push_str(std::str::from_utf8(&buffer[..n]).unwrap());
        }
        read.split("HTTP/1.1 ").skip(1).map(str::to_owned).collect()
    }

    fn post(path: &str, body: &str) -> String {
        let length = body.len();
        format!("POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {length}\r\n\r\n{body}")
    }

    #[tokio::test]
    async fn the_plugin_speaks_dockers_plugin_protocol() {
        let uri = "/v1.41/images/create?fromImage=someuser%2Fx&tag=latest";
        let pull = String::from_utf8(request("POST", uri, None)).unwrap();
        let requests = [
            post("/Plugin.Activate", ""),
            post("/AuthZPlugin.AuthZReq", &pull),
            post("/AuthZPlugin.AuthZRes", &pull),
            post("/Plugin.X", "{}"),
        ];
        // One connection, kept open across calls, as dockerd's client keeps it.
        let answers = exchange(requests.concat().as_bytes(), requests.len()).await;
        assert_eq!(answers.len(), requests.len(), "{answers:?}");
        let expect = |answer: &str, status: &str, body: Value| {
            let (head, text) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(status), "{answer}");
            let content_type = format!("content-type: {CONTENT_TYPE}");
            assert!(
                head.to_ascii_lowercase().contains(&content_type),
                "{answer}"
            );
            assert_eq!(serde_json::from_str::<Value>(text).unwrap(), body);
        };
        expect(&answers[0], "200 OK", json!({ "Implements": ["authz"] }));
        let denial = "image access denied: community images not allowed";
        expect(
            &answers[1],
            "200 OK",
            json!({ "Allow": false, "Msg": denial }),
        );
        expect(&answers[2], "200 OK", json!({ "Allow": true }));
        let unknown = json!({ "Err": "ram's plugin has no /Plugin.X" });
        expect(&answers[3], "404 Not Found", unknown);
    }

    #[tokio::test]
    async fn oversized_requests_are_refused() {
        let body = " ".repeat(MAX_REQUEST + 1);
        let answers = exchange(post("/AuthZPlugin.AuthZReq", &body).as_bytes(), 1).await;
        assert!(answers[0].starts_with("413 "), "{answers:?}");
        assert!(answers[0].contains(r#"{"Err":"#), "{answers:?}");
        let header = format!("X-Big: {}\r\n", "x".repeat(MAX_HEADER));
        let request = post("/Plugin.Activate", "").replacen("Host", &format!("{header}Host"), 1);
        let answers = exchange(request.as_bytes(), 1).await;
        assert!(answers[0].starts_with("431 "), "{answers:?}");
    }

    #[test]
    fn pushes_are_judged_against_the_push_rules() {
        // No push rules: pushes are not judged (today's behaviour), nor audited.
        let open = rules();
        let uri = "/v1.41/images/ghcr.io%2Fother%2Fx/push?tag=1";
        assert_eq!(
            authorize(&request("POST", uri, None), Some(&open)),
            (true, String::new(), None)
        );
        let rules = ImageRules {
            push: Some(vec![
                "registry.corp.example:5000".parse().unwrap(),
                "ghcr.io/mycompany/*".parse().unwrap(),
                "docker.io/mycompany/*".parse().unwrap(),
            ]),
            ..rules()
        };
        let push = |uri: &str| authorize(&request("POST", uri, None), Some(&rules));
        let (allow, message, decision) = push(uri);
        assert!(!allow);
        assert_eq!(
            message,
            "registry access denied: pushes to ghcr.io/other/x not allowed"
        );
        let decision = decision.unwrap();
        assert_eq!(
            (decision.action, decision.image.as_str(), decision.via),
            ("image_push", "ghcr.io/other/x:1", VIA)
        );
        assert!(!decision.allowed);
        for allowed in [
            "/v1.41/images/ghcr.io%2Fmycompany%2Fapp/push?tag=v1",
            "/v1.45/images/ghcr.io/mycompany/a/b/push",
            "/images/registry.corp.example:5000%2Fx/push?tag=latest",
            "/v1.41/images/registry.corp.example%3A5000%2Fx/push?tag=latest",
            "/v1.41/images/mycompany%2Ftool/push?tag=latest",
            "/v1.41/images/index.docker.io%2Fmycompany%2Ftool/push",
        ] {
            let (allow, message, decision) = push(allowed);
            assert!(allow, "{allowed}: {message}");
            let decision = decision.unwrap();
            assert!(
                decision.allowed && decision.action == "image_push",
                "{allowed}"
            );
        }
        for (denied, why) in [
            (
                "/v1.41/images/busybox/push?tag=latest",
                "pushes to docker.io/library/busybox",
            ),
            (
                "/v1.41/images/someone%2Ftool/push",
                "pushes to docker.io/someone/tool",
            ),
            (
                "/v1.41/images/registry.corp.example%2Fx/push",
                "pushes to registry.corp.example/x",
            ),
            (
                "/v1.41/images/ghcr.io%2FMyCompany%2Fx/push",
                "must be lowercase",
            ),
            (
                "/v1.41/images/ghcr.io%252Fmycompany%2Fx/push",
                "could not read",
            ),
            ("/v1.41/images/abc123/push", "by its ID"),
        ] {
            let (allow, message, decision) = push(denied);
            assert!(!allow && message.contains(why), "{denied}: {message}");
            assert!(!decision.unwrap().allowed);
        }
        // A push with a body is not one dockerd's CLI sends: refused as unreadable.
        let with_body = json!({
            "RequestMethod": "POST",
            "RequestUri": "/v1.41/images/ghcr.io%2Fmycompany%2Fx/push?tag=1",
            "RequestHeaders": {"Content-Length": "12"},
        })
        .to_string();
        let (allow, message, decision) = authorize(with_body.as_bytes(), Some(&rules));
        assert!(!allow && message.contains("could not read the destination of this push"));
        assert_eq!(decision.unwrap().reason, "unreadable");
        // `push = []`: no push at all; other calls are not affected.
        let none = ImageRules {
            push: Some(Vec::new()),
            ..rules.clone()
        };
        let (allow, _, _) = authorize(&request("POST", uri, None), Some(&none));
        assert!(!allow);
        let (allow, _, decision) =
            authorize(&request("GET", "/v1.41/images/json", None), Some(&none));
        assert!(allow && decision.is_none());
    }
}
