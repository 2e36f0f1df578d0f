//! What ram enforces: finding the cgroups of the Docker Engine, containerd and their containers
//! (the policy's `[scope]`), on systemd and cgroupfs layouts. Pure functions over a cgroup2
//! mount and a /proc, so that tests can hand them a fake tree.

use super::{
    CgroupDir,
    procs::{cgroup_of, in_container, is_root_binary, processes},
    shims,
};
use crate::policy::Scope;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// The engine processes and systemd units `scope.docker` looks for: the Docker Engine,
/// containerd, Podman's API service, a standalone BuildKit daemon and CRI-O (Kubernetes nodes).
const ENGINE_UNITS: [&str; 5] = [
    "docker.service",
    "containerd.service",
    "podman.service",
    "buildkit.service",
    "crio.service",
];
const ENGINE_PROCESSES: [&str; 5] = ["dockerd", "containerd", "podman", "buildkitd", "crio"];

/// Prefixes runtimes put before a container id in a cgroup name (`docker-<id>.scope`).
const CONTAINER_PREFIXES: [&str; 5] = ["docker-", "cri-containerd-", "crio-", "libpod-", ""];

/// A container cgroup is at most this deep below the mount (kubepods nest three or four deep);
/// with the directory bound, a walk stays cheap on any host.
const MAX_DEPTH: usize = 6;
const MAX_DIRS: usize = 20_000;

/// A cgroup to enforce (an absolute path under the mount) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub reason: String,
    /// The container (or BuildKit RUN step) whose cgroup it is: its id.
    pub container: Option<String>,
}

/// A cgroup in scope now: found, and resolved to its current id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scoped {
    pub dir: CgroupDir,
    pub reason: String,
    /// As in [`Found`].
    pub container: Option<String>,
}

/// The engines' cgroups (the Docker Engine, containerd, Podman's API service, BuildKit's
/// daemon): their systemd units' cgroups where they exist (`system.slice/docker.service`), and
/// the cgroups of running `dockerd`/`containerd`/`podman system service`/`buildkitd` processes
/// (cgroupfs layouts, engines started by hand). The cgroup2 root is never returned: an engine
/// running there is reported in `skipped`.
pub fn engine_cgroups(mount: &Path, proc_root: &Path) -> (Vec<Found>, Vec<String>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for unit in ENGINE_UNITS {
        let path = mount.join("system.slice").join(unit);
        if path.is_dir() {
            found.push(Found {
                path,
                reason: format!("scope.docker: systemd unit {unit}"),
                container: None,
            });
        }
    }
    let mut by_path: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (pid, comm) in engine_processes(proc_root) {
        let Some(relative) = cgroup_of(proc_root, pid) else {
            continue;
        };
        if relative == "/" {
            skipped.push(format!(
                "{comm} (pid {pid}) runs in the cgroup2 root; ram enforces the whole host only \
                 with scope.whole_host = true, so {comm} is not enforced"
            ));
            continue;
        }
        let path = mount.join(relative.trim_start_matches('/'));
        by_path
            .entry(path)
            .or_insert_with(|| format!("scope.docker: cgroup of {comm} (pid {pid})"));
    }
    // A unit's cgroup found above is not listed twice.
    by_path.retain(|path, _| !found.iter().any(|f| f.path == *path));
    found.extend(by_path.into_iter().map(|(path, reason)| Found {
        path,
        reason,
        container: None,
    }));
    (found, skipped)
}

/// The running engines, (pid, comm): root `dockerd`, `containerd`, `podman system service` and
/// `buildkitd` processes outside containers; dockerd before containerd, then by pid, whatever
/// order /proc lists them in (a cgroup holding both is named after dockerd).
pub fn engine_processes(proc_root: &Path) -> Vec<(u32, String)> {
    let mut engines: Vec<(usize, u32, String)> = processes(proc_root)
        .into_iter()
        .filter_map(|(pid, comm)| {
            let rank = ENGINE_PROCESSES.iter().position(|e| *e == comm)?;
            // `podman` is also every command a user types: only its API service is an engine.
            // A container's root may name its processes like engines: those are not.
            let engine = is_root_binary(proc_root, pid, &comm)
                && (comm != "podman" || is_podman_service(proc_root, pid))
                && !in_container(proc_root, pid, |part| container_id(part).is_some());
            engine.then_some((rank, pid, comm))
        })
        .collect();
    engines.sort();
    engines
        .into_iter()
        .map(|(_, pid, comm)| (pid, comm))
        .collect()
}

/// What a walk for containers found, and whether it saw the whole tree.
#[derive(Debug, Default)]
pub struct Containers {
    pub found: Vec<Found>,
    /// False when the walk stopped early (too many directories) or could not read one: then
    /// a container missing from `found` may still exist, and must not be released.
    pub complete: bool,
}

/// Every container's cgroup under `mount`: directories named by a 64-hex-digit container id,
/// bare or with a runtime's prefix and `.scope` (Docker with the systemd or cgroupfs driver,
/// containerd/CRI, CRI-O, Podman). Only root-owned directories count: cgroups delegated to a
/// user (rootless engines, `user@.service`) are theirs to name, so a user cannot steer ram
/// with a directory name; nor is their subtree walked.
pub fn container_cgroups(mount: &Path) -> Containers {
    let mut found = Vec::new();
    let mut complete = true;
    let mut stack = vec![(mount.to_path_buf(), 0usize)];
    let mut visited = 0;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > MAX_DIRS {
            complete = false;
            break;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            complete = false;
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_dir() || metadata.uid() != 0 {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = container_id(&name) {
                // A container's own children (e.g. Podman's `container`) are covered by it.
                found.push(Found {
                    path: entry.path(),
                    reason: format!("scope.containers: container {}", short_id(&id)),
                    container: Some(id),
                });
            } else if is_buildkit_parent(mount, &dir, &name) {
                // Programs on a cgroup run for every cgroup made below it: enforcing the parent
                // covers each RUN step from its first instruction, with no scan in between.
                found.push(Found {
                    path: entry.path(),
                    reason: "scope.containers: BuildKit's RUN steps (every one, from its start)"
                        .into(),
                    container: None,
                });
            } else if let Some(id) = buildkit_step_id(&name) {
                found.push(Found {
                    path: entry.path(),
                    reason: format!("scope.containers: BuildKit RUN step {id}"),
                    container: Some(id.to_owned()),
                });
            } else if depth + 1 < MAX_DEPTH {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Containers { found, complete }
}

/// The container id a cgroup directory's name carries, if any.
pub fn container_id(name: &str) -> Option<String> {
    let name = name.strip_suffix(".scope").unwrap_or(name);
    CONTAINER_PREFIXES.iter().find_map(|prefix| {
        let id = name.strip_prefix(prefix)?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| id.to_ascii_lowercase())
    })
}

/// A container id as log lines show it: its first 12 characters, as `docker ps` does.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The id of a BuildKit RUN step whose cgroup is `name` in directory `parent` (either driver).
pub fn run_step_id<'a>(parent: &str, name: &'a str) -> Option<&'a str> {
    if parent == "buildkit" && is_buildkit_id(name) {
        return Some(name);
    }
    buildkit_step_id(name)
}

/// Whether `name`, in directory `dir`, is where BuildKit makes the cgroups of RUN steps with
/// the cgroupfs driver: dockerd's (`<docker's cgroup parent>/buildkit`, `/docker/buildkit/<id>`)
/// or a standalone buildkitd's (`/buildkit/<id>` at the mount).
fn is_buildkit_parent(mount: &Path, dir: &Path, name: &str) -> bool {
    name == "buildkit" && (dir == mount || dir.file_name().is_some_and(|parent| parent == "docker"))
}

/// The id of a RUN step of dockerd's BuildKit under the systemd driver, whose units are
/// `docker-<id>.scope` like containers', with BuildKit's 25-character ids (base 36).
pub fn buildkit_step_id(name: &str) -> Option<&str> {
    let id = name.strip_prefix("docker-")?.strip_suffix(".scope")?;
    is_buildkit_id(id).then_some(id)
}

/// BuildKit's ids: 25 characters of base 36 (lower-case letters and digits).
fn is_buildkit_id(id: &str) -> bool {
    id.len() == 25
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `podman` process `pid` is `podman system service` (the Docker-compatible API).
fn is_podman_service(proc_root: &Path, pid: u32) -> bool {
    let Ok(cmdline) = fs::read(proc_root.join(pid.to_string()).join("cmdline")) else {
        return false;
    };
    // The command is the first two words that are not options: `podman [--flags] system service`.
    let mut words = cmdline
        .split(|b| *b == 0)
        .skip(1)
        .filter(|arg| !arg.starts_with(b"-"));
    words.next() == Some(b"system".as_slice()) && words.next() == Some(b"service".as_slice())
}

/// The cgroups to enforce now (the command line's, then what the policy's scope finds), and
/// whether the list is complete (a partial container walk must not release containers it did not reach).
pub fn in_scope(mount: &Path, given: &[(CgroupDir, String)], scope: &Scope) -> (Vec<Scoped>, bool) {
    // Command-line cgroups are looked up by path again: a cgroup removed and made anew (a
    // service restarted) has a new id, and is enforced again.
    let mut wanted: Vec<Scoped> = given
        .iter()
        .filter_map(|(dir, why)| {
            let current = CgroupDir::resolve(mount, &dir.path).ok()?;
            Some(Scoped {
                dir: current,
                reason: why.clone(),
                container: None,
            })
        })
        .collect();
    let mut add = |found: Found| match CgroupDir::resolve(mount, &found.path) {
        Ok(dir) => {
            if !wanted.iter().any(|w| w.dir.id == dir.id) {
                wanted.push(Scoped {
                    dir,
                    reason: found.reason,
                    container: found.container,
                });
            }
        }
        Err(err) => log::debug!("scope: {} not enforced: {err}", found.path.display()),
    };
    for path in &scope.cgroups {
        add(Found {
            path: path.clone(),
            reason: format!("scope.cgroups: {}", path.display()),
            container: None,
        });
    }
    if scope.docker {
        let (found, skipped) = engine_cgroups(mount, Path::new("/proc"));
        found.into_iter().for_each(&mut add);
        for message in skipped {
            log::debug!("{message}");
        }
    }
    let mut complete = true;
    if scope.containers {
        let containers = container_cgroups(mount);
        complete = containers.complete;
        let by_name: Vec<PathBuf> = containers.found.iter().map(|f| f.path.clone()).collect();
        containers.found.into_iter().for_each(&mut add);
        // A container found by name is not found again below it (Podman's `container` child).
        shims::shim_children(mount, Path::new("/proc"))
            .into_iter()
            .filter(|found| !by_name.iter().any(|path| found.path.starts_with(path)))
            .for_each(&mut add);
    }
    if scope.whole_host {
        match CgroupDir::whole_host(mount) {
            Ok(dir) => wanted.push(Scoped {
                dir,
                reason: "scope.whole_host: every process on the host".into(),
                container: None,
            }),
            Err(err) => log::warn!("scope.whole_host: {err}"),
        }
    }
    (wanted, complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::procs::fake::Tree;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn systemd_units_come_first() {
        let mount = Tree::new("units");
        let proc = Tree::new("units-proc");
        mount.dir("system.slice/docker.service");
        mount.dir("system.slice/containerd.service");
        proc.file("10/comm", "dockerd\n");
        proc.file("10/cgroup", "0::/elsewhere\n");
        let (found, skipped) = engine_cgroups(&mount.0, &proc.0);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].path, mount.0.join("system.slice/docker.service"));
        assert!(found[0].reason.contains("systemd unit docker.service"));
        assert!(skipped.is_empty());
    }

    /// Podman's API service, BuildKit's daemon and CRI-O are engines; a `podman` a user types is
    /// not.
    #[test]
    fn podman_service_and_buildkitd_are_engines() {
        let mount = Tree::new("podman");
        let proc = Tree::new("podman-proc");
        let process = |pid: &str, comm: &str, exe: &str, cgroup: &str, cmdline: &[u8]| {
            proc.file(&format!("{pid}/comm"), &format!("{comm}\n"));
            proc.file(&format!("{pid}/cgroup"), &format!("0::{cgroup}\n"));
            proc.exe(pid, exe);
            fs::write(proc.0.join(pid).join("cmdline"), cmdline).unwrap();
        };
        process(
            "20",
            "podman",
            "/usr/bin/podman",
            "/podman-api",
            b"podman\0system\0service\0",
        );
        process(
            "21",
            "podman",
            "/usr/bin/podman",
            "/user.slice/s1",
            b"podman\0run\0alpine\0",
        );
        process(
            "22",
            "buildkitd",
            "/usr/bin/buildkitd",
            "/buildkit",
            b"buildkitd\0",
        );
        process("23", "crio", "/usr/bin/crio", "/crio-engine", b"crio\0");
        let (found, _) = engine_cgroups(&mount.0, &proc.0);
        let paths: Vec<&Path> = found.iter().map(|f| f.path.as_path()).collect();
        assert_eq!(
            paths,
            vec![
                mount.0.join("buildkit"),
                mount.0.join("crio-engine"),
                mount.0.join("podman-api")
            ],
            "{found:?}"
        );
    }

    #[test]
    fn cgroupfs_layouts_use_the_processes_cgroups() {
        let mount = Tree::new("procs");
        let proc = Tree::new("procs-proc");
        proc.file("10/comm", "dockerd\n");
        proc.file("10/cgroup", "0::/docker-engine\n");
        proc.exe("10", "/usr/sbin/dockerd");
        proc.file("11/comm", "containerd\n");
        proc.file("11/cgroup", "0::/docker-engine\n");
        proc.exe("11", "/usr/bin/containerd");
        proc.file("12/comm", "bash\n");
        proc.file("12/cgroup", "0::/user.slice\n");
        proc.exe("12", "/usr/bin/bash");
        proc.file("13/comm", "containerd\n");
        proc.file("13/cgroup", "0::/\n");
        proc.exe("13", "/usr/bin/containerd");
        // A process that only calls itself dockerd.
        proc.file("14/comm", "dockerd\n");
        proc.file(
            "14/cgroup",
            "0::/user.slice/user-1000.slice/session-1.scope\n",
        );
        proc.exe("14", "/home/mallory/fake");
        let (found, skipped) = engine_cgroups(&mount.0, &proc.0);
        assert_eq!(
            found,
            vec![Found {
                path: mount.0.join("docker-engine"),
                reason: "scope.docker: cgroup of dockerd (pid 10)".into(),
                container: None,
            }]
        );
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("cgroup2 root"), "{skipped:?}");
    }

    #[test]
    fn containers_are_found_in_every_layout() {
        let mount = Tree::new("containers");
        mount.dir(&format!("system.slice/docker-{ID}.scope"));
        mount.dir(&format!("docker/{}", ID.replace('0', "1")));
        mount.dir(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-pod1.slice/cri-containerd-{}.scope",
            ID.replace('0', "2")
        ));
        mount.dir(&format!(
            "machine.slice/libpod-{}.scope/container",
            ID.replace('0', "3")
        ));
        mount.dir("system.slice/docker.service");
        mount.dir("docker/not-a-container");
        // A user's directory with a container's name: not root's, not a container.
        let users = mount.dir(&format!("user.slice/docker-{}.scope", ID.replace('0', "4")));
        std::os::unix::fs::chown(&users, Some(1000), Some(1000)).unwrap();
        let containers = container_cgroups(&mount.0);
        assert!(containers.complete);
        let found = containers.found;
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found
                .iter()
                .all(|f| f.reason.starts_with("scope.containers: container"))
        );
        assert!(
            found
                .iter()
                .any(|f| f.path.ends_with(format!("system.slice/docker-{ID}.scope")))
        );
    }

    #[test]
    fn buildkit_steps_are_found_in_both_layouts() {
        let tree = Tree::new("buildkit");
        tree.dir("docker/buildkit/vnzzykkws3m9pp48rularan15");
        tree.dir("docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        tree.dir("system.slice/docker-vnzzykkws3m9pp48rularan15.scope");
        tree.dir("system.slice/buildkit");
        tree.dir("system.slice/docker-notanid.scope");
        // A standalone buildkitd's steps, with no cgroup parent set: `/buildkit/<id>`.
        tree.dir("buildkit/wq2xq7w7ztx2fypt6f2ymcwsq");
        let found = container_cgroups(&tree.0);
        let paths: Vec<String> = found
            .found
            .iter()
            .map(|f| f.path.strip_prefix(&tree.0).unwrap().display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "buildkit",
                "docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "docker/buildkit",
                "system.slice/docker-vnzzykkws3m9pp48rularan15.scope",
            ]
        );
        assert!(found.found[0].reason.contains("BuildKit's RUN steps"));
        assert!(found.found[2].reason.contains("BuildKit's RUN steps"));
    }

    #[test]
    fn container_ids_need_64_hex_digits() {
        assert_eq!(
            container_id(&format!("docker-{ID}.scope")).as_deref(),
            Some(ID)
        );
        assert_eq!(container_id(ID).as_deref(), Some(ID));
        assert_eq!(container_id(&format!("docker-{}.scope", &ID[1..])), None);
        assert_eq!(container_id("docker.service"), None);
        assert_eq!(container_id(&format!("docker-{}x.scope", &ID[1..])), None);
    }
}
