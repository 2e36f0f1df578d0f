//! `ram policy check|default|show`: validate a file, print the embedded default, print the
//! policy the daemon enforces.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use ram::{
    daemon::control,
    policy::{DEFAULT_POLICY, Policy, protect, resolv},
};

pub fn print_default() {
    print!("{DEFAULT_POLICY}");
}

pub fn check(file: &Path) -> Result<()> {
    let policy = Policy::from_file(file)?;
    let access = &policy.registry_access;
    let resolvers = match &policy.dns.resolvers {
        Some(list) => list
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        None => format!("the nameservers of {}", resolv::RESOLV_CONF),
    };
    let dns = &policy.dns;
    println!(
        "{}: ok: {} hostname(s), {} CIDR(s), loopback {}, resolvers: {}; learned addresses live \
         {}..{} s plus {} s grace, at most {} of them; allowed connections audited: {}; DNS \
         queries: {}; ping: {}; TLS names: {}",
        file.display(),
        access.allow.len(),
        access.allow_cidrs.len(),
        if access.allow_loopback {
            "allowed"
        } else {
            "denied"
        },
        resolvers,
        dns.min_ttl,
        dns.max_ttl,
        dns.grace_period,
        dns.max_learned,
        policy.audit.allowed.as_str(),
        match dns.queries {
            ram::policy::DnsQueries::Allowed => "allowed names only",
            ram::policy::DnsQueries::Any => "any name",
        },
        if access.allow_ping {
            "allowed"
        } else {
            "refused"
        },
        access.tls.as_str(),
    );
    match &access.push {
        None => println!("pushes: unrestricted (no registry_access.push)"),
        Some(rules) if rules.is_empty() => {
            println!("pushes: none allowed (registry_access.push = [])");
        }
        Some(rules) => {
            let rules: Vec<String> = rules.iter().map(ToString::to_string).collect();
            println!("pushes allowed to: {}", rules.join(", "));
        }
    }
    if access.push.is_some() && !policy.image_access.enabled {
        println!(
            "note: registry_access.push is judged by the authorization plugin, which ram serves \
             only with image_access.enabled = true: pushes are not judged with this policy"
        );
    }
    if let Err(err) = protect::check_policy_path(file) {
        println!("note: `ram daemon --policy` would refuse this file where it is: {err}");
    }
    Ok(())
}

pub fn show(run_dir: &Path) -> Result<()> {
    let path = run_dir.join(control::POLICY_COPY_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "no policy is in force: {} does not exist (ram's daemon has not run since boot, or \
             `ram uninstall` ended its enforcement; see `systemctl status ram`)",
            path.display()
        ),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    print!("{text}");
    Ok(())
}
