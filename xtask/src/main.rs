//! `cargo xtask`: everything ram needs besides cargo itself.
//!
//! - `setup [--build-only]`: installs the build and test requirements (idempotent; seconds when
//!   all is there); `--build-only`: only what compiling ram needs (see `setup.rs`).
//! - `daemon [ARGS]`: build set-up, build ram (release), run `ram daemon ARGS` in the foreground.
//! - `test`: setup, lint (without a filter), unit tests, the integration tests against the real
//!   kernel, then (without a filter) the kernel matrix.
//! - `lint`: `cargo fmt --check` and clippy with warnings denied (user space and ram-ebpf).
//! - `bench`: setup, build ram (release), run the side-by-side benchmarks.
//! - `chart`: `helm lint` the Helm chart and render deploy/kubernetes/ from it.
//! - `image [--tag T]`: build ram's container image (deploy/Dockerfile) with `docker build`.
//! - `deb [--ram PATH]`: build ram's Debian package into target/debian (see `package.rs`).

mod deploy;
mod matrix;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing ram needs: the build set-up (a C toolchain from
    /// Debian if missing, rust-src for the nightly toolchain, bpf-linker built against the
    /// nightly's own LLVM) and the test set-up (the Debian packages the tests use, and Debian's
    /// docker.io only when the machine has no Docker Engine of its own).
    Setup {
        /// Only the build set-up: what compiling ram needs (as `cargo xtask daemon` does); no
        /// Docker, no qemu.
        #[arg(long)]
        build_only: bool,
    },
    /// Build set-up (no test tools, no Docker), build `ram` (release) and run `ram daemon` with
    /// these arguments (none: the embedded default policy on the `ram.enforced` cgroup).
    Daemon {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the unit tests, the integration tests and (without a filter) the kernel
    /// matrix (root required).
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Set up, then run the benchmarks and print the ratios (root required).
    Bench {
        /// Only benchmarks whose name contains this (connect-loopback, dns-lookup,
        /// connect-learned, bulk-tcp, tls-request, bulk-tls, container-…, policy-reload,
        /// daemon-rss, gate-throughput, metrics-scrape).
        filter: Option<String>,
    },
    /// Check formatting and run clippy with warnings denied under the workspace lints: user
    /// space (eBPF build skipped) and ram-ebpf for its BPF target (nightly). Part of `test`.
    Lint,
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels in qemu with `ram` and report, per kernel,
    /// whether every program loads, attaches and enforces (root required; minutes).
    Matrix,
    /// Fuzz the kernel's DNS parsing code (ram_common::dns) with libFuzzer for SECONDS
    /// (build set-up only; installs cargo-fuzz if missing).
    Fuzz {
        #[arg(default_value_t = 60)]
        seconds: u32,
    },
    /// Lint the Helm chart (deploy/helm/ram) and render the plain manifests of
    /// deploy/kubernetes/ from it (installs helm into target/tools/helm if missing).
    Chart,
    /// Build ram's container image from a release binary, offline (deploy/Dockerfile, no base
    /// image): stage its context, then `docker build` against the engine DOCKER_HOST names.
    Image {
        /// The image's tag (default `ram:<version>`).
        #[arg(long)]
        tag: Option<String>,
        /// The ram binary to put in it (default: build target/release/ram).
        #[arg(long, value_name = "PATH")]
        ram: Option<PathBuf>,
        /// Where to stage the build context (default target/image).
        #[arg(long, value_name = "DIR")]
        context: Option<PathBuf>,
        /// Only stage the context (for another builder); no `docker build`.
        #[arg(long)]
        stage_only: bool,
    },
    /// Build ram's Debian package, target/debian/ram_<version>_<arch>.deb: the binary, the
    /// systemd unit and /etc/ram/policy.toml as a conffile (packaging/deb/build.sh, dpkg-deb).
    Deb {
        /// The ram binary to package (default: build target/release/ram).
        #[arg(long, value_name = "PATH")]
        ram: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup { build_only: true } => setup::build(),
        Task::Setup { build_only: false } => setup::all(),
        Task::Daemon { args } => daemon(&args),
        Task::Lint => setup::build().and_then(|()| lint()),
        Task::Test { filter } => test(filter.as_deref()),
        Task::Bench { filter } => bench(filter.as_deref()),
        Task::Fuzz { seconds } => fuzz(seconds),
        Task::Matrix => setup::all().and_then(|()| matrix::run()),
        Task::Chart => deploy::chart(),
        Task::Image {
            tag,
            ram,
            context,
            stage_only,
        } => deploy::image(&deploy::ImageArgs {
            tag,
            ram,
            context,
            stage_only,
        }),
        Task::Deb { ram } => package::deb(ram.as_deref()),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs `cmd`, failing with `step` in the message.
pub fn run(cmd: &mut Command, step: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{step}: cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{step} failed ({status}): {cmd:?}");
    }
    Ok(())
}

/// Where the cargo runs of [`cargo`] put what they build: `CARGO_TARGET_DIR` (relative to the
/// workspace, where they run) if set, else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(
            || workspace_root().join("target"),
            |dir| workspace_root().join(dir),
        )
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn build_ram(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "ram-userspace", "--bin", "ram"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd, "building ram")?;
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir().join(profile).join("ram"))
}

fn require_root(task: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {task}` loads eBPF programs and creates network namespaces: run it as root"
        );
    }
    Ok(())
}

fn daemon(args: &[String]) -> Result<()> {
    // Running ram needs what compiling it needs, nothing that only the tests use.
    setup::build()?;
    require_root("daemon")?;
    let ram = build_ram(true)?;
    let mut cmd = Command::new(&ram);
    cmd.arg("daemon").args(args);
    use std::os::unix::process::CommandExt as _;
    let err = cmd.exec();
    bail!("cannot run {}: {err}", ram.display())
}

fn test(filter: Option<&str>) -> Result<()> {
    setup::all()?;
    require_root("test")?;
    let ram = build_ram(false)?;
    // The whole suite starts with the cheapest check: formatting and lints.
    if filter.is_none() {
        lint()?;
    }

    let mut unit = cargo();
    unit.args([
        "test",
        "--package",
        "ram-common",
        "--package",
        "ram-userspace",
        "--package",
        "xtask",
    ]);
    if let Some(filter) = filter {
        unit.arg(filter);
    }
    run(&mut unit, "unit tests")?;

    // One test at a time: tests share the kernel's cgroup and netns namespaces and measure
    // timings; each cleans up after itself.
    let mut integration = cargo();
    integration
        .args([
            "test",
            "--no-fail-fast",
            "--package",
            "ram-tests",
            "--",
            "--test-threads=1",
        ])
        .env("RAM_BIN", &ram);
    if let Some(filter) = filter {
        integration.arg(filter);
    }
    run(&mut integration, "integration tests")?;

    // The whole suite also runs the kernel matrix (a few minutes: other kernels in VMs).
    if filter.is_none() {
        matrix::run()?;
    }
    Ok(())
}

/// `cargo fmt --check` and clippy with `-D warnings`, in target directories of their own (the
/// eBPF-less user-space build must not replace the real one).
fn lint() -> Result<()> {
    let target = workspace_root().join("target");
    run(
        cargo().args(["fmt", "--all", "--check"]),
        "cargo fmt --check",
    )?;
    run(
        cargo()
            .args([
                "clippy",
                "--package",
                "ram-common",
                "--package",
                "ram-userspace",
                "--package",
                "xtask",
                "--package",
                "ram-tests",
                "--all-targets",
                "--",
                "--deny",
                "warnings",
            ])
            .env("AYA_BUILD_SKIP", "1")
            .env("CARGO_TARGET_DIR", target.join("lint")),
        "clippy (user space)",
    )?;
    run(
        Command::new("rustup")
            .current_dir(workspace_root().join("ram-ebpf"))
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "--deny",
                "warnings",
            ])
            .env("CARGO_TARGET_DIR", target.join("lint-ebpf")),
        "clippy (ram-ebpf, BPF target)",
    )
}

fn bench(filter: Option<&str>) -> Result<()> {
    setup::all()?;
    require_root("bench")?;
    let ram = build_ram(true)?;
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "--package",
        "ram-tests",
        "--bin",
        "ram-bench",
    ])
    .args(filter)
    .env("RAM_BIN", &ram);
    run(&mut cmd, "benchmarks")
}

fn fuzz(seconds: u32) -> Result<()> {
    setup::build()?;
    let have_cargo_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_cargo_fuzz {
        run(
            cargo().args(["install", "cargo-fuzz", "--locked"]),
            "cargo install cargo-fuzz",
        )?;
    }
    // Each target gets the time asked for: the DNS answers and the TLS ClientHellos are the
    // untrusted bytes the kernel programs parse.
    for target in ["dns_answer", "tls_hello"] {
        run(
            Command::new("rustup")
                .current_dir(workspace_root())
                .args(["run", "nightly", "cargo", "fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={seconds}")),
            &format!("fuzzing {target}"),
        )?;
    }
    Ok(())
}
