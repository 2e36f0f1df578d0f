//! Types shared by the eBPF programs (`ram-ebpf`) and the daemon (`ram-userspace`).
//!
//! Rules for everything in this crate (they keep the two sides byte-compatible):
//! - `#[repr(C)]`, `Copy`, explicit `_reserved` padding, no `bool`/`Option`/enums inside structs
//!   (their bit patterns are not checked when the kernel hands bytes back).
//! - Addresses are 16 bytes, IPv4 stored in its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`). One
//!   representation means one map and one lookup per hook, and an AF_INET6 socket connecting to
//!   `::ffff:a.b.c.d` is judged exactly like an AF_INET socket connecting to `a.b.c.d`.
//! - Map names are the statics' names in `ram-ebpf` (the kernel keeps the first 15 bytes).
#![no_std]

/// An IPv6 address, or an IPv4 address in IPv4-mapped form, in network byte order.
pub type Addr16 = [u8; 16];

/// The 12-byte prefix of IPv4-mapped addresses (`::ffff:0:0/96`).
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// `a.b.c.d` (network order octets) as `::ffff:a.b.c.d`.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> Addr16 {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

pub mod maps {
    //! Map names, sizes, keys and values. Each entry says who writes the map and who reads it.

    /// `LpmTrie<LpmKey<Addr16>, CidrRule>`: destinations allowed on any port.
    /// Written by the daemon from `allow_cidrs` and `allow_loopback` before any program is
    /// attached; read by every `*_gate` program. IPv4 prefixes are stored mapped (`96 + len`).
    pub const ALLOWED_CIDRS: &str = "ALLOWED_CIDRS";
    /// Upper bound for [`ALLOWED_CIDRS`]; the daemon sizes the map to the policy at load time.
    pub const ALLOWED_CIDRS_MAX: u32 = 16_384;

    /// `HashMap<Addr16, ResolverRule>`: trusted DNS resolvers, reachable on port 53 only.
    /// Written by the daemon from `dns.resolvers`; read by every `*_gate` program.
    pub const RESOLVERS: &str = "RESOLVERS";
    /// Upper bound for [`RESOLVERS`] (resolv.conf allows 3; a policy may list a few more).
    pub const RESOLVERS_MAX: u32 = 64;

    /// `PerCpuArray<u64>` indexed by [`crate::Counter`]. Written by the programs; summed and read
    /// by the daemon (and its tests).
    pub const COUNTERS: &str = "COUNTERS";

    /// `RingBuf` of [`crate::GateEvent`]. Written by the programs on every denial; read by the
    /// daemon, which writes the audit log. A full buffer is counted in
    /// [`crate::Counter::EventsDropped`], never silent.
    pub const GATE_EVENTS: &str = "GATE_EVENTS";
    /// Bytes in [`GATE_EVENTS`]: 256 KiB holds ~2,900 events, several seconds of a process
    /// hammering a denied address between two reads by the daemon.
    pub const GATE_EVENTS_BYTES: u32 = 256 * 1024;
}

/// Why an address is in [`maps::ALLOWED_CIDRS`]. Value of that map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidrRule {
    /// One of the `Reason::Allowed*` values, as `u32`.
    pub reason: u32,
    /// Index of the policy entry (in `allow_cidrs`) this came from; `u32::MAX` for built-ins
    /// such as loopback. Lets the audit log name the entry that matched.
    pub rule_index: u32,
}

/// Value of [`maps::RESOLVERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolverRule {
    /// Index in `dns.resolvers` (or in /etc/resolv.conf's nameservers when the policy has none).
    pub rule_index: u32,
    pub _reserved: u32,
}

/// Rule index for entries that no policy line produced (loopback).
pub const BUILTIN_RULE: u32 = u32::MAX;

/// Why a connection was allowed or denied. Stored as `u8` in [`GateEvent::reason`] and as `u32`
/// in [`CidrRule::reason`]; the numbers are part of the kernel/user contract: do not renumber.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Destination not covered by any allow rule.
    NotAllowed = 1,
    /// Covered by an `allow_cidrs` entry.
    AllowedCidr = 2,
    /// Loopback (or the unspecified address, which Linux connects to loopback).
    AllowedLoopback = 3,
    /// A configured resolver on port 53.
    AllowedResolver = 4,
}

impl Reason {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::NotAllowed),
            2 => Some(Self::AllowedCidr),
            3 => Some(Self::AllowedLoopback),
            4 => Some(Self::AllowedResolver),
            _ => None,
        }
    }

    /// The name used in logs and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotAllowed => "not_allowed",
            Self::AllowedCidr => "cidr",
            Self::AllowedLoopback => "loopback",
            Self::AllowedResolver => "resolver",
        }
    }
}

/// Indexes of [`maps::COUNTERS`]. Do not renumber (the daemon reads them by index).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    AllowedCidr = 0,
    AllowedLoopback = 1,
    AllowedResolver = 2,
    Denied = 3,
    /// Denials whose event did not fit into [`maps::GATE_EVENTS`].
    EventsDropped = 4,
}

impl Counter {
    pub const COUNT: u32 = 5;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::AllowedCidr,
        Self::AllowedLoopback,
        Self::AllowedResolver,
        Self::Denied,
        Self::EventsDropped,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AllowedCidr => "allowed_cidr",
            Self::AllowedLoopback => "allowed_loopback",
            Self::AllowedResolver => "allowed_resolver",
            Self::Denied => "denied",
            Self::EventsDropped => "events_dropped",
        }
    }
}

/// The hook that judged a connection. Stored as `u8` in [`GateEvent::hook`]; do not renumber.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 1,
    Connect6 = 2,
    Sendmsg4 = 3,
    Sendmsg6 = 4,
}

impl Hook {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Connect4),
            2 => Some(Self::Connect6),
            3 => Some(Self::Sendmsg4),
            4 => Some(Self::Sendmsg6),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
        }
    }
}

/// One decision, sent by a `*_gate` program through [`maps::GATE_EVENTS`] to the daemon.
/// 80 bytes; field offsets are part of the contract (append, never reorder).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GateEvent {
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included.
    pub boot_ns: u64,
    /// cgroup v2 id (the cgroup directory's inode number) of the calling task.
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid()`: tgid (process id) in the upper 32 bits, thread id below.
    pub pid_tgid: u64,
    /// `bpf_get_current_uid_gid()`: gid in the upper 32 bits, uid below.
    pub uid_gid: u64,
    /// Task name, NUL-padded.
    pub comm: [u8; 16],
    /// Destination, see [`Addr16`].
    pub addr: Addr16,
    /// Destination port, host byte order.
    pub port: u16,
    /// [`Hook`] as `u8`.
    pub hook: u8,
    /// [`Reason`] as `u8`.
    pub reason: u8,
    /// 1 allowed, 0 denied.
    pub verdict: u8,
    /// IPPROTO_TCP / IPPROTO_UDP / ... of the socket.
    pub protocol: u8,
    pub _reserved: [u8; 2],
    /// Index of the policy entry that matched, [`BUILTIN_RULE`] when none did.
    pub rule_index: u32,
    pub _reserved2: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all plain-old-data, `repr(C)`, every bit pattern valid.
    unsafe impl aya::Pod for super::CidrRule {}
    unsafe impl aya::Pod for super::ResolverRule {}
    unsafe impl aya::Pod for super::GateEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_stable() {
        assert_eq!(core::mem::size_of::<GateEvent>(), 80);
        assert_eq!(core::mem::size_of::<CidrRule>(), 8);
        assert_eq!(core::mem::size_of::<ResolverRule>(), 8);
    }

    #[test]
    fn v4_mapped_places_octets_last() {
        let mapped = v4_mapped([192, 0, 2, 7]);
        assert_eq!(&mapped[..12], &V4_MAPPED_PREFIX);
        assert_eq!(&mapped[12..], &[192, 0, 2, 7]);
    }

    #[test]
    fn enums_round_trip() {
        for reason in [
            Reason::NotAllowed,
            Reason::AllowedCidr,
            Reason::AllowedLoopback,
            Reason::AllowedResolver,
        ] {
            assert_eq!(Reason::from_u8(reason as u8), Some(reason));
        }
        for hook in [
            Hook::Connect4,
            Hook::Connect6,
            Hook::Sendmsg4,
            Hook::Sendmsg6,
        ] {
            assert_eq!(Hook::from_u8(hook as u8), Some(hook));
        }
        assert_eq!(Counter::ALL.len() as u32, Counter::COUNT);
    }
}
