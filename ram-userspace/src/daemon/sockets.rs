//! The daemon's root-only Unix sockets: the control socket and the Docker authorization
//! plugin's.

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
    #[error("the run directory is not safe for root")]
    UnsafeRunDir(#[source] ProtectError),
    #[error("the authorization plugin socket's directory is not safe for root")]
    UnsafePluginDir(#[source] ProtectError),
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
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| SocketError::Io {
                action: "create",
                path: dir.to_owned(),
                source,
            })?;
        // dockerd sends its requests to whatever answers at this path: nobody but root may
        // be able to put another socket there.
        protect::check_directory_path(dir, Guarded::PluginSocket)
            .map_err(SocketError::UnsafePluginDir)?;
    }
    bind_root_only(path, "the authorization plugin socket", "--authz-socket")
}

/// The control socket, root-only, in a run directory only root can change; non-blocking, for
/// the event loop.
pub fn bind_control_socket(run_dir: &Path) -> Result<tokio::net::UnixListener, SocketError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(run_dir)
        .map_err(|source| SocketError::Io {
            action: "create the run directory",
            path: run_dir.to_owned(),
            source,
        })?;
    // Root writes here (socket, policy copy): nobody else may be able to redirect it.
    protect::check_directory_path(run_dir, Guarded::RunDirectory)
        .map_err(SocketError::UnsafeRunDir)?;
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
    let _ = fs::remove_file(path);
    sys::with_umask(0o177, || UnixListener::bind(path)).map_err(|source| SocketError::Io {
        action: "bind",
        path: path.to_owned(),
        source,
    })
}
