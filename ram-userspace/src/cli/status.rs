//! `ram status`: what the daemon enforces (cgroups, policy, container networks trusted for DNS,
//! counters, map fill levels).

use std::path::Path;

use anyhow::{Result, bail};
use ram::daemon::control::{self, Request, Response};

pub fn run(run_dir: &Path, json: bool, ready: bool) -> Result<()> {
    if ready {
        // The daemon answers its control socket only once the programs are attached and the
        // policy is in force; `enforcing` says it still is.
        return match control::ask(run_dir, &Request::Ready)? {
            Response::Ready { enforcing: true } => Ok(()),
            Response::Ready { enforcing: false } => {
                bail!("the daemon answers but is not enforcing")
            }
            _ => bail!("the daemon answered something else than its readiness"),
        };
    }
    let Response::Status(status) = control::ask(run_dir, &Request::Status)? else {
        bail!("the daemon answered something else than a status");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "ram: enforcing (daemon pid {}, since {})",
        status.pid, status.started
    );
    for warning in &status.warnings {
        println!("WARNING: {warning}");
    }
    println!("pinned state: {}", status.pin_dir.display());
    println!(
        "audit log: {}",
        status.audit_log.as_deref().unwrap_or("(none)")
    );
    println!("cgroups:");
    for cgroup in &status.cgroups {
        println!(
            "  {} (id {}){}: {}",
            cgroup.path,
            cgroup.id,
            if cgroup.present { "" } else { " [removed]" },
            cgroup.reason
        );
    }
    let policy = &status.policy;
    println!(
        "policy: {}\n  sha256 {}\n  loaded {} ({} reload(s))\n  {} hostname rule(s), {} address \
         rule(s), resolvers: {}; allowed connections audited: {}; TLS names: {}",
        policy.source,
        policy.sha256,
        policy.loaded,
        policy.reloads,
        policy.hostnames,
        policy.cidrs,
        if policy.resolvers.is_empty() {
            "none".to_string()
        } else {
            policy.resolvers.join(", ")
        },
        policy.allowed_audit,
        policy.tls
    );
    if let Some(rejected) = &policy.rejected {
        println!("  LAST CHANGE REJECTED (the policy above stays in force): {rejected}");
    }
    println!(
        "socket families: {}",
        if status.socket_families_refused {
            "packet sockets and families other than Unix, netlink, IPv4 and IPv6 refused (BPF LSM)"
        } else {
            "packet sockets NOT refused on this kernel (no BPF LSM; see docs/limits.md)"
        }
    );
    if !status.container_networks.is_empty() || status.container_networks_unreadable > 0 {
        println!(
            "container networks trusted for DNS ({} unreadable so far):",
            status.container_networks_unreadable
        );
        for network in &status.container_networks {
            let id = ram::cgroups::scope::short_id(&network.container);
            let label = match &network.name {
                Some(name) => format!("{name} ({id})"),
                None => id.to_owned(),
            };
            println!(
                "  container {label} (pid {}, netns inode {}): resolvers {}{}",
                network.pid,
                network.netns_inode,
                network.resolvers.join(", "),
                if network.net_raw {
                    " [has CAP_NET_RAW: can forge answers]"
                } else {
                    ""
                }
            );
        }
    }
    println!("counters:");
    for (name, value) in &status.counters {
        println!("  {name:<24} {value}");
    }
    println!("maps:");
    for fill in &status.maps {
        println!("  {:<24} {} / {}", fill.map, fill.used, fill.capacity);
    }
    Ok(())
}
