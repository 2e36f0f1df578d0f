//! The command line: argument definitions here, one file per command.

mod check;
mod daemon;
mod exec;
mod image_access;
mod learned;
mod policy;
mod status;
mod uninstall;

use std::{ffi::OsString, path::PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use ram::{
    cgroups::DEDICATED_CGROUP, daemon::control::DEFAULT_RUN_DIR, docker::authz,
    kernel::DEFAULT_PIN_DIR,
};

#[derive(Debug, Parser)]
#[command(
    name = "ram",
    version,
    about = "Registry Access Management for Linux: lets processes in enforced cgroups reach only \
             the destinations a policy allows"
)]
pub struct Cli {
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
    /// Run a command inside an enforced cgroup (one a running `ram daemon` enforces), without
    /// the capabilities that get around the programs, as the sudo user or `--user`.
    Exec(ExecArgs),
    /// What the daemon enforces: cgroups, policy, counters, map fill levels.
    Status(StatusArgs),
    /// The addresses learned from DNS answers, with hostname, cgroup and expiry.
    Learned(JsonArg),
    /// Whether the policy in force allows HOST (a hostname or an address), and by which entry;
    /// or, for an IMAGE reference, what image access decides (its category, allowed or denied,
    /// the exception that allowed it). An argument with `/` or `@`, or a `:` not followed by a
    /// port number (`busybox:1.36`), is an image; anything else a host.
    Check {
        #[arg(value_name = "HOST|IMAGE")]
        target: String,
        /// Take the argument for an image reference whatever it looks like (`--image busybox`:
        /// Docker Hub's official image, not a host named busybox).
        #[arg(long)]
        image: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Image Access Management on container engines.
    ImageAccess {
        #[command(subcommand)]
        command: ImageAccessCommand,
    },
    /// Remove ram's pinned programs, links and maps (ends enforcement everywhere) and its own
    /// cgroup if empty. Stop the daemon first.
    Uninstall {
        #[arg(long, value_name = "DIR", env = "RAM_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Wait (up to 5 minutes) for a daemon holding the pin directory to stop, uninstall,
        /// then stay in the foreground until SIGTERM or SIGINT and exit 0: the main process of
        /// the Kubernetes uninstall hook, which runs while the DaemonSet's daemons are being
        /// stopped and whose pod must not restart. A daemon still there after 5 minutes is
        /// left alone.
        #[arg(long)]
        then_wait: bool,
    },
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long, conflicts_with = "ready")]
    json: bool,
    /// Print nothing; exit 0 when the daemon answers with its programs attached and a policy
    /// in force, 1 otherwise (a readiness probe).
    #[arg(long)]
    ready: bool,
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
    #[arg(long, value_name = "PATH", default_value = authz::DEFAULT_SOCKET)]
    authz_socket: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    /// The enforced cgroup to run in (same forms as `ram daemon --cgroup`). It becomes the root
    /// of the command's cgroup namespace: no process of the command can be moved out of it.
    #[arg(long, value_name = "PATH", default_value = DEDICATED_CGROUP)]
    cgroup: PathBuf,
    /// Run the command as this user (a name, UID, or UID:GID); by default the user who ran
    /// `sudo`, else root. Whoever it runs as, it runs without the capabilities that could get
    /// around the programs (SYS_ADMIN, BPF, PERFMON, NET_ADMIN, NET_RAW, SYS_PTRACE,
    /// SYS_MODULE, SYS_RAWIO, DAC_READ_SEARCH). As root it could still leave the cgroup by
    /// writing another cgroup's cgroup.procs: `ram exec` says so.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
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

#[derive(Debug, Subcommand)]
enum ImageAccessCommand {
    /// Print the configuration that sends ENGINE's Docker Hub pulls through ram's pull gate
    /// (docker: daemon.json; containerd: certs.d hosts.toml; podman: registries.conf), for
    /// `--policy FILE`, else the policy in force, else the embedded default.
    Config {
        /// docker, containerd or podman (Podman's file serves CRI-O, Buildah and Skopeo too).
        engine: ram::docker::engines::Engine,
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
}

impl Cli {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        let run_dir = self.run_dir;
        match self.command {
            Command::Daemon(args) => daemon::run(args, run_dir),
            Command::Exec(args) => exec::run(args),
            Command::Status(StatusArgs { json, ready }) => status::run(&run_dir, json, ready),
            Command::Learned(JsonArg { json }) => learned::run(&run_dir, json),
            Command::Check {
                target,
                image,
                json,
            } => check::run(&run_dir, target, image, json),
            Command::Policy { command } => match command {
                PolicyCommand::Check { file } => policy::check(&file),
                PolicyCommand::Default => {
                    policy::print_default();
                    Ok(())
                }
                PolicyCommand::Show => policy::show(&run_dir),
            },
            Command::ImageAccess {
                command: ImageAccessCommand::Config { engine, policy },
            } => image_access::config(engine, policy.as_deref(), &run_dir),
            Command::Uninstall { pin_dir, then_wait } => {
                uninstall::run(&pin_dir, &run_dir, then_wait)
            }
        }
    }
}
