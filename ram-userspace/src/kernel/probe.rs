//! The start-up probe: before it loads its programs, the daemon asks the kernel for every
//! feature the programs and the daemon use. A missing one either has a fallback (noted in the
//! log) or makes the daemon refuse to start with the feature's name and the Linux version that
//! brought it — never with a verifier log as the only explanation.
//!
//! Keep [`FEATURES`] current when a program starts using a new helper or map type, or the
//! daemon a new bpf(2) command.

use std::io;

use aya::{
    maps::MapType,
    programs::{ProgramError, ProgramType},
    sys::{BpfHelper, SyscallError, is_helper_supported, is_map_supported, is_program_supported},
};
use aya_obj::generated::bpf_cmd;

use crate::sys;

/// The oldest Linux ram can run on: BPF ring buffers and `bpf_ktime_get_boot_ns` came in 5.8.
pub const MINIMUM_LINUX: &str = "5.8";
/// The oldest Linux of the kernel matrix (`cargo xtask matrix`).
pub const OLDEST_TESTED_LINUX: &str = "5.10";

/// How a feature is asked for.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    Program(ProgramType),
    Map(MapType),
    /// A helper called by programs of this type.
    Helper(ProgramType, BpfHelper),
    /// A bpf(2) command.
    Command(bpf_cmd),
    /// `getsockopt(SO_NETNS_COOKIE)`.
    NetnsCookieSockopt,
}

/// One kernel feature ram uses.
#[derive(Debug)]
pub struct Feature {
    pub name: &'static str,
    /// The Linux version that brought it (for helpers: to this program type).
    pub since: &'static str,
    /// What ram does without it; `None`: ram cannot run without it.
    pub fallback: Option<&'static str>,
    pub check: Check,
}

const fn required(name: &'static str, since: &'static str, check: Check) -> Feature {
    Feature {
        name,
        since,
        fallback: None,
        check,
    }
}

const SOCK_ADDR: ProgramType = ProgramType::CgroupSockAddr;
const SKB: ProgramType = ProgramType::CgroupSkb;
const SOCK: ProgramType = ProgramType::CgroupSock;
const SOCKOPT: ProgramType = ProgramType::CgroupSockopt;
const SOCK_OPS: ProgramType = ProgramType::SockOps;
const SK_MSG: ProgramType = ProgramType::SkMsg;

/// Every feature ram uses, roughly oldest first. Helpers are those the programs call
/// (`ram-ebpf/src/gate.rs` for the sock_addr gates, `ram-ebpf/src/dns.rs` for the cgroup_skb
/// DNS programs); map lookups, updates and deletes are as old as maps.
pub static FEATURES: &[Feature] = &[
    required("cgroup_skb programs", "4.10", Check::Program(SKB)),
    required(
        "BPF program arrays (tail calls)",
        "4.2",
        Check::Map(MapType::ProgramArray),
    ),
    required(
        "BPF per-CPU arrays",
        "4.6",
        Check::Map(MapType::PerCpuArray),
    ),
    required("BPF LRU hash maps", "4.10", Check::Map(MapType::LruHash)),
    required("BPF LPM trie maps", "4.11", Check::Map(MapType::LpmTrie)),
    required(
        "cgroup sock_addr programs (connect and sendmsg hooks)",
        "4.17",
        Check::Program(SOCK_ADDR),
    ),
    required(
        "bpf_skb_load_bytes in cgroup_skb programs",
        "4.10",
        Check::Helper(SKB, BpfHelper::BPF_FUNC_skb_load_bytes),
    ),
    required(
        "bpf_tail_call in cgroup_skb programs",
        "4.10",
        Check::Helper(SKB, BpfHelper::BPF_FUNC_tail_call),
    ),
    required(
        "bpf_get_socket_cookie in cgroup_skb programs",
        "4.12",
        Check::Helper(SKB, BpfHelper::BPF_FUNC_get_socket_cookie),
    ),
    required(
        "bpf_skb_cgroup_id in cgroup_skb programs",
        "4.18",
        Check::Helper(SKB, BpfHelper::BPF_FUNC_skb_cgroup_id),
    ),
    required(
        "cgroup sock programs (the socket creation hook)",
        "4.10",
        Check::Program(SOCK),
    ),
    required(
        "bpf_get_current_cgroup_id in cgroup sock programs",
        "5.8",
        Check::Helper(SOCK, BpfHelper::BPF_FUNC_get_current_cgroup_id),
    ),
    required(
        "bpf_ringbuf_reserve in cgroup sock programs",
        "5.8",
        Check::Helper(SOCK, BpfHelper::BPF_FUNC_ringbuf_reserve),
    ),
    required(
        "cgroup sockopt programs (the setsockopt hook)",
        "5.3",
        Check::Program(SOCKOPT),
    ),
    required(
        "cgroup bpf_links (BPF_LINK_CREATE)",
        "5.7",
        Check::Command(bpf_cmd::BPF_LINK_CREATE),
    ),
    required(
        "atomic program replacement in links (BPF_LINK_UPDATE)",
        "5.7",
        Check::Command(bpf_cmd::BPF_LINK_UPDATE),
    ),
    required(
        "bpf_get_netns_cookie in sock_addr programs",
        "5.7",
        Check::Helper(SOCK_ADDR, BpfHelper::BPF_FUNC_get_netns_cookie),
    ),
    required(
        "bpf_get_socket_cookie in sock_addr programs",
        "5.7",
        Check::Helper(SOCK_ADDR, BpfHelper::BPF_FUNC_get_socket_cookie),
    ),
    required(
        "bpf_get_current_cgroup_id in sock_addr programs",
        "5.7",
        Check::Helper(SOCK_ADDR, BpfHelper::BPF_FUNC_get_current_cgroup_id),
    ),
    // The next three are in 5.10 (the oldest kernel tested); when they reached sock_addr
    // programs is not recorded here, so the message names the tested version.
    required(
        "bpf_get_current_pid_tgid in sock_addr programs",
        "5.10",
        Check::Helper(SOCK_ADDR, BpfHelper::BPF_FUNC_get_current_pid_tgid),
    ),
    required(
        "bpf_get_current_uid_gid in sock_addr programs",
        "5.10",
        Check::Helper(SOCK_ADDR, BpfHelper::BPF_FUNC_get_current_uid_gid),
    ),
    required(
        "bpf_get_current_comm in sock_addr programs",
        "5.10",
        Check::Helper(SOCK_ADDR, BpfHelper::BPF_FUNC_get_current_comm),
    ),
    required("BPF ring buffers", "5.8", Check::Map(MapType::RingBuf)),
    required(
        "bpf_ringbuf_reserve in sock_addr programs",
        "5.8",
        Check::Helper(SOCK_ADDR, BpfHelper::BPF_FUNC_ringbuf_reserve),
    ),
    required(
        "bpf_ringbuf_reserve in cgroup_skb programs",
        "5.8",
        Check::Helper(SKB, BpfHelper::BPF_FUNC_ringbuf_reserve),
    ),
    required(
        "bpf_ktime_get_boot_ns in sock_addr programs",
        "5.8",
        Check::Helper(SOCK_ADDR, BpfHelper::BPF_FUNC_ktime_get_boot_ns),
    ),
    required(
        "bpf_ktime_get_boot_ns in cgroup_skb programs",
        "5.8",
        Check::Helper(SKB, BpfHelper::BPF_FUNC_ktime_get_boot_ns),
    ),
    // TLS names on learned addresses (`tls.rs`): all older than the oldest kernel ram runs on,
    // probed so that a kernel built without them says so by name.
    required("cgroup sock_ops programs", "4.13", Check::Program(SOCK_OPS)),
    required("BPF sock hash maps", "4.18", Check::Map(MapType::SockHash)),
    required("sk_msg programs", "4.17", Check::Program(SK_MSG)),
    required(
        "bpf_sock_hash_update in sock_ops programs",
        "4.18",
        Check::Helper(SOCK_OPS, BpfHelper::BPF_FUNC_sock_hash_update),
    ),
    required(
        "bpf_msg_cork_bytes in sk_msg programs",
        "4.17",
        Check::Helper(SK_MSG, BpfHelper::BPF_FUNC_msg_cork_bytes),
    ),
    required(
        "bpf_msg_pull_data in sk_msg programs",
        "4.17",
        Check::Helper(SK_MSG, BpfHelper::BPF_FUNC_msg_pull_data),
    ),
    required(
        "bpf_setsockopt in sock_ops programs (marking connections whose hello is judged)",
        "4.13",
        Check::Helper(SOCK_OPS, BpfHelper::BPF_FUNC_setsockopt),
    ),
    Feature {
        name: "SO_NETNS_COOKIE",
        since: "5.14",
        fallback: Some(
            "the daemon cannot name its network namespace: resolvers are trusted in the \
             initial network namespace only",
        ),
        check: Check::NetnsCookieSockopt,
    },
];

/// What the kernel said about one feature: `Ok(present)`, or why it could not be told.
#[derive(Debug)]
pub struct Finding {
    pub feature: &'static Feature,
    pub present: Result<bool, Unprobed>,
}

/// Why the probe could not tell whether the kernel has a feature (the load that follows will
/// name the program it fails on, if any).
#[derive(Debug, thiserror::Error)]
pub enum Unprobed {
    /// Asking for a program type or a helper failed (aya's program probes).
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// Asking for a map type failed (aya's map probe).
    #[error(transparent)]
    Map(#[from] SyscallError),
    /// bpf(2) answered neither EBADF nor EINVAL for a command.
    #[error("bpf command {command}: {error}")]
    Command { command: u32, error: io::Error },
}

/// Asks the kernel about every feature in [`FEATURES`]. Needs the privileges of the daemon
/// (and, before 5.11, a raised RLIMIT_MEMLOCK: map probes create maps).
pub fn probe() -> Vec<Finding> {
    FEATURES
        .iter()
        .map(|feature| Finding {
            feature,
            present: check(feature.check),
        })
        .collect()
}

fn check(check: Check) -> Result<bool, Unprobed> {
    match check {
        Check::Program(program) => Ok(is_program_supported(program)?),
        Check::Map(map) => Ok(is_map_supported(map)?),
        Check::Helper(program, helper) => Ok(is_helper_supported(program, helper)?),
        Check::Command(command) => {
            sys::command_supported(command).map_err(|error| Unprobed::Command {
                command: command as u32,
                error,
            })
        }
        Check::NetnsCookieSockopt => Ok(sys::own_netns_cookie().is_some()),
    }
}

/// The kernel cannot run ram: what it lacks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error(
        "ram needs Linux {MINIMUM_LINUX} or newer ({OLDEST_TESTED_LINUX} and newer are tested): \
         this kernel ({kernel}) lacks {}; run ram on a newer kernel (see README \"Supported \
         kernels\")",
        describe(.missing)
    )]
    Missing {
        kernel: String,
        /// (feature, the Linux version that brought it)
        missing: Vec<(&'static str, &'static str)>,
    },
}

fn describe(missing: &[(&'static str, &'static str)]) -> String {
    missing
        .iter()
        .map(|(name, since)| format!("{name} (Linux {since})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the probe decided: fallbacks taken and features it could not ask about, one line each.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub fallbacks: Vec<String>,
    pub unknown: Vec<String>,
}

/// Refuses a kernel that lacks a required feature; lists fallbacks and features that could not
/// be probed (those are left to the load, which names the program it fails on).
pub fn judge(kernel: &str, findings: &[Finding]) -> Result<Verdict, ProbeError> {
    let mut verdict = Verdict::default();
    let mut missing = Vec::new();
    for finding in findings {
        let feature = finding.feature;
        match (&finding.present, feature.fallback) {
            (Ok(true), _) => {}
            (Ok(false), None) => missing.push((feature.name, feature.since)),
            (Ok(false), Some(fallback)) => verdict.fallbacks.push(format!(
                "{} (Linux {}) is missing: {fallback}",
                feature.name, feature.since
            )),
            (Err(err), _) => verdict
                .unknown
                .push(format!("{}: could not probe: {err}", feature.name)),
        }
    }
    if missing.is_empty() {
        Ok(verdict)
    } else {
        Err(ProbeError::Missing {
            kernel: kernel.to_owned(),
            missing,
        })
    }
}

/// Whether BPF LSM programs run on this kernel (for `family_gate`): Linux 6.0+ (cgroup LSM
/// programs) with `bpf` among the active LSMs, read from the `lsm=` boot option, else
/// securityfs, else the kernel's build configuration (`CONFIG_LSM`, the default list).
/// `Err` says why not.
pub fn bpf_lsm_cgroup() -> Result<(), String> {
    let release = kernel_release();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version < (6, 0) {
        return Err(format!("Linux {release} has no cgroup LSM programs (6.0+)"));
    }
    let active = active_lsms().ok_or_else(|| {
        "the active LSMs are unknown (no lsm= boot option, securityfs not mounted, no kernel \
         configuration in /boot or /proc/config.gz)"
            .to_owned()
    })?;
    if active.split(',').any(|lsm| lsm.trim() == "bpf") {
        Ok(())
    } else {
        Err(format!(
            "the BPF LSM is not active (LSMs: {active}); add `bpf` to the `lsm=` boot option"
        ))
    }
}

fn active_lsms() -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(list) = cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix("lsm="))
    {
        return Some(list.to_owned());
    }
    if let Ok(list) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        return Some(list.trim().to_owned());
    }
    let config = std::fs::read_to_string(format!("/boot/config-{}", kernel_release()))
        .ok()
        .or_else(|| {
            // gzip, present wherever the kernel exposes its configuration compressed.
            let output = std::process::Command::new("gzip")
                .args(["-dc", "/proc/config.gz"])
                .output()
                .ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
        })?;
    config.lines().find_map(|line| {
        line.strip_prefix("CONFIG_LSM=")
            .map(|list| list.trim_matches('"').to_owned())
    })
}

/// This kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Probes the kernel and judges it: the start-up check of the daemon. Logs fallbacks and what
/// could not be probed, and one line with the result.
pub fn check_kernel() -> Result<(), ProbeError> {
    let kernel = kernel_release();
    let findings = probe();
    let verdict = judge(&kernel, &findings)?;
    for line in &verdict.fallbacks {
        log::info!("probe: {line}");
    }
    for line in &verdict.unknown {
        log::warn!("probe: {line}");
    }
    let present = findings
        .iter()
        .filter(|f| matches!(f.present, Ok(true)))
        .count();
    log::info!(
        "probe: Linux {kernel}: {present} of {} kernel features present, {} fallback(s)",
        findings.len(),
        verdict.fallbacks.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(absent: &[&str], unknown: &[&str]) -> Vec<Finding> {
        FEATURES
            .iter()
            .map(|feature| Finding {
                feature,
                present: if unknown.contains(&feature.name) {
                    Err(Unprobed::Map(SyscallError {
                        call: "bpf_map_create",
                        io_error: io::Error::from_raw_os_error(libc::EPERM),
                    }))
                } else {
                    Ok(!absent.contains(&feature.name))
                },
            })
            .collect()
    }

    #[test]
    fn a_kernel_with_everything_passes() {
        assert_eq!(judge("6.18.0", &findings(&[], &[])), Ok(Verdict::default()));
    }

    #[test]
    fn a_kernel_without_ring_buffers_is_refused_by_name_and_version() {
        // What Linux 4.19 (Debian buster) lacks of ram's needs.
        let absent = [
            "BPF ring buffers",
            "cgroup bpf_links (BPF_LINK_CREATE)",
            "bpf_ringbuf_reserve in sock_addr programs",
        ];
        let err = judge("4.19.0-27-cloud-amd64", &findings(&absent, &[])).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(
                "ram needs Linux 5.8 or newer (5.10 and newer are tested): this kernel \
                 (4.19.0-27-cloud-amd64) lacks cgroup bpf_links (BPF_LINK_CREATE) (Linux 5.7), "
            ),
            "{message}"
        );
        assert!(
            message.contains("BPF ring buffers (Linux 5.8)"),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
    }

    #[test]
    fn a_missing_feature_with_a_fallback_is_noted_not_refused() {
        let verdict = judge("5.10.0", &findings(&["SO_NETNS_COOKIE"], &[])).unwrap();
        assert_eq!(verdict.fallbacks.len(), 1);
        assert!(verdict.fallbacks[0].starts_with("SO_NETNS_COOKIE (Linux 5.14) is missing: "));
    }

    #[test]
    fn what_cannot_be_probed_is_left_to_the_load() {
        let verdict = judge("6.1.0", &findings(&[], &["BPF ring buffers"])).unwrap();
        assert_eq!(
            verdict.unknown,
            ["BPF ring buffers: could not probe: `bpf_map_create` failed"]
        );
    }

    /// The real probe on the kernel running the tests (it creates maps and loads trivial
    /// programs, attaches nothing): everything ram needs is found.
    #[test]
    fn this_kernel_has_everything_ram_needs() {
        if sys::effective_uid() != 0 {
            eprintln!("skipped: probing the kernel needs root");
            return;
        }
        for finding in probe() {
            assert!(
                matches!(finding.present, Ok(true)) || finding.feature.fallback.is_some(),
                "{finding:?}"
            );
        }
        // And the checks can say no: bpf_bind exists for connect hooks only. (An unknown bpf
        // command is sys's test.)
        let bind = check(Check::Helper(SKB, BpfHelper::BPF_FUNC_bind));
        assert!(matches!(bind, Ok(false)), "{bind:?}");
    }

    #[test]
    fn every_feature_has_a_version_and_a_distinct_name() {
        let mut names = std::collections::HashSet::new();
        for feature in FEATURES {
            assert!(names.insert(feature.name), "{} twice", feature.name);
            let (major, minor) = feature.since.split_once('.').unwrap();
            assert!(major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok());
        }
    }
}
