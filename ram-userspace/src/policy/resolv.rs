//! The nameservers of /etc/resolv.conf: the trusted resolvers when a policy names none.

use std::{net::IpAddr, path::Path};

pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// `nameserver` lines of a resolv.conf text, in order. Scope ids (`fe80::1%eth0`) are dropped;
/// lines that do not parse are skipped (as the C library does).
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            let addr = addr.split('%').next()?;
            addr.parse().ok()
        })
        .collect()
}

/// The search domains of a resolv.conf text: the last `search` or `domain` line wins, as in
/// the C library; lower case, without trailing dots, only valid names.
pub fn search_domains(text: &str) -> Vec<String> {
    let mut domains = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let keyword = words.next();
        if keyword == Some("search") || keyword == Some("domain") {
            domains = words
                .take_while(|word| !word.starts_with(['#', ';']))
                .filter_map(|word| word.parse::<super::HostPattern>().ok())
                .filter(|pattern| !pattern.wildcard && pattern.port.is_none() && !pattern.any_port)
                .map(|pattern| pattern.domain)
                .collect();
        }
    }
    domains
}

pub fn nameservers_from(path: &Path) -> std::io::Result<Vec<IpAddr>> {
    Ok(nameservers(&std::fs::read_to_string(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameserver_lines_only() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.53\nnameserver  fe80::1%eth0\n\
                    nameserver bogus\noptions edns0\n nameserver 2001:db8::53 # trailing\n";
        let expected: Vec<IpAddr> = vec![
            "10.0.0.53".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            "2001:db8::53".parse().unwrap(),
        ];
        assert_eq!(nameservers(text), expected);
    }

    #[test]
    fn search_domains_take_the_last_line() {
        let text = "domain old.example\nsearch Corp.Example. svc.cluster.local # comment\n";
        assert_eq!(search_domains(text), ["corp.example", "svc.cluster.local"]);
        assert!(search_domains("nameserver 10.0.0.53\n").is_empty());
    }
}
