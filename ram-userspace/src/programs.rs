//! Loading ram's eBPF object, filling its maps from a compiled policy, and attaching the gate
//! programs to cgroups. Dropping an [`Enforcer`] detaches everything it attached.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key},
    programs::{
        CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, links::CgroupAttachMode,
    },
};
use ram_common::{
    Addr16, CidrRule, Counter, DnsConfig, LearnedAddr, LearnedKey, NameRule, ResolverRule,
    dns::NAME_BUF,
    maps::{
        ALLOWED_CIDRS, ALLOWED_CIDRS_MAX, ALLOWED_NAMES, ALLOWED_NAMES_MAX, ANSWER_RR_SLOT,
        COUNTERS, DNS_CONFIG, DNS_EVENTS, DNS_TAIL_CALLS, GATE_EVENTS, LEARNED, LEARNED_MAX,
        RESOLVERS, RESOLVERS_MAX,
    },
};

use crate::{cgroup::CgroupDir, compile::CompiledPolicy};

/// The eBPF object built by build.rs from `ram-ebpf`, embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ram-ebpf"));

/// A program of `ram-ebpf` and the `bpf_attach_type` it is attached with.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    pub name: &'static str,
    /// `enum bpf_attach_type` value (include/uapi/linux/bpf.h), used with BPF_PROG_QUERY.
    pub attach_type: u32,
}

/// Every program the daemon attaches to an enforced cgroup.
pub const GATES: [Gate; 4] = [
    Gate {
        name: "connect4_gate",
        attach_type: 10, // BPF_CGROUP_INET4_CONNECT
    },
    Gate {
        name: "connect6_gate",
        attach_type: 11, // BPF_CGROUP_INET6_CONNECT
    },
    Gate {
        name: "sendmsg4_gate",
        attach_type: 14, // BPF_CGROUP_UDP4_SENDMSG
    },
    Gate {
        name: "sendmsg6_gate",
        attach_type: 15, // BPF_CGROUP_UDP6_SENDMSG
    },
];

/// A cgroup_skb program of `ram-ebpf` and the direction it watches.
#[derive(Debug, Clone, Copy)]
pub struct Snooper {
    pub name: &'static str,
    pub direction: CgroupSkbAttachType,
    /// `enum bpf_attach_type` value (BPF_CGROUP_INET_INGRESS = 0, _EGRESS = 1).
    pub attach_type: u32,
}

/// The DNS programs; attached before the gates, so that no query a gate lets through goes
/// unrecorded.
pub const SNOOPERS: [Snooper; 2] = [
    Snooper {
        name: "dns_query_out",
        direction: CgroupSkbAttachType::Egress,
        attach_type: 1,
    },
    Snooper {
        name: "dns_snoop_in",
        direction: CgroupSkbAttachType::Ingress,
        attach_type: 0,
    },
];

/// The program `dns_snoop_in` tail-calls once per answer record (loaded, never attached).
pub const ANSWER_RR: &str = "dns_answer_rr";

/// Names of every program ram loads.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    std::iter::once(ANSWER_RR)
        .chain(SNOOPERS.iter().map(|s| s.name))
        .chain(GATES.iter().map(|g| g.name))
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(
        "this ram binary was built with AYA_BUILD_SKIP and holds no eBPF programs; rebuild it \
         without that variable (`cargo xtask setup` installs what the build needs)"
    )]
    NoObject,
    #[error(
        "the policy needs {needed} entries in {map}, more than its limit of {limit}; shorten \
         the policy"
    )]
    TooLarge {
        map: &'static str,
        needed: usize,
        limit: u32,
    },
    #[error(
        "loading ram's eBPF object failed: {0}; ram needs root (CAP_BPF and CAP_NET_ADMIN) and a \
         kernel with BPF and BTF support"
    )]
    Object(#[from] aya::EbpfError),
    #[error("map {map} is missing from ram's eBPF object (a build mismatch; rebuild ram)")]
    MissingMap { map: &'static str },
    #[error("program {program} is missing from ram's eBPF object (a build mismatch; rebuild ram)")]
    MissingProgram { program: &'static str },
    #[error("writing map {map} failed: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "the kernel refused program {program}: {source}\n{verifier_tail}\nram needs a kernel with \
         cgroup sock_addr hooks (4.17+; 5.15+ is supported); see README \"Supported kernels\""
    )]
    Verifier {
        program: &'static str,
        source: std::io::Error,
        verifier_tail: String,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("attaching {program} to cgroup {cgroup} failed: {source}")]
    Attach {
        program: &'static str,
        cgroup: String,
        source: ProgramError,
    },
}

/// The loaded programs and maps. Attachments live as long as this value.
pub struct Enforcer {
    ebpf: Ebpf,
}

impl Enforcer {
    /// Loads the object with maps sized to `policy`, fills the maps, and loads (verifies) every
    /// program. Nothing is attached yet, so a failure here leaves the system untouched.
    pub fn load(policy: &CompiledPolicy) -> Result<Self, EnforceError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EnforceError::NoObject);
        }
        raise_memlock_limit();

        let cidr_entries = check_size(ALLOWED_CIDRS, policy.cidrs.len(), ALLOWED_CIDRS_MAX)?;
        let resolver_entries = check_size(RESOLVERS, policy.resolvers.len(), RESOLVERS_MAX)?;
        let name_entries = check_size(ALLOWED_NAMES, policy.names.len(), ALLOWED_NAMES_MAX)?;
        let learned_entries = check_size(LEARNED, policy.max_learned as usize, LEARNED_MAX)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(ALLOWED_CIDRS, cidr_entries)
            .map_max_entries(RESOLVERS, resolver_entries)
            .map_max_entries(ALLOWED_NAMES, name_entries)
            .map_max_entries(LEARNED, learned_entries)
            .load(EBPF_OBJECT)?;

        let mut names: LpmTrie<_, [u8; NAME_BUF], NameRule> = typed_map(&mut ebpf, ALLOWED_NAMES)?;
        for entry in &policy.names {
            names
                .insert(&Key::new(entry.prefix_len, entry.key), entry.rule, 0)
                .map_err(|source| map_error(ALLOWED_NAMES, source))?;
        }
        let mut config: Array<_, DnsConfig> = typed_map(&mut ebpf, DNS_CONFIG)?;
        let value = DnsConfig {
            trusted_netns_cookie: own_netns_cookie().unwrap_or(0),
            ..policy.dns
        };
        config
            .set(0, value, 0)
            .map_err(|source| map_error(DNS_CONFIG, source))?;
        let mut cidrs: LpmTrie<_, Addr16, CidrRule> = typed_map(&mut ebpf, ALLOWED_CIDRS)?;
        for entry in &policy.cidrs {
            cidrs
                .insert(&Key::new(entry.prefix_len, entry.addr), entry.rule, 0)
                .map_err(|source| map_error(ALLOWED_CIDRS, source))?;
        }
        let mut resolvers: HashMap<_, Addr16, ResolverRule> = typed_map(&mut ebpf, RESOLVERS)?;
        for (addr, rule) in policy.resolver_entries() {
            resolvers
                .insert(addr, rule, 0)
                .map_err(|source| map_error(RESOLVERS, source))?;
        }

        {
            let answer_rr = skb_program_mut(&mut ebpf, ANSWER_RR)?;
            answer_rr
                .load()
                .map_err(|source| load_error(ANSWER_RR, source))?;
            let fd = answer_rr
                .fd()
                .map_err(|source| load_error(ANSWER_RR, source))?
                .try_clone()
                .map_err(|err| load_error(ANSWER_RR, ProgramError::IOError(err)))?;
            let map = ebpf
                .map_mut(DNS_TAIL_CALLS)
                .ok_or(EnforceError::MissingMap {
                    map: DNS_TAIL_CALLS,
                })?;
            let mut tail_calls =
                ProgramArray::try_from(map).map_err(|source| map_error(DNS_TAIL_CALLS, source))?;
            tail_calls
                .set(ANSWER_RR_SLOT, &fd, 0)
                .map_err(|source| map_error(DNS_TAIL_CALLS, source))?;
        }
        for snooper in SNOOPERS {
            skb_program_mut(&mut ebpf, snooper.name)?
                .load()
                .map_err(|source| load_error(snooper.name, source))?;
        }
        for gate in GATES {
            program_mut(&mut ebpf, gate.name)?
                .load()
                .map_err(|source| load_error(gate.name, source))?;
        }
        Ok(Self { ebpf })
    }

    /// Attaches every gate to `cgroup` as a bpf_link. Links are always multi-attach: programs
    /// others attached to the same cgroup keep running, and all of them must allow a call. (The
    /// kernel rejects link-create flags, so the mode passed is `Single`, i.e. no flags; aya only
    /// falls back to exclusive `BPF_PROG_ATTACH` on kernels before 5.7, which ram does not
    /// support.) On error, the gates attached by this call stay attached
    /// until the enforcer is dropped (the caller drops it: a partial attach is never kept).
    pub fn attach(&mut self, cgroup: &CgroupDir) -> Result<(), EnforceError> {
        let file = cgroup.open().map_err(|err| EnforceError::Attach {
            program: GATES[0].name,
            cgroup: cgroup.path.display().to_string(),
            source: ProgramError::IOError(std::io::Error::other(err.to_string())),
        })?;
        for snooper in SNOOPERS {
            skb_program_mut(&mut self.ebpf, snooper.name)?
                .attach(&file, snooper.direction, CgroupAttachMode::Single)
                .map_err(|source| EnforceError::Attach {
                    program: snooper.name,
                    cgroup: cgroup.path.display().to_string(),
                    source,
                })?;
        }
        for gate in GATES {
            program_mut(&mut self.ebpf, gate.name)?
                .attach(&file, CgroupAttachMode::Single)
                .map_err(|source| EnforceError::Attach {
                    program: gate.name,
                    cgroup: cgroup.path.display().to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Per-counter totals over all CPUs, indexed like [`Counter::ALL`].
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize], EnforceError> {
        let map = self
            .ebpf
            .map(COUNTERS)
            .ok_or(EnforceError::MissingMap { map: COUNTERS })?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| map_error(COUNTERS, source))?;
        let mut totals = [0u64; Counter::COUNT as usize];
        for counter in Counter::ALL {
            let values = counters
                .get(&(counter as u32), 0)
                .map_err(|source| map_error(COUNTERS, source))?;
            totals[counter as usize] = values.iter().sum();
        }
        Ok(totals)
    }

    /// Removes learned addresses that expired before `now_boot_ns` (CLOCK_BOOTTIME, the
    /// programs' clock). Returns how many were removed and how many remain.
    pub fn expire_learned(&mut self, now_boot_ns: u64) -> Result<(usize, usize), EnforceError> {
        let map = self
            .ebpf
            .map_mut(LEARNED)
            .ok_or(EnforceError::MissingMap { map: LEARNED })?;
        let mut learned: HashMap<_, LearnedKey, LearnedAddr> =
            HashMap::try_from(map).map_err(|source| map_error(LEARNED, source))?;
        let mut expired = Vec::new();
        let mut total = 0;
        for item in learned.iter() {
            let (key, value) = item.map_err(|source| map_error(LEARNED, source))?;
            total += 1;
            if value.expires_ns <= now_boot_ns {
                expired.push(key);
            }
        }
        for key in &expired {
            // Gone already (the kernel may refresh, never remove): nothing to do.
            let _ = learned.remove(key);
        }
        Ok((expired.len(), total - expired.len()))
    }

    /// Whether the kernel holds `key` in LEARNED (and until when).
    pub fn learned_entry(&self, key: &LearnedKey) -> Option<LearnedAddr> {
        let map = self.ebpf.map(LEARNED)?;
        let learned: HashMap<_, LearnedKey, LearnedAddr> = HashMap::try_from(map).ok()?;
        learned.get(key, 0).ok()
    }

    /// Instructions the verifier processed per program (kernels 5.16+), for the README table.
    pub fn verified_instructions(&self) -> Vec<(&'static str, Option<u32>)> {
        program_names()
            .map(|name| {
                let count = self
                    .ebpf
                    .program(name)
                    .and_then(|program| program.info().ok())
                    .and_then(|info| info.verified_instruction_count());
                (name, count)
            })
            .collect()
    }

    /// The ring buffer of learning events (with the answers); call once.
    pub fn take_dns_events(&mut self) -> Result<RingBuf<MapData>, EnforceError> {
        let map = self
            .ebpf
            .take_map(DNS_EVENTS)
            .ok_or(EnforceError::MissingMap { map: DNS_EVENTS })?;
        RingBuf::try_from(map).map_err(|source| map_error(DNS_EVENTS, source))
    }

    /// The ring buffer of denial events; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, EnforceError> {
        let map = self
            .ebpf
            .take_map(GATE_EVENTS)
            .ok_or(EnforceError::MissingMap { map: GATE_EVENTS })?;
        RingBuf::try_from(map).map_err(|source| map_error(GATE_EVENTS, source))
    }
}

/// Program `name` of the object as the program type `T` (`CgroupSockAddr`, `CgroupSkb`).
fn program_as<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EnforceError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EnforceError::MissingProgram { program: name })?
        .try_into()
        .map_err(|source| EnforceError::Program {
            program: name,
            source,
        })
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, EnforceError> {
    program_as(ebpf, name)
}

fn skb_program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSkb, EnforceError> {
    program_as(ebpf, name)
}

fn load_error(program: &'static str, source: ProgramError) -> EnforceError {
    match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => EnforceError::Verifier {
            program,
            source: io_error,
            verifier_tail: last_lines(&verifier_log.to_string(), 20),
        },
        source => EnforceError::Program { program, source },
    }
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+): the
/// namespace where the trusted resolvers are. `None` on older kernels, where the programs fall
/// back to the initial namespace.
pub fn own_netns_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-parameter of the advertised size.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// Map `name` of the object as the typed map `T` (e.g. `HashMap<_, K, V>`).
fn typed_map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, EnforceError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(EnforceError::MissingMap { map: name })?;
    T::try_from(map).map_err(|source| map_error(name, source))
}

fn map_error(map: &'static str, source: aya::maps::MapError) -> EnforceError {
    EnforceError::Map { map, source }
}

/// Map sizes follow the policy (at least one entry: the kernel refuses empty maps).
fn check_size(map: &'static str, needed: usize, limit: u32) -> Result<u32, EnforceError> {
    if needed > limit as usize {
        return Err(EnforceError::TooLarge { map, needed, limit });
    }
    Ok((needed as u32).max(1))
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raise the soft limit to the hard one
/// (raising the hard limit needs CAP_SYS_RESOURCE, which containers often lack).
fn raise_memlock_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid out-parameter.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &wanted) != 0 {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                log::debug!("could not raise RLIMIT_MEMLOCK");
            }
        }
    }
}
