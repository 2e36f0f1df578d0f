//! Learning addresses from DNS answers, in the kernel, before the answer reaches the socket.
//!
//! - `dns_query_out` (cgroup_skb egress) records each query an enforced cgroup sends to a
//!   trusted resolver: socket, transaction id, client port, question, resolver, time.
//! - `dns_snoop_in` (cgroup_skb ingress) takes an answer only if it comes from that resolver, to
//!   that socket and port, with that transaction id and question, in time; if the question is an
//!   allowed name, it learns every A/AAAA record on the CNAME chain that starts at the question
//!   and then lets the packet go on. The map update happens before the socket sees the answer:
//!   no race with the application's first connect.
//!
//! Both handle UDP and TCP (a DNS-over-TCP message is parsed when it is whole in one segment).
//! Both always return 1 (pass): they observe; the gates decide.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use ram_common::{
    Addr16, Counter, DnsEvent, DnsScratch, DnsSocket, FLAG_QUERIES_ALLOWED, LearnedAddr,
    LearnedKey, Learning, MAX_SEARCH_CANDIDATES, PendingKey, PendingQuery, QueryInFlight,
    SEARCH_BUDGET, SearchKey, TcpDnsStream,
    dns::{self, HEADER_LEN, Header, MSG_MAX},
    maps::{ANSWER_RR_SLOT, QUERY_NAME_SLOT, SCRATCH_EGRESS, SCRATCH_INGRESS, TLS_FIRST_SLOT},
    merge_ports, v4_mapped,
};

use crate::{
    DNS_EVENTS, DNS_SCRATCH, DNS_SOCKETS, DNS_TAIL_CALLS, LEARNED, PENDING_QUERIES, POLICY_CONFIG,
    Policy, SEARCH_DOMAINS, SEARCH_SUFFIXES, TCP_DNS_STREAMS, count, count_n, egress, tls,
};

type NameLpmKey = aya_ebpf::maps::lpm_trie::Key<[u8; dns::NAME_BUF]>;

const PASS: i32 = 1;
const DROP: i32 = 0;
const DNS_PORT: u16 = 53;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const E2BIG: i32 = 7;
const TCP_SYN: u8 = 0x02;
/// Longest TTL honoured before `dns.max_ttl` caps it (RFC 2181: values ≥ 2^31 mean 0).
const TTL_SIGN_BIT: u32 = 1 << 31;

#[cgroup_skb]
pub fn dns_query_out(ctx: SkBuffContext) -> i32 {
    let Some(packet) = egress::outgoing(&ctx) else {
        return PASS;
    };
    if packet.carries_a_route {
        count(Counter::RedirectRefused);
        return DROP;
    }
    if sends_from_dns_port(&ctx) {
        count(Counter::SpoofedDnsDropped);
        return DROP;
    }
    if packet.protocol == egress::IPPROTO_TCP {
        match tls::egress_check(&ctx, packet.transport_offset) {
            tls::Egress::Pass => {}
            tls::Egress::Drop => return DROP,
            tls::Egress::ReadFirst => {
                // SAFETY: `ctx` is this cgroup_skb program's context, the type tls_first_out
                // takes; on success nothing after this runs (the packet is not DNS).
                unsafe { DNS_TAIL_CALLS.tail_call(&ctx, TLS_FIRST_SLOT) };
                // The tail call failed: the first bytes cannot be read, so they do not leave.
                return DROP;
            }
        }
    } else if !egress::backstop_allows(&ctx, &packet) {
        return DROP;
    }
    match track_query(&ctx, packet.protocol) {
        Query::Pass => PASS,
        Query::Refuse => DROP,
    }
}

#[cgroup_skb]
pub fn dns_snoop_in(ctx: SkBuffContext) -> i32 {
    let _ = learn_from_answer(&ctx);
    PASS
}

/// Where the DNS message of a packet is.
struct DnsPacket {
    /// Remote end: the resolver (destination of a query, source of an answer).
    resolver: Addr16,
    client_port: u16,
    protocol: u8,
    /// Offset and length of the DNS message in the packet.
    msg_offset: usize,
    msg_len: usize,
}

/// Why a packet of a DNS socket holds no DNS message to look at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Not DNS: another port, a SYN, an ACK without data.
    NotDns,
    /// DNS data that is not a whole message at a known boundary (split, retransmitted, out of
    /// order, malformed headers): nothing is learned from it, and under
    /// `dns.queries = "allowed"` such a query is not let out.
    Unreadable,
}

/// Finds the DNS message of a UDP or TCP packet whose remote port is 53; `outgoing` says which
/// side the resolver is on. IPv6 extension headers and IPv4 fragments are not followed (DNS
/// packets do not carry them in practice; such a packet simply teaches nothing).
#[inline(always)]
fn dns_packet(ctx: &SkBuffContext, cookie: u64, outgoing: bool) -> Result<DnsPacket, Skip> {
    dns_packet_or_none(ctx, cookie, outgoing).unwrap_or(Err(Skip::Unreadable))
}

#[inline(always)]
fn dns_packet_or_none(
    ctx: &SkBuffContext,
    cookie: u64,
    outgoing: bool,
) -> Option<Result<DnsPacket, Skip>> {
    let skb_len = ctx.len() as usize;
    let (src, dst, protocol, l4) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let header: [u8; 20] = ctx.load(0).ok()?;
            let header_len = ((header[0] & 0x0f) as usize) * 4;
            let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff;
            if header_len < 20 || fragment != 0 {
                return None;
            }
            let src = v4_mapped([header[12], header[13], header[14], header[15]]);
            let dst = v4_mapped([header[16], header[17], header[18], header[19]]);
            (src, dst, header[9], header_len)
        }
        ETH_P_IPV6 => {
            let header: [u8; 40] = ctx.load(0).ok()?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&header[8..24]);
            dst.copy_from_slice(&header[24..40]);
            (src, dst, header[6], 40)
        }
        _ => return None,
    };
    let ports: [u8; 4] = ctx.load(l4).ok()?;
    let src_port = u16::from_be_bytes([ports[0], ports[1]]);
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    let (mut resolver, resolver_port, client_port) = if outgoing {
        (dst, dst_port, src_port)
    } else {
        (src, src_port, dst_port)
    };
    // A query of a socket connected to a resolver goes to the address the gate judged, which
    // NAT may have changed before this program (kube-proxy's DNAT of a service address to a
    // pod's): the query is the resolver's, and its answer comes back from it.
    let mut connected_to_dns = false;
    if outgoing {
        let (peer, peer_port) = egress::socket_peer(ctx);
        if peer_port == DNS_PORT {
            resolver = peer;
            connected_to_dns = true;
        }
    }
    // A query may leave with another port: NAT of the socket's destination (Docker's
    // embedded DNS at 127.0.0.11 is reached through a DNAT rule to the port dockerd really
    // listens on; a cluster's DNS service may map 53 to 5353), which runs before this program.
    // The gate judged the socket's own destination (port 53), and the answer must still come
    // from port 53 (netfilter translates it back).
    if resolver_port != DNS_PORT && !(outgoing && (connected_to_dns || is_loopback(&resolver))) {
        return Some(Err(Skip::NotDns));
    }
    let (msg_offset, msg_len) = match protocol {
        IPPROTO_UDP => {
            let udp_len = u16::from_be(ctx.load::<u16>(l4 + 4).ok()?) as usize;
            (l4 + 8, udp_len.checked_sub(8)?)
        }
        IPPROTO_TCP => {
            // Ports (4), sequence number (4), acknowledgment (4), data offset, flags.
            let header: [u8; 14] = ctx.load(l4).ok()?;
            let seq = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            let payload = l4 + ((header[12] >> 4) as usize) * 4;
            let segment_len = skb_len.checked_sub(payload)?;
            if header[13] & TCP_SYN != 0 {
                start_tcp_stream(cookie, outgoing, seq);
                // Data in a SYN (TCP Fast Open) would be a query no one read.
                if outgoing && segment_len > 0 {
                    return None;
                }
                return Some(Err(Skip::NotDns));
            }
            if segment_len == 0 {
                return Some(Err(Skip::NotDns)); // ACK, FIN: no data
            }
            let msg_len =
                tcp_message_at_boundary(ctx, cookie, outgoing, seq, payload, segment_len)?;
            (payload + 2, msg_len)
        }
        _ => return Some(Err(Skip::NotDns)),
    };
    if msg_offset + msg_len > skb_len {
        return None;
    }
    Some(Ok(DnsPacket {
        resolver,
        client_port,
        protocol,
        msg_offset,
        msg_len,
    }))
}

/// `::1`, or `127.0.0.0/8` in mapped form.
#[inline(always)]
fn is_loopback(addr: &Addr16) -> bool {
    let mapped_v4 = addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff;
    (mapped_v4 && addr[12] == 127) || (addr[..15] == [0; 15] && addr[15] == 1)
}

/// Whether an enforced socket sends this packet from port 53 (UDP, TCP, or a raw socket's
/// own header). Such a packet can only be an answer, and an enforced cgroup answering itself
/// would teach the kernel whatever addresses it likes: from `127.0.0.11:53` in a container,
/// say, where Docker's DNS really listens on another port. Cheap for the rest: sockets bound
/// to ports ≥ 1024 (every client's) leave on a plain read of the context; raw sockets report
/// their protocol number there, so their headers are read.
#[inline(always)]
fn sends_from_dns_port(ctx: &SkBuffContext) -> bool {
    // Host byte order.
    let local_port = ctx.skb.local_port();
    if local_port >= 1024 {
        return false;
    }
    if local_port == DNS_PORT as u32 {
        return true;
    }
    source_port(ctx) == Some(DNS_PORT)
}

/// The UDP or TCP source port of the packet, read from its headers.
#[inline(always)]
fn source_port(ctx: &SkBuffContext) -> Option<u16> {
    let (protocol, l4) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let header: [u8; 20] = ctx.load(0).ok()?;
            // A later fragment has no ports; the first one carries them.
            let offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
            if offset != 0 {
                return None;
            }
            (header[9], ((header[0] & 0x0f) as usize) * 4)
        }
        ETH_P_IPV6 => {
            let header: [u8; 40] = ctx.load(0).ok()?;
            // An extension header (a raw socket's fragment header, say) would hide the ports
            // from this check but not from the receiver, which reassembles: taken as port 53.
            if egress::is_ipv6_extension(header[6]) {
                return Some(DNS_PORT);
            }
            (header[6], 40)
        }
        _ => return None,
    };
    if protocol != IPPROTO_UDP && protocol != IPPROTO_TCP {
        return None;
    }
    Some(u16::from_be(ctx.load::<u16>(l4).ok()?))
}

/// Records where the first message of a DNS-over-TCP connection starts in one direction: the
/// byte after the SYN (ours) or the SYN-ACK (the resolver's).
#[inline(always)]
fn start_tcp_stream(cookie: u64, outgoing: bool, syn_seq: u32) {
    let first = syn_seq.wrapping_add(1);
    if let Some(stream) = TCP_DNS_STREAMS.get_ptr_mut(cookie) {
        // SAFETY: a live map value; each direction writes only its own fields.
        unsafe {
            if outgoing {
                (*stream).next_out = first;
                (*stream).known |= TcpDnsStream::OUT_KNOWN;
            } else {
                (*stream).next_in = first;
                (*stream).known |= TcpDnsStream::IN_KNOWN;
            }
        }
        return;
    }
    let stream = if outgoing {
        TcpDnsStream {
            next_out: first,
            next_in: 0,
            known: TcpDnsStream::OUT_KNOWN,
        }
    } else {
        TcpDnsStream {
            next_out: 0,
            next_in: first,
            known: TcpDnsStream::IN_KNOWN,
        }
    };
    let _ = TCP_DNS_STREAMS.insert(cookie, stream, 0);
}

/// DNS over TCP is a stream of messages, each a 2-byte length and the message (RFC 1035
/// 4.2.2). A segment is taken as a message only if it starts exactly at the next message
/// boundary of its direction, which then moves past that message (whether or not the message
/// is whole in this segment). Bytes inside a message — a client chooses them in its query and,
/// through the query, in the resolver's reply — therefore never pass for a message. Segments
/// out of order, retransmitted, or holding a second message are not parsed (fail closed).
/// Returns the message length when the whole message is in this segment.
#[inline(always)]
fn tcp_message_at_boundary(
    ctx: &SkBuffContext,
    cookie: u64,
    outgoing: bool,
    seq: u32,
    payload: usize,
    segment_len: usize,
) -> Option<usize> {
    let stream = TCP_DNS_STREAMS.get_ptr_mut(cookie)?;
    // SAFETY: a live map value (from bpf_map_lookup_elem, valid for this run) of plain u32s,
    // read through the pointer.
    let (known_bit, boundary) = unsafe {
        if outgoing {
            (TcpDnsStream::OUT_KNOWN, (*stream).next_out)
        } else {
            (TcpDnsStream::IN_KNOWN, (*stream).next_in)
        }
    };
    // SAFETY: the same map value.
    if unsafe { (*stream).known } & known_bit == 0 || seq != boundary {
        count(Counter::DnsTcpSplit);
        return None;
    }
    if segment_len < 2 {
        // The length itself is split: the next boundary is lost for good.
        // SAFETY: the same map value; this direction clears only its own bit.
        unsafe { (*stream).known &= !known_bit };
        count(Counter::DnsTcpSplit);
        return None;
    }
    let msg_len = u16::from_be(ctx.load::<u16>(payload).ok()?) as usize;
    let next = seq.wrapping_add(2 + msg_len as u32);
    // SAFETY: the same map value; each direction writes only its own boundary.
    unsafe {
        if outgoing {
            (*stream).next_out = next;
        } else {
            (*stream).next_in = next;
        }
    }
    // A query must be alone in its segment: bytes after it would be messages of their own to
    // the resolver, never read here.
    if msg_len + 2 > segment_len || (outgoing && msg_len + 2 != segment_len) {
        count(Counter::DnsTcpSplit);
        return None;
    }
    Some(msg_len)
}

/// Takes this CPU's scratch slot `slot` of `DNS_SCRATCH` (see [`crate::take_scratch`]).
#[inline(always)]
fn take_scratch(slot: u32) -> Option<&'static mut DnsScratch> {
    crate::take_scratch(DNS_SCRATCH.get_ptr_mut(slot)?)
}

/// The length argument of a `bpf_skb_load_bytes` copy of a message, `len` (already clamped
/// to 1..=MSG_MAX) bounded once more by arithmetic: older verifiers (Linux 6.1 and before)
/// forget the comparisons when the compiler spills the length to the stack and reloads it,
/// but keep what `& (MSG_MAX - 1)` (a power of two) proves about the value handed over.
#[inline(always)]
fn copy_len(len: usize) -> u32 {
    ((len as u32).wrapping_sub(1) & (MSG_MAX as u32 - 1)) + 1
}

/// Copies the message (at most MSG_MAX bytes of it) into the scratch buffer.
#[inline(always)]
fn copy_message(ctx: &SkBuffContext, packet: &DnsPacket, scratch: &mut DnsScratch) -> Option<()> {
    let mut len = packet.msg_len;
    if len > MSG_MAX {
        len = MSG_MAX;
    }
    if len < HEADER_LEN {
        return None;
    }
    let bounded = copy_len(len);
    // SAFETY: 1 ≤ bounded ≤ MSG_MAX, the size of the destination.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            packet.msg_offset as u32,
            scratch.msg.bytes.as_mut_ptr().cast::<c_void>(),
            bounded,
        )
    };
    if ret != 0 {
        return None;
    }
    scratch.msg.set_len(len);
    Some(())
}

/// Whether the packet's socket may be talking DNS: true unless it is connected to a port other
/// than 53. A plain read of the context, so that every other connection's packets (the bulk
/// of the traffic: registry downloads) leave these programs at once, before any helper call.
/// Not for UDP leaving: a connected UDP socket may still `sendto` another address.
#[inline(always)]
fn may_be_dns_socket(ctx: &SkBuffContext) -> bool {
    // The socket's peer port, in network byte order in the upper 16 bits; 0 if unconnected.
    let remote_port = u32::from_be(ctx.skb.remote_port());
    remote_port == 0 || remote_port == DNS_PORT as u32
}

/// The socket cookie, the gate's record and the DNS message of a packet, if its socket is one a
/// gate let through to a trusted resolver (`DNS_SOCKETS`). Cheapest checks first, so that
/// every other packet leaves at once.
#[inline(always)]
fn dns_socket_packet(
    ctx: &SkBuffContext,
    outgoing: bool,
    udp_out: bool,
) -> Option<(u64, DnsSocket, Result<DnsPacket, Skip>)> {
    if !udp_out && !may_be_dns_socket(ctx) {
        return None;
    }
    // SAFETY: the program's context, the __sk_buff the skb form of the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast::<c_void>()) };
    // SAFETY: copied out at once; DnsSocket is plain integers, and the gates write an entry
    // only once per socket, with what never changes for it (its cgroup and namespace).
    let socket = *unsafe { DNS_SOCKETS.get(cookie) }?;
    Some((cookie, socket, dns_packet(ctx, cookie, outgoing)))
}

/// What `dns_query_out` does with a packet after the backstop.
enum Query {
    Pass,
    /// A query `dns.queries = "allowed"` does not let out (reported with its name).
    Refuse,
}

#[inline(always)]
fn track_query(ctx: &SkBuffContext, protocol: u8) -> Query {
    let udp = protocol == IPPROTO_UDP;
    let Some((cookie, socket, packet)) = dns_socket_packet(ctx, true, udp) else {
        return Query::Pass;
    };
    let Some(policy) = Policy::in_force() else {
        return Query::Refuse;
    };
    let strict = policy.config.flags & FLAG_QUERIES_ALLOWED != 0;
    // UDP segmentation offload: one send the kernel cuts into many datagrams, each a query
    // of its own to the resolver, of which only the first would be read here.
    // SAFETY: the program's __sk_buff; one 4-byte load of a field every skb program may read.
    let segments = unsafe { core::ptr::read_volatile(&raw const (*ctx.skb.skb).gso_segs) };
    let packet = match packet {
        Ok(_) if udp && segments > 1 => Err(Skip::Unreadable),
        other => other,
    };
    let packet = match packet {
        Ok(packet) => packet,
        Err(Skip::NotDns) => return Query::Pass,
        Err(Skip::Unreadable) if strict => return refuse_unreadable(),
        Err(Skip::Unreadable) => return Query::Pass,
    };
    // A DNS socket writing to port 53 elsewhere than a trusted resolver: under
    // `dns.queries = "allowed"` the gates let port 53 reach trusted resolvers only, so this is
    // a destination changed after them (NAT of an unconnected socket's send): not let out.
    if policy.resolver_for(&socket, packet.resolver).is_none() {
        return if strict {
            refuse_unreadable()
        } else {
            Query::Pass
        };
    }
    let Some(scratch) = take_scratch(SCRATCH_EGRESS) else {
        return if strict {
            refuse_unreadable()
        } else {
            Query::Pass
        };
    };
    if read_query(ctx, cookie, &packet, scratch).is_none() {
        scratch.busy_since_ns = 0;
        return if strict {
            refuse_unreadable()
        } else {
            Query::Pass
        };
    }
    if strict {
        // Returns only if the call fails; then the query is not let out (fail closed).
        // SAFETY: `ctx` is this cgroup_skb program's context, the type dns_query_name takes;
        // on success dns_query_name's verdict is this program's, and it frees the slot.
        unsafe { DNS_TAIL_CALLS.tail_call(ctx, QUERY_NAME_SLOT) };
        scratch.busy_since_ns = 0;
        return refuse_unreadable();
    }
    record_query(&scratch.query);
    scratch.busy_since_ns = 0;
    Query::Pass
}

/// A query that cannot be read cannot be shown to ask for an allowed name: not let out.
#[inline(always)]
fn refuse_unreadable() -> Query {
    count(Counter::QueryRefused);
    Query::Refuse
}

/// Reads the query's message and question into the scratch slot (`scratch.query`).
#[inline(always)]
fn read_query(
    ctx: &SkBuffContext,
    cookie: u64,
    packet: &DnsPacket,
    scratch: &mut DnsScratch,
) -> Option<()> {
    copy_message(ctx, packet, scratch)?;
    let header = Header::parse(&scratch.msg)?;
    if header.is_response() || !header.is_standard_single_question() {
        return None;
    }
    let question = dns::read_question(&scratch.msg, &mut scratch.walk, &mut scratch.question)?;
    scratch.query = QueryInFlight {
        key: PendingKey {
            socket_cookie: cookie,
            txid: header.id,
            client_port: packet.client_port,
            _reserved: 0,
        },
        pending: PendingQuery {
            // SAFETY: no arguments; reads the boot clock.
            sent_ns: unsafe { bpf_ktime_get_boot_ns() },
            question_hash: question.name_hash,
            resolver: packet.resolver,
            qtype: question.qtype,
            _reserved: [0; 6],
        },
        // SAFETY: the program's context, the __sk_buff the helper takes.
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.skb.skb) },
        name_len: question.name_len as u32,
        msg_offset: packet.msg_offset as u32,
        msg_len: scratch.msg.len() as u32,
        protocol: packet.protocol,
        _reserved: [0; 3],
        candidates: 0,
        scan_hash: 0,
        dots: [0; MAX_SEARCH_CANDIDATES],
        hashes: [0; MAX_SEARCH_CANDIDATES],
    };
    Some(())
}

/// Notes a query in flight, for its answer.
#[inline(always)]
fn record_query(query: &QueryInFlight) {
    if PENDING_QUERIES.insert(query.key, query.pending, 0).is_ok() {
        count(Counter::QueriesTracked);
    }
}

/// Tail call target of `dns_query_out` under `dns.queries = "allowed"`: judges the query's
/// name, records the query when it is allowed, and is the verdict on the packet.
#[cgroup_skb]
pub fn dns_query_name(ctx: SkBuffContext) -> i32 {
    // The slot dns_query_out took and filled; it stays taken until here.
    // SAFETY: this CPU's egress entry of the per-CPU array (a tail call stays on the CPU),
    // valid for this run; dns_query_out marked it busy, so no other run on this CPU uses it.
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(SCRATCH_EGRESS) else {
        return DROP;
    };
    // SAFETY: as above.
    let scratch = unsafe { &mut *scratch };
    let allowed = match Policy::in_force() {
        Some(policy) => query_allowed(&policy, scratch),
        None => false,
    };
    let query = scratch.query;
    if allowed {
        record_query(&query);
    } else {
        count(Counter::QueryRefused);
        let learning = Learning {
            cgroup_id: query.cgroup_id,
            now_ns: query.pending.sent_ns,
            resolver: query.pending.resolver,
            msg_offset: query.msg_offset,
            protocol: query.protocol,
            not_allowed: 1,
            ..Learning::default()
        };
        report_event(&ctx, &learning, query.msg_len as usize, 1);
    }
    scratch.busy_since_ns = 0;
    if allowed { PASS } else { DROP }
}

/// Whether the question (in `scratch.question`, `scratch.query.name_len` bytes) may be
/// asked: its name is allowed, or it is an allowed name followed by a search domain, which a
/// resolver configured with `search` and `ndots` asks before the name itself (glibc gives up on
/// the name at the first refused search query). A search domain must be one the daemon was
/// told of (`SEARCH_DOMAINS`) or fit in the cgroup's budget of others (`SEARCH_SUFFIXES`):
/// otherwise any name could be carried out after an allowed one.
#[inline(always)]
fn query_allowed(policy: &Policy, scratch: &mut DnsScratch) -> bool {
    let len = scratch.query.name_len as usize & (dns::NAME_BUF - 1);
    // The whole name, reversed into `scratch.key` (`registry.test.corp` → `proc.tset.yrtsiger`).
    let key_len = dns::reversed_key(&scratch.question, len, &mut scratch.key.data);
    scratch.key.prefix_len = (key_len * 8) as u32;
    // SAFETY: as in check_answer: NameKey has the trie key's layout; nothing writes
    // `scratch.key` while the reference lives.
    let key = unsafe { &*core::ptr::from_ref(&scratch.key).cast::<NameLpmKey>() };
    if policy.name(key).is_some() {
        return true;
    }
    // Each dot of the reversed name ends a candidate search domain (shortest first): note
    // where, and the domain's hash, for up to MAX_SEARCH_CANDIDATES of them.
    let query = core::ptr::from_mut(&mut scratch.query);
    // The length, read again from memory: the copy loop's exit made the verifier know its
    // exact value on each of 255 paths, and it would check what follows once per path.
    // SAFETY: `query` points into this CPU's scratch slot, owned by this run.
    let len = unsafe { core::ptr::read_volatile(&raw const (*query).name_len) } as usize
        & (dns::NAME_BUF - 1);
    // The scan's count and hash live in memory (volatile accesses), where the verifier does
    // not track their values, so every iteration has one state to check.
    // SAFETY: `query` points into this CPU's scratch slot, owned by this run (as in every
    // block below).
    unsafe {
        core::ptr::write_volatile(&raw mut (*query).candidates, 0);
        core::ptr::write_volatile(
            &raw mut (*query).scan_hash,
            dns::suffix_hash_start(policy.config.search_seed),
        );
    }
    let mut i = 0;
    // Bounded: one iteration per character of the name.
    while i < dns::NAME_BUF - 1 {
        if i >= len {
            break;
        }
        let byte = scratch.key.data[i];
        // SAFETY: as above.
        let hash = unsafe { core::ptr::read_volatile(&raw const (*query).scan_hash) };
        if byte == b'.' && i >= 3 {
            // SAFETY: as above.
            unsafe {
                let n = core::ptr::read_volatile(&raw const (*query).candidates) as usize;
                if n < MAX_SEARCH_CANDIDATES {
                    let slot = n & (MAX_SEARCH_CANDIDATES - 1);
                    (*query).dots[slot] = i as u32;
                    (*query).hashes[slot] = hash;
                    core::ptr::write_volatile(&raw mut (*query).candidates, n as u32 + 1);
                }
            }
        }
        // SAFETY: as above.
        unsafe {
            core::ptr::write_volatile(
                &raw mut (*query).scan_hash,
                dns::suffix_hash_step(hash, byte),
            );
        }
        i += 1;
    }
    // The name before each candidate, reversed, is the rest of the key after its dot, with its
    // terminator. Its trie key is built in place: the 4-byte prefix length is written over the
    // bytes up to and including the dot, which later (longer) candidates do not need.
    let base = core::ptr::from_mut(&mut scratch.key.data).cast::<u8>();
    // SAFETY: as above; read again for the same reason.
    let len = unsafe { core::ptr::read_volatile(&raw const (*query).name_len) } as usize
        & (dns::NAME_BUF - 1);
    let mut k = 0;
    // Bounded: MAX_SEARCH_CANDIDATES lookups.
    while k < MAX_SEARCH_CANDIDATES {
        // SAFETY: as above.
        let (count, dot, suffix_hash) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*query).candidates) as usize,
                (*query).dots[k] as usize & (dns::NAME_BUF - 1),
                (*query).hashes[k],
            )
        };
        if k >= count {
            break;
        }
        if dot >= 3 && dot + 1 < len {
            let candidate_len = (len - dot) as u32; // the name before the dot, and its 0
            // SAFETY: `base + dot - 3` is within `key.data` (dot ≥ 3), and the 260-byte key
            // read from there ends at most 256 bytes past `data`'s end, within `key_spill`
            // (NAME_BUF bytes) of the same scratch slot.
            let found = unsafe {
                let at = base.add(dot - 3);
                core::ptr::write_unaligned(at.cast::<u32>(), candidate_len * 8);
                policy.name(&*at.cast::<NameLpmKey>())
            };
            if let Some(rule) = found {
                let exact = rule.wildcard == 0;
                return search_domain_accepted(scratch.query.cgroup_id, suffix_hash, exact);
            }
        }
        k += 1;
    }
    false
}

/// A search domain the daemon was told of; or, after an exact name (`exact`), one this cgroup
/// has used before, or a new one while its budget lasts (counted and remembered).
#[inline(always)]
fn search_domain_accepted(cgroup_id: u64, suffix_hash: u64, exact: bool) -> bool {
    // SAFETY: only presence is used.
    if unsafe { SEARCH_DOMAINS.get(suffix_hash) }.is_some() {
        count(Counter::SearchSuffixAllowed);
        return true;
    }
    if !exact {
        return false;
    }
    let used_key = SearchKey {
        cgroup_id,
        suffix_hash,
    };
    // SAFETY: only presence is used.
    if unsafe { SEARCH_SUFFIXES.get(used_key) }.is_some() {
        count(Counter::SearchSuffixAllowed);
        return true;
    }
    let count_key = SearchKey {
        cgroup_id,
        suffix_hash: 0,
    };
    // SAFETY: a u32 copied out at once.
    let used = unsafe { SEARCH_SUFFIXES.get(count_key) }
        .copied()
        .unwrap_or(0);
    if used >= SEARCH_BUDGET {
        return false;
    }
    let _ = SEARCH_SUFFIXES.insert(count_key, used + 1, 0);
    let _ = SEARCH_SUFFIXES.insert(used_key, 1, 0);
    count(Counter::SearchSuffixAllowed);
    true
}

#[inline(always)]
fn learn_from_answer(ctx: &SkBuffContext) -> Option<()> {
    // Answers count only from a trusted resolver.
    let (cookie, socket, packet) = dns_socket_packet(ctx, false, false)?;
    let packet = packet.ok()?;
    let policy = Policy::in_force()?;
    let Some(resolver) = policy.resolver_for(&socket, packet.resolver) else {
        count(Counter::AnswerUntrusted);
        return None;
    };
    let resolver_rule_id = resolver.rule_id;
    let scratch = take_scratch(SCRATCH_INGRESS)?;
    if check_answer(ctx, cookie, &packet, &policy, resolver_rule_id, scratch).is_none() {
        // Ended before the tail calls, which free the slot at the end of the chain.
        scratch.busy_since_ns = 0;
    }
    Some(())
}

/// Checks an answer against its query and the policy, then starts the walk over its records
/// (`next_record`, which tail-calls `dns_answer_rr`).
#[inline(always)]
fn check_answer(
    ctx: &SkBuffContext,
    cookie: u64,
    packet: &DnsPacket,
    policy: &Policy,
    resolver_rule_id: u64,
    scratch: &mut DnsScratch,
) -> Option<()> {
    let config = policy.config;
    copy_message(ctx, packet, scratch)?;
    let header = Header::parse(&scratch.msg)?;
    if !header.is_response() || !header.is_standard_single_question() || header.rcode() != 0 {
        return None;
    }
    let question = dns::read_question(&scratch.msg, &mut scratch.walk, &mut scratch.question)?;
    if question.qclass != dns::CLASS_IN {
        return None;
    }

    // The answer must match a query this socket sent: same transaction id, client port,
    // resolver and question, within the query timeout. Each query is answered once.
    // SAFETY: no arguments; reads the boot clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let pending_key = PendingKey {
        socket_cookie: cookie,
        txid: header.id,
        client_port: packet.client_port,
        _reserved: 0,
    };
    // SAFETY: the element stays mapped until the run ends; PendingQuery is plain integers, so
    // one the LRU recycles meanwhile reads, at worst, as another query, which must then still
    // match the question, its type and the resolver.
    let matched = match unsafe { PENDING_QUERIES.get(pending_key) } {
        Some(query) => {
            query.question_hash == question.name_hash
                && query.qtype == question.qtype
                && query.resolver == packet.resolver
                && now.wrapping_sub(query.sent_ns) < config.query_timeout_ns
        }
        None => false,
    };
    if !matched {
        count(Counter::AnswerUnsolicited);
        return None;
    }
    let _ = PENDING_QUERIES.remove(pending_key);

    let key_len = dns::reversed_key(&scratch.question, question.name_len, &mut scratch.key.data);
    scratch.key.prefix_len = (key_len * 8) as u32;
    // NameKey has the layout of the trie's key (prefix length, then the data).
    // SAFETY: both are repr(C, packed) (alignment 1) with the same fields, a u32 and a
    // [u8; NAME_BUF]; the reference borrows `scratch.key`, which nothing writes while it lives.
    let key = unsafe { &*core::ptr::from_ref(&scratch.key).cast::<NameLpmKey>() };
    let rule = policy.name(key);
    scratch.learning = Learning {
        // SAFETY: the program's context, the __sk_buff the helper takes.
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.skb.skb) },
        now_ns: now,
        resolver: packet.resolver,
        rule_id: rule.map_or(0, |r| r.rule_id),
        resolver_rule_id,
        rule_index: rule.map_or(0, |r| r.rule_index),
        ports: rule.map_or([0; 4], |r| r.ports),
        slot: policy.slot,
        learned: 0,
        refreshed: 0,
        map_full: 0,
        forbidden: 0,
        msg_offset: packet.msg_offset as u32,
        protocol: packet.protocol,
        not_allowed: rule.is_none() as u8,
        _reserved: [0; 2],
        question_hash: question.name_hash,
    };
    if rule.is_none() {
        // Nothing is learned, but the daemon hears of the answer, so that a denial of one of
        // its addresses names the host the client asked for.
        count(Counter::AnswerNotAllowed);
        report_answer(ctx, &scratch.learning, scratch.msg.len());
        return None;
    }
    scratch.answers = dns::AnswerWalk::new(question.end, header.ancount, &question);
    next_record(ctx, scratch);
    Some(())
}

/// Tail call target: examines one answer record, then tail-calls itself for the next one.
#[cgroup_skb]
pub fn dns_answer_rr(ctx: SkBuffContext) -> i32 {
    let _ = answer_record(&ctx);
    PASS
}

#[inline(always)]
fn answer_record(ctx: &SkBuffContext) -> Option<()> {
    // The slot dns_snoop_in took; it stays taken until next_record ends the chain.
    // SAFETY: this CPU's ingress entry of the per-CPU array (a tail call stays on the CPU),
    // valid for this run; dns_snoop_in marked it busy, so no other run on this CPU uses it.
    let scratch = unsafe { &mut *DNS_SCRATCH.get_ptr_mut(SCRATCH_INGRESS)? };
    let learning = &mut scratch.learning;
    // The slot the question was judged with, even if the policy changed since.
    let config = POLICY_CONFIG.get(learning.slot & 1)?;
    dns::answer_step(
        &scratch.msg,
        &mut scratch.answers,
        &mut scratch.walk,
        &mut scratch.unused,
        |found| {
            if dns::never_learned(&found.addr) {
                learning.forbidden += 1;
                return;
            }
            match learn(learning, found, config) {
                Ok((new, expires_ns)) => {
                    if new {
                        learning.learned += 1;
                    } else {
                        learning.refreshed += 1;
                    }
                    // The names a TLS connection to this address may send: the question,
                    // and the owner of the address record (the end of the CNAME chain).
                    // Recorded whatever `registry_access.tls` says, so that turning it on
                    // finds every live address's lessons.
                    tls::teach(
                        learning.cgroup_id,
                        found.addr,
                        learning.question_hash,
                        expires_ns,
                    );
                    if found.owner_hash != learning.question_hash {
                        tls::teach(learning.cgroup_id, found.addr, found.owner_hash, expires_ns);
                    }
                }
                Err(full) => learning.map_full += full as u32,
            }
        },
    );
    next_record(ctx, scratch);
    Some(())
}

/// Moves on to the next record (a tail call, which does not return) or, at the end, counts and
/// reports what this answer taught.
#[inline(always)]
fn next_record(ctx: &SkBuffContext, scratch: &mut DnsScratch) {
    if scratch.answers.has_next() {
        // Returns only if the call fails (e.g. the tail-call limit); then the walk ends here.
        // SAFETY: `ctx` is this cgroup_skb program's context, the type dns_answer_rr takes. On
        // success the rest of this function never runs, by design (nothing is left to drop):
        // dns_answer_rr carries on from the scratch slot, which stays taken.
        unsafe { DNS_TAIL_CALLS.tail_call(ctx, ANSWER_RR_SLOT) };
    }
    scratch.answers.finish();
    let learning = scratch.learning;
    count_n(Counter::Learned, learning.learned as u64);
    count_n(Counter::Refreshed, learning.refreshed as u64);
    count_n(Counter::LearnMapFull, learning.map_full as u64);
    count_n(Counter::AnswerForbiddenAddr, learning.forbidden as u64);
    count_n(
        Counter::AnswerUnexamined,
        scratch.answers.summary.unexamined as u64,
    );
    // Refreshes of live entries are only counted: a host re-resolving its registries all day
    // must not flood the audit log. New addresses and refusals are reported.
    if learning.learned + learning.map_full + learning.forbidden > 0 {
        report_answer(ctx, &learning, scratch.msg.len());
    }
    scratch.busy_since_ns = 0;
}

/// Adds or refreshes a learned address. Lifetime: max(TTL, min_ttl), capped at max_ttl, plus
/// the grace period; a refresh never shortens it. `Ok((true, expiry))` when the address is new
/// (or had expired), `Ok((false, expiry))` for a refresh, `Err(true)` when the map is full.
#[inline(always)]
fn learn(
    learning: &Learning,
    found: dns::Found,
    config: &ram_common::PolicyConfig,
) -> Result<(bool, u64), bool> {
    let now = learning.now_ns;
    let ttl = if found.ttl >= TTL_SIGN_BIT {
        0
    } else {
        found.ttl
    };
    let mut lifetime = ttl as u64 * 1_000_000_000;
    if lifetime < config.min_ttl_ns {
        lifetime = config.min_ttl_ns;
    }
    if lifetime > config.max_ttl_ns {
        lifetime = config.max_ttl_ns;
    }
    let key = LearnedKey {
        cgroup_id: learning.cgroup_id,
        addr: found.addr,
    };
    let mut expires_ns = now + lifetime + config.grace_ns;
    let mut new = true;
    let mut ports = learning.ports;
    // SAFETY: the element stays mapped until the run ends; LearnedAddr is plain integers, so
    // one replaced meanwhile reads, at worst, as another learned address, whose expiry (itself
    // bounded by a max_ttl) may then be kept.
    if let Some(existing) = unsafe { LEARNED.get(key) } {
        new = existing.expires_ns <= now;
        if existing.expires_ns > expires_ns {
            expires_ns = existing.expires_ns;
        }
        // Two rules taught this address (two names on one front end): both rules' ports,
        // unless that needs more slots than there are (then this answer's rule's).
        if !new
            && existing.rule_id != learning.rule_id
            && rule_in_slot(learning.slot, existing.rule_id)
            && let Some(merged) = merge_ports(&existing.ports, &learning.ports)
        {
            ports = merged;
        }
    }
    let value = LearnedAddr {
        expires_ns,
        rule_id: learning.rule_id,
        resolver_rule_id: learning.resolver_rule_id,
        rule_index: learning.rule_index,
        _reserved: 0,
        ports,
    };
    match LEARNED.insert(key, value, 0) {
        Ok(()) => Ok((new, expires_ns)),
        Err(err) => Err(err == -E2BIG),
    }
}

/// Whether the policy in slot `slot` still has the rule `rule_id` (a dropped rule's ports are
/// not merged into a new answer's).
#[inline(always)]
fn rule_in_slot(slot: u32, rule_id: u64) -> bool {
    let map = if slot & 1 == 0 {
        &crate::RULE_IDS_0
    } else {
        &crate::RULE_IDS_1
    };
    // SAFETY: only presence is used.
    unsafe { map.get(rule_id) }.is_some()
}

#[inline(always)]
fn report_answer(ctx: &SkBuffContext, learning: &Learning, len: usize) {
    report_event(ctx, learning, len, 0);
}

#[inline(always)]
fn report_event(ctx: &SkBuffContext, learning: &Learning, len: usize, query_refused: u8) {
    let Some(mut entry) = DNS_EVENTS.reserve::<DnsEvent>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the entry is a reserved, exclusively owned DnsEvent; the message is copied from
    // the packet, at most MSG_MAX bytes, the size of the destination.
    unsafe {
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).cgroup_id = learning.cgroup_id;
        (*event).rule_id = learning.rule_id;
        (*event).resolver = learning.resolver;
        (*event).learned = learning.learned;
        (*event).map_full = learning.map_full;
        (*event).forbidden = learning.forbidden;
        (*event).rule_index = learning.rule_index;
        (*event).protocol = learning.protocol;
        (*event).not_allowed = learning.not_allowed;
        (*event).query_refused = query_refused;
        (*event)._reserved = 0;
        let mut copied = len;
        if copied > MSG_MAX {
            copied = MSG_MAX;
        }
        let bounded = copy_len(copied);
        if copied < HEADER_LEN
            || bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                learning.msg_offset,
                (*event).msg.as_mut_ptr().cast::<c_void>(),
                bounded,
            ) != 0
        {
            copied = 0;
        }
        (*event).msg_len = copied as u32;
    }
    entry.submit(0);
}
