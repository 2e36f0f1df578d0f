//! cgroup v2: finding the mount, resolving the paths a user gives, creating ram's own cgroup,
//! moving processes. (Which programs are attached to a cgroup is a bpf(2) query:
//! [`crate::sys::attached_program_ids`].)

pub mod containers;
pub mod names;
pub mod networks;
pub mod procs;
pub mod scope;
pub mod shims;

use std::{
    fs,
    io::{self, BufRead as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Component, Path, PathBuf},
};

use crate::sys;

/// The cgroup `ram daemon` creates and enforces when given no `--cgroup`.
pub const DEDICATED_CGROUP: &str = "ram.enforced";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 filesystem is mounted (none in /proc/mounts); ram needs one: mount it \
         with `mount -t cgroup2 none /sys/fs/cgroup` (or enable the unified hierarchy)"
    )]
    NoCgroup2Mount,
    #[error("cannot read /proc/mounts: {0}")]
    Mounts(io::Error),
    #[error(
        "cgroup {0} does not exist; create it (`mkdir {0}`) or name an existing cgroup v2 \
         directory"
    )]
    Missing(PathBuf),
    #[error("{path} is not a cgroup v2 directory (it is not on the cgroup2 mount {mount})")]
    NotCgroup2 { path: PathBuf, mount: PathBuf },
    #[error(
        "refusing to enforce on the cgroup2 root {0}: that would restrict every process on the \
         host, this daemon included; name a child cgroup instead"
    )]
    Root(PathBuf),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// The mount point of the (first) cgroup2 filesystem, read from /proc/mounts.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = fs::File::open("/proc/mounts").map_err(CgroupError::Mounts)?;
    for line in io::BufReader::new(mounts).lines() {
        let line = line.map_err(CgroupError::Mounts)?;
        let mut fields = line.split_whitespace();
        let (Some(_device), Some(mount_point), Some(fs_type)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if fs_type == "cgroup2" {
            return Ok(PathBuf::from(unescape_mount_path(mount_point)));
        }
    }
    Err(CgroupError::NoCgroup2Mount)
}

/// /proc/mounts escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup v2 directory that exists, is not the root, and lies on the cgroup2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    pub path: PathBuf,
    /// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the directory's inode.
    pub id: u64,
}

impl CgroupDir {
    /// Resolves a user-given path: a filesystem path under the cgroup2 mount, or a path relative
    /// to the mount (`/system.slice/docker.service`).
    pub fn resolve(mount: &Path, given: &Path) -> Result<Self, CgroupError> {
        let candidate = if given.starts_with(mount) {
            given.to_owned()
        } else {
            let relative: PathBuf = given
                .components()
                .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
                .collect();
            mount.join(relative)
        };
        let path = fs::canonicalize(&candidate).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                CgroupError::Missing(candidate.clone())
            } else {
                CgroupError::Io {
                    action: "resolve",
                    path: candidate.clone(),
                    source,
                }
            }
        })?;
        Self::check(mount, path)
    }

    fn check(mount: &Path, path: PathBuf) -> Result<Self, CgroupError> {
        let mount = fs::canonicalize(mount).unwrap_or_else(|_| mount.to_owned());
        if !path.starts_with(&mount) || !sys::is_cgroup2(&path) {
            return Err(CgroupError::NotCgroup2 { path, mount });
        }
        if path == mount {
            return Err(CgroupError::Root(path));
        }
        Self::with_id(path)
    }

    /// The directory with the id the kernel reports for it (its inode).
    fn with_id(path: PathBuf) -> Result<Self, CgroupError> {
        let metadata = fs::metadata(&path).map_err(|source| CgroupError::Io {
            action: "stat",
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            id: metadata.ino(),
        })
    }

    /// The cgroup2 root itself: every process on the host. Only for `scope.whole_host`, which a
    /// policy must ask for by name; `resolve` refuses the root.
    pub fn whole_host(mount: &Path) -> Result<Self, CgroupError> {
        let path = fs::canonicalize(mount).unwrap_or_else(|_| mount.to_owned());
        if !sys::is_cgroup2(&path) {
            return Err(CgroupError::NotCgroup2 {
                path: path.clone(),
                mount: path,
            });
        }
        Self::with_id(path)
    }

    /// The daemon's own cgroup, `<mount>/ram.enforced`, created if missing. Returns whether this
    /// call created it.
    pub fn ensure_dedicated(mount: &Path) -> Result<(Self, bool), CgroupError> {
        let path = mount.join(DEDICATED_CGROUP);
        let created = match fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => true,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => false,
            Err(source) => {
                return Err(CgroupError::Io {
                    action: "create cgroup",
                    path,
                    source,
                });
            }
        };
        Ok((Self::check(mount, path)?, created))
    }

    /// Moves process `pid` into this cgroup.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Io {
            action: "move the process into",
            path: procs,
            source,
        })
    }

    /// Removes the cgroup directory; fails (harmlessly) while processes are still in it.
    pub fn remove(&self) -> io::Result<()> {
        fs::remove_dir(&self.path)
    }

    pub fn open(&self) -> Result<fs::File, CgroupError> {
        fs::File::open(&self.path).map_err(|source| CgroupError::Io {
            action: "open cgroup",
            path: self.path.clone(),
            source,
        })
    }
}

/// Finds the path of the cgroup with id (inode) `id` at or below `roots`, searching at most
/// `max_dirs` directories (cgroup trees are small, but a daemon must not walk forever).
pub fn find_by_id(roots: &[CgroupDir], id: u64, max_dirs: usize) -> Option<PathBuf> {
    let mut stack: Vec<PathBuf> = roots.iter().map(|root| root.path.clone()).collect();
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > max_dirs {
            return None;
        }
        let Ok(metadata) = fs::metadata(&dir) else {
            continue;
        };
        if metadata.ino() == id {
            return Some(dir);
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mount_path("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_path("/mnt/trailing\\"), "/mnt/trailing\\");
    }

    #[test]
    fn the_mount_is_found_here() {
        // Every machine ram runs on has cgroup v2; this also documents where it is.
        let mount = cgroup2_mount().expect("cgroup2 mounted");
        assert!(sys::is_cgroup2(&mount), "{}", mount.display());
    }

    #[test]
    fn root_and_foreign_paths_are_refused() {
        let mount = cgroup2_mount().unwrap();
        assert!(matches!(
            CgroupDir::resolve(&mount, Path::new("/")),
            Err(CgroupError::Root(_))
        ));
        assert!(matches!(
            CgroupDir::resolve(&mount, &mount),
            Err(CgroupError::Root(_))
        ));
        assert!(matches!(
            CgroupDir::resolve(&mount, Path::new("/no-such-ram-test-cgroup")),
            Err(CgroupError::Missing(_))
        ));
        assert!(matches!(
            CgroupDir::resolve(&mount, Path::new("/../../../../../../tmp")),
            Err(CgroupError::NotCgroup2 { .. })
        ));
    }
}
