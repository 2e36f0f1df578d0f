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
}
