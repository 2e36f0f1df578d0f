//! Builds `ram-ebpf` for the BPF target (nightly, `-Z build-std=core`, bpf-linker) and leaves the
//! object in OUT_DIR, where `src/programs.rs` embeds it: a user never handles a `.o` file.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;

const EBPF_PACKAGE: &str = "ram-ebpf";

fn main() -> anyhow::Result<()> {
    // `AYA_BUILD_SKIP=1` (aya-build's switch) lets `cargo check`/`clippy` run without the eBPF
    // toolchain; the resulting binary refuses to start and says why (see src/programs.rs).
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(out_dir.join(EBPF_PACKAGE), []).context("writing the empty eBPF stub")?;
        return aya_build::build_ebpf([], Toolchain::default());
    }
    if which::which("bpf-linker").is_err() {
        bail!(
            "bpf-linker is not on PATH; it links ram's eBPF programs. \
             Run `cargo xtask setup` (installs it and the other build requirements)."
        );
    }

    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::default()).context(
        "building the eBPF programs failed; if the toolchain is incomplete, run `cargo xtask setup`",
    )
}
