//! ram's eBPF object, embedded in the binary: the tables of its programs (which hook each is
//! attached to), loading it with its maps pinned, loading the programs (a verifier refusal
//! turned into an error that names the program and the kernel), and pinning them.

use std::{
    collections::HashMap as StdHashMap,
    fs, io,
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{ProgramArray, SockHash},
    programs::{
        CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, LsmCgroup, Program, ProgramError,
        SkMsg, SockOps,
    },
};
use aya_obj::generated::bpf_attach_type;
use ram_common::{
    FlowKey,
    maps::{
        ALL, ANSWER_RR_SLOT, DNS_TAIL_CALLS, LEARNED, QUERY_NAME_SLOT, TLS_FIRST_SLOT,
        TLS_NAME_OUT_SLOT, TLS_NAME_SLOT, TLS_SOCKETS, TLS_TAIL_CALLS,
    },
};

use super::{
    error::EnforceError,
    maps::{check_maps, map_error, typed_map},
    pins::PinDir,
    probe,
};

/// The eBPF object built by build.rs from `ram-ebpf`, embedded in the binary (empty when built
/// with AYA_BUILD_SKIP).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ram-ebpf"));

/// Whether this binary holds the eBPF object.
pub(super) fn embedded() -> bool {
    !EBPF_OBJECT.is_empty()
}

/// A program of `ram-ebpf` and the hook it is attached to.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    pub name: &'static str,
    /// For BPF_LINK_CREATE and BPF_PROG_QUERY.
    pub attach_type: bpf_attach_type,
}

/// Every program the daemon attaches to an enforced cgroup.
pub const GATES: [Gate; 4] = [
    Gate {
        name: "connect4_gate",
        attach_type: bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
    },
    Gate {
        name: "connect6_gate",
        attach_type: bpf_attach_type::BPF_CGROUP_INET6_CONNECT,
    },
    Gate {
        name: "sendmsg4_gate",
        attach_type: bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG,
    },
    Gate {
        name: "sendmsg6_gate",
        attach_type: bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG,
    },
];

/// A cgroup_skb program of `ram-ebpf` and the direction it watches.
#[derive(Debug, Clone, Copy)]
pub struct Snooper {
    pub name: &'static str,
    /// `BPF_CGROUP_INET_EGRESS` or `BPF_CGROUP_INET_INGRESS`.
    pub attach_type: bpf_attach_type,
}

/// The DNS programs; attached before the gates, so that no query a gate lets through goes
/// unrecorded.
pub const SNOOPERS: [Snooper; 2] = [
    Snooper {
        name: "dns_query_out",
        attach_type: bpf_attach_type::BPF_CGROUP_INET_EGRESS,
    },
    Snooper {
        name: "dns_snoop_in",
        attach_type: bpf_attach_type::BPF_CGROUP_INET_INGRESS,
    },
];

/// The program `dns_snoop_in` tail-calls once per answer record (loaded, never attached).
pub const ANSWER_RR: &str = "dns_answer_rr";
/// The program `dns_query_out` tail-calls to judge a query's name (loaded, never attached).
pub const QUERY_NAME: &str = "dns_query_name";
/// The program `dns_query_out` tail-calls to read the first bytes of a judged TCP stream as
/// they leave, and the one that judges their server name (loaded, never attached).
pub const TLS_FIRST: &str = "tls_first_out";
pub const TLS_NAME_OUT: &str = "tls_name_out";
/// The tail-called programs and their `DNS_TAIL_CALLS` slots.
const TAIL_CALLED: [(&str, u32); 4] = [
    (ANSWER_RR, ANSWER_RR_SLOT),
    (QUERY_NAME, QUERY_NAME_SLOT),
    (TLS_FIRST, TLS_FIRST_SLOT),
    (TLS_NAME_OUT, TLS_NAME_OUT_SLOT),
];
/// The sk_msg program `tls_hello` tail-calls to judge a server name (`TLS_TAIL_CALLS`).
pub const TLS_HELLO_NAME: &str = "tls_hello_name";

/// The cgroup sock_create program: only the sockets the gates judge may be made.
pub const SOCKET_GATE: Gate = Gate {
    name: "socket_gate",
    attach_type: bpf_attach_type::BPF_CGROUP_INET_SOCK_CREATE,
};

/// The cgroup setsockopt program: no source routes or routing headers.
pub const SOCKOPT_GATE: Gate = Gate {
    name: "sockopt_gate",
    attach_type: bpf_attach_type::BPF_CGROUP_SETSOCKOPT,
};

/// The BPF LSM program refusing socket families `socket_gate` never sees (packet sockets
/// among them); loaded where the kernel runs BPF LSM programs ([`probe::bpf_lsm_cgroup`]).
pub const FAMILY_GATE: Gate = Gate {
    name: "family_gate",
    attach_type: bpf_attach_type::BPF_LSM_CGROUP,
};

/// The cgroup sock_ops program that sends established connections to learned addresses
/// through `tls_hello` (`registry_access.tls`).
pub const TLS_SOCKOPS: Gate = Gate {
    name: "tls_sockops",
    attach_type: bpf_attach_type::BPF_CGROUP_SOCK_OPS,
};

/// The sk_msg program judging the first bytes sent on those connections; attached to the
/// `TLS_SOCKETS` map (once, where it stays while the map is pinned), not to cgroups.
pub const TLS_HELLO: &str = "tls_hello";

/// The LSM hook `family_gate` runs on.
const FAMILY_GATE_HOOK: &str = "socket_create";

/// Whether `family_gate` is loaded (set once, by [`load_programs`]).
static FAMILY_GATE_LOADED: AtomicBool = AtomicBool::new(false);

/// Whether packet sockets and the other families are refused on this kernel.
pub fn family_gate_loaded() -> bool {
    FAMILY_GATE_LOADED.load(Ordering::Relaxed)
}

/// Names of every program ram loads.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    TAIL_CALLED
        .iter()
        .map(|(name, _)| *name)
        .chain(SNOOPERS.iter().map(|s| s.name))
        .chain(GATES.iter().map(|g| g.name))
        .chain([
            SOCKET_GATE.name,
            SOCKOPT_GATE.name,
            TLS_SOCKOPS.name,
            TLS_HELLO,
            TLS_HELLO_NAME,
        ])
        .chain(family_gate_loaded().then_some(FAMILY_GATE.name))
}

/// Every program attached to an enforced cgroup, with its attach type, in attach order (the DNS
/// programs first, so that no query a gate lets through goes unrecorded; the socket and
/// socket-option gates last).
pub fn attached_programs() -> impl Iterator<Item = (&'static str, bpf_attach_type)> {
    SNOOPERS
        .iter()
        .map(|s| (s.name, s.attach_type))
        .chain(GATES.iter().map(|g| (g.name, g.attach_type)))
        .chain([SOCKET_GATE, SOCKOPT_GATE, TLS_SOCKOPS].map(|g| (g.name, g.attach_type)))
        .chain(family_gate_loaded().then_some((FAMILY_GATE.name, FAMILY_GATE.attach_type)))
}

/// Loads the object with every map pinned under `pins` (reusing the pinned ones) and
/// `LEARNED` sized `learned_entries` when it is created.
pub(super) fn load(pins: &PinDir, learned_entries: u32) -> Result<Ebpf, EnforceError> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(LEARNED, learned_entries);
    let map_paths: Vec<(&str, PathBuf)> = ALL.iter().map(|n| (*n, pins.map(n))).collect();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader.load(EBPF_OBJECT)?;
    check_maps(&ebpf)?;
    Ok(ebpf)
}

/// Loads every program into the kernel (the answer-record program into the tail-call table
/// first), and pins each under `progs/`, replacing the previous daemon's. Returns the programs'
/// ids.
pub(super) fn load_programs(
    ebpf: &mut Ebpf,
    pins: &PinDir,
) -> Result<StdHashMap<&'static str, u32>, EnforceError> {
    for (name, slot) in TAIL_CALLED {
        let program = program_as::<CgroupSkb>(ebpf, name)?;
        program.load().map_err(|source| load_error(name, source))?;
        let fd = program
            .fd()
            .map_err(|source| load_error(name, source))?
            .try_clone()
            .map_err(|err| load_error(name, ProgramError::IOError(err)))?;
        let mut tail_calls: ProgramArray<_> = typed_map(ebpf, DNS_TAIL_CALLS)?;
        tail_calls
            .set(slot, &fd, 0)
            .map_err(|source| map_error(DNS_TAIL_CALLS, source))?;
    }
    for snooper in SNOOPERS {
        program_as::<CgroupSkb>(ebpf, snooper.name)?
            .load()
            .map_err(|source| load_error(snooper.name, source))?;
    }
    for gate in GATES {
        program_as::<CgroupSockAddr>(ebpf, gate.name)?
            .load()
            .map_err(|source| load_error(gate.name, source))?;
    }
    program_as::<CgroupSock>(ebpf, SOCKET_GATE.name)?
        .load()
        .map_err(|source| load_error(SOCKET_GATE.name, source))?;
    program_as::<CgroupSockopt>(ebpf, SOCKOPT_GATE.name)?
        .load()
        .map_err(|source| load_error(SOCKOPT_GATE.name, source))?;
    load_tls_programs(ebpf)?;
    load_family_gate(ebpf);
    let mut program_ids = StdHashMap::new();
    for name in program_names() {
        let program = ebpf
            .program_mut(name)
            .ok_or(EnforceError::MissingProgram { program: name })?;
        let id = program
            .info()
            .map_err(|source| EnforceError::Program {
                program: name,
                source,
            })?
            .id();
        program_ids.insert(name, id);
        // Replace the previous daemon's pin: the links hold their programs, the pins only
        // name the programs in force for operators (`bpftool prog show pinned ...`).
        let path = pins.programs().join(name);
        let _ = fs::remove_file(&path);
        program.pin(&path).map_err(|err| EnforceError::PinDir {
            path: path.clone(),
            source: io::Error::other(err.to_string()),
        })?;
    }
    Ok(program_ids)
}

/// Loads `tls_sockops` and `tls_hello`, and attaches `tls_hello` to `TLS_SOCKETS` before any
/// socket can enter it (a socket takes the map's programs when it enters). The attachment
/// belongs to the pinned map: it outlives the daemon, and the next daemon's replaces it.
fn load_tls_programs(ebpf: &mut Ebpf) -> Result<(), EnforceError> {
    program_as::<SockOps>(ebpf, TLS_SOCKOPS.name)?
        .load()
        .map_err(|source| load_error(TLS_SOCKOPS.name, source))?;
    let name_program = program_as::<SkMsg>(ebpf, TLS_HELLO_NAME)?;
    name_program
        .load()
        .map_err(|source| load_error(TLS_HELLO_NAME, source))?;
    let fd = name_program
        .fd()
        .map_err(|source| load_error(TLS_HELLO_NAME, source))?
        .try_clone()
        .map_err(|err| load_error(TLS_HELLO_NAME, ProgramError::IOError(err)))?;
    let mut tail_calls: ProgramArray<_> = typed_map(ebpf, TLS_TAIL_CALLS)?;
    tail_calls
        .set(TLS_NAME_SLOT, &fd, 0)
        .map_err(|source| map_error(TLS_TAIL_CALLS, source))?;
    program_as::<SkMsg>(ebpf, TLS_HELLO)?
        .load()
        .map_err(|source| load_error(TLS_HELLO, source))?;
    let sockets: SockHash<&aya::maps::MapData, FlowKey> =
        super::maps::typed_map_ref(ebpf, TLS_SOCKETS)?;
    let map_fd = sockets
        .fd()
        .try_clone()
        .map_err(|err| map_error(TLS_SOCKETS, aya::maps::MapError::IoError(err)))?;
    let program = program_as::<SkMsg>(ebpf, TLS_HELLO)?;
    let link = program
        .attach(&map_fd)
        .map_err(|source| attach_map_error(TLS_HELLO, source))?;
    // Dropping the link would detach the program; the map keeps it attached instead.
    let link = program
        .take_link(link)
        .map_err(|source| attach_map_error(TLS_HELLO, source))?;
    std::mem::forget(link);
    log::info!(
        "TLS names: the first bytes sent to learned addresses are judged (sk_msg); a refused \
         hello fails the send at once"
    );
    Ok(())
}

fn attach_map_error(program: &'static str, source: ProgramError) -> EnforceError {
    EnforceError::Program { program, source }
}

/// Loads `family_gate` where the kernel runs BPF LSM programs; says in the log either way
/// (without it, packet sockets and the other families are not refused: docs/limits.md).
fn load_family_gate(ebpf: &mut Ebpf) {
    let loaded = probe::bpf_lsm_cgroup().and_then(|()| {
        let btf = Btf::from_sys_fs().map_err(|err| format!("no kernel BTF: {err}"))?;
        let program = program_as::<LsmCgroup>(ebpf, FAMILY_GATE.name).map_err(|e| e.to_string())?;
        program
            .load(FAMILY_GATE_HOOK, &btf)
            .map_err(|err| format!("loading it failed: {}", crate::error_chain(&err)))
    });
    match loaded {
        Ok(()) => {
            FAMILY_GATE_LOADED.store(true, Ordering::Relaxed);
            log::info!(
                "socket families: packet sockets and other families than Unix, netlink, IPv4 \
                 and IPv6 are refused in enforced cgroups (BPF LSM)"
            );
        }
        Err(why) => log::warn!(
            "socket families: packet sockets (AF_PACKET) and other families are NOT refused on \
             this kernel: {why} (docs/limits.md)"
        ),
    }
}

/// Program `name` of the object as the program type `T` (`CgroupSockAddr`, `CgroupSkb`,
/// `CgroupSock`).
fn program_as<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EnforceError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EnforceError::MissingProgram { program: name })?
        .try_into()
        .map_err(|source| EnforceError::Program {
            program: name,
            source,
        })
}

/// A descriptor of loaded program `name` of its own (for bpf(2) link commands).
pub(super) fn program_fd(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd, EnforceError> {
    let program = ebpf
        .program(name)
        .ok_or(EnforceError::MissingProgram { program: name })?;
    let fd = match program {
        Program::CgroupSkb(p) => p.fd(),
        Program::CgroupSockAddr(p) => p.fd(),
        Program::CgroupSock(p) => p.fd(),
        Program::CgroupSockopt(p) => p.fd(),
        Program::LsmCgroup(p) => p.fd(),
        Program::SockOps(p) => p.fd(),
        Program::SkMsg(p) => p.fd(),
        _ => return Err(EnforceError::MissingProgram { program: name }),
    }
    .map_err(|source| EnforceError::Program {
        program: name,
        source,
    })?;
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|err| EnforceError::Program {
            program: name,
            source: ProgramError::IOError(err),
        })
}

/// A verifier refusal names the program and the kernel, with the end of the verifier's log.
fn load_error(program: &'static str, source: ProgramError) -> EnforceError {
    match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => EnforceError::Verifier {
            program,
            kernel: probe::kernel_release(),
            source: io_error,
            verifier_tail: indent(&last_lines(&verifier_log.to_string(), 60)),
        },
        source => EnforceError::Program { program, source },
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_logs_are_cut_to_their_last_lines_and_indented() {
        let log = (1..=30).map(|n| format!("line {n}")).collect::<Vec<_>>();
        let tail = indent(&last_lines(&log.join("\n"), 20));
        assert!(tail.starts_with("    line 11\n"), "{tail}");
        assert!(tail.ends_with("    line 30"), "{tail}");
        assert_eq!(last_lines("short", 20), "short");
    }

    #[test]
    fn every_program_is_loaded_once_and_the_tail_calls_are_not_attached() {
        let names: Vec<_> = program_names().collect();
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(names.len(), unique.len());
        let family_gate = usize::from(family_gate_loaded());
        assert_eq!(
            names.len(),
            TAIL_CALLED.len() + SNOOPERS.len() + GATES.len() + 5 + family_gate
        );
        // Tail calls are not attached; tls_hello is attached to its map, not to cgroups.
        assert!(
            attached_programs()
                .all(|(name, _)| name != ANSWER_RR && name != QUERY_NAME && name != TLS_HELLO)
        );
        // The DNS programs come first.
        let order: Vec<_> = attached_programs().map(|(name, _)| name).collect();
        assert_eq!(&order[..2], ["dns_query_out", "dns_snoop_in"]);
    }

    /// The links are created with the tables' attach types (sys::link_create), not the ones
    /// aya reads from the programs' ELF sections: where a section names one, they must agree.
    /// (Needs the real object: a build without AYA_BUILD_SKIP.)
    #[test]
    fn the_tables_agree_with_the_objects_sections() {
        use aya_obj::{Object, ProgramSection};

        if !embedded() {
            eprintln!("skipped: built with AYA_BUILD_SKIP, no eBPF object");
            return;
        }
        let object = Object::parse(EBPF_OBJECT).unwrap();
        for (name, attach_type) in attached_programs() {
            let section = &object.programs[name].section;
            let from_section = match section {
                ProgramSection::CgroupSockAddr { attach_type } => (*attach_type).into(),
                ProgramSection::CgroupSock { attach_type } => (*attach_type).into(),
                ProgramSection::CgroupSockopt { attach_type } => (*attach_type).into(),
                ProgramSection::CgroupSkb {
                    attach_type: Some(attach_type),
                } => (*attach_type).into(),
                // `cgroup/skb` (`#[cgroup_skb]` without a direction): the table is the only
                // place that says which way the program watches.
                ProgramSection::CgroupSkb { attach_type: None } => attach_type,
                ProgramSection::SockOps => bpf_attach_type::BPF_CGROUP_SOCK_OPS,
                other => panic!("{name}: unexpected section {other:?}"),
            };
            assert_eq!(attach_type, from_section, "{name}");
        }
        assert!(matches!(
            object.programs[ANSWER_RR].section,
            ProgramSection::CgroupSkb { .. }
        ));
    }
}
