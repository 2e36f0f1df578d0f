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

pub mod dns;
pub mod tls;

pub mod volatile {
    //! Volatile access to the parsers' walk state ([`crate::dns::NameWalk`],
    //! [`crate::tls::HelloWalk`]), which lives in memory rather than in registers so that the
    //! verifier sees a bounded loop's iterations as one state (see `NameWalk`).

    /// Volatile read of a walk field.
    #[inline(always)]
    pub fn get<T: Copy>(place: &T) -> T {
        // SAFETY: a shared reference is valid for reads.
        unsafe { core::ptr::read_volatile(place) }
    }

    /// Volatile write of a walk field.
    #[inline(always)]
    pub fn set<T>(place: &mut T, value: T) {
        // SAFETY: a mutable reference is valid for writes.
        unsafe { core::ptr::write_volatile(place, value) }
    }
}

pub mod maps {
    //! Map names, sizes, keys and values. Each entry says who writes the map and who reads it.

    /// Version of the pinned maps' layout. Pinned maps live in `<pin dir>/maps-v<LAYOUT>/`; a
    /// daemon adopts only maps of its own layout. Bump it whenever a map is added, removed or
    /// changes type, size or key/value layout, or when [`crate::GateEvent`] or
    /// [`crate::DnsEvent`] change other than in `_reserved` bytes (the ring buffers are pinned
    /// too, and hold events of the previous programs): a newer daemon then builds fresh maps
    /// instead of misreading old ones (and learned addresses are learned again).
    pub const LAYOUT: u32 = 5;

    /// Every map of `ram-ebpf`, all pinned (under `maps-v<LAYOUT>/`) so that enforcement,
    /// learning and the audit backlog outlive the daemon.
    pub const ALL: [&str; 31] = [
        POLICY_SLOT,
        POLICY_CONFIG,
        RULE_IDS[0],
        RULE_IDS[1],
        ALLOWED_CIDRS[0],
        ALLOWED_CIDRS[1],
        RESOLVERS[0],
        RESOLVERS[1],
        NETNS_RESOLVERS,
        ALLOWED_NAMES[0],
        ALLOWED_NAMES[1],
        AUDIT_SEEN,
        LEARNED,
        PENDING_QUERIES,
        DNS_SOCKETS,
        DNS_SCRATCH,
        TCP_DNS_STREAMS,
        DNS_TAIL_CALLS,
        COUNTERS,
        GATE_EVENTS,
        DNS_EVENTS,
        SEARCH_DOMAINS,
        SEARCH_SUFFIXES,
        CONNECTED_UDP,
        TAUGHT_NAMES,
        TLS_NOTES,
        TLS_FLOWS,
        TLS_SOCKETS,
        TLS_SCRATCH,
        TLS_EVENTS,
        TLS_TAIL_CALLS,
    ];

    /// `Array<u32>` with one entry: which slot (0 or 1) of the double-buffered policy maps
    /// ([`ALLOWED_CIDRS`], [`RESOLVERS`], [`ALLOWED_NAMES`], [`POLICY_CONFIG`]) is in force.
    /// Written by the daemon, after filling the other slot, in one 4-byte update: a policy
    /// change is atomic (every program run sees the old policy or the new one, never a mix).
    /// Read by every program at the start of each run.
    pub const POLICY_SLOT: &str = "POLICY_SLOT";

    /// `HashMap<u64, u8>` ×2: the [`crate::rule_id`]s of the hostname rules and resolvers of
    /// the policy in each slot. Written by the daemon with the other policy maps; read by the
    /// gates, which honour a learned address only if both the rule that allowed its name and
    /// the resolver that answered are in the policy in force. So a policy that drops a name or
    /// a resolver stops its learned addresses at the flip, not at the next cleanup.
    pub const RULE_IDS: [&str; 2] = ["RULE_IDS_0", "RULE_IDS_1"];
    /// Entries per slot of [`RULE_IDS`]: every hostname rule and every resolver.
    pub const RULE_IDS_MAX: u32 = ALLOWED_NAMES_MAX + RESOLVERS_MAX;

    /// `LpmTrie<LpmKey<Addr16>, CidrRule>` ×2 (slots 0 and 1): destinations allowed on any port.
    /// Written by the daemon from `allow_cidrs` and `allow_loopback`; read by every `*_gate`
    /// program. IPv4 prefixes are stored mapped (`96 + len`).
    pub const ALLOWED_CIDRS: [&str; 2] = ["ALLOWED_CIDRS_0", "ALLOWED_CIDRS_1"];
    /// Entries per slot of [`ALLOWED_CIDRS`] (an LPM trie allocates per entry, so the bound
    /// costs nothing until used).
    pub const ALLOWED_CIDRS_MAX: u32 = 16_384;

    /// `HashMap<Addr16, ResolverRule>` ×2: trusted DNS resolvers, reachable on port 53 only.
    /// Written by the daemon from `dns.resolvers`; read by every `*_gate` program and by the DNS
    /// programs.
    pub const RESOLVERS: [&str; 2] = ["RESOLVERS_0", "RESOLVERS_1"];
    /// Upper bound for [`RESOLVERS`] (resolv.conf allows 3; a policy may list a few more).
    pub const RESOLVERS_MAX: u32 = 64;

    /// `HashMap<NetnsResolverKey, ResolverRule>`: the resolvers of container networks, trusted
    /// in their own network namespace only (a container's `/etc/resolv.conf`: Docker's
    /// embedded `127.0.0.11`, the host's nameservers on the default bridge, ...). Written by the
    /// daemon as it finds the containers it enforces (under `scope.containers`) and removed when
    /// they go; read by every `*_gate` program and by the DNS programs, for sockets of those
    /// namespaces only. Not double-buffered: a container's trust follows the container, not the
    /// policy; every value carries [`crate::CONTAINER_RESOLVER_RULE_ID`], which the policy's
    /// [`RULE_IDS`] hold only while `scope.containers` is on.
    pub const NETNS_RESOLVERS: &str = "NETNS_RESOLVERS";
    /// Entries of [`NETNS_RESOLVERS`]: a few resolvers for each of thousands of containers.
    pub const NETNS_RESOLVERS_MAX: u32 = 16_384;

    /// `Array<PolicyConfig>` with two entries, one per slot. Written by the daemon; read by
    /// every program.
    pub const POLICY_CONFIG: &str = "POLICY_CONFIG";

    /// `PerCpuArray<u64>` indexed by [`crate::Counter`]. Written by the programs; summed and read
    /// by the daemon (and its tests).
    pub const COUNTERS: &str = "COUNTERS";

    /// `RingBuf` of [`crate::GateEvent`]. Written by the gates on every denial and on allowed
    /// connections as `audit.allowed` says; read by the daemon, which writes the audit log. A
    /// full buffer is counted in [`crate::Counter::EventsDropped`], never silent.
    pub const GATE_EVENTS: &str = "GATE_EVENTS";
    /// Bytes in [`GATE_EVENTS`]: 256 KiB holds ~2,700 events, several seconds of a process
    /// hammering a denied address between two reads by the daemon.
    pub const GATE_EVENTS_BYTES: u32 = 256 * 1024;

    /// `LruHashMap<AuditSeenKey, u64>`: when an allowed connection (process, destination) was
    /// last reported, for `audit.allowed = "first"`. Written and read by the gates. An LRU: a
    /// forgotten entry only means one more report.
    pub const AUDIT_SEEN: &str = "AUDIT_SEEN";
    pub const AUDIT_SEEN_MAX: u32 = 16_384;

    /// `LpmTrie<[u8; NAME_BUF], NameRule>` ×2: allowed hostnames, character-reversed (see
    /// [`crate::dns::reversed_key`]). An exact name `docker.io` is the key `oi.rekcod\0`; a
    /// wildcard `*.example.com` is `moc.elpmaxe.` (the trailing `.` makes the apex itself not
    /// match). Written by the daemon from `registry_access.allow`; read by `dns_snoop_in`.
    pub const ALLOWED_NAMES: [&str; 2] = ["ALLOWED_NAMES_0", "ALLOWED_NAMES_1"];
    /// Entries per slot of [`ALLOWED_NAMES`] (allocated per entry, like every LPM trie).
    pub const ALLOWED_NAMES_MAX: u32 = 65_536;

    /// `HashMap<LearnedKey, LearnedAddr>`: addresses learned from DNS answers, per cgroup.
    /// Written by `dns_answer_rr` before the answer reaches the socket; read by every `*_gate`
    /// program; expired entries, and entries of rules a new policy dropped, removed by the
    /// daemon. A plain hash map, not an LRU: when it is full, new addresses are not learned (and
    /// are denied), rather than evicting live ones.
    pub const LEARNED: &str = "LEARNED";
    /// Upper bound for [`LEARNED`]; the size is `dns.max_learned`.
    pub const LEARNED_MAX: u32 = 1 << 20;

    /// `LruHashMap<PendingKey, PendingQuery>`: DNS queries in flight from enforced cgroups to
    /// trusted resolvers. Written by `dns_query_out`; read and removed by `dns_snoop_in`. An LRU:
    /// queries that get no answer age out.
    pub const PENDING_QUERIES: &str = "PENDING_QUERIES";
    pub const PENDING_QUERIES_MAX: u32 = 8_192;

    /// `LruHashMap<u64, DnsSocket>`: socket cookie → [`crate::DnsSocket`] of sockets that a
    /// `*_gate` program let through to a trusted resolver on port 53: one of the policy's from
    /// the trusted network namespace, or one of [`NETNS_RESOLVERS`] from its container's
    /// namespace. Written by the gates; read by `dns_query_out` and `dns_snoop_in`, which look
    /// at no other socket and take answers only from resolvers trusted where the socket is.
    pub const DNS_SOCKETS: &str = "DNS_SOCKETS";
    pub const DNS_SOCKETS_MAX: u32 = 16_384;

    /// `PerCpuArray<DnsScratch>`: working memory of the DNS programs (far larger than the
    /// 512-byte BPF stack), one slot per direction, because an egress program running in
    /// process context can be interrupted on its CPU by the ingress programs in softirq
    /// context. Only the programs use it.
    pub const DNS_SCRATCH: &str = "DNS_SCRATCH";
    /// [`DNS_SCRATCH`] slot of `dns_query_out`.
    pub const SCRATCH_EGRESS: u32 = 0;
    /// [`DNS_SCRATCH`] slot of `dns_snoop_in` and `dns_answer_rr`.
    pub const SCRATCH_INGRESS: u32 = 1;

    /// `LruHashMap<u64, TcpDnsStream>`: socket cookie → where the next DNS message starts in
    /// each direction of a DNS-over-TCP connection. Written and read by `dns_query_out` and
    /// `dns_snoop_in`: a TCP segment is parsed only if it starts exactly at such a boundary, so
    /// bytes inside a message (which a client controls, in its query and, through it, in the
    /// resolver's reply) can never be taken for a message of their own.
    pub const TCP_DNS_STREAMS: &str = "TCP_DNS_STREAMS";
    pub const TCP_DNS_STREAMS_MAX: u32 = 4_096;

    /// `ProgramArray` of `dns_answer_rr` (`dns_snoop_in` and `dns_answer_rr` tail-call it once
    /// per answer record) and `dns_query_name` (`dns_query_out` tail-calls it per query). Written by the daemon before attaching. Pinned like every map:
    /// the kernel empties a program array when its last user-space holder goes, which would stop
    /// learning when the daemon dies.
    pub const DNS_TAIL_CALLS: &str = "DNS_TAIL_CALLS";
    /// Index of `dns_answer_rr` in [`DNS_TAIL_CALLS`].
    pub const ANSWER_RR_SLOT: u32 = 0;
    /// Index of `dns_query_name` in [`DNS_TAIL_CALLS`]: `dns_query_out` tail-calls it to judge a
    /// query's name (`dns.queries = "allowed"`), a verifier budget of its own.
    pub const QUERY_NAME_SLOT: u32 = 1;
    /// Slot of `tls_first_out`, which `dns_query_out` tail-calls to read the first bytes of a
    /// judged TCP stream as they leave.
    pub const TLS_FIRST_SLOT: u32 = 2;
    /// Slot of `tls_name_out`, which `tls_first_out` tail-calls to judge the server name.
    pub const TLS_NAME_OUT_SLOT: u32 = 3;
    /// Entries of [`DNS_TAIL_CALLS`].
    pub const DNS_TAIL_CALLS_MAX: u32 = 4;

    /// `RingBuf` of [`crate::DnsEvent`]: one event per answer that taught the kernel something
    /// (or had refused or unlearnable addresses), and per answer to a name no rule allows, with
    /// the message itself, so the daemon can name addresses. Written by `dns_snoop_in` and
    /// `dns_answer_rr`; read by the daemon. Overflow is counted in
    /// [`crate::Counter::EventsDropped`].
    pub const DNS_EVENTS: &str = "DNS_EVENTS";
    /// 1 MiB: ~490 answers between two reads by the daemon.
    pub const DNS_EVENTS_BYTES: u32 = 1024 * 1024;

    /// `HashMap<u64, u8>`: search domains the host's resolvers are configured with, as
    /// [`crate::dns::suffix_hash`]es: a query for an allowed name followed by one of them
    /// (`registry.example.com.corp.internal`, sent first by a resolver with `ndots`) is let
    /// through under `dns.queries = "allowed"`. Written by the daemon from `dns.search_domains`
    /// and the host's `/etc/resolv.conf`; read by `dns_query_out`. Not double-buffered: a
    /// search domain lets no address be learned, only a query be asked.
    pub const SEARCH_DOMAINS: &str = "SEARCH_DOMAINS";
    pub const SEARCH_DOMAINS_MAX: u32 = 256;

    /// `LruHashMap<SearchKey, u32>`: search domains the kernel has not been told of, accepted
    /// per cgroup after an allowed name (a container's or a mount namespace's own resolv.conf,
    /// `LOCALDOMAIN`): at most [`crate::SEARCH_BUDGET`] distinct ones per cgroup, so that the
    /// budget bounds what queries could carry out. The entry with `suffix_hash` 0 holds the
    /// count. Written and read by `dns_query_out`.
    pub const SEARCH_SUFFIXES: &str = "SEARCH_SUFFIXES";
    pub const SEARCH_SUFFIXES_MAX: u32 = 65_536;

    /// `LruHashMap<u64, ConnectedDest>`: socket cookie → the destination a connected UDP or ICMP
    /// socket of an enforced cgroup was last judged for. Written by the connect gates (and by
    /// the egress backstop after a full judgement); read by `dns_query_out`, so that the
    /// packets of a connected socket pass after one lookup. An LRU: a forgotten socket is
    /// judged in full again.
    pub const CONNECTED_UDP: &str = "CONNECTED_UDP";
    pub const CONNECTED_UDP_MAX: u32 = 65_536;

    /// `LruHashMap<TaughtKey, u64>`: which names taught an address to a cgroup — the question
    /// and the name owning the address record at the end of its CNAME chain — with the boot
    /// time the lesson expires (as the [`LEARNED`] entry). Written by `dns_answer_rr` for each
    /// address it learns or refreshes (whatever `registry_access.tls` says); read by
    /// `tls_hello`, which lets a TLS connection to a learned address name only one of them.
    /// An entry the LRU forgets refuses that name until the next answer: fail closed.
    pub const TAUGHT_NAMES: &str = "TAUGHT_NAMES";
    pub const TAUGHT_NAMES_MAX: u32 = 1 << 18;

    /// `LruHashMap<u64, TlsNote>`: TCP connections to learned addresses, by socket cookie,
    /// between the connect and the handshake. Written by the connect gates when they allow one
    /// (TLS judged); read by `tls_sockops` as the SYN leaves (to mark the socket), and removed
    /// by it when the connection is established.
    pub const TLS_NOTES: &str = "TLS_NOTES";
    pub const TLS_NOTES_MAX: u32 = 65_536;

    /// `LruHashMap<FlowKey, TlsFlow>`: each judged connection and its state (pending, allowed,
    /// refused). Written by `tls_sockops` (pending, or refused when data left before the
    /// connection was established: TCP Fast Open), `tls_hello` (its verdict), and
    /// `dns_query_out` (refused, when data of a pending connection leaves by a path
    /// `tls_hello` did not see). Read by `tls_hello` and `dns_query_out`, which drop payload of
    /// marked sockets ([`crate::TLS_MARK`]) unless their flow is allowed: a forgotten flow is
    /// refused.
    pub const TLS_FLOWS: &str = "TLS_FLOWS";
    pub const TLS_FLOWS_MAX: u32 = 65_536;

    /// `SockHash<FlowKey>`: the established connections whose first bytes are judged; the
    /// kernel runs `tls_hello` (attached to this map) on every send of a socket in it. Written
    /// by `tls_sockops`; a socket leaves it when it closes, or (`tls_sockops` at its first
    /// acknowledgement, else the daemon every 10 s) once its flow is allowed and verified,
    /// so that its sends take the kernel's usual path again.
    pub const TLS_SOCKETS: &str = "TLS_SOCKETS";
    pub const TLS_SOCKETS_MAX: u32 = 65_536;

    /// `PerCpuArray<TlsScratch>` with two entries ([`crate::SCRATCH_TLS_SEND`],
    /// [`crate::SCRATCH_TLS_EGRESS`]): room for a copied record and the server name's trie
    /// key (too large for the stack). Written and read by `tls_hello` and `tls_first_out`.
    pub const TLS_SCRATCH: &str = "TLS_SCRATCH";

    /// Ring buffer of `TlsEvent`s: refused (and, under `tls = "audit"`, would-be refused)
    /// ClientHellos, with the name sent. Written by `tls_hello`; read by the daemon.
    pub const TLS_EVENTS: &str = "TLS_EVENTS";
    pub const TLS_EVENTS_BYTES: u32 = 256 * 1024;

    /// `ProgramArray` of sk_msg programs: `tls_hello` tail-calls `tls_hello_name` (slot
    /// [`TLS_NAME_SLOT`]) to judge the server name, so that the verifier walks the hello and
    /// the name apart. Written by the daemon at load.
    pub const TLS_TAIL_CALLS: &str = "TLS_TAIL_CALLS";
    pub const TLS_NAME_SLOT: u32 = 0;
    pub const TLS_TAIL_CALLS_MAX: u32 = 1;
}

/// The bit of a socket's mark (`SO_MARK`) that the connect gates set on TCP connections to
/// learned addresses: `dns_query_out` looks up the flow of a marked packet carrying data
/// only. Chosen clear of the bits Docker, kube-proxy, Cilium and Tailscale use; `sockopt_gate`
/// refuses `SO_MARK` on a marked socket.
pub const TLS_MARK: u32 = 0x0020_0000;

/// Key of [`maps::TAUGHT_NAMES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaughtKey {
    pub cgroup_id: u64,
    pub addr: Addr16,
    /// FNV-1a of the name's text form ([`tls::name_hash`]).
    pub name_hash: u64,
}

/// Value of [`maps::TLS_NOTES`]: a connection the connect gates allowed to a learned address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsNote {
    /// The calling task's cgroup, whose lessons ([`maps::TAUGHT_NAMES`]) apply.
    pub cgroup_id: u64,
    pub rule_id: u64,
    pub addr: Addr16,
    /// Host byte order.
    pub port: u16,
    /// 1 when the port must carry TLS (443): anything else sent first is refused. On other
    /// ports a TLS hello is judged and other protocols pass.
    pub strict: u8,
    pub _reserved: u8,
    pub rule_index: u32,
    /// The socket's mark at connect, to which `tls_sockops` adds [`TLS_MARK`].
    pub mark: u32,
    pub _reserved2: u32,
    /// The connecting task's name, for the audit line of a refused hello (sk_msg programs
    /// cannot read it, and the process may be gone when the daemon looks).
    pub comm: [u8; 16],
}

/// Key of [`maps::TLS_FLOWS`] and [`maps::TLS_SOCKETS`]: a TCP connection as both the socket
/// programs and a packet name it (IPv4 in mapped form, ports in host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub local: Addr16,
    pub remote: Addr16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _reserved: u32,
}

/// [`TlsFlow::state`]: no verdict yet.
pub const TLS_PENDING: u8 = 0;
/// [`TlsFlow::state`]: the first bytes were judged and allowed (or passed under audit).
pub const TLS_ALLOWED: u8 = 1;
/// [`TlsFlow::state`]: refused; every later send and packet with data is too.
pub const TLS_REFUSED: u8 = 2;

/// Value of [`maps::TLS_FLOWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsFlow {
    pub cgroup_id: u64,
    pub rule_id: u64,
    pub rule_index: u32,
    /// [`TLS_PENDING`], [`TLS_ALLOWED`] or [`TLS_REFUSED`].
    pub state: u8,
    /// As [`TlsNote::strict`].
    pub strict: u8,
    /// 1 once `tls_first_out` read the first bytes of the stream as they left and allowed
    /// them: only then do later packets with data pass. What `tls_hello` judged is what the
    /// application sent in one call; what leaves first is what the server reads.
    pub verified: u8,
    pub _reserved: u8,
    /// Sequence number of the stream's first byte (`snd_nxt` when the connection was
    /// established): the packet carrying it is the one `tls_first_out` reads.
    pub first_seq: u32,
    pub _reserved2: u32,
    /// As [`TlsNote::comm`].
    pub comm: [u8; 16],
}

/// [`maps::TLS_SCRATCH`] entry of `tls_hello` (process context).
pub const SCRATCH_TLS_SEND: u32 = 0;
/// [`maps::TLS_SCRATCH`] entry of `tls_first_out` (egress, which may run in softirq context
/// and interrupt the other).
pub const SCRATCH_TLS_EGRESS: u32 = 1;

/// Value of [`maps::TLS_SCRATCH`].
#[repr(C)]
pub struct TlsScratch {
    /// As `DnsScratch::busy_since_ns`: a run that finds its entry taken leaves it alone.
    pub busy_since_ns: u64,
    /// The first bytes of a stream, copied out of a packet by `tls_first_out`.
    pub record: [u8; tls::COPIED_MAX],
    /// The server name, reversed, as an `ALLOWED_NAMES` key.
    pub key: NameKey,
    /// The hello parser's state (see [`tls::HelloWalk`] for why it lives here).
    pub walk: tls::HelloWalk,
    /// The flow whose bytes the entry holds: the tail-called judge checks it is the one it was
    /// called for (an entry taken over by another run judges nothing).
    pub owner: FlowKey,
    /// The server name as sent (lower-cased), for the event; its length is the walk's
    /// `name_len` once judged.
    pub name: dns::Name,
}

/// One judged ClientHello (refused, or would be under `tls = "audit"`), sent by `tls_hello`
/// through [`maps::TLS_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsEvent {
    pub boot_ns: u64,
    /// The cgroup whose connect the gates allowed.
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid()` of the sender.
    pub pid_tgid: u64,
    pub uid_gid: u64,
    /// [`rule_id`] of the entry that taught the address.
    pub rule_id: u64,
    pub addr: Addr16,
    pub port: u16,
    /// [`Reason`] as `u8`.
    pub reason: u8,
    /// 0 refused, 2 would be refused (`tls = "audit"`).
    pub verdict: u8,
    pub rule_index: u32,
    /// The connecting task's name ([`TlsNote::comm`]).
    pub comm: [u8; 16],
    /// Bytes of `name` holding the server name sent (0: none, or unreadable).
    pub name_len: u32,
    pub _reserved: u32,
    pub name: [u8; dns::NAME_BUF],
}

/// [`TlsEvent::verdict`] of a hello let through under `registry_access.tls = "audit"`.
pub const VERDICT_WOULD_DENY: u8 = 2;

/// Distinct search domains not known to the kernel that one cgroup may use (see
/// [`maps::SEARCH_SUFFIXES`]): glibc reads at most 6 from a resolv.conf.
pub const SEARCH_BUDGET: u32 = 6;

/// Key of [`maps::SEARCH_SUFFIXES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchKey {
    pub cgroup_id: u64,
    /// [`dns::suffix_hash`] of the search domain; 0 for the cgroup's count.
    pub suffix_hash: u64,
}

/// Value of [`maps::CONNECTED_UDP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectedDest {
    pub addr: Addr16,
    /// Host byte order.
    pub port: u16,
    pub _reserved: [u8; 6],
}

/// Destination ports a hostname rule allows its learned addresses on ([`NameRule::ports`],
/// [`LearnedAddr::ports`]): up to four, host byte order, unused slots 0; all 0 means every
/// port (`host:*`).
pub type Ports = [u16; 4];

/// The ports of an entry written without one: HTTPS, and HTTP for redirects.
pub const DEFAULT_PORTS: Ports = [443, 80, 0, 0];

/// Whether `ports` is "every port" (all slots 0).
#[inline(always)]
pub fn every_port(ports: &Ports) -> bool {
    ports[0] == 0 && ports[1] == 0 && ports[2] == 0 && ports[3] == 0
}

/// Whether `ports` allow `port`.
#[inline(always)]
pub fn ports_allow(ports: &Ports, port: u16) -> bool {
    every_port(ports)
        || (port != 0
            && (ports[0] == port || ports[1] == port || ports[2] == port || ports[3] == port))
}

/// `a` and `b` together (an address two rules taught): `None` if that needs more than four.
#[inline(always)]
pub fn merge_ports(a: &Ports, b: &Ports) -> Option<Ports> {
    if every_port(a) || every_port(b) {
        return Some([0; 4]);
    }
    let mut out = *a;
    let mut i = 0;
    // Bounded: four ports of `b`, each placed in one of four slots.
    while i < 4 {
        let port = b[i];
        if port != 0 && !(out[0] == port || out[1] == port || out[2] == port || out[3] == port) {
            if out[0] == 0 {
                out[0] = port;
            } else if out[1] == 0 {
                out[1] = port;
            } else if out[2] == 0 {
                out[2] = port;
            } else if out[3] == 0 {
                out[3] = port;
            } else {
                return None;
            }
        }
        i += 1;
    }
    Some(out)
}

/// Key of [`maps::LEARNED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    /// cgroup v2 id of the socket that received the answer (`bpf_skb_cgroup_id`) — and, at
    /// connect time, of the calling task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    pub addr: Addr16,
}

/// Value of [`maps::LEARNED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedAddr {
    /// `bpf_ktime_get_boot_ns()` after which connects are denied again.
    pub expires_ns: u64,
    /// [`rule_id`] of the `registry_access.allow` entry the question matched: survives policy
    /// changes (indexes do not), so a new policy keeps exactly the entries of rules it keeps.
    pub rule_id: u64,
    /// [`rule_id`] of the resolver that answered: a policy that stops trusting it drops the
    /// entry too.
    pub resolver_rule_id: u64,
    /// Index of that entry in the policy in force when the address was learned.
    pub rule_index: u32,
    pub _reserved: u32,
    /// Ports the address is allowed on: those of the rule, merged with another rule's when two
    /// taught the same address.
    pub ports: Ports,
}

/// A policy entry's identity across policy versions: FNV-1a (64 bit) of its kind and text,
/// e.g. `allow:*.docker.io`, `cidr:10.0.0.0/8`, `resolver:10.0.0.53`, `loopback:127.0.0.0/8`.
pub const fn rule_id(kind: &str, text: &str) -> u64 {
    let mut hash = dns::FNV_OFFSET;
    hash = fnv1a(hash, kind.as_bytes());
    hash = fnv1a(hash, b":");
    fnv1a(hash, text.as_bytes())
}

const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(dns::FNV_PRIME);
        i += 1;
    }
    hash
}

/// Key of [`maps::NETNS_RESOLVERS`]: a resolver, as seen from one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsResolverKey {
    /// `bpf_get_netns_cookie` of the namespace (`SO_NETNS_COOKIE` in user space).
    pub netns_cookie: u64,
    pub addr: Addr16,
}

/// The [`rule_id`] every [`maps::NETNS_RESOLVERS`] entry carries as its `ResolverRule::rule_id`,
/// and so every address learned from a container's resolver: in the policy's `RULE_IDS` while
/// `scope.containers` is on, so turning it off drops those addresses at the flip.
pub const CONTAINER_RESOLVER_RULE_ID: u64 = rule_id("resolver", "container networks");

/// Value of [`maps::DNS_SOCKETS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsSocket {
    /// cgroup v2 id of the task that connected or sent.
    pub cgroup_id: u64,
    /// 0: the socket talks to the policy's resolvers from the trusted namespace. Otherwise the
    /// cookie of its container's network namespace, whose [`maps::NETNS_RESOLVERS`] entries
    /// are the only resolvers its answers may come from.
    pub container_netns: u64,
}

/// Key of [`maps::PENDING_QUERIES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingKey {
    /// `bpf_get_socket_cookie` of the querying socket (the same on egress and ingress).
    pub socket_cookie: u64,
    /// DNS transaction id.
    pub txid: u16,
    /// The client's port (source port of the query, destination port of the answer).
    pub client_port: u16,
    pub _reserved: u32,
}

/// Value of [`maps::PENDING_QUERIES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingQuery {
    pub sent_ns: u64,
    /// FNV-1a of the question's text form: the answer's question must hash the same.
    pub question_hash: u64,
    /// The resolver the query went to: the answer must come from it.
    pub resolver: Addr16,
    pub qtype: u16,
    pub _reserved: [u8; 6],
}

/// Value of [`maps::ALLOWED_NAMES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameRule {
    /// Index of the entry in `registry_access.allow`.
    pub rule_index: u32,
    /// 1 for a wildcard entry (`*.example.com`), 0 for an exact name: only an exact name may be
    /// followed by a search domain the daemon was not told of (a wildcard's own labels could
    /// carry anything).
    pub wildcard: u32,
    /// [`rule_id`] of the entry.
    pub rule_id: u64,
    /// Ports its addresses are allowed on (the entry's port, else [`DEFAULT_PORTS`]).
    pub ports: Ports,
}

/// The LPM key the kernel builds for a question (same layout as aya's `lpm_trie::Key`).
#[repr(C, packed)]
pub struct NameKey {
    /// Bits to match: 8 × (reversed name length + terminator).
    pub prefix_len: u32,
    pub data: [u8; dns::NAME_BUF],
}

/// Value of [`maps::TCP_DNS_STREAMS`]: TCP sequence numbers of the next message boundary.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpDnsStream {
    /// Client → resolver (set from the SYN, advanced past each query).
    pub next_out: u32,
    /// Resolver → client (set from the SYN-ACK, advanced past each answer).
    pub next_in: u32,
    /// [`TcpDnsStream::OUT_KNOWN`] | [`TcpDnsStream::IN_KNOWN`]: which boundaries are known.
    /// A boundary that is lost (a segment too short to hold a length) stays unknown, and
    /// nothing more is parsed in that direction: fail closed.
    pub known: u32,
}

impl TcpDnsStream {
    pub const OUT_KNOWN: u32 = 1;
    pub const IN_KNOWN: u32 = 2;
}

/// Value of [`maps::DNS_SCRATCH`].
#[repr(C)]
pub struct DnsScratch {
    /// `bpf_ktime_get_boot_ns()` when a program took this slot, 0 when free. A program that
    /// finds its slot taken (it interrupted another on the same CPU, or a PREEMPT_RT kernel
    /// preempted one) leaves the packet alone rather than corrupt the other's work; a slot
    /// taken more than a millisecond ago counts as free (a run never takes that long).
    pub busy_since_ns: u64,
    pub msg: dns::Msg,
    /// The question in text form.
    pub question: dns::Name,
    /// Names read only for their length and hash (owners, CNAME targets) are not kept, but the
    /// reader needs somewhere to not write them.
    pub unused: dns::Name,
    /// The name reader's state (see [`dns::NameWalk`] for why it lives here).
    pub walk: dns::NameWalk,
    pub key: NameKey,
    /// Room after `key`: `dns_query_name` builds trie keys for the name before a search
    /// domain in place, inside `key.data`, and such a key may reach this far past it.
    pub key_spill: [u8; dns::NAME_BUF],
    /// Progress through the answer section, carried across `dns_answer_rr` tail calls.
    pub answers: dns::AnswerWalk,
    /// What `dns_answer_rr` needs to learn and report, set by `dns_snoop_in`.
    pub learning: Learning,
    /// The query `dns_query_out` read, for `dns_query_name` to judge and record.
    pub query: QueryInFlight,
}

/// A query read by `dns_query_out`, carried to `dns_query_name` (part of [`DnsScratch`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QueryInFlight {
    pub key: PendingKey,
    pub pending: PendingQuery,
    /// cgroup v2 id of the sending socket.
    pub cgroup_id: u64,
    /// Length of the question's name in `DnsScratch::question`.
    pub name_len: u32,
    /// Where the message is in the packet, and how long, to copy it into a refusal's event.
    pub msg_offset: u32,
    pub msg_len: u32,
    pub protocol: u8,
    pub _reserved: [u8; 3],
    /// Candidate search domains of a name no rule allows: how many were found, where each
    /// ends in the reversed name (its dot), and its [`dns::suffix_hash`]. Kept here rather
    /// than in registers so that the verifier sees one state per loop iteration.
    pub candidates: u32,
    /// The hash being accumulated while scanning (in memory for the same reason).
    pub scan_hash: u64,
    pub dots: [u32; MAX_SEARCH_CANDIDATES],
    pub hashes: [u64; MAX_SEARCH_CANDIDATES],
}

/// Search domains of up to this many labels are recognized after an allowed name
/// (Kubernetes' longest, `namespace.svc.cluster.local`, has four).
pub const MAX_SEARCH_CANDIDATES: usize = 8;

/// The context of one answer being learned from (part of [`DnsScratch`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Learning {
    pub cgroup_id: u64,
    pub now_ns: u64,
    pub resolver: Addr16,
    pub rule_id: u64,
    pub resolver_rule_id: u64,
    pub rule_index: u32,
    /// The rule's ports, given to every address learned.
    pub ports: Ports,
    /// The policy slot the question was judged with (its TTL settings apply).
    pub slot: u32,
    /// Addresses new to (or expired in) LEARNED.
    pub learned: u32,
    /// Live addresses whose lifetime was extended.
    pub refreshed: u32,
    pub map_full: u32,
    pub forbidden: u32,
    /// Where the message is in the packet, to copy it into the event.
    pub msg_offset: u32,
    pub protocol: u8,
    /// 1 when the question matched no allow rule (the answer is only reported).
    pub not_allowed: u8,
    pub _reserved: [u8; 2],
    /// FNV-1a of the question's text (the name a client sends as its TLS server name).
    pub question_hash: u64,
}

/// Value of [`maps::POLICY_CONFIG`]. Times in nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Learned entries live at least this long (`dns.min_ttl`) ...
    pub min_ttl_ns: u64,
    /// ... and at most this long (`dns.max_ttl`, caps huge TTLs) ...
    pub max_ttl_ns: u64,
    /// ... plus this grace period (`dns.grace_period`).
    pub grace_ns: u64,
    /// How long a query waits for its answer.
    pub query_timeout_ns: u64,
    /// Network namespace of the trusted resolvers (the daemon's); 0 means the initial one.
    pub trusted_netns_cookie: u64,
    /// Which allowed connections the gates report: [`AUDIT_ALLOWED_NONE`],
    /// [`AUDIT_ALLOWED_FIRST`] (first per process and destination in `allowed_window_ns`) or
    /// [`AUDIT_ALLOWED_ALL`]. Denials are always reported.
    pub audit_allowed: u32,
    /// [`FLAG_QUERIES_ALLOWED`] | [`FLAG_PING`].
    pub flags: u32,
    pub allowed_window_ns: u64,
    /// The key of [`dns::suffix_hash`], random, chosen by the daemon that made the maps and
    /// kept by the next: without it, a search domain colliding with a known one could be
    /// computed offline (FNV-1a can be run backwards).
    pub search_seed: u64,
}

/// `dns.queries = "allowed"`: queries to trusted resolvers only for names the policy allows.
pub const FLAG_QUERIES_ALLOWED: u32 = 1;
/// `registry_access.allow_ping`: ICMP ping sockets, to destinations the policy allows.
pub const FLAG_PING: u32 = 2;
/// `registry_access.tls = "enforce"`: TCP connections to learned addresses must name, in
/// their TLS ClientHello, a name that taught the address (see [`maps::TLS_FLOWS`]).
pub const FLAG_TLS_ENFORCE: u32 = 4;
/// `registry_access.tls = "audit"`: the same judgement, reported as `would_deny`, nothing
/// refused.
pub const FLAG_TLS_AUDIT: u32 = 8;

pub const AUDIT_ALLOWED_NONE: u32 = 0;
pub const AUDIT_ALLOWED_FIRST: u32 = 1;
pub const AUDIT_ALLOWED_ALL: u32 = 2;

/// Key of [`maps::AUDIT_SEEN`]: one process talking to one destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditSeenKey {
    pub cgroup_id: u64,
    pub addr: Addr16,
    /// Process id (tgid).
    pub pid: u32,
    pub port: u16,
    pub protocol: u8,
    pub _reserved: u8,
}

/// One answer that taught the kernel addresses, sent with the message so that the daemon can
/// name the addresses (see [`maps::DNS_EVENTS`]).
#[repr(C)]
pub struct DnsEvent {
    pub boot_ns: u64,
    /// cgroup v2 id of the receiving socket.
    pub cgroup_id: u64,
    /// [`rule_id`] of the `registry_access.allow` entry the question matched.
    pub rule_id: u64,
    /// The resolver that answered.
    pub resolver: Addr16,
    /// Addresses learned from this answer.
    pub learned: u32,
    /// Addresses not learned because [`maps::LEARNED`] was full.
    pub map_full: u32,
    /// Addresses refused by [`dns::never_learned`].
    pub forbidden: u32,
    /// Bytes of `msg` that hold the message.
    pub msg_len: u32,
    /// Index of the `registry_access.allow` entry the question matched.
    pub rule_index: u32,
    /// IPPROTO_UDP or IPPROTO_TCP.
    pub protocol: u8,
    /// 1 when the question is not allowed (nothing learned; sent so that the daemon can name
    /// the addresses in later denials), else 0.
    pub not_allowed: u8,
    /// 1 when this is a query `dns_query_out` refused (`dns.queries = "allowed"`), which never
    /// left; `msg` is the query. Else 0.
    pub query_refused: u8,
    pub _reserved: u8,
    pub msg: [u8; dns::MSG_MAX],
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
    /// [`rule_id`] of the entry.
    pub rule_id: u64,
    /// The one destination port this entry allows, host byte order; 0: every port. The image
    /// gate's entry names its port, so that nothing else listening on that address is allowed.
    pub port: u16,
    pub _reserved: [u16; 3],
}

/// Value of [`maps::RESOLVERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolverRule {
    /// Index in `dns.resolvers` (or in /etc/resolv.conf's nameservers when the policy has none).
    pub rule_index: u32,
    pub _reserved: u32,
    /// [`rule_id`] of the entry.
    pub rule_id: u64,
}

/// Rule index for entries that no policy line produced (loopback).
pub const BUILTIN_RULE: u32 = u32::MAX;

/// Why a connection was allowed or denied. Stored as `u8` in [`GateEvent::reason`] and as `u32`
/// in [`CidrRule::reason`]; the numbers are part of the kernel/user contract: do not renumber.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Destination not covered by any rule, nor learned from DNS for this cgroup.
    NotLearned = 1,
    /// Covered by an `allow_cidrs` entry.
    AllowedCidr = 2,
    /// Loopback (or the unspecified address, which Linux connects to loopback).
    AllowedLoopback = 3,
    /// A configured resolver on port 53.
    AllowedResolver = 4,
    /// Learned from a DNS answer to an allowed name, not yet expired.
    AllowedLearned = 5,
    /// Learned once, but the entry has expired.
    Expired = 6,
    /// A resolver on port 53, but from a network namespace where it is not trusted (neither the
    /// trusted namespace nor a container network whose resolver it is).
    UntrustedNetns = 7,
    /// The Docker Hub pull gate of Image Access Management (its address and port).
    AllowedImageGate = 8,
    /// A socket the connect/sendmsg gates would never judge (raw, SCTP, DCCP, L2TP/IP, ICMP
    /// ping, MPTCP, UDP-Lite, ...): refused at creation.
    SocketType = 9,
    /// A learned address, on a port its rule does not name.
    PortNotAllowed = 10,
    /// A DNS query for a name no rule allows (`dns.queries = "allowed"`).
    QueryNotAllowed = 11,
    /// Port 53 of an address that is not a trusted resolver (`dns.queries = "allowed"`: an
    /// `allow_cidrs` range or loopback does not open DNS to any server).
    ResolverNotTrusted = 12,
    /// A TLS ClientHello to a learned address without a server name.
    TlsNoName = 13,
    /// A server name no rule allows.
    TlsNameNotAllowed = 14,
    /// An allowed server name, but not one that taught this address to this cgroup (another
    /// tenant of a shared front end).
    TlsNameNotTaught = 15,
    /// Data that is not a TLS handshake, on a port that carries TLS (443).
    TlsNotHandshake = 16,
    /// A TLS record that cannot be read as one whole ClientHello, or data that left by a path
    /// the hello check did not see (TCP Fast Open, a send begun before the connection was
    /// established).
    TlsUnreadable = 17,
    /// UDP to a learned address on a TLS port: QUIC (HTTP/3), whose hello is encrypted, is not
    /// judged but refused; clients fall back to TCP.
    QuicRefused = 18,
    /// A ClientHello with an Encrypted ClientHello extension: the name the front end would
    /// serve is hidden.
    TlsEncryptedHello = 19,
}

impl Reason {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::NotLearned),
            2 => Some(Self::AllowedCidr),
            3 => Some(Self::AllowedLoopback),
            4 => Some(Self::AllowedResolver),
            5 => Some(Self::AllowedLearned),
            6 => Some(Self::Expired),
            7 => Some(Self::UntrustedNetns),
            8 => Some(Self::AllowedImageGate),
            9 => Some(Self::SocketType),
            10 => Some(Self::PortNotAllowed),
            11 => Some(Self::QueryNotAllowed),
            12 => Some(Self::ResolverNotTrusted),
            13 => Some(Self::TlsNoName),
            14 => Some(Self::TlsNameNotAllowed),
            15 => Some(Self::TlsNameNotTaught),
            16 => Some(Self::TlsNotHandshake),
            17 => Some(Self::TlsUnreadable),
            18 => Some(Self::QuicRefused),
            19 => Some(Self::TlsEncryptedHello),
            _ => None,
        }
    }

    /// The name used in logs and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotLearned => "not_learned",
            Self::AllowedCidr => "cidr",
            Self::AllowedLoopback => "loopback",
            Self::AllowedResolver => "resolver",
            Self::AllowedLearned => "learned",
            Self::Expired => "expired",
            Self::UntrustedNetns => "untrusted_netns",
            Self::AllowedImageGate => "image_gate",
            Self::SocketType => "socket_type",
            Self::PortNotAllowed => "port_not_allowed",
            Self::QueryNotAllowed => "query_not_allowed",
            Self::ResolverNotTrusted => "resolver_not_trusted",
            Self::TlsNoName => "tls_no_name",
            Self::TlsNameNotAllowed => "tls_name_not_allowed",
            Self::TlsNameNotTaught => "tls_name_not_taught",
            Self::TlsNotHandshake => "tls_not_handshake",
            Self::TlsUnreadable => "tls_unreadable",
            Self::QuicRefused => "quic_refused",
            Self::TlsEncryptedHello => "tls_encrypted_hello",
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
    /// Events that did not fit into [`maps::GATE_EVENTS`] or [`maps::DNS_EVENTS`].
    EventsDropped = 4,
    AllowedLearned = 5,
    /// Queries to trusted resolvers seen leaving an enforced cgroup.
    QueriesTracked = 6,
    /// Addresses learned from answers (new, or expired before).
    Learned = 7,
    /// Addresses not learned because [`maps::LEARNED`] was full (they stay denied).
    LearnMapFull = 8,
    /// Answers from a source that is not a trusted resolver, or to a socket that did not query
    /// one through a gate: ignored.
    AnswerUntrusted = 9,
    /// Answers matching no query in flight (transaction id, ports, question, resolver, time).
    AnswerUnsolicited = 10,
    /// Answers to questions the policy does not allow: nothing learned, as intended.
    AnswerNotAllowed = 11,
    /// Addresses refused by [`dns::never_learned`] (loopback, link-local, ...).
    AnswerForbiddenAddr = 12,
    /// Answer records not examined: past [`dns::MAX_ANSWERS`], malformed, or beyond
    /// [`dns::MSG_MAX`] bytes.
    AnswerUnexamined = 13,
    /// DNS-over-TCP messages not parsed: split across segments, or in a segment that does not
    /// start at the stream's next message boundary (e.g. a second message in one segment).
    DnsTcpSplit = 14,
    /// Live learned addresses whose lifetime an answer extended.
    Refreshed = 15,
    /// DNS packets left alone because their CPU's scratch slot was busy.
    ScratchBusy = 16,
    /// Packets an enforced cgroup sent from port 53 (UDP, TCP or raw): dropped, as they could
    /// pose as a resolver's answer to its own queries (a container's root can bind
    /// `127.0.0.11:53` in its namespace, where Docker's embedded DNS listens elsewhere).
    SpoofedDnsDropped = 17,
    /// Sockets an enforced cgroup asked for that the gates would not judge: refused
    /// ([`Reason::SocketType`]).
    DeniedSocket = 18,
    /// Source routes and routing headers refused: `IP_OPTIONS`/`IPV6_RTHDR` set on an
    /// enforced socket, or packets of one carrying IPv4 options or an IPv6 routing header
    /// (sent as control messages): dropped, as they would go elsewhere than the address the
    /// gates judged.
    RedirectRefused = 19,
    /// DNS queries for names no rule allows, dropped before they left (`dns.queries`).
    QueryRefused = 20,
    /// Queries let through as an allowed name followed by a search domain.
    SearchSuffixAllowed = 21,
    /// Packets of connected UDP or ICMP sockets whose destination the policy does not allow
    /// (the egress backstop).
    BackstopDropped = 22,
    /// ClientHellos to learned addresses allowed (or data other than TLS on a port that need
    /// not carry it).
    TlsAllowed = 23,
    /// ClientHellos refused (`registry_access.tls = "enforce"`).
    TlsRefused = 24,
    /// ClientHellos that would have been refused (`"audit"`).
    TlsWouldDeny = 25,
    /// Packets with data of a marked connection whose flow was not allowed (sent by a path
    /// `tls_hello` did not see, or forgotten by the LRU): dropped.
    TlsUnjudgedDropped = 26,
    /// Connections whose state `tls_hello` did not find: refused.
    TlsFlowLost = 27,
}

impl Counter {
    pub const COUNT: u32 = 28;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::AllowedCidr,
        Self::AllowedLoopback,
        Self::AllowedResolver,
        Self::Denied,
        Self::EventsDropped,
        Self::AllowedLearned,
        Self::QueriesTracked,
        Self::Learned,
        Self::LearnMapFull,
        Self::AnswerUntrusted,
        Self::AnswerUnsolicited,
        Self::AnswerNotAllowed,
        Self::AnswerForbiddenAddr,
        Self::AnswerUnexamined,
        Self::DnsTcpSplit,
        Self::Refreshed,
        Self::ScratchBusy,
        Self::SpoofedDnsDropped,
        Self::DeniedSocket,
        Self::RedirectRefused,
        Self::QueryRefused,
        Self::SearchSuffixAllowed,
        Self::BackstopDropped,
        Self::TlsAllowed,
        Self::TlsRefused,
        Self::TlsWouldDeny,
        Self::TlsUnjudgedDropped,
        Self::TlsFlowLost,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AllowedCidr => "allowed_cidr",
            Self::AllowedLoopback => "allowed_loopback",
            Self::AllowedResolver => "allowed_resolver",
            Self::Denied => "denied",
            Self::EventsDropped => "events_dropped",
            Self::AllowedLearned => "allowed_learned",
            Self::QueriesTracked => "queries_tracked",
            Self::Learned => "learned",
            Self::LearnMapFull => "learn_map_full",
            Self::AnswerUntrusted => "answer_untrusted",
            Self::AnswerUnsolicited => "answer_unsolicited",
            Self::AnswerNotAllowed => "answer_not_allowed",
            Self::AnswerForbiddenAddr => "answer_forbidden_addr",
            Self::AnswerUnexamined => "answer_unexamined",
            Self::DnsTcpSplit => "dns_tcp_split",
            Self::Refreshed => "refreshed",
            Self::ScratchBusy => "scratch_busy",
            Self::SpoofedDnsDropped => "spoofed_dns_dropped",
            Self::DeniedSocket => "denied_socket",
            Self::RedirectRefused => "redirect_refused",
            Self::QueryRefused => "query_refused",
            Self::SearchSuffixAllowed => "search_suffix_allowed",
            Self::BackstopDropped => "backstop_dropped",
            Self::TlsAllowed => "tls_allowed",
            Self::TlsRefused => "tls_refused",
            Self::TlsWouldDeny => "tls_would_deny",
            Self::TlsUnjudgedDropped => "tls_unjudged_dropped",
            Self::TlsFlowLost => "tls_flow_lost",
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
    /// Socket creation (`socket_gate`).
    SocketCreate = 5,
    /// A packet leaving (`dns_query_out`: the backstop, refused DNS queries).
    Egress = 6,
    /// The first bytes sent on a TCP connection to a learned address (`tls_hello`).
    TlsHello = 7,
}

impl Hook {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Connect4),
            2 => Some(Self::Connect6),
            3 => Some(Self::Sendmsg4),
            4 => Some(Self::Sendmsg6),
            5 => Some(Self::SocketCreate),
            6 => Some(Self::Egress),
            7 => Some(Self::TlsHello),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
            Self::SocketCreate => "socket_create",
            Self::Egress => "egress",
            Self::TlsHello => "tls_hello",
        }
    }
}

/// One decision, sent by a `*_gate` program through [`maps::GATE_EVENTS`] to the daemon.
/// 88 bytes; field offsets are part of the contract (append, never reorder).
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
    /// IPPROTO_TCP / IPPROTO_UDP / ... of the socket (255 for larger numbers: see
    /// `socket_protocol`).
    pub protocol: u8,
    /// For [`Hook::SocketCreate`]: the protocol asked for, whole (MPTCP is 262); else 0.
    pub socket_protocol: u16,
    /// Index of the policy entry that matched, [`BUILTIN_RULE`] when none did.
    pub rule_index: u32,
    /// For [`Hook::SocketCreate`]: the address family (AF_INET, AF_INET6) and socket type
    /// (SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, ...); else 0.
    pub socket_family: u16,
    pub socket_type: u16,
    /// [`rule_id`] of the policy entry that matched, 0 when none did.
    pub rule_id: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::CidrRule {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::ResolverRule {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::GateEvent {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::LearnedKey {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::LearnedAddr {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::NameRule {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::PolicyConfig {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::AuditSeenKey {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::NetnsResolverKey {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::DnsSocket {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::SearchKey {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::ConnectedDest {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::TaughtKey {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::TlsFlow {}
    // SAFETY: plain old data: `repr(C)`, integers and byte arrays only, every bit pattern valid.
    unsafe impl aya::Pod for super::TlsNote {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_stable() {
        assert_eq!(size_of::<GateEvent>(), 88);
        assert_eq!(size_of::<LearnedAddr>(), 40);
        assert_eq!(size_of::<NameRule>(), 24);
        assert_eq!(size_of::<SearchKey>(), 16);
        assert_eq!(size_of::<ConnectedDest>(), 24);
        assert_eq!(size_of::<AuditSeenKey>(), 32);
        assert_eq!(size_of::<CidrRule>(), 24);
        assert_eq!(size_of::<ResolverRule>(), 16);
        assert_eq!(size_of::<LearnedKey>(), 24);
        assert_eq!(size_of::<PendingKey>(), 16);
        assert_eq!(size_of::<PendingQuery>(), 40);
        assert_eq!(size_of::<NameKey>(), 260);
        assert_eq!(size_of::<NetnsResolverKey>(), 24);
        assert_eq!(size_of::<DnsSocket>(), 16);
        assert_eq!(size_of::<TaughtKey>(), 32);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<TlsFlow>(), 48);
        assert_eq!(size_of::<TlsNote>(), 64);
        assert_eq!(size_of::<TlsEvent>(), 344);
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
            Reason::NotLearned,
            Reason::AllowedCidr,
            Reason::AllowedLoopback,
            Reason::AllowedResolver,
            Reason::AllowedLearned,
            Reason::Expired,
            Reason::UntrustedNetns,
            Reason::AllowedImageGate,
            Reason::SocketType,
            Reason::PortNotAllowed,
            Reason::QueryNotAllowed,
            Reason::ResolverNotTrusted,
            Reason::TlsNoName,
            Reason::TlsNameNotAllowed,
            Reason::TlsNameNotTaught,
            Reason::TlsNotHandshake,
            Reason::TlsUnreadable,
            Reason::QuicRefused,
            Reason::TlsEncryptedHello,
        ] {
            assert_eq!(Reason::from_u8(reason as u8), Some(reason));
        }
        for hook in [
            Hook::Connect4,
            Hook::Connect6,
            Hook::Sendmsg4,
            Hook::Sendmsg6,
            Hook::SocketCreate,
            Hook::Egress,
            Hook::TlsHello,
        ] {
            assert_eq!(Hook::from_u8(hook as u8), Some(hook));
        }
        assert_eq!(Counter::ALL.len() as u32, Counter::COUNT);
    }

    #[test]
    fn ports_allow_and_merge() {
        assert!(ports_allow(&DEFAULT_PORTS, 443) && ports_allow(&DEFAULT_PORTS, 80));
        assert!(!ports_allow(&DEFAULT_PORTS, 22) && !ports_allow(&DEFAULT_PORTS, 0));
        assert!(ports_allow(&[0; 4], 22));
        assert_eq!(
            merge_ports(&DEFAULT_PORTS, &[5000, 0, 0, 0]),
            Some([443, 80, 5000, 0])
        );
        assert_eq!(
            merge_ports(&DEFAULT_PORTS, &DEFAULT_PORTS),
            Some(DEFAULT_PORTS)
        );
        assert_eq!(merge_ports(&DEFAULT_PORTS, &[0; 4]), Some([0; 4]));
        assert_eq!(merge_ports(&[1, 2, 3, 4], &[5, 0, 0, 0]), None);
    }
}
