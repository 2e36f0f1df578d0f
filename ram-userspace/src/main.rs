//! `ram`: the daemon and its command line.

mod control;
mod daemon;

use std::{
    collections::HashMap,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use ram::{
    cgroup::{self, CgroupDir, DEDICATED_CGROUP},
    policy::Policy,
    programs::{DEFAULT_PIN_DIR, GATES, PinDir, uninstall},
    protect, resolv,
};

use crate::control::{DEFAULT_RUN_DIR, Request, Response};

#[derive(Debug, Parser)]
#[command(
    name = "ram",
    version,
    about = "Registry Access Management for Linux: lets processes in enforced cgroups reach only \
             the destinations a policy allows"
)]
struct Cli {
    /// Where the daemon keeps its control socket and the copy of the policy in force.
    #[arg(long, global = true, value_name = "DIR", env = "RAM_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load ram's eBPF programs, enforce a policy on cgroups, and stay in the foreground.
    /// Enforcement is pinned in the kernel and stays when the daemon stops or dies; a restarted
    /// daemon takes it over without a gap; `ram uninstall` removes it.
    Daemon(DaemonArgs),
    /// Run a command inside an enforced cgroup (one a running `ram daemon` enforces).
    Exec(ExecArgs),
    /// What the daemon enforces: cgroups, policy, counters, map fill levels.
    Status(JsonArg),
    /// The addresses learned from DNS answers, with hostname, cgroup and expiry.
    Learned(JsonArg),
    /// Whether the policy in force allows HOST (a hostname or an address), and by which entry.
    Check {
        host: String,
        #[arg(long)]
        json: bool,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Remove ram's pinned programs, links and maps (ends enforcement everywhere) and its own
    /// cgroup if empty. Stop the daemon first.
    Uninstall {
        #[arg(long, value_name = "DIR", env = "RAM_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    /// Policy file (TOML), re-read when it changes and on SIGHUP. It must be owned by root and
    /// writable only by root, as must every directory above it. Without it, the embedded default
    /// policy (see `ram policy default`).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// cgroup v2 directory to enforce: a filesystem path, or a path relative to the cgroup2
    /// mount (`/system.slice/docker.service`). Repeatable. Without it, ram creates and enforces
    /// `ram.enforced` under the cgroup2 mount.
    #[arg(long = "cgroup", value_name = "PATH")]
    cgroups: Vec<PathBuf>,
    /// Append one JSON line per decision to FILE (created 0600; reopened on SIGHUP); `-` for
    /// stdout.
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// bpffs directory for the pinned programs, links and maps.
    #[arg(long, value_name = "DIR", env = "RAM_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Socket of the Docker authorization plugin (served when the policy enables
    /// image_access); dockerd finds plugins in /run/docker/plugins.
    #[arg(long, value_name = "PATH", default_value = ram::authz::DEFAULT_SOCKET)]
    authz_socket: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    /// The enforced cgroup to run in (same forms as `ram daemon --cgroup`).
    #[arg(long, value_name = "PATH", default_value = DEDICATED_CGROUP)]
    cgroup: PathBuf,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; prints what it allows, or the file, line and value at fault.
    Check { file: PathBuf },
    /// Print the embedded default policy.
    Default,
    /// Print the policy the running daemon enforces (any user may run this).
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let run_dir = cli.run_dir;
    let result = match cli.command {
        Command::Daemon(args) => run_daemon(args, run_dir),
        Command::Exec(args) => run_exec(args),
        Command::Status(JsonArg { json }) => show_status(&run_dir, json),
        Command::Learned(JsonArg { json }) => show_learned(&run_dir, json),
        Command::Check { host, json } => show_check(&run_dir, host, json),
        Command::Policy { command } => match command {
            PolicyCommand::Check { file } => check_policy(&file),
            PolicyCommand::Default => {
                print!("{}", ram::policy::DEFAULT_POLICY);
                Ok(())
            }
            PolicyCommand::Show => show_policy(&run_dir),
        },
        Command::Uninstall { pin_dir } => run_uninstall(&pin_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ram: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(args: DaemonArgs, run_dir: PathBuf) -> Result<()> {
    let mount = cgroup::cgroup2_mount()?;
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
    daemon::run(daemon::Options {
        policy: args.policy,
        cgroups,
        mount,
        audit_log: args.audit_log,
        pin_dir: args.pin_dir,
        run_dir,
        authz_socket: args.authz_socket,
    })
}

fn run_uninstall(pin_dir: &Path) -> Result<()> {
    let removed = uninstall(&PinDir::new(pin_dir))?;
    println!(
        "removed {} link(s), {} program(s) and {} map(s) under {}; nothing is enforced by ram now",
        removed.links,
        removed.programs,
        removed.maps,
        pin_dir.display()
    );
    // ram's own cgroup goes too, if this installation enforced it and nothing runs in it.
    if let Ok(mount) = cgroup::cgroup2_mount() {
        let own = mount.join(DEDICATED_CGROUP);
        let ours = std::fs::metadata(&own).is_ok_and(|m| {
            removed
                .cgroup_ids
                .contains(&std::os::unix::fs::MetadataExt::ino(&m))
        });
        if ours {
            match std::fs::remove_dir(&own) {
                Ok(()) => println!("removed cgroup {}", own.display()),
                Err(err) => println!(
                    "left cgroup {} in place ({err}); processes still run in it, unenforced",
                    own.display()
                ),
            }
        }
    }
    Ok(())
}

fn check_policy(file: &Path) -> Result<()> {
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
         {}..{} s plus {} s grace, at most {} of them; allowed connections audited: {}",
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
    );
    if let Err(err) = protect::check_policy_path(file) {
        println!("note: `ram daemon --policy` would refuse this file where it is: {err}");
    }
    Ok(())
}

fn show_policy(run_dir: &Path) -> Result<()> {
    let path = run_dir.join(control::POLICY_COPY_NAME);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; is the ram daemon running (`systemctl status ram`)?",
            path.display()
        )
    })?;
    print!("{text}");
    Ok(())
}

fn show_status(run_dir: &Path, json: bool) -> Result<()> {
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
         rule(s), resolvers: {}; allowed connections audited: {}",
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
        policy.allowed_audit
    );
    if let Some(rejected) = &policy.rejected {
        println!("  LAST CHANGE REJECTED (the policy above stays in force): {rejected}");
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

fn show_learned(run_dir: &Path, json: bool) -> Result<()> {
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
        println!(
            "{:<40} {:<28} {:<30} expires in {} s (rule `{}`)",
            entry.hostname.as_deref().unwrap_or("?"),
            entry.addr,
            entry
                .cgroup
                .clone()
                .unwrap_or_else(|| format!("cgroup id {}", entry.cgroup_id)),
            entry.expires_in_s,
            entry.rule.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

fn show_check(run_dir: &Path, host: String, json: bool) -> Result<()> {
    let Response::Check(answer) = control::ask(run_dir, &Request::Check { host })? else {
        bail!("the daemon answered something else than a check");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if answer.allowed {
        println!(
            "{}: allowed by {} entry `{}`{}: {}",
            answer.host,
            answer.kind.as_deref().unwrap_or("?"),
            answer.rule.as_deref().unwrap_or("?"),
            answer
                .rule_index
                .map(|i| format!(" (#{i})"))
                .unwrap_or_default(),
            answer.explanation
        );
    } else {
        println!("{}: denied: {}", answer.host, answer.explanation);
    }
    Ok(())
}

fn run_exec(args: ExecArgs) -> Result<()> {
    let mount = cgroup::cgroup2_mount()?;
    let dir = CgroupDir::resolve(&mount, &args.cgroup)?;
    ensure_enforced(&dir)?;
    dir.add_process(std::process::id())?;
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given; usage: ram exec -- CMD [ARGS]...")?;
    let err = std::process::Command::new(program).args(rest).exec();
    bail!("cannot run {}: {err}", program.to_string_lossy())
}

/// Refuses to run a command in a cgroup that no ram daemon enforces: it would run unrestricted.
fn ensure_enforced(dir: &CgroupDir) -> Result<()> {
    let file = dir.open()?;
    let loaded: HashMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .filter_map(|info| Some((info.id(), info.name_as_str()?.to_owned())))
        .collect();
    for gate in GATES {
        let ids = cgroup::attached_program_ids(&file, gate.attach_type)
            .with_context(|| format!("querying the programs attached to {}", dir.path.display()))?;
        if !ids
            .iter()
            .any(|id| loaded.get(id).is_some_and(|n| n == gate.name))
        {
            bail!(
                "cgroup {} is not enforced by ram (no {} program attached); start `ram daemon \
                 --cgroup {}` first",
                dir.path.display(),
                gate.name,
                dir.path.display()
            );
        }
    }
    Ok(())
}
