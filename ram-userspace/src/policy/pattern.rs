//! The value types of policy entries: hostname patterns, address prefixes, resolvers.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// Why an entry of the policy is not a valid hostname, prefix or resolver (shown after the
/// entry's file, line and value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("port {0} is not a port number (1 to 65535)")]
    Port(String),
    #[error("empty hostname")]
    EmptyHostname,
    #[error("this is an IP address; list addresses in `allow_cidrs`")]
    AddressAsHostname,
    #[error("a registry is written `host` or `host:port`; IPv6 addresses belong in `allow_cidrs`")]
    Colon,
    #[error("`*` is allowed only as a whole first label (`*.example.com`), meaning any subdomain")]
    Star,
    #[error("hostname is {0} characters long; at most 253 are allowed")]
    NameTooLong(usize),
    #[error("empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("label `{0}` is {len} characters long; at most 63 are allowed", len = .0.len())]
    LabelTooLong(String),
    #[error(
        "character `{0}` is not allowed in a hostname (letters, digits and `-` only; write \
         internationalized names in their xn-- form)"
    )]
    Character(char),
    #[error("label `{0}` starts or ends with `-`")]
    Hyphen(String),
    #[error("the last label is all digits; list addresses in `allow_cidrs`")]
    NumericTld,
    #[error(
        "`*.{0}` would allow every name in a whole top-level domain; name the registry's own \
         domain (e.g. `*.{0}` → `*.example.{0}`)"
    )]
    WholeTld(String),
    #[error("prefix length {prefix_len} is larger than {max}, the size of an {family} address")]
    PrefixTooLong {
        prefix_len: u8,
        max: u8,
        family: &'static str,
    },
    #[error(
        "address has bits set beyond the /{prefix_len} prefix; did you mean \
         `{network}/{prefix_len}`?"
    )]
    HostBits { network: IpAddr, prefix_len: u8 },
    #[error("`{0}` is not an IPv4 or IPv6 address")]
    NotAnAddress(String),
    #[error("`{0}` is not a prefix length")]
    NotAPrefix(String),
    #[error("write an IPv4 or IPv6 address without a port (resolvers are used on port 53)")]
    ResolverAddress,
    #[error("not a unicast address")]
    NotUnicast,
    #[error("`{text}` is not a URL ({reason}); write it as https://registry.example.com")]
    NotAUrl { text: String, reason: String },
    #[error(
        "`{0}` must be a registry's base URL, http(s)://host[:port] with nothing after it (the \
         gate adds /v2/...)"
    )]
    NotABaseUrl(String),
}

/// A hostname pattern from `registry_access.allow`: `registry.example.com` (exactly that name)
/// or `*.example.com` (any name below example.com, at any depth, but not example.com itself).
/// Stored lower-case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// The name, or for a wildcard the domain after `*.`.
    pub domain: String,
    pub wildcard: bool,
    /// A registry's port as written (`nexus.corp:8443`): its learned addresses are allowed on
    /// that port only. Without one, on 443 and 80 ([`ram_common::DEFAULT_PORTS`]).
    pub port: Option<u16>,
    /// Written `host:*`: its learned addresses are allowed on every port.
    pub any_port: bool,
}

impl HostPattern {
    /// The ports its learned addresses are allowed on, as the kernel holds them.
    pub fn ports(&self) -> ram_common::Ports {
        match self.port {
            Some(port) => [port, 0, 0, 0],
            None if self.any_port => [0; 4],
            None => ram_common::DEFAULT_PORTS,
        }
    }

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
            None if self.any_port => f.write_str(":*"),
            None => Ok(()),
        }
    }
}

impl FromStr for HostPattern {
    type Err = EntryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // `registry.corp:5000`, as registries are named in image references; `host:*`: any port.
        let (text, any_port) = match text.strip_suffix(":*") {
            Some(host) if !host.contains(':') => (host, true),
            _ => (text, false),
        };
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
                    .ok_or_else(|| EntryError::Port(port.to_owned()))?;
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
            return Err(EntryError::EmptyHostname);
        }
        if name.parse::<IpAddr>().is_ok() {
            return Err(EntryError::AddressAsHostname);
        }
        if name.contains(':') {
            return Err(EntryError::Colon);
        }
        if name.contains('*') {
            return Err(EntryError::Star);
        }
        // RFC 1035: at most 253 characters in text form, labels of 1 to 63 characters.
        if name.len() > 253 {
            return Err(EntryError::NameTooLong(name.len()));
        }
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if label.is_empty() {
                return Err(EntryError::EmptyLabel);
            }
            if label.len() > 63 {
                return Err(EntryError::LabelTooLong(label.to_string()));
            }
            if let Some(bad) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(EntryError::Character(bad));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(EntryError::Hyphen(label.to_string()));
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(EntryError::NumericTld);
        }
        if wildcard && labels.len() < 2 {
            return Err(EntryError::WholeTld(name));
        }
        Ok(Self {
            domain: name,
            wildcard,
            port,
            any_port,
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
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, EntryError> {
        let max = max_prefix(addr);
        if prefix_len > max {
            return Err(EntryError::PrefixTooLong {
                prefix_len,
                max,
                family: if addr.is_ipv4() { "IPv4" } else { "IPv6" },
            });
        }
        let network = mask(addr, prefix_len);
        if network != addr {
            return Err(EntryError::HostBits {
                network,
                prefix_len,
            });
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
    type Err = EntryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| EntryError::NotAnAddress(addr_text.to_owned()))?;
        let prefix_len = match prefix_text {
            None => max_prefix(addr),
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|_| prefix.chars().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| EntryError::NotAPrefix(prefix.to_owned()))?,
        };
        Self::new(addr, prefix_len)
    }
}

/// A resolver address from `dns.resolvers` (no port: resolvers are reached on port 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResolverAddr(pub IpAddr);

impl FromStr for ResolverAddr {
    type Err = EntryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let addr: IpAddr = text.parse().map_err(|_| EntryError::ResolverAddress)?;
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(EntryError::NotUnicast);
        }
        Ok(Self(addr))
    }
}

impl fmt::Display for ResolverAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
