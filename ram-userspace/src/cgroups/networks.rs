//! Container networks: the network namespace a container runtime made for a container, and the
//! resolvers it gave the container (its `/etc/resolv.conf`). The daemon trusts those resolvers
//! for DNS in that namespace only (`NETNS_RESOLVERS`).
//!
//! Which namespace is the runtime's: the one of the container's first process, the one the
//! runtime started (its parent is outside the container's cgroup: a shim). A process the
//! container starts later and that makes a namespace of its own (`unshare -n`) is not it; the
//! daemon reads a container's namespace once, when it first finds the container, and keeps it
//! for the container's life.

use std::{
    io::{self, Read as _},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::procs::{cgroup_of, parent_and_start};
use crate::{policy::resolv, sys};

/// A resolv.conf longer than this is not a runtime's (they write a few lines): refused.
const RESOLV_CONF_MAX: u64 = 64 * 1024;

/// Docker's embedded DNS server, in every container on a user-defined network. dockerd
/// forwards what it does not answer itself to the host's resolvers, from the container's
/// namespace.
pub const DOCKER_EMBEDDED_DNS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 11));

/// What the runtime set up for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNetwork {
    /// The container's first process.
    pub pid: u32,
    /// The namespace's inode number (as `ip netns identify` and `lsns` show it).
    pub netns_inode: u64,
    /// `nameserver` lines of the container's /etc/resolv.conf, in order, without repeats, at
    /// most [`MAXNS`] (as the C library reads them).
    pub nameservers: Vec<IpAddr>,
    /// Its first process's capabilities, if it already runs the container's command.
    pub capabilities: Option<Capabilities>,
}

/// What a container's first process may do to the network (its bounding set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// CAP_NET_RAW: raw and packet sockets.
    pub net_raw: bool,
    /// CAP_NET_ADMIN: routes, addresses, netfilter of its namespace.
    pub net_admin: bool,
}

/// The capabilities of process `pid`, once it runs the container's command: `None` while it
/// is still the runtime's (runc's init keeps every capability until it starts the command).
pub fn capabilities(proc_root: &Path, pid: u32) -> Option<Capabilities> {
    let process = proc_root.join(pid.to_string());
    let comm = std::fs::read_to_string(process.join("comm")).unwrap_or_default();
    let exe = std::fs::read_link(process.join("exe")).unwrap_or_default();
    let exe = exe.file_name().unwrap_or_default().to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    // runc names its stages `runc:[0:PARENT]` .. `runc:[2:INIT]`, and may run from a copy of
    // itself (`memfd:runc_cloned…`).
    if comm.starts_with("runc:[") || exe.contains("runc") || RUNTIMES.contains(&exe) {
        return None;
    }
    Some(Capabilities {
        net_raw: has_capability(&process, CAP_NET_RAW),
        net_admin: has_capability(&process, CAP_NET_ADMIN),
    })
}

/// The C library uses the first three nameservers (resolv.h's MAXNS); the rest are never asked.
pub const MAXNS: usize = 3;
/// OCI runtimes, whose process is a container's first until it runs the container's command.
const RUNTIMES: [&str; 4] = ["runc", "crun", "runsc", "youki"];

/// Bits in /proc/PID/status's capability sets.
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No process yet (or no more), or the runtime is still setting it up: its first process
    /// still has the host's root. Worth another look in a moment; not a failure.
    #[error("its runtime has not set it up yet (or it has ended)")]
    NotYet,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("its /etc/resolv.conf names no nameserver")]
    NoNameservers,
}

/// The network of the container whose cgroup is `cgroup` (an absolute path under `mount`),
/// read through `proc_root`. `Ok(None)`: the container shares `own_netns_inode`, the daemon's
/// namespace (`--network host`), where the policy's resolvers already apply.
///
/// Only once the runtime has moved the container's first process into the container's root
/// (runc does so before it starts the container's command): before that, its root and its
/// namespaces may still be the host's, and so would be the resolv.conf read through it. Its
/// capabilities are the container's only once the command runs: see [`Capabilities`].
pub fn container_network(
    mount: &Path,
    cgroup: &Path,
    proc_root: &Path,
    own_netns_inode: u64,
) -> Result<Option<ContainerNetwork>, NetworkError> {
    let pid = first_process(mount, cgroup, proc_root)?.ok_or(NetworkError::NotYet)?;
    let process = proc_root.join(pid.to_string());
    let own_root = std::fs::metadata(proc_root.join("self/root")).ok();
    let root = std::fs::metadata(process.join("root")).map_err(|_| NetworkError::NotYet)?;
    if own_root.is_some_and(|own| (own.dev(), own.ino()) == (root.dev(), root.ino())) {
        return Err(NetworkError::NotYet);
    }
    let ns = process.join("ns/net");
    let netns_inode = std::fs::metadata(&ns)
        .map_err(|source| NetworkError::Read { path: ns, source })?
        .ino();
    if netns_inode == own_netns_inode {
        return Ok(None);
    }
    let root = process.join("root");
    let nameservers = read_nameservers(&root).map_err(|source| NetworkError::Read {
        path: root.join("etc/resolv.conf"),
        source,
    })?;
    if nameservers.is_empty() {
        return Err(NetworkError::NoNameservers);
    }
    Ok(Some(ContainerNetwork {
        pid,
        netns_inode,
        nameservers,
        capabilities: capabilities(proc_root, pid),
    }))
}

/// `/etc/resolv.conf` of the root `root`, read inside it (a container's symlinks cannot lead
/// into the host's files) and bounded.
fn read_nameservers(root: &Path) -> io::Result<Vec<IpAddr>> {
    let file = sys::open_in_root(root, Path::new("etc/resolv.conf"))?;
    let mut text = String::new();
    file.take(RESOLV_CONF_MAX + 1).read_to_string(&mut text)?;
    if text.len() as u64 > RESOLV_CONF_MAX {
        return Err(io::Error::other(format!(
            "longer than {RESOLV_CONF_MAX} bytes"
        )));
    }
    let mut nameservers: Vec<IpAddr> = Vec::new();
    for addr in resolv::nameservers(&text) {
        if !nameservers.contains(&addr) && nameservers.len() < MAXNS {
            nameservers.push(addr);
        }
    }
    Ok(nameservers)
}

/// Whether the process's bounding set (`CapBnd`) holds `capability`; true when unreadable.
fn has_capability(process: &Path, capability: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(process.join("status")) else {
        return true;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << capability) != 0)
}

/// The container's first process: of those in its cgroup (its own children included) whose
/// parent is not, the one that started first. Later processes are the container's own
/// children, or `exec`s and orphans the shim adopted, all started after it.
fn first_process(
    mount: &Path,
    cgroup: &Path,
    proc_root: &Path,
) -> Result<Option<u32>, NetworkError> {
    let relative = Path::new("/").join(cgroup.strip_prefix(mount).unwrap_or(cgroup));
    let mut best: Option<(u64, u32)> = None;
    for dir in cgroup_and_children(cgroup) {
        let procs = dir.join("cgroup.procs");
        let text = match std::fs::read_to_string(&procs) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(NetworkError::Read {
                    path: procs,
                    source,
                });
            }
        };
        for pid in text
            .lines()
            .filter_map(|line| line.trim().parse::<u32>().ok())
        {
            let Some((parent, started)) = parent_and_start(proc_root, pid) else {
                continue; // gone meanwhile
            };
            let parent_inside = cgroup_of(proc_root, parent)
                .is_some_and(|path| Path::new(&path).starts_with(&relative));
            if parent_inside {
                continue;
            }
            if best.is_none_or(|(time, _)| started < time) {
                best = Some((started, pid));
            }
        }
    }
    Ok(best.map(|(_, pid)| pid))
}

/// `cgroup` and its direct children (Podman puts a container's processes in a `container`
/// child; runtimes nest no deeper).
fn cgroup_and_children(cgroup: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![cgroup.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(cgroup) {
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake /proc and cgroup tree: the container's init (parent: the shim, outside), its
    /// child, and an orphan the shim adopted later.
    #[test]
    fn first_process_is_the_earliest_with_a_parent_outside() {
        let base = std::env::temp_dir().join(format!("ram-networks-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (mount, proc_root) = (base.join("cg"), base.join("proc"));
        let cgroup = mount.join("docker/abc");
        fs::create_dir_all(&cgroup).unwrap();
        fs::write(cgroup.join("cgroup.procs"), "30\n20\n10\n").unwrap();
        let process = |pid: u32, parent: u32, start: u64, cgroup: &str| {
            let dir = proc_root.join(pid.to_string());
            fs::create_dir_all(&dir).unwrap();
            let stat =
                format!("{pid} (p) S {parent} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0");
            fs::write(dir.join("stat"), stat).unwrap();
            fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
        };
        process(5, 1, 50, "/system.slice/containerd.service"); // the shim
        process(10, 5, 100, "/docker/abc"); // init
        process(20, 10, 110, "/docker/abc"); // its child
        process(30, 5, 300, "/docker/abc"); // an orphan, adopted by the shim
        assert_eq!(
            first_process(&mount, &cgroup, &proc_root).unwrap(),
            Some(10)
        );
        fs::write(cgroup.join("cgroup.procs"), "").unwrap();
        assert_eq!(first_process(&mount, &cgroup, &proc_root).unwrap(), None);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn resolv_conf_is_read_inside_the_root() {
        let base = std::env::temp_dir().join(format!("ram-resolv-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let root = base.join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(base.join("outside"), "nameserver 192.0.2.99\n").unwrap();
        // An absolute symlink resolves inside the root, where nothing is.
        std::os::unix::fs::symlink(base.join("outside"), root.join("etc/resolv.conf")).unwrap();
        assert!(read_nameservers(&root).is_err());
        fs::remove_file(root.join("etc/resolv.conf")).unwrap();
        fs::write(root.join("etc/resolv.conf"), "nameserver 127.0.0.11\n").unwrap();
        assert_eq!(read_nameservers(&root).unwrap(), vec![DOCKER_EMBEDDED_DNS]);
        // At most three, without repeats, as the C library reads them.
        let many: String = (1..=9)
            .map(|i| format!("nameserver 192.0.2.{i}\nnameserver 192.0.2.1\n"))
            .collect();
        fs::write(root.join("etc/resolv.conf"), many).unwrap();
        let expected: Vec<IpAddr> = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(read_nameservers(&root).unwrap(), expected);
        // A device or a FIFO is never opened for reading.
        fs::remove_file(root.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink("/dev/null", root.join("etc/resolv.conf")).unwrap();
        assert!(read_nameservers(&root).is_err());
        fs::remove_dir_all(&base).unwrap();
    }
}
