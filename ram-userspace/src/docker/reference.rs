//! Image references as Docker's engine and registry API carry them, normalized the way Docker
//! normalizes them (`busybox` is `docker.io/library/busybox`).

use std::fmt;

use crate::policy::presets::DOCKER_HUB_NAMES;

/// A Docker Hub repository: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepository {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for HubRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker.io/{}/{}", self.namespace, self.name)
    }
}

/// What a reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Hub(HubRepository),
    /// Another registry (its host, as written).
    Other(String),
}

/// Parses an image reference as Docker normalizes it: `busybox`, `busybox:1.36`,
/// `someuser/app@sha256:…`, `docker.io/library/x`, `index.docker.io/u/x`, `ghcr.io/o/x`,
/// `localhost:5000/x`. A first component with a `.` or `:`, or `localhost`, is a registry.
/// Uppercase repository names are invalid, as Docker says.
pub fn parse_reference(reference: &str) -> Result<Reference, String> {
    let reference = reference.trim();
    if reference.is_empty() {
        return Err("empty image reference".into());
    }
    // Strip the digest, then the tag (a `:` after the last `/`).
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let repository = match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    };
    let mut parts: Vec<&str> = repository.split('/').collect();
    let registry = match parts.first() {
        Some(first)
            if parts.len() > 1
                && (first.contains('.') || first.contains(':') || *first == "localhost") =>
        {
            let registry = first.to_ascii_lowercase();
            parts.remove(0);
            Some(registry)
        }
        _ => None,
    };
    let path = parts.join("/");
    if path.is_empty()
        || path
            .bytes()
            .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)))
    {
        return Err(format!(
            "invalid reference format: repository name `{path}` must be lowercase letters, \
             digits and . _ - /"
        ));
    }
    if let Some(registry) = registry {
        // Docker Hub under another spelling (`registry-1.docker.io:443`, `Docker.IO.`) is
        // Docker Hub; on any other port it is not a registry anyone may mean.
        let (host, port) = match registry.rsplit_once(':') {
            Some((host, port)) => (host.trim_end_matches('.'), Some(port)),
            None => (registry.trim_end_matches('.'), None),
        };
        if DOCKER_HUB_NAMES.contains(&host) {
            if port.is_some_and(|p| p != "443") {
                return Err(format!(
                    "invalid reference: Docker Hub ({host}) is reached on port 443 only"
                ));
            }
        } else {
            return Ok(Reference::Other(registry));
        }
    }
    let (namespace, name) = match path.split_once('/') {
        Some((namespace, name)) => (namespace.to_owned(), name.to_owned()),
        None => ("library".to_owned(), path),
    };
    Ok(Reference::Hub(HubRepository { namespace, name }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(namespace: &str, name: &str) -> Reference {
        Reference::Hub(HubRepository {
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    #[test]
    fn references_normalize_like_docker() {
        for (text, expected) in [
            ("busybox", hub("library", "busybox")),
            ("busybox:1.36", hub("library", "busybox")),
            ("library/busybox:latest", hub("library", "busybox")),
            ("docker.io/library/busybox", hub("library", "busybox")),
            (
                "index.docker.io/someuser/custom-image",
                hub("someuser", "custom-image"),
            ),
            (
                "registry-1.docker.io/mycompany/app:v2",
                hub("mycompany", "app"),
            ),
            (
                "someuser/custom-image@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                hub("someuser", "custom-image"),
            ),
            ("someuser/nested/path:tag", hub("someuser", "nested/path")),
            ("ghcr.io/org/tool:1", Reference::Other("ghcr.io".into())),
            (
                "localhost:5000/x",
                Reference::Other("localhost:5000".into()),
            ),
            (
                "registry.corp:5000/team/x@sha256:00",
                Reference::Other("registry.corp:5000".into()),
            ),
        ] {
            assert_eq!(parse_reference(text), Ok(expected), "{text}");
        }
        for bad in [
            "",
            "SomeUser/App",
            "docker.io/Library/x",
            "a b",
            "docker.io:5000/x/y",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad} was accepted");
        }
    }
}
