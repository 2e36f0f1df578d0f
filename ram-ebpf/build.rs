use which::which;

/// Building this crate has an undeclared dependency on the `bpf-linker` binary (as in
/// aya-template): rebuild whenever the `bpf-linker` on PATH changes. `cargo xtask setup`
/// installs it; without it the error below says so instead of a linker failure.
fn main() {
    match which("bpf-linker") {
        Ok(bpf_linker) => println!("cargo:rerun-if-changed={}", bpf_linker.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
