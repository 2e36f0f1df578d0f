//! Turns a validated [`Policy`] into the entries of the kernel maps.

use std::net::IpAddr;

use ram_common::{Addr16, BUILTIN_RULE, CidrRule, Reason, ResolverRule};

use crate::policy::{Cidr, Policy, to_v6};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub cidrs: Vec<CidrEntry>,
    pub resolvers: Vec<IpAddr>,
    pub resolver_origin: ResolverOrigin,
}

impl CompiledPolicy {
    /// `system_resolvers` supplies the nameservers of /etc/resolv.conf; it is called only when
    /// the policy has no `dns.resolvers`.
    pub fn new(policy: &Policy, system_resolvers: impl FnOnce() -> Vec<IpAddr>) -> Self {
        let access = &policy.registry_access;
        let mut cidrs = Vec::new();
        if access.allow_loopback {
            for text in LOOPBACK_CIDRS {
                let cidr: Cidr = text.parse().expect("built-in CIDRs are valid");
                cidrs.push(entry(&cidr, Reason::AllowedLoopback, BUILTIN_RULE));
            }
        }
        for (index, cidr) in access.allow_cidrs.iter().enumerate() {
            cidrs.push(entry(cidr, Reason::AllowedCidr, index as u32));
        }
        let (resolvers, resolver_origin) = match &policy.dns.resolvers {
            Some(list) => (list.iter().map(|r| r.0).collect(), ResolverOrigin::Policy),
            None => (system_resolvers(), ResolverOrigin::ResolvConf),
        };
        Self {
            cidrs,
            resolvers,
            resolver_origin,
        }
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
                    },
                )
            })
            .collect()
    }
}

fn entry(cidr: &Cidr, reason: Reason, rule_index: u32) -> CidrEntry {
    CidrEntry {
        addr: to_v6(cidr.addr).octets(),
        prefix_len: u32::from(cidr.prefix_len_v6()),
        rule: CidrRule {
            reason: reason as u32,
            rule_index,
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
