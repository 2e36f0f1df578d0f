//! Where audit records go: nowhere, standard output, or an append-only file only root can
//! redirect.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use log::warn;

use crate::policy::protect::{self, Guarded, ProtectError};

#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    #[error("the audit log's directory is not safe for root")]
    Directory(#[source] ProtectError),
    #[error("cannot open audit log {path}; check that its directory exists and is writable")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where audit records go.
pub enum AuditSink {
    None,
    Stdout,
    File(PathBuf, fs::File),
}

impl AuditSink {
    /// `None`: no audit log; `-`: standard output; otherwise a file, appended to.
    pub fn open(path: Option<&Path>) -> Result<Self, AuditLogError> {
        Ok(match path {
            None => Self::None,
            Some(path) if path == Path::new("-") => Self::Stdout,
            Some(path) => Self::File(path.to_owned(), open_append(path)?),
        })
    }

    /// Reopens the file (after logrotate moved it away).
    pub fn reopen(&mut self) -> Result<(), AuditLogError> {
        if let Self::File(path, file) = self {
            *file = open_append(path)?;
        }
        Ok(())
    }

    /// The file's path, `-`, or `None` without an audit log (for `ram status`).
    pub fn describe(&self) -> Option<String> {
        match self {
            Self::None => None,
            Self::Stdout => Some("-".into()),
            Self::File(path, _) => Some(path.display().to_string()),
        }
    }

    /// Appends `record` as one JSON line; a failure is logged, never fatal (enforcement does not
    /// depend on the log).
    pub fn write(&mut self, record: &impl serde::Serialize) {
        let result = (|| {
            let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
            line.push(b'\n');
            // One write per line: O_APPEND keeps lines whole even with other writers.
            match self {
                Self::None => Ok(()),
                Self::Stdout => {
                    let mut stdout = io::stdout().lock();
                    stdout.write_all(&line)?;
                    stdout.flush()
                }
                Self::File(_, file) => file.write_all(&line),
            }
        })();
        if let Err(err) = result {
            warn!("writing the audit log failed: {err}");
        }
    }
}

/// Opens the audit log for appending, never through a symlink, in a directory only root can
/// change (a log root appends to must not be redirectable at another file).
fn open_append(path: &Path) -> Result<fs::File, AuditLogError> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    protect::check_directory_path(directory, Guarded::AuditLog)
        .map_err(AuditLogError::Directory)?;
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| AuditLogError::Open {
            path: path.to_owned(),
            source,
        })
}
