//! The policy as ram understands it: what the operator wrote, validated. `parse` reads it from
//! TOML (with the file, line and column of every error), `pattern` holds the value types of its
//! entries, `presets` the registries an entry may stand for, `image_rules` the Docker Hub
//! categories, `reference` the image-reference grammar (of `image_access.allow_repositories`,
//! the authorization plugin and the pull gate), `protect` the file's ownership checks and
//! `resolv` the host's resolvers.

pub mod image_rules;
mod parse;
mod pattern;
pub mod presets;
pub mod protect;
pub mod push;
pub mod reference;
pub mod resolv;

use std::{fmt, net::SocketAddr, path::PathBuf};

pub use image_rules::{
    DEFAULT_VERIFIED_PUBLISHERS, ImageRules, RepositoryPattern, RepositoryPatternError,
};
pub use parse::PolicyError;
pub use pattern::{Cidr, EntryError, HostPattern, ResolverAddr, to_v6};
pub use push::{PushRule, PushRuleError};
/// The policy `ram daemon` enforces when no `--policy` is given: Docker Hub only, as Docker's own
/// Registry Access Management starts out.
pub const DEFAULT_POLICY: &str = include_str!("../../default-policy.toml");

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub registry_access: RegistryAccess,
    pub dns: Dns,
    pub audit: Audit,
    pub scope: Scope,
    pub image_access: ImageAccess,
    pub metrics: Metrics,
}

/// `[metrics]`: the Prometheus endpoint, off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    pub listen: Option<MetricsAddress>,
}

impl Metrics {
    pub const EXAMPLE: &str = "127.0.0.1:9464";
}

/// Where the metrics endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddress {
    Tcp(SocketAddr),
    /// `unix:/path`: a socket only root (mode 0600) can scrape.
    Unix(PathBuf),
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "http://{addr}/metrics"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Image Access Management (`[image_access]`): which kinds of Docker Hub images may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageAccess {
    pub enabled: bool,
    pub rules: ImageRules,
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
            rules: ImageRules {
                official: true,
                verified_publishers: true,
                community: false,
                organizations: Vec::new(),
                verified_publisher_namespaces: DEFAULT_VERIFIED_PUBLISHERS
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                allow_repositories: Vec::new(),
                push: None,
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
    /// ICMP ping sockets, to destinations the policy allows (else refused at creation).
    pub allow_ping: bool,
    /// Whether TLS connections to learned addresses must name a host that taught the address.
    pub tls: TlsMode,
    /// `push`: where `docker push` may send images (judged by the authorization plugin).
    /// `None`: anywhere; empty: nowhere.
    pub push: Option<Vec<PushRule>>,
}

/// `registry_access.tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// A TCP connection to a learned address must send a ClientHello naming an allowed host
    /// whose answer taught this address (on 443: nothing else; on other allowed ports, a TLS
    /// hello is judged and other protocols pass). QUIC to a learned address is refused.
    Enforce,
    /// The same judgement, reported as `would_deny`; nothing refused.
    Audit,
    /// Addresses only, as before this setting.
    Off,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
            Self::Off => "off",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Trusted resolvers, reachable on port 53. `None`: the nameservers of /etc/resolv.conf.
    pub resolvers: Option<Vec<ResolverAddr>>,
    /// More resolvers a container's resolv.conf may name and have trusted in its own network
    /// namespace (`scope.containers`), beside the host's and Docker's embedded DNS: a
    /// cluster's DNS service, say.
    pub container_resolvers: Vec<ResolverAddr>,
    /// Seconds a learned address lives at least, whatever the answer's TTL.
    pub min_ttl: u64,
    /// Seconds a learned address lives at most (caps huge TTLs), before the grace period.
    pub max_ttl: u64,
    /// Seconds added to every learned address's lifetime, for clients that cache answers.
    pub grace_period: u64,
    /// Capacity of the learned-address map; when full, new addresses are denied.
    pub max_learned: u64,
    /// Which names enforced cgroups may ask trusted resolvers for.
    pub queries: DnsQueries,
    /// Search domains (beside those of the host's /etc/resolv.conf) after which an allowed
    /// name may be asked for (`registry.example.com.corp.internal`).
    pub search_domains: Vec<String>,
}

/// `dns.queries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsQueries {
    /// Names the policy allows (and those followed by a search domain); other queries fail at
    /// once and are audited, so that DNS cannot carry data out.
    Allowed,
    /// Any name, as ram did before this setting.
    Any,
}

impl DnsQueries {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Any => "any",
        }
    }
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
            container_resolvers: Vec::new(),
            min_ttl: Self::DEFAULT_MIN_TTL,
            max_ttl: Self::DEFAULT_MAX_TTL,
            grace_period: Self::DEFAULT_GRACE_PERIOD,
            max_learned: Self::DEFAULT_MAX_LEARNED,
            queries: DnsQueries::Allowed,
            search_domains: Vec::new(),
        }
    }
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

#[cfg(test)]
mod tests;
