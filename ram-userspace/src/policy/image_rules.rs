//! `[image_access]` as the judge needs it: which Docker Hub categories are allowed, and which
//! namespaces are the company's organizations and Docker's verified publishers. The judging
//! itself (on image references) is `docker::image_access`.

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
