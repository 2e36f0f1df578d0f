//! Noticing new cgroups where runtimes make containers, so that a container is enforced, and
//! its network trusted for DNS, in the moment between the runtime creating it and starting its
//! command — not at the next one-second scope pass.
//!
//! inotify on the directories containers appear in: the mount itself (for a runtime's parent
//! appearing), the runtimes' usual parents, and the parent of every container found so far.
//! Watches are added on every pass (adding one twice is harmless); the kernel drops a watch
//! when its directory goes.

use std::{
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use tokio::io::{Interest, unix::AsyncFd};

use crate::{cgroups::scope::Scoped, sys};

/// Where runtimes put containers, relative to the mount: Docker (cgroupfs driver) and its
/// BuildKit, systemd's slices (Docker and containerd with the systemd driver, Podman), the
/// kubelet's, Podman's cgroupfs parent, containerd's namespaces (`ctr run`: `/default/<id>`).
const USUAL_PARENTS: [&str; 14] = [
    "docker",
    "docker/buildkit",
    "buildkit",
    "kubepods.slice/kubepods-burstable.slice",
    "kubepods.slice/kubepods-besteffort.slice",
    "system.slice",
    "machine.slice",
    "kubepods",
    "kubepods.slice",
    "kubepods/besteffort",
    "kubepods/burstable",
    "libpod_parent",
    "default",
    "k8s.io",
];

/// A directory made (a cgroup), or the queue overflowed (anything may have happened).
const MASK: u32 = libc::IN_CREATE | libc::IN_ONLYDIR;

const BUF_LEN: usize = 16 * (size_of::<libc::inotify_event>() + libc::NAME_MAX as usize + 1);

pub struct CgroupWatcher {
    fd: AsyncFd<std::fs::File>,
    mount: PathBuf,
    buf: Box<[u8]>,
}

impl CgroupWatcher {
    /// Must be called within a tokio runtime with IO enabled.
    pub fn new(mount: &Path) -> io::Result<Self> {
        let inotify = sys::inotify_init()?;
        // SAFETY: the File, moved into the AsyncFd, keeps the descriptor open and returns the
        // same number until the AsyncFd drops it; nothing here swaps it through `get_mut`.
        let fd = unsafe { AsyncFd::register_with_interest(inotify, Interest::READABLE) }?;
        let mut watcher = Self {
            fd,
            mount: mount.to_owned(),
            buf: vec![0; BUF_LEN].into_boxed_slice(),
        };
        watcher.watch(&[]);
        Ok(watcher)
    }

    /// Watches the mount, the usual parents that exist, and the parents of `enforced`.
    pub fn watch(&mut self, enforced: &[Scoped]) {
        let usual = USUAL_PARENTS.iter().map(|p| self.mount.join(p));
        let parents = enforced
            .iter()
            .filter_map(|scoped| scoped.dir.path.parent().map(Path::to_path_buf));
        let mut dirs: Vec<PathBuf> = std::iter::once(self.mount.clone())
            .chain(usual)
            .chain(parents)
            .collect();
        // A BuildKit parent holds the RUN steps.
        dirs.extend(
            enforced
                .iter()
                .filter(|scoped| scoped.dir.path.ends_with("buildkit"))
                .map(|scoped| scoped.dir.path.clone()),
        );
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            if dir.is_dir()
                && let Err(err) = sys::inotify_add_watch(self.fd.get_ref(), &dir, MASK)
            {
                log::debug!("not watching {} for new cgroups: {err}", dir.display());
            }
        }
    }

    /// Resolves when a cgroup was made in a watched directory (or events were lost). Cancel-safe:
    /// what was read is only a wake-up, and an unread event wakes the next call.
    pub async fn created(&mut self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let buf = &mut self.buf;
            match ready.try_io(|inotify| inotify.get_ref().read(buf)) {
                Ok(Ok(_)) => {
                    // Drain the rest, so that one burst (a container's tree) is one wake-up.
                    while let Ok(Ok(_)) = ready.try_io(|inotify| inotify.get_ref().read(buf)) {}
                    return Ok(());
                }
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}
