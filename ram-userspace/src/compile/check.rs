//! `ram check HOST`: whether the policy allows a hostname or an address, by which entry, and
//! how (a preset's expansion, a CIDR, loopback). Answers from the policy alone; the kernel's
//! learned addresses are `ram learned`'s.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::policy::{Cidr, Policy, presets};

/// The answer to `ram check HOST`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckAnswer {
    pub host: String,
    pub allowed: bool,
    /// The policy entry that allows it, and its kind (`allow`, `allow_cidrs`, `loopback`).
    pub rule: Option<String>,
    pub kind: Option<String>,
    pub rule_index: Option<usize>,
    /// For a hostname: how its addresses get allowed; for an address: why or why not.
    pub explanation: String,
    /// For an allowed hostname: the ports its addresses are allowed on (empty: every port).
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// Whether the policy in force allows `host` (a hostname or an address), and by which entry.
pub fn check_host(policy: &Policy, host: &str) -> CheckAnswer {
    let access = &policy.registry_access;
    let answer =
        |allowed, rule: Option<String>, kind: Option<&str>, index, explanation| CheckAnswer {
            host: host.to_owned(),
            allowed,
            rule,
            kind: kind.map(str::to_owned),
            rule_index: index,
            explanation,
            ports: Vec::new(),
        };
    if let Ok(addr) = host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        if access.allow_loopback {
            for text in super::LOOPBACK_CIDRS {
                let cidr: Cidr = text.parse().expect("built-in CIDRs are valid");
                if cidr.contains(addr) {
                    return answer(
                        true,
                        Some(text.to_owned()),
                        Some("loopback"),
                        None,
                        "allow_loopback is on".into(),
                    );
                }
            }
        }
        if let Some((index, cidr)) = access
            .allow_cidrs
            .iter()
            .enumerate()
            .find(|(_, c)| c.contains(addr))
        {
            return answer(
                true,
                Some(cidr.to_string()),
                Some("allow_cidrs"),
                Some(index),
                "allowed on every port, no DNS involved".into(),
            );
        }
        return answer(
            false,
            None,
            None,
            None,
            "no allow_cidrs entry covers it; it is reachable only while learned from a DNS \
             answer to an allowed hostname (see `ram learned`)"
                .into(),
        );
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    // A bare registry name as written in image references may carry a port.
    let name = match name.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_owned(),
        _ => name,
    };
    let found = access
        .allow
        .iter()
        .enumerate()
        .find_map(|(index, pattern)| {
            let expansion = presets::expand(pattern);
            let hosts = match &expansion {
                Some(e) => e.hosts.clone(),
                None => vec![pattern.clone()],
            };
            let host = hosts.into_iter().find(|h| h.matches(&name))?;
            Some((index, pattern, host, expansion))
        });
    match found {
        Some((index, pattern, host, expansion)) => {
            let ports = super::rule_ports(&host, expansion.as_ref().map(|e| e.ports));
            let on = super::ports_text(&ports);
            let mut found = answer(
                true,
                Some(pattern.to_string()),
                Some("allow"),
                Some(index),
                match expansion {
                    Some(expansion) => format!(
                        "preset {} ({}) stands for {}; `{host}` matches; its addresses are \
                     allowed on {on} once a trusted resolver answers for it",
                        expansion.preset,
                        pattern,
                        expansion
                            .hosts
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => format!(
                        "its addresses are allowed on {on} once a trusted resolver answers for it"
                    ),
                },
            );
            found.ports = ports.iter().copied().filter(|p| *p != 0).collect();
            found
        }
        None => answer(
            false,
            None,
            None,
            None,
            "no registry_access.allow entry matches it".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySource;

    fn policy(text: &str) -> Policy {
        Policy::from_toml(text, &PolicySource::Embedded).unwrap()
    }

    #[test]
    fn check_names_the_entry() {
        let policy = policy(
            "[registry_access]\nallow = [\"ghcr.io\", \"*.example.com\"]\nallow_cidrs = \
             [\"10.1.0.0/16\"]",
        );
        let yes = check_host(&policy, "Registry.Example.com.");
        assert!(yes.allowed);
        assert_eq!(yes.rule.as_deref(), Some("*.example.com"));
        assert_eq!(yes.rule_index, Some(1));
        assert!(!check_host(&policy, "example.com").allowed);
        let cidr = check_host(&policy, "10.1.2.3");
        assert_eq!(
            (cidr.allowed, cidr.kind.as_deref()),
            (true, Some("allow_cidrs"))
        );
        assert_eq!(
            check_host(&policy, "127.0.0.1").kind.as_deref(),
            Some("loopback")
        );
        assert!(!check_host(&policy, "[2001:db8::1]").allowed);
        // The preset shows its expansion.
        let blob = check_host(&policy, "pkg-containers.githubusercontent.com");
        assert!(blob.allowed, "{blob:?}");
        assert_eq!(blob.rule.as_deref(), Some("ghcr.io"));
        assert!(
            blob.explanation.contains("GitHub Container Registry"),
            "{}",
            blob.explanation
        );
        assert!(check_host(&policy, "ghcr.io:443").allowed);
    }
}
