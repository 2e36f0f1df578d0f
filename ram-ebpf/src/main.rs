//! ram's kernel side: one program per cgroup hook, each named `<hook>_gate` (within the kernel's
//! 15-byte name limit). A program returns 1 to let the call proceed and 0 to make it fail with
//! EPERM at once (no packet is sent, so the caller never waits for a timeout).
//!
//! Which calls reach which hook (see README "How it works"):
//! - TCP connect, UDP connect, and TCP Fast Open (`sendto(MSG_FASTOPEN)` goes through
//!   `__inet_stream_connect`) → connect4/connect6.
//! - UDP `sendto`/`sendmsg` with a destination on an unconnected socket → sendmsg4/sendmsg6.
//!   Sends on a connected socket need no check: its connect was judged.
//! - An AF_INET6 socket addressing `::ffff:a.b.c.d` runs connect6 (TCP) or sendmsg4 (UDP, the
//!   kernel hands the send to udp_sendmsg); all maps hold IPv4 in that mapped form, so both
//!   judge it exactly as `a.b.c.d`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::SockAddrContext,
};
use ram_common::{
    Addr16, BUILTIN_RULE, CidrRule, Counter, GateEvent, Hook, Reason, ResolverRule,
    maps::{ALLOWED_CIDRS_MAX, GATE_EVENTS_BYTES, RESOLVERS_MAX},
    v4_mapped,
};

/// Return values of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const DNS_PORT: u16 = 53;

// Map statics: names, sizes and value types are documented in ram_common::maps.
// Max entries here are upper bounds; the daemon sets the real size from the policy.
#[map]
static ALLOWED_CIDRS: LpmTrie<Addr16, CidrRule> = LpmTrie::with_max_entries(ALLOWED_CIDRS_MAX, 0);

#[map]
static RESOLVERS: HashMap<Addr16, ResolverRule> = HashMap::with_max_entries(RESOLVERS_MAX, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static GATE_EVENTS: RingBuf = RingBuf::with_byte_size(GATE_EVENTS_BYTES, 0);

#[cgroup_sock_addr(connect4)]
pub fn connect4_gate(ctx: SockAddrContext) -> i32 {
    let sock_addr = unsafe { &*ctx.sock_addr };
    judge(sock_addr, ipv4_destination(sock_addr), Hook::Connect4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6_gate(ctx: SockAddrContext) -> i32 {
    let sock_addr = unsafe { &*ctx.sock_addr };
    judge(sock_addr, ipv6_destination(sock_addr), Hook::Connect6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4_gate(ctx: SockAddrContext) -> i32 {
    let sock_addr = unsafe { &*ctx.sock_addr };
    judge(sock_addr, ipv4_destination(sock_addr), Hook::Sendmsg4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6_gate(ctx: SockAddrContext) -> i32 {
    let sock_addr = unsafe { &*ctx.sock_addr };
    judge(sock_addr, ipv6_destination(sock_addr), Hook::Sendmsg6)
}

/// `user_ip4` holds the address in network byte order; its in-memory bytes are the octets.
#[inline(always)]
fn ipv4_destination(sock_addr: &bpf_sock_addr) -> Addr16 {
    v4_mapped(sock_addr.user_ip4.to_ne_bytes())
}

/// `user_ip6` must be read as four 4-byte loads (the verifier rejects other widths).
#[inline(always)]
fn ipv6_destination(sock_addr: &bpf_sock_addr) -> Addr16 {
    let mut addr = [0u8; 16];
    let words = [
        sock_addr.user_ip6[0],
        sock_addr.user_ip6[1],
        sock_addr.user_ip6[2],
        sock_addr.user_ip6[3],
    ];
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

/// The decision shared by all four hooks: allowed CIDRs (loopback included) on any port, then
/// the configured resolvers on port 53; everything else is denied and reported.
#[inline(always)]
fn judge(sock_addr: &bpf_sock_addr, addr: Addr16, hook: Hook) -> i32 {
    // `user_port` carries the port in network byte order in its low 16 bits.
    let port = u16::from_be(sock_addr.user_port as u16);

    if let Some(rule) = ALLOWED_CIDRS.get(Key::new(128, addr)) {
        let counter = if rule.reason == Reason::AllowedLoopback as u32 {
            Counter::AllowedLoopback
        } else {
            Counter::AllowedCidr
        };
        count(counter);
        return ALLOW;
    }

    if port == DNS_PORT && unsafe { RESOLVERS.get(addr) }.is_some() {
        count(Counter::AllowedResolver);
        return ALLOW;
    }

    count(Counter::Denied);
    report_denial(sock_addr, addr, port, hook);
    DENY
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn report_denial(sock_addr: &bpf_sock_addr, addr: Addr16, port: u16, hook: Hook) {
    let Some(mut entry) = GATE_EVENTS.reserve::<GateEvent>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    entry.write(GateEvent {
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid_tgid: bpf_get_current_pid_tgid(),
        uid_gid: bpf_get_current_uid_gid(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        addr,
        port,
        hook: hook as u8,
        reason: Reason::NotAllowed as u8,
        verdict: 0,
        protocol: sock_addr.protocol as u8,
        _reserved: [0; 2],
        rule_index: BUILTIN_RULE,
        _reserved2: 0,
    });
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
