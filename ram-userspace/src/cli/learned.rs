//! `ram learned`: the addresses learned from DNS answers, with the names that taught each,
//! cgroup and expiry.

use std::path::Path;

use anyhow::{Result, bail};
use ram::daemon::control::{self, Request, Response};

pub fn run(run_dir: &Path, json: bool) -> Result<()> {
    let Response::Learned { entries } = control::ask(run_dir, &Request::Learned)? else {
        bail!("the daemon answered something else than the learned addresses");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no learned addresses");
    }
    for entry in &entries {
        let mut ports = [0u16; 4];
        for (slot, port) in ports.iter_mut().zip(&entry.ports) {
            *slot = *port;
        }
        // The names whose answers taught the address to this cgroup (a shared front end may
        // have several), else the last name it was seen for.
        let names = if !entry.names.is_empty() {
            entry.names.join(", ")
        } else {
            entry.hostname.clone().unwrap_or_else(|| "?".into())
        };
        println!(
            "{:<40} {:<28} {:<30} {}, expires in {} s (rule `{}`)",
            names,
            entry.addr,
            entry
                .cgroup
                .clone()
                .unwrap_or_else(|| format!("cgroup id {}", entry.cgroup_id)),
            ram::compile::ports_text(&ports),
            entry.expires_in_s,
            entry.rule.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}
