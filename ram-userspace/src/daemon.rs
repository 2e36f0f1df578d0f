//! `ram daemon`: puts the policy in force, follows its file, writes the audit log, and answers
//! the control socket. Enforcement lives in the kernel (pinned); this process only feeds it.

use std::{
    collections::HashMap,
    fs,
    io::{self, Write as _},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use log::{error, info, warn};
use ram::{
    answers::named_addresses,
    audit::{
        AuditRecord, DroppedRecord, LearnRecord, display_addr, protocol_name,
        realtime_minus_boottime_ns, rfc3339_utc,
    },
    authz,
    cgroup::{self, CgroupDir},
    compile::{CompiledPolicy, ResolverOrigin},
    image_gate, notify,
    policy::{Policy, PolicySource, to_v6},
    programs::{Enforcer, OpenReport, PinDir, boottime_ns},
    protect, resolv, scope,
    watch::PolicyWatcher,
};
use ram_common::{
    Counter, DnsEvent, GateEvent, LearnedKey, Reason,
    maps::{ALLOWED_CIDRS_MAX, ALLOWED_NAMES_MAX, RESOLVERS_MAX},
};
use sha2::{Digest as _, Sha256};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, unix::AsyncFd},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};

use crate::control::{
    self, CgroupStatus, CheckAnswer, LearnedEntry, MapFill, PolicyStatus, Request, Response, Status,
};

/// What `ram daemon` was asked to do.
pub struct Options {
    pub policy: Option<PathBuf>,
    /// Cgroups given on the command line (or ram's own), with the reason each is enforced. The
    /// policy's `[scope]` adds more.
    pub cgroups: Vec<(CgroupDir, String)>,
    pub mount: PathBuf,
    pub audit_log: Option<PathBuf>,
    pub pin_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Where the Docker authorization plugin listens (when `image_access.enabled`).
    pub authz_socket: PathBuf,
}

/// A policy as read: its text (for `ram policy show` and the hash), the parsed form and the
/// compiled map entries.
struct LoadedPolicy {
    source: PolicySource,
    text: String,
    sha256: String,
    loaded: String,
    policy: Policy,
    compiled: CompiledPolicy,
}

impl LoadedPolicy {
    fn read(path: Option<&Path>) -> Result<Self> {
        let (source, text) = match path {
            Some(path) => {
                protect::check_policy_path(path)?;
                let text = fs::read_to_string(path).with_context(|| {
                    format!("cannot read policy file {}; check the path", path.display())
                })?;
                (PolicySource::File(path.to_owned()), text)
            }
            None => (
                PolicySource::Embedded,
                ram::policy::DEFAULT_POLICY.to_owned(),
            ),
        };
        let policy = Policy::from_toml(&text, &source)?;
        let compiled = CompiledPolicy::new(&policy, || {
            resolv::nameservers_from(Path::new(resolv::RESOLV_CONF)).unwrap_or_else(|err| {
                warn!("cannot read {}: {err}", resolv::RESOLV_CONF);
                Vec::new()
            })
        });
        Ok(Self {
            sha256: sha256_hex(text.as_bytes()),
            loaded: now_rfc3339(),
            source,
            text,
            policy,
            compiled,
        })
    }

    fn describe(&self) -> String {
        let compiled = &self.compiled;
        format!(
            "policy {} (sha256 {}): {} hostname rule(s), {} address rule(s), resolvers {} from \
             {}, allowed connections audited: {}",
            self.source,
            &self.sha256[..12],
            compiled.names.len(),
            compiled.cidrs.len(),
            if compiled.resolvers.is_empty() {
                "none".to_string()
            } else {
                join(&compiled.resolvers)
            },
            match compiled.resolver_origin {
                ResolverOrigin::Policy => "the policy",
                ResolverOrigin::ResolvConf => resolv::RESOLV_CONF,
            },
            self.policy.audit.allowed.as_str(),
        )
    }

    fn warn_if_no_resolvers(&self) {
        if !self.compiled.resolvers.is_empty() {
            return;
        }
        match self.compiled.resolver_origin {
            ResolverOrigin::Policy => {
                warn!("dns.resolvers is empty: DNS from enforced cgroups is denied")
            }
            ResolverOrigin::ResolvConf => warn!(
                "dns.resolvers is unset and {} names no nameserver: DNS from enforced cgroups is \
                 denied",
                resolv::RESOLV_CONF
            ),
        }
    }
}

/// Where audit records go.
enum AuditSink {
    None,
    Stdout,
    File(PathBuf, fs::File),
}

impl AuditSink {
    fn open(path: Option<&Path>) -> Result<Self> {
        Ok(match path {
            None => Self::None,
            Some(path) if path == Path::new("-") => Self::Stdout,
            Some(path) => Self::File(path.to_owned(), open_append(path)?),
        })
    }

    /// Reopens the file (after logrotate moved it away).
    fn reopen(&mut self) -> Result<()> {
        if let Self::File(path, file) = self {
            *file = open_append(path)?;
        }
        Ok(())
    }

    fn describe(&self) -> Option<String> {
        match self {
            Self::None => None,
            Self::Stdout => Some("-".into()),
            Self::File(path, _) => Some(path.display().to_string()),
        }
    }

    fn write(&mut self, record: &impl serde::Serialize) {
        let result = (|| {
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
                Self::File(_, file) => file.write_all(&line),
            }
        })();
        if let Err(err) = result {
            warn!("writing the audit log failed: {err}");
        }
    }
}

/// Opens the audit log for appending, never through a symlink, in a directory only root can
/// change (a log root appends to must not be redirectable at another file).
fn open_append(path: &Path) -> Result<fs::File> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    protect::check_directory_path(directory)
        .context("the audit log's directory is not safe for root")?;
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open audit log {}; check that its directory exists and is writable",
                path.display()
            )
        })
}

/// What the daemon knows of an address from the DNS answers it saw.
#[derive(Debug, Clone)]
struct SeenAddress {
    hostname: String,
    /// The cgroup whose answer could not be learned because LEARNED was full.
    map_full_in: Option<u64>,
    /// From an answer to an allowed name (not one only reported for naming).
    from_allowed: bool,
}

/// Bounded memory of hostnames per address (forgotten wholesale when full: it only names
/// addresses in logs, the kernel decides).
struct Hostnames {
    by_addr: HashMap<IpAddr, SeenAddress>,
}

impl Hostnames {
    const MAX: usize = 65_536;

    fn note(&mut self, addr: IpAddr, seen: SeenAddress) {
        if self.by_addr.len() >= Self::MAX {
            self.by_addr.clear();
        }
        self.by_addr.insert(addr, seen);
    }

    fn get(&self, addr: &IpAddr) -> Option<&SeenAddress> {
        self.by_addr.get(addr)
    }
}

struct Daemon {
    options: Options,
    enforcer: Enforcer,
    policy: LoadedPolicy,
    /// Rule id → text for the policy in force and the one before it (ids are stable across
    /// policies, so events from just before a reload still find their rule).
    rules: HashMap<u64, String>,
    /// Why each enforced cgroup (by id) is enforced: `--cgroup`, or the scope rule that found it.
    reasons: HashMap<u64, String>,
    reloads: u64,
    rejected: Option<String>,
    audit: AuditSink,
    cgroup_names: CgroupNames,
    hostnames: Hostnames,
    clock_offset: i128,
    started: String,
    /// Lost events already written to the audit log, kept in the run directory across restarts
    /// (the kernel's counter is pinned and counts from installation).
    dropped_reported: u64,
    ticks: u64,
    /// The image rules the authorization plugin applies (`None`: image access off).
    image_rules: authz::SharedRules,
    /// Whether the plugin's socket is being served.
    authz_serving: bool,
    /// The Docker Hub pull gate, while image access is on, and what it applies.
    gate: Option<image_gate::Gate>,
    gate_rules: Option<image_gate::SharedGateRules>,
    image_decisions: Option<tokio::sync::mpsc::UnboundedSender<authz::Decision>>,
}

pub fn run(options: Options) -> Result<()> {
    let policy = LoadedPolicy::read(options.policy.as_deref())
        .context("the policy was rejected; nothing was changed")?;
    policy.warn_if_no_resolvers();
    let audit = AuditSink::open(options.audit_log.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(options, policy, audit))
}

async fn serve(options: Options, policy: LoadedPolicy, audit: AuditSink) -> Result<()> {
    // Subscribe before anything changes, so a signal mid-way is handled, not fatal.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let listener = bind_control_socket(&options.run_dir)?;
    let mut watcher = match &options.policy {
        Some(path) => Some(
            PolicyWatcher::new(path)
                .with_context(|| format!("watching {} for changes", path.display()))?,
        ),
        None => None,
    };

    let (scoped, complete) = in_scope(&options, &policy.policy.scope);
    let dirs: Vec<CgroupDir> = scoped.iter().map(|(d, _)| d.clone()).collect();
    let (mut enforcer, report) = Enforcer::open(
        PinDir::new(options.pin_dir.clone()),
        &policy.compiled,
        &dirs,
        complete,
    )?;
    log_open_report(&report, &options.pin_dir, policy.policy.dns.max_learned);
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

    let paths: Vec<String> = dirs.iter().map(|c| c.path.display().to_string()).collect();
    info!("enforcing on {}: {}", paths.join(", "), policy.describe());
    write_policy_copy(&options.run_dir, &policy);
    let mut daemon = Daemon {
        reasons: scoped.iter().map(|(d, why)| (d.id, why.clone())).collect(),
        rules: policy.compiled.rules.clone(),
        cgroup_names: CgroupNames::new(&dirs),
        enforcer,
        policy,
        reloads: 0,
        rejected: None,
        audit,
        hostnames: Hostnames {
            by_addr: HashMap::new(),
        },
        clock_offset: realtime_minus_boottime_ns(),
        started: now_rfc3339(),
        dropped_reported: read_dropped_reported(&options.run_dir),
        ticks: 0,
        image_rules: Default::default(),
        authz_serving: false,
        gate: None,
        gate_rules: None,
        image_decisions: None,
        options,
    };
    // Events lost while no daemon ran are reported now (the counter is pinned).
    daemon.report_dropped();
    if let Err(err) = notify::ready(&format!("enforcing on {} cgroup(s)", paths.len())) {
        warn!("telling systemd we are ready failed: {err}");
    }

    let (image_decisions, mut image_decisions_rx) =
        tokio::sync::mpsc::unbounded_channel::<authz::Decision>();
    daemon.image_decisions = Some(image_decisions);
    daemon.update_image_access();

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stop = loop {
        tokio::select! {
            // In this order: signals, policy changes, the control socket and the tick first
            // (rarely ready, never starved by a flood of events); then DNS answers before
            // decisions, so that a denial finds the name its address was answered for.
            biased;
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sighup.recv() => {
                info!("SIGHUP: reopening the audit log and re-reading the policy");
                if let Err(err) = daemon.audit.reopen() {
                    error!("{err:#}");
                }
                daemon.reload("SIGHUP");
            }
            changed = async { watcher.as_mut().expect("guarded").changed().await }, if watcher.is_some() => {
                match changed {
                    Ok(()) => daemon.reload("file changed"),
                    Err(err) => {
                        error!("{err}; the policy in force stays, but edits are no longer \
                                noticed until SIGHUP or a restart");
                        watcher = None;
                    }
                }
            }
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => daemon.answer(stream).await,
                    Err(err) => warn!("control socket: {err}"),
                }
            }
            Some(decision) = image_decisions_rx.recv() => daemon.image_decision(decision),
            _ = tick.tick() => daemon.housekeeping(),
            guard = dns_events.readable_mut() => {
                let mut guard = guard.context("waiting for DNS events")?;
                let dns_event = |event: DnsEvent| daemon.dns_event(&event);
                if drain(guard.get_inner_mut(), EVENTS_PER_TURN, dns_event) {
                    guard.clear_ready();
                } else {
                    tokio::task::yield_now().await;
                }
            }
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                let gate_event = |event: GateEvent| daemon.gate_event(&event);
                // Left ready when not emptied: the loop comes back to it after the others.
                if drain(guard.get_inner_mut(), EVENTS_PER_TURN, gate_event) {
                    guard.clear_ready();
                } else {
                    // Let the runtime's driver run (it delivers signals and socket readiness),
                    // which it does only when this task yields.
                    tokio::task::yield_now().await;
                }
            }
        }
    };

    let _ = notify::stopping();
    // What is in the ring buffers now goes to the log before we go (bounded: a flood must not
    // keep the daemon from stopping; the rest waits, pinned, for the next daemon).
    const AT_STOP: usize = 8192;
    drain(dns_events.get_mut(), AT_STOP, |event: DnsEvent| {
        daemon.dns_event(&event)
    });
    drain(events.get_mut(), AT_STOP, |event: GateEvent| {
        daemon.gate_event(&event)
    });
    let _ = fs::remove_file(control::socket_path(&daemon.options.run_dir));
    // dockerd then says the plugin is missing (and refuses what it would have asked about),
    // rather than failing to connect to a stale socket.
    if daemon.authz_serving {
        let _ = fs::remove_file(&daemon.options.authz_socket);
    }
    let counters = daemon.enforcer.counters().unwrap_or_default();
    let summary: Vec<String> = Counter::ALL
        .iter()
        .map(|c| format!("{}={}", c.as_str(), counters[*c as usize]))
        .collect();
    info!(
        "{stop}: the daemon stops; enforcement stays in the kernel (pinned under {}). `ram \
         uninstall` removes it. counters: {} ",
        daemon.options.pin_dir.display(),
        summary.join(" ")
    );
    Ok(())
}

fn log_open_report(report: &OpenReport, pin_dir: &Path, max_learned: u64) {
    if report.adopted_maps {
        info!(
            "adopted the pinned state under {} ({} link(s) swapped to this daemon's programs \
             without a gap, {} new)",
            pin_dir.display(),
            report.links_updated,
            report.links_created
        );
    } else {
        info!(
            "pinned programs, maps and {} link(s) under {}",
            report.links_created,
            pin_dir.display()
        );
    }
    for id in &report.stale_cgroups {
        warn!(
            "cgroup id {id} was enforced by an earlier daemon but is not in this one's list: \
             detached from it"
        );
    }
    for dir in &report.foreign_layouts {
        info!(
            "removed {} (maps of another ram version; its learned addresses are learned again)",
            dir.display()
        );
    }
    if let Some(kept) = report.learned_capacity_kept {
        warn!(
            "dns.max_learned is {max_learned} but the pinned learned-address map holds {kept}; \
             the new size takes effect after `ram uninstall` and a restart"
        );
    }
}

impl Daemon {
    /// Re-reads the policy file; a valid new policy replaces the old one atomically, an invalid
    /// one is logged and the old one stays.
    fn reload(&mut self, why: &str) {
        let Some(path) = self.options.policy.clone() else {
            info!("{why}: no policy file (the embedded default is in force); nothing to re-read");
            return;
        };
        let started = std::time::Instant::now();
        let new = match LoadedPolicy::read(Some(&path)) {
            Ok(new) => new,
            Err(err) => {
                let message = format!("{err:#}");
                error!(
                    "{why}: the new policy was REJECTED, the previous one (sha256 {}) stays in \
                     force: {message}",
                    &self.policy.sha256[..12]
                );
                self.rejected = Some(message);
                return;
            }
        };
        // The same file can still mean a new policy: resolvers from /etc/resolv.conf.
        if new.sha256 == self.policy.sha256 && new.compiled == self.policy.compiled {
            self.rejected = None;
            return;
        }
        let compiled_in = started.elapsed();
        let _ = notify::reloading();
        match self.enforcer.apply(&new.compiled) {
            Ok(report) => {
                info!(
                    "{why}: now in force (read and compiled in {:.1} ms, swapped in {:.1} ms): \
                     {}{}",
                    compiled_in.as_secs_f64() * 1e3,
                    (started.elapsed() - compiled_in).as_secs_f64() * 1e3,
                    new.describe(),
                    match report.learned_dropped {
                        0 => String::new(),
                        n => format!("; forgot {n} learned address(es) of removed rules"),
                    }
                );
                new.warn_if_no_resolvers();
                if new.policy.dns.max_learned != self.policy.policy.dns.max_learned {
                    warn!(
                        "dns.max_learned changed to {}; the learned-address map keeps {} \
                         entries until `ram uninstall` and a restart",
                        new.policy.dns.max_learned,
                        self.enforcer.learned_capacity()
                    );
                }
                let mut rules = new.compiled.rules.clone();
                for (id, text) in &self.policy.compiled.rules {
                    rules.entry(*id).or_insert_with(|| text.clone());
                }
                self.rules = rules;
                write_policy_copy(&self.options.run_dir, &new);
                self.policy = new;
                self.reloads += 1;
                self.rejected = None;
                self.follow_scope();
                self.update_image_access();
            }
            Err(err) => {
                // apply() fills the unused slot first: a failure leaves the old policy in force.
                error!(
                    "{why}: putting the new policy in force failed ({err}); the previous one \
                     stays"
                );
                self.rejected = Some(err.to_string());
            }
        }
        let _ = notify::ready("policy re-read");
    }

    fn rule_text(&self, rule_id: u64) -> Option<String> {
        (rule_id != 0).then(|| {
            self.rules
                .get(&rule_id)
                .cloned()
                .unwrap_or_else(|| format!("#{rule_id:016x}"))
        })
    }

    fn gate_event(&mut self, event: &GateEvent) {
        let cgroup = self.cgroup_names.lookup(event.cgroup_id);
        let mut record = AuditRecord::from_event(event, self.clock_offset, cgroup);
        record.rule = self.rule_text(event.rule_id);
        if let Some(seen) = self.hostnames.get(&display_addr(event.addr)) {
            record.hostname = Some(seen.hostname.clone());
            if event.verdict == 0
                && event.reason == Reason::NotLearned as u8
                && seen.map_full_in == Some(event.cgroup_id)
            {
                record.reason = "map_full";
            }
        }
        info!("{}", record.summary());
        self.audit.write(&record);
    }

    fn dns_event(&mut self, event: &DnsEvent) {
        let cgroup = self.cgroup_names.lookup(event.cgroup_id);
        let time = rfc3339_utc(i128::from(event.boot_ns) + self.clock_offset);
        let rule = self
            .rule_text(event.rule_id)
            .unwrap_or_else(|| format!("#{}", event.rule_index));
        let resolver = display_addr(event.resolver).to_string();
        if event.map_full > 0 {
            warn!(
                "{} address(es) answered by {resolver} were NOT learned: the learned-address map \
                 is full (raise dns.max_learned); connections to them are denied",
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
        let message = &event.msg[..(event.msg_len as usize).min(event.msg.len())];
        if event.not_allowed != 0 {
            // Nothing learned: remember the names only, for the denials that may follow.
            if let Ok(named) = named_addresses(message) {
                for address in named {
                    log::debug!(
                        "{} answered for {}, which no allow rule matches: not learned",
                        address.addr,
                        address.question
                    );
                    // Never over a name an allowed answer gave (a shared CDN address must keep
                    // the registry's name, whatever else a process resolves to it).
                    if self
                        .hostnames
                        .get(&address.addr)
                        .is_some_and(|seen| seen.from_allowed)
                    {
                        continue;
                    }
                    self.hostnames.note(
                        address.addr,
                        SeenAddress {
                            hostname: address.question,
                            map_full_in: None,
                            from_allowed: false,
                        },
                    );
                }
            }
            return;
        }
        let named = match named_addresses(message) {
            Ok(named) => named,
            Err(err) => {
                warn!("could not decode an answer the kernel learned from ({err})");
                return;
            }
        };
        for address in named {
            let key = LearnedKey {
                cgroup_id: event.cgroup_id,
                addr: to_v6(address.addr).octets(),
            };
            // The kernel's map decides what was learned (refused and map-full addresses are
            // not).
            let learned = self.enforcer.learned_entry(&key).is_some();
            let refused = ram_common::dns::never_learned(&key.addr);
            self.hostnames.note(
                address.addr,
                SeenAddress {
                    hostname: address.question.clone(),
                    map_full_in: (!learned && !refused && event.map_full > 0)
                        .then_some(event.cgroup_id),
                    from_allowed: true,
                },
            );
            if !learned {
                continue;
            }
            let record = LearnRecord {
                time: time.clone(),
                verdict: "learn",
                reason: "learned",
                cgroup: cgroup.clone(),
                cgroup_id: event.cgroup_id,
                hostname: address.question,
                record_owner: address.owner,
                dst_addr: address.addr.to_string(),
                ttl: address.ttl,
                rule: rule.clone(),
                rule_index: event.rule_index,
                resolver: resolver.clone(),
                protocol: protocol_name(event.protocol),
            };
            info!("{}", record.summary());
            self.audit.write(&record);
        }
    }

    /// Puts the policy's `[image_access]` in force for the authorization plugin, and starts
    /// serving the plugin the first time it is enabled.
    fn update_image_access(&mut self) {
        let access = &self.policy.policy.image_access;
        let rules = access.enabled.then(|| access.rules.clone());
        if let Ok(mut shared) = self.image_rules.write() {
            *shared = rules;
        }
        self.update_gate();
        let access = &self.policy.policy.image_access;
        if !access.enabled || self.authz_serving {
            return;
        }
        let path = self.options.authz_socket.clone();
        match bind_authz_socket(&path) {
            Ok(listener) => {
                let sender = self.image_decisions.clone();
                authz::serve(listener, self.image_rules.clone(), move |decision| {
                    if let Some(sender) = &sender {
                        let _ = sender.send(decision);
                    }
                });
                self.authz_serving = true;
                info!(
                    "image access: Docker authorization plugin `{}` on {} (start dockerd with \
                     --authorization-plugin={})",
                    authz::PLUGIN_NAME,
                    path.display(),
                    authz::PLUGIN_NAME
                );
            }
            Err(err) => error!("image access: {err:#}; Docker Hub images are NOT judged"),
        }
    }

    /// Starts, re-targets or stops the pull gate as `[image_access]` says.
    fn update_gate(&mut self) {
        let access = &self.policy.policy.image_access;
        if !access.enabled {
            if self.gate.take().is_some() {
                info!("image access off: the Docker Hub pull gate stopped");
            }
            return;
        }
        let wanted = image_gate::GateRules {
            rules: access.rules.clone(),
            upstream: access.upstream.clone(),
        };
        if let Some(shared) = &self.gate_rules
            && let Ok(mut rules) = shared.write()
        {
            *rules = wanted.clone();
        }
        let withheld = &self.policy.compiled.withheld_for_gate;
        if !withheld.is_empty() {
            info!(
                "image access: Docker Hub only through the pull gate; not allowed directly: {}",
                withheld.join(", ")
            );
        }
        let scope = &self.policy.policy.scope;
        if !scope.docker && !scope.whole_host {
            warn!(
                "image access is on but scope.docker is off: dockerd's fallback from the pull \
                 gate to Docker Hub is refused only if dockerd's cgroup is enforced (set \
                 scope.docker = true, or give its cgroup with --cgroup)"
            );
        }
        if self.gate.as_ref().map(|g| g.listen()) == Some(access.gate) {
            return;
        }
        // A new address: the new gate binds before the old one stops, so there is no moment
        // without a gate, unless the old one holds the address (another spelling of it).
        let mut bound = std::net::TcpListener::bind(access.gate);
        if bound.is_err() && self.gate.is_some() {
            drop(self.gate.take());
            // The old listener closes as its thread sees the stop: at most ~1 s here.
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(100));
                bound = std::net::TcpListener::bind(access.gate);
                if bound.is_ok() {
                    break;
                }
            }
        }
        let shared = Arc::new(RwLock::new(wanted));
        let sender = self.image_decisions.clone();
        let started = bound.and_then(|listener| {
            image_gate::Gate::start(listener, shared.clone(), move |decision| {
                if let Some(sender) = &sender {
                    let _ = sender.send(decision);
                }
            })
        });
        match started {
            Ok(gate) => {
                info!(
                    "image access: Docker Hub pull gate on http://{} (upstream {}; give dockerd \
                     \"registry-mirrors\": [\"http://{}\"])",
                    gate.listen(),
                    access.upstream,
                    gate.listen()
                );
                self.gate = Some(gate);
                self.gate_rules = Some(shared);
            }
            Err(err) => {
                drop(self.gate.take());
                error!(
                    "image access: the Docker Hub pull gate cannot listen on {}: {err}; pulls \
                     through it fail (Docker Hub stays unreachable: fail closed). Stop what \
                     listens there, or set image_access.gate to another port below 1024",
                    access.gate
                )
            }
        }
    }

    fn image_decision(&mut self, decision: authz::Decision) {
        let record = ImageRecord {
            time: now_rfc3339(),
            verdict: if decision.allowed { "allow" } else { "deny" },
            reason: decision.reason,
            action: decision.action,
            image: decision.image,
            user: decision.user,
            via: decision.via,
        };
        info!(
            "image {} {} {} ({})",
            record.verdict, record.action, record.image, record.reason
        );
        self.audit.write(&record);
    }

    /// Once a second: expire learned addresses, repair detached programs, report lost events.
    /// Brings the enforced cgroups in line with the command line and the policy's scope:
    /// containers that started are enforced, cgroups that left the scope (or vanished) are
    /// released, and a command-line cgroup made anew (e.g. a restarted service's) is enforced
    /// again.
    fn follow_scope(&mut self) {
        let (wanted, complete) = in_scope(&self.options, &self.policy.policy.scope);
        for (dir, why) in &wanted {
            match self.enforcer.enforce(dir) {
                Ok(true) => {
                    info!("enforcing on {} ({why})", dir.path.display());
                    self.reasons.insert(dir.id, why.clone());
                }
                Ok(false) => {}
                Err(err) => error!("cannot enforce on {} ({why}): {err}", dir.path.display()),
            }
        }
        if !complete {
            log::debug!("scope: the cgroup walk was partial; releasing nothing this time");
            return;
        }
        let given: Vec<&PathBuf> = self.options.cgroups.iter().map(|(d, _)| &d.path).collect();
        for (path, id, present) in self.enforcer.cgroups() {
            if wanted.iter().any(|(d, _)| d.id == id) {
                continue;
            }
            // A command-line cgroup that is gone stays listed (as removed) until it returns.
            if given.contains(&&path) && !present {
                continue;
            }
            match self.enforcer.release(id) {
                Ok(()) => info!(
                    "no longer enforcing on {} ({})",
                    path.display(),
                    if present { "left the scope" } else { "removed" }
                ),
                Err(err) => warn!("releasing {}: {err}", path.display()),
            }
            self.reasons.remove(&id);
        }
    }

    fn housekeeping(&mut self) {
        self.follow_scope();
        self.ticks += 1;
        for message in self.enforcer.verify_attachments() {
            warn!("{message}");
        }
        self.report_dropped();
        // Every 10 s: the gates check expiry and rules themselves, this only frees room.
        if !self.ticks.is_multiple_of(10) {
            return;
        }
        match self.enforcer.expire_learned(boottime_ns()) {
            Ok((0, _)) => {}
            Ok((removed, left)) => {
                log::debug!("expired {removed} learned address(es); {left} left")
            }
            Err(err) => warn!("removing expired learned addresses failed: {err}"),
        }
    }

    /// Writes an audit line when the kernel counted events it could not hand over.
    fn report_dropped(&mut self) {
        let Ok(counters) = self.enforcer.counters() else {
            return;
        };
        let total = counters[Counter::EventsDropped as usize];
        if total <= self.dropped_reported {
            self.dropped_reported = total;
            return;
        }
        let count = total - self.dropped_reported;
        self.dropped_reported = total;
        write_dropped_reported(&self.options.run_dir, total);
        warn!(
            "{count} audit event(s) were lost: the kernel's ring buffer was full ({total} in all; \
             see `ram status`)"
        );
        self.audit.write(&DroppedRecord {
            time: now_rfc3339(),
            verdict: "dropped",
            reason: "events_dropped",
            count,
            total,
        });
    }

    /// Answers one control-socket request. Bounded in size and time, so a stuck client cannot
    /// hold up enforcement bookkeeping for long.
    async fn answer(&mut self, stream: UnixStream) {
        let (reader, mut writer) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(
            reader,
            control::MAX_REQUEST as u64,
        ));
        let read = tokio::time::timeout(Duration::from_secs(1), reader.read_line(&mut line)).await;
        let response = match read {
            Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Ok(request) => self.respond(request),
                Err(err) => Response::Error {
                    message: format!("bad request ({err}); use the `ram` command"),
                },
            },
            Ok(Err(err)) => Response::Error {
                message: err.to_string(),
            },
            Err(_) => Response::Error {
                message: "no request within 1 s".into(),
            },
        };
        let mut bytes = serde_json::to_vec(&response).unwrap_or_default();
        bytes.push(b'\n');
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.write_all(&bytes)).await;
    }

    fn respond(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Learned => match self.learned() {
                Ok(entries) => Response::Learned { entries },
                Err(err) => Response::Error {
                    message: err.to_string(),
                },
            },
            Request::Check { host } => Response::Check(check_host(&self.policy, &host)),
        }
    }

    fn status(&mut self) -> Status {
        let counters = self.enforcer.counters().unwrap_or_default();
        let learned = self
            .enforcer
            .learned_entries()
            .map(|e| e.len())
            .unwrap_or(0);
        let compiled = &self.policy.compiled;
        Status {
            enforcing: true,
            pid: std::process::id(),
            started: self.started.clone(),
            pin_dir: self.options.pin_dir.clone(),
            audit_log: self.audit.describe(),
            cgroups: self
                .enforcer
                .cgroups()
                .into_iter()
                .map(|(path, id, present)| CgroupStatus {
                    reason: self.reasons.get(&id).cloned().unwrap_or_default(),
                    path: path.display().to_string(),
                    id,
                    present,
                })
                .collect(),
            policy: PolicyStatus {
                source: self.policy.source.to_string(),
                sha256: self.policy.sha256.clone(),
                loaded: self.policy.loaded.clone(),
                hostnames: compiled.names.len(),
                cidrs: compiled.cidrs.len(),
                resolvers: compiled.resolvers.iter().map(ToString::to_string).collect(),
                allowed_audit: self.policy.policy.audit.allowed.as_str().into(),
                reloads: self.reloads,
                rejected: self.rejected.clone(),
            },
            counters: Counter::ALL
                .iter()
                .map(|c| (c.as_str().to_string(), counters[*c as usize]))
                .collect(),
            maps: vec![
                fill(
                    "learned",
                    learned,
                    self.enforcer.learned_capacity() as usize,
                ),
                fill(
                    "allowed_names",
                    compiled.names.len(),
                    ALLOWED_NAMES_MAX as usize,
                ),
                fill(
                    "allowed_cidrs",
                    compiled.cidrs.len(),
                    ALLOWED_CIDRS_MAX as usize,
                ),
                fill(
                    "resolvers",
                    compiled.resolvers.len(),
                    RESOLVERS_MAX as usize,
                ),
            ],
        }
    }

    fn learned(&mut self) -> Result<Vec<LearnedEntry>> {
        let now = boottime_ns();
        let mut entries: Vec<LearnedEntry> = self
            .enforcer
            .learned_entries()?
            .into_iter()
            .filter(|(_, value)| value.expires_ns > now)
            .map(|(key, value)| {
                let addr = display_addr(key.addr);
                LearnedEntry {
                    addr: addr.to_string(),
                    cgroup: self.cgroup_names.lookup(key.cgroup_id),
                    cgroup_id: key.cgroup_id,
                    hostname: self.hostnames.get(&addr).map(|s| s.hostname.clone()),
                    rule: self.rule_text(value.rule_id),
                    expires: rfc3339_utc(i128::from(value.expires_ns) + self.clock_offset),
                    expires_in_s: (value.expires_ns - now) / 1_000_000_000,
                }
            })
            .collect();
        entries.sort_by(|a, b| (&a.hostname, &a.addr).cmp(&(&b.hostname, &b.addr)));
        Ok(entries)
    }
}

/// The cgroups to enforce now: the command line's, then what the policy's scope finds.
/// The cgroups to enforce now, and whether the list is complete (a partial container walk
/// must not release containers it did not reach).
fn in_scope(options: &Options, scope: &ram::policy::Scope) -> (Vec<(CgroupDir, String)>, bool) {
    // Command-line cgroups are looked up by path again: a cgroup removed and made anew (a
    // service restarted) has a new id, and is enforced again.
    let mut wanted: Vec<(CgroupDir, String)> = options
        .cgroups
        .iter()
        .filter_map(|(dir, why)| {
            let current = CgroupDir::resolve(&options.mount, &dir.path).ok()?;
            Some((current, why.clone()))
        })
        .collect();
    let mut add = |path: &Path, why: String| match CgroupDir::resolve(&options.mount, path) {
        Ok(dir) => {
            if !wanted.iter().any(|(d, _)| d.id == dir.id) {
                wanted.push((dir, why));
            }
        }
        Err(err) => log::debug!("scope: {} not enforced: {err}", path.display()),
    };
    for path in &scope.cgroups {
        add(path, format!("scope.cgroups: {}", path.display()));
    }
    if scope.docker {
        let (found, skipped) = scope::engine_cgroups(&options.mount, Path::new("/proc"));
        for found in found {
            add(&found.path, found.reason);
        }
        for message in skipped {
            log::debug!("{message}");
        }
    }
    let mut complete = true;
    if scope.containers {
        let containers = scope::container_cgroups(&options.mount);
        complete = containers.complete;
        for found in containers.found {
            add(&found.path, found.reason);
        }
    }
    if scope.whole_host {
        match CgroupDir::whole_host(&options.mount) {
            Ok(dir) => wanted.push((dir, "scope.whole_host: every process on the host".into())),
            Err(err) => warn!("scope.whole_host: {err}"),
        }
    }
    (wanted, complete)
}

fn fill(map: &str, used: usize, capacity: usize) -> MapFill {
    MapFill {
        map: map.into(),
        used,
        capacity,
    }
}

/// Whether the policy in force allows `host` (a hostname or an address), and by which entry.
fn check_host(policy: &LoadedPolicy, host: &str) -> CheckAnswer {
    let access = &policy.policy.registry_access;
    let answer =
        |allowed, rule: Option<String>, kind: Option<&str>, index, explanation| CheckAnswer {
            host: host.to_owned(),
            allowed,
            rule,
            kind: kind.map(str::to_owned),
            rule_index: index,
            explanation,
        };
    if let Ok(addr) = host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        if access.allow_loopback {
            for text in ram::compile::LOOPBACK_CIDRS {
                let cidr: ram::policy::Cidr = text.parse().expect("built-in CIDRs are valid");
                if cidr.contains(addr) {
                    return answer(
                        true,
                        Some(text.to_owned()),
                        Some("loopback"),
                        None,
                        "allow_loopback is on".into(),
                    );
                }
            }
        }
        if let Some((index, cidr)) = access
            .allow_cidrs
            .iter()
            .enumerate()
            .find(|(_, c)| c.contains(addr))
        {
            return answer(
                true,
                Some(cidr.to_string()),
                Some("allow_cidrs"),
                Some(index),
                "allowed on every port, no DNS involved".into(),
            );
        }
        return answer(
            false,
            None,
            None,
            None,
            "no allow_cidrs entry covers it; it is reachable only while learned from a DNS \
             answer to an allowed hostname (see `ram learned`)"
                .into(),
        );
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    // A bare registry name as written in image references may carry a port.
    let name = match name.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_owned(),
        _ => name,
    };
    let found = access
        .allow
        .iter()
        .enumerate()
        .find_map(|(index, pattern)| {
            let expansion = ram::presets::expand(pattern);
            let hosts = match &expansion {
                Some(e) => e.hosts.clone(),
                None => vec![pattern.clone()],
            };
            let host = hosts.into_iter().find(|h| h.matches(&name))?;
            Some((index, pattern, host, expansion))
        });
    match found {
        Some((index, pattern, host, expansion)) => answer(
            true,
            Some(pattern.to_string()),
            Some("allow"),
            Some(index),
            match expansion {
                Some(expansion) => format!(
                    "preset {} ({}) stands for {}; `{host}` matches; its addresses are \
                     allowed once a trusted resolver answers for it",
                    expansion.preset,
                    pattern,
                    expansion
                        .hosts
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "its addresses are allowed once a trusted resolver answers for it".into(),
            },
        ),
        None => answer(
            false,
            None,
            None,
            None,
            "no registry_access.allow entry matches it".into(),
        ),
    }
}

const DROPPED_REPORTED: &str = "events-dropped-reported";

fn read_dropped_reported(run_dir: &Path) -> u64 {
    fs::read_to_string(run_dir.join(DROPPED_REPORTED))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn write_dropped_reported(run_dir: &Path, total: u64) {
    if let Err(err) = fs::write(run_dir.join(DROPPED_REPORTED), format!("{total}\n")) {
        warn!(
            "cannot record the lost-event count in {}: {err}",
            run_dir.display()
        );
    }
}

/// One Image Access Management decision in the audit log.
#[derive(serde::Serialize)]
struct ImageRecord {
    time: String,
    verdict: &'static str,
    /// The image's category (`official`, `organization`, `verified_publisher`, `community`,
    /// `other_registry`) or, for a denial, the message the user saw.
    reason: String,
    /// `image_pull` or `container_create` (plugin); `manifests`, `blobs`, `tags`, `referrers`
    /// (pull gate).
    action: &'static str,
    image: String,
    user: Option<String>,
    via: &'static str,
}

/// The plugin socket (root-only), in a directory made if missing.
fn bind_authz_socket(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    bind_root_only_socket(path, "the authorization plugin socket", "--authz-socket")
}

/// The control socket, root-only, in a run directory only root can change.
fn bind_control_socket(run_dir: &Path) -> Result<UnixListener> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(run_dir)
        .with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    // Root writes here (socket, policy copy): nobody else may be able to redirect it.
    protect::check_directory_path(run_dir).context("the run directory is not safe for root")?;
    let listener = bind_root_only_socket(
        &control::socket_path(run_dir),
        "the control socket",
        "--run-dir",
    )?;
    listener
        .set_nonblocking(true)
        .context("making the control socket non-blocking")?;
    UnixListener::from_std(listener).context("watching the control socket")
}

/// Binds a unix socket created 0600 (umask, so that no one else can connect between bind and
/// chmod). A socket left by a dead daemon is replaced; a live one means another daemon uses
/// this path (`option` gives this one its own).
fn bind_root_only_socket(
    path: &Path,
    what: &str,
    option: &str,
) -> Result<std::os::unix::net::UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another ram daemon answers on {} ({what}); stop it first, or give this one its own \
             {option}",
            path.display()
        );
    }
    let _ = fs::remove_file(path);
    // SAFETY: umask has no memory arguments; no other thread creates files meanwhile.
    let previous = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    unsafe { libc::umask(previous) };
    bound.with_context(|| format!("binding {what} {}", path.display()))
}

/// Writes the policy in force to `<run dir>/policy.toml` (0644) for `ram policy show`, by
/// rename so a reader never sees half a file.
fn write_policy_copy(run_dir: &Path, policy: &LoadedPolicy) {
    let path = run_dir.join(control::POLICY_COPY_NAME);
    let temp = run_dir.join(format!(".{}.tmp", control::POLICY_COPY_NAME));
    let text = format!(
        "# The policy in force, as read from {} at {} (sha256 {}).\n# Written by the ram daemon; \
         edit the source, not this copy.\n{}",
        policy.source, policy.loaded, policy.sha256, policy.text
    );
    let result = fs::write(&temp, text)
        .and_then(|()| fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)))
        .and_then(|()| fs::rename(&temp, &path));
    if let Err(err) = result {
        warn!(
            "cannot write {} for `ram policy show`: {err}",
            path.display()
        );
    }
}

/// Events handled per wake-up: a process hammering denied addresses can produce events as
/// fast as the daemon writes them, and the daemon must still get to signals, reloads and the
/// control socket in between (the kernel counts what overflows meanwhile).
const EVENTS_PER_TURN: usize = 512;

/// Hands up to `max` events waiting in `ring` to `handle`, as a `T` (the `repr(C)` event type
/// the programs write into that ring buffer); short records are logged and skipped. Returns
/// whether the ring is empty.
fn drain<T>(ring: &mut RingBuf<MapData>, max: usize, mut handle: impl FnMut(T)) -> bool {
    for _ in 0..max {
        let Some(item) = ring.next() else {
            return true;
        };
        if item.len() < std::mem::size_of::<T>() {
            warn!("ignoring a short event ({} bytes)", item.len());
            continue;
        }
        // SAFETY: the kernel wrote a whole T (every ring buffer carries one event type);
        // read_unaligned copes with any alignment of the ring buffer's data.
        handle(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    false
}

fn now_rfc3339() -> String {
    rfc3339_utc(i128::from(boottime_ns()) + realtime_minus_boottime_ns())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn join(items: &[impl ToString]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(text: &str) -> LoadedPolicy {
        let policy = Policy::from_toml(text, &PolicySource::Embedded).unwrap();
        LoadedPolicy {
            source: PolicySource::Embedded,
            sha256: sha256_hex(text.as_bytes()),
            loaded: String::new(),
            text: text.into(),
            compiled: CompiledPolicy::new(&policy, Vec::new),
            policy,
        }
    }

    #[test]
    fn check_names_the_entry() {
        let policy = loaded(
            "[registry_access]\nallow = [\"ghcr.io\", \"*.example.com\"]\nallow_cidrs = \
             [\"10.1.0.0/16\"]",
        );
        let yes = check_host(&policy, "Registry.Example.com.");
        assert!(yes.allowed);
        assert_eq!(yes.rule.as_deref(), Some("*.example.com"));
        assert_eq!(yes.rule_index, Some(1));
        assert!(!check_host(&policy, "example.com").allowed);
        let cidr = check_host(&policy, "10.1.2.3");
        assert_eq!(
            (cidr.allowed, cidr.kind.as_deref()),
            (true, Some("allow_cidrs"))
        );
        assert_eq!(
            check_host(&policy, "127.0.0.1").kind.as_deref(),
            Some("loopback")
        );
        assert!(!check_host(&policy, "[2001:db8::1]").allowed);
        // The preset shows its expansion.
        let blob = check_host(&policy, "pkg-containers.githubusercontent.com");
        assert!(blob.allowed, "{blob:?}");
        assert_eq!(blob.rule.as_deref(), Some("ghcr.io"));
        assert!(
            blob.explanation.contains("GitHub Container Registry"),
            "{}",
            blob.explanation
        );
        assert!(check_host(&policy, "ghcr.io:443").allowed);
    }

    #[test]
    fn policy_hash_is_sha256_of_the_file() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
