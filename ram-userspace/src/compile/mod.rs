//! Turns a validated [`Policy`] into the entries of the kernel maps; `check` answers `ram check`
//! from the same policy.

pub mod check;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use ram_common::{
    AUDIT_ALLOWED_ALL, AUDIT_ALLOWED_FIRST, AUDIT_ALLOWED_NONE, Addr16, BUILTIN_RULE,
    CONTAINER_RESOLVER_RULE_ID, CidrRule, FLAG_PING, FLAG_QUERIES_ALLOWED, FLAG_TLS_AUDIT,
    FLAG_TLS_ENFORCE, NameRule, PolicyConfig, Reason, ResolverRule, dns::NAME_BUF, rule_id,
};

use crate::policy::{AllowedAudit, Cidr, DnsQueries, HostPattern, Policy, TlsMode, presets, to_v6};

/// How long a query waits for its answer before an answer no longer counts (resolvers time out
/// well before: glibc after 5 s by default, with up to 2 attempts per server).
pub const QUERY_TIMEOUT_SECS: u64 = 30;

/// Prefixes `allow_loopback` adds. The unspecified addresses are included because Linux
/// connects `0.0.0.0` and `::` to the local host.
pub const LOOPBACK_CIDRS: [&str; 4] = ["127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"];

/// One entry of `ALLOWED_CIDRS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrEntry {
    pub addr: Addr16,
    /// In the 128-bit space (IPv4 prefixes are `96 + len`).
    pub prefix_len: u32,
    pub rule: CidrRule,
}

/// Where the trusted resolvers came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolverOrigin {
    Policy,
    ResolvConf,
}

/// One entry of `ALLOWED_NAMES`: see [`name_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    pub key: [u8; NAME_BUF],
    /// Bits of `key` that must match.
    pub prefix_len: u32,
    pub rule: NameRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub cidrs: Vec<CidrEntry>,
    pub names: Vec<NameEntry>,
    pub resolvers: Vec<IpAddr>,
    pub resolver_origin: ResolverOrigin,
    /// `POLICY_CONFIG` (its netns cookie is filled in when the programs are loaded).
    pub config: PolicyConfig,
    /// Capacity of `LEARNED`.
    pub max_learned: u32,
    /// Every entry's [`rule_id`] → how the audit log names it (`*.docker.io`, `10.0.0.0/8`,
    /// `resolver 10.0.0.53`, `loopback 127.0.0.0/8`).
    pub rules: HashMap<u64, String>,
    /// Allowed names left out because they reach Docker Hub, which Image Access Management
    /// lets enforced cgroups reach only through its pull gate (as the rules name them).
    pub withheld_for_gate: Vec<String>,
    /// `scope.containers`: the resolvers of enforced containers' networks are trusted in their
    /// namespaces (`NETNS_RESOLVERS`), and what they answered stays learned.
    pub container_dns: bool,
    /// `dns.container_resolvers`: more resolvers a container may name and have trusted.
    pub container_resolvers: Vec<IpAddr>,
    /// `SEARCH_DOMAINS`: `dns.search_domains`, and the host's resolv.conf `search` domains
    /// (added by the daemon, which reads the file).
    pub search_domains: Vec<String>,
}

/// The `ALLOWED_NAMES` key of a hostname pattern: the name character-reversed, followed by a 0
/// terminator for an exact name (`docker.io` → `oi.rekcod\0`) or by `.` for a wildcard
/// (`*.example.com` → `moc.elpmaxe.`). The kernel looks up the reversed question followed by 0
/// (see `ram_common::dns::reversed_key`), so an exact entry matches only that name, and a
/// wildcard entry matches every name with at least one more label, but not the apex.
pub fn name_key(pattern: &HostPattern) -> ([u8; NAME_BUF], u32) {
    let mut key = [0u8; NAME_BUF];
    let reversed: Vec<u8> = pattern.domain.bytes().rev().collect();
    key[..reversed.len()].copy_from_slice(&reversed);
    key[reversed.len()] = if pattern.wildcard { b'.' } else { 0 };
    (key, (reversed.len() as u32 + 1) * 8)
}

/// The ports a host of an allow entry is allowed on: the port written with it (or every port
/// for `host:*`), else its preset's, else [`ram_common::DEFAULT_PORTS`].
pub fn rule_ports(
    host: &HostPattern,
    preset_ports: Option<ram_common::Ports>,
) -> ram_common::Ports {
    let written = host.port.is_some() || host.any_port;
    match preset_ports {
        Some(ports) if !written => ports,
        _ => host.ports(),
    }
}

/// `ports` for people: `ports 443, 80`, or `every port`.
pub fn ports_text(ports: &ram_common::Ports) -> String {
    let listed: Vec<String> = ports
        .iter()
        .filter(|p| **p != 0)
        .map(ToString::to_string)
        .collect();
    match listed.len() {
        0 => "every port".to_owned(),
        1 => format!("port {}", listed[0]),
        _ => format!("ports {}", listed.join(", ")),
    }
}

impl CompiledPolicy {
    /// `system_resolvers` supplies the nameservers of /etc/resolv.conf; it is called only when
    /// the policy has no `dns.resolvers`.
    pub fn new(policy: &Policy, system_resolvers: impl FnOnce() -> Vec<IpAddr>) -> Self {
        let access = &policy.registry_access;
        let mut rules = HashMap::new();
        let mut cidrs = Vec::new();
        if access.allow_loopback {
            for text in LOOPBACK_CIDRS {
                let cidr: Cidr = text.parse().expect("built-in CIDRs are valid");
                let id = rule_id(RuleKind::Loopback.as_str(), text);
                rules.insert(id, format!("loopback {text}"));
                cidrs.push(entry(&cidr, Reason::AllowedLoopback, BUILTIN_RULE, id));
            }
        }
        for (index, cidr) in access.allow_cidrs.iter().enumerate() {
            let text = cidr.to_string();
            let id = rule_id(RuleKind::Cidr.as_str(), &text);
            rules.insert(id, text);
            cidrs.push(entry(cidr, Reason::AllowedCidr, index as u32, id));
        }
        // Image Access Management: the pull gate is how enforced cgroups reach Docker Hub.
        // Its own entry names its port; where a wider entry already allows its address (every
        // port), that one is left to do it, as the trie would otherwise prefer the narrower
        // entry and refuse the address's other ports.
        let gate = policy.image_access.gate;
        let gate_covered = (access.allow_loopback && gate.ip().is_loopback())
            || access.allow_cidrs.iter().any(|c| c.contains(gate.ip()));
        if policy.image_access.enabled && !gate_covered {
            let text = format!("image gate {gate}");
            let id = rule_id(RuleKind::ImageGate.as_str(), &text);
            rules.insert(id, text);
            let host_bits = if gate.is_ipv4() { 32 } else { 128 };
            let cidr = Cidr::new(gate.ip(), host_bits).expect("a host prefix is valid");
            let mut gate_entry = entry(&cidr, Reason::AllowedImageGate, BUILTIN_RULE, id);
            gate_entry.rule.port = gate.port();
            cidrs.push(gate_entry);
        }
        let (resolvers, resolver_origin): (Vec<IpAddr>, _) = match &policy.dns.resolvers {
            Some(list) => (list.iter().map(|r| r.0).collect(), ResolverOrigin::Policy),
            None => (system_resolvers(), ResolverOrigin::ResolvConf),
        };
        for resolver in &resolvers {
            let text = resolver.to_string();
            rules.insert(
                rule_id(RuleKind::Resolver.as_str(), &text),
                format!("resolver {text}"),
            );
        }
        // Each entry, and for a registry preset every host it stands for (same index; the
        // rule's text names both: `ghcr.io → pkg-containers.githubusercontent.com`).
        let mut names = Vec::new();
        let mut withheld_for_gate = Vec::new();
        for (index, pattern) in access.allow.iter().enumerate() {
            let entry = pattern.to_string();
            let (hosts, preset_ports) = match presets::expand(pattern) {
                Some(expansion) => (expansion.hosts, Some(expansion.ports)),
                None => (vec![pattern.clone()], None),
            };
            for host in hosts {
                let ports = rule_ports(&host, preset_ports);
                let text = if host == *pattern {
                    entry.clone()
                } else {
                    format!("{entry} → {host}")
                };
                // With Image Access Management on, Docker Hub is reached through the gate
                // only: a direct way would let dockerd's fallback from its mirror, or any
                // client, side-step the image rules.
                if policy.image_access.enabled && presets::reaches_docker_hub(&host) {
                    withheld_for_gate.push(text);
                    continue;
                }
                let (key, prefix_len) = name_key(&host);
                let id = rule_id(RuleKind::Allow.as_str(), &text);
                rules.insert(id, text);
                names.push(NameEntry {
                    key,
                    prefix_len,
                    rule: NameRule {
                        rule_index: index as u32,
                        wildcard: u32::from(host.wildcard),
                        rule_id: id,
                        ports,
                    },
                });
            }
        }
        // One name written twice (`registry.corp` and `registry.corp:5000`) is one trie entry:
        // it carries both entries' ports.
        let mut ports_by_key: HashMap<(Vec<u8>, u32), ram_common::Ports> = HashMap::new();
        for name in &names {
            let merged = ports_by_key
                .entry((name.key.to_vec(), name.prefix_len))
                .or_insert(name.rule.ports);
            *merged = ram_common::merge_ports(merged, &name.rule.ports).unwrap_or(*merged);
        }
        for name in &mut names {
            name.rule.ports = ports_by_key[&(name.key.to_vec(), name.prefix_len)];
        }
        let container_dns = policy.scope.containers;
        if container_dns {
            rules.insert(
                CONTAINER_RESOLVER_RULE_ID,
                "container network resolver".into(),
            );
        }
        const NS: u64 = 1_000_000_000;
        let config = PolicyConfig {
            min_ttl_ns: policy.dns.min_ttl * NS,
            max_ttl_ns: policy.dns.max_ttl * NS,
            grace_ns: policy.dns.grace_period * NS,
            query_timeout_ns: QUERY_TIMEOUT_SECS * NS,
            trusted_netns_cookie: 0,
            audit_allowed: match policy.audit.allowed {
                AllowedAudit::None => AUDIT_ALLOWED_NONE,
                AllowedAudit::First => AUDIT_ALLOWED_FIRST,
                AllowedAudit::All => AUDIT_ALLOWED_ALL,
            },
            flags: match policy.dns.queries {
                DnsQueries::Allowed => FLAG_QUERIES_ALLOWED,
                DnsQueries::Any => 0,
            } | if access.allow_ping { FLAG_PING } else { 0 }
                | match access.tls {
                    TlsMode::Enforce => FLAG_TLS_ENFORCE,
                    TlsMode::Audit => FLAG_TLS_AUDIT,
                    TlsMode::Off => 0,
                },
            allowed_window_ns: policy.audit.allowed_window * NS,
            // Filled in by the enforcer, which keeps the maps' key.
            search_seed: 0,
        };
        Self {
            cidrs,
            names,
            resolvers,
            resolver_origin,
            config,
            max_learned: policy.dns.max_learned as u32,
            rules,
            withheld_for_gate,
            container_dns,
            container_resolvers: policy.dns.container_resolvers.iter().map(|r| r.0).collect(),
            search_domains: policy.dns.search_domains.clone(),
        }
    }

    /// Rule ids a learned address may carry under this policy (`RULE_IDS`): its hostname
    /// rules and its resolvers (container networks' included, under `scope.containers`).
    pub fn learned_rule_ids(&self) -> (HashSet<u64>, HashSet<u64>) {
        let mut resolvers: HashSet<u64> = self
            .resolver_entries()
            .iter()
            .map(|(_, r)| r.rule_id)
            .collect();
        if self.container_dns {
            resolvers.insert(CONTAINER_RESOLVER_RULE_ID);
        }
        (
            self.names.iter().map(|n| n.rule.rule_id).collect(),
            resolvers,
        )
    }

    /// Entries of `RESOLVERS`.
    pub fn resolver_entries(&self) -> Vec<(Addr16, ResolverRule)> {
        self.resolvers
            .iter()
            .enumerate()
            .map(|(index, addr)| {
                (
                    to_v6(*addr).octets(),
                    ResolverRule {
                        rule_index: index as u32,
                        _reserved: 0,
                        rule_id: rule_id(RuleKind::Resolver.as_str(), &addr.to_string()),
                    },
                )
            })
            .collect()
    }
}

/// The kinds of policy entries, as [`rule_id`] names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Allow,
    Cidr,
    Resolver,
    Loopback,
    ImageGate,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Cidr => "cidr",
            Self::Resolver => "resolver",
            Self::Loopback => "loopback",
            Self::ImageGate => "image_gate",
        }
    }
}

fn entry(cidr: &Cidr, reason: Reason, rule_index: u32, rule_id: u64) -> CidrEntry {
    CidrEntry {
        addr: to_v6(cidr.addr).octets(),
        prefix_len: u32::from(cidr.prefix_len_v6()),
        rule: CidrRule {
            reason: reason as u32,
            rule_index,
            rule_id,
            port: 0,
            _reserved: [0; 3],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySource;

    fn compile(text: &str, system: Vec<IpAddr>) -> CompiledPolicy {
        let policy = Policy::from_toml(text, &PolicySource::Embedded).unwrap();
        CompiledPolicy::new(&policy, || system)
    }

    #[test]
    fn image_access_sends_docker_hub_through_the_gate() {
        let text = "[registry_access]\nallow = [\"docker.io\", \"*.docker.io\", \"ghcr.io\"]\n\
                    allow_loopback = false\n[image_access]\nenabled = true\ngate = \"127.0.0.1:599\"\n";
        let compiled = compile(text, vec![]);
        // Every Docker Hub host is withheld, whatever entry named it; other registries stay.
        assert!(
            compiled
                .withheld_for_gate
                .iter()
                .any(|w| w.ends_with("auth.docker.io"))
        );
        assert!(
            compiled
                .withheld_for_gate
                .contains(&"*.docker.io".to_string())
        );
        let names: Vec<&String> = compiled
            .names
            .iter()
            .map(|n| &compiled.rules[&n.rule.rule_id])
            .collect();
        assert!(names.iter().all(|n| n.starts_with("ghcr.io")), "{names:?}");
        // The gate's own entry: its address, its port only.
        let gate = compiled
            .cidrs
            .iter()
            .find(|c| c.rule.reason == Reason::AllowedImageGate as u32)
            .expect("the gate has an entry");
        assert_eq!(gate.prefix_len, 128);
        assert_eq!(&gate.addr[12..], &[127, 0, 0, 1]);
        assert_eq!(gate.rule.port, 599);

        // Loopback allowed on every port already covers the gate: no narrower entry.
        let covered = compile(&text.replace("allow_loopback = false", ""), vec![]);
        assert!(
            !covered
                .cidrs
                .iter()
                .any(|c| c.rule.reason == Reason::AllowedImageGate as u32)
        );
        // Image access off: Docker Hub is an ordinary allowed registry.
        let off = compile(&text.replace("enabled = true", "enabled = false"), vec![]);
        assert!(off.withheld_for_gate.is_empty());
        assert!(off.cidrs.is_empty());
    }

    #[test]
    fn ipv4_is_stored_mapped_with_shifted_prefix() {
        let compiled = compile(
            "[registry_access]\nallow_cidrs = [\"198.51.100.0/24\", \"2001:db8::/32\"]\nallow_loopback = false",
            vec![],
        );
        assert_eq!(compiled.cidrs.len(), 2);
        let v4 = compiled.cidrs[0];
        assert_eq!(v4.prefix_len, 120);
        assert_eq!(&v4.addr[10..], &[0xff, 0xff, 198, 51, 100, 0]);
        assert_eq!(v4.rule.rule_index, 0);
        assert_eq!(compiled.cidrs[1].prefix_len, 32);
        assert_eq!(compiled.cidrs[1].rule.rule_index, 1);
    }

    #[test]
    fn loopback_entries_follow_the_switch() {
        let on = compile("", vec![]);
        assert_eq!(on.cidrs.len(), LOOPBACK_CIDRS.len());
        assert!(
            on.cidrs
                .iter()
                .all(|c| c.rule.reason == Reason::AllowedLoopback as u32)
        );
        let off = compile("[registry_access]\nallow_loopback = false", vec![]);
        assert!(off.cidrs.is_empty());
    }

    #[test]
    fn name_keys_are_reversed_with_terminator_or_dot() {
        let compiled = compile(
            "[registry_access]\nallow = [\"Example.ORG\", \"*.example.com\"]",
            vec![],
        );
        let exact = &compiled.names[0];
        assert_eq!(&exact.key[..12], b"gro.elpmaxe\0");
        assert_eq!(exact.prefix_len, 96);
        let wildcard = &compiled.names[1];
        assert_eq!(&wildcard.key[..12], b"moc.elpmaxe.");
        assert_eq!(wildcard.prefix_len, 96);
        assert_eq!(wildcard.rule.rule_index, 1);
    }

    #[test]
    fn dns_config_in_nanoseconds() {
        let compiled = compile(
            "[dns]\nmin_ttl = 2\nmax_ttl = 3\ngrace_period = 4\nmax_learned = 100",
            vec![],
        );
        assert_eq!(compiled.config.min_ttl_ns, 2_000_000_000);
        assert_eq!(compiled.config.max_ttl_ns, 3_000_000_000);
        assert_eq!(compiled.config.grace_ns, 4_000_000_000);
        assert_eq!(compiled.max_learned, 100);
        assert_eq!(compiled.config.audit_allowed, AUDIT_ALLOWED_FIRST);
        assert_eq!(compiled.config.allowed_window_ns, 600_000_000_000);
    }

    #[test]
    fn registry_presets_expand_with_the_entry_index() {
        let compiled = compile(
            "[registry_access]\nallow = [\"nexus.corp:8443\", \"ghcr.io\"]",
            vec![],
        );
        assert_eq!(compiled.names.len(), 3, "nexus, ghcr.io and its blob host");
        assert!(compiled.names[1..].iter().all(|n| n.rule.rule_index == 1));
        let blob = &compiled.names[2];
        assert_eq!(
            compiled.rules[&blob.rule.rule_id],
            "ghcr.io → pkg-containers.githubusercontent.com"
        );
        assert_eq!(
            compiled.rules[&compiled.names[0].rule.rule_id],
            "nexus.corp:8443"
        );
        assert_eq!(&compiled.names[0].key[..11], b"proc.suxen\0");
    }

    #[test]
    fn rule_ids_name_entries_across_versions() {
        let old = compile(
            "[registry_access]\nallow = [\"a.example\", \"*.b.example\"]\nallow_cidrs = [\"10.0.0.0/8\"]",
            vec![],
        );
        let new = compile(
            "[registry_access]\nallow = [\"*.b.example\"]\nallow_cidrs = [\"10.0.0.0/8\"]\n[audit]\nallowed = \"all\"",
            vec![],
        );
        // Same text, same id, whatever the index.
        assert_eq!(old.names[1].rule.rule_id, new.names[0].rule.rule_id);
        assert_ne!(old.names[0].rule.rule_id, old.names[1].rule.rule_id);
        assert_eq!(old.rules[&old.names[0].rule.rule_id], "a.example");
        assert_eq!(
            new.rules[&new.cidrs.last().unwrap().rule.rule_id],
            "10.0.0.0/8"
        );
        assert_eq!(new.config.audit_allowed, AUDIT_ALLOWED_ALL);
        // A hostname and a CIDR with the same text are different rules.
        assert_ne!(rule_id("allow", "x"), rule_id("cidr", "x"));
    }

    #[test]
    fn resolvers_come_from_policy_or_system() {
        let system: Vec<IpAddr> = vec!["192.0.2.53".parse().unwrap()];
        let from_system = compile("", system.clone());
        assert_eq!(from_system.resolvers, system);
        assert_eq!(from_system.resolver_origin, ResolverOrigin::ResolvConf);
        let from_policy = compile("[dns]\nresolvers = [\"2001:db8::53\"]", system);
        assert_eq!(from_policy.resolver_origin, ResolverOrigin::Policy);
        let entries = from_policy.resolver_entries();
        assert_eq!(
            entries[0].0,
            "2001:db8::53"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
