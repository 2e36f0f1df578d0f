//! Loading ram's eBPF object, filling its maps from a compiled policy, and attaching the
//! programs to cgroups — all of it pinned under bpffs, so that enforcement outlives the daemon.
//!
//! Pinned state (`<pin dir>`, default `/sys/fs/bpf/ram`, mode 0700):
//! - `maps-v<LAYOUT>/<MAP>`: every map. A daemon that starts finds them and reuses them, so
//!   learned addresses, counters, the policy in force and the audit backlog carry over.
//! - `progs/<program>`: the programs in force.
//! - `links/<cgroup id>/<program>`: one bpf_link per program and enforced cgroup. A starting
//!   daemon swaps each pinned link to its own freshly loaded program with `BPF_LINK_UPDATE`, so
//!   there is no instant with nothing attached; `ram uninstall` removes them on purpose.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs, io,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key},
    programs::{CgroupSkb, CgroupSockAddr, ProgramError},
};
use ram_common::{
    Addr16, CidrRule, Counter, LearnedAddr, LearnedKey, NameRule, PolicyConfig, ResolverRule,
    dns::NAME_BUF,
    maps::{
        ALL, ALLOWED_CIDRS, ALLOWED_CIDRS_MAX, ALLOWED_NAMES, ALLOWED_NAMES_MAX, ANSWER_RR_SLOT,
        COUNTERS, DNS_EVENTS, DNS_TAIL_CALLS, GATE_EVENTS, LAYOUT, LEARNED, LEARNED_MAX,
        POLICY_CONFIG, POLICY_SLOT, RESOLVERS, RESOLVERS_MAX, RULE_IDS,
    },
};

use aya_obj::generated::bpf_attach_type;

use super::probe;
use crate::{cgroups::CgroupDir, compile::CompiledPolicy, sys as bpf};

/// Where ram pins its programs, links and maps unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ram";

/// The eBPF object built by build.rs from `ram-ebpf`, embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ram-ebpf"));

/// A program of `ram-ebpf` and the `bpf_attach_type` it is attached with.
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

/// Names of every program ram loads.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    std::iter::once(ANSWER_RR)
        .chain(SNOOPERS.iter().map(|s| s.name))
        .chain(GATES.iter().map(|g| g.name))
}

/// Every program attached to an enforced cgroup, with its attach type, in attach order (the DNS
/// programs first, so that no query a gate lets through goes unrecorded).
pub fn attached_programs() -> impl Iterator<Item = (&'static str, bpf_attach_type)> {
    SNOOPERS
        .iter()
        .map(|s| (s.name, s.attach_type))
        .chain(GATES.iter().map(|g| (g.name, g.attach_type)))
}

/// The paths of ram's pinned state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join(format!("maps-v{LAYOUT}"))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn programs(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn cgroup_links(&self, cgroup_id: u64) -> PathBuf {
        self.links().join(cgroup_id.to_string())
    }

    /// Takes the pin directory for this process (creating it 0700): one daemon per directory.
    /// The lock is an `flock` on the directory, released when the returned file closes (also
    /// when the daemon is killed).
    fn lock(&self) -> Result<fs::File, EnforceError> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !bpf::is_bpffs(parent) && !bpf::is_bpffs(&self.root) {
            // systemd mounts it at boot; where nothing did (minimal VMs, some WSL set-ups), ram
            // mounts it at its standard place, as Cilium does.
            // Only in the host's mount namespace: a mount made in a private one (a sandboxed
            // service, a container) would vanish with it, taking the pins along.
            let why_not = if parent != Path::new(bpf::BPFFS_MOUNT) {
                Some(format!(
                    "ram mounts one only at {} (the pin directory's parent is {})",
                    bpf::BPFFS_MOUNT,
                    parent.display()
                ))
            } else {
                match bpf::mount_namespace() {
                    bpf::MountNamespace::Initial => bpf::mount_bpffs(parent)
                        .err()
                        .map(|err| format!("mounting one there failed: {err}")),
                    bpf::MountNamespace::Private => Some(
                        "ram runs in a private mount namespace, where a mount would vanish \
                         with the namespace and take the pins along"
                            .to_owned(),
                    ),
                    bpf::MountNamespace::Unknown(why) => Some(format!(
                        "ram did not mount one because it cannot tell whether it runs in the \
                         host's mount namespace: {why}"
                    )),
                }
            };
            if let Some(why_not) = why_not {
                return Err(EnforceError::NoBpffs {
                    path: parent.to_owned(),
                    why_not,
                });
            }
            log::info!("mounted a bpf filesystem at {}", parent.display());
        }
        let io_error = |source| EnforceError::PinDir {
            path: self.root.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io_error)?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)).map_err(io_error)?;
        let dir = fs::File::open(&self.root).map_err(io_error)?;
        // flock(LOCK_EX | LOCK_NB) on Linux.
        match dir.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(EnforceError::Busy {
                    path: self.root.clone(),
                });
            }
            Err(fs::TryLockError::Error(err)) => return Err(io_error(err)),
        }
        for dir in [self.maps(), self.programs(), self.links()] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .or_else(|err| match err.kind() {
                    io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(err),
                })
                .map_err(io_error)?;
        }
        Ok(dir)
    }

    /// Pinned map directories of other layouts (left by another version of ram).
    fn foreign_layouts(&self) -> Vec<PathBuf> {
        let own = self.maps();
        fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                *p != own
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("maps-v"))
            })
            .collect()
    }
}

/// What [`uninstall`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: usize,
    pub programs: usize,
    pub maps: usize,
    /// The cgroups (ids) whose links were removed.
    pub cgroup_ids: Vec<u64>,
}

/// Removes all of ram's pinned state under `pins`: links first (which detaches the programs
/// from every cgroup), then programs and maps. Refuses while a daemon holds the directory.
pub fn uninstall(pins: &PinDir) -> Result<Removed, EnforceError> {
    if !pins.root.exists() {
        return Ok(Removed::default());
    }
    let _lock = pins.lock()?;
    let io_error = |source| EnforceError::PinDir {
        path: pins.root.clone(),
        source,
    };
    let mut removed = Removed::default();
    for cgroup in fs::read_dir(pins.links()).map_err(io_error)?.flatten() {
        if let Ok(id) = cgroup.file_name().to_string_lossy().parse() {
            removed.cgroup_ids.push(id);
        }
        for link in fs::read_dir(cgroup.path()).map_err(io_error)?.flatten() {
            fs::remove_file(link.path()).map_err(io_error)?;
            removed.links += 1;
        }
        fs::remove_dir(cgroup.path()).map_err(io_error)?;
    }
    for program in fs::read_dir(pins.programs()).map_err(io_error)?.flatten() {
        fs::remove_file(program.path()).map_err(io_error)?;
        removed.programs += 1;
    }
    let mut map_dirs = pins.foreign_layouts();
    map_dirs.push(pins.maps());
    for dir in map_dirs {
        for map in fs::read_dir(&dir).map_err(io_error)?.flatten() {
            fs::remove_file(map.path()).map_err(io_error)?;
            removed.maps += 1;
        }
        fs::remove_dir(&dir).map_err(io_error)?;
    }
    fs::remove_dir(pins.links()).map_err(io_error)?;
    fs::remove_dir(pins.programs()).map_err(io_error)?;
    fs::remove_dir(&pins.root).map_err(io_error)?;
    Ok(removed)
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
    #[error(
        "ram's eBPF object has maps {found:?}, but ram pins {expected:?} (a build mismatch; \
         rebuild ram)"
    )]
    UnexpectedMaps {
        found: Vec<String>,
        expected: Vec<&'static str>,
    },
    #[error("program {program} is missing from ram's eBPF object (a build mismatch; rebuild ram)")]
    MissingProgram { program: &'static str },
    #[error("writing map {map} failed: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Kernel(#[from] probe::ProbeError),
    #[error(
        "Linux {kernel}'s verifier refused ram's program {program} ({source}): this kernel has \
         every feature ram probes for, so a limit of its verifier was hit; ram is tested on Linux \
         5.10, 6.1, 6.12 and 6.18 (README \"Supported kernels\"): please report this kernel \
         with the verifier's log\n  verifier log, last lines:\n{verifier_tail}"
    )]
    Verifier {
        program: &'static str,
        kernel: String,
        source: io::Error,
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
        source: io::Error,
    },
    #[error(
        "{path} is not on a bpf filesystem ({why_not}); mount one with `mount -t bpf bpf \
         /sys/fs/bpf` in the host's mount namespace (or choose another --pin-dir on bpffs)"
    )]
    NoBpffs { path: PathBuf, why_not: String },
    #[error("pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error(
        "another ram daemon holds {path}; stop it first (`systemctl stop ram`), or give this one \
         its own --pin-dir"
    )]
    Busy { path: PathBuf },
}

/// How [`Enforcer::open`] found the pinned state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Maps of a previous daemon were reused (learned addresses and counters carried over).
    pub adopted_maps: bool,
    /// Links of a previous daemon swapped to this daemon's programs.
    pub links_updated: usize,
    pub links_created: usize,
    /// Links of cgroups this daemon no longer enforces, removed (with their cgroups' ids).
    pub stale_cgroups: Vec<u64>,
    /// Map directories of another ram version, removed after the swap.
    pub foreign_layouts: Vec<PathBuf>,
    /// `LEARNED`'s capacity when it differs from `dns.max_learned` (a reused map keeps its size).
    pub learned_capacity_kept: Option<u32>,
}

/// What [`Enforcer::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The slot now in force.
    pub slot: u32,
    /// Learned addresses dropped because the new policy no longer has their rule.
    pub learned_dropped: usize,
}

/// One enforced cgroup.
#[derive(Debug)]
struct Enforced {
    dir: CgroupDir,
    id: u64,
    /// Set once the cgroup was found removed (reported once).
    gone: bool,
}

/// The loaded programs and their pinned maps and links.
pub struct Enforcer {
    ebpf: Ebpf,
    pins: PinDir,
    /// Holds the pin directory's lock while the daemon runs.
    _lock: fs::File,
    enforced: Vec<Enforced>,
    program_ids: StdHashMap<&'static str, u32>,
    learned_capacity: u32,
    /// Rule ids of the hostname rules and resolvers in force: learned entries of others are
    /// removed.
    kept_rules: HashSet<u64>,
    kept_resolvers: HashSet<u64>,
}

impl Enforcer {
    /// Loads the programs with the maps pinned under `pins` (reusing those a previous daemon
    /// left), puts `policy` in force, and attaches to `cgroups` — swapping the programs of
    /// links a previous daemon pinned, so that a restart leaves no gap. Links of other cgroups
    /// are removed. A failure before the attaches leaves no new link; it may have updated the
    /// pinned programs' tail-call entry, their `progs/` pins and (on adopted maps) the policy in
    /// force, all of which the running programs accept.
    pub fn open(
        pins: PinDir,
        policy: &CompiledPolicy,
        cgroups: &[CgroupDir],
        cgroups_complete: bool,
    ) -> Result<(Self, OpenReport), EnforceError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EnforceError::NoObject);
        }
        if let Err(err) = bpf::raise_memlock_limit() {
            // Kernels since 5.11 do not charge maps to it; older ones fail the load, by name.
            log::debug!("could not raise RLIMIT_MEMLOCK: {err}");
        }
        // Before anything is loaded: a kernel without a feature ram needs is refused by name.
        probe::check_kernel()?;
        let lock = pins.lock()?;
        let mut report = OpenReport {
            adopted_maps: pins.map(POLICY_SLOT).exists(),
            ..Default::default()
        };

        let learned_entries = check_size(LEARNED, policy.max_learned as usize, LEARNED_MAX)?;
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(LEARNED, learned_entries);
        let map_paths: Vec<(&str, PathBuf)> = ALL.iter().map(|n| (*n, pins.map(n))).collect();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        check_maps(&ebpf)?;
        let learned_capacity = map_capacity(&ebpf, LEARNED)?;
        if learned_capacity != learned_entries {
            report.learned_capacity_kept = Some(learned_capacity);
        }

        let mut program_ids = StdHashMap::new();
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
            let mut tail_calls: ProgramArray<_> = typed_map(&mut ebpf, DNS_TAIL_CALLS)?;
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

        let mut enforcer = Self {
            ebpf,
            pins,
            _lock: lock,
            enforced: Vec::new(),
            program_ids,
            learned_capacity,
            kept_rules: HashSet::new(),
            kept_resolvers: HashSet::new(),
        };
        // The policy goes in before any new attach: a fresh link never runs without one.
        enforcer.apply(policy)?;
        for dir in cgroups {
            let id = dir.id;
            let (updated, created) = enforcer.attach(dir, id)?;
            report.links_updated += updated;
            report.links_created += created;
            enforcer.enforced.push(Enforced {
                dir: dir.clone(),
                id,
                gone: false,
            });
        }
        // Only with the whole list: a partial one would drop cgroups it did not reach.
        if cgroups_complete {
            report.stale_cgroups = enforcer.remove_stale_links()?;
        }
        for dir in enforcer.pins.foreign_layouts() {
            // The links now run programs bound to this layout's maps; the old ones are unused.
            if fs::remove_dir_all(&dir).is_ok() {
                report.foreign_layouts.push(dir);
            }
        }
        Ok((enforcer, report))
    }

    /// Pins a link for every program on `dir`, or swaps the program of a link already pinned
    /// there. Returns (links updated, links created).
    fn attach(&mut self, dir: &CgroupDir, id: u64) -> Result<(usize, usize), EnforceError> {
        let cgroup = dir.open().map_err(|err| EnforceError::Attach {
            program: GATES[0].name,
            cgroup: dir.path.display().to_string(),
            source: io::Error::other(err.to_string()),
        })?;
        let link_dir = self.pins.cgroup_links(id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&link_dir)
            .or_else(|err| match err.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(err),
            })
            .map_err(|source| EnforceError::PinDir {
                path: link_dir.clone(),
                source,
            })?;
        let (mut updated, mut created) = (0, 0);
        for (name, attach_type) in attached_programs() {
            let program = self.program_fd(name)?;
            let path = link_dir.join(name);
            let attach_error = |source| EnforceError::Attach {
                program: name,
                cgroup: dir.path.display().to_string(),
                source,
            };
            if let Ok(link) = bpf::obj_get(&path) {
                match bpf::link_update(link.as_fd(), program.as_fd()) {
                    Ok(()) => {
                        updated += 1;
                        continue;
                    }
                    // Detached by someone: the link is dead, make a new one below.
                    Err(err) if err.raw_os_error() == Some(libc::ENOLINK) => {
                        fs::remove_file(&path).map_err(attach_error)?;
                    }
                    // Anything else: the link may still be live (and enforcing); keep it.
                    Err(err) => return Err(attach_error(err)),
                }
            }
            let link = bpf::link_create(program.as_fd(), cgroup.as_fd(), attach_type)
                .map_err(attach_error)?;
            bpf::obj_pin(&link, &path).map_err(attach_error)?;
            created += 1;
        }
        Ok((updated, created))
    }

    fn program_fd(&self, name: &'static str) -> Result<OwnedFd, EnforceError> {
        let program = self
            .ebpf
            .program(name)
            .ok_or(EnforceError::MissingProgram { program: name })?;
        let fd = match program {
            aya::programs::Program::CgroupSkb(p) => p.fd(),
            aya::programs::Program::CgroupSockAddr(p) => p.fd(),
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

    /// Enforces one more cgroup (a container that just started, a scope change). Returns
    /// whether it was new.
    pub fn enforce(&mut self, dir: &CgroupDir) -> Result<bool, EnforceError> {
        if self.enforced.iter().any(|e| e.id == dir.id && !e.gone) {
            return Ok(false);
        }
        self.enforced.retain(|e| e.id != dir.id);
        self.attach(dir, dir.id)?;
        self.enforced.push(Enforced {
            dir: dir.clone(),
            id: dir.id,
            gone: false,
        });
        Ok(true)
    }

    /// Stops enforcing cgroup `id`: removes its pinned links (which detaches the programs if
    /// the cgroup still exists) and forgets it.
    pub fn release(&mut self, id: u64) -> Result<(), EnforceError> {
        self.enforced.retain(|e| e.id != id);
        let dir = self.pins.cgroup_links(id);
        let io_error = |source| EnforceError::PinDir {
            path: dir.clone(),
            source,
        };
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for link in entries.flatten() {
                    fs::remove_file(link.path()).map_err(io_error)?;
                }
                fs::remove_dir(&dir).map_err(io_error)
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_error(err)),
        }
    }

    /// Removes pinned links of cgroups not in this daemon's list (which detaches them).
    fn remove_stale_links(&mut self) -> Result<Vec<u64>, EnforceError> {
        let keep: HashSet<String> = self.enforced.iter().map(|e| e.id.to_string()).collect();
        let mut stale = Vec::new();
        let links = self.pins.links();
        let io_error = |source| EnforceError::PinDir {
            path: links.clone(),
            source,
        };
        for entry in fs::read_dir(&links).map_err(io_error)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            for link in fs::read_dir(entry.path()).map_err(io_error)?.flatten() {
                fs::remove_file(link.path()).map_err(io_error)?;
            }
            fs::remove_dir(entry.path()).map_err(io_error)?;
            stale.push(name.parse().unwrap_or(0));
        }
        Ok(stale)
    }

    /// Checks that every program is still attached to every enforced cgroup (someone may have
    /// detached a link, e.g. with `bpftool link detach`) and re-attaches what is missing.
    /// Returns one message per repair or per cgroup found removed.
    pub fn verify_attachments(&mut self) -> Vec<String> {
        let mut messages = Vec::new();
        for index in 0..self.enforced.len() {
            if self.enforced[index].gone {
                continue;
            }
            let dir = self.enforced[index].dir.clone();
            let id = self.enforced[index].id;
            let Ok(file) = dir.open() else {
                self.enforced[index].gone = true;
                messages.push(format!(
                    "cgroup {} was removed; nothing is left to enforce there",
                    dir.path.display()
                ));
                continue;
            };
            let mut missing = Vec::new();
            for (name, attach_type) in attached_programs() {
                let ours = self.program_ids.get(name).copied();
                match bpf::attached_program_ids(&file, attach_type) {
                    Ok(ids) if ours.is_some_and(|id| ids.contains(&id)) => {}
                    Ok(_) => missing.push(name),
                    // Cannot tell (e.g. the cgroup is going away): check again next time
                    // rather than re-attach on a guess.
                    Err(err) => log::debug!("querying {}: {err}", dir.path.display()),
                }
            }
            if missing.is_empty() {
                continue;
            }
            let outcome = match self.attach(&dir, id) {
                Ok((_, created)) => format!("re-attached {created} program(s)"),
                Err(err) => format!("re-attaching failed: {err}"),
            };
            messages.push(format!(
                "{} detached from cgroup {} by someone else; {outcome}",
                missing.join(", "),
                dir.path.display()
            ));
        }
        messages
    }

    /// Puts `policy` in force atomically: fills the policy maps' inactive slot, then flips
    /// `POLICY_SLOT`. Then forgets learned addresses whose rule the policy no longer has.
    pub fn apply(&mut self, policy: &CompiledPolicy) -> Result<ApplyReport, EnforceError> {
        check_size(ALLOWED_CIDRS[0], policy.cidrs.len(), ALLOWED_CIDRS_MAX)?;
        check_size(RESOLVERS[0], policy.resolvers.len(), RESOLVERS_MAX)?;
        check_size(ALLOWED_NAMES[0], policy.names.len(), ALLOWED_NAMES_MAX)?;
        let active = {
            let slot: Array<_, u32> = typed_map(&mut self.ebpf, POLICY_SLOT)?;
            slot.get(&0, 0)
                .map_err(|source| map_error(POLICY_SLOT, source))?
                & 1
        };
        let next = 1 - active;
        let index = next as usize;

        {
            let mut names: LpmTrie<_, [u8; NAME_BUF], NameRule> =
                typed_map(&mut self.ebpf, ALLOWED_NAMES[index])?;
            let old: Vec<_> = names.keys().flatten().collect();
            for key in &old {
                let _ = names.remove(key);
            }
            for entry in &policy.names {
                names
                    .insert(&Key::new(entry.prefix_len, entry.key), entry.rule, 0)
                    .map_err(|source| map_error(ALLOWED_NAMES[index], source))?;
            }
        }
        {
            let mut cidrs: LpmTrie<_, Addr16, CidrRule> =
                typed_map(&mut self.ebpf, ALLOWED_CIDRS[index])?;
            let old: Vec<_> = cidrs.keys().flatten().collect();
            for key in &old {
                let _ = cidrs.remove(key);
            }
            for entry in &policy.cidrs {
                cidrs
                    .insert(&Key::new(entry.prefix_len, entry.addr), entry.rule, 0)
                    .map_err(|source| map_error(ALLOWED_CIDRS[index], source))?;
            }
        }
        {
            let mut resolvers: HashMap<_, Addr16, ResolverRule> =
                typed_map(&mut self.ebpf, RESOLVERS[index])?;
            let old: Vec<_> = resolvers.keys().flatten().collect();
            for key in &old {
                let _ = resolvers.remove(key);
            }
            for (addr, rule) in policy.resolver_entries() {
                resolvers
                    .insert(addr, rule, 0)
                    .map_err(|source| map_error(RESOLVERS[index], source))?;
            }
        }
        let (names_kept, resolvers_kept) = policy.learned_rule_ids();
        {
            let mut ids: HashMap<_, u64, u8> = typed_map(&mut self.ebpf, RULE_IDS[index])?;
            let old: Vec<_> = ids.keys().flatten().collect();
            for key in &old {
                let _ = ids.remove(key);
            }
            for id in names_kept.iter().chain(&resolvers_kept) {
                ids.insert(id, 1, 0)
                    .map_err(|source| map_error(RULE_IDS[index], source))?;
            }
        }
        {
            let mut config: Array<_, PolicyConfig> = typed_map(&mut self.ebpf, POLICY_CONFIG)?;
            let value = PolicyConfig {
                trusted_netns_cookie: bpf::own_netns_cookie().unwrap_or(0),
                ..policy.config
            };
            config
                .set(next, value, 0)
                .map_err(|source| map_error(POLICY_CONFIG, source))?;
        }
        // The switch: one 4-byte array update, which every program reads once per run.
        {
            let mut slot: Array<_, u32> = typed_map(&mut self.ebpf, POLICY_SLOT)?;
            slot.set(0, next, 0)
                .map_err(|source| map_error(POLICY_SLOT, source))?;
        }

        // The gates already ignore learned addresses of dropped rules and resolvers (RULE_IDS);
        // removing them frees their room. Lifetimes are capped to the new max_ttl + grace.
        self.kept_rules = names_kept;
        self.kept_resolvers = resolvers_kept;
        let cap = bpf::boottime_ns() + policy.config.max_ttl_ns + policy.config.grace_ns;
        let mut learned: HashMap<_, LearnedKey, LearnedAddr> = typed_map(&mut self.ebpf, LEARNED)?;
        let mut dropped = Vec::new();
        let mut capped = Vec::new();
        for (key, value) in learned.iter().flatten() {
            if !self.kept_rules.contains(&value.rule_id)
                || !self.kept_resolvers.contains(&value.resolver_rule_id)
            {
                dropped.push(key);
            } else if value.expires_ns > cap {
                capped.push((
                    key,
                    LearnedAddr {
                        expires_ns: cap,
                        ..value
                    },
                ));
            }
        }
        for key in &dropped {
            let _ = learned.remove(key);
        }
        for (key, value) in &capped {
            // BPF_EXIST: only if the kernel has not removed it meanwhile.
            let _ = learned.insert(key, value, 2);
        }
        Ok(ApplyReport {
            slot: next,
            learned_dropped: dropped.len(),
        })
    }

    /// The enforced cgroups (path, id, still there).
    pub fn cgroups(&self) -> Vec<(PathBuf, u64, bool)> {
        self.enforced
            .iter()
            .map(|e| (e.dir.path.clone(), e.id, !e.gone))
            .collect()
    }

    /// Capacity of `LEARNED` (the pinned map's, which may predate the policy).
    pub fn learned_capacity(&self) -> u32 {
        self.learned_capacity
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
    /// programs' clock), and those whose rule or resolver the policy in force does not have
    /// (an answer judged under the previous policy just before a change can land after
    /// [`Self::apply`] cleaned up; the gates ignore such entries already). Frees room only:
    /// the gates check expiry themselves. Returns how many were removed and how many remain.
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
            if value.expires_ns <= now_boot_ns
                || !self.kept_rules.contains(&value.rule_id)
                || !self.kept_resolvers.contains(&value.resolver_rule_id)
            {
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

    /// Every learned address (for `ram learned` and fill levels).
    pub fn learned_entries(&self) -> Result<Vec<(LearnedKey, LearnedAddr)>, EnforceError> {
        let map = self
            .ebpf
            .map(LEARNED)
            .ok_or(EnforceError::MissingMap { map: LEARNED })?;
        let learned: HashMap<_, LearnedKey, LearnedAddr> =
            HashMap::try_from(map).map_err(|source| map_error(LEARNED, source))?;
        Ok(learned.iter().flatten().collect())
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
            kernel: probe::kernel_release(),
            source: io_error,
            verifier_tail: indent(&last_lines(&verifier_log.to_string(), 20)),
        },
        source => EnforceError::Program { program, source },
    }
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

/// The object must hold exactly the maps ram pins (section maps such as `.rodata` aside): a map
/// left unpinned would silently start empty on every restart.
fn check_maps(ebpf: &Ebpf) -> Result<(), EnforceError> {
    let mut found: Vec<String> = ebpf
        .maps()
        .map(|(name, _)| name.to_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    found.sort();
    let mut expected = ALL.to_vec();
    expected.sort();
    if found != expected {
        return Err(EnforceError::UnexpectedMaps { found, expected });
    }
    Ok(())
}

/// `max_entries` of a loaded map, as the kernel has it.
fn map_capacity(ebpf: &Ebpf, name: &'static str) -> Result<u32, EnforceError> {
    let map = ebpf
        .map(name)
        .ok_or(EnforceError::MissingMap { map: name })?;
    let data = match map {
        aya::maps::Map::HashMap(data) => data,
        _ => return Err(EnforceError::MissingMap { map: name }),
    };
    data.info()
        .map(|info| info.max_entries())
        .map_err(|source| map_error(name, source))
}

/// Map sizes follow the policy (at least one entry: the kernel refuses empty maps).
fn check_size(map: &'static str, needed: usize, limit: u32) -> Result<u32, EnforceError> {
    if needed > limit as usize {
        return Err(EnforceError::TooLarge { map, needed, limit });
    }
    Ok((needed as u32).max(1))
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
