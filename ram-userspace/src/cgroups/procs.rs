//! Reading /proc: processes, their names, binaries, cgroups, parents and children. Every
//! function takes the /proc root, so that tests can hand them a fake tree.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

/// Pids of the processes named `comm` that run as root from a binary of that name (anyone can
/// name a process `dockerd`).
pub fn root_processes_named(proc_root: &Path, comm: &str) -> Vec<u32> {
    processes(proc_root)
        .into_iter()
        .filter(|(pid, name)| name == comm && is_root_binary(proc_root, *pid, comm))
        .map(|(pid, _)| pid)
        .collect()
}

/// Whether `pid` runs as root from a binary named `comm` (one replaced on disk since it
/// started, by a package upgrade, reads as `NAME (deleted)`: still that binary).
pub fn is_root_binary(proc_root: &Path, pid: u32, comm: &str) -> bool {
    let dir = proc_root.join(pid.to_string());
    let Ok(status) = fs::metadata(&dir) else {
        return false;
    };
    let named = fs::read_link(dir.join("exe")).is_ok_and(|exe| {
        exe.file_name().is_some_and(|name| {
            let name = name.to_string_lossy();
            name.strip_suffix(" (deleted)").unwrap_or(&name) == comm
        })
    });
    status.uid() == 0 && named
}

/// Whether `pid` runs inside a container (a cgroup path with a container id in it): such a
/// process may be named like an engine or a shim by the container's root, and is not one.
pub fn in_container(proc_root: &Path, pid: u32, is_container_id: impl Fn(&str) -> bool) -> bool {
    cgroup_of(proc_root, pid).is_none_or(|path| path.split('/').any(is_container_id))
}

/// (pid, comm) of every process in `proc_root`.
pub fn processes(proc_root: &Path) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            Some((pid, comm.trim_end().to_owned()))
        })
        .collect()
}

/// The cgroup v2 path of `pid` (`0::/system.slice/docker.service` → that path).
pub fn cgroup_of(proc_root: &Path, pid: u32) -> Option<String> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The children of `pid` (`/proc/PID/task/*/children`).
pub fn children(proc_root: &Path, pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// (parent pid, start time in clock ticks since boot) from `/proc/PID/stat`.
pub fn parent_and_start(proc_root: &Path, pid: u32) -> Option<(u32, u64)> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&stat)
}

/// Fields 4 (ppid) and 22 (starttime) of a stat line. The name (field 2) may hold spaces and
/// parentheses: the fields after it start after its last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state).
    let parent = fields.get(1)?.parse().ok()?;
    let started = fields.get(19)?.parse().ok()?;
    Some((parent, started))
}

/// A fake cgroup mount or /proc in a temporary directory, for the tests of the functions that
/// read them (here, in `scope` and in `shims`); removed on drop.
#[cfg(test)]
pub(crate) mod fake {
    use std::{fs, path::PathBuf};

    pub(crate) struct Tree(pub(crate) PathBuf);

    impl Tree {
        pub(crate) fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!("ram-fake-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub(crate) fn dir(&self, relative: &str) -> PathBuf {
            let path = self.0.join(relative);
            fs::create_dir_all(&path).unwrap();
            path
        }

        /// `PID/exe` pointing at `target`.
        pub(crate) fn exe(&self, pid: &str, target: &str) {
            std::os::unix::fs::symlink(target, self.0.join(pid).join("exe")).unwrap();
        }

        pub(crate) fn file(&self, relative: &str, text: &str) {
            let path = self.0.join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_hostile_name() {
        let stat = "4242 (evil) 1 2 (x) S 77 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 10";
        assert_eq!(parse_stat(stat), Some((77, 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
