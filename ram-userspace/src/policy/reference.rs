//! Image references as Docker's engine and registry API carry them: one grammar, the
//! distribution spec's (which is Docker's), used by the authorization plugin on the references
//! it is given, by the pull gate on the repository paths it serves, and by the policy on its
//! repository exceptions (`image_access.allow_repositories`), so that none of them can read a
//! name another way. Here, in the policy's layer, because the policy reads it too.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ registry "/" ] component ( "/" component )*       (255 characters at most)
//! registry   := host [ ":" port ]   host: domain-name or [IPv6]; port: digits
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" encoded   algorithm: [a-z0-9]+ ( [+._-] [a-z0-9]+ )*;
//!                                       encoded: [a-zA-Z0-9=_-]+ (the image spec's)
//! ```
//!
//! Normalized the way Docker normalizes: a first component with a `.` or `:`, or `localhost`,
//! is a registry; without one the image is on Docker Hub, and a one-component Hub name is in
//! `library/` (`busybox` is `docker.io/library/busybox`). `docker.io`, `index.docker.io`,
//! `registry-1.docker.io` and `registry.hub.docker.com` (any case) are Docker Hub, on port 443
//! only. A Docker Hub repository is `name` or `namespace/name`: Hub has no deeper paths.
//! Uppercase repository names are invalid, as Docker says.
//!
//! Stricter than the plugin's reading before this grammar was shared (each is refused as an
//! invalid reference, so a pull of one is denied: fail closed), though Docker itself would
//! refuse most of them: components with a leading, trailing or doubled separator (`-x`, `x_`,
//! `a..b`, `a___b`), Docker Hub names of three or more components (`someuser/team/app`),
//! malformed tags (`:-x`) and digests (`@sha256:`), registries that are not a host name
//! (`docker.io.`, `my_host:5000`), names over 255 characters, and surrounding whitespace.
//! Digest lengths of the registered algorithms are not checked: a wrong one names nothing the
//! registry has.

use std::fmt;

use super::presets::DOCKER_HUB_NAMES;

/// Longest name (registry and repository, as normalized), as Docker counts it.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;

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
    /// Another registry: its `host[:port]`, lowercase.
    Other(String),
}

/// Why a reference (or a repository path of the registry API) is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format: empty image reference")]
    Empty,
    #[error("invalid reference format: repository name ({name}) must be lowercase")]
    Uppercase { name: String },
    #[error(
        "invalid reference format: `{component}` is not a repository name component \
         (lowercase letters and digits, joined by single . or _, by __, or by dashes)"
    )]
    Component { component: String },
    #[error("invalid reference format: `{registry}` is not a registry (host[:port])")]
    Registry { registry: String },
    #[error(
        "invalid reference format: `{tag}` is not a tag (a letter, digit or _, then up to 127 \
         of those, . and -)"
    )]
    Tag { tag: String },
    #[error("invalid reference format: `{digest}` is not a digest (algorithm:encoded)")]
    Digest { digest: String },
    #[error(
        "invalid reference format: repository name must not be more than \
         {NAME_TOTAL_LENGTH_MAX} characters"
    )]
    TooLong,
    #[error("invalid reference: Docker Hub ({host}) is reached on port 443 only")]
    HubPort { host: String },
    #[error(
        "invalid reference: a Docker Hub repository is `name` or `namespace/name`; `{path}` \
         has more components"
    )]
    HubPath { path: String },
}

/// Parses an image reference as Docker normalizes it: `busybox`, `busybox:1.36`,
/// `someuser/app@sha256:…`, `docker.io/library/x`, `index.docker.io/u/x`, `ghcr.io/o/x`,
/// `localhost:5000/x`. See the module's doc for the grammar.
pub fn parse_reference(reference: &str) -> Result<Reference, ReferenceError> {
    let (name, _, _) = split(reference)?;
    let registry = match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            Some((first, path))
        }
        _ => None,
    };
    let Some((registry, path)) = registry else {
        return hub_repository(name).map(Reference::Hub);
    };
    let (host, port) = split_registry(registry)?;
    let host = host.to_ascii_lowercase();
    if DOCKER_HUB_NAMES.contains(&host.as_str()) {
        // Docker Hub under another spelling (`registry-1.docker.io:443`, `Docker.IO`) is Docker
        // Hub; on any other port it is not a registry anyone may mean.
        if port.is_some_and(|p| p != "443") {
            return Err(ReferenceError::HubPort { host });
        }
        return hub_repository(path).map(Reference::Hub);
    }
    check_path(path)?;
    if name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::TooLong);
    }
    Ok(Reference::Other(registry.to_ascii_lowercase()))
}

/// A reference as Docker writes it in full, with its registry and a tag (`latest` unless it
/// has a tag or a digest): `busybox` is `docker.io/library/busybox:latest`, `Ghcr.io/o/x@…`
/// is `ghcr.io/o/x@…`. With what it names.
pub fn normalize(reference: &str) -> Result<(Reference, String), ReferenceError> {
    let parsed = parse_reference(reference)?;
    let (name, tag, digest) = split(reference)?;
    let repository = match &parsed {
        Reference::Hub(repository) => repository.to_string(),
        Reference::Other(registry) => {
            let path = name.split_once('/').map_or("", |(_, path)| path);
            format!("{registry}/{path}")
        }
    };
    let tag = match (tag, digest) {
        (Some(tag), _) => format!(":{tag}"),
        (None, None) => ":latest".to_owned(),
        (None, Some(_)) => String::new(),
    };
    let digest = digest.map(|d| format!("@{d}")).unwrap_or_default();
    Ok((parsed, format!("{repository}{tag}{digest}")))
}

/// A reference's name, tag and digest as written (the tag and digest checked).
fn split(reference: &str) -> Result<(&str, Option<&str>, Option<&str>), ReferenceError> {
    if reference.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    // The tag: after a `:` that has no `/` after it (`localhost:5000/x` has none).
    Ok(match name_and_tag.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => {
            check_tag(tag)?;
            (name, Some(tag), digest)
        }
        _ => (name_and_tag, None, digest),
    })
}

/// A Docker Hub repository from its path (`busybox`, `library/busybox`, `someuser/app`), as
/// written after `docker.io/` in a reference and after `/v2/` in the registry API.
pub fn hub_repository(path: &str) -> Result<HubRepository, ReferenceError> {
    check_path(path)?;
    let repository = match path.split_once('/') {
        None => HubRepository {
            namespace: "library".into(),
            name: path.into(),
        },
        Some((_, name)) if name.contains('/') => {
            return Err(ReferenceError::HubPath { path: path.into() });
        }
        Some((namespace, name)) => HubRepository {
            namespace: namespace.into(),
            name: name.into(),
        },
    };
    if repository.to_string().len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::TooLong);
    }
    Ok(repository)
}

/// A tag (`latest`, `1.36-musl`).
pub fn check_tag(tag: &str) -> Result<(), ReferenceError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let valid = tag.len() <= 128
        && tag.as_bytes().first().is_some_and(|&b| word(b))
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ReferenceError::Tag { tag: tag.into() })
    }
}

/// A digest (`sha256:…`).
pub fn check_digest(digest: &str) -> Result<(), ReferenceError> {
    let valid = digest.split_once(':').is_some_and(|(algorithm, encoded)| {
        is_joined(algorithm, |separator| {
            matches!(separator, "+" | "." | "_" | "-")
        }) && !encoded.is_empty()
            && encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
    });
    if valid {
        Ok(())
    } else {
        Err(ReferenceError::Digest {
            digest: digest.into(),
        })
    }
}

/// A repository path: components joined by `/`.
fn check_path(path: &str) -> Result<(), ReferenceError> {
    for component in path.split('/') {
        if is_name_component(component) {
            continue;
        }
        if is_name_component(&component.to_ascii_lowercase()) {
            return Err(ReferenceError::Uppercase { name: path.into() });
        }
        return Err(ReferenceError::Component {
            component: component.into(),
        });
    }
    Ok(())
}

/// The distribution spec's path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`. Anything else
/// could be read one way here and another way by a registry.
pub fn is_name_component(component: &str) -> bool {
    is_joined(component, |separator| {
        matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-')
    })
}

/// Runs of `[a-z0-9]` joined by separators `separator` accepts (no leading or trailing one).
fn is_joined(text: &str, separator: impl Fn(&str) -> bool) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = text.as_bytes();
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
        if !separator(&text[start..i]) {
            return false;
        }
    }
    true
}

/// `host[:port]`: a domain name (components of letters, digits and inner dashes, joined by
/// dots) or a bracketed IPv6 address, and decimal digits for the port.
pub(crate) fn split_registry(registry: &str) -> Result<(&str, Option<&str>), ReferenceError> {
    let invalid = || ReferenceError::Registry {
        registry: registry.into(),
    };
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (address, after) = rest.split_once(']').ok_or_else(invalid)?;
        let valid =
            !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        if !valid {
            return Err(invalid());
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(invalid)?),
        };
        (&registry[..address.len() + 2], port)
    } else {
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        let component = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        };
        if !host.split('.').all(component) {
            return Err(invalid());
        }
        (host, port)
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(invalid());
    }
    Ok((host, port))
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

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_normalize_like_docker() {
        for (text, expected) in [
            ("busybox", hub("library", "busybox")),
            ("busybox:1.36", hub("library", "busybox")),
            ("library/busybox:latest", hub("library", "busybox")),
            ("docker.io/library/busybox", hub("library", "busybox")),
            ("docker.io/busybox", hub("library", "busybox")),
            (
                "index.docker.io/someuser/custom-image",
                hub("someuser", "custom-image"),
            ),
            (
                "registry-1.docker.io/mycompany/app:v2",
                hub("mycompany", "app"),
            ),
            ("Docker.IO/someuser/x", hub("someuser", "x")),
            ("registry-1.docker.io:443/someuser/x", hub("someuser", "x")),
            (
                &format!("someuser/custom-image@{DIGEST}"),
                hub("someuser", "custom-image"),
            ),
            (&format!("busybox:1.36@{DIGEST}"), hub("library", "busybox")),
            ("ghcr.io/org/tool:1", Reference::Other("ghcr.io".into())),
            ("ghcr.io/org/team/tool", Reference::Other("ghcr.io".into())),
            (
                "localhost:5000/x",
                Reference::Other("localhost:5000".into()),
            ),
            ("localhost/x", Reference::Other("localhost".into())),
            (
                "registry.corp:5000/team/x@sha256:00",
                Reference::Other("registry.corp:5000".into()),
            ),
            ("[::1]:5000/x", Reference::Other("[::1]:5000".into())),
            ("Registry.Corp/x", Reference::Other("registry.corp".into())),
            // `localhost:5000` alone is Hub's `library/localhost` at tag 5000, as in Docker.
            ("localhost:5000", hub("library", "localhost")),
        ] {
            assert_eq!(parse_reference(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn the_distribution_specs_edge_cases() {
        let ok = |text: &str| parse_reference(text).is_ok();
        for good in [
            "a",
            "a0/b1",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "v1.2",
            "a.b_c__d-e---f",
            "x:_",
            "x:latest",
            "x:A-Z_a.z",
            &format!("x:{}", "t".repeat(128)),
            "x@sha256:ab",
            "x@sha256+b64u:aGVsbG8=_-",
            "x@multihash.v1:AbC",
            &format!("docker.io/library/{}", "a".repeat(255 - 18)),
            "a-b.c-d:1/x",
        ] {
            assert!(ok(good), "{good} was refused");
        }
        for bad in [
            "",
            " busybox",
            "busybox ",
            "a b",
            "-x",
            "x-",
            "_x",
            "x_",
            "x__",
            ".x",
            "x.",
            "a..b",
            "a___b",
            "a._b",
            "a_-b",
            "a/",
            "/a",
            "a//b",
            "a/../b",
            "a%2fb",
            "SomeUser/App",
            "someuser/App",
            "docker.io/Library/x",
            "docker.io:5000/x/y",
            "index.docker.io:80/x",
            "docker.io./x",
            "my_host:5000/x",
            "-host.io/x",
            "host.io:/x",
            "host.io:5x/x",
            "[::1/x",
            "[]:5000/x",
            "[::1]x/y",
            "x:",
            "x:-a",
            "x:.a",
            "x:a/b",
            "x:a+b",
            &format!("x:{}", "t".repeat(129)),
            "x@",
            "x@sha256",
            "x@sha256:",
            "x@:abc",
            "x@SHA256:abc",
            "x@sha256:a.b",
            "x@sha256:ab@sha256:ab",
            "x@sha256:ab:cd",
            "someuser/team/app",
            "docker.io/a/b/c",
            &format!("docker.io/library/{}", "a".repeat(255 - 17)),
            &format!("ghcr.io/{}", "a".repeat(255 - 7)),
        ] {
            assert!(!ok(bad), "{bad} was accepted");
        }
        assert_eq!(
            parse_reference("SomeUser/App"),
            Err(ReferenceError::Uppercase {
                name: "SomeUser/App".into()
            })
        );
        assert_eq!(
            parse_reference("docker.io:5000/x/y"),
            Err(ReferenceError::HubPort {
                host: "docker.io".into()
            })
        );
        assert_eq!(
            parse_reference("a..b").unwrap_err().to_string(),
            "invalid reference format: `a..b` is not a repository name component (lowercase \
             letters and digits, joined by single . or _, by __, or by dashes)"
        );
    }

    #[test]
    fn references_are_written_in_full_as_docker_does() {
        for (text, full) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("Docker.IO/someuser/x", "docker.io/someuser/x:latest"),
            ("index.docker.io/someuser/x:v1", "docker.io/someuser/x:v1"),
            ("Ghcr.io/org/team/x", "ghcr.io/org/team/x:latest"),
            ("localhost:5000/x:dev", "localhost:5000/x:dev"),
            (
                &format!("someuser/x@{DIGEST}"),
                &format!("docker.io/someuser/x@{DIGEST}"),
            ),
            (
                &format!("busybox:1.36@{DIGEST}"),
                &format!("docker.io/library/busybox:1.36@{DIGEST}"),
            ),
        ] {
            assert_eq!(normalize(text).unwrap().1, full, "{text}");
        }
        assert!(normalize("SomeUser/X").is_err());
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
