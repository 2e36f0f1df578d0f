//! ram's kernel side: one program per cgroup hook, named `<hook>_<job>` within the kernel's
//! 15-byte limit.
//!
//! - `gate`: connect4/connect6/sendmsg4/sendmsg6 (`*_gate`) allow or deny each connection.
//! - `socket`: cgroup sock_create (`socket_gate`) refuses sockets the gates would not judge.
//! - `dns`: cgroup_skb egress (`dns_query_out`) notes queries to trusted resolvers, refuses
//!   queries for names no rule allows, and is the packet-level backstop (`egress`); cgroup_skb
//!   ingress (`dns_snoop_in`) learns addresses from their answers before the answer reaches the
//!   socket, so the first connect after a lookup is already allowed.
//! - `tls`: cgroup sock_ops (`tls_sockops`) and sk_msg (`tls_hello`) judge the TLS server
//!   name of connections to learned addresses.
#![no_std]
#![no_main]

mod dns;
mod egress;
mod gate;
mod socket;
mod tls;

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SockHash},
};
use ram_common::{
    Addr16, AuditSeenKey, CidrRule, ConnectedDest, Counter, DnsScratch, DnsSocket, FlowKey,
    LearnedAddr, LearnedKey, NameRule, NetnsResolverKey, PendingKey, PendingQuery, PolicyConfig,
    ResolverRule, SearchKey, TaughtKey, TcpDnsStream, TlsFlow, TlsNote, TlsScratch,
    dns::NAME_BUF,
    maps::{
        ALLOWED_CIDRS_MAX, ALLOWED_NAMES_MAX, AUDIT_SEEN_MAX, CONNECTED_UDP_MAX, DNS_EVENTS_BYTES,
        DNS_SOCKETS_MAX, DNS_TAIL_CALLS_MAX, GATE_EVENTS_BYTES, LEARNED_MAX, NETNS_RESOLVERS_MAX,
        PENDING_QUERIES_MAX, RESOLVERS_MAX, RULE_IDS_MAX, SEARCH_DOMAINS_MAX, SEARCH_SUFFIXES_MAX,
        TAUGHT_NAMES_MAX, TCP_DNS_STREAMS_MAX, TLS_EVENTS_BYTES, TLS_FLOWS_MAX, TLS_NOTES_MAX,
        TLS_SOCKETS_MAX, TLS_TAIL_CALLS_MAX,
    },
};

// Map statics: names, sizes and value types are documented in ram_common::maps (who writes,
// who reads). LEARNED's size is set by the daemon from the policy; the others are fixed.
#[map]
static POLICY_SLOT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static POLICY_CONFIG: Array<PolicyConfig> = Array::with_max_entries(2, 0);

#[map]
static RULE_IDS_0: HashMap<u64, u8> = HashMap::with_max_entries(RULE_IDS_MAX, 0);
#[map]
static RULE_IDS_1: HashMap<u64, u8> = HashMap::with_max_entries(RULE_IDS_MAX, 0);

#[map]
static ALLOWED_CIDRS_0: LpmTrie<Addr16, CidrRule> = LpmTrie::with_max_entries(ALLOWED_CIDRS_MAX, 0);
#[map]
static ALLOWED_CIDRS_1: LpmTrie<Addr16, CidrRule> = LpmTrie::with_max_entries(ALLOWED_CIDRS_MAX, 0);

#[map]
static RESOLVERS_0: HashMap<Addr16, ResolverRule> = HashMap::with_max_entries(RESOLVERS_MAX, 0);
#[map]
static RESOLVERS_1: HashMap<Addr16, ResolverRule> = HashMap::with_max_entries(RESOLVERS_MAX, 0);

#[map]
static NETNS_RESOLVERS: HashMap<NetnsResolverKey, ResolverRule> =
    HashMap::with_max_entries(NETNS_RESOLVERS_MAX, 0);

#[map]
static ALLOWED_NAMES_0: LpmTrie<[u8; NAME_BUF], NameRule> =
    LpmTrie::with_max_entries(ALLOWED_NAMES_MAX, 0);
#[map]
static ALLOWED_NAMES_1: LpmTrie<[u8; NAME_BUF], NameRule> =
    LpmTrie::with_max_entries(ALLOWED_NAMES_MAX, 0);

#[map]
static AUDIT_SEEN: LruHashMap<AuditSeenKey, u64> = LruHashMap::with_max_entries(AUDIT_SEEN_MAX, 0);

#[map]
static LEARNED: HashMap<LearnedKey, LearnedAddr> = HashMap::with_max_entries(LEARNED_MAX, 0);

#[map]
static PENDING_QUERIES: LruHashMap<PendingKey, PendingQuery> =
    LruHashMap::with_max_entries(PENDING_QUERIES_MAX, 0);

#[map]
static DNS_SOCKETS: LruHashMap<u64, DnsSocket> = LruHashMap::with_max_entries(DNS_SOCKETS_MAX, 0);

#[map]
static DNS_SCRATCH: PerCpuArray<DnsScratch> = PerCpuArray::with_max_entries(2, 0);

#[map]
static TCP_DNS_STREAMS: LruHashMap<u64, TcpDnsStream> =
    LruHashMap::with_max_entries(TCP_DNS_STREAMS_MAX, 0);

#[map]
static DNS_TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(DNS_TAIL_CALLS_MAX, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static GATE_EVENTS: RingBuf = RingBuf::with_byte_size(GATE_EVENTS_BYTES, 0);

#[map]
static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(DNS_EVENTS_BYTES, 0);

#[map]
static SEARCH_DOMAINS: HashMap<u64, u8> = HashMap::with_max_entries(SEARCH_DOMAINS_MAX, 0);

#[map]
static SEARCH_SUFFIXES: LruHashMap<SearchKey, u32> =
    LruHashMap::with_max_entries(SEARCH_SUFFIXES_MAX, 0);

#[map]
static CONNECTED_UDP: LruHashMap<u64, ConnectedDest> =
    LruHashMap::with_max_entries(CONNECTED_UDP_MAX, 0);

#[map]
static TAUGHT_NAMES: LruHashMap<TaughtKey, u64> = LruHashMap::with_max_entries(TAUGHT_NAMES_MAX, 0);

#[map]
static TLS_NOTES: LruHashMap<u64, TlsNote> = LruHashMap::with_max_entries(TLS_NOTES_MAX, 0);

#[map]
static TLS_FLOWS: LruHashMap<FlowKey, TlsFlow> = LruHashMap::with_max_entries(TLS_FLOWS_MAX, 0);

#[map]
static TLS_SOCKETS: SockHash<FlowKey> = SockHash::with_max_entries(TLS_SOCKETS_MAX, 0);

#[map]
static TLS_SCRATCH: PerCpuArray<TlsScratch> = PerCpuArray::with_max_entries(2, 0);

#[map]
static TLS_EVENTS: RingBuf = RingBuf::with_byte_size(TLS_EVENTS_BYTES, 0);

#[map]
static TLS_TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(TLS_TAIL_CALLS_MAX, 0);

/// The policy in force for one program run: read once at the start, so that a run never mixes
/// two policies (the daemon flips `POLICY_SLOT` only after filling the other slot).
#[derive(Clone, Copy)]
struct Policy {
    slot: u32,
    config: &'static PolicyConfig,
}

impl Policy {
    #[inline(always)]
    fn in_force() -> Option<Self> {
        // `& 1`: the verifier then knows the index is 0 or 1.
        let slot = *POLICY_SLOT.get(0)? & 1;
        let config = POLICY_CONFIG.get(slot)?;
        Some(Self { slot, config })
    }

    /// Whether a learned address still stands: the rule that allowed its name and the
    /// resolver that answered are both in this policy.
    #[inline(always)]
    fn keeps(&self, learned: &LearnedAddr) -> bool {
        let map = if self.slot == 0 {
            &RULE_IDS_0
        } else {
            &RULE_IDS_1
        };
        // SAFETY: both lookups only ask whether the id is present; the values are never read.
        unsafe { map.get(learned.rule_id).is_some() && map.get(learned.resolver_rule_id).is_some() }
    }

    #[inline(always)]
    fn resolver(&self, addr: Addr16) -> Option<&'static ResolverRule> {
        let map = if self.slot == 0 {
            &RESOLVERS_0
        } else {
            &RESOLVERS_1
        };
        // SAFETY: the element stays mapped until the run ends, and the daemon refills only the
        // slot not in force; ResolverRule is plain integers, so even one removed by a second
        // policy change within this run reads, at worst, as another resolver's entry.
        unsafe { map.get(addr) }
    }

    /// The resolver `addr` as trusted for a socket the gates recorded: the policy's own for a
    /// socket of the trusted namespace, its container network's otherwise.
    #[inline(always)]
    fn resolver_for(&self, socket: &DnsSocket, addr: Addr16) -> Option<&'static ResolverRule> {
        if socket.container_netns == 0 {
            return self.resolver(addr);
        }
        container_resolver(socket.container_netns, addr)
    }

    #[inline(always)]
    fn cidr(&self, addr: Addr16) -> Option<&'static CidrRule> {
        let map = if self.slot == 0 {
            &ALLOWED_CIDRS_0
        } else {
            &ALLOWED_CIDRS_1
        };
        map.get(Key::new(128, addr))
    }

    #[inline(always)]
    fn name(&self, key: &Key<[u8; NAME_BUF]>) -> Option<&'static NameRule> {
        let map = if self.slot == 0 {
            &ALLOWED_NAMES_0
        } else {
            &ALLOWED_NAMES_1
        };
        map.get(key)
    }
}

/// `addr` as a resolver of the container network whose namespace is `netns_cookie`.
#[inline(always)]
fn container_resolver(netns_cookie: u64, addr: Addr16) -> Option<&'static ResolverRule> {
    let key = NetnsResolverKey { netns_cookie, addr };
    // SAFETY: the element stays mapped until the run ends; ResolverRule is plain integers, so
    // one the daemon removes meanwhile (its container went) reads as it was a moment before.
    unsafe { NETNS_RESOLVERS.get(key) }
}

/// A per-CPU scratch entry a program holds for its run (and its tail calls'): see
/// `DnsScratch::busy_since_ns`.
trait Scratch {
    fn busy_since_ns(&mut self) -> &mut u64;
}

impl Scratch for DnsScratch {
    fn busy_since_ns(&mut self) -> &mut u64 {
        &mut self.busy_since_ns
    }
}

impl Scratch for TlsScratch {
    fn busy_since_ns(&mut self) -> &mut u64 {
        &mut self.busy_since_ns
    }
}

/// An entry held longer than this is taken to be abandoned (no run takes a millisecond).
const SCRATCH_STALE_NS: u64 = 1_000_000;

/// Takes `entry` (this CPU's entry of a per-CPU scratch array, from `get_ptr_mut`) for the
/// current run; `None` (counted) when another run on this CPU holds it: it interrupted or
/// preempted that one, and touches nothing.
#[inline(always)]
fn take_scratch<T: Scratch>(entry: *mut T) -> Option<&'static mut T> {
    // SAFETY: this CPU's entry of a per-CPU array, from bpf_map_lookup_elem, valid for this
    // run; programs that may interrupt one another use different slots, and a run that finds
    // `busy_since_ns` set (below) leaves the entry alone.
    let scratch = unsafe { entry.as_mut()? };
    // SAFETY: no arguments; reads the boot clock.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    let busy = scratch.busy_since_ns();
    if *busy != 0 && now.wrapping_sub(*busy) < SCRATCH_STALE_NS {
        count(Counter::ScratchBusy);
        return None;
    }
    *busy = now;
    Some(scratch)
}

#[inline(always)]
fn count(counter: Counter) {
    count_n(counter, 1);
}

#[inline(always)]
fn count_n(counter: Counter, n: u64) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's slot of a per-CPU array (the lookup checked the index), valid for
        // this run; no other CPU writes it. A program interrupting this one on the same CPU can
        // at worst make one count miss an increment.
        unsafe { *value += n };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
