//! The daemon's side of the control socket: one bounded request, one answer, from what the
//! daemon holds and the kernel's maps.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ram_common::{
    Counter,
    maps::{ALLOWED_CIDRS_MAX, ALLOWED_NAMES_MAX, RESOLVERS_MAX},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{
    CgroupStatus, LearnedEntry, MAX_REQUEST, MapFill, PolicyStatus, Request, Response, Status,
};
use crate::{
    compile::check::check_host, daemon::Daemon, docker::image_access::check_image,
    events::records::display_addr, kernel::EnforceError, sys,
};

impl Daemon {
    /// Answers one control-socket request. Bounded in size and time, so a stuck client cannot
    /// hold up enforcement bookkeeping for long.
    pub(in crate::daemon) async fn answer(&mut self, stream: UnixStream) {
        let (reader, mut writer) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(reader, MAX_REQUEST as u64));
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
            // The daemon answers only once its programs are attached and a policy is in force.
            Request::Ready => Response::Ready { enforcing: true },
            Request::Learned => match self.learned() {
                Ok(entries) => Response::Learned { entries },
                Err(err) => Response::Error {
                    message: err.to_string(),
                },
            },
            Request::Check { host } => {
                Response::Check(check_host(&self.enforcement.policy.policy, &host))
            }
            Request::CheckImage { image } => Response::CheckImage(check_image(
                &self.enforcement.policy.policy.image_access,
                &image,
            )),
        }
    }

    fn status(&mut self) -> Status {
        let resolvers = self.enforcement.policy.compiled.resolvers.clone();
        let container_networks = self.enforcement.container_dns.status(&resolvers);
        let enforcement = &self.enforcement;
        let counters = enforcement.enforcer.counters().unwrap_or_default();
        let learned = enforcement
            .enforcer
            .learned_entries()
            .map(|e| e.len())
            .unwrap_or(0);
        let loaded = &enforcement.policy;
        let compiled = &loaded.compiled;
        Status {
            enforcing: true,
            pid: std::process::id(),
            started: self.started.clone(),
            pin_dir: self.options.pin_dir.clone(),
            audit_log: self.auditor.describe_sink(),
            cgroups: enforcement
                .enforcer
                .cgroups()
                .into_iter()
                .map(|(path, id, present)| CgroupStatus {
                    reason: enforcement.reason(id),
                    path: path.display().to_string(),
                    id,
                    present,
                })
                .collect(),
            policy: PolicyStatus {
                source: loaded.source.to_string(),
                sha256: loaded.sha256.clone(),
                loaded: loaded.loaded.clone(),
                hostnames: compiled.names.len(),
                cidrs: compiled.cidrs.len(),
                resolvers: compiled.resolvers.iter().map(ToString::to_string).collect(),
                allowed_audit: loaded.policy.audit.allowed.as_str().into(),
                tls: loaded.policy.registry_access.tls.as_str().into(),
                reloads: enforcement.reloads,
                rejected: enforcement.rejected.clone(),
            },
            counters: Counter::ALL
                .iter()
                .map(|c| (c.as_str().to_string(), counters[*c as usize]))
                .collect(),
            maps: vec![
                fill(
                    "learned",
                    learned,
                    enforcement.enforcer.learned_capacity() as usize,
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
            container_networks,
            container_networks_unreadable: enforcement.container_dns.unreadable,
            socket_families_refused: crate::kernel::family_gate_loaded(),
            warnings: self.warnings(),
        }
    }

    /// Enforced engines not pointed at the pull gate, while image access is on.
    fn warnings(&self) -> Vec<String> {
        let image_access = &self.enforcement.policy.policy.image_access;
        if !image_access.enabled {
            return Vec::new();
        }
        let enforced: Vec<PathBuf> = self
            .enforcement
            .enforcer
            .cgroups()
            .into_iter()
            .filter(|(_, _, present)| *present)
            .map(|(path, _, _)| path)
            .collect();
        crate::docker::engine_check::gate_warnings(
            Path::new("/proc"),
            &self.options.mount,
            &enforced,
            image_access.gate,
        )
    }

    fn learned(&mut self) -> Result<Vec<LearnedEntry>, EnforceError> {
        let now = sys::boottime_ns();
        let learned = self.enforcement.enforcer.learned_entries()?;
        let mut entries: Vec<LearnedEntry> = learned
            .into_iter()
            .filter(|(_, value)| value.expires_ns > now)
            .map(|(key, value)| {
                let addr = display_addr(key.addr);
                LearnedEntry {
                    addr: addr.to_string(),
                    cgroup: self.auditor.cgroup_name(key.cgroup_id),
                    cgroup_id: key.cgroup_id,
                    hostname: self.auditor.hostname(&addr),
                    rule: self.enforcement.rules.text(value.rule_id),
                    expires: self.auditor.wall_time(value.expires_ns),
                    expires_in_s: (value.expires_ns - now) / 1_000_000_000,
                    ports: value.ports.iter().copied().filter(|p| *p != 0).collect(),
                    names: self.enforcement.enforcer.taught_names(
                        &key,
                        self.auditor.taught_by(&addr),
                        now,
                    ),
                }
            })
            .collect();
        entries.sort_by(|a, b| (&a.hostname, &a.addr).cmp(&(&b.hostname, &b.addr)));
        Ok(entries)
    }
}

fn fill(map: &str, used: usize, capacity: usize) -> MapFill {
    MapFill {
        map: map.into(),
        used,
        capacity,
    }
}
