//! The policy file (TOML): parsing, validation, and the errors a user sees.
//!
//! Every value is validated while it is deserialized, so an error carries the position of the
//! offending value and `ram policy check` can name the file, line and key.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Deserialize;
use toml::Spanned;

/// The policy `ram daemon` enforces when no `--policy` is given: Docker Hub only, as Docker's own
/// Registry Access Management starts out.
pub const DEFAULT_POLICY: &str = include_str!("../default-policy.toml");

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub registry_access: RegistryAccess,
    pub dns: Dns,
    pub audit: Audit,
    pub scope: Scope,
    pub image_access: ImageAccess,
}

/// Image Access Management (`[image_access]`): which kinds of Docker Hub images may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageAccess {
    pub enabled: bool,
    pub rules: crate::image::Rules,
    /// Where the Docker Hub pull gate listens (a loopback address): dockerd's
    /// `registry-mirrors` entry, and the one way enforced cgroups reach Docker Hub.
    pub gate: SocketAddr,
    /// The registry the gate forwards allowed pulls to (Docker Hub unless set).
    pub upstream: String,
}

impl ImageAccess {
    /// A privileged port: only root can listen there, so no user's process can stand in for
    /// the gate while it is down (the kernel allows this address and port to enforced cgroups
    /// whether or not the gate listens).
    pub const DEFAULT_GATE: &str = "127.0.0.1:442";
    pub const DEFAULT_UPSTREAM: &str = "https://registry-1.docker.io";
}

impl Default for ImageAccess {
    fn default() -> Self {
        Self {
            enabled: false,
            rules: crate::image::Rules {
                official: true,
                verified_publishers: true,
                community: false,
                organizations: Vec::new(),
                verified_publisher_namespaces: crate::image::DEFAULT_VERIFIED_PUBLISHERS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            },
            gate: Self::DEFAULT_GATE
                .parse()
                .expect("the default gate address is valid"),
            upstream: Self::DEFAULT_UPSTREAM.to_owned(),
        }
    }
}

/// What is enforced besides the cgroups given on the command line (`[scope]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The Docker Engine's and containerd's cgroups (systemd units, or the cgroups of running
    /// dockerd/containerd processes).
    pub docker: bool,
    /// Every container's cgroup, followed as containers come and go.
    pub containers: bool,
    /// More cgroups, relative to the cgroup2 mount or absolute.
    pub cgroups: Vec<PathBuf>,
    /// The cgroup2 root: every process on the host. Only when asked for by name.
    pub whole_host: bool,
}

/// Which allowed connections reach the audit log (denials and learned addresses always do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowedAudit {
    None,
    /// The first connection of a process to a destination (address, port, protocol) within
    /// `allowed_window` seconds.
    First,
    All,
}

impl AllowedAudit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::First => "first",
            Self::All => "all",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub allowed: AllowedAudit,
    /// Seconds before the same process and destination are reported again (for `first`).
    pub allowed_window: u64,
}

impl Audit {
    pub const DEFAULT_ALLOWED_WINDOW: u64 = 600;
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            allowed: AllowedAudit::First,
            allowed_window: Self::DEFAULT_ALLOWED_WINDOW,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAccess {
    /// Registry hostnames (exact or `*.domain`).
    pub allow: Vec<HostPattern>,
    /// Destinations allowed on any port, no DNS involved.
    pub allow_cidrs: Vec<Cidr>,
    /// Loopback (127.0.0.0/8, ::1, and the unspecified addresses, which Linux connects to
    /// loopback).
    pub allow_loopback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Trusted resolvers, reachable on port 53. `None`: the nameservers of /etc/resolv.conf.
    pub resolvers: Option<Vec<ResolverAddr>>,
    /// Seconds a learned address lives at least, whatever the answer's TTL.
    pub min_ttl: u64,
    /// Seconds a learned address lives at most (caps huge TTLs), before the grace period.
    pub max_ttl: u64,
    /// Seconds added to every learned address's lifetime, for clients that cache answers.
    pub grace_period: u64,
    /// Capacity of the learned-address map; when full, new addresses are denied.
    pub max_learned: u64,
}

impl Dns {
    pub const DEFAULT_MIN_TTL: u64 = 60;
    pub const DEFAULT_MAX_TTL: u64 = 86_400;
    pub const DEFAULT_GRACE_PERIOD: u64 = 300;
    pub const DEFAULT_MAX_LEARNED: u64 = 16_384;
    /// Smallest `max_learned` accepted: a few registries' worth of CDN addresses.
    pub const MIN_MAX_LEARNED: u64 = 64;
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            resolvers: None,
            min_ttl: Self::DEFAULT_MIN_TTL,
            max_ttl: Self::DEFAULT_MAX_TTL,
            grace_period: Self::DEFAULT_GRACE_PERIOD,
            max_learned: Self::DEFAULT_MAX_LEARNED,
        }
    }
}

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
}

impl Default for RawRegistryAccess {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            allow_cidrs: Vec::new(),
            allow_loopback: true,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    resolvers: Option<Vec<Spanned<String>>>,
    min_ttl: Option<Spanned<i64>>,
    max_ttl: Option<Spanned<i64>>,
    grace_period: Option<Spanned<i64>>,
    max_learned: Option<Spanned<i64>>,
}

fn default_true() -> bool {
    true
}

/// Where a policy came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    Embedded,
    File(PathBuf),
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded => f.write_str("<embedded default policy>"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
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
            },
            dns: Dns {
                resolvers: match raw.dns.resolvers {
                    Some(list) => Some(validate_all("dns.resolvers", &list, "resolver", &invalid)?),
                    None => None,
                },
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
            },
            audit: Audit {
                allowed,
                allowed_window,
            },
            image_access: image_access(raw.image_access, &invalid)?,
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
        if let Some(resolvers) = policy.dns.resolvers.as_mut() {
            dedup_in_order(resolvers);
        }
        Ok(policy)
    }
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
fn upstream_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|err| {
        format!("`{text}` is not a URL ({err}); write it as https://registry.example.com")
    })?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !plain {
        return Err(format!(
            "`{text}` must be a registry's base URL, http(s)://host[:port] with nothing after \
             it (the gate adds /v2/...)"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// Parses every value of the list `key`; the first bad one becomes an error at its position.
fn validate_all<T: FromStr<Err = String>>(
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

/// A hostname pattern from `registry_access.allow`: `registry.example.com` (exactly that name)
/// or `*.example.com` (any name below example.com, at any depth, but not example.com itself).
/// Stored lower-case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// The name, or for a wildcard the domain after `*.`.
    pub domain: String,
    pub wildcard: bool,
    /// A registry's port as written (`nexus.corp:8443`). Kept for display only: ram allows a
    /// host's learned addresses on every port, as it allows `allow_cidrs` entries.
    pub port: Option<u16>,
}

impl HostPattern {
    /// Whether `name` (any case, trailing dot allowed) is covered by this pattern.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if !self.wildcard {
            return name.eq_ignore_ascii_case(&self.domain);
        }
        // A subdomain: at least one label, then ".", then the domain.
        name.len() > self.domain.len() + 1 && {
            let (head, tail) = name.split_at(name.len() - self.domain.len());
            head.ends_with('.') && tail.eq_ignore_ascii_case(&self.domain)
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.domain)?;
        } else {
            f.write_str(&self.domain)?;
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // `registry.corp:5000`, as registries are named in image references.
        let (text, port) = match text.rsplit_once(':') {
            Some((host, port))
                if !host.contains(':')
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("port {port} is not a port number (1 to 65535)"))?;
                (host, Some(port))
            }
            _ => (text, None),
        };
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.is_empty() {
            return Err("empty hostname".into());
        }
        if name.parse::<IpAddr>().is_ok() {
            return Err("this is an IP address; list addresses in `allow_cidrs`".into());
        }
        if name.contains(':') {
            return Err(
                "a registry is written `host` or `host:port`; IPv6 addresses belong in \
                 `allow_cidrs`"
                    .into(),
            );
        }
        if name.contains('*') {
            return Err(
                "`*` is allowed only as a whole first label (`*.example.com`), meaning any \
                 subdomain"
                    .into(),
            );
        }
        // RFC 1035: at most 253 characters in text form, labels of 1 to 63 characters.
        if name.len() > 253 {
            return Err(format!(
                "hostname is {} characters long; at most 253 are allowed",
                name.len()
            ));
        }
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if label.is_empty() {
                return Err("empty label (two dots in a row, or a leading dot)".into());
            }
            if label.len() > 63 {
                return Err(format!(
                    "label `{label}` is {} characters long; at most 63 are allowed",
                    label.len()
                ));
            }
            if let Some(bad) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(format!(
                    "character `{bad}` is not allowed in a hostname (letters, digits and `-` \
                     only; write internationalized names in their xn-- form)"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("label `{label}` starts or ends with `-`"));
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return Err("the last label is all digits; list addresses in `allow_cidrs`".into());
        }
        if wildcard && labels.len() < 2 {
            return Err(format!(
                "`*.{name}` would allow every name in a whole top-level domain; name the \
                 registry's own domain (e.g. `*.{name}` → `*.example.{name}`)"
            ));
        }
        Ok(Self {
            domain: name,
            wildcard,
            port,
        })
    }
}

/// An address prefix from `registry_access.allow_cidrs`. A bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, String> {
        let max = max_prefix(addr);
        if prefix_len > max {
            return Err(format!(
                "prefix length {prefix_len} is larger than {max}, the size of an {} address",
                if addr.is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
        let network = mask(addr, prefix_len);
        if network != addr {
            return Err(format!(
                "address has bits set beyond the /{prefix_len} prefix; did you mean \
                 `{network}/{prefix_len}`?"
            ));
        }
        Ok(Self { addr, prefix_len })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let (addr, own) = (to_v6(addr), to_v6(self.addr));
        let bits = self.prefix_len_v6();
        mask(IpAddr::V6(addr), bits) == IpAddr::V6(own)
    }

    /// The prefix length in the 128-bit space where IPv4 is mapped (`::ffff:0:0/96`).
    pub fn prefix_len_v6(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 96 + self.prefix_len,
            IpAddr::V6(_) => self.prefix_len,
        }
    }
}

/// `addr` as 16 bytes (IPv4 mapped), the form every map key uses.
pub fn to_v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("`{addr_text}` is not an IPv4 or IPv6 address"))?;
        let prefix_len = match prefix_text {
            None => max_prefix(addr),
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|_| prefix.chars().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| format!("`{prefix}` is not a prefix length"))?,
        };
        Self::new(addr, prefix_len)
    }
}

/// A resolver address from `dns.resolvers` (no port: resolvers are reached on port 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResolverAddr(pub IpAddr);

impl FromStr for ResolverAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let addr: IpAddr = text.parse().map_err(|_| {
            "write an IPv4 or IPv6 address without a port (resolvers are used on port 53)"
                .to_owned()
        })?;
        if addr.is_unspecified() || addr.is_multicast() {
            return Err("not a unicast address".into());
        }
        Ok(Self(addr))
    }
}

impl fmt::Display for ResolverAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::from_toml(text, &PolicySource::File("policy.toml".into()))
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn image_gate_address_and_upstream_are_checked() {
        let access =
            parse("[image_access]\ngate = \"[::1]:700\"\nupstream = \"http://hub.test:5000/\"\n")
                .unwrap()
                .image_access;
        assert_eq!(access.gate, "[::1]:700".parse().unwrap());
        assert_eq!(access.upstream, "http://hub.test:5000");
        let defaults = parse("").unwrap().image_access;
        assert_eq!(defaults.gate.to_string(), ImageAccess::DEFAULT_GATE);
        assert_eq!(defaults.upstream, ImageAccess::DEFAULT_UPSTREAM);
        for (text, why) in [
            ("gate = \"0.0.0.0:5055\"", "not a loopback address"),
            ("gate = \"127.0.0.1\"", "not a loopback address"),
            ("gate = \"127.0.0.1:0\"", "not a loopback address"),
            ("gate = \"127.0.0.1:5055\"", "below 1024"),
            ("upstream = \"ftp://hub.test\"", "base URL"),
            ("upstream = \"https://hub.test/v2/\"", "base URL"),
            ("upstream = \"https://user:pw@hub.test\"", "base URL"),
            ("upstream = \"hub.test\"", "not a URL"),
        ] {
            let error = error_of(&format!("[image_access]\n{text}\n"));
            assert!(
                error.contains(why) && error.contains(":2:"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn image_access_reads_namespaces_and_registry_json() {
        let dir = std::env::temp_dir().join(format!("ram-registry-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let registry_json = dir.join("registry.json");
        std::fs::write(&registry_json, r#"{"allowedOrgs": ["OtherOrg"]}"#).unwrap();
        let policy = Policy::from_toml(
            &format!(
                "[image_access]\nenabled = true\nverified_publishers = false\n\
                 organizations = [\"MyCompany\"]\nverified_publisher_namespaces = [\"somepublisher\"]\n\
                 registry_json = \"{}\"\n",
                registry_json.display()
            ),
            &PolicySource::Embedded,
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let access = &policy.image_access;
        assert!(access.enabled);
        assert!(
            access.rules.official && !access.rules.verified_publishers && !access.rules.community
        );
        assert_eq!(access.rules.organizations, ["mycompany", "otherorg"]);
        assert!(
            access
                .rules
                .verified_publisher_namespaces
                .contains(&"somepublisher".to_string())
        );
        assert!(
            access
                .rules
                .verified_publisher_namespaces
                .contains(&"bitnami".to_string())
        );
        // Off unless enabled; bad namespaces are errors with their position.
        assert!(
            !Policy::from_toml("", &PolicySource::Embedded)
                .unwrap()
                .image_access
                .enabled
        );
        let error = Policy::from_toml(
            "[image_access]\norganizations = [\"my company\"]",
            &PolicySource::Embedded,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(":2:18") && error.contains("not a Docker Hub namespace"),
            "{error}"
        );
    }

    #[test]
    fn registries_may_carry_a_port_and_a_scope() {
        let policy = Policy::from_toml(
            "[scope]\ndocker = true\ncgroups = [\"/system.slice/buildkit.service\"]\n\
             [registry_access]\nallow = [\"Nexus.Corp:8443\", \"*.harbor.example:443\"]",
            &PolicySource::Embedded,
        )
        .unwrap();
        let allow = &policy.registry_access.allow;
        assert_eq!(allow[0].domain, "nexus.corp");
        assert_eq!(allow[0].port, Some(8443));
        assert_eq!(allow[0].to_string(), "nexus.corp:8443");
        assert!(allow[0].matches("NEXUS.corp."));
        assert!(allow[1].wildcard && allow[1].matches("a.harbor.example"));
        assert!(policy.scope.docker && !policy.scope.containers && !policy.scope.whole_host);
        assert_eq!(policy.scope.cgroups.len(), 1);
        for bad in [
            "nexus.corp:0",
            "nexus.corp:70000",
            "nexus.corp:",
            "[::1]:5000",
        ] {
            let text = format!("[registry_access]\nallow = [\"{bad}\"]");
            assert!(
                Policy::from_toml(&text, &PolicySource::Embedded).is_err(),
                "{bad} was accepted"
            );
        }
        // No [scope]: nothing beyond the command line's cgroups.
        let plain = Policy::from_toml("", &PolicySource::Embedded).unwrap();
        assert_eq!(plain.scope, Scope::default());
        // The embedded default follows Docker (its containers only when asked for).
        let default = Policy::embedded_default();
        assert!(default.scope.docker && !default.scope.containers);
    }

    #[test]
    fn embedded_default_is_valid_and_allows_docker_hub() {
        let policy = Policy::embedded_default();
        assert!(policy.registry_access.allow_loopback);
        let hub = crate::presets::expand(&policy.registry_access.allow[0]).unwrap();
        for needed in [
            "registry-1.docker.io",
            "auth.docker.io",
            "production.cloudflare.docker.com",
        ] {
            assert!(hub.hosts.iter().any(|h| h.matches(needed)), "{needed}");
        }
    }

    #[test]
    fn full_example_parses() {
        let policy = parse(
            r#"
            [registry_access]
            allow = ["docker.io", "*.example.com", "Registry.Example.ORG."]
            allow_cidrs = ["10.1.2.0/24", "fd00::/8", "192.0.2.7"]
            allow_loopback = false
            [dns]
            resolvers = ["10.0.0.53", "2001:db8::53"]
            "#,
        )
        .unwrap();
        let access = &policy.registry_access;
        assert_eq!(access.allow[2].domain, "registry.example.org");
        assert!(!access.allow_loopback);
        assert_eq!(access.allow_cidrs[2].to_string(), "192.0.2.7/32");
        assert_eq!(policy.dns.resolvers.unwrap().len(), 2);
    }

    #[test]
    fn empty_policy_denies_all_but_loopback() {
        let policy = parse("").unwrap();
        assert!(policy.registry_access.allow.is_empty());
        assert!(policy.registry_access.allow_loopback);
        assert_eq!(policy.dns.resolvers, None);
    }

    #[test]
    fn unknown_keys_are_errors_with_line() {
        let err = error_of("[registry_access]\nallow = []\nalow_cidrs = []\n");
        assert!(err.starts_with("policy.toml:3:1:"), "{err}");
        assert!(err.contains("unknown field `alow_cidrs`"), "{err}");
        let err = error_of("[registry]\n");
        assert!(err.contains("unknown field `registry`"), "{err}");
    }

    #[test]
    fn bad_cidrs_name_line_key_and_value() {
        let err = error_of(
            "[registry_access]\nallow_cidrs = [\n  \"10.0.0.0/8\",\n  \"10.1.2.0/33\",\n]\n",
        );
        assert!(err.starts_with("policy.toml:4:3:"), "{err}");
        assert!(err.contains("allow_cidrs"), "{err}");
        assert!(err.contains("`10.1.2.0/33`"), "{err}");
        assert!(err.contains("prefix length 33"), "{err}");
        assert!(
            error_of("[registry_access]\nallow_cidrs = [\"10.1.2.3/24\"]").contains("10.1.2.0/24")
        );
        assert!(error_of("[registry_access]\nallow_cidrs = [\"nope/8\"]").contains("not an IPv4"));
        assert!(
            error_of("[registry_access]\nallow_cidrs = [\"10.0.0.0/+8\"]").contains("not a prefix")
        );
        assert!(error_of("[registry_access]\nallow_cidrs = [\"fd00::1/8\"]").contains("fd00::/8"));
    }

    #[test]
    fn bad_hostnames_are_errors() {
        for (name, why) in [
            ("", "empty hostname"),
            ("10.0.0.1", "allow_cidrs"),
            ("a..b", "empty label"),
            ("reg_istry.io", "character `_`"),
            ("-bad.io", "starts or ends"),
            ("*.io", "top-level domain"),
            ("foo.*.io", "first label"),
            ("**.io", "first label"),
            ("example.123", "all digits"),
        ] {
            let err = error_of(&format!("[registry_access]\nallow = [\"{name}\"]"));
            assert!(err.contains(why), "{name}: {err}");
            assert!(err.starts_with("policy.toml:2:"), "{name}: {err}");
        }
        let long_label = "a".repeat(64);
        assert!(
            error_of(&format!("[registry_access]\nallow = [\"{long_label}.io\"]")).contains("63")
        );
    }

    #[test]
    fn type_errors_name_the_line() {
        let err = error_of("[registry_access]\nallow_loopback = \"yes\"\n");
        assert!(err.starts_with("policy.toml:2:"), "{err}");
        let err = error_of("[dns]\nresolvers = [\"10.0.0.53:53\"]\n");
        assert!(err.contains("without a port"), "{err}");
    }

    #[test]
    fn dns_settings_have_defaults_and_ranges() {
        let policy = parse("").unwrap();
        assert_eq!(policy.dns, Dns::default());
        let policy =
            parse("[dns]\nmin_ttl = 1\nmax_ttl = 10\ngrace_period = 0\nmax_learned = 100").unwrap();
        assert_eq!(
            (
                policy.dns.min_ttl,
                policy.dns.max_ttl,
                policy.dns.grace_period
            ),
            (1, 10, 0)
        );
        assert_eq!(policy.dns.max_learned, 100);
        let err = error_of("[dns]\nmax_learned = 1");
        assert!(
            err.starts_with("policy.toml:2:15:") && err.contains("out of range"),
            "{err}"
        );
        let err = error_of("[dns]\nmin_ttl = -5");
        assert!(err.contains("out of range"), "{err}");
        let err = error_of("[dns]\nmin_ttl = 100\nmax_ttl = 10");
        assert!(
            err.starts_with("policy.toml:2:11:") && err.contains("larger than dns.max_ttl"),
            "{err}"
        );
        let err = error_of("[dns]\nmin_ttl = \"60s\"");
        assert!(err.starts_with("policy.toml:2:"), "{err}");
    }

    #[test]
    fn duplicates_are_dropped() {
        let policy = parse("[registry_access]\nallow = [\"a.io\", \"A.io.\"]\nallow_cidrs = [\"10.0.0.0/8\", \"10.0.0.0/8\"]").unwrap();
        assert_eq!(policy.registry_access.allow.len(), 1);
        assert_eq!(policy.registry_access.allow_cidrs.len(), 1);
    }

    #[test]
    fn matching_rules() {
        let exact: HostPattern = "docker.io".parse().unwrap();
        assert!(exact.matches("docker.io"));
        assert!(exact.matches("DOCKER.IO."));
        assert!(!exact.matches("registry-1.docker.io"));
        assert!(!exact.matches("evildocker.io"));

        let wildcard: HostPattern = "*.dkr.ecr.us-east-1.amazonaws.com".parse().unwrap();
        assert!(wildcard.matches("123456789012.dkr.ecr.us-east-1.amazonaws.com"));
        assert!(wildcard.matches("a.b.dkr.ecr.us-east-1.amazonaws.com."));
        assert!(!wildcard.matches("dkr.ecr.us-east-1.amazonaws.com"));
        assert!(!wildcard.matches("xdkr.ecr.us-east-1.amazonaws.com"));
        assert!(!wildcard.matches(".dkr.ecr.us-east-1.amazonaws.com"));
    }

    #[test]
    fn cidr_contains_handles_mapped_ipv4() {
        let cidr: Cidr = "10.1.2.0/24".parse().unwrap();
        assert!(cidr.contains("10.1.2.9".parse().unwrap()));
        assert!(cidr.contains("::ffff:10.1.2.9".parse().unwrap()));
        assert!(!cidr.contains("10.1.3.9".parse().unwrap()));
        assert_eq!(cidr.prefix_len_v6(), 120);
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
    }
}
