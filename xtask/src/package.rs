//! `cargo xtask deb`: ram's Debian package, `target/debian/ram_<version>_<arch>.deb`.
//!
//! packaging/deb/build.sh assembles it with dpkg-deb (no debhelper, no cargo-deb: see
//! docs/development.md, "Design notes"); tests/tests/package.rs runs the same script on the
//! binary under test, so what is tested is what this builds.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{build_ram, setup, target_dir, workspace_root};

/// Builds the package of `ram` (default: the release build, made now) into target/debian.
pub fn deb(ram: Option<&Path>) -> Result<()> {
    let ram = match ram {
        Some(path) => path.to_owned(),
        None => {
            setup::build()?;
            build_ram(true)?
        }
    };
    let out = target_dir().join("debian");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let script = workspace_root().join("packaging/deb/build.sh");
    let output = Command::new(&script)
        .arg(&ram)
        .arg(&out)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "building the Debian package failed ({}): {} {} {}",
            output.status,
            script.display(),
            ram.display(),
            out.display()
        );
    }
    let deb = PathBuf::from(String::from_utf8(output.stdout)?.trim());
    println!("{}", deb.display());
    eprintln!(
        "xtask: install it with `apt install {}` (docs/operations.md, \"Debian package\")",
        deb.display()
    );
    Ok(())
}
