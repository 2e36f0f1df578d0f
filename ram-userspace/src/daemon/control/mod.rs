//! The daemon's control socket: one JSON request per connection, one JSON answer.
//!
//! `<run dir>/ram.sock` is root-only (0600): it tells what is enforced and learned. The policy
//! in force is also written to `<run dir>/policy.toml` (0644) for `ram policy show`, which any
//! user may run, like Docker's read-only view of registry.json.

mod server;

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use crate::{compile::check::CheckAnswer, docker::image_access::ImageCheckAnswer};

pub const SOCKET_NAME: &str = "ram.sock";
pub const POLICY_COPY_NAME: &str = "policy.toml";
/// Where the daemon keeps its socket and the copy of the policy in force.
pub const DEFAULT_RUN_DIR: &str = "/run/ram";
/// Longest request the daemon reads (a hostname to check is the largest part).
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Whether the daemon enforces, and nothing else: a readiness probe asks every few
    /// seconds, and must cost the event loop nothing (no warnings computed, no maps read).
    Ready,
    Learned,
    Check {
        host: String,
    },
    /// What image access decides about an image reference (`ram check IMAGE`). Answered by the
    /// daemon, from the rules the authorization plugin and the pull gate hold, as `Check` is
    /// for hosts: the answer is the policy in force, not a file that may have changed since.
    CheckImage {
        image: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub enforcing: bool,
    pub pid: u32,
    pub started: String,
    pub pin_dir: PathBuf,
    pub audit_log: Option<String>,
    pub cgroups: Vec<CgroupStatus>,
    pub policy: PolicyStatus,
    /// Every kernel counter by name (allowed_learned, denied, events_dropped, ...).
    pub counters: Vec<(String, u64)>,
    pub maps: Vec<MapFill>,
    /// Enforced containers whose network namespace is trusted for DNS (`scope.containers`).
    #[serde(default)]
    pub container_networks: Vec<ContainerNetworkStatus>,
    /// Containers whose network could not be read (their DNS stays refused), each counted once.
    #[serde(default)]
    pub container_networks_unreadable: u64,
    /// Packet sockets and the other families refused (`family_gate`, where the kernel runs
    /// BPF LSM programs).
    #[serde(default)]
    pub socket_families_refused: bool,
    /// What the operator should fix: enforced engines not pointed at the pull gate while image
    /// access is on.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ContainerNetworkStatus {
    /// The container's id (or a BuildKit RUN step's), and its name where its runtime says.
    pub container: String,
    #[serde(default)]
    pub name: Option<String>,
    pub cgroup: String,
    /// Its first process, whose namespace this is.
    pub pid: u32,
    pub netns_inode: u64,
    pub netns_cookie: u64,
    /// Trusted in that namespace only.
    pub resolvers: Vec<String>,
    /// Its first process may use CAP_NET_RAW, with which it could forge answers (see
    /// docs/limits.md).
    #[serde(default)]
    pub net_raw: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CgroupStatus {
    pub path: String,
    pub id: u64,
    /// False once the cgroup was removed.
    pub present: bool,
    /// Why it is enforced (e.g. `--cgroup`, or ram's own cgroup).
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub source: String,
    pub sha256: String,
    pub loaded: String,
    pub hostnames: usize,
    pub cidrs: usize,
    pub resolvers: Vec<String>,
    pub allowed_audit: String,
    /// `registry_access.tls`: `enforce`, `audit` or `off`.
    pub tls: String,
    pub reloads: u64,
    /// The last rejected change, if the file now differs from the policy in force.
    pub rejected: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MapFill {
    pub map: String,
    pub used: usize,
    pub capacity: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LearnedEntry {
    pub addr: String,
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    pub hostname: Option<String>,
    pub rule: Option<String>,
    pub expires: String,
    pub expires_in_s: u64,
    /// The ports the address is allowed on (empty: every port).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// The allowed names whose answers gave this address, as far as the daemon was told:
    /// the kernel reports an answer when it teaches a new address, not when it refreshes one
    /// (so a second name on a shared front end shows once that address is learned anew).
    #[serde(default)]
    pub names: Vec<String>,
}

/// The daemon's answer to any request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    Ready { enforcing: bool },
    Learned { entries: Vec<LearnedEntry> },
    Check(CheckAnswer),
    CheckImage(ImageCheckAnswer),
    Error { message: String },
}

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot reach the ram daemon at {path}; is it running (`systemctl status ram`), and are \
         you root?"
    )]
    Unreachable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the ram daemon failed")]
    Io(#[from] io::Error),
    #[error("the daemon closed the connection without answering; see its log")]
    NoAnswer,
    #[error("the daemon's answer is not valid JSON")]
    BadAnswer(#[from] serde_json::Error),
    #[error("the daemon refused the request: {0}")]
    Refused(String),
}

/// Sends `request` to the daemon listening under `run_dir` and returns its answer.
pub fn ask(run_dir: &Path, request: &Request) -> Result<Response, ControlError> {
    let path = socket_path(run_dir);
    let mut stream =
        UnixStream::connect(&path).map_err(|source| ControlError::Unreachable { path, source })?;
    // Bounded: the daemon answers from memory and maps, in milliseconds.
    let timeout = Some(Duration::from_secs(10));
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(ControlError::NoAnswer);
    }
    let response: Response = serde_json::from_str(&answer)?;
    if let Response::Error { message } = response {
        return Err(ControlError::Refused(message));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let json = serde_json::to_string(&Request::Check {
            host: "ghcr.io".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"command":"check","host":"ghcr.io"}"#);
        let json = serde_json::to_string(&Request::CheckImage {
            image: "someuser/tool".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"command":"check_image","image":"someuser/tool"}"#);
        let back: Request = serde_json::from_str(r#"{"command":"status"}"#).unwrap();
        assert_eq!(back, Request::Status);
        assert!(serde_json::from_str::<Request>(r#"{"command":"rm -rf"}"#).is_err());
    }
}
