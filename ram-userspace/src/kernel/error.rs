//! [`EnforceError`]: everything that can go wrong between the embedded eBPF object and
//! enforcement on a cgroup, each with what to do about it.

use std::{fmt, io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError};

use super::probe;

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(
        "this ram binary was built with AYA_BUILD_SKIP and holds no eBPF programs; rebuild it \
         without that variable (`cargo xtask setup` installs what the build needs)"
    )]
    NoObject,
    #[error(
        "the policy needs {needed} entries in {map}, more than its limit of {limit}; shorten \
         the policy"
    )]
    TooLarge {
        map: &'static str,
        needed: usize,
        limit: u32,
    },
    #[error(
        "loading ram's eBPF object failed: {0}; ram needs root (CAP_BPF and CAP_NET_ADMIN) and a \
         kernel with BPF and BTF support"
    )]
    Object(#[from] aya::EbpfError),
    #[error("map {map} is missing from ram's eBPF object (a build mismatch; rebuild ram)")]
    MissingMap { map: &'static str },
    #[error(
        "ram's eBPF object has maps {found:?}, but ram pins {expected:?} (a build mismatch; \
         rebuild ram)"
    )]
    UnexpectedMaps {
        found: Vec<String>,
        expected: Vec<&'static str>,
    },
    #[error("program {program} is missing from ram's eBPF object (a build mismatch; rebuild ram)")]
    MissingProgram { program: &'static str },
    #[error("writing map {map} failed: {source}")]
    Map { map: &'static str, source: MapError },
    /// A policy map of the slot about to go live could not be made to hold exactly the new
    /// policy; the slot in force is untouched.
    #[error("filling map {map} with the new policy failed while {step}: {source}")]
    Refill {
        map: &'static str,
        step: RefillStep,
        source: MapError,
    },
    #[error(transparent)]
    Kernel(#[from] probe::ProbeError),
    #[error(
        "Linux {kernel}'s verifier refused ram's program {program} ({source}): this kernel has \
         every feature ram probes for, so a limit of its verifier was hit; ram is tested on Linux \
         5.10, 6.1, 6.12 and 6.18 (README \"Supported kernels\"): please report this kernel \
         with the verifier's log\n  verifier log, last lines:\n{verifier_tail}"
    )]
    Verifier {
        program: &'static str,
        kernel: String,
        source: io::Error,
        verifier_tail: String,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("attaching {program} to cgroup {cgroup} failed: {source}")]
    Attach {
        program: &'static str,
        cgroup: String,
        source: io::Error,
    },
    #[error(
        "{path} is not on a bpf filesystem ({why_not}); mount one with `mount -t bpf bpf \
         /sys/fs/bpf` in the host's mount namespace (or choose another --pin-dir on bpffs)"
    )]
    NoBpffs { path: PathBuf, why_not: String },
    #[error("pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error(
        "another ram daemon holds {path}; stop it first (`systemctl stop ram`), or give this one \
         its own --pin-dir"
    )]
    Busy { path: PathBuf },
}

/// Where refilling a policy map failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefillStep {
    /// Listing the entries of the previous policy.
    List,
    /// Removing an entry of the previous policy.
    Remove,
    /// Inserting an entry of the new policy.
    Insert,
}

impl fmt::Display for RefillStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::List => "listing the previous entries",
            Self::Remove => "removing a previous entry",
            Self::Insert => "inserting an entry",
        })
    }
}
