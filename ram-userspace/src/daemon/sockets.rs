//! The daemon's root-only Unix sockets: the control socket, the Docker authorization
//! plugin's, and the metrics endpoint's.

use std::{
    fs, io,
    os::unix::{
        fs::DirBuilderExt as _,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use super::control;
use crate::{
    policy::protect::{self, Guarded, ProtectError},
    sys,
};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another ram daemon answers on {path} ({what}); stop it first, or give this one its own \
         {option}"
    )]
    InUse {
        path: PathBuf,
        what: &'static str,
        option: &'static str,
    },
    #[error("the directory of {0} is not safe for root")]
    UnsafeDirectory(Guarded, #[source] ProtectError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The plugin socket (root-only), in a directory made if missing.
pub fn bind_authz_socket(path: &Path) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent() {
        // dockerd sends its requests to whatever answers at this path: nobody but root may
        // be able to put another socket there.
        root_only_directory(dir, Guarded::PluginSocket)?;
    }
    bind_root_only(path, "the authorization plugin socket", "--authz-socket")
}

/// The metrics socket (root-only: `ram_policy_info` and the counts are the host's business),
/// non-blocking, in a directory made if missing.
pub fn bind_metrics_socket(path: &Path) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent() {
        root_only_directory(dir, Guarded::MetricsSocket)?;
    }
    let listener = bind_root_only(path, "the metrics socket", "[metrics] listen")?;
    listener
        .set_nonblocking(true)
        .map_err(|source| SocketError::Io {
            action: "make non-blocking",
            path: path.to_owned(),
            source,
        })?;
    Ok(listener)
}

/// The control socket, root-only, in a run directory only root can change; non-blocking, for
/// the event loop.
pub fn bind_control_socket(run_dir: &Path) -> Result<tokio::net::UnixListener, SocketError> {
    // Root writes here (socket, policy copy): nobody else may be able to redirect it.
    root_only_directory(run_dir, Guarded::RunDirectory)?;
    let path = control::socket_path(run_dir);
    let listener = bind_root_only(&path, "the control socket", "--run-dir")?;
    let io_error = |action, source| SocketError::Io {
        action,
        path: path.clone(),
        source,
    };
    listener
        .set_nonblocking(true)
        .map_err(|source| io_error("make non-blocking", source))?;
    tokio::net::UnixListener::from_std(listener).map_err(|source| io_error("watch", source))
}

/// Makes `dir` (0755) if missing, then checks that only root can change what it holds.
fn root_only_directory(dir: &Path, guarded: Guarded) -> Result<(), SocketError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| SocketError::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })?;
    protect::check_directory_path(dir, guarded)
        .map_err(|source| SocketError::UnsafeDirectory(guarded, source))
}

/// Binds a unix socket created 0600 (umask, so that no one else can connect between bind and
/// chmod). A socket left by a dead daemon is replaced; a live one means another daemon uses
/// this path (`option` gives this one its own).
fn bind_root_only(
    path: &Path,
    what: &'static str,
    option: &'static str,
) -> Result<UnixListener, SocketError> {
    if UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse {
            path: path.to_owned(),
            what,
            option,
        });
    }
    // Only a socket left by a dead daemon is replaced: the path comes from the policy (the
    // metrics socket), and must not make root unlink a file that happens to be there.
    match fs::symlink_metadata(path) {
        Ok(metadata) if std::os::unix::fs::FileTypeExt::is_socket(&metadata.file_type()) => {
            let _ = fs::remove_file(path);
        }
        Ok(_) => {
            return Err(SocketError::Io {
                action: "bind",
                path: path.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "something other than a socket is there; not removed",
                ),
            });
        }
        Err(_) => {}
    }
    sys::with_umask(0o177, || UnixListener::bind(path)).map_err(|source| SocketError::Io {
        action: "bind",
        path: path.to_owned(),
        source,
    })
}
