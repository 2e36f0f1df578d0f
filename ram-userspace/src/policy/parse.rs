//! Reading a policy from TOML. Every value is validated while it is deserialized, so an error
//! carries the position of the offending value and `ram policy check` can name the file, line and
//! key.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    AllowedAudit, Audit, DEFAULT_POLICY, Dns, DnsQueries, EntryError, HostPattern, ImageAccess,
    Metrics, MetricsAddress, Policy, PolicySource, RegistryAccess, Scope, TlsMode,
};

/// values are kept with their position and validated afterwards so errors can point at them.
/// The file as written: structure and types are checked by serde (unknown keys are errors),
/// values are kept with their position and validated afterwards so errors can point at them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    registry_access: RawRegistryAccess,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    scope: RawScope,
    #[serde(default)]
    image_access: RawImageAccess,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImageAccess {
    #[serde(default)]
    enabled: bool,
    official: Option<bool>,
    verified_publishers: Option<bool>,
    community: Option<bool>,
    #[serde(default)]
    organizations: Vec<Spanned<String>>,
    /// Added to ram's shipped list.
    #[serde(default)]
    verified_publisher_namespaces: Vec<Spanned<String>>,
    /// Docker's registry.json, whose `allowedOrgs` are organizations too.
    registry_json: Option<Spanned<String>>,
    /// Docker Hub repositories allowed whatever their category.
    #[serde(default)]
    allow_repositories: Vec<Spanned<String>>,
    gate: Option<Spanned<String>>,
    upstream: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    docker: bool,
    #[serde(default)]
    containers: bool,
    #[serde(default)]
    cgroups: Vec<PathBuf>,
    #[serde(default)]
    whole_host: bool,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    allowed: Option<Spanned<String>>,
    allowed_window: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistryAccess {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    allow_cidrs: Vec<Spanned<String>>,
    #[serde(default = "default_true")]
    allow_loopback: bool,
    #[serde(default)]
    allow_ping: bool,
    #[serde(default)]
    tls: Option<Spanned<String>>,
    /// Where `docker push` may send images; absent: anywhere.
    #[serde(default)]
    push: Option<Vec<Spanned<String>>>,
}

impl Default for RawRegistryAccess {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            allow_cidrs: Vec::new(),
            allow_loopback: true,
            allow_ping: false,
            tls: None,
            push: None,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    resolvers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    container_resolvers: Vec<Spanned<String>>,
    min_ttl: Option<Spanned<i64>>,
    max_ttl: Option<Spanned<i64>>,
    grace_period: Option<Spanned<i64>>,
    max_learned: Option<Spanned<i64>>,
    queries: Option<Spanned<String>>,
    #[serde(default)]
    search_domains: Vec<Spanned<String>>,
}

fn default_true() -> bool {
    true
}
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}; check the path and its permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A syntax or validation error at a known place in the file.
    #[error("{source_name}:{line}:{column}: {message}\n{snippet}")]
    Invalid {
        source_name: String,
        line: usize,
        column: usize,
        message: String,
        snippet: String,
    },
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &PolicySource::File(path.to_owned()))
    }

    pub fn embedded_default() -> Self {
        Self::from_toml(DEFAULT_POLICY, &PolicySource::Embedded)
            .expect("the embedded default policy is valid (checked by a unit test)")
    }

    pub fn from_toml(text: &str, source: &PolicySource) -> Result<Self, PolicyError> {
        let invalid = |offset: usize, message: String| {
            let (line, column, snippet) = locate(text, offset);
            PolicyError::Invalid {
                source_name: source.to_string(),
                line,
                column,
                message,
                snippet,
            }
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            invalid(offset, err.message().trim_end().to_owned())
        })?;
        let raw_min_ttl_offset = raw.dns.min_ttl.as_ref().map(|v| v.span().start);
        let allowed = match &raw.audit.allowed {
            None => AllowedAudit::First,
            Some(value) => match value.get_ref().as_str() {
                "none" => AllowedAudit::None,
                "first" => AllowedAudit::First,
                "all" => AllowedAudit::All,
                other => {
                    return Err(invalid(
                        value.span().start,
                        format!(
                            "audit.allowed: `{other}` is not one of \"none\", \"first\", \"all\""
                        ),
                    ));
                }
            },
        };
        let allowed_window = seconds(
            "audit.allowed_window",
            raw.audit.allowed_window,
            Audit::DEFAULT_ALLOWED_WINDOW,
            (1, 7 * 86_400),
            &invalid,
        )?;
        let access = raw.registry_access;
        let mut policy = Policy {
            registry_access: RegistryAccess {
                allow: validate_all("registry_access.allow", &access.allow, "hostname", &invalid)?,
                allow_cidrs: validate_all(
                    "registry_access.allow_cidrs",
                    &access.allow_cidrs,
                    "CIDR",
                    &invalid,
                )?,
                allow_loopback: access.allow_loopback,
                allow_ping: access.allow_ping,
                push: match &access.push {
                    Some(list) => Some(validate_all(
                        "registry_access.push",
                        list,
                        "push destination",
                        &invalid,
                    )?),
                    None => None,
                },
                tls: match &access.tls {
                    None => TlsMode::Enforce,
                    Some(value) => match value.get_ref().as_str() {
                        "enforce" => TlsMode::Enforce,
                        "audit" => TlsMode::Audit,
                        "off" => TlsMode::Off,
                        other => {
                            return Err(invalid(
                                value.span().start,
                                format!(
                                    "registry_access.tls: `{other}` is not one of \"enforce\", \"audit\", \"off\""
                                ),
                            ));
                        }
                    },
                },
            },
            dns: Dns {
                resolvers: match raw.dns.resolvers {
                    Some(list) => Some(validate_all("dns.resolvers", &list, "resolver", &invalid)?),
                    None => None,
                },
                container_resolvers: validate_all(
                    "dns.container_resolvers",
                    &raw.dns.container_resolvers,
                    "resolver",
                    &invalid,
                )?,
                min_ttl: seconds(
                    "dns.min_ttl",
                    raw.dns.min_ttl,
                    Dns::DEFAULT_MIN_TTL,
                    (0, 86_400),
                    &invalid,
                )?,
                max_ttl: seconds(
                    "dns.max_ttl",
                    raw.dns.max_ttl,
                    Dns::DEFAULT_MAX_TTL,
                    (1, 7 * 86_400),
                    &invalid,
                )?,
                grace_period: seconds(
                    "dns.grace_period",
                    raw.dns.grace_period,
                    Dns::DEFAULT_GRACE_PERIOD,
                    (0, 86_400),
                    &invalid,
                )?,
                max_learned: seconds(
                    "dns.max_learned",
                    raw.dns.max_learned,
                    Dns::DEFAULT_MAX_LEARNED,
                    (
                        Dns::MIN_MAX_LEARNED,
                        u64::from(ram_common::maps::LEARNED_MAX),
                    ),
                    &invalid,
                )?,
                queries: match &raw.dns.queries {
                    None => DnsQueries::Allowed,
                    Some(value) => match value.get_ref().as_str() {
                        "allowed" => DnsQueries::Allowed,
                        "any" => DnsQueries::Any,
                        other => {
                            return Err(invalid(
                                value.span().start,
                                format!(
                                    "dns.queries: `{other}` is not one of \"allowed\", \"any\""
                                ),
                            ));
                        }
                    },
                },
                search_domains: validate_all::<HostPattern>(
                    "dns.search_domains",
                    &raw.dns.search_domains,
                    "search domain",
                    &invalid,
                )?
                .into_iter()
                .zip(&raw.dns.search_domains)
                .map(|(domain, value)| {
                    if domain.wildcard || domain.port.is_some() || domain.any_port {
                        Err(invalid(
                            value.span().start,
                            format!(
                                "dns.search_domains: `{}` is not a plain domain name",
                                value.get_ref()
                            ),
                        ))
                    } else {
                        Ok(domain.domain)
                    }
                })
                .collect::<Result<_, _>>()?,
            },
            audit: Audit {
                allowed,
                allowed_window,
            },
            image_access: image_access(raw.image_access, &invalid)?,
            metrics: metrics(raw.metrics, &invalid)?,
            scope: Scope {
                docker: raw.scope.docker,
                containers: raw.scope.containers,
                cgroups: raw.scope.cgroups,
                whole_host: raw.scope.whole_host,
            },
        };
        if policy.dns.min_ttl > policy.dns.max_ttl {
            let offset = raw_min_ttl_offset.unwrap_or(0);
            return Err(invalid(
                offset,
                format!(
                    "dns.min_ttl ({}) is larger than dns.max_ttl ({}); lower it or raise max_ttl",
                    policy.dns.min_ttl, policy.dns.max_ttl
                ),
            ));
        }
        // Repeated entries change nothing; drop them so counts and maps stay honest.
        dedup_in_order(&mut policy.registry_access.allow);
        dedup_in_order(&mut policy.registry_access.allow_cidrs);
        if let Some(push) = policy.registry_access.push.as_mut() {
            dedup_in_order(push);
        }
        // The authorization plugin judges pushes with the image rules it is given.
        policy.image_access.rules.push = policy.registry_access.push.clone();
        if let Some(resolvers) = policy.dns.resolvers.as_mut() {
            dedup_in_order(resolvers);
        }
        dedup_in_order(&mut policy.dns.container_resolvers);
        dedup_in_order(&mut policy.dns.search_domains);
        Ok(policy)
    }
}

/// `[metrics]`: where the Prometheus endpoint listens, if anywhere.
fn metrics(
    raw: RawMetrics,
    invalid: &impl Fn(usize, String) -> PolicyError,
) -> Result<Metrics, PolicyError> {
    let Some(listen) = raw.listen else {
        return Ok(Metrics::default());
    };
    let text = listen.get_ref();
    let address = if let Some(path) = text.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(invalid(
                listen.span().start,
                format!(
                    "metrics.listen: `{text}` names no absolute socket path (unix:/run/ram/metrics.sock)"
                ),
            ));
        }
        MetricsAddress::Unix(path)
    } else {
        MetricsAddress::Tcp(text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                listen.span().start,
                format!(
                    "metrics.listen: `{text}` is neither an address with a port ({}) nor `unix:` and a socket path",
                    Metrics::EXAMPLE
                ),
            )
        })?)
    };
    Ok(Metrics {
        listen: Some(address),
    })
}

/// `[image_access]`, with namespaces checked and registry.json's `allowedOrgs` read.
fn image_access(
    raw: RawImageAccess,
    invalid: &impl Fn(usize, String) -> PolicyError,
) -> Result<ImageAccess, PolicyError> {
    let mut access = ImageAccess {
        enabled: raw.enabled,
        ..ImageAccess::default()
    };
    let rules = &mut access.rules;
    rules.official = raw.official.unwrap_or(true);
    rules.verified_publishers = raw.verified_publishers.unwrap_or(true);
    rules.community = raw.community.unwrap_or(false);
    let namespace = |key: &str, value: &Spanned<String>| {
        let text = value.get_ref().trim().to_ascii_lowercase();
        let valid = !text.is_empty()
            && text.len() <= 255
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if valid {
            Ok(text)
        } else {
            Err(invalid(
                value.span().start,
                format!(
                    "{key}: `{}` is not a Docker Hub namespace (lowercase letters, digits, . _ -)",
                    value.get_ref()
                ),
            ))
        }
    };
    for value in &raw.organizations {
        rules
            .organizations
            .push(namespace("image_access.organizations", value)?);
    }
    for value in &raw.verified_publisher_namespaces {
        rules.verified_publisher_namespaces.push(namespace(
            "image_access.verified_publisher_namespaces",
            value,
        )?);
    }
    rules.allow_repositories = validate_all(
        "image_access.allow_repositories",
        &raw.allow_repositories,
        "Docker Hub repository",
        invalid,
    )?;
    // `busybox`, `library/busybox` and `docker.io/busybox` are one entry.
    dedup_in_order(&mut rules.allow_repositories);
    if let Some(path) = &raw.registry_json {
        let text = std::fs::read_to_string(path.get_ref()).map_err(|err| {
            invalid(
                path.span().start,
                format!(
                    "image_access.registry_json: cannot read {}: {err}",
                    path.get_ref()
                ),
            )
        })?;
        let parsed: serde_json::Value = serde_json::from_str(&text).map_err(|err| {
            invalid(
                path.span().start,
                format!(
                    "image_access.registry_json: {} is not JSON: {err}",
                    path.get_ref()
                ),
            )
        })?;
        for org in parsed["allowedOrgs"].as_array().into_iter().flatten() {
            if let Some(org) = org.as_str() {
                rules.organizations.push(org.to_ascii_lowercase());
            }
        }
    }
    if let Some(gate) = &raw.gate {
        access.gate = gate
            .get_ref()
            .parse::<SocketAddr>()
            .ok()
            .filter(|addr| addr.ip().is_loopback() && (1..1024).contains(&addr.port()))
            .ok_or_else(|| {
                invalid(
                    gate.span().start,
                    format!(
                        "image_access.gate: `{}` is not a loopback address with a port below \
                         1024 (such as {}): other machines must not reach the gate, and only \
                         root may listen in its place",
                        gate.get_ref(),
                        ImageAccess::DEFAULT_GATE
                    ),
                )
            })?;
    }
    if let Some(upstream) = &raw.upstream {
        access.upstream = upstream_url(upstream.get_ref()).map_err(|why| {
            invalid(
                upstream.span().start,
                format!("image_access.upstream: {why}"),
            )
        })?;
    }
    Ok(access)
}

/// A registry's base URL: `http(s)://host[:port]`, nothing after it.
fn upstream_url(text: &str) -> Result<String, EntryError> {
    let url = reqwest::Url::parse(text).map_err(|err| EntryError::NotAUrl {
        text: text.to_owned(),
        reason: err.to_string(),
    })?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !plain {
        return Err(EntryError::NotABaseUrl(text.to_owned()));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// Parses every value of the list `key`; the first bad one becomes an error at its position.
fn validate_all<T: FromStr<Err: std::fmt::Display>>(
    key: &str,
    values: &[Spanned<String>],
    what: &str,
    invalid: &impl Fn(usize, String) -> PolicyError,
) -> Result<Vec<T>, PolicyError> {
    values
        .iter()
        .map(|value| {
            value.get_ref().parse().map_err(|why| {
                invalid(
                    value.span().start,
                    format!("invalid {what} `{}` in {key}: {why}", value.get_ref()),
                )
            })
        })
        .collect()
}

/// An integer setting within `range` (inclusive); `default` when absent.
fn seconds(
    key: &str,
    value: Option<Spanned<i64>>,
    default: u64,
    range: (u64, u64),
    invalid: &impl Fn(usize, String) -> PolicyError,
) -> Result<u64, PolicyError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match u64::try_from(*value.get_ref()) {
        Ok(number) if (range.0..=range.1).contains(&number) => Ok(number),
        _ => Err(invalid(
            value.span().start,
            format!(
                "{key} = {} is out of range; use a whole number from {} to {}",
                value.get_ref(),
                range.0,
                range.1
            ),
        )),
    }
}

/// Drops repeated entries, keeping the first of each (a set: policies list 10,000s of names).
fn dedup_in_order<T: Eq + std::hash::Hash + Clone>(items: &mut Vec<T>) {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.retain(|item| seen.insert(item.clone()));
}

/// 1-based line and column of byte `offset`, and the line itself with a caret under the column.
fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let snippet = format!(
        "  {line:>4} | {line_text}\n         {}^",
        " ".repeat(column - 1)
    );
    (line, column, snippet)
}
