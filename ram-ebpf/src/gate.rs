//! The gates: cgroup sock_addr programs that judge every connect and unconnected send.
//!
//! Which calls reach which hook (see docs/how-it-works.md):
//! - TCP connect, UDP connect, and TCP Fast Open (`sendto(MSG_FASTOPEN)` goes through
//!   `__inet_stream_connect`) → connect4/connect6.
//! - UDP `sendto`/`sendmsg` with a destination on an unconnected socket → sendmsg4/sendmsg6.
//!   Sends on a connected socket need no check: its connect was judged.
//! - An AF_INET6 socket addressing `::ffff:a.b.c.d` runs connect6 (TCP) or sendmsg4 (UDP, the
//!   kernel hands the send to udp_sendmsg); all maps hold IPv4 in that mapped form, so both
//!   judge it exactly as `a.b.c.d`.
//!
//! A program returns 1 to let the call proceed and 0 to make it fail with EPERM at once (no
//! packet is sent, so the caller never waits for a timeout).

use aya_ebpf::{
    bindings::bpf_sock_addr,
    cty::c_void,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use ram_common::{
    AUDIT_ALLOWED_ALL, AUDIT_ALLOWED_FIRST, Addr16, AuditSeenKey, BUILTIN_RULE, CidrRule,
    ConnectedDest, Counter, DnsSocket, FLAG_QUERIES_ALLOWED, FLAG_TLS_AUDIT, FLAG_TLS_ENFORCE,
    GateEvent, Hook, LearnedKey, Reason, ResolverRule, TlsNote, ports_allow, v4_mapped,
};

use crate::{
    AUDIT_SEEN, CONNECTED_UDP, DNS_SOCKETS, GATE_EVENTS, LEARNED, Policy, container_resolver,
    count, tls,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// The port that must carry TLS on a learned address (`registry_access.tls`).
const HTTPS_PORT: u16 = 443;
pub(crate) const IPPROTO_ICMP: u32 = 1;
pub(crate) const IPPROTO_ICMPV6: u32 = 58;

const DNS_PORT: u16 = 53;

#[cgroup_sock_addr(connect4)]
pub fn connect4_gate(ctx: SockAddrContext) -> i32 {
    // SAFETY: `ctx.sock_addr` is the kernel's bpf_sock_addr for this connect4 call: not null,
    // valid for the whole run, and only read; the verifier checks each load against the hook.
    let sock_addr = unsafe { &*ctx.sock_addr };
    let addr = ipv4_destination(sock_addr);
    let verdict = judge(&ctx, addr, user_port(sock_addr), Hook::Connect4);
    remember_connected(&ctx, sock_addr, addr, verdict);
    verdict
}

#[cgroup_sock_addr(connect6)]
pub fn connect6_gate(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4_gate: the kernel's bpf_sock_addr for this connect6 call, only read.
    let sock_addr = unsafe { &*ctx.sock_addr };
    let addr = ipv6_destination(sock_addr);
    let verdict = judge(&ctx, addr, user_port(sock_addr), Hook::Connect6);
    remember_connected(&ctx, sock_addr, addr, verdict);
    verdict
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4_gate(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4_gate: the kernel's bpf_sock_addr for this sendmsg4 call, only read.
    let sock_addr = unsafe { &*ctx.sock_addr };
    // A send on a connected socket with control messages runs this hook without an address
    // (0.0.0.0, port 0): the packet goes to the socket's peer, which is what is judged.
    if sock_addr.user_ip4 == 0 && sock_addr.user_port == 0 {
        // SAFETY: `sk` of a sock_addr context is the socket of the call, never null there.
        let sk = unsafe { &*sock_addr.__bindgen_anon_1.sk };
        let addr = v4_mapped(sk.dst_ip4.to_ne_bytes());
        return judge(&ctx, addr, u16::from_be(sk.dst_port), Hook::Sendmsg4);
    }
    judge(
        &ctx,
        ipv4_destination(sock_addr),
        user_port(sock_addr),
        Hook::Sendmsg4,
    )
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6_gate(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4_gate: the kernel's bpf_sock_addr for this sendmsg6 call, only read.
    let sock_addr = unsafe { &*ctx.sock_addr };
    let addr = ipv6_destination(sock_addr);
    // As in sendmsg4_gate: no address (`::`, port 0) means the connected peer.
    if addr == [0; 16] && sock_addr.user_port == 0 {
        // SAFETY: as in sendmsg4_gate.
        let sk = unsafe { &*sock_addr.__bindgen_anon_1.sk };
        let peer = words_to_addr([sk.dst_ip6[0], sk.dst_ip6[1], sk.dst_ip6[2], sk.dst_ip6[3]]);
        return judge(&ctx, peer, u16::from_be(sk.dst_port), Hook::Sendmsg6);
    }
    judge(&ctx, addr, user_port(sock_addr), Hook::Sendmsg6)
}

/// `user_port` carries the port in network byte order in its low 16 bits.
#[inline(always)]
fn user_port(sock_addr: &bpf_sock_addr) -> u16 {
    u16::from_be(sock_addr.user_port as u16)
}

/// Notes the destination of a UDP or ICMP socket's allowed connect, so that the egress
/// backstop passes its packets after one lookup (TCP needs no note: its destination is fixed
/// by the connect the gate judged).
#[inline(always)]
fn remember_connected(
    ctx: &SockAddrContext,
    sock_addr: &bpf_sock_addr,
    addr: Addr16,
    verdict: i32,
) {
    if verdict != ALLOW || sock_addr.protocol == IPPROTO_TCP {
        return;
    }
    // SAFETY: the hook's context, the argument the sock_addr form of the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast::<c_void>()) };
    let dest = ConnectedDest {
        addr,
        port: user_port(sock_addr),
        _reserved: [0; 6],
    };
    let _ = CONNECTED_UDP.insert(cookie, dest, 0);
}

/// `user_ip4` holds the address in network byte order; its in-memory bytes are the octets.
#[inline(always)]
fn ipv4_destination(sock_addr: &bpf_sock_addr) -> Addr16 {
    v4_mapped(sock_addr.user_ip4.to_ne_bytes())
}

/// `user_ip6` must be read as four 4-byte loads (the verifier rejects other widths).
#[inline(always)]
fn ipv6_destination(sock_addr: &bpf_sock_addr) -> Addr16 {
    words_to_addr([
        sock_addr.user_ip6[0],
        sock_addr.user_ip6[1],
        sock_addr.user_ip6[2],
        sock_addr.user_ip6[3],
    ])
}

/// Four 4-byte words of an IPv6 address, each in network byte order, as 16 bytes.
#[inline(always)]
pub(crate) fn words_to_addr(words: [u32; 4]) -> Addr16 {
    let mut addr = [0u8; 16];
    let mut i = 0;
    // Bounded: exactly four words.
    while i < 4 {
        let bytes = words[i].to_ne_bytes();
        addr[i * 4] = bytes[0];
        addr[i * 4 + 1] = bytes[1];
        addr[i * 4 + 2] = bytes[2];
        addr[i * 4 + 3] = bytes[3];
        i += 1;
    }
    addr
}

/// The decision shared by all four hooks: addresses this cgroup learned from DNS; the
/// configured resolvers on port 53 from the trusted network namespace, and a container
/// network's own resolvers from that container's namespace; allowed CIDRs
/// (loopback included) on any port. Everything else is denied and reported. The order only
/// puts cheap hash lookups first: any rule that allows, allows.
#[inline(always)]
fn judge(ctx: &SockAddrContext, addr: Addr16, port: u16, hook: Hook) -> i32 {
    // SAFETY: the hook's context (see connect4_gate), only read.
    let sock_addr = unsafe { &*ctx.sock_addr };
    // SAFETY: no arguments; the calling task's cgroup, a helper cgroup programs may call.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let mut verdict = Verdict {
        cgroup_id,
        addr,
        port,
        hook,
        reason: Reason::NotLearned,
        rule_index: BUILTIN_RULE,
        rule_id: 0,
        protocol: sock_addr.protocol,
        socket: SocketKind::NONE,
    };
    // No policy in force (the daemon has not finished its first load): deny, fail closed.
    let Some(policy) = Policy::in_force() else {
        count(Counter::Denied);
        report(&verdict, 0);
        return DENY;
    };

    // Under `dns.queries = "allowed"`, DNS goes to trusted resolvers only, where queries are
    // judged: no other rule (a learned address, a prefix, loopback) opens port 53, and a
    // container network's resolver is not reachable on another port (Docker's embedded DNS
    // listens on 127.0.0.11 on a port of its own, behind a DNAT from port 53). The host's own
    // resolvers may share an address with other services (a dnsmasq on 127.0.0.1).
    let strict_dns = policy.config.flags & FLAG_QUERIES_ALLOWED != 0;
    if port == DNS_PORT {
        if let Some((rule, container_netns)) = trusted_resolver(ctx, &policy, addr) {
            // Only answers to sockets recorded here are ever learned from (dns_snoop_in), and
            // only from resolvers trusted where the socket is. Looking up first spares the LRU
            // update (which takes locks) on every query of a socket already recorded; the
            // lookup itself keeps the entry recent.
            // SAFETY: the hook's context, the argument the sock_addr form of the helper takes.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast::<c_void>()) };
            // SAFETY: only whether the socket is recorded is used; the value is never read.
            if unsafe { DNS_SOCKETS.get(cookie) }.is_none() {
                let socket = DnsSocket {
                    cgroup_id,
                    container_netns,
                };
                let _ = DNS_SOCKETS.insert(cookie, socket, 0);
            }
            count(Counter::AllowedResolver);
            verdict.reason = Reason::AllowedResolver;
            verdict.rule_index = rule.rule_index;
            verdict.rule_id = rule.rule_id;
            report_allowed(&policy, &verdict);
            return ALLOW;
        }
        verdict.reason = if policy.resolver(addr).is_some() {
            Reason::UntrustedNetns
        } else {
            Reason::ResolverNotTrusted
        };
        if strict_dns {
            count(Counter::Denied);
            report(&verdict, 0);
            return DENY;
        }
        verdict.reason = Reason::NotLearned;
    } else if strict_dns
        && trusted_resolver(ctx, &policy, addr)
            .is_some_and(|(_, container_netns)| container_netns != 0)
    {
        verdict.reason = Reason::ResolverNotTrusted;
        count(Counter::Denied);
        report(&verdict, 0);
        return DENY;
    }

    // Learned addresses: a hash lookup, cheaper than the trie, and what registry traffic
    // hits. The order changes no decision (any rule that allows, allows).
    match learned(&policy, cgroup_id, addr, port, sock_addr.protocol) {
        Learned::Allowed(rule_index, rule_id) => {
            verdict.rule_index = rule_index;
            verdict.rule_id = rule_id;
            let tls = policy.config.flags & (FLAG_TLS_ENFORCE | FLAG_TLS_AUDIT) != 0;
            if tls && sock_addr.protocol == IPPROTO_TCP {
                let note = TlsNote {
                    cgroup_id,
                    rule_id,
                    addr,
                    port,
                    strict: (port == HTTPS_PORT) as u8,
                    _reserved: 0,
                    rule_index,
                    mark: 0,
                    _reserved2: 0,
                    comm: bpf_get_current_comm().unwrap_or([0; 16]),
                };
                tls::note_connection(ctx.sock_addr, &note);
            } else if sock_addr.protocol == IPPROTO_UDP
                && port == HTTPS_PORT
                && policy.config.flags & FLAG_TLS_ENFORCE != 0
            {
                // QUIC: its hello is encrypted (with keys anyone can derive, but not in the
                // kernel), so it is refused rather than judged; clients fall back to TCP.
                verdict.reason = Reason::QuicRefused;
                count(Counter::Denied);
                report(&verdict, 0);
                return DENY;
            }
            count(Counter::AllowedLearned);
            verdict.reason = Reason::AllowedLearned;
            report_allowed(&policy, &verdict);
            return ALLOW;
        }
        other => verdict.note(&other),
    }

    if let Some(rule) = cidr(&policy, addr, port) {
        let reason = cidr_reason(rule);
        count(if reason == Reason::AllowedLoopback {
            Counter::AllowedLoopback
        } else {
            Counter::AllowedCidr
        });
        verdict.reason = reason;
        verdict.rule_index = rule.rule_index;
        verdict.rule_id = rule.rule_id;
        report_allowed(&policy, &verdict);
        return ALLOW;
    }

    count(Counter::Denied);
    report(&verdict, 0);
    DENY
}

/// What `LEARNED` says of a destination.
pub(crate) enum Learned {
    /// Learned, live, kept by the policy, on one of its rule's ports: (rule index, rule id).
    Allowed(u32, u64),
    /// Learned and live, but its rules name other ports.
    OtherPort(u32, u64),
    Expired,
    No,
}

/// `addr:port` as learned by `cgroup_id`. ICMP has no ports: a learned address may be pinged
/// when the policy allows ping at all.
#[inline(always)]
pub(crate) fn learned(
    policy: &Policy,
    cgroup_id: u64,
    addr: Addr16,
    port: u16,
    protocol: u32,
) -> Learned {
    // SAFETY: the element stays mapped until the run ends; LearnedAddr is plain integers, so
    // one that dns_answer_rr or the daemon replaces meanwhile reads, at worst, as the entry the
    // kernel reused it for.
    let Some(entry) = (unsafe { LEARNED.get(LearnedKey { cgroup_id, addr }) }) else {
        return Learned::No;
    };
    // SAFETY: no arguments; reads the boot clock.
    if entry.expires_ns <= unsafe { bpf_ktime_get_boot_ns() } || !policy.keeps(entry) {
        return Learned::Expired;
    }
    let icmp = protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6;
    if icmp || ports_allow(&entry.ports, port) {
        Learned::Allowed(entry.rule_index, entry.rule_id)
    } else {
        Learned::OtherPort(entry.rule_index, entry.rule_id)
    }
}

/// The `ALLOWED_CIDRS` entry (loopback and the image gate included) allowing `addr:port`.
#[inline(always)]
pub(crate) fn cidr(policy: &Policy, addr: Addr16, port: u16) -> Option<&'static CidrRule> {
    policy
        .cidr(addr)
        .filter(|rule| rule.port == 0 || rule.port == port)
}

/// Why a `CidrRule` allows.
#[inline(always)]
pub(crate) fn cidr_reason(rule: &CidrRule) -> Reason {
    if rule.reason == Reason::AllowedLoopback as u32 {
        Reason::AllowedLoopback
    } else if rule.reason == Reason::AllowedImageGate as u32 {
        Reason::AllowedImageGate
    } else {
        Reason::AllowedCidr
    }
}

/// One decision, as reported.
pub(crate) struct Verdict {
    pub(crate) cgroup_id: u64,
    pub(crate) addr: Addr16,
    pub(crate) port: u16,
    pub(crate) hook: Hook,
    pub(crate) reason: Reason,
    pub(crate) rule_index: u32,
    pub(crate) rule_id: u64,
    /// IPPROTO_* of the socket.
    pub(crate) protocol: u32,
    /// What socket was asked for, for decisions at socket creation.
    pub(crate) socket: SocketKind,
}

impl Verdict {
    /// Why `LEARNED` did not allow, for the report (when nothing else allows either).
    #[inline(always)]
    pub(crate) fn note(&mut self, learned: &Learned) {
        match *learned {
            Learned::OtherPort(rule_index, rule_id) => {
                self.reason = Reason::PortNotAllowed;
                self.rule_index = rule_index;
                self.rule_id = rule_id;
            }
            Learned::Expired => self.reason = Reason::Expired,
            Learned::Allowed(..) | Learned::No => {}
        }
    }
}

/// A socket's family, type and protocol, as `socket(2)` asked for them.
#[derive(Clone, Copy)]
pub(crate) struct SocketKind {
    pub(crate) family: u16,
    pub(crate) kind: u16,
    pub(crate) protocol: u16,
}

impl SocketKind {
    /// For decisions about destinations.
    pub(crate) const NONE: Self = Self {
        family: 0,
        kind: 0,
        protocol: 0,
    };
}

/// `addr` as a resolver trusted from the socket's network namespace, with the namespace to
/// record for the socket (0: the trusted one): the policy's resolvers in the trusted namespace,
/// a container network's own in that container's (`NETNS_RESOLVERS`). Anywhere else — a
/// namespace a process made for itself could run a fake resolver on a trusted address — none.
#[inline(always)]
fn trusted_resolver(
    ctx: &SockAddrContext,
    policy: &Policy,
    addr: Addr16,
) -> Option<(&'static ResolverRule, u64)> {
    // SAFETY: the hook's context, the argument the sock_addr form of the helper takes.
    let own = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast::<c_void>()) };
    let trusted = match policy.config.trusted_netns_cookie {
        // Unset: the initial network namespace (a NULL context asks for its cookie).
        // SAFETY: the helper's context argument may be NULL (ARG_PTR_TO_CTX_OR_NULL).
        0 => unsafe { bpf_get_netns_cookie(core::ptr::null_mut()) },
        cookie => cookie,
    };
    if own == trusted {
        return policy.resolver(addr).map(|rule| (rule, 0));
    }
    container_resolver(own, addr).map(|rule| (rule, own))
}

/// Reports an allowed connection as `audit.allowed` says: never, always, or the first time a
/// process reaches a destination within the window (the common case: a registry pull opens
/// many connections to the same hosts, and one line per host says enough).
#[inline(always)]
fn report_allowed(policy: &Policy, verdict: &Verdict) {
    let mode = policy.config.audit_allowed;
    if mode == AUDIT_ALLOWED_ALL {
        report(verdict, 1);
        return;
    }
    if mode != AUDIT_ALLOWED_FIRST {
        return;
    }
    let key = AuditSeenKey {
        cgroup_id: verdict.cgroup_id,
        addr: verdict.addr,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        port: verdict.port,
        protocol: verdict.protocol as u8,
        _reserved: 0,
    };
    // SAFETY: no arguments; reads the boot clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the element stays mapped until the run ends; the value is a u64, so an entry the
    // LRU recycles meanwhile reads, at worst, as another time: one report more or fewer.
    if let Some(last) = unsafe { AUDIT_SEEN.get(key) }
        && now.wrapping_sub(*last) < policy.config.allowed_window_ns
    {
        return;
    }
    let _ = AUDIT_SEEN.insert(key, now, 0);
    report(verdict, 1);
}

/// Sends `verdict` to the daemon (`GATE_EVENTS`), with the calling task; a full buffer is
/// counted.
#[inline(always)]
pub(crate) fn report(verdict: &Verdict, allowed: u8) {
    let task = Task {
        pid_tgid: bpf_get_current_pid_tgid(),
        uid_gid: bpf_get_current_uid_gid(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    report_with(verdict, allowed, &task);
}

/// Who a decision is about. Egress programs may run in softirq context, and older kernels
/// give cgroup_skb programs no current-task helpers: they report the socket's owner only.
pub(crate) struct Task {
    pub(crate) pid_tgid: u64,
    pub(crate) uid_gid: u64,
    pub(crate) comm: [u8; 16],
}

#[inline(always)]
pub(crate) fn report_with(verdict: &Verdict, allowed: u8, task: &Task) {
    let Some(mut entry) = GATE_EVENTS.reserve::<GateEvent>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    entry.write(GateEvent {
        // SAFETY: no arguments; reads the boot clock.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: verdict.cgroup_id,
        pid_tgid: task.pid_tgid,
        uid_gid: task.uid_gid,
        comm: task.comm,
        addr: verdict.addr,
        port: verdict.port,
        hook: verdict.hook as u8,
        reason: verdict.reason as u8,
        verdict: allowed,
        protocol: if verdict.protocol > 255 {
            255
        } else {
            verdict.protocol as u8
        },
        socket_protocol: verdict.socket.protocol,
        rule_index: verdict.rule_index,
        socket_family: verdict.socket.family,
        socket_type: verdict.socket.kind,
        rule_id: verdict.rule_id,
    });
    entry.submit(0);
}
