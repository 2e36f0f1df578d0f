//! The Docker servers the daemon runs while `[image_access]` is on: the engine's authorization
//! plugin and the Docker Hub pull gate, kept in line with the policy in force. Their decisions
//! come back to the event loop through one channel, for the audit log.

use std::{
    fs,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use log::{error, info, warn};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{loaded::LoadedPolicy, sockets::bind_authz_socket};
use crate::{
    docker::{authz, gate},
    error_chain,
    events::records::ImageDecision,
};

pub struct DockerServers {
    authz_socket: PathBuf,
    /// The image rules the authorization plugin applies (`None`: image access off).
    image_rules: authz::SharedRules,
    /// Whether the plugin's socket is being served.
    authz_serving: bool,
    /// The Docker Hub pull gate, while image access is on, and what it applies.
    gate: Option<gate::Gate>,
    gate_rules: Option<gate::SharedGateRules>,
    decisions: UnboundedSender<ImageDecision>,
}

impl DockerServers {
    /// No server runs until [`Self::update`] finds image access on. The receiver gets every
    /// decision.
    pub fn new(authz_socket: PathBuf) -> (Self, UnboundedReceiver<ImageDecision>) {
        let (decisions, receiver) = unbounded_channel();
        let servers = Self {
            authz_socket,
            image_rules: Default::default(),
            authz_serving: false,
            gate: None,
            gate_rules: None,
            decisions,
        };
        (servers, receiver)
    }

    /// Puts the policy's `[image_access]` in force for the authorization plugin and the gate,
    /// and starts serving the plugin the first time it is enabled.
    pub fn update(&mut self, loaded: &LoadedPolicy) {
        let access = &loaded.policy.image_access;
        let rules = access.enabled.then(|| access.rules.clone());
        if let Ok(mut shared) = self.image_rules.write() {
            *shared = rules;
        }
        self.update_gate(loaded);
        if !access.enabled || self.authz_serving {
            return;
        }
        let path = self.authz_socket.clone();
        match bind_authz_socket(&path) {
            Ok(listener) => {
                let sender = self.decisions.clone();
                authz::serve(listener, self.image_rules.clone(), move |decision| {
                    let _ = sender.send(decision);
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
            Err(err) => error!(
                "image access: {}; Docker Hub images are NOT judged",
                error_chain(&err)
            ),
        }
    }

    /// Starts, re-targets or stops the pull gate as `[image_access]` says.
    fn update_gate(&mut self, loaded: &LoadedPolicy) {
        let access = &loaded.policy.image_access;
        if !access.enabled {
            if self.gate.take().is_some() {
                info!("image access off: the Docker Hub pull gate stopped");
            }
            return;
        }
        let wanted = gate::GateRules {
            rules: access.rules.clone(),
            upstream: access.upstream.clone(),
        };
        if let Some(shared) = &self.gate_rules
            && let Ok(mut rules) = shared.write()
        {
            *rules = wanted.clone();
        }
        let withheld = &loaded.compiled.withheld_for_gate;
        if !withheld.is_empty() {
            info!(
                "image access: Docker Hub only through the pull gate; not allowed directly: {}",
                withheld.join(", ")
            );
        }
        let scope = &loaded.policy.scope;
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
        let sender = self.decisions.clone();
        let started = bound.and_then(|listener| {
            gate::Gate::start(listener, shared.clone(), move |decision| {
                let _ = sender.send(decision);
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

    /// At the daemon's stop: the plugin's socket goes, so that dockerd says the plugin is
    /// missing (and refuses what it would have asked about) rather than failing to connect to a
    /// stale socket.
    pub fn stop(&mut self) {
        if self.authz_serving {
            let _ = fs::remove_file(&self.authz_socket);
        }
        drop(self.gate.take());
    }
}
