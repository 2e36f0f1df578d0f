//! `ram daemon`: resolves the cgroups to enforce, then runs the daemon in the foreground.

use std::path::PathBuf;

use anyhow::Result;
use ram::{
    cgroups::{self, CgroupDir},
    daemon,
};

use super::DaemonArgs;

pub fn run(args: DaemonArgs, run_dir: PathBuf) -> Result<()> {
    let mount = cgroups::cgroup2_mount()?;
    let mut cgroups: Vec<(CgroupDir, String)> = Vec::new();
    if args.cgroups.is_empty() {
        let (dir, _created) = CgroupDir::ensure_dedicated(&mount)?;
        cgroups.push((dir, "ram's own cgroup (no --cgroup given)".into()));
    } else {
        for given in &args.cgroups {
            let dir = CgroupDir::resolve(&mount, given)?;
            if !cgroups.iter().any(|(d, _)| *d == dir) {
                cgroups.push((dir, format!("--cgroup {}", given.display())));
            }
        }
    }
    Ok(daemon::run(daemon::Options {
        policy: args.policy,
        cgroups,
        mount,
        audit_log: args.audit_log,
        pin_dir: args.pin_dir,
        run_dir,
        authz_socket: args.authz_socket,
    })?)
}
