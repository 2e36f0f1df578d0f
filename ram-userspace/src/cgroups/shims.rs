//! Containers found by the process that started them rather than by their cgroup's name:
//! containerd's shims (Docker's and containerd's own containers, `ctr run` and nerdctl among
//! them) and Podman's and CRI-O's conmon stay the parent of a container's first process.

use std::path::Path;

use super::{
    procs::{cgroup_of, children, is_root_binary, processes},
    scope::{Found, container_id, short_id},
};

/// The processes that start containers and stay their parent: containerd's shims (Docker's and
/// containerd's own containers, `ctr run` among them) and Podman's and CRI-O's conmon.
const SHIMS: [&str; 4] = [
    "containerd-shim-runc-v2",
    "containerd-shim-runc-v1",
    "containerd-shim",
    "conmon",
];

/// The cgroups of the containers that shims started, found by process rather than by name: a
/// container named freely (`ctr run IMAGE web` makes `/default/web`) is found too. A shim's
/// child is the container's first process, in the container's cgroup. Only root shims from a
/// binary of that name count, and only shims outside every container (a container's root
/// cannot name its own process `conmon` and have its children taken for containers).
pub fn shim_children(mount: &Path, proc_root: &Path) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for (pid, comm) in processes(proc_root) {
        // The kernel keeps 15 bytes of a name (`containerd-shim` for each containerd shim):
        // the binary's own name decides.
        let Some(shim) = SHIMS
            .iter()
            .find(|shim| shim.starts_with(comm.as_str()) && is_root_binary(proc_root, pid, shim))
        else {
            continue;
        };
        let comm = *shim;
        let Some(shim_cgroup) = cgroup_of(proc_root, pid) else {
            continue;
        };
        if shim_cgroup == "/"
            || shim_cgroup
                .split('/')
                .any(|part| container_id(part).is_some())
        {
            continue;
        }
        for child in container_processes(proc_root, pid, &shim_cgroup) {
            let Some(relative) = cgroup_of(proc_root, child) else {
                continue;
            };
            if relative == "/" {
                continue;
            }
            let path = mount.join(relative.trim_start_matches('/'));
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let id = container_id(&name).unwrap_or(name);
            if found.iter().any(|f| f.path == path) {
                continue;
            }
            found.push(Found {
                reason: format!(
                    "scope.containers: container {} (started by {comm})",
                    short_id(&id)
                ),
                path,
                container: Some(id),
            });
        }
    }
    found
}

/// How deep below a shim its container's first process may be: the shim's child is the
/// runtime (`runc create`, in the shim's cgroup) until the runtime exits, the container's
/// process its child; then the shim adopts it.
const SHIM_DEPTH: usize = 3;

/// The shim's descendants that are no longer in its cgroup (`shim_cgroup`), looking no deeper
/// than the first such process on each branch, nor than [`SHIM_DEPTH`] levels.
fn container_processes(proc_root: &Path, shim: u32, shim_cgroup: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let mut level = vec![shim];
    for _ in 0..SHIM_DEPTH {
        let mut next = Vec::new();
        for pid in level {
            for child in children(proc_root, pid) {
                match cgroup_of(proc_root, child) {
                    Some(cgroup) if cgroup != shim_cgroup => found.push(child),
                    Some(_) => next.push(child),
                    None => {}
                }
            }
        }
        level = next;
    }
    found
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::cgroups::procs::fake::Tree;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// `ctr run` makes `/default/web`: found through the shim, whose child is `runc create`
    /// (still in the shim's cgroup) while the container's first process is its grandchild. A
    /// process named like a shim but run from elsewhere counts for nothing.
    #[test]
    fn containers_are_found_by_their_shim() {
        let mount = Tree::new("shim");
        let proc = Tree::new("shim-proc");
        let process = |pid: &str, comm: &str, cgroup: &str, children: &str| {
            proc.file(&format!("{pid}/comm"), &format!("{comm}\n"));
            proc.file(&format!("{pid}/cgroup"), &format!("0::{cgroup}\n"));
            proc.file(&format!("{pid}/task/{pid}/children"), children);
        };
        process(
            "50",
            "containerd-shim",
            "/system.slice/containerd.service",
            "51 ",
        );
        proc.exe("50", "/usr/bin/containerd-shim-runc-v2");
        process("51", "runc", "/system.slice/containerd.service", "52 ");
        process("52", "sh", "/default/web", "");
        process("60", "conmon", "/user.slice", "61 ");
        proc.exe("60", "/home/mallory/conmon-lookalike");
        process("61", "sh", "/user.slice/fake", "");
        // A real conmon's name, but inside a container: not a runtime's.
        process("70", "conmon", &format!("/docker/{ID}"), "71 ");
        proc.exe("70", "/usr/bin/conmon");
        process("71", "sh", &format!("/docker/{ID}/inner"), "");
        // A shim whose binary an upgrade replaced is still a shim.
        process(
            "80",
            "containerd-shim",
            "/system.slice/containerd.service",
            "81 ",
        );
        proc.exe("80", "/usr/bin/containerd-shim-runc-v2 (deleted)");
        process("81", "sh", "/default/db", "");
        let mut found = shim_children(&mount.0, &proc.0);
        found.sort_by(|a, b| b.path.cmp(&a.path));
        let paths: Vec<PathBuf> = found.iter().map(|f| f.path.clone()).collect();
        assert_eq!(
            paths,
            vec![mount.0.join("default/web"), mount.0.join("default/db")],
            "{found:?}"
        );
        assert_eq!(
            found[0].reason,
            "scope.containers: container web (started by containerd-shim-runc-v2)"
        );
        assert_eq!(found[0].container.as_deref(), Some("web"));
    }
}
