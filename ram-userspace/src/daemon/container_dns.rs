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
        networks::{DOCKER_EMBEDDED_DNS, NetworkError, container_network},
        scope::{container_id, run_step_id},
    },
    kernel::Enforcer,
    policy::to_v6,
    sys,
};

/// One container whose namespace's resolvers are trusted.
#[derive(Debug, Clone)]
struct Trusted {
    container: String,
    cgroup: PathBuf,
    pid: u32,
    netns_inode: u64,
    netns_cookie: u64,
    nameservers: Vec<IpAddr>,
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
}

/// How long after first seeing a container its runtime may still be setting it up (quick
/// passes look again meanwhile); after that, the one-second pass does.
pub(super) const SETUP_WINDOW: Duration = Duration::from_secs(3);

impl ContainerDns {
    /// Brings the trust in line with `enforced` (the cgroups in scope): containers new to it are
    /// read, those gone (or out of scope) lose their trust, and `NETNS_RESOLVERS` is made to
    /// hold exactly what remains. With `enabled` false (no `scope.containers`), nothing is
    /// trusted. `policy_resolvers` are where Docker's embedded DNS forwards from a container's
    /// namespace. Returns whether a container just found is still being set up by its runtime
    /// (worth another look in a moment).
    pub fn follow(
        &mut self,
        enforcer: &mut Enforcer,
        mount: &Path,
        enforced: &[(CgroupDir, String)],
        enabled: bool,
        policy_resolvers: &[IpAddr],
    ) -> bool {
        let containers = if enabled {
            containers_in(enforced)
        } else {
            Vec::new()
        };
        let live: HashSet<u64> = containers.iter().map(|(dir, _)| dir.id).collect();
        for gone in self.trusted.iter().filter(|(id, _)| !live.contains(id)) {
            info!(
                "container {}: DNS in its network namespace (inode {}) no longer trusted",
                short(&gone.1.container),
                gone.1.netns_inode
            );
        }
        self.trusted.retain(|id, _| live.contains(id));
        self.host_network.retain(|id| live.contains(id));
        self.failing.retain(|id, _| live.contains(id));
        self.first_seen.retain(|id, _| live.contains(id));

        let own_netns_inode = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
        let mut retry = false;
        for (dir, container) in &containers {
            if self.trusted.contains_key(&dir.id) || self.host_network.contains(&dir.id) {
                continue;
            }
            match read(mount, dir, container, own_netns_inode) {
                Err(Unreadable::NotYet) => {
                    let since = *self.first_seen.entry(dir.id).or_insert_with(Instant::now);
                    retry |= since.elapsed() < SETUP_WINDOW;
                }
                Ok(Some(trusted)) => {
                    info!(
                        "container {}: DNS trusted in its network namespace (inode {}) with \
                         resolvers {}",
                        short(container),
                        trusted.netns_inode,
                        list(&trusted.nameservers)
                    );
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
                            "container {} ({}): its DNS stays refused: {reason}",
                            short(container),
                            dir.path.display()
                        );
                        self.failing.insert(dir.id, reason);
                    }
                }
            }
        }

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
        if let Err(err) = enforcer.sync_container_resolvers(&wanted) {
            warn!("updating the container networks' resolvers: {err}");
        }
        retry
    }

    /// For `ram status`.
    pub fn status(&self, policy_resolvers: &[IpAddr]) -> Vec<ContainerNetworkStatus> {
        self.trusted
            .values()
            .map(|t| ContainerNetworkStatus {
                container: t.container.clone(),
                cgroup: t.cgroup.display().to_string(),
                pid: t.pid,
                netns_inode: t.netns_inode,
                netns_cookie: t.netns_cookie,
                resolvers: resolvers_of(&t.nameservers, policy_resolvers)
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            })
            .collect()
    }
}

/// The containers among the enforced cgroups (by id: a container id, a BuildKit step id), and
/// the RUN steps below an enforced BuildKit parent.
fn containers_in(enforced: &[(CgroupDir, String)]) -> Vec<(CgroupDir, String)> {
    let mut found = Vec::new();
    for (dir, _) in enforced {
        let name = dir.path.file_name().unwrap_or_default().to_string_lossy();
        let parent = dir
            .path
            .parent()
            .and_then(Path::file_name)
            .unwrap_or_default()
            .to_string_lossy();
        if let Some(id) = container_id(&name) {
            found.push((dir.clone(), id));
        } else if let Some(id) = run_step_id(&parent, &name) {
            found.push((dir.clone(), id.to_owned()));
        } else if name == "buildkit" {
            let Ok(entries) = std::fs::read_dir(&dir.path) else {
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
                    let path = entry.path();
                    found.push((
                        CgroupDir {
                            id: metadata.ino(),
                            path,
                        },
                        step,
                    ));
                }
            }
        }
    }
    found
}

enum Unreadable {
    /// Not set up by its runtime yet: look again soon, say nothing.
    NotYet,
    Failed(String),
}

/// Reads a container's network: `Ok(None)` when it shares the daemon's.
fn read(
    mount: &Path,
    dir: &CgroupDir,
    container: &str,
    own_netns_inode: u64,
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
    Ok(Some(Trusted {
        container: container.to_owned(),
        cgroup: dir.path.clone(),
        pid: network.pid,
        netns_inode,
        netns_cookie,
        nameservers: network.nameservers,
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

fn short(container: &str) -> &str {
    &container[..container.len().min(12)]
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
