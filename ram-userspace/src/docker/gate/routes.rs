//! What a request to the pull gate asks for, read from its path as the registry API routes it.
//! Repository names, tags and digests are read with the grammar of
//! [`crate::policy::reference`], the one the authorization plugin reads references with.

use crate::policy::reference::{self, HubRepository, ReferenceError};

/// The path prefix of the token realms the gate stands in for.
pub const TOKEN_PATH: &str = "/ram/token/";

/// What a request to the gate asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Ping,
    /// A read of a Docker Hub repository: `kind` is `manifests`, `blobs`, `tags` or
    /// `referrers`, `reference` the tag or digest (`list` for tags).
    Repository {
        /// The repository as the path writes it (`library/busybox`, `someuser/app`).
        name: String,
        /// The repository as Docker normalizes it, which is what is judged.
        repository: HubRepository,
        kind: &'static str,
        reference: String,
    },
    /// `/ram/token/<n>`: a token request for the upstream's n-th realm.
    Token(usize),
}

/// Why the gate does not serve a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no token realm {0}")]
    NoRealm(String),
    #[error("not a registry API path")]
    NotRegistryApi,
    #[error("the path has empty, dot or escaped segments")]
    NotPlain,
    #[error("not a read of a repository (pushes are not served)")]
    NotARead,
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

/// Reads the request path as the registry API routes it. Only plain paths are accepted: no
/// `%`-escapes, no empty, `.` or `..` segments (an upstream, or the URL parser on the way to
/// it, would resolve those and fetch another repository than the one judged), and repository
/// names of Docker Hub (`name` or `namespace/name`).
pub fn route(path: &str) -> Result<Route, RouteError> {
    if let Some(index) = path.strip_prefix(TOKEN_PATH) {
        return index
            .parse()
            .map(Route::Token)
            .map_err(|_| RouteError::NoRealm(index.into()));
    }
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Ping);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Err(RouteError::NotRegistryApi);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == ".." || s.contains('%'))
    {
        return Err(RouteError::NotPlain);
    }
    let n = segments.len();
    if n < 3 {
        return Err(RouteError::NotARead);
    }
    let kind = match segments[n - 2] {
        "manifests" => "manifests",
        "blobs" => "blobs",
        "tags" if segments[n - 1] == "list" => "tags",
        "referrers" => "referrers",
        _ => return Err(RouteError::NotARead),
    };
    let reference = segments[n - 1];
    if reference.contains(':') {
        reference::check_digest(reference)?;
    } else {
        reference::check_tag(reference)?;
    }
    let name = segments[..n - 2].join("/");
    let repository = reference::hub_repository(&name)?;
    Ok(Route::Repository {
        name,
        repository,
        kind,
        reference: reference.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::reference::{Reference, parse_reference};

    fn repo(name: &str, kind: &'static str, reference: &str) -> Route {
        let repository = reference::hub_repository(name).unwrap();
        Route::Repository {
            name: name.into(),
            repository,
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
        assert_eq!(
            route("/v2/busybox/manifests/1.36"),
            Ok(repo("busybox", "manifests", "1.36"))
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
            "/v2/library/busybox/manifests/-latest",
            "/v2/library/busybox/manifests/sha256:",
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

    /// The plugin reads `docker.io/<name>:<tag>` (or `@<digest>`) with `parse_reference`, the
    /// gate reads `/v2/<name>/manifests/<tag or digest>` with `route`: each string must be
    /// accepted by both, as the same repository, or refused by both.
    #[test]
    fn the_plugin_and_the_gate_read_names_alike() {
        let long = |n: usize| "a".repeat(n);
        // Room left after `docker.io/library/` (18) and `docker.io/someuser/` (19). No `:` or `@`
        // in names: in a reference they start a tag or digest, so the two strings would not
        // name the same repository (the gate's refusal of them is in the test above).
        let names = [
            "busybox".to_owned(),
            "library/busybox".into(),
            "someuser/custom-image".into(),
            "a".into(),
            "a0/b1".into(),
            "my-app".into(),
            "my--app".into(),
            "my_app".into(),
            "my__app".into(),
            "v1.2".into(),
            "a.b_c__d-e---f".into(),
            "ns/a.b_c__d-e---f".into(),
            "-x".into(),
            "x-".into(),
            "_x".into(),
            "x_".into(),
            "x__".into(),
            "x__y".into(),
            "x___y".into(),
            ".x".into(),
            "x.".into(),
            "a..b".into(),
            "a._b".into(),
            "a-_b".into(),
            "A".into(),
            "Library/busybox".into(),
            "someuser/App".into(),
            "a/b/c".into(),
            "a//b".into(),
            "a/./b".into(),
            "a/../b".into(),
            "a%2fb".into(),
            "a b".into(),
            "a\\b".into(),
            "é".into(),
            "".into(),
            "x/".into(),
            "/x".into(),
            long(255 - 18),
            long(255 - 17),
            format!("someuser/{}", long(255 - 19)),
            format!("someuser/{}", long(255 - 18)),
        ];
        let long_tag = "t".repeat(128);
        let too_long_tag = "t".repeat(129);
        let full_digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let references = [
            "latest",
            "1.36",
            "_",
            "A-Z_a.z",
            &long_tag,
            &too_long_tag,
            "-x",
            ".x",
            ".",
            "a+b",
            "a$",
            "",
            "sha256:ab",
            &full_digest,
            "sha256:",
            ":ab",
            "SHA256:ab",
            "sha256:a.b",
            "sha256+b64u:aGVsbG8=_-",
            "x:y:z",
        ];
        let mut accepted = 0;
        for name in &names {
            for reference in references {
                let separator = if reference.contains(':') { '@' } else { ':' };
                let plugin = parse_reference(&format!("docker.io/{name}{separator}{reference}"));
                let gate = route(&format!("/v2/{name}/manifests/{reference}"));
                match (plugin, gate) {
                    (
                        Ok(Reference::Hub(read)),
                        Ok(Route::Repository {
                            repository: routed, ..
                        }),
                    ) => {
                        assert_eq!(read, routed, "{name} {reference}");
                        accepted += 1;
                    }
                    (Err(_), Err(_)) => {}
                    (plugin, gate) => {
                        panic!("{name} {reference}: the plugin reads {plugin:?}, the gate {gate:?}")
                    }
                }
            }
        }
        assert!(accepted > 50, "the table tests too few accepted names");
    }
}
