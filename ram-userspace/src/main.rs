//! `ram`: the daemon and its command line.

use std::{
    collections::HashMap,
    ffi::OsString,
    fs,
    io::{self, Write as _},
    os::unix::{fs::OpenOptionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use clap::{Parser, Subcommand};
use log::{info, warn};
use ram::{
    answers::named_addresses,
    audit::{
        AuditRecord, LearnRecord, display_addr, protocol_name, realtime_minus_boottime_ns,
        rfc3339_utc,
    },
    cgroup::{self, CgroupDir, DEDICATED_CGROUP},
    compile::{CompiledPolicy, ResolverOrigin},
    policy::{DEFAULT_POLICY, Policy, PolicySource},
    programs::{Enforcer, GATES},
    resolv,
};
use ram_common::{Counter, DnsEvent, GateEvent};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

#[derive(Debug, Parser)]
#[command(
    name = "ram",
    version,
    about = "Registry Access Management for Linux: lets processes in enforced cgroups reach only \
             the destinations a policy allows"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load ram's eBPF programs, enforce a policy on cgroups, and stay in the foreground.
    Daemon(DaemonArgs),
    /// Run a command inside an enforced cgroup (one a running `ram daemon` enforces).
    Exec(ExecArgs),
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    /// Policy file (TOML). Without it, the embedded default policy (see `ram policy default`).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// cgroup v2 directory to enforce: a filesystem path, or a path relative to the cgroup2
    /// mount (`/system.slice/docker.service`). Repeatable. Without it, ram creates and enforces
    /// `ram.enforced` under the cgroup2 mount.
    #[arg(long = "cgroup", value_name = "PATH")]
    cgroups: Vec<PathBuf>,
    /// Append one JSON line per denied connection to FILE (created 0600); `-` for stdout.
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    /// The enforced cgroup to run in (same forms as `ram daemon --cgroup`).
    #[arg(long, value_name = "PATH", default_value = DEDICATED_CGROUP)]
    cgroup: PathBuf,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; prints what it allows, or the file, line and value at fault.
    Check { file: PathBuf },
    /// Print the embedded default policy.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let result = match cli.command {
        Command::Daemon(args) => run_daemon(args),
        Command::Exec(args) => run_exec(args),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => check_policy(&file),
        Command::Policy {
            command: PolicyCommand::Default,
        } => {
            print!("{DEFAULT_POLICY}");
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ram: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_policy(file: &Path) -> Result<()> {
    let policy = Policy::from_file(file)?;
    let access = &policy.registry_access;
    let resolvers = match &policy.dns.resolvers {
        Some(list) => list
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        None => format!("the nameservers of {}", resolv::RESOLV_CONF),
    };
    let dns = &policy.dns;
    println!(
        "{}: ok: {} hostname(s), {} CIDR(s), loopback {}, resolvers: {}; learned addresses live \
         {}..{} s plus {} s grace, at most {} of them",
        file.display(),
        access.allow.len(),
        access.allow_cidrs.len(),
        if access.allow_loopback {
            "allowed"
        } else {
            "denied"
        },
        resolvers,
        dns.min_ttl,
        dns.max_ttl,
        dns.grace_period,
        dns.max_learned
    );
    Ok(())
}

/// Where audit records go.
enum AuditSink {
    None,
    Stdout,
    File(fs::File),
}

impl AuditSink {
    fn open(path: Option<&Path>) -> Result<Self> {
        Ok(match path {
            None => Self::None,
            Some(path) if path == Path::new("-") => Self::Stdout,
            Some(path) => Self::File(
                fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| {
                        format!(
                            "cannot open audit log {}; check that its directory exists and is \
                             writable",
                            path.display()
                        )
                    })?,
            ),
        })
    }

    fn write(&mut self, record: &impl serde::Serialize) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        // One write per line: O_APPEND keeps lines whole even with other writers.
        match self {
            Self::None => Ok(()),
            Self::Stdout => {
                let mut stdout = io::stdout().lock();
                stdout.write_all(&line)?;
                stdout.flush()
            }
            Self::File(file) => file.write_all(&line),
        }
    }
}

fn run_daemon(args: DaemonArgs) -> Result<()> {
    let (policy, source) = match &args.policy {
        Some(path) => (
            Policy::from_file(path).context("the policy was rejected; nothing was attached")?,
            PolicySource::File(path.clone()),
        ),
        None => (Policy::embedded_default(), PolicySource::Embedded),
    };
    let compiled = CompiledPolicy::new(&policy, || {
        resolv::nameservers_from(Path::new(resolv::RESOLV_CONF)).unwrap_or_else(|err| {
            warn!("cannot read {}: {err}", resolv::RESOLV_CONF);
            Vec::new()
        })
    });
    if compiled.resolvers.is_empty() {
        match compiled.resolver_origin {
            ResolverOrigin::Policy => {
                warn!("dns.resolvers is empty: DNS from enforced cgroups is denied")
            }
            ResolverOrigin::ResolvConf => warn!(
                "dns.resolvers is unset and {} names no nameserver: DNS from enforced cgroups \
                 is denied",
                resolv::RESOLV_CONF
            ),
        }
    }

    let mount = cgroup::cgroup2_mount()?;
    let mut created_cgroup = None;
    let mut cgroups: Vec<CgroupDir> = Vec::new();
    if args.cgroups.is_empty() {
        let (dir, created) = CgroupDir::ensure_dedicated(&mount)?;
        if created {
            created_cgroup = Some(dir.clone());
        }
        cgroups.push(dir);
    } else {
        for given in &args.cgroups {
            let dir = CgroupDir::resolve(&mount, given)?;
            if !cgroups.contains(&dir) {
                cgroups.push(dir);
            }
        }
    }
    let audit = AuditSink::open(args.audit_log.as_deref())?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let rules: Vec<String> = policy
        .registry_access
        .allow
        .iter()
        .map(ToString::to_string)
        .collect();
    let result = runtime.block_on(enforce(&compiled, &source, &cgroups, audit, &rules));
    if let Some(dir) = created_cgroup {
        match dir.remove() {
            Ok(()) => info!("removed cgroup {}", dir.path.display()),
            Err(err) => info!(
                "left cgroup {} in place ({err}); processes still run in it, unenforced",
                dir.path.display()
            ),
        }
    }
    result
}

async fn enforce(
    compiled: &CompiledPolicy,
    source: &PolicySource,
    cgroups: &[CgroupDir],
    mut audit: AuditSink,
    rules: &[String],
) -> Result<()> {
    // Subscribe before attaching: a signal that arrives mid-way must still detach cleanly.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let mut enforcer = Enforcer::load(compiled)?;
    for dir in cgroups {
        // On error the enforcer is dropped on return, which detaches what was attached.
        enforcer.attach(dir)?;
    }
    for (program, count) in enforcer.verified_instructions() {
        log::debug!(
            "{program}: {} instructions verified",
            count.map_or("?".to_string(), |c| c.to_string())
        );
    }
    let events = enforcer.take_events()?;
    let dns_events = enforcer.take_dns_events()?;
    // SAFETY: each ring buffer owns its map fd and keeps it open for as long as it lives, which
    // is as long as its AsyncFd.
    let mut events =
        unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
            .map_err(|err| anyhow::anyhow!("watching the event ring buffer: {err}"))?;
    let mut dns_events =
        unsafe { AsyncFd::register_with_interest(dns_events, tokio::io::Interest::READABLE) }
            .map_err(|err| anyhow::anyhow!("watching the DNS event ring buffer: {err}"))?;
    let mut expiry = tokio::time::interval(std::time::Duration::from_secs(1));

    let paths: Vec<String> = cgroups
        .iter()
        .map(|c| c.path.display().to_string())
        .collect();
    info!(
        "enforcing on {} (policy {source}: {} hostname rule(s), {} address rule(s), resolvers {} \
         from {})",
        paths.join(", "),
        compiled.names.len(),
        compiled.cidrs.len(),
        if compiled.resolvers.is_empty() {
            "none".to_string()
        } else {
            compiled
                .resolvers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
        match compiled.resolver_origin {
            ResolverOrigin::Policy => "the policy",
            ResolverOrigin::ResolvConf => resolv::RESOLV_CONF,
        }
    );

    let mut cgroup_names = CgroupNames::new(cgroups);
    let clock_offset = realtime_minus_boottime_ns();
    let stop = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                drain(guard.get_inner_mut(), |event: GateEvent| {
                    let cgroup = cgroup_names.lookup(event.cgroup_id);
                    let record = AuditRecord::from_event(&event, clock_offset, cgroup);
                    info!("{}", record.summary());
                    if let Err(err) = audit.write(&record) {
                        warn!("writing the audit log failed: {err}");
                    }
                });
                guard.clear_ready();
            }
            guard = dns_events.readable_mut() => {
                let mut guard = guard.context("waiting for DNS events")?;
                drain(guard.get_inner_mut(), |event: DnsEvent| {
                    let cgroup = cgroup_names.lookup(event.cgroup_id);
                    let learned = |addr: std::net::IpAddr| {
                        let key = ram_common::LearnedKey {
                            cgroup_id: event.cgroup_id,
                            addr: ram::policy::to_v6(addr).octets(),
                        };
                        enforcer.learned_entry(&key).is_some()
                    };
                    for record in learn_records(&event, clock_offset, cgroup, rules, learned) {
                        info!("{}", record.summary());
                        if let Err(err) = audit.write(&record) {
                            warn!("writing the audit log failed: {err}");
                        }
                    }
                });
                guard.clear_ready();
            }
            _ = expiry.tick() => {
                let now = boottime_ns();
                match enforcer.expire_learned(now) {
                    Ok((0, _)) => {}
                    Ok((removed, left)) => log::debug!("expired {removed} learned address(es); {left} left"),
                    Err(err) => warn!("removing expired learned addresses failed: {err}"),
                }
            }
        }
    };

    let counters = enforcer.counters().unwrap_or_default();
    let summary: Vec<String> = Counter::ALL
        .iter()
        .map(|c| format!("{}={}", c.as_str(), counters[*c as usize]))
        .collect();
    drop(events);
    drop(dns_events);
    drop(enforcer);
    info!(
        "{stop}: detached from {} cgroup(s); counters: {}",
        paths.len(),
        summary.join(" ")
    );
    Ok(())
}

/// Hands every event waiting in `ring` to `handle`, as a `T` (the `repr(C)` event type the
/// programs write into that ring buffer); short records are logged and skipped.
fn drain<T>(ring: &mut RingBuf<MapData>, mut handle: impl FnMut(T)) {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<T>() {
            warn!("ignoring a short event ({} bytes)", item.len());
            continue;
        }
        // SAFETY: the kernel wrote a whole T (every ring buffer carries one event type);
        // read_unaligned copes with any alignment of the ring buffer's data.
        handle(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of the programs' expiry times.
fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Audit records for the addresses a DNS event taught the kernel.
fn learn_records(
    event: &DnsEvent,
    clock_offset: i128,
    cgroup: Option<String>,
    rules: &[String],
    in_kernel_map: impl Fn(std::net::IpAddr) -> bool,
) -> Vec<LearnRecord> {
    let time = rfc3339_utc(i128::from(event.boot_ns) + clock_offset);
    let rule = rules
        .get(event.rule_index as usize)
        .cloned()
        .unwrap_or_else(|| format!("#{}", event.rule_index));
    let resolver = display_addr(event.resolver).to_string();
    let message = &event.msg[..(event.msg_len as usize).min(event.msg.len())];
    if event.map_full > 0 {
        warn!(
            "{} address(es) answered by {resolver} were NOT learned: the learned-address map is \
             full (raise dns.max_learned); connections to them are denied",
            event.map_full
        );
    }
    if event.forbidden > 0 {
        warn!(
            "{} address(es) in an answer from {resolver} were refused (loopback, link-local, \
             multicast or unspecified addresses are never learned from DNS)",
            event.forbidden
        );
    }
    match named_addresses(message) {
        // The kernel's map decides what was learned (refused and map-full addresses are not).
        Ok(named) => named
            .into_iter()
            .filter(|n| in_kernel_map(n.addr))
            .map(|n| LearnRecord {
                time: time.clone(),
                verdict: "learn",
                reason: "learned",
                cgroup: cgroup.clone(),
                cgroup_id: event.cgroup_id,
                hostname: n.question,
                record_owner: n.owner,
                dst_addr: n.addr.to_string(),
                ttl: n.ttl,
                rule: rule.clone(),
                rule_index: event.rule_index,
                resolver: resolver.clone(),
                protocol: protocol_name(event.protocol),
            })
            .collect(),
        Err(err) => {
            warn!("could not decode an answer the kernel learned from ({err})");
            Vec::new()
        }
    }
}

/// cgroup id → path, for audit records (the process may be in a child of an enforced cgroup).
struct CgroupNames {
    roots: Vec<CgroupDir>,
    mount: Option<PathBuf>,
    known: HashMap<u64, Option<String>>,
}

impl CgroupNames {
    /// A cgroup tree walked per unknown id is bounded by this many directories.
    const MAX_WALK: usize = 10_000;

    fn new(roots: &[CgroupDir]) -> Self {
        Self {
            roots: roots.to_vec(),
            mount: cgroup::cgroup2_mount().ok(),
            known: HashMap::new(),
        }
    }

    /// The path relative to the cgroup2 mount (`/ram.enforced/job`), as systemd shows them.
    fn lookup(&mut self, id: u64) -> Option<String> {
        if let Some(known) = self.known.get(&id) {
            return known.clone();
        }
        let found = cgroup::find_by_id(&self.roots, id, Self::MAX_WALK).map(|path| {
            match self.mount.as_ref().and_then(|m| path.strip_prefix(m).ok()) {
                Some(relative) => format!("/{}", relative.display()),
                None => path.display().to_string(),
            }
        });
        // Bounded cache: cgroups come and go; forget everything rather than grow forever.
        if self.known.len() > 4096 {
            self.known.clear();
        }
        self.known.insert(id, found.clone());
        found
    }
}

fn run_exec(args: ExecArgs) -> Result<()> {
    let mount = cgroup::cgroup2_mount()?;
    let dir = CgroupDir::resolve(&mount, &args.cgroup)?;
    ensure_enforced(&dir)?;
    dir.add_process(std::process::id())?;
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given; usage: ram exec -- CMD [ARGS]...")?;
    let err = std::process::Command::new(program).args(rest).exec();
    bail!("cannot run {}: {err}", program.to_string_lossy())
}

/// Refuses to run a command in a cgroup that no ram daemon enforces: it would run unrestricted.
fn ensure_enforced(dir: &CgroupDir) -> Result<()> {
    let file = dir.open()?;
    let loaded: HashMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .filter_map(|info| Some((info.id(), info.name_as_str()?.to_owned())))
        .collect();
    for gate in GATES {
        let ids = cgroup::attached_program_ids(&file, gate.attach_type)
            .with_context(|| format!("querying the programs attached to {}", dir.path.display()))?;
        if !ids
            .iter()
            .any(|id| loaded.get(id).is_some_and(|n| n == gate.name))
        {
            bail!(
                "cgroup {} is not enforced by ram (no {} program attached); start `ram daemon \
                 --cgroup {}` first",
                dir.path.display(),
                gate.name,
                dir.path.display()
            );
        }
    }
    Ok(())
}
