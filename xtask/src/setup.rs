//! `cargo xtask setup`: installs what building and testing ram needs, checking first so that a
//! second run takes seconds. Each step says what it does and fails with its own name.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::run as run_step;

/// Debian packages the build and the tests use.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip netns / veth for test hosts"),
    ("curl", "a real HTTP client in tests"),
    (
        "python3",
        "socket-level test clients and HTTP/UDP test servers",
    ),
    (
        "bpftool",
        "independent check of what is attached to a cgroup",
    ),
    ("dnsmasq-base", "a real DNS server on test hosts"),
    ("dnsutils", "dig, a real DNS client"),
    (
        "docker.io",
        "a real Docker Engine (dockerd, docker) for the end-to-end tests; started by the tests \
         only, in their own cgroup and mount namespace",
    ),
    (
        "docker-registry",
        "real registries (distribution) on test hosts",
    ),
    (
        "docker-compose",
        "Docker Compose, for the Image Access Management tests",
    ),
    ("qemu-system-x86", "the kernel matrix: other kernels in VMs"),
    ("busybox-static", "the kernel matrix VMs' userland"),
    ("cpio", "packing the kernel matrix VMs' initramfs"),
];

/// Debian's policy-rc.d: while it exits 101, package scripts start no services. Set during
/// the install so that installing docker.io never starts a system-wide Docker Engine.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// bpf-linker release used to link the BPF object (its `llvm-NN` features select the LLVM).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors that BPF_LINKER_VERSION can be built against.
const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];
/// The toolchain that compiles ram-ebpf (aya-build's default).
const EBPF_TOOLCHAIN: &str = "nightly";

pub fn run() -> Result<()> {
    apt_packages().context("step `apt packages`")?;
    nightly_rust_src().context("step `rust-src for the nightly toolchain`")?;
    bpf_linker().context("step `bpf-linker`")?;
    Ok(())
}

fn say(message: &str) {
    eprintln!("xtask setup: {message}");
}

fn apt_packages() -> Result<()> {
    let names: Vec<&str> = APT_PACKAGES.iter().map(|(name, _)| *name).collect();
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(&names)
        .output()
        .context("dpkg-query not found: ram's set-up supports Debian-based systems")?;
    let listed = String::from_utf8_lossy(&output.stdout);
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| {
            !listed.lines().any(|line| {
                let mut words = line.split_whitespace();
                words.next() == Some(*name) && words.next().is_some_and(|s| s.starts_with("ii"))
            })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run_step(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    let made_policy_rc_d = !Path::new(POLICY_RC_D).exists();
    if made_policy_rc_d {
        fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# ram's xtask setup: start no services\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))?;
    }
    let installed = run_step(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    );
    if made_policy_rc_d {
        let _ = fs::remove_file(POLICY_RC_D);
    }
    // policy-rc.d only kept the engine from starting now; where systemd runs, the package
    // also enabled it for the next boot. The tests start their own engines and refuse to run
    // next to a system-wide one, so switch those units off again (only when this run installed
    // the engine: an engine the machine had before is not ours to touch).
    if missing.contains(&"docker.io") && Path::new("/run/systemd/system").exists() {
        say("disabling the docker and containerd units the docker.io package enabled");
        let _ = Command::new("systemctl")
            .args([
                "disable",
                "--now",
                "docker.service",
                "docker.socket",
                "containerd.service",
            ])
            .status();
    }
    installed
}

fn rustc_nightly(args: &[&str]) -> Result<String> {
    let output = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc"])
        .args(args)
        .output()
        .context("rustup not found; install Rust with rustup")?;
    if !output.status.success() {
        bail!(
            "the `{EBPF_TOOLCHAIN}` toolchain is missing (it compiles the eBPF programs); install \
             it with `rustup toolchain install {EBPF_TOOLCHAIN} --component rust-src`: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = PathBuf::from(rustc_nightly(&["--print", "sysroot"])?);
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Ok(());
    }
    say("adding rust-src to the nightly toolchain (for -Z build-std=core)");
    run_step(
        Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]),
        "rustup component add rust-src",
    )
}

/// The LLVM major version of the nightly compiler, from `rustc -vV`.
pub fn llvm_major(version_verbose: &str) -> Option<u32> {
    version_verbose
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

/// bpf-linker must be linked against an LLVM whose major equals the nightly's: the nightly
/// writes LLVM bitcode that bpf-linker reads. The nightly ships its own libLLVM (exporting the
/// C API and the BPF target), so bpf-linker is built against exactly that file: LLVM_PREFIX
/// points at a folder whose lib/ has two links to it, `libLLVM.so` for the link step and one
/// under its own name, the soname found at run time through bpf-linker's rpath.
fn bpf_linker() -> Result<()> {
    let version_verbose = rustc_nightly(&["-vV"])?;
    let major = llvm_major(&version_verbose)
        .ok_or_else(|| anyhow!("no `LLVM version` in `rustc +{EBPF_TOOLCHAIN} -vV`"))?;
    if !BPF_LINKER_LLVM_MAJORS.contains(&major) {
        bail!(
            "the {EBPF_TOOLCHAIN} toolchain uses LLVM {major}, but bpf-linker {BPF_LINKER_VERSION} \
             supports LLVM {BPF_LINKER_LLVM_MAJORS:?}; update BPF_LINKER_VERSION in \
             xtask/src/setup.rs"
        );
    }
    let sysroot = PathBuf::from(rustc_nightly(&["--print", "sysroot"])?);
    let libllvm = find_libllvm(&sysroot.join("lib"), major)?;
    let soname = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("odd libLLVM file name {}", libllvm.display()))?
        .to_owned();

    let installed = cargo_home().join("bin/bpf-linker");
    if linker_uses(&installed, &soname) {
        return Ok(());
    }

    let prefix = cargo_home().join("ram-llvm").join(&soname);
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in ["libLLVM.so", soname.as_str()] {
        let path = lib.join(link);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(&libllvm, &path)
            .with_context(|| format!("linking {} to {}", path.display(), libllvm.display()))?;
    }
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({soname}); \
         about a minute"
    ));
    run_step(
        Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["install", "bpf-linker", "--locked", "--force", "--version"])
            .arg(BPF_LINKER_VERSION)
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            // Built with the stable toolchain: the nightly is only for the BPF target.
            .env_remove("RUSTUP_TOOLCHAIN"),
        "cargo install bpf-linker",
    )?;
    if !linker_uses(&installed, &soname) {
        bail!(
            "bpf-linker was installed to {} but does not load {soname}; is {} first on PATH?",
            installed.display(),
            cargo_home().join("bin").display()
        );
    }
    Ok(())
}

/// The nightly's `libLLVM.so.<major>.<minor>-rust-...` (not the `libLLVM-<major>-rust` alias).
fn find_libllvm(lib_dir: &Path, major: u32) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{major}.");
    fs::read_dir(lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .ok_or_else(|| {
            anyhow!(
                "no {prefix}* in {}: this nightly does not ship its LLVM as a shared library",
                lib_dir.display()
            )
        })
}

/// Whether `linker` runs and resolves `soname` (ldd shows `soname => /path`, not `not found`).
fn linker_uses(linker: &Path, soname: &str) -> bool {
    if !linker.exists() {
        return false;
    }
    let Ok(output) = Command::new("ldd").arg(linker).output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let resolved = text.lines().any(|line| {
        let line = line.trim();
        line.starts_with(soname) && line.contains("=> /")
    });
    resolved
        && Command::new(linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_version() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: \
                    x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(text), Some(22));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }
}
