//! The socket gate: a cgroup sock_create program, so that an enforced cgroup makes only the
//! sockets the connect/sendmsg gates judge — TCP and UDP over IPv4 and IPv6. Every other
//! AF_INET/AF_INET6 socket never passes those hooks, or is not shown to: raw sockets (which
//! write their own headers), SCTP, DCCP and L2TP over IP (their connects and sends run no
//! cgroup hook), ICMP ping sockets (unless the policy allows ping), MPTCP and UDP-Lite. Asking for one fails at once with
//! EPERM, and is reported.
//!
//! The hook runs in `inet_create`/`inet6_create` only: packet sockets (`AF_PACKET`) and the
//! other families are refused by `family_gate`, a BPF LSM program, where the kernel has it
//! (see docs/limits.md). Netlink and Unix sockets are not network traffic.
//!
//! `sockopt_gate` (cgroup setsockopt) refuses the options that send a packet elsewhere than
//! the address a gate judged: IPv4 source routes (`IP_OPTIONS`, whatever options they hold:
//! none is needed by a registry client) and IPv6 routing headers (`IPV6_RTHDR`). The same
//! sent per packet as control messages is dropped by `dns_query_out` (see dns.rs).

use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id,
    macros::{cgroup_sock, cgroup_sockopt, lsm_cgroup},
    programs::{LsmContext, SockContext, SockoptContext},
};
use ram_common::{
    BUILTIN_RULE, Counter, FLAG_PING, FLAG_TLS_AUDIT, FLAG_TLS_ENFORCE, Hook, Reason, TLS_MARK,
};

use crate::{
    Policy, count,
    gate::{IPPROTO_ICMP, IPPROTO_ICMPV6, SocketKind, Verdict, report},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[cgroup_sock(sock_create)]
pub fn socket_gate(ctx: SockContext) -> i32 {
    // SAFETY: `ctx.sock` is the kernel's bpf_sock of the socket being created: not null, valid
    // for the whole run, and only read; the verifier checks each load against the hook.
    let sock = unsafe { &*ctx.sock };
    let (family, kind, protocol) = (sock.family, sock.type_, sock.protocol);
    // inet_create has resolved protocol 0 to the type's default before this hook runs.
    let judged = (kind == SOCK_STREAM && protocol == IPPROTO_TCP)
        || (kind == SOCK_DGRAM && protocol == IPPROTO_UDP);
    if judged {
        return ALLOW;
    }
    // Ping sockets when the policy allows ping: their connects run the connect gates, and
    // every packet they send is judged by the egress backstop (`egress`), sends included.
    let ping = kind == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6);
    if ping && Policy::in_force().is_some_and(|policy| policy.config.flags & FLAG_PING != 0) {
        return ALLOW;
    }
    refuse(family, kind, protocol)
}

const AF_UNIX: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const AF_NETLINK: i32 = 16;
const AF_ALG: i32 = 38;
const AF_VSOCK: i32 = 40;

/// The BPF LSM hook `socket_create` on enforced cgroups (Linux 6.0+, with `bpf` among the
/// active LSMs): the families `socket_gate` never sees. Packet sockets (`AF_PACKET`, raw
/// frames on any interface: Docker gives every container CAP_NET_RAW), AF_XDP, and families
/// whose kernel side sends over sockets of its own that no cgroup hook judges (SMC, RxRPC,
/// TIPC, RDS, KCM, ...) fail with EPERM and are reported. Left alone: Unix and netlink
/// (local), AF_INET/AF_INET6 (judged by `socket_gate` and the gates), AF_ALG (the kernel's
/// crypto API), and AF_VSOCK (the VM's host: WSL 2's interop with Windows; see
/// docs/limits.md). Sockets the kernel makes for itself (`kern`) are not judged.
#[lsm_cgroup(hook = "socket_create")]
pub fn family_gate(ctx: LsmContext) -> i32 {
    // socket_create(int family, int type, int protocol, int kern).
    let (family, kind, protocol, kern): (i32, i32, i32, i32) =
        (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    if kern != 0
        || matches!(
            family,
            AF_UNIX | AF_INET | AF_INET6 | AF_NETLINK | AF_ALG | AF_VSOCK
        )
    {
        return ALLOW;
    }
    // The type without SOCK_NONBLOCK/SOCK_CLOEXEC.
    refuse(family as u32, (kind & 0xf) as u32, protocol as u32)
}

/// Refuses a socket (EPERM), counted and reported with what was asked for.
#[inline(always)]
fn refuse(family: u32, kind: u32, protocol: u32) -> i32 {
    count(Counter::DeniedSocket);
    let verdict = Verdict {
        // SAFETY: no arguments; the calling task's cgroup.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        addr: [0; 16],
        port: 0,
        hook: Hook::SocketCreate,
        reason: Reason::SocketType,
        rule_index: BUILTIN_RULE,
        rule_id: 0,
        protocol,
        socket: SocketKind {
            family: family as u16,
            kind: kind as u16,
            protocol: protocol as u16,
        },
    };
    report(&verdict, 0);
    DENY
}

const SOL_IP: i32 = 0;
const IP_OPTIONS: i32 = 4;
const SOL_IPV6: i32 = 41;
/// IPv6 options that add extension headers to every packet a socket sends: a routing header,
/// or options headers it could hide behind. (RFC 2292's 3, 4 and 5 only ask to receive
/// headers; its `IPV6_2292PKTOPTIONS`, 6, sets them all.)
const IPV6_2292PKTOPTIONS: i32 = 6;
const IPV6_HOPOPTS: i32 = 54;
const IPV6_RTHDRDSTOPTS: i32 = 55;
const IPV6_RTHDR: i32 = 57;
const IPV6_DSTOPTS: i32 = 59;

#[cgroup_sockopt(setsockopt)]
pub fn sockopt_gate(ctx: SockoptContext) -> i32 {
    // SAFETY: `ctx.sockopt` is the kernel's bpf_sockopt of this setsockopt call: not null,
    // valid for the whole run, and only read.
    let sockopt = unsafe { &*ctx.sockopt };
    let (level, optname) = (sockopt.level, sockopt.optname);
    // Clearing the options (an empty value) stays allowed.
    // Clearing one (an empty value) stays allowed, as for IP_OPTIONS.
    let ipv6_extension = level == SOL_IPV6
        && sockopt.optlen > 0
        && (optname == IPV6_2292PKTOPTIONS
            || optname == IPV6_HOPOPTS
            || optname == IPV6_RTHDRDSTOPTS
            || optname == IPV6_RTHDR
            || optname == IPV6_DSTOPTS);
    let redirects =
        (level == SOL_IP && optname == IP_OPTIONS && sockopt.optlen > 0) || ipv6_extension;
    if redirects {
        // Counted, not reported: setsockopt programs on older kernels (5.10) may not name the
        // process, and the caller sees EPERM at once.
        count(Counter::RedirectRefused);
        return DENY;
    }
    if tls_judgement_evaded(sockopt) {
        count(Counter::TlsRefused);
        return DENY;
    }
    ALLOW
}

const SOL_SOCKET: i32 = 1;
const SO_MARK: i32 = 36;
const SO_ZEROCOPY: i32 = 60;
const SOL_TCP: i32 = 6;
const TCP_FASTOPEN_CONNECT: i32 = 30;
const TCP_FASTOPEN_NO_COOKIE: i32 = 34;
const TCP_ULP: i32 = 31;

/// Options that would let data leave unjudged where `registry_access.tls` judges it: a new
/// mark on a socket the gates marked (the egress check finds such sockets by their mark),
/// TCP Fast Open's connect-time options (data would go out with the SYN, before the hello check
/// can see it; `MSG_FASTOPEN` data is dropped at egress and poisons the connection instead),
/// upper-layer protocols (`TCP_ULP`: kernel TLS would encrypt after the hello check), and
/// zero-copy sends (`SO_ZEROCOPY`: the sender could change pages after they were judged).
#[inline(always)]
fn tls_judgement_evaded(sockopt: &aya_ebpf::bindings::bpf_sockopt) -> bool {
    let (level, optname) = (sockopt.level, sockopt.optname);
    let relevant = (level == SOL_SOCKET && (optname == SO_MARK || optname == SO_ZEROCOPY))
        || (level == SOL_TCP
            && (optname == TCP_FASTOPEN_CONNECT
                || optname == TCP_FASTOPEN_NO_COOKIE
                || optname == TCP_ULP));
    if !relevant {
        return false;
    }
    let tls = Policy::in_force()
        .is_some_and(|policy| policy.config.flags & (FLAG_TLS_ENFORCE | FLAG_TLS_AUDIT) != 0);
    if !tls {
        return false;
    }
    if level == SOL_TCP || optname == SO_ZEROCOPY {
        return true;
    }
    // SAFETY: `sk` of a sockopt context is the socket of the call, never null there.
    let mark = unsafe { (*sockopt.__bindgen_anon_1.sk).mark };
    mark & TLS_MARK != 0
}
