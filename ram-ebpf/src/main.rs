//! ram's kernel side: one program per cgroup hook, named `<hook>_<job>` within the kernel's
//! 15-byte limit.
//!
//! - `gate`: connect4/connect6/sendmsg4/sendmsg6 (`*_gate`) allow or deny each connection.
//! - `dns`: cgroup_skb egress (`dns_query_out`) notes queries to trusted resolvers; cgroup_skb
//!   ingress (`dns_snoop_in`) learns addresses from their answers before the answer reaches the
//!   socket, so the first connect after a lookup is already allowed.
#![no_std]
#![no_main]

mod dns;
mod gate;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use ram_common::{
    Addr16, CidrRule, Counter, DnsConfig, DnsScratch, LearnedAddr, LearnedKey, NameRule,
    PendingKey, PendingQuery, ResolverRule, TcpDnsStream,
    dns::NAME_BUF,
    maps::{
        ALLOWED_CIDRS_MAX, ALLOWED_NAMES_MAX, DNS_EVENTS_BYTES, DNS_SOCKETS_MAX, GATE_EVENTS_BYTES,
        LEARNED_MAX, PENDING_QUERIES_MAX, RESOLVERS_MAX, TCP_DNS_STREAMS_MAX,
    },
};

// Map statics: names, sizes and value types are documented in ram_common::maps (who writes,
// who reads). Max entries here are upper bounds; the daemon sizes the maps from the policy.
#[map]
static ALLOWED_CIDRS: LpmTrie<Addr16, CidrRule> = LpmTrie::with_max_entries(ALLOWED_CIDRS_MAX, 0);

#[map]
static RESOLVERS: HashMap<Addr16, ResolverRule> = HashMap::with_max_entries(RESOLVERS_MAX, 0);

#[map]
static ALLOWED_NAMES: LpmTrie<[u8; NAME_BUF], NameRule> =
    LpmTrie::with_max_entries(ALLOWED_NAMES_MAX, 0);

#[map]
static LEARNED: HashMap<LearnedKey, LearnedAddr> = HashMap::with_max_entries(LEARNED_MAX, 0);

#[map]
static PENDING_QUERIES: LruHashMap<PendingKey, PendingQuery> =
    LruHashMap::with_max_entries(PENDING_QUERIES_MAX, 0);

#[map]
static DNS_SOCKETS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(DNS_SOCKETS_MAX, 0);

#[map]
static DNS_SCRATCH: PerCpuArray<DnsScratch> = PerCpuArray::with_max_entries(2, 0);

#[map]
static TCP_DNS_STREAMS: LruHashMap<u64, TcpDnsStream> =
    LruHashMap::with_max_entries(TCP_DNS_STREAMS_MAX, 0);

#[map]
static DNS_CONFIG: Array<DnsConfig> = Array::with_max_entries(1, 0);

#[map]
static DNS_TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static GATE_EVENTS: RingBuf = RingBuf::with_byte_size(GATE_EVENTS_BYTES, 0);

#[map]
static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(DNS_EVENTS_BYTES, 0);

#[inline(always)]
fn count(counter: Counter) {
    count_n(counter, 1);
}

#[inline(always)]
fn count_n(counter: Counter, n: u64) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *value += n };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
