//! `ram daemon`: puts the policy in force, follows its file, writes the audit log, serves the
//! Docker servers and answers the control socket. Enforcement lives in the kernel (pinned); this
//! process only feeds it.
//!
//! This file is the event loop only. Each part owns its state: [`enforcement`] (the kernel side
//! and the policy in force), the auditor (`crate::events`), [`docker_servers`]; [`reload`],
//! [`housekeeping`] and [`control`] are what the loop calls.

mod cgroup_watch;
mod container_dns;
pub mod control;
mod docker_servers;
mod enforcement;
mod housekeeping;
pub mod loaded;
mod metrics_server;
pub mod notify;
mod reload;
mod sockets;
pub mod watch;

use std::{io, path::PathBuf, time::Duration};

use log::{error, info, warn};
use ram_common::{Counter, DnsEvent, GateEvent, TlsEvent};
use tokio::signal::unix::{SignalKind, signal};

use self::{
    cgroup_watch::CgroupWatcher, docker_servers::DockerServers, enforcement::Enforcement,
    loaded::LoadedPolicy, metrics_server::MetricsServer, watch::PolicyWatcher,
};
pub use self::{loaded::LoadError, sockets::SocketError};
use crate::{
    cgroups::CgroupDir,
    error_chain,
    events::{
        auditor::Auditor,
        records::now_rfc3339,
        ring::{self, EVENTS_AT_STOP, EVENTS_PER_TURN, drain},
        sink::{AuditLogError, AuditSink},
    },
    kernel::EnforceError,
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

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the policy was rejected; nothing was changed")]
    Policy(#[source] LoadError),
    #[error(transparent)]
    AuditLog(#[from] AuditLogError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Enforce(#[from] EnforceError),
    #[error("watching {path} for changes")]
    Watch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> DaemonError {
    move |source| DaemonError::Io { what, source }
}

/// The daemon's state, one part per concern.
pub(crate) struct Daemon {
    options: Options,
    enforcement: Enforcement,
    auditor: Auditor,
    docker: DockerServers,
    metrics: MetricsServer,
    started: String,
    ticks: u64,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(options: Options) -> Result<(), DaemonError> {
    // Before any thread: see the function. Without it, engines are still found by their
    // systemd units and containers by their cgroup names; only process-found engines are lost.
    match crate::sys::enter_init_cgroup_namespace() {
        Ok(true) => info!("entered the cgroup namespace of PID 1 (the host's, with its PIDs)"),
        Ok(false) => {}
        Err(err) => warn!(
            "this daemon runs in a cgroup namespace of its own and cannot enter PID 1's \
             ({err}): engines found only by their process (not a systemd unit) are missed"
        ),
    }
    if let Err(err) = crate::sys::raise_file_limit() {
        warn!("cannot raise the open-file limit ({err}); many clients may exhaust it");
    }
    let policy = LoadedPolicy::read(options.policy.as_deref()).map_err(DaemonError::Policy)?;
    policy.warn_if_no_resolvers();
    let sink = AuditSink::open(options.audit_log.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("starting the async runtime"))?;
    runtime.block_on(serve(options, policy, sink))
}

async fn serve(options: Options, policy: LoadedPolicy, sink: AuditSink) -> Result<(), DaemonError> {
    // Subscribe before anything changes, so a signal mid-way is handled, not fatal.
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io_error("installing the SIGINT handler"))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io_error("installing the SIGTERM handler"))?;
    let mut sighup =
        signal(SignalKind::hangup()).map_err(io_error("installing the SIGHUP handler"))?;
    let listener = sockets::bind_control_socket(&options.run_dir)?;
    let mut watcher = match &options.policy {
        Some(path) => Some(
            PolicyWatcher::new(path).map_err(|source| DaemonError::Watch {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };

    let (mut enforcement, dirs) = Enforcement::start(&options, policy)?;
    let events = enforcement.enforcer.take_events()?;
    let dns_events = enforcement.enforcer.take_dns_events()?;
    let tls_events = enforcement.enforcer.take_tls_events()?;
    let mut events = ring::watch(events).map_err(io_error("watching the event ring buffer"))?;
    let mut tls_events =
        ring::watch(tls_events).map_err(io_error("watching the TLS event ring buffer"))?;
    let mut dns_events =
        ring::watch(dns_events).map_err(io_error("watching the DNS event ring buffer"))?;

    let paths: Vec<String> = dirs.iter().map(|c| c.path.display().to_string()).collect();
    info!(
        "enforcing on {}: {}",
        paths.join(", "),
        enforcement.policy.describe()
    );
    enforcement.policy.write_copy(&options.run_dir);
    let auditor = Auditor::new(sink, &dirs, &options.run_dir);
    let (docker, mut image_decisions) = DockerServers::new(options.authz_socket.clone());
    let metrics = MetricsServer::new(auditor.metrics(), &options.pin_dir);
    let mut daemon = Daemon {
        options,
        enforcement,
        auditor,
        docker,
        metrics,
        started: now_rfc3339(),
        ticks: 0,
    };
    // Events lost while no daemon ran are reported now (the counter is pinned).
    daemon.report_dropped();
    if let Err(err) = notify::ready(&format!("enforcing on {} cgroup(s)", paths.len())) {
        warn!("telling systemd we are ready failed: {err}");
    }
    daemon.docker.update(&daemon.enforcement.policy);
    daemon.policy_in_force_metrics();

    let mut cgroups = match CgroupWatcher::new(&daemon.options.mount) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            warn!(
                "cannot watch for new cgroups ({err}): containers are found by the one-second \
                 scope pass only"
            );
            None
        }
    };
    if let Some(cgroups) = &mut cgroups {
        cgroups.watch(&daemon.enforcement.in_scope);
    }
    // While a container just found is not set up yet: a pass every QUICK_PASS. One interval,
    // not a sleep made anew on each turn, which a stream of events would keep putting off.
    let mut quick = false;
    let mut created_until: Option<tokio::time::Instant> = None;
    let mut quick_pass = tokio::time::interval(QUICK_PASS);
    quick_pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stop = loop {
        tokio::select! {
            // In this order: signals, policy changes, the control socket and the tick first
            // (rarely ready, never starved by a flood of events); then DNS answers before the
            // gates' decisions, so that a denial finds the name its address was answered for;
            // then the Docker servers' image decisions.
            biased;
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sighup.recv() => {
                info!("SIGHUP: reopening the audit log and re-reading the policy");
                if let Err(err) = daemon.auditor.reopen() {
                    error!("{}", error_chain(&err));
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
                    Err(err) => {
                        // Out of descriptors, say: the connection stays queued and the socket
                        // readable, so pause instead of spinning on it.
                        warn!("control socket: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            _ = tick.tick() => {
                let retry = daemon.housekeeping();
                quick = follow_up(&mut cgroups, &daemon, retry);
            }
            created = async { cgroups.as_mut().expect("guarded").created().await }, if cgroups.is_some() => {
                if let Err(err) = created {
                    warn!("watching for new cgroups failed ({err}); the one-second pass remains");
                    cgroups = None;
                }
                // A runtime makes the cgroup first and puts the container's process in it a
                // moment later: look again for a little while.
                created_until = Some(tokio::time::Instant::now() + AFTER_CREATION);
                let retry = daemon.follow_scope();
                quick = follow_up(&mut cgroups, &daemon, retry);
            }
            _ = quick_pass.tick(), if quick || created_until.is_some() => {
                if created_until.is_some_and(|until| tokio::time::Instant::now() >= until) {
                    created_until = None;
                }
                let retry = daemon.follow_scope();
                quick = follow_up(&mut cgroups, &daemon, retry);
            }
            guard = dns_events.readable_mut() => {
                let mut guard = guard.map_err(io_error("waiting for DNS events"))?;
                if drain(guard.get_inner_mut(), EVENTS_PER_TURN, |event: DnsEvent| daemon.dns_event(&event)) {
                    guard.clear_ready();
                } else {
                    tokio::task::yield_now().await;
                }
            }
            guard = events.readable_mut() => {
                let mut guard = guard.map_err(io_error("waiting for events"))?;
                // Left ready when not emptied: the loop comes back to it after the others.
                if drain(guard.get_inner_mut(), EVENTS_PER_TURN, |event: GateEvent| daemon.gate_event(&event)) {
                    guard.clear_ready();
                } else {
                    // Let the runtime's driver run (it delivers signals and socket readiness),
                    // which it does only when this task yields.
                    tokio::task::yield_now().await;
                }
            }
            guard = tls_events.readable_mut() => {
                let mut guard = guard.map_err(io_error("waiting for TLS events"))?;
                if drain(guard.get_inner_mut(), EVENTS_PER_TURN, |event: TlsEvent| daemon.tls_event(&event)) {
                    guard.clear_ready();
                } else {
                    tokio::task::yield_now().await;
                }
            }
            // Last: a flood of requests to the Docker servers must not keep the loop from the
            // kernel's events; what overflows their bounded queue is counted.
            Some(decision) = image_decisions.recv() => daemon.auditor.image_decision(decision),
        }
    };

    let _ = notify::stopping();
    // What is in the ring buffers now goes to the log before we go.
    drain(dns_events.get_mut(), EVENTS_AT_STOP, |event: DnsEvent| {
        daemon.dns_event(&event);
    });
    drain(events.get_mut(), EVENTS_AT_STOP, |event: GateEvent| {
        daemon.gate_event(&event);
    });
    drain(tls_events.get_mut(), EVENTS_AT_STOP, |event: TlsEvent| {
        daemon.tls_event(&event);
    });
    let _ = std::fs::remove_file(control::socket_path(&daemon.options.run_dir));
    daemon.docker.stop();
    daemon.metrics.stop();
    daemon.auditor.flush_all_repeats();
    let counters = daemon.enforcement.enforcer.counters().unwrap_or_default();
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

/// How often the scope is followed while a container just found is being set up by its
/// runtime, and for how long at most: a container's command starts tens of milliseconds after
/// its cgroup appears, and its first DNS lookup must find its network trusted.
/// (How long a container counts as just found is `container_dns::SETUP_WINDOW`.)
const QUICK_PASS: Duration = Duration::from_millis(10);
/// Quick passes go on this long after a cgroup appeared where containers appear.
const AFTER_CREATION: Duration = Duration::from_millis(500);

/// After a scope pass: watches the cgroups now in scope, and keeps passing quickly while a
/// container just found needs another look (`retry`).
fn follow_up(cgroups: &mut Option<CgroupWatcher>, daemon: &Daemon, retry: bool) -> bool {
    if let Some(cgroups) = cgroups {
        cgroups.watch(&daemon.enforcement.in_scope);
    }
    retry
}

impl Daemon {
    fn gate_event(&mut self, event: &GateEvent) {
        self.auditor.gate_event(event, &self.enforcement.rules);
    }

    fn tls_event(&mut self, event: &TlsEvent) {
        self.auditor.tls_event(event, &self.enforcement.rules);
    }

    fn dns_event(&mut self, event: &DnsEvent) {
        let enforcer = &self.enforcement.enforcer;
        self.auditor
            .dns_event(event, &self.enforcement.rules, |key| {
                enforcer.learned_entry(key).is_some()
            });
    }
}
