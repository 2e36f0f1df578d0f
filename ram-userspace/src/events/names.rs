//! Names for readers of logs: which hostname an address was answered for, and which policy
//! entry a rule id stands for. The kernel decides with ids and addresses; these only explain.

use std::{collections::HashMap, net::IpAddr};

/// What the daemon knows of an address from the DNS answers it saw.
#[derive(Debug, Clone)]
pub struct SeenAddress {
    pub hostname: String,
    /// The cgroup whose answer could not be learned because LEARNED was full.
    pub map_full_in: Option<u64>,
    /// From an answer to an allowed name (not one only reported for naming).
    pub from_allowed: bool,
    /// Every allowed name whose answer gave this address (oldest first, at most eight): filled
    /// in by [`Hostnames::note`].
    pub taught_by: Vec<String>,
}

/// Bounded memory of hostnames per address (forgotten wholesale when full: it only names
/// addresses in logs, the kernel decides).
#[derive(Default)]
pub struct Hostnames {
    by_addr: HashMap<IpAddr, SeenAddress>,
}

impl Hostnames {
    const MAX: usize = 65_536;

    /// Names kept per address: the allowed names whose answers gave it (a shared CDN front
    /// end answers for several registries).
    const NAMES_MAX: usize = 8;

    pub fn note(&mut self, addr: IpAddr, seen: SeenAddress) {
        if self.by_addr.len() >= Self::MAX {
            self.by_addr.clear();
        }
        let mut taught_by = Vec::new();
        if let Some(previous) = self.by_addr.get(&addr) {
            taught_by.clone_from(&previous.taught_by);
        }
        if seen.from_allowed {
            taught_by.retain(|name| *name != seen.hostname);
            taught_by.push(seen.hostname.clone());
            if taught_by.len() > Self::NAMES_MAX {
                taught_by.remove(0);
            }
        }
        self.by_addr.insert(addr, SeenAddress { taught_by, ..seen });
    }

    pub fn get(&self, addr: &IpAddr) -> Option<&SeenAddress> {
        self.by_addr.get(addr)
    }
}

/// Rule id → the policy entry's text, for the policy in force and the one before it (ids are
/// stable across policies, so events from just before a reload still find their rule).
#[derive(Debug, Default, Clone)]
pub struct RuleNames {
    by_id: HashMap<u64, String>,
}

impl RuleNames {
    pub fn new(current: &HashMap<u64, String>) -> Self {
        Self {
            by_id: current.clone(),
        }
    }

    /// After a reload: the new policy's rules, and the previous policy's for late events.
    pub fn replace(&mut self, new: &HashMap<u64, String>, previous: &HashMap<u64, String>) {
        let mut by_id = new.clone();
        for (id, text) in previous {
            by_id.entry(*id).or_insert_with(|| text.clone());
        }
        self.by_id = by_id;
    }

    /// The entry's text; `None` for id 0 (no rule), `#<id>` for an id no policy here knows.
    pub fn text(&self, rule_id: u64) -> Option<String> {
        (rule_id != 0).then(|| {
            self.by_id
                .get(&rule_id)
                .cloned()
                .unwrap_or_else(|| format!("#{rule_id:016x}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(name: &str, from_allowed: bool) -> SeenAddress {
        SeenAddress {
            hostname: name.into(),
            map_full_in: None,
            from_allowed,
            taught_by: Vec::new(),
        }
    }

    #[test]
    fn an_address_keeps_every_allowed_name_that_taught_it() {
        let mut names = Hostnames::default();
        let addr: IpAddr = "198.51.100.7".parse().unwrap();
        names.note(addr, seen("ghcr.io", true));
        names.note(addr, seen("quay.io", true));
        names.note(addr, seen("ghcr.io", true));
        names.note(addr, seen("other.example", false));
        let got = names.get(&addr).unwrap();
        assert_eq!(got.taught_by, ["quay.io", "ghcr.io"]);
        assert_eq!(got.hostname, "other.example");
    }
}
