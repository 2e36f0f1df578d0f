//! Builds `ram-ebpf` for the BPF target (nightly, `-Z build-std=core`, bpf-linker) and leaves the
//! object in OUT_DIR, where `src/programs.rs` embeds it: a user never handles a `.o` file.
//!
//! The build is aya-build 0.2.0's `build_ebpf` (same cargo command, environment and target
//! directory), run here with its output captured. aya-build forwards every line the inner cargo
//! prints (`Compiling …`, `Finished …`) as `cargo:warning=`, and cargo replays a build script's
//! warnings on every later build, fresh or not: thirty `warning: ram-userspace@0.1.0:` lines
//! each time, for nothing wrong. Here a successful build prints only what rustc warns about in
//! the eBPF code; a failed one prints everything the inner cargo said, then fails.

use std::{
    env,
    ffi::OsString,
    fs,
    io::{BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;
use cargo_metadata::{
    Artifact, CompilerMessage, Message, Target, camino::Utf8PathBuf, diagnostic::DiagnosticLevel,
};

const EBPF_PACKAGE: &str = "ram-ebpf";
const AYA_BUILD_SKIP: &str = "AYA_BUILD_SKIP";

fn main() -> anyhow::Result<()> {
    // `AYA_BUILD_SKIP=1` (aya-build's switch) lets `cargo check`/`clippy` run without the eBPF
    // toolchain; the resulting binary refuses to start and says why (see src/programs.rs).
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if env::var(AYA_BUILD_SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(out_dir.join(EBPF_PACKAGE), []).context("writing the empty eBPF stub")?;
        return aya_build::build_ebpf([], Toolchain::default());
    }
    println!("cargo:rerun-if-env-changed={AYA_BUILD_SKIP}");
    if which::which("bpf-linker").is_err() {
        fail(
            "bpf-linker is not on PATH; it links ram's eBPF programs. \
             Run `cargo xtask setup` (installs it and the other build requirements).",
        );
    }

    let cargo_metadata::Metadata {
        packages,
        workspace_root,
        ..
    } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;

    // Rebuild when the eBPF crate, a crate of this workspace it uses (ram-common) or the
    // workspace manifest (its profile for ram-ebpf) changes; cargo scans directories whole.
    // The inner cargo is incremental, so a rerun that changes nothing takes about a second.
    println!("cargo:rerun-if-changed={root_dir}");
    for path in ebpf_package
        .dependencies
        .iter()
        .filter_map(|dependency| dependency.path.as_ref())
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace_root.join("Cargo.toml")
    );

    let built = build_ebpf(EBPF_PACKAGE, &out_dir, Toolchain::default());
    let Build {
        ok,
        executables,
        diagnostics,
        stderr,
        command,
    } = built?;
    if !ok {
        // A failing build script's stderr is shown by cargo whole, below its error.
        eprintln!("{command}\n");
        for diagnostic in &diagnostics {
            eprintln!("{}", diagnostic.text);
        }
        eprintln!("{stderr}");
        fail(&format!(
            "building the eBPF programs ({EBPF_PACKAGE}) failed; the compiler's output is above. \
             If the toolchain is incomplete, run `cargo xtask setup --build-only`."
        ));
    }
    // What rustc warns about in the eBPF code is worth seeing, as for any crate; the inner
    // cargo's progress lines are not.
    for diagnostic in diagnostics.iter().filter(|d| d.warning) {
        for line in diagnostic.text.trim_end().lines() {
            println!("cargo:warning={line}");
        }
    }
    for (name, binary) in executables {
        let dst = out_dir.join(name);
        fs::copy(&binary, &dst)
            .with_context(|| format!("failed to copy {} to {}", binary.display(), dst.display()))?;
    }
    Ok(())
}

/// Fails the build with `message` on stderr, which cargo shows. Not an `Err` from `main`: with
/// RUST_BACKTRACE set, its backtrace would bury the message.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

struct Diagnostic {
    warning: bool,
    text: String,
}

/// What the inner cargo did.
struct Build {
    ok: bool,
    /// Binary target name and path.
    executables: Vec<(String, PathBuf)>,
    /// rustc's messages, rendered.
    diagnostics: Vec<Diagnostic>,
    /// The inner cargo's own output (progress, its errors).
    stderr: String,
    command: String,
}

/// aya-build 0.2.0's `build_ebpf` for one package without features, with the output kept.
fn build_ebpf(name: &str, out_dir: &Path, toolchain: Toolchain<'_>) -> anyhow::Result<Build> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let target = match endian.as_str() {
        "big" => "bpfeb-unknown-none",
        "little" => "bpfel-unknown-none",
        other => bail!("unsupported endian={other}"),
    };
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let bpf_target_arch = if target_arch.starts_with("riscv64") {
        "riscv64"
    } else {
        target_arch.as_str()
    };

    let toolchain = match toolchain {
        Toolchain::Nightly => "nightly",
        Toolchain::Custom(toolchain) => toolchain,
    };
    // Through `rustup run TOOLCHAIN` where rustup is; else the current toolchain.
    let rustup = which::which("rustup").ok();
    let tool = |program: &str| match &rustup {
        Some(rustup) => {
            let mut cmd = Command::new(rustup);
            cmd.args(["run", toolchain, program]);
            cmd
        }
        None => Command::new(program),
    };

    // `-Z build-std=core` where unstable options are allowed: a nightly, or RUSTC_BOOTSTRAP.
    let version = tool("rustc")
        .arg("-vV")
        .output()
        .context("running `rustc -vV` of the eBPF toolchain")?;
    if !version.status.success() {
        bail!(
            "`rustc -vV` of the `{toolchain}` toolchain failed (is it installed? `cargo xtask \
             setup --build-only`): {}",
            String::from_utf8_lossy(&version.stderr).trim()
        );
    }
    let nightly = String::from_utf8_lossy(&version.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("release: "))
        .any(|release| release.trim().ends_with("-nightly"));
    let use_build_std = match env::var_os("RUSTC_BOOTSTRAP") {
        Some(bootstrap) if bootstrap == "1" || bootstrap == name => true,
        Some(bootstrap) if bootstrap == "-1" => false,
        _ => nightly,
    };

    let mut cmd = tool("cargo");
    cmd.args([
        "build",
        "--package",
        name,
        "--bins",
        "--message-format=json",
        "--release",
        "--target",
        target,
    ]);
    if use_build_std {
        cmd.args(["-Z", "build-std=core"]);
    }
    cmd.args(["--features", ""]);
    let mut rustflags = OsString::new();
    for flag in [
        &format!("--cfg=bpf_target_arch=\"{bpf_target_arch}\""),
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ] {
        if !rustflags.is_empty() {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The eBPF toolchain's own rustc, not the one cargo chose for this build.
    cmd.env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    // Not the outer target directory (cargo would wait for its own lock): aya-build's, so
    // that builds made before this file replaced it stay fresh.
    cmd.arg("--target-dir")
        .arg(out_dir.join("aya-build").join("target").join(name));
    let command = format!("{cmd:?}");

    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to spawn {command}"))?;
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut executables = Vec::new();
    let mut diagnostics = Vec::new();
    let mut other_lines = Vec::new();
    for message in Message::parse_stream(stdout) {
        match message.context("reading the eBPF build's output")? {
            Message::CompilerArtifact(Artifact {
                executable: Some(executable),
                target: Target { name, .. },
                ..
            }) => executables.push((name, Utf8PathBuf::into_std_path_buf(executable))),
            Message::CompilerMessage(CompilerMessage { message, .. }) => {
                diagnostics.push(Diagnostic {
                    warning: message.level == DiagnosticLevel::Warning,
                    text: message.rendered.unwrap_or(message.message),
                });
            }
            Message::TextLine(line) => other_lines.push(line),
            _ => {}
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("failed to wait for {command}"))?;
    let mut stderr = stderr_reader.join().unwrap_or_default();
    for line in other_lines {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    Ok(Build {
        ok: status.success(),
        executables,
        diagnostics,
        stderr,
        command: format!("{command}: {status}"),
    })
}
