//! Deployment artifacts: the container image (`cargo xtask image`) and the Kubernetes manifests
//! rendered from the Helm chart (`cargo xtask chart`).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{run, setup, workspace_root};

/// The chart, relative to the workspace.
const CHART: &str = "deploy/helm/ram";
/// The release name and namespace the plain manifests are rendered for.
const RELEASE: &str = "ram";
const NAMESPACE: &str = "kube-system";
/// The plain manifests: the daemon's objects, and (apart, never applied with them) the
/// uninstall hook.
const MANIFEST: &str = "deploy/kubernetes/ram.yaml";
const UNINSTALL_MANIFEST: &str = "deploy/kubernetes/ram-uninstall.yaml";

/// `cargo xtask chart`: `helm lint` the chart, then render the plain manifests again.
pub fn chart() -> Result<()> {
    let helm = setup::helm()?;
    let root = workspace_root();
    run(
        Command::new(&helm)
            .current_dir(&root)
            .args(["lint", "--strict", CHART]),
        "helm lint",
    )?;
    let render = |extra: &[&str]| -> Result<String> {
        let output = Command::new(&helm)
            .current_dir(&root)
            .args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
            .args(extra)
            .output()
            .context("running helm template")?;
        if !output.status.success() {
            bail!(
                "helm template failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    };
    let manifest = format!(
        "{}{}",
        manifest_header(
            "--no-hooks",
            &["The daemon's objects; the uninstall hook is apart, in ram-uninstall.yaml."],
        ),
        render(&["--no-hooks"])?
    );
    let uninstall = format!(
        "{}{}",
        manifest_header(
            "--show-only templates/uninstall.yaml",
            &[
                "Helm's pre-delete hook, as a plain manifest: apply it, then delete the objects",
                "of ram.yaml; it uninstalls once each node's daemon has stopped",
                "(docs/kubernetes.md, \"Uninstall\").",
            ],
        ),
        render(&["--show-only", "templates/uninstall.yaml"])?
    );
    for (path, text) in [(MANIFEST, manifest), (UNINSTALL_MANIFEST, uninstall)] {
        let path = root.join(path);
        fs::create_dir_all(path.parent().expect("a manifest's directory"))?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("xtask chart: rendered {}", path.display());
    }
    Ok(())
}

/// The comment that opens each rendered manifest; the chart's tests compare what follows it
/// with `helm template` byte for byte.
fn manifest_header(options: &str, what: &[&str]) -> String {
    let mut header = format!(
        "# Rendered from the Helm chart {CHART} with its default values by `cargo xtask chart`:\n\
         #   helm template {RELEASE} {CHART} --namespace {NAMESPACE} {options}\n"
    );
    for line in what {
        header.push_str(&format!("# {line}\n"));
    }
    header.push_str(
        "# Do not edit: change the chart and run `cargo xtask chart` (docs/kubernetes.md).\n",
    );
    header
}

/// The files of the image besides ram and its libraries (see deploy/Dockerfile).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const NSSWITCH: &str = "hosts: files dns\n";
/// Programs ram runs: gzip, for /proc/config.gz (kernel::probe).
const HELPERS: &[&str] = &["gzip"];

/// What `cargo xtask image` was asked for.
pub struct ImageArgs {
    pub tag: Option<String>,
    pub ram: Option<PathBuf>,
    pub context: Option<PathBuf>,
    pub stage_only: bool,
}

/// `cargo xtask image`: stages the image's build context (deploy/Dockerfile and a root file
/// system: ram, the libraries ldd lists, gzip, the CA bundle, nsswitch.conf, empty
/// directories), then builds it with `docker build` against the engine DOCKER_HOST names (the
/// local one without it).
pub fn image(args: &ImageArgs) -> Result<()> {
    let ram = match &args.ram {
        Some(ram) => ram.clone(),
        None => crate::build_ram(true)?,
    };
    let context = args
        .context
        .clone()
        .unwrap_or_else(|| crate::target_dir().join("image"));
    stage(&ram, &context).context("staging the image's build context")?;
    eprintln!("xtask image: build context staged in {}", context.display());
    if args.stage_only {
        return Ok(());
    }
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| format!("ram:{}", env!("CARGO_PKG_VERSION")));
    // Debian's docker CLI where there is one: it matches Debian's engine, and builds without
    // the buildx plugin that newer CLIs require.
    let docker = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    let id_file = context.join("image-id");
    run(
        Command::new(docker)
            .arg("build")
            .arg("--tag")
            .arg(&tag)
            .arg("--iidfile")
            .arg(&id_file)
            .arg(&context),
        "docker build",
    )?;
    let id = fs::read_to_string(&id_file).unwrap_or_default();
    eprintln!("xtask image: built {tag} ({})", id.trim());
    Ok(())
}

/// Lays out `context`: the Dockerfile and `rootfs/`. Replaces what was there.
fn stage(ram: &Path, context: &Path) -> Result<()> {
    if !ram.is_file() {
        bail!("no ram binary at {}", ram.display());
    }
    if context.exists() {
        fs::remove_dir_all(context).with_context(|| format!("removing {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    for dir in ["usr/bin", "etc/ram", "etc/ssl/certs", "run/ram", "tmp"] {
        let path = rootfs.join(dir);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    }

    let mut binaries = vec![(ram.to_owned(), "usr/bin/ram".to_owned())];
    for helper in HELPERS {
        let path = which(helper)
            .with_context(|| format!("{helper} is not installed (Debian package {helper})"))?;
        binaries.push((path, format!("usr/bin/{helper}")));
    }
    for (source, target) in &binaries {
        copy(source, &rootfs.join(target), 0o755)?;
        for library in shared_libraries(source)? {
            let target = rootfs.join(library.strip_prefix("/").unwrap_or(&library));
            if !target.exists() {
                copy(&library, &target, 0o755)?;
            }
        }
    }
    copy(
        Path::new(CA_BUNDLE),
        &rootfs.join(CA_BUNDLE.trim_start_matches('/')),
        0o644,
    )
    .context("the CA bundle (Debian package ca-certificates)")?;
    fs::write(rootfs.join("etc/nsswitch.conf"), NSSWITCH)?;
    fs::set_permissions(
        rootfs.join("etc/nsswitch.conf"),
        fs::Permissions::from_mode(0o644),
    )?;
    copy(
        &workspace_root().join("deploy/Dockerfile"),
        &context.join("Dockerfile"),
        0o644,
    )?;
    // Every directory of the image is 0755 (create_dir_all followed the umask), /tmp 1777.
    set_modes(&rootfs)?;
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// Sets every directory under `dir` (itself included) to 0755.
fn set_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_modes(&entry.path())?;
        }
    }
    Ok(())
}

/// Copies the file `source` resolves to (symlinks followed) to `target`, with `mode`.
fn copy(source: &Path, target: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(source, target)
        .with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
    fs::set_permissions(target, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// The shared libraries `ldd` lists for `binary`, the dynamic loader among them, as the paths
/// the binary looks for them at (none for a static binary).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian package libc-bin)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let libraries = ldd_paths(&text);
    if let Some(missing) = text.lines().find(|l| l.contains("not found")) {
        bail!("ldd {}: {}", binary.display(), missing.trim());
    }
    Ok(libraries)
}

/// The absolute paths in ldd's listing: `name => /path (addr)` and the loader's `/path (addr)`.
pub fn ldd_paths(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_listing() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                       \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                       \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                       \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            ldd_paths(listing),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn manifest_header_is_comments() {
        let header = manifest_header("--no-hooks", &["The daemon's objects."]);
        assert!(header.lines().all(|l| l.starts_with('#')), "{header}");
        assert!(header.contains("helm template ram deploy/helm/ram --namespace kube-system"));
    }
}
