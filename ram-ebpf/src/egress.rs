//! The packet-level backstop, run by `dns_query_out` (cgroup_skb egress) on every packet an
//! enforced socket sends, after the gates: a packet whose destination the policy does not
//! allow never leaves, whatever path it took.
//!
//! - TCP: its destination is fixed by the connect the gates judged (TCP Fast Open included),
//!   and packets carrying a source route are dropped before this. A packet with data of a
//!   socket marked for TLS judgement passes only once its hello was allowed (`tls.rs`).
//! - Connected UDP: sends without an address run no gate (only sends with control messages
//!   do), so the socket's peer — the address the application asked for, before any NAT — is
//!   judged here. The connect gates note what they allowed (`CONNECTED_UDP`), so a packet passes
//!   after one lookup; a socket connected before ram enforced its cgroup, or whose note the LRU
//!   forgot, is judged in full and noted.
//! - Unconnected UDP: every send ran `sendmsg4`/`sendmsg6`.
//! - ICMP: only ping sockets can send it (`socket_gate` refuses raw sockets), and only when the
//!   policy allows ping; their sends run no gate, so each packet's destination is judged.
//! - Port 53, under `dns.queries = "allowed"`: only a trusted resolver, for a socket the gates
//!   let through to one, as in the gates.

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use ram_common::{
    Addr16, BUILTIN_RULE, ConnectedDest, Counter, FLAG_PING, FLAG_QUERIES_ALLOWED, Hook, Reason,
    v4_mapped,
};

use crate::{
    CONNECTED_UDP, DNS_SOCKETS, Policy, count,
    gate::{
        IPPROTO_ICMP, IPPROTO_ICMPV6, Learned, SocketKind, Task, Verdict, cidr, learned,
        report_with,
    },
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const AF_INET: u32 = 2;
pub(crate) const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_JUMBO_OPTION: u8 = 0xc2;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_AH: u8 = 51;
const DNS_PORT: u16 = 53;

/// What the backstop needs from an outgoing packet's IP header, read with one load.
pub(crate) struct Outgoing {
    /// IPv4 options (a source route among them) or IPv6 extension headers that could hold or
    /// hide a routing header: the packet would go elsewhere than the address the gates judged.
    pub(crate) carries_a_route: bool,
    /// IPPROTO_* of the transport header (IPv6: the first next-header value).
    pub(crate) protocol: u8,
    pub(crate) destination: Addr16,
    /// Where the transport header starts.
    pub(crate) transport_offset: usize,
}

#[inline(always)]
pub(crate) fn outgoing(ctx: &SkBuffContext) -> Option<Outgoing> {
    match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let header: [u8; 20] = match direct::<20>(ctx) {
                Some(header) => header,
                None => ctx.load(0).ok()?,
            };
            Some(Outgoing {
                carries_a_route: header[0] & 0x0f > 5,
                protocol: header[9],
                destination: v4_mapped([header[16], header[17], header[18], header[19]]),
                transport_offset: ((header[0] & 0x0f) as usize) * 4,
            })
        }
        ETH_P_IPV6 => {
            let header: [u8; 40] = match direct::<40>(ctx) {
                Some(header) => header,
                None => ctx.load(0).ok()?,
            };
            let next = header[6];
            // A routing header may hide behind destination options or hop-by-hop options
            // (which a sender sets as control messages): any extension header before the
            // transport header is refused but a fragment header (large UDP datagrams; a
            // routing header always comes before it) and the hop-by-hop jumbo header of
            // BIG TCP (followed by TCP, whose sockets cannot set options).
            let route = match next {
                // Only BIG TCP's own: 8 bytes (length 0), the jumbo payload option (0xc2).
                IPV6_HOP_BY_HOP => !ctx
                    .load::<[u8; 3]>(40)
                    .is_ok_and(|hbh| hbh == [IPPROTO_TCP, 0, IPV6_JUMBO_OPTION]),
                // IPsec (ESP, AH) as the host's transforms make it: a routing header would
                // come before these.
                IPV6_FRAGMENT | IPPROTO_ESP | IPPROTO_AH => false,
                other => is_ipv6_extension(other),
            };
            let mut destination = [0u8; 16];
            destination.copy_from_slice(&header[24..40]);
            Some(Outgoing {
                carries_a_route: route,
                protocol: next,
                destination,
                // BIG TCP's jumbo header (8 bytes) is the one extension header let through
                // before TCP.
                transport_offset: if next == IPV6_HOP_BY_HOP { 48 } else { 40 },
            })
        }
        _ => None,
    }
}

/// The first `N` bytes of the packet (its IP header), read directly from the packet's linear
/// part: no helper call on the path every packet takes. `None` if they are not all there.
#[inline(always)]
fn direct<const N: usize>(ctx: &SkBuffContext) -> Option<[u8; N]> {
    let skb = ctx.skb.skb;
    // SAFETY: the program's __sk_buff; `data` and `data_end` read as the 32-bit fields the
    // verifier turns into packet pointers (cgroup_skb programs loaded with CAP_BPF), each with
    // a load of its own.
    let (data, data_end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*skb).data) as usize,
            core::ptr::read_volatile(&raw const (*skb).data_end) as usize,
        )
    };
    if data + N > data_end {
        return None;
    }
    // SAFETY: `data .. data + N` is inside the packet (checked against `data_end` above, the
    // check the verifier requires); any byte pattern is a valid [u8; N].
    Some(unsafe { core::ptr::read_unaligned(data as *const [u8; N]) })
}

/// IPv6 extension headers that may come before a transport header (hop-by-hop, routing,
/// fragment, ESP, AH, destination options, mobility, HIP, shim6).
#[inline(always)]
pub(crate) fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}

/// Whether the packet may leave (see the module's documentation). TCP never gets here.
#[inline(always)]
pub(crate) fn backstop_allows(ctx: &SkBuffContext, packet: &Outgoing) -> bool {
    match packet.protocol as u32 {
        p if p == IPPROTO_UDP as u32 => connected_udp_allowed(ctx),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => ping_allowed(ctx, packet),
        _ => true,
    }
}

/// The packet's socket's peer (address and port, host byte order; port 0 if unconnected): what
/// the application connected to, before any NAT.
#[inline(always)]
pub(crate) fn socket_peer(ctx: &SkBuffContext) -> (Addr16, u16) {
    // The socket's peer port, network byte order in the upper 16 bits; 0 if unconnected.
    let port = u32::from_be(ctx.skb.remote_port()) as u16;
    // Every field read whatever the family, each with its own load: the verifier refuses
    // a context load through a pointer the compiler computed for both branches.
    let skb = ctx.skb.skb;
    // SAFETY: the program's __sk_buff, valid for the run; volatile, so that each is one load
    // at a constant offset, which the verifier rewrites to the socket's fields.
    let (family, v4, words) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*skb).family),
            core::ptr::read_volatile(&raw const (*skb).remote_ip4),
            [
                core::ptr::read_volatile(&raw const (*skb).remote_ip6[0]),
                core::ptr::read_volatile(&raw const (*skb).remote_ip6[1]),
                core::ptr::read_volatile(&raw const (*skb).remote_ip6[2]),
                core::ptr::read_volatile(&raw const (*skb).remote_ip6[3]),
            ],
        )
    };
    let addr = if family == AF_INET {
        v4_mapped(v4.to_ne_bytes())
    } else {
        crate::gate::words_to_addr(words)
    };
    (addr, port)
}

#[inline(always)]
fn connected_udp_allowed(ctx: &SkBuffContext) -> bool {
    let (addr, port) = socket_peer(ctx);
    if port == 0 {
        return true;
    }
    // SAFETY: the program's context, the __sk_buff the skb form of the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast::<c_void>()) };
    // SAFETY: copied out at once; ConnectedDest is plain integers.
    if let Some(noted) = unsafe { CONNECTED_UDP.get(cookie) }
        && noted.addr == addr
        && noted.port == port
    {
        return true;
    }
    if !judged_allowed(ctx, addr, port, IPPROTO_UDP as u32, cookie) {
        return false;
    }
    let dest = ConnectedDest {
        addr,
        port,
        _reserved: [0; 6],
    };
    let _ = CONNECTED_UDP.insert(cookie, dest, 0);
    true
}

#[inline(always)]
fn ping_allowed(ctx: &SkBuffContext, packet: &Outgoing) -> bool {
    let ping = Policy::in_force().is_some_and(|policy| policy.config.flags & FLAG_PING != 0);
    // SAFETY: as in connected_udp_allowed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast::<c_void>()) };
    ping && judged_allowed(ctx, packet.destination, 0, packet.protocol as u32, cookie)
}

/// The gates' judgement of `addr:port` for this packet's socket, without the gates' context:
/// learned addresses of the socket's cgroup, trusted resolvers for a socket the gates let
/// through to one, allowed prefixes. A denial is counted and reported.
#[inline(always)]
fn judged_allowed(
    ctx: &SkBuffContext,
    addr: Addr16,
    port: u16,
    protocol: u32,
    cookie: u64,
) -> bool {
    // SAFETY: the program's context, the __sk_buff the helper takes.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let mut verdict = Verdict {
        cgroup_id,
        addr,
        port,
        hook: Hook::Egress,
        reason: Reason::NotLearned,
        rule_index: BUILTIN_RULE,
        rule_id: 0,
        protocol,
        socket: SocketKind::NONE,
    };
    if let Some(policy) = Policy::in_force() {
        let strict_dns = policy.config.flags & FLAG_QUERIES_ALLOWED != 0;
        if port == DNS_PORT && strict_dns {
            // As in the gates: port 53 reaches trusted resolvers only.
            // SAFETY: copied out at once; DnsSocket is plain integers.
            let trusted = unsafe { DNS_SOCKETS.get(cookie) }
                .is_some_and(|socket| policy.resolver_for(socket, addr).is_some());
            if !trusted {
                verdict.reason = Reason::ResolverNotTrusted;
                count(Counter::BackstopDropped);
                report_with(&verdict, 0, &owner(ctx));
                return false;
            }
            return true;
        }
        match learned(&policy, cgroup_id, addr, port, protocol) {
            Learned::Allowed(..) => return true,
            other => verdict.note(&other),
        }
        if port == DNS_PORT {
            // SAFETY: copied out at once; DnsSocket is plain integers.
            if let Some(socket) = unsafe { DNS_SOCKETS.get(cookie) }
                && policy.resolver_for(socket, addr).is_some()
            {
                return true;
            }
        }
        if cidr(&policy, addr, port).is_some() {
            return true;
        }
    }
    count(Counter::BackstopDropped);
    report_with(&verdict, 0, &owner(ctx));
    false
}

/// Who a packet's denial is about: the socket's owner (no task helpers here, see `Task`).
#[inline(always)]
fn owner(ctx: &SkBuffContext) -> Task {
    Task {
        pid_tgid: 0,
        uid_gid: ctx.get_socket_uid() as u64,
        comm: [0; 16],
    }
}
