//! A Docker Engine authorization plugin (`dockerd --authorization-plugin=ram`): Image Access
//! Management on the engine's API. dockerd asks the plugin, over HTTP on a unix socket in
//! `/run/docker/plugins/`, about every API request before serving it.
//!
//! What is judged, and what happens when a request cannot be read:
//! - `POST /images/create?fromImage=…` (docker pull, compose pull): the image's category.
//!   Unreadable: **denied** (fail closed: it is a pull).
//! - `POST /containers/create` (docker run/create, compose up): the `Image` of the body.
//!   Unreadable: **denied**.
//! - Everything else (the engine's many other calls; `/build`, whose `FROM` the pull gate in
//!   `gate/` judges as dockerd pulls it): allowed at once, never parsed (fail open: the plugin
//!   must not stall the engine).
//!
//! Image references are read with the grammar of [`super::reference`], the pull gate's: one
//! that grammar refuses is denied with its message (see there for what it refuses).
//!
//! Runs on threads of its own, so that the engine never waits on the daemon's event loop.

use std::{
    borrow::Cow,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    sync::{Arc, RwLock},
    thread,
    time::Duration,
};

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde_json::{Value, json};

use super::image_access;
use crate::{events::records::ImageDecision, policy::ImageRules};

/// The plugin's name, as dockerd's `--authorization-plugin=` gives it.
pub const PLUGIN_NAME: &str = "ram";
/// Where dockerd looks for plugin sockets.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/ram.sock";
/// Largest request read: dockerd sends bodies only up to 1 MiB to authorization plugins.
const MAX_REQUEST: usize = 4 << 20;
const MAX_HEADER: usize = 64 << 10;

/// How the audit log names decisions of the plugin.
pub const VIA: &str = "authorization_plugin";

/// The rules in force (`None`: image access off, everything allowed), swapped on reload.
pub type SharedRules = Arc<RwLock<Option<ImageRules>>>;

/// Serves the plugin on `listener` until the process ends: one thread per connection (dockerd
/// keeps a few open).
pub fn serve(
    listener: UnixListener,
    rules: SharedRules,
    decisions: impl Fn(ImageDecision) + Send + Sync + 'static,
) {
    let decisions = Arc::new(decisions);
    thread::Builder::new()
        .name("authz-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(err) => {
                        // E.g. out of file descriptors: do not spin.
                        log::warn!("authorization plugin: accept failed: {err}");
                        thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let rules = rules.clone();
                let decisions = decisions.clone();
                let _ = thread::Builder::new()
                    .name("authz-conn".into())
                    .spawn(move || {
                        if let Err(err) = connection(stream, &rules, &*decisions) {
                            log::debug!("authorization plugin connection: {err}");
                        }
                    });
            }
        })
        .expect("spawning the authorization plugin thread");
}

fn connection(
    stream: UnixStream,
    rules: &SharedRules,
    decisions: &dyn Fn(ImageDecision),
) -> io::Result<()> {
    // No idle timeout: dockerd keeps connections open, and a connection closed under a
    // request it is sending makes its client retry with an empty body.
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some((path, body)) = read_request(&mut reader)? else {
            return Ok(());
        };
        let (status, answer) = match path.as_str() {
            "/Plugin.Activate" => {
                log::info!("a Docker Engine activated the authorization plugin");
                (200, json!({ "Implements": ["authz"] }))
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
                (200, json!({ "Allow": allow, "Msg": message }))
            }
            "/AuthZPlugin.AuthZRes" => (200, json!({ "Allow": true })),
            _ => {
                log::warn!("authorization plugin: unknown call {path}");
                (404, json!({ "Err": format!("ram's plugin has no {path}") }))
            }
        };
        let body = answer.to_string();
        write!(
            writer,
            "HTTP/1.1 {status} {}\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            if status == 200 { "OK" } else { "Not Found" },
            body.len()
        )?;
        writer.flush()?;
    }
}

/// One HTTP/1.1 request: its path and body (`Content-Length` only: dockerd's plugin client
/// sends whole bodies). `None` at a clean end of the connection.
fn read_request(reader: &mut BufReader<UnixStream>) -> io::Result<Option<(String, Vec<u8>)>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let path = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| io::Error::other("malformed request line"))?
        .to_owned();
    let mut length = 0usize;
    let mut header_bytes = line.len();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(io::Error::other("connection closed inside the headers"));
        }
        header_bytes += header.len();
        if header_bytes > MAX_HEADER {
            return Err(io::Error::other("headers too large"));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| io::Error::other("bad Content-Length"))?;
            }
            // dockerd's plugin client sends whole bodies; anything else would desynchronize.
            if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(io::Error::other("chunked requests are not supported"));
            }
        }
    }
    if length > MAX_REQUEST {
        return Err(io::Error::other("request too large"));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some((path, body)))
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
    let (action, image) = match (method.to_ascii_uppercase().as_str(), path.as_str()) {
        ("POST", "/images/create") => {
            // A form body would override the query in Go's r.Form, and dockerd does not send
            // such bodies to plugins: refuse rather than judge the wrong image.
            if has_body(&request) {
                return deny_unreadable("image_pull", user);
            }
            let params = query_params(query);
            let get = |key: &str| {
                params
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .next_back()
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
        Ok(category) => {
            let kind = category.map_or("other_registry", |c| c.as_str());
            decided(true, String::new(), kind.into(), action, image, user)
        }
        Err(why) => {
            let message = why.to_string();
            decided(false, message.clone(), message, action, image, user)
        }
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
        (name.eq_ignore_ascii_case("content-length") && value.trim() != "0")
            || (name.eq_ignore_ascii_case("content-type") && value.contains("form"))
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

/// `sha256:…` or a bare hex id (12 to 64 digits): no repository name to judge.
fn looks_like_image_id(image: &str) -> bool {
    let hex = image.strip_prefix("sha256:").unwrap_or(image);
    (12..=64).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) && {
        image.starts_with("sha256:") || !hex.bytes().all(|b| b.is_ascii_digit())
    }
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
            "/v1.41/images/create?fromImage=busybox&fromImage=someuser%2Fx",
            "/v1.41/images/create?fromImage=registry-1.docker.io:443%2Fsomeuser%2Fx",
            "/v1.41/images/create?fromImage=Docker.IO%2Fsomeuser%2Fx",
        ] {
            assert!(!allowed(uri), "{uri} was allowed");
        }
        let with_form_body = json!({
            "RequestMethod": "POST",
            "RequestUri": "/v1.41/images/create?fromImage=busybox",
            "RequestHeaders": {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "24"},
        });
        assert!(!authorize(with_form_body.to_string().as_bytes(), Some(&rules)).0);
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
}
