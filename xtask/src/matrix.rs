//! `cargo xtask matrix`: boots Debian's kernels in qemu (software emulation) with an initramfs
//! holding `ram`, and reports per kernel whether every program loads, attaches and enforces.
//! The kernels are fetched as packages (never installed), once, into `target/kernels/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use anyhow::{Context as _, Result, bail};

use crate::{build_ram, run as run_step, workspace_root};

/// The kernels of the matrix: Debian cloud kernels bracketing WSL 2's 5.15 and 6.6. Pinned
/// here, in one place; bump a version by replacing its pool path (from the suite's Packages).
const KERNELS: &[(&str, &str)] = &[
    (
        "5.10 (bullseye)",
        "debian/pool/main/l/linux-signed-amd64/linux-image-5.10.0-32-cloud-amd64_5.10.223-1_amd64.deb",
    ),
    (
        "6.1 (bookworm-security)",
        "debian-security/pool/updates/main/l/linux-signed-amd64/linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb",
    ),
    (
        "6.12 (bookworm-backports)",
        "debian/pool/main/l/linux-signed-amd64/linux-image-6.12.95+deb12-cloud-amd64_6.12.95-1~bpo12+1_amd64.deb",
    ),
];
const MIRROR: &str = "http://deb.debian.org";
/// Modules of each kernel package put in its VM, in load order: SCTP, DCCP and L2TP over IP
/// (protocols whose connects and sends run no cgroup hook) and what they need.
const MODULES: &[&str] = &[
    "crypto/crc32c_generic",
    "lib/libcrc32c",
    "net/ipv4/udp_tunnel",
    "net/ipv6/ip6_udp_tunnel",
    "net/sctp/sctp",
    "net/dccp/dccp",
    "net/dccp/dccp_ipv4",
    "net/l2tp/l2tp_core",
    "net/l2tp/l2tp_ip",
];
/// The protocols the VMs try to make sockets of, in and outside the enforced cgroup.
const PROTOCOLS: &[&str] = &["sctp", "dccp", "l2tp", "packet"];
/// What a VM may take, boot to power-off, under software emulation.
const VM_SECONDS: u32 = 420;

pub fn run() -> Result<()> {
    let ram = build_ram(true)?;
    let peer = build_peer()?;
    let dir = workspace_root().join("target/kernels");
    fs::create_dir_all(&dir)?;
    let initrd = build_initramfs(&dir, &ram, &peer)?;
    // Two at a time: each VM is one emulated CPU.
    let mut results = Vec::new();
    for pair in KERNELS.chunks(2) {
        let handles: Vec<_> = pair
            .iter()
            .map(|(name, path)| {
                let (dir, initrd) = (dir.clone(), initrd.clone());
                let (name, path) = (name.to_string(), path.to_string());
                thread::spawn(move || (name.clone(), boot(&dir, &path, &initrd)))
            })
            .collect();
        for handle in handles {
            results.push(handle.join().expect("a matrix thread panicked"));
        }
    }
    let mut failed = 0;
    for (name, result) in &results {
        match result {
            Ok(report) => {
                println!("kernel {name}: {}", report.summary());
                for line in &report.probe {
                    println!("    probe: {line}");
                }
                for line in &report.verified {
                    println!("    {line}");
                }
                for line in report.details() {
                    println!("    {line}");
                }
                if !report.passed() {
                    failed += 1;
                    for line in &report.errors {
                        println!("    {line}");
                    }
                    println!("    console, last lines:");
                    for line in &report.tail {
                        println!("      {line}");
                    }
                }
            }
            Err(err) => {
                failed += 1;
                println!("kernel {name}: FAILED to run: {err:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} kernels failed", results.len());
    }
    Ok(())
}

/// What one VM reported: its `RAM-MATRIX KEY VALUE` lines.
#[derive(Default)]
struct Report {
    kernel: String,
    attached: bool,
    probe: Vec<String>,
    verified: Vec<String>,
    errors: Vec<String>,
    /// Scenario steps, in order: (step, what happened).
    steps: Vec<(String, String)>,
    audit: Vec<String>,
    /// Sockets of [`PROTOCOLS`]: (protocol, inside the enforced cgroup, outside it).
    protocols: Vec<(String, String, String)>,
    /// The daemon's line on socket families (BPF LSM: packet sockets refused or not).
    families: String,
    /// The console's last lines, shown when the scenario did not finish (a kernel oops, say).
    tail: Vec<String>,
    /// The init script reached its end (`RAM-MATRIX done`).
    done: bool,
}

/// The enforcement scenario of `xtask/matrix/init.sh`: each step and what passes.
const SCENARIO: &[(&str, &str, &str)] = &[
    ("allowed", "127.0.0.1 (allow_cidrs)", "reached"),
    ("denied", "127.0.0.2 (not allowed)", "EPERM"),
    ("raw-socket", "a raw socket in the enforced cgroup", "EPERM"),
    ("before-dns", "registry.test's address before DNS", "EPERM"),
    ("resolved", "registry.test resolved", "answer 10.77.0.2"),
    ("learned", "registry.test's address after DNS", "reached"),
    (
        "tls-allowed",
        "TLS hello naming registry.test, to its address",
        "sent 1601",
    ),
    (
        "tls-other",
        "TLS hello naming other.test, to the same address",
        "EACCES",
    ),
    (
        "tls-far-side",
        "what the far side received of each",
        "bytes 1601 bytes 0",
    ),
    (
        "tls-mechanism",
        "how a refused hello is refused (daemon's log)",
        "the first bytes sent to learned addresses are judged (sk_msg)",
    ),
    (
        "spoof-taken",
        "spoofed answer taken by the client",
        "answer 10.77.0.3",
    ),
    ("spoofed", "spoofed answer's address", "EPERM"),
    (
        "badid-taken",
        "wrong-txid answer taken by the client",
        "answer 10.77.0.3",
    ),
    ("badid", "wrong-txid answer's address", "EPERM"),
];

impl Report {
    fn step(&self, key: &str) -> &str {
        self.steps
            .iter()
            .find(|(k, _)| k == key)
            .map_or("(no report)", |(_, v)| v.as_str())
    }

    fn step_passed(&self, key: &str, expected: &str) -> bool {
        self.step(key).starts_with(expected)
    }

    fn audit_passed(&self) -> bool {
        self.audit
            .iter()
            .any(|line| line.contains("\"registry.test\"") && line.contains("\"10.77.0.2\""))
    }

    /// The daemon's start-up probe found every feature it needs (its summary line).
    fn probe_passed(&self) -> bool {
        self.probe
            .iter()
            .any(|line| line.contains("kernel features present"))
    }

    /// A protocol's socket passes when it is refused inside (`EPERM`) where the kernel makes
    /// it outside, or fails alike on both sides (the kernel has no such protocol: a skip).
    /// Packet sockets are refused only where the daemon loaded its BPF LSM program.
    fn protocol_verdict(&self, protocol: &str) -> (&'static str, String) {
        let Some((_, inside, outside)) = self.protocols.iter().find(|(p, _, _)| p == protocol)
        else {
            return ("WRONG", "(no report)".into());
        };
        let families_refused = self
            .families
            .starts_with("packet sockets and other families");
        let verdict = match (inside.as_str(), outside.as_str()) {
            ("EPERM", "made") => "ok",
            ("made", "made") if protocol == "packet" && !families_refused => "skip",
            (inside, outside) if inside == outside && outside != "made" => "skip",
            _ => "WRONG",
        };
        (verdict, format!("inside {inside}, outside {outside}"))
    }

    fn passed(&self) -> bool {
        self.attached
            && self.probe_passed()
            && SCENARIO
                .iter()
                .all(|(key, _, expected)| self.step_passed(key, expected))
            && self.audit_passed()
            && PROTOCOLS
                .iter()
                .all(|p| self.protocol_verdict(p).0 != "WRONG")
    }

    fn summary(&self) -> String {
        format!(
            "{} ({}): programs {}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.kernel,
            if self.attached {
                "loaded and attached"
            } else {
                "NOT attached"
            },
        )
    }

    /// One line per scenario step: what happened, and whether that was what should.
    fn details(&self) -> Vec<String> {
        let mut lines: Vec<String> = SCENARIO
            .iter()
            .map(|(key, what, expected)| {
                let ok = if self.step_passed(key, expected) {
                    "ok"
                } else {
                    "WRONG"
                };
                format!("{ok:5} {what}: {}", self.step(key))
            })
            .collect();
        lines.push(format!(
            "{:5} start-up probe ran and passed",
            if self.probe_passed() { "ok" } else { "WRONG" }
        ));
        lines.push(format!(
            "{:5} audit log names the learned address and hostname",
            if self.audit_passed() { "ok" } else { "WRONG" }
        ));
        for protocol in PROTOCOLS {
            let (verdict, what) = self.protocol_verdict(protocol);
            lines.push(format!("{verdict:5} {protocol} socket: {what}"));
        }
        if !self.families.is_empty() {
            lines.push(format!("      socket families: {}", self.families));
        }
        lines
    }
}

fn boot(dir: &Path, pool_path: &str, initrd: &Path) -> Result<Report> {
    let deb = dir.join(pool_path.rsplit('/').next().expect("a file name"));
    if !deb.exists() {
        let partial = deb.with_extension("part");
        run_step(
            Command::new("curl")
                .args(["-sSfL", "--max-time", "600", "-o"])
                .arg(&partial)
                .arg(format!("{MIRROR}/{pool_path}")),
            "downloading a kernel package",
        )?;
        fs::rename(&partial, &deb)?;
    }
    let unpacked = deb.with_extension("d");
    if !unpacked.exists() {
        fs::create_dir_all(&unpacked)?;
        run_step(
            Command::new("sh").arg("-c").arg(format!(
                "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' ./boot",
                deb.display(),
                unpacked.display()
            )),
            "unpacking a kernel package",
        )?;
    }
    let initrd = &with_modules(&deb, &unpacked, initrd)?;
    let vmlinuz = fs::read_dir(unpacked.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        })
        .context("no vmlinuz in the kernel package")?;
    // Software emulation sometimes crashes a kernel in early boot (seen with 6.12 under TCG:
    // a fault in an interrupt before init runs), or stops a VM midway. That says nothing about
    // ram, so such a boot is retried, at most three times in all, and said; the last one's
    // report is kept when none finishes.
    let mut failures = Vec::new();
    let mut partial = None;
    for _ in 0..3 {
        let console = run_vm(&vmlinuz, initrd)?;
        let report = parse_console(&console);
        // A VM that stopped reporting midway (seen once with 6.12 under TCG) is retried like
        // one that never booted; a scenario that ran to its end is reported as it is.
        if !report.kernel.is_empty() && report.done {
            if !failures.is_empty() {
                eprintln!(
                    "xtask matrix: {} booted after {} emulation failure(s)",
                    report.kernel,
                    failures.len()
                );
            }
            return Ok(report);
        }
        let tail: Vec<&str> = console.lines().rev().take(15).collect();
        failures.push(tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        if !report.kernel.is_empty() {
            partial = Some(report);
        }
    }
    if let Some(report) = partial {
        return Ok(report);
    }
    bail!(
        "the VM never reached ram's init in 3 boots of at most {VM_SECONDS} s; the last \
         console ended with:\n{}",
        failures.last().map(String::as_str).unwrap_or("")
    )
}

/// The shared initramfs followed by one with this kernel's [`MODULES`] (as `/modules/NN-*.ko`,
/// decompressed): the kernel unpacks concatenated archives in turn.
fn with_modules(deb: &Path, unpacked: &Path, initrd: &Path) -> Result<PathBuf> {
    let patterns: Vec<String> = MODULES
        .iter()
        .map(|m| format!("'./lib/modules/*/kernel/{m}.ko*'"))
        .collect();
    // Missing modules are not an error here: the VM reports what it could not load.
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards {} 2>/dev/null",
            deb.display(),
            unpacked.display(),
            patterns.join(" ")
        ))
        .status();
    let extra = unpacked.join("extra");
    let _ = fs::remove_dir_all(&extra);
    fs::create_dir_all(extra.join("modules"))?;
    let kernel_dirs: Vec<PathBuf> = fs::read_dir(unpacked.join("lib/modules"))
        .map(|dirs| dirs.flatten().map(|d| d.path().join("kernel")).collect())
        .unwrap_or_default();
    for (index, module) in MODULES.iter().enumerate() {
        for kernel in &kernel_dirs {
            let name = module.rsplit('/').next().expect("a module name");
            let target = extra.join(format!("modules/{index:02}-{name}.ko"));
            let plain = kernel.join(format!("{module}.ko"));
            let xz = kernel.join(format!("{module}.ko.xz"));
            if plain.exists() {
                fs::copy(&plain, &target)?;
            } else if xz.exists() {
                run_step(
                    Command::new("sh").arg("-c").arg(format!(
                        "xz -dc '{}' > '{}'",
                        xz.display(),
                        target.display()
                    )),
                    "decompressing a module",
                )?;
            }
        }
    }
    let combined = unpacked.join("initrd.cpio.gz");
    run_step(
        Command::new("sh")
            .current_dir(&extra)
            .arg("-c")
            .arg(format!(
                "{{ cat '{}'; find . | cpio -o -H newc 2>/dev/null | gzip -1; }} > '{}'",
                initrd.display(),
                combined.display()
            )),
        "packing the modules",
    )?;
    Ok(combined)
}

fn run_vm(vmlinuz: &Path, initrd: &Path) -> Result<String> {
    let output = Command::new("timeout")
        .arg(VM_SECONDS.to_string())
        .args([
            "qemu-system-x86_64",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet rdinit=/init"])
        .output()
        .context("running qemu-system-x86_64 (`cargo xtask setup` installs it)")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn parse_console(console: &str) -> Report {
    let mut report = Report::default();
    let lines: Vec<&str> = console.lines().collect();
    report.tail = lines[lines.len().saturating_sub(25)..]
        .iter()
        .map(ToString::to_string)
        .collect();
    for line in console.lines() {
        let Some(rest) = line.split("RAM-MATRIX ").nth(1) else {
            continue;
        };
        let rest = rest.trim_end();
        if let Some(kernel) = rest.strip_prefix("kernel ") {
            report.kernel = kernel.to_owned();
        } else if let Some(verified) = rest.strip_prefix("verified ") {
            report.verified.push(verified.to_owned());
        } else if let Some(probe) = rest.strip_prefix("probe ") {
            report.probe.push(probe.to_owned());
        } else if rest == "attached" {
            report.attached = true;
        } else if rest == "done" {
            report.done = true;
        } else if let Some(error) = rest.strip_prefix("error ") {
            report.errors.push(error.to_owned());
        } else if let Some(audit) = rest.strip_prefix("audit ") {
            report.audit.push(audit.to_owned());
        } else if let Some(families) = rest.strip_prefix("families ") {
            report.families = families.to_owned();
        } else if let Some(proto) = rest.strip_prefix("proto-")
            && let Some((protocol, results)) = proto.split_once(' ')
            && let Some((inside, outside)) = results.split_once(" outside ")
        {
            report.protocols.push((
                protocol.to_owned(),
                inside.trim().to_owned(),
                outside.trim().to_owned(),
            ));
        } else if let Some((key, value)) = rest.split_once(' ')
            && SCENARIO.iter().any(|(k, _, _)| *k == key)
        {
            report.steps.push((key.to_owned(), value.to_owned()));
        }
    }
    report
}

/// `ram-matrix-peer` (DNS server, spoofer and client of the VMs), built by cargo like xtask.
fn build_peer() -> Result<PathBuf> {
    run_step(
        crate::cargo().args(["build", "--package", "xtask", "--bin", "ram-matrix-peer"]),
        "building ram-matrix-peer",
    )?;
    Ok(crate::target_dir().join("debug/ram-matrix-peer"))
}

/// Copies the shared libraries `ldd` lists for `binary` to the same paths under `root`.
fn copy_libraries(binary: &Path, root: &Path) -> Result<()> {
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let library = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(library) = library {
            let target = root.join(library.trim_start_matches('/'));
            fs::create_dir_all(target.parent().expect("a directory"))?;
            fs::copy(library, &target).with_context(|| format!("copying {library}"))?;
        }
    }
    Ok(())
}

/// busybox, ram, ram-matrix-peer and the libraries ldd lists, the init script and a policy, as a newc cpio.
fn build_initramfs(dir: &Path, ram: &Path, peer: &Path) -> Result<PathBuf> {
    let root = dir.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    for sub in ["bin", "proc", "sys", "dev", "run", "tmp", "etc"] {
        fs::create_dir_all(root.join(sub))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("/bin/busybox is missing (`cargo xtask setup` installs busybox-static)")?;
    for applet in [
        "sh", "mount", "mkdir", "echo", "cat", "sleep", "nc", "poweroff", "grep", "sed", "tail",
        "head", "ip", "insmod",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    fs::copy(ram, root.join("bin/ram"))?;
    fs::copy(peer, root.join("bin/ram-matrix-peer"))?;
    copy_libraries(ram, &root)?;
    copy_libraries(peer, &root)?;
    let init = workspace_root().join("xtask/matrix/init.sh");
    fs::copy(&init, root.join("init"))?;
    fs::write(
        root.join("policy.toml"),
        "[registry_access]\nallow = [\"registry.test\", \"slow.test\", \"badid.test\"]\n\
         allow_loopback = false\nallow_cidrs = [\"127.0.0.1/32\"]\n\
         [dns]\nresolvers = [\"10.77.0.1\"]\n",
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(root.join("policy.toml"), fs::Permissions::from_mode(0o644))?;
    let initrd = dir.join("initramfs.cpio.gz");
    run_step(
        Command::new("sh").current_dir(&root).arg("-c").arg(format!(
            "find . | cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
            initrd.display()
        )),
        "packing the initramfs",
    )?;
    Ok(initrd)
}
