//! `[image_access]` as the judge needs it: which Docker Hub categories are allowed, which
//! namespaces are the company's organizations and Docker's verified publishers, and which
//! repositories are allowed whatever their category (`allow_repositories`). The judging itself
//! (on image references) is `docker::image_access`.

use std::{fmt, str::FromStr};

use super::reference::{HubRepository, Reference, ReferenceError, parse_reference};

/// The policy's `[image_access]` settings, as the judge needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRules {
    pub official: bool,
    pub verified_publishers: bool,
    pub community: bool,
    /// Namespaces of the company's organizations (always allowed), lower-case.
    pub organizations: Vec<String>,
    /// Namespaces of Docker Verified Publishers, lower-case.
    pub verified_publisher_namespaces: Vec<String>,
    /// Docker Hub repositories allowed whatever their category (`allow_repositories`).
    pub allow_repositories: Vec<RepositoryPattern>,
    /// `registry_access.push`, which the authorization plugin judges pushes with: `None`,
    /// pushes unrestricted.
    pub push: Option<Vec<super::push::PushRule>>,
}

/// An `image_access.allow_repositories` entry: one Docker Hub repository (`someuser/tool`;
/// `busybox` and `library/busybox` are the official image), or every repository of a
/// namespace (`somepublisher/*`). Written as in image references, with Docker's grammar
/// (`policy::reference`): lowercase, an optional `docker.io/` (or another spelling of Docker
/// Hub) before it, no tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepositoryPattern {
    pub namespace: String,
    /// `None`: every repository of the namespace.
    pub name: Option<String>,
}

impl RepositoryPattern {
    pub fn matches(&self, repository: &HubRepository) -> bool {
        self.namespace == repository.namespace
            && self
                .name
                .as_ref()
                .is_none_or(|name| *name == repository.name)
    }
}

/// As the audit log and `ram check` name it: `someuser/tool`, `library/busybox`,
/// `somepublisher/*`.
impl fmt::Display for RepositoryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name.as_deref().unwrap_or("*");
        write!(f, "{}/{name}", self.namespace)
    }
}

/// Why an `allow_repositories` entry is not a Docker Hub repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepositoryPatternError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("a repository is written without a tag (`:{tag}`); it allows every tag")]
    Tag { tag: String },
    #[error("a repository is written without a digest (`@…`); it allows every digest")]
    Digest,
    #[error(
        "`{registry}` is another registry than Docker Hub; whether it may be reached is \
         registry_access.allow's to say"
    )]
    OtherRegistry { registry: String },
    #[error(
        "`*` stands for every repository of a namespace, and only so: `namespace/*` \
         (`library/*` for every official image)"
    )]
    Wildcard,
}

/// A valid repository name component the wildcard stands in for while the rest is parsed.
const WILDCARD_STAND_IN: &str = "x";

impl FromStr for RepositoryPattern {
    type Err = RepositoryPatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.contains('@') {
            return Err(RepositoryPatternError::Digest);
        }
        let last = text.rsplit('/').next().unwrap_or(text);
        if let Some((_, tag)) = last.split_once(':') {
            return Err(RepositoryPatternError::Tag { tag: tag.into() });
        }
        let prefix = text.strip_suffix("/*");
        let probe = match prefix {
            Some(prefix) => format!("{prefix}/{WILDCARD_STAND_IN}"),
            None => text.to_owned(),
        };
        if probe.contains('*') {
            return Err(RepositoryPatternError::Wildcard);
        }
        let repository = match parse_reference(&probe)? {
            Reference::Hub(repository) => repository,
            Reference::Other(registry) => {
                return Err(RepositoryPatternError::OtherRegistry { registry });
            }
        };
        let Some(prefix) = prefix else {
            return Ok(Self {
                namespace: repository.namespace,
                name: Some(repository.name),
            });
        };
        // `*` after a namespace as written: not `docker.io/*` (which reads as `library/x`).
        let written = prefix.rsplit('/').next().unwrap_or(prefix);
        if written != repository.namespace {
            return Err(RepositoryPatternError::Wildcard);
        }
        Ok(Self {
            namespace: repository.namespace,
            name: None,
        })
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
