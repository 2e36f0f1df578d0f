//! Image Access Management: which Docker Hub images may be used. No DNS or IP rule can tell an
//! official image from a community one; this works on image references, as Docker's registry
//! API and engine API carry them.
//!
//! Categories, decided from the repository's namespace on Docker Hub:
//! - Docker Official Images: the `library/` namespace (`busybox` is `docker.io/library/busybox`);
//! - Organization images: the namespaces in `image_access.organizations` (always allowed);
//! - Docker Verified Publisher images: the namespaces in the verified-publisher list;
//! - Community images: every other namespace.
//!
//! Images from other registries (`ghcr.io/...`, `registry.corp:5000/...`) are not judged here:
//! Registry Access Management decides whether their registry may be reached at all.

use std::{fmt, sync::OnceLock};

use crate::{policy::HostPattern, presets};

/// Docker Hub's registry names, as references may spell them.
const DOCKER_HUB: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// Whether `pattern` lets a client reach Docker Hub: it covers one of Hub's registry names or
/// one of the hosts its pulls use (token service, layer CDNs; the `docker.io` preset's hosts).
pub fn reaches_docker_hub(pattern: &HostPattern) -> bool {
    static HOSTS: OnceLock<Vec<String>> = OnceLock::new();
    let hosts = HOSTS.get_or_init(|| {
        let mut hosts: Vec<String> = DOCKER_HUB.iter().map(|h| h.to_string()).collect();
        let hub: HostPattern = "docker.io".parse().expect("docker.io is a valid name");
        let preset = presets::expand(&hub).expect("registries.toml has the docker.io preset");
        hosts.extend(preset.hosts.into_iter().map(|h| h.domain));
        // Public mirrors of Docker Hub: a way around the gate if allowed.
        hosts.extend(DOCKER_HUB_MIRRORS.iter().map(|h| h.to_string()));
        hosts
    });
    hosts.iter().any(|host| pattern.matches(host))
}

/// Public pull-through mirrors of Docker Hub (Google's).
const DOCKER_HUB_MIRRORS: [&str; 1] = ["mirror.gcr.io"];

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Official,
    Organization,
    VerifiedPublisher,
    Community,
}

impl Category {
    /// The words of Docker's message: `image access denied: community images not allowed`.
    pub fn denial(self) -> &'static str {
        match self {
            Self::Official => "image access denied: official images not allowed",
            Self::Organization => "image access denied: organization images not allowed",
            Self::VerifiedPublisher => "image access denied: verified publisher images not allowed",
            Self::Community => "image access denied: community images not allowed",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Official => "official",
            Self::Organization => "organization",
            Self::VerifiedPublisher => "verified_publisher",
            Self::Community => "community",
        }
    }
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
        if DOCKER_HUB.contains(&host) {
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

/// The policy's `[image_access]` settings, as the judge needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub official: bool,
    pub verified_publishers: bool,
    pub community: bool,
    /// Namespaces of the company's organizations (always allowed), lower-case.
    pub organizations: Vec<String>,
    /// Namespaces of Docker Verified Publishers, lower-case.
    pub verified_publisher_namespaces: Vec<String>,
}

impl Rules {
    pub fn category(&self, repository: &HubRepository) -> Category {
        let namespace = repository.namespace.as_str();
        if namespace == "library" {
            Category::Official
        } else if self.organizations.iter().any(|o| o == namespace) {
            Category::Organization
        } else if self
            .verified_publisher_namespaces
            .iter()
            .any(|v| v == namespace)
        {
            Category::VerifiedPublisher
        } else {
            Category::Community
        }
    }

    /// `Ok` with the category when `reference` may be used (`None`: not a Docker Hub image),
    /// or the denial message.
    pub fn judge(&self, reference: &str) -> Result<Option<Category>, String> {
        let repository = match parse_reference(reference)? {
            Reference::Other(_) => return Ok(None),
            Reference::Hub(repository) => repository,
        };
        let category = self.category(&repository);
        let allowed = match category {
            Category::Organization => true,
            Category::Official => self.official,
            Category::VerifiedPublisher => self.verified_publishers,
            Category::Community => self.community,
        };
        if allowed {
            Ok(Some(category))
        } else {
            Err(category.denial().to_owned())
        }
    }
}

/// Docker Verified Publisher namespaces shipped with ram (a starting list, extended in the
/// policy: `image_access.verified_publisher_namespaces`). Docker Hub marks these publishers;
/// keep the list to the ones your company relies on.
pub const DEFAULT_VERIFIED_PUBLISHERS: &[&str] = &[
    "bitnami",
    "grafana",
    "hashicorp",
    "datadog",
    "circleci",
    "jetbrains",
    "localstack",
    "newrelic",
    "sonarsource",
    "snyk",
    "gitlab",
    "elastic",
    "atlassian",
    "ubuntu",
    "redhat",
    "amazon",
    "microsoft",
    "mongodb",
    "neo4j",
    "portainer",
];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The rules the image and plugin tests judge with.
    pub(crate) fn rules() -> Rules {
        Rules {
            official: true,
            verified_publishers: true,
            community: false,
            organizations: vec!["mycompany".into()],
            verified_publisher_namespaces: vec!["somepublisher".into()],
        }
    }

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

    #[test]
    fn categories_follow_the_namespace() {
        let rules = rules();
        assert_eq!(rules.judge("busybox"), Ok(Some(Category::Official)));
        assert_eq!(
            rules.judge("mycompany/app"),
            Ok(Some(Category::Organization))
        );
        assert_eq!(
            rules.judge("somepublisher/tool"),
            Ok(Some(Category::VerifiedPublisher))
        );
        assert_eq!(
            rules.judge("someuser/custom-image"),
            Err("image access denied: community images not allowed".into())
        );
        assert_eq!(rules.judge("ghcr.io/someuser/anything"), Ok(None));
        let strict = Rules {
            official: false,
            verified_publishers: false,
            ..rules
        };
        assert_eq!(
            strict.judge("docker.io/library/x"),
            Err("image access denied: official images not allowed".into())
        );
        assert_eq!(
            strict.judge("somepublisher/tool"),
            Err("image access denied: verified publisher images not allowed".into())
        );
        assert_eq!(
            strict.judge("mycompany/app"),
            Ok(Some(Category::Organization))
        );
    }
}
