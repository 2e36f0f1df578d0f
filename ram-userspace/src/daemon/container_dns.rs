//! DNS of enforced containers: each container's network namespace is trusted with the resolvers
//! its runtime gave it (`NETNS_RESOLVERS`), from when the daemon first finds the container until
//! the container goes. A container whose network cannot be read stays untrusted (its lookups
//! are refused): counted, logged once by name, retried on every pass.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use log::{info, warn};
use ram_common::NetnsResolverKey;

use super::control::ContainerNetworkStatus;
use crate::{
    cgroups::{
        CgroupDir,
        containers::ContainerInfos,
        networks::{
            Capabilities, DOCKER_EMBEDDED_DNS, NetworkError, capabilities, container_network,
        },
        scope::{Scoped, run_step_id, short_id},
    },
    compile::CompiledPolicy,
    events::records::text,
    kernel::Enforcer,
    policy::{
        resolv::{self, RESOLV_CONF},
        to_v6,
    },
    sys,
};

/// systemd-resolved's list of upstream servers (its stub at 127.0.0.53 is in /etc/resolv.conf);
/// Docker copies these into containers when the host uses the stub.
const SYSTEMD_RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

/// One container whose namespace's resolvers are trusted.
#[derive(Debug, Clone)]
struct Trusted {
    cgroup_id: u64,
    container: String,
    cgroup: PathBuf,
    pid: u32,
    netns_inode: u64,
    netns_cookie: u64,
    /// Its nameservers that are trusted, and those that are not (not the host's).
    nameservers: Vec<IpAddr>,
    ignored: Vec<IpAddr>,
    /// Its first process's capabilities; `None` until it runs the container's command (then
    /// checked: one with CAP_NET_ADMIN loses the trust).
    capabilities: Option<Capabilities>,
}

#[derive(Default)]
pub struct ContainerDns {
    /// By the container cgroup's id.
    trusted: BTreeMap<u64, Trusted>,
    /// Containers on the daemon's own network (`--network host`): the policy's resolvers
    /// already apply there.
    host_network: HashSet<u64>,
    /// Containers whose network could not be read yet, with the reason (logged once each).
    failing: HashMap<u64, String>,
    /// When each container not yet set up by its runtime was first seen.
    first_seen: HashMap<u64, Instant>,
    /// Containers whose network could not be read, each counted once.
    pub unreadable: u64,
    /// The last failure to update the map, logged once until it changes.
    sync_error: Option<String>,
    /// What runtimes say about containers (their names, for log lines and `ram status`).
    infos: ContainerInfos,
    warned_net_raw: bool,
}

/// How long after first seeing a container its runtime may still be setting it up (quick
/// passes look again meanwhile); after that, the one-second pass does.
pub(super) const SETUP_WINDOW: Duration = Duration::from_secs(3);

impl ContainerDns {
    /// Brings the trust in line with `enforced` (the cgroups in scope): containers new to it are
    /// read, those gone (or out of scope) lose their trust, and `NETNS_RESOLVERS` is made to
    /// hold exactly what remains. With `enabled` false (no `scope.containers`), nothing is
    /// trusted. A `complete` false (the cgroup walk stopped early) takes no trust away. Returns
    /// whether a container just found is still being set up by its runtime (worth another
    /// look in a moment).
    pub fn follow(
        &mut self,
        enforcer: &mut Enforcer,
        mount: &Path,
        enforced: &[Scoped],
        complete: bool,
        policy: &CompiledPolicy,
    ) -> bool {
        let enabled = policy.container_dns;
        // Where Docker's embedded DNS forwards from a container's namespace.
        let policy_resolvers = &policy.resolvers;
        let containers = if enabled {
            containers_in(enforced)
        } else {
            Vec::new()
        };
        if complete || !enabled {
            self.forget_gone(&containers);
        }

        let mut own_netns_inode: Option<u64> = None;
        let mut allowed: Option<Vec<IpAddr>> = None;
        let mut retry = false;
        for (dir, container) in &containers {
            if self.trusted.contains_key(&dir.id) || self.host_network.contains(&dir.id) {
                continue;
            }
            let allowed = allowed.get_or_insert_with(|| {
                allowed_resolvers(policy_resolvers, &policy.container_resolvers)
            });
            let own_netns_inode = *own_netns_inode.get_or_insert_with(|| {
                std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
            });
            let result = read(mount, dir, container, own_netns_inode, allowed);
            let label = match &result {
                Err(Unreadable::NotYet) => String::new(),
                _ => self.label(container),
            };
            match result {
                Err(Unreadable::NotYet) => {
                    let since = *self.first_seen.entry(dir.id).or_insert_with(Instant::now);
                    retry |= since.elapsed() < SETUP_WINDOW;
                }
                Ok(Some(trusted)) => {
                    info!(
                        "container {label}: DNS trusted in its network namespace (inode {}) \
                         with resolvers {}{}",
                        trusted.netns_inode,
                        list(&trusted.nameservers),
                        if trusted.ignored.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " (not {}: not among the host's resolvers)",
                                list(&trusted.ignored)
                            )
                        }
                    );
                    if trusted.capabilities.is_some_and(|c| c.net_raw) && !self.warned_net_raw {
                        // Once: Docker gives it to every container by default.
                        self.warned_net_raw = true;
                        warn!(
                            "container {label} has CAP_NET_RAW (so may others: `ram status` \
                             marks them): a packet socket can forge answers on loopback that \
                             the kernel would learn from; run enforced containers with \
                             `--cap-drop NET_RAW` (see docs/limits.md)"
                        );
                    }
                    self.failing.remove(&dir.id);
                    self.trusted.insert(dir.id, trusted);
                }
                Ok(None) => {
                    self.failing.remove(&dir.id);
                    self.host_network.insert(dir.id);
                }
                Err(Unreadable::Failed(reason)) => {
                    if !self.failing.contains_key(&dir.id) {
                        self.unreadable += 1;
                        warn!(
                            "container {label} ({}): its DNS stays refused: {reason}",
                            dir.path.display()
                        );
                        self.failing.insert(dir.id, reason);
                    }
                }
            }
        }

        retry |= self.check_capabilities();

        let wanted: HashSet<NetnsResolverKey> = self
            .trusted
            .values()
            .flat_map(|t| {
                resolvers_of(&t.nameservers, policy_resolvers)
                    .into_iter()
                    .map(|addr| NetnsResolverKey {
                        netns_cookie: t.netns_cookie,
                        addr: to_v6(addr).octets(),
                    })
            })
            .collect();
        match enforcer.sync_container_resolvers(&wanted) {
            Ok(_) => self.sync_error = None,
            Err(err) => {
                let text = err.to_string();
                if self.sync_error.as_deref() != Some(&text) {
                    warn!("updating the container networks' resolvers: {text}");
                }
                self.sync_error = Some(text);
            }
        }
        retry
    }

    /// Reads the capabilities of trusted containers whose command had not started when they
    /// were read; one that may administer its network loses the trust. Returns whether one
    /// has still not started.
    fn check_capabilities(&mut self) -> bool {
        let mut pending = false;
        let unchecked: Vec<(u64, u32, String, PathBuf)> = self
            .trusted
            .iter()
            .filter(|(_, t)| t.capabilities.is_none())
            .map(|(id, t)| (*id, t.pid, t.container.clone(), t.cgroup.clone()))
            .collect();
        for (id, pid, container, cgroup) in unchecked {
            match capabilities(Path::new("/proc"), pid) {
                None => {
                    let since = *self.first_seen.entry(id).or_insert_with(Instant::now);
                    pending |= since.elapsed() < SETUP_WINDOW;
                }
                Some(caps) if caps.net_admin => {
                    self.trusted.remove(&id);
                    self.unreadable += 1;
                    let label = self.label(&container);
                    warn!(
                        "container {label} ({}): its DNS is no longer trusted: {NET_ADMIN}",
                        cgroup.display()
                    );
                    self.failing.insert(id, NET_ADMIN.into());
                }
                Some(caps) => {
                    if let Some(trusted) = self.trusted.get_mut(&id) {
                        trusted.capabilities = Some(caps);
                    }
                }
            }
        }
        pending
    }

    /// `web (3f2a…)`: the container's name where its runtime says, and its id.
    fn label(&mut self, container: &str) -> String {
        match self.infos.lookup(container).name {
            Some(name) => format!("{} ({})", text(&name), text(short_id(container))),
            None => text(short_id(container)),
        }
    }

    /// Takes the trust of containers no longer in `live` away.
    fn forget_gone(&mut self, live: &[(CgroupDir, String)]) {
        let live: HashSet<u64> = live.iter().map(|(dir, _)| dir.id).collect();
        for gone in self
            .trusted
            .values()
            .filter(|t| !live.contains(&t.cgroup_id))
        {
            info!(
                "container {}: DNS in its network namespace (inode {}) no longer trusted",
                short_id(&gone.container),
                gone.netns_inode
            );
        }
        self.trusted.retain(|id, _| live.contains(id));
        self.host_network.retain(|id| live.contains(id));
        self.failing.retain(|id, _| live.contains(id));
        self.first_seen.retain(|id, _| live.contains(id));
    }

    /// For `ram status`.
    pub fn status(&mut self, policy_resolvers: &[IpAddr]) -> Vec<ContainerNetworkStatus> {
        let trusted: Vec<Trusted> = self.trusted.values().cloned().collect();
        trusted
            .into_iter()
            .map(|t| ContainerNetworkStatus {
                name: self.infos.lookup(&t.container).name,
                container: t.container.clone(),
                cgroup: t.cgroup.display().to_string(),
                pid: t.pid,
                netns_inode: t.netns_inode,
                netns_cookie: t.netns_cookie,
                resolvers: resolvers_of(&t.nameservers, policy_resolvers)
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                net_raw: t.capabilities.is_none_or(|c| c.net_raw),
            })
            .collect()
    }
}

/// The containers among the enforced cgroups (a container's id, a BuildKit step's), and the
/// RUN steps below an enforced BuildKit parent.
fn containers_in(enforced: &[Scoped]) -> Vec<(CgroupDir, String)> {
    let mut found = Vec::new();
    for scoped in enforced {
        if let Some(id) = &scoped.container {
            found.push((scoped.dir.clone(), id.clone()));
            continue;
        }
        if !scoped.dir.path.ends_with("buildkit") {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&scoped.dir.path) else {
            continue;
        };
        for entry in entries.flatten() {
            let step = entry.file_name().to_string_lossy().into_owned();
            if run_step_id("buildkit", &step).is_none() {
                continue;
            }
            if let Ok(metadata) = entry.metadata()
                && metadata.is_dir()
            {
                let dir = CgroupDir {
                    id: metadata.ino(),
                    path: entry.path(),
                };
                found.push((dir, step));
            }
        }
    }
    found
}

/// The resolvers a container's resolv.conf may name and be trusted for: the host's (the
/// policy's, /etc/resolv.conf's and systemd-resolved's upstreams, which runtimes copy into
/// containers), Docker's embedded DNS, and `dns.container_resolvers`. Loopback ones other
/// than Docker's are the container's own. A container's root can rewrite its resolv.conf before the daemon reads it; it can then
/// only pick among these.
fn allowed_resolvers(policy_resolvers: &[IpAddr], container_resolvers: &[IpAddr]) -> Vec<IpAddr> {
    let mut allowed = vec![DOCKER_EMBEDDED_DNS];
    for resolver in container_resolvers {
        if !allowed.contains(resolver) {
            allowed.push(*resolver);
        }
    }
    let host = [RESOLV_CONF, SYSTEMD_RESOLVED_UPSTREAMS]
        .into_iter()
        .flat_map(|path| resolv::nameservers_from(Path::new(path)).unwrap_or_default());
    for resolver in policy_resolvers.iter().copied().chain(host) {
        // A link-local address names another host on the container's own link.
        let link_local = match resolver {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        if !resolver.is_loopback() && !link_local && !allowed.contains(&resolver) {
            allowed.push(resolver);
        }
    }
    allowed
}

const NET_ADMIN: &str =
    "it has CAP_NET_ADMIN, with which it could send its DNS to a server of its own";

enum Unreadable {
    /// Not set up by its runtime yet: look again soon, say nothing.
    NotYet,
    Failed(String),
}

/// Reads a container's network: `Ok(None)` when it shares the daemon's. Only its nameservers
/// among `allowed` are trusted, and none if it may administer its network (CAP_NET_ADMIN: it
/// could redirect `127.0.0.11:53`, or any resolver's address, to a server of its own).
fn read(
    mount: &Path,
    dir: &CgroupDir,
    container: &str,
    own_netns_inode: u64,
    allowed: &[IpAddr],
) -> Result<Option<Trusted>, Unreadable> {
    let network = container_network(mount, &dir.path, Path::new("/proc"), own_netns_inode)
        .map_err(|err| match err {
            NetworkError::NotYet => Unreadable::NotYet,
            err => Unreadable::Failed(crate::error_chain(&err)),
        })?;
    let Some(network) = network else {
        return Ok(None);
    };
    let ns = PathBuf::from(format!("/proc/{}/ns/net", network.pid));
    let (netns_inode, netns_cookie) = sys::netns_cookie_of(&ns).map_err(|err| {
        Unreadable::Failed(format!(
            "cannot ask its network namespace for its cookie (Linux 5.14+): {err}"
        ))
    })?;
    if netns_inode != network.netns_inode {
        // The process ended and its pid was reused, or it moved: read again.
        return Err(Unreadable::NotYet);
    }
    let (nameservers, ignored): (Vec<IpAddr>, Vec<IpAddr>) = network
        .nameservers
        .iter()
        .partition(|addr| allowed.contains(addr));
    if network.capabilities.is_some_and(|caps| caps.net_admin) {
        return Err(Unreadable::Failed(NET_ADMIN.into()));
    }
    if nameservers.is_empty() {
        return Err(Unreadable::Failed(format!(
            "none of its nameservers ({}) is one of the host's resolvers or Docker's embedded DNS",
            list(&ignored)
        )));
    }
    Ok(Some(Trusted {
        cgroup_id: dir.id,
        container: container.to_owned(),
        cgroup: dir.path.clone(),
        pid: network.pid,
        netns_inode,
        netns_cookie,
        nameservers,
        ignored,
        capabilities: network.capabilities,
    }))
}

/// A container's trusted resolvers: its nameservers, and with Docker's embedded DNS also the
/// policy's non-loopback resolvers, to which dockerd forwards from the container's namespace
/// (a loopback one there would be the container's own).
fn resolvers_of(nameservers: &[IpAddr], policy_resolvers: &[IpAddr]) -> Vec<IpAddr> {
    let mut resolvers = nameservers.to_vec();
    if nameservers.contains(&DOCKER_EMBEDDED_DNS) {
        for resolver in policy_resolvers {
            if !resolver.is_loopback() && !resolvers.contains(resolver) {
                resolvers.push(*resolver);
            }
        }
    }
    resolvers
}

fn list(addrs: &[IpAddr]) -> String {
    let texts: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    texts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_dns_adds_the_policy_resolvers_it_forwards_to() {
        let host: IpAddr = "203.0.113.53".parse().unwrap();
        let local: IpAddr = "127.0.0.53".parse().unwrap();
        assert_eq!(
            resolvers_of(&[DOCKER_EMBEDDED_DNS], &[host, local]),
            vec![DOCKER_EMBEDDED_DNS, host]
        );
        let bridge: IpAddr = "198.51.100.53".parse().unwrap();
        assert_eq!(resolvers_of(&[bridge], &[host]), vec![bridge]);
    }
}
