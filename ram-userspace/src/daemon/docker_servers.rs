//! The Docker servers the daemon runs while `[image_access]` is on: the engine's authorization
//! plugin and the Docker Hub pull gate, kept in line with the policy in force.
//!
//! Both are served on one runtime of their own (a current-thread tokio runtime on the
//! `docker-servers` thread), started the first time image access is on and kept until the
//! daemon stops: the engine never waits on the daemon's event loop, and the event loop never
//! blocks on them. The event loop only swaps the rules they read and says where the gate
//! should listen; the gate's (re)binding is done by a task on the servers' runtime
//! ([`gate::keep`]). Their decisions come back to the event loop through one channel, for the
//! audit log.

use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use log::{error, info, warn};
use tokio::{
    runtime::{Builder, Handle},
    sync::{
        mpsc::{self, Receiver, Sender, error::TrySendError},
        oneshot, watch,
    },
};

use super::{loaded::LoadedPolicy, sockets::bind_authz_socket};
use crate::{
    docker::{Decisions, authz, gate},
    error_chain,
    events::records::ImageDecision,
};

/// Decisions waiting for the event loop. A flood of requests (any local user can send the gate
/// denied requests) fills it; the overflow is counted, never waited for, and never grows
/// memory.
const DECISIONS_QUEUED: usize = 4096;

pub struct DockerServers {
    authz_socket: PathBuf,
    /// The image rules the authorization plugin applies (`None`: image access off).
    image_rules: authz::SharedRules,
    /// The servers' runtime and what runs on it, once image access has been on.
    running: Option<Running>,
    decisions: Sender<ImageDecision>,
    /// Decisions that found the channel full (a flood of requests): counted, reported by the
    /// daemon as lost audit lines.
    decisions_lost: Arc<AtomicU64>,
}

/// The servers' runtime and the daemon's hold on what runs there.
struct Running {
    runtime: Handle,
    /// Dropped to end the runtime (and so the servers): see [`start_runtime`].
    _stop: oneshot::Sender<()>,
    /// What the gate applies.
    gate_rules: gate::SharedGateRules,
    /// Where the gate should listen (`None`: no gate), for [`gate::keep`].
    gate_address: watch::Sender<Option<SocketAddr>>,
    /// Whether the plugin's socket is being served.
    authz_serving: bool,
}

impl DockerServers {
    /// No server runs until [`Self::update`] finds image access on. The receiver gets every
    /// decision.
    pub fn new(authz_socket: PathBuf) -> (Self, Receiver<ImageDecision>) {
        let (decisions, receiver) = mpsc::channel(DECISIONS_QUEUED);
        let servers = Self {
            authz_socket,
            image_rules: Default::default(),
            running: None,
            decisions,
            decisions_lost: Arc::default(),
        };
        (servers, receiver)
    }

    /// Puts the policy's `[image_access]` in force for the authorization plugin and the gate:
    /// their rules at once; the gate started, moved or stopped by its task; the plugin served
    /// from the first time image access is on. Never waits on the servers.
    pub fn update(&mut self, loaded: &LoadedPolicy) {
        let access = &loaded.policy.image_access;
        let rules = access.enabled.then(|| access.rules.clone());
        if let Ok(mut shared) = self.image_rules.write() {
            *shared = rules;
        }
        if !access.enabled {
            if let Some(running) = &self.running {
                running.gate_address.send_replace(None);
            }
            return;
        }
        let wanted = gate::GateRules {
            rules: access.rules.clone(),
            upstream: access.upstream.clone(),
        };
        let withheld = &loaded.compiled.withheld_for_gate;
        if !withheld.is_empty() {
            info!(
                "image access: Docker Hub only through the pull gate; not allowed directly: {}",
                withheld.join(", ")
            );
        }
        warn_if_unprivileged_may_listen(access.gate.port());
        let scope = &loaded.policy.scope;
        if !scope.docker && !scope.whole_host {
            warn!(
                "image access is on but scope.docker is off: dockerd's fallback from the pull \
                 gate to Docker Hub is refused only if dockerd's cgroup is enforced (set \
                 scope.docker = true, or give its cgroup with --cgroup)"
            );
        }
        if let Some(running) = &self.running {
            if let Ok(mut rules) = running.gate_rules.write() {
                *rules = wanted;
            }
        } else {
            match self.start(wanted) {
                Ok(running) => self.running = Some(running),
                Err(err) => {
                    error!(
                        "image access: cannot start the Docker servers' runtime: {err}; Docker \
                         Hub images are NOT judged by the plugin, and pulls through the gate \
                         fail"
                    );
                    return;
                }
            }
        }
        let decisions = self.decisions();
        let Some(running) = &mut self.running else {
            return;
        };
        // Sent even when unchanged: a gate that could not listen is tried again.
        running.gate_address.send_replace(Some(access.gate));
        if !running.authz_serving {
            running.authz_serving = serve_authz(
                &running.runtime,
                &self.authz_socket,
                &self.image_rules,
                decisions,
            );
        }
    }

    /// The servers' runtime, with the gate's task on it.
    fn start(&self, rules: gate::GateRules) -> io::Result<Running> {
        let (runtime, stop) = start_runtime()?;
        let gate_rules = Arc::new(RwLock::new(rules));
        let (gate_address, wanted) = watch::channel(None);
        runtime.spawn(gate::keep(wanted, gate_rules.clone(), self.decisions()));
        Ok(Running {
            runtime,
            _stop: stop,
            gate_rules,
            gate_address,
            authz_serving: false,
        })
    }

    fn decisions(&self) -> Decisions {
        let sender = self.decisions.clone();
        let lost = self.decisions_lost.clone();
        Arc::new(move |decision| {
            // Never waits: a server must not stall on the event loop, which may be busy.
            if let Err(TrySendError::Full(_)) = sender.try_send(decision) {
                lost.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    /// Decisions lost so far because the event loop fell behind (a total, since start).
    pub fn decisions_lost(&self) -> u64 {
        self.decisions_lost.load(Ordering::Relaxed)
    }

    /// At the daemon's stop: the plugin's socket goes, so that dockerd says the plugin is
    /// missing (and refuses what it would have asked about) rather than failing to connect to a
    /// stale socket. Then the servers' runtime ends (not waited for: connections still open
    /// end with the process).
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            if running.authz_serving {
                let _ = fs::remove_file(&self.authz_socket);
            }
            drop(running);
        }
    }
}

/// Where Linux says from which port on any user may listen.
const UNPRIVILEGED_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// The gate's port is below 1024 so that only root can listen there while the gate is down
/// (enforced cgroups may reach that address and port whether or not the gate runs). Hosts
/// that lowered `net.ipv4.ip_unprivileged_port_start` (rootless Docker does) lose that.
fn warn_if_unprivileged_may_listen(port: u16) {
    let Ok(text) = fs::read_to_string(UNPRIVILEGED_PORT_START) else {
        return;
    };
    if let Ok(start) = text.trim().parse::<u16>()
        && port >= start
    {
        warn!(
            "image access: net.ipv4.ip_unprivileged_port_start is {start}, so any user may \
             listen on the pull gate's port {port} while the gate is down and answer in its \
             place; raise the sysctl above {port}, or choose an image_access.gate port below \
             {start}"
        );
    }
}

/// Starts the servers' runtime on a thread of its own. It runs until the sender returned is
/// dropped (or sent on); then the tasks on it are dropped, their sockets closed.
fn start_runtime() -> io::Result<(Handle, oneshot::Sender<()>)> {
    let (stop, stopped) = oneshot::channel::<()>();
    let (started, handle) = std::sync::mpsc::sync_channel(1);
    thread::Builder::new()
        .name("docker-servers".into())
        .spawn(move || {
            let runtime = match Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = started.send(Err(err));
                    return;
                }
            };
            let _ = started.send(Ok(runtime.handle().clone()));
            runtime.block_on(async {
                let _ = stopped.await;
            });
            // A lookup in progress on a blocking thread is not waited for beyond this.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
    // Built on its own thread, where it is also dropped (a runtime must not be dropped on the
    // event loop's): the event loop waits for that once, a matter of microseconds.
    let handle = handle
        .recv()
        .map_err(|_| io::Error::other("the Docker servers' thread ended at its start"))??;
    Ok((handle, stop))
}

/// Serves the plugin on its socket, on the servers' runtime. Whether it is served.
fn serve_authz(
    runtime: &Handle,
    path: &Path,
    rules: &authz::SharedRules,
    decisions: Decisions,
) -> bool {
    let listener = match bind_authz_socket(path) {
        Ok(listener) => listener,
        Err(err) => {
            let err = error_chain(&err);
            error!(
                "image access: {err}; the authorization plugin is not served, so a dockerd \
                 configured with it refuses its requests and an unconfigured one's `docker \
                 run/create` are not judged (pulls through the pull gate still are)"
            );
            return false;
        }
    };
    let listener = listener.set_nonblocking(true).and_then(|()| {
        // Registered with the servers' runtime, which then drives it.
        let _on_the_servers_runtime = runtime.enter();
        tokio::net::UnixListener::from_std(listener)
    });
    match listener {
        Ok(listener) => {
            runtime.spawn(authz::serve(listener, rules.clone(), decisions));
            info!(
                "image access: Docker authorization plugin `{}` on {} (start dockerd with \
                 --authorization-plugin={})",
                authz::PLUGIN_NAME,
                path.display(),
                authz::PLUGIN_NAME
            );
            true
        }
        Err(err) => {
            error!(
                "image access: cannot serve {}: {err}; Docker Hub images are NOT judged",
                path.display()
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
        os::unix::net::UnixStream,
        path::Path,
    };

    use super::*;

    fn free_address() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }

    /// The plugin's answer to `POST path` with `body`, over its socket.
    fn post(socket: &Path, path: &str, body: &str) -> String {
        let mut stream = UnixStream::connect(socket).unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..200 {
            if condition() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("{what}: not within 2 s");
    }

    /// A flood of decisions never blocks a server and never grows memory: what the queue has
    /// no room for is counted.
    #[test]
    fn decisions_beyond_the_queue_are_counted_not_queued() {
        let (servers, mut receiver) = DockerServers::new(PathBuf::from("/nonexistent/ram.sock"));
        let decide = servers.decisions();
        let decision = ImageDecision {
            allowed: false,
            action: "manifests",
            image: "docker.io/someuser/x".into(),
            reason: "community".into(),
            exception: None,
            user: None,
            via: "pull_gate",
        };
        for _ in 0..DECISIONS_QUEUED + 100 {
            decide(decision.clone());
        }
        assert_eq!(servers.decisions_lost(), 100);
        let mut queued = 0;
        while receiver.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, DECISIONS_QUEUED);
        decide(decision);
        assert_eq!(
            servers.decisions_lost(),
            100,
            "room again once the loop caught up"
        );
    }

    /// The test's runtime stands for the daemon's event loop. It is blocked (std sockets,
    /// sleeps) while the servers answer: they run on their own.
    #[tokio::test]
    async fn the_servers_run_on_their_own_and_follow_the_policy() {
        // The plugin socket's directory must be one only root can change (not /tmp).
        let dir = Path::new("/run").join(format!("ram-docker-servers-{}", std::process::id()));
        let socket = dir.join("ram.sock");
        let (mut servers, mut decisions) = DockerServers::new(socket.clone());
        let mut loaded = LoadedPolicy::read(None).unwrap();
        loaded.policy.image_access.enabled = false;
        servers.update(&loaded);
        assert!(!socket.exists(), "image access off: no plugin");
        assert!(servers.running.is_none(), "image access off: no runtime");

        let access = &mut loaded.policy.image_access;
        access.enabled = true;
        access.rules.community = false;
        access.gate = free_address();
        let first_gate = access.gate;
        servers.update(&loaded);
        let pull = serde_json::json!({
            "RequestMethod": "POST",
            "RequestUri": "/v1.41/images/create?fromImage=someuser%2Fx&tag=latest",
        })
        .to_string();
        let answer = post(&socket, "/AuthZPlugin.AuthZReq", &pull);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(
            answer.ends_with(
                r#"{"Allow":false,"Msg":"image access denied: community images not allowed"}"#
            ),
            "{answer}"
        );
        let decision = decisions
            .try_recv()
            .expect("the decision reached the event loop");
        assert_eq!(decision.image, "someuser/x:latest");
        assert_eq!(decision.via, authz::VIA);
        wait_until("the gate listens", || {
            TcpStream::connect(first_gate).is_ok()
        });

        // A new address: the gate moves; a reload that changes nothing keeps it.
        loaded.policy.image_access.gate = free_address();
        let second_gate = loaded.policy.image_access.gate;
        servers.update(&loaded);
        wait_until("the gate moves", || {
            TcpStream::connect(second_gate).is_ok() && TcpStream::connect(first_gate).is_err()
        });
        servers.update(&loaded);
        assert!(TcpStream::connect(second_gate).is_ok());

        // Off: the gate stops; the plugin stays, and allows everything.
        loaded.policy.image_access.enabled = false;
        servers.update(&loaded);
        wait_until("the gate stops", || {
            TcpStream::connect(second_gate).is_err()
        });
        let answer = post(&socket, "/AuthZPlugin.AuthZReq", &pull);
        assert!(answer.ends_with(r#"{"Allow":true,"Msg":""}"#), "{answer}");

        servers.stop();
        assert!(!socket.exists(), "the plugin's socket goes at the stop");
        let _ = fs::remove_dir_all(&dir);
    }
}
