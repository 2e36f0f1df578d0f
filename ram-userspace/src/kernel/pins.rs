//! ram's pinned state under bpffs, which outlives the daemon: the directory layout
//! ([`PinDir`]), the one-daemon-per-directory lock, map directories of other ram versions, and
//! [`uninstall`].
//!
//! Layout (`<pin dir>`, default `/sys/fs/bpf/ram`, mode 0700):
//! - `maps-v<LAYOUT>/<MAP>`: every map. A daemon that starts finds them and reuses them, so
//!   learned addresses, counters, the policy in force and the audit backlog carry over.
//! - `progs/<program>`: the programs in force.
//! - `links/<cgroup id>/<program>`: one bpf_link per program and enforced cgroup. A starting
//!   daemon swaps each pinned link to its own freshly loaded program with `BPF_LINK_UPDATE`, so
//!   there is no instant with nothing attached; `ram uninstall` removes them on purpose.

use std::{
    fs::{self, TryLockError},
    io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ram_common::maps::LAYOUT;

use super::error::EnforceError;
use crate::sys;

/// Where ram pins its programs, links and maps unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ram";

/// The paths of ram's pinned state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join(format!("maps-v{LAYOUT}"))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn programs(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn cgroup_links(&self, cgroup_id: u64) -> PathBuf {
        self.links().join(cgroup_id.to_string())
    }

    /// Takes the pin directory for this process (creating it 0700): one daemon per directory.
    /// The lock is an `flock` on the directory, released when the returned file closes (also
    /// when the daemon is killed).
    pub(super) fn lock(&self) -> Result<fs::File, EnforceError> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !sys::is_bpffs(parent) && !sys::is_bpffs(&self.root) {
            mount_bpffs(parent)?;
        }
        let io_error = |source| EnforceError::PinDir {
            path: self.root.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io_error)?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)).map_err(io_error)?;
        let dir = fs::File::open(&self.root).map_err(io_error)?;
        // flock(LOCK_EX | LOCK_NB) on Linux.
        match dir.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(EnforceError::Busy {
                    path: self.root.clone(),
                });
            }
            Err(TryLockError::Error(err)) => return Err(io_error(err)),
        }
        for dir in [self.maps(), self.programs(), self.links()] {
            create_dir(&dir).map_err(io_error)?;
        }
        Ok(dir)
    }

    /// Creates (if missing) the directory of `cgroup_id`'s links and returns it.
    pub(super) fn create_cgroup_links(&self, cgroup_id: u64) -> Result<PathBuf, EnforceError> {
        let dir = self.cgroup_links(cgroup_id);
        create_dir(&dir).map_err(|source| EnforceError::PinDir {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Pinned map directories of other layouts (left by another version of ram).
    pub(super) fn foreign_layouts(&self) -> Vec<PathBuf> {
        let own = self.maps();
        fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                *p != own
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("maps-v"))
            })
            .collect()
    }
}

/// Where no bpf filesystem is mounted (systemd mounts it at boot; minimal VMs and some WSL
/// set-ups lack it), mounts one at its standard place, as Cilium does — only there, and only in
/// the host's mount namespace: a mount made in a private one (a sandboxed service, a container)
/// would vanish with it, taking the pins along.
fn mount_bpffs(parent: &Path) -> Result<(), EnforceError> {
    let why_not = if parent != Path::new(sys::BPFFS_MOUNT) {
        Some(format!(
            "ram mounts one only at {} (the pin directory's parent is {})",
            sys::BPFFS_MOUNT,
            parent.display()
        ))
    } else {
        match sys::mount_namespace() {
            sys::MountNamespace::Initial => sys::mount_bpffs(parent)
                .err()
                .map(|err| format!("mounting one there failed: {err}")),
            sys::MountNamespace::Private => Some(
                "ram runs in a private mount namespace, where a mount would vanish with the \
                 namespace and take the pins along"
                    .to_owned(),
            ),
            sys::MountNamespace::Unknown(why) => Some(format!(
                "ram did not mount one because it cannot tell whether it runs in the host's \
                 mount namespace: {why}"
            )),
        }
    };
    if let Some(why_not) = why_not {
        return Err(EnforceError::NoBpffs {
            path: parent.to_owned(),
            why_not,
        });
    }
    log::info!("mounted a bpf filesystem at {}", parent.display());
    Ok(())
}

/// Creates `dir` (mode 0700) unless it exists.
fn create_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => Err(err),
        _ => Ok(()),
    }
}

/// Removes a directory of pinned links or maps and the pins in it (removing a link's pin
/// detaches it unless someone else holds it). Returns how many pins it removed; a directory
/// that does not exist has none.
pub(super) fn remove_pins(dir: &Path) -> Result<usize, EnforceError> {
    let io_error = |source| EnforceError::PinDir {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(io_error(err)),
    };
    let mut removed = 0;
    for pin in entries.flatten() {
        fs::remove_file(pin.path()).map_err(io_error)?;
        removed += 1;
    }
    fs::remove_dir(dir).map_err(io_error)?;
    Ok(removed)
}

/// What [`uninstall`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: usize,
    pub programs: usize,
    pub maps: usize,
    /// The cgroups (ids) whose links were removed.
    pub cgroup_ids: Vec<u64>,
}

/// Removes all of ram's pinned state under `pins`: links first (which detaches the programs
/// from every cgroup), then programs and maps. Refuses while a daemon holds the directory.
pub fn uninstall(pins: &PinDir) -> Result<Removed, EnforceError> {
    if !pins.root.exists() {
        return Ok(Removed::default());
    }
    let _lock = pins.lock()?;
    let io_error = |source| EnforceError::PinDir {
        path: pins.root.clone(),
        source,
    };
    let mut removed = Removed::default();
    for cgroup in fs::read_dir(pins.links()).map_err(io_error)?.flatten() {
        if let Ok(id) = cgroup.file_name().to_string_lossy().parse() {
            removed.cgroup_ids.push(id);
        }
        removed.links += remove_pins(&cgroup.path())?;
    }
    for program in fs::read_dir(pins.programs()).map_err(io_error)?.flatten() {
        fs::remove_file(program.path()).map_err(io_error)?;
        removed.programs += 1;
    }
    let mut map_dirs = pins.foreign_layouts();
    map_dirs.push(pins.maps());
    for dir in map_dirs {
        removed.maps += remove_pins(&dir)?;
    }
    fs::remove_dir(pins.links()).map_err(io_error)?;
    fs::remove_dir(pins.programs()).map_err(io_error)?;
    fs::remove_dir(&pins.root).map_err(io_error)?;
    Ok(removed)
}
