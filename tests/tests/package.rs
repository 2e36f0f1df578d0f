//! The Debian package (packaging/deb/build.sh, `cargo xtask deb`): built from the binary under
//! test, inspected with dpkg-deb, then installed, upgraded, removed and purged in a fresh root
//! with `dpkg --root`. Nothing here touches this machine's dpkg database, services, cgroups or
//! bpffs: the maintainer scripts run chrootless with DPKG_ROOT set, and the test records every
//! systemctl call they make to check that each one stays in that root.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use ram_tests::{TempDir, ram_bin, sh};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// Builds the package of the binary under test into `out` with packaging/deb/build.sh, as
/// `cargo xtask deb` does with the release build; `version` overrides the binary's own.
fn build_deb(out: &Path, version: Option<&str>) -> PathBuf {
    let mut cmd = Command::new(packaging().join("deb/build.sh"));
    cmd.arg(ram_bin())
        .arg(out)
        .env("DEBFULLNAME", "ram tests")
        .env("DEBEMAIL", "ram-tests@example.org");
    if let Some(version) = version {
        cmd.env("RAM_DEB_VERSION", version);
    }
    let output = cmd.output().expect("running packaging/deb/build.sh");
    assert!(
        output.status.success(),
        "build.sh failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(deb.is_file(), "build.sh printed {}", deb.display());
    deb
}

/// The version `ram --version` reports (`ram 0.1.0`).
fn binary_version() -> String {
    let text = sh(ram_bin().to_str().unwrap(), &["--version"]).unwrap();
    text.trim()
        .strip_prefix("ram ")
        .unwrap_or_else(|| panic!("odd `ram --version`: {text}"))
        .to_owned()
}

fn field(deb: &Path, name: &str) -> String {
    sh("dpkg-deb", &["--field", deb.to_str().unwrap(), name])
        .unwrap()
        .trim()
        .to_owned()
}

fn md5(path: &Path) -> String {
    let out = sh("md5sum", &[path.to_str().unwrap()]).unwrap();
    out.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn deb_has_the_files_fields_and_scripts() {
    let dir = TempDir::new();
    let deb = build_deb(dir.path(), None);
    let version = binary_version();
    let arch = sh("dpkg", &["--print-architecture"]).unwrap();
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("ram_{version}_{}.deb", arch.trim())
    );

    // The control fields.
    assert_eq!(field(&deb, "Package"), "ram");
    assert_eq!(field(&deb, "Version"), version);
    assert_eq!(field(&deb, "Architecture"), arch.trim());
    assert_eq!(field(&deb, "Section"), "admin");
    assert_eq!(field(&deb, "Priority"), "optional");
    assert_eq!(
        field(&deb, "Maintainer"),
        "ram tests <ram-tests@example.org>"
    );
    assert!(field(&deb, "Description").starts_with("Registry Access Management"));
    let installed_kib: u64 = field(&deb, "Installed-Size").parse().unwrap();
    assert!(installed_kib > 1000, "Installed-Size {installed_kib}");

    // Depends: what dpkg-shlibdeps (Debian's own tool, reading the installed libraries'
    // symbols files) computes for the same binary, which build.sh does without dpkg-dev.
    let depends = field(&deb, "Depends");
    let expected = shlibdeps(&ram_bin(), &dir);
    let packages = |deps: &str| -> BTreeMap<String, String> {
        deps.split(',')
            .map(|dep| {
                let dep = dep.trim();
                let (name, version) = dep.split_once(' ').unwrap_or((dep, ""));
                (name.to_owned(), version.to_owned())
            })
            .collect()
    };
    let (mut ours, theirs) = (packages(&depends), packages(&expected));
    // Besides the libraries: procps, for the unit's ExecReload=/bin/kill.
    assert_eq!(
        ours.remove("procps").as_deref(),
        Some(""),
        "Depends: {depends}"
    );
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "Depends: {depends}; dpkg-shlibdeps: {expected}"
    );
    // libc6's version bound is the one that matters (it is what a too-old distribution lacks);
    // libgcc-s1 is left unversioned on purpose (build.sh says why).
    assert_eq!(ours["libc6"], theirs["libc6"], "Depends: {depends}");
    assert!(ours["libc6"].starts_with("(>= 2."), "Depends: {depends}");

    // The files: every one owned by root, with the modes a Debian system expects.
    let listing = sh("dpkg-deb", &["--contents", deb.to_str().unwrap()]).unwrap();
    let entries: BTreeMap<&str, (&str, &str)> = listing
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words[5], (words[0], words[1]))
        })
        .collect();
    let files = [
        ("./usr/bin/ram", "-rwxr-xr-x"),
        ("./lib/systemd/system/ram.service", "-rw-r--r--"),
        ("./etc/ram/", "drwxr-xr-x"),
        ("./etc/ram/policy.toml", "-rw-r--r--"),
        ("./usr/share/doc/ram/copyright", "-rw-r--r--"),
        ("./usr/share/doc/ram/changelog.gz", "-rw-r--r--"),
    ];
    for (path, mode) in files {
        assert_eq!(
            entries.get(path),
            Some(&(mode, "root/root")),
            "{path} in:\n{listing}"
        );
    }
    for (path, (mode, owner)) in &entries {
        assert_eq!(*owner, "root/root", "{path}");
        if path.ends_with('/') {
            assert_eq!(*mode, "drwxr-xr-x", "{path}");
        } else {
            assert!(
                files.iter().any(|(file, _)| file == path),
                "unexpected {path} in the package"
            );
        }
    }

    // The control archive: the conffile, the maintainer scripts (executable), md5sums.
    let control = dir.path().join("control");
    sh(
        "dpkg-deb",
        &[
            "--control",
            deb.to_str().unwrap(),
            control.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/ram/policy.toml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let mode = fs::metadata(control.join(script)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o755, "{script}");
        // `sh -n`: each parses.
        sh("sh", &["-n", control.join(script).to_str().unwrap()]).unwrap();
    }
    let md5sums = fs::read_to_string(control.join("md5sums")).unwrap();
    assert!(md5sums.contains(" usr/bin/ram\n"), "{md5sums}");
    assert!(md5sums.contains(" lib/systemd/system/ram.service\n"));
    assert!(
        !md5sums.contains("policy.toml"),
        "a conffile has no md5sums line (dpkg keeps its own)"
    );

    // What is inside: a stripped binary that runs and prints the policy the package ships; the
    // unit starts it from /usr/bin.
    let tree = dir.path().join("tree");
    sh(
        "dpkg-deb",
        &["--extract", deb.to_str().unwrap(), tree.to_str().unwrap()],
    )
    .unwrap();
    let ram = tree.join("usr/bin/ram");
    let sections = sh("readelf", &["--section-headers", ram.to_str().unwrap()]).unwrap();
    assert!(!sections.contains(".symtab"), "the binary is not stripped");
    assert!(
        !sections.contains(".debug_info"),
        "the binary has debug info"
    );
    assert!(
        fs::metadata(&ram).unwrap().len() < fs::metadata(ram_bin()).unwrap().len(),
        "stripping made it smaller"
    );
    let default = sh(ram.to_str().unwrap(), &["policy", "default"]).unwrap();
    assert_eq!(
        fs::read_to_string(tree.join("etc/ram/policy.toml")).unwrap(),
        default
    );
    let unit = fs::read_to_string(tree.join("lib/systemd/system/ram.service")).unwrap();
    let exec_start: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec_start,
        [
            "ExecStart=/usr/bin/ram daemon --policy /etc/ram/policy.toml --audit-log /var/log/ram/audit.log"
        ]
    );
    // The rest is packaging/ram.service, after a few lines of comment saying where it came from.
    let original = fs::read_to_string(packaging().join("ram.service"))
        .unwrap()
        .replace(
            "\nExecStart=/usr/local/bin/ram daemon ",
            "\nExecStart=/usr/bin/ram daemon ",
        );
    let header = unit
        .strip_suffix(&original)
        .expect("the packaged unit ends with packaging/ram.service");
    assert!(
        header.lines().all(|l| l.starts_with("# ")),
        "the packaged unit adds only comments:\n{header}"
    );
    let changelog = sh(
        "gzip",
        &[
            "-dc",
            tree.join("usr/share/doc/ram/changelog.gz")
                .to_str()
                .unwrap(),
        ],
    )
    .unwrap();
    assert!(
        changelog.starts_with(&format!("ram ({version}) ")),
        "{changelog}"
    );
}

/// `dpkg-shlibdeps` on `binary`: the `shlibs:Depends` it computes. It wants a source package's
/// `debian/control` next to it, so it runs in a scratch directory with a minimal one.
fn shlibdeps(binary: &Path, dir: &TempDir) -> String {
    let work = dir.path().join("shlibdeps");
    fs::create_dir_all(work.join("debian")).unwrap();
    fs::write(
        work.join("debian/control"),
        "Source: ram\n\nPackage: ram\nArchitecture: any\n",
    )
    .unwrap();
    let output = Command::new("dpkg-shlibdeps")
        .arg("-O")
        .arg(binary)
        .current_dir(&work)
        .output()
        .expect("dpkg-shlibdeps (dpkg-dev) is installed by the test set-up");
    assert!(
        output.status.success(),
        "dpkg-shlibdeps: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .unwrap_or_else(|| panic!("no shlibs:Depends in {text}"))
        .to_owned()
}

/// A fresh root for `dpkg --root`: an empty dpkg database and nothing else, and a directory of
/// stand-ins put first on the maintainer scripts' PATH: `systemctl` records its arguments and
/// runs the real one; `deb-systemd-invoke` and `deb-systemd-helper` record and fail (with
/// DPKG_ROOT set, the scripts must not start, stop or register anything on this machine).
struct FreshRoot {
    dir: TempDir,
}

impl FreshRoot {
    fn new() -> Self {
        let dir = TempDir::new();
        let root = dir.path().join("root");
        for sub in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let systemctl = sh("sh", &["-c", "command -v systemctl"]).unwrap();
        let log = dir.path().join("calls.log");
        let stand_ins = [
            (
                "systemctl",
                format!(
                    "echo \"systemctl $*\" >>{}\nexec {} \"$@\"\n",
                    log.display(),
                    systemctl.trim()
                ),
            ),
            (
                "deb-systemd-invoke",
                format!(
                    "echo \"deb-systemd-invoke $*\" >>{}\nexit 1\n",
                    log.display()
                ),
            ),
            (
                "deb-systemd-helper",
                format!(
                    "echo \"deb-systemd-helper $*\" >>{}\nexit 1\n",
                    log.display()
                ),
            ),
        ];
        for (name, body) in stand_ins {
            let path = bin.join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(&log, "").unwrap();
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.root().join(inside.trim_start_matches('/'))
    }

    /// `dpkg --root=ROOT --force-script-chrootless ARGS` with stdin /dev/null (a question fails
    /// the run); its output.
    fn dpkg(&self, args: &[&str]) -> String {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("dpkg")
            .arg(format!("--root={}", self.root().display()))
            .arg("--force-script-chrootless")
            .args(args)
            .env("PATH", path)
            .stdin(Stdio::null())
            .output()
            .expect("running dpkg");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "dpkg {args:?} failed ({}):\n{text}",
            output.status
        );
        text
    }

    /// The calls the maintainer scripts made to the stand-ins, and empties the record.
    fn take_calls(&self) -> Vec<String> {
        let log = self.dir.path().join("calls.log");
        let calls = fs::read_to_string(&log).unwrap();
        fs::write(&log, "").unwrap();
        calls.lines().map(str::to_owned).collect()
    }

    /// Checks that every call was `systemctl --root=ROOT VERB ram.service` with one of `verbs`.
    fn assert_calls_stay_in_root(&self, verbs: &[&str]) -> Vec<String> {
        let calls = self.take_calls();
        let prefix = format!("systemctl --root={} ", self.root().display());
        for call in &calls {
            let rest = call
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("a maintainer script ran `{call}` outside the root"));
            let verb = rest.split_whitespace().find(|w| !w.starts_with('-'));
            assert!(
                verb.is_some_and(|v| verbs.contains(&v)) && rest.ends_with(" ram.service"),
                "unexpected `{call}`"
            );
        }
        calls
    }

    /// The root's dpkg status stanza of `ram`, field by field (continuation lines joined).
    fn status(&self) -> Option<BTreeMap<String, String>> {
        let text = fs::read_to_string(self.path("var/lib/dpkg/status")).unwrap();
        let stanza = text
            .split("\n\n")
            .find(|s| s.lines().next() == Some("Package: ram"))?;
        let mut fields = BTreeMap::new();
        let mut last = String::new();
        for line in stanza.lines() {
            if let Some(more) = line.strip_prefix(' ') {
                let value: &mut String = fields.get_mut(&last).unwrap();
                value.push('\n');
                value.push_str(more);
            } else if let Some((name, value)) = line.split_once(':') {
                last = name.to_owned();
                fields.insert(last.clone(), value.trim().to_owned());
            }
        }
        Some(fields)
    }

    /// The md5sum dpkg recorded for the conffile `path` (the `Conffiles:` field).
    fn conffile_md5(&self, path: &str) -> String {
        let status = self.status().expect("ram in the root's dpkg status");
        let conffiles = status.get("Conffiles").expect("a Conffiles field");
        conffiles
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(path)).then(|| words.next().unwrap().to_owned())
            })
            .unwrap_or_else(|| panic!("{path} not in Conffiles:\n{conffiles}"))
    }
}

/// The links `systemctl enable` makes for the unit's `WantedBy=`.
const ENABLE_LINKS: [&str; 3] = [
    "etc/systemd/system/multi-user.target.wants/ram.service",
    "etc/systemd/system/docker.service.wants/ram.service",
    "etc/systemd/system/containerd.service.wants/ram.service",
];

#[test]
fn deb_installs_upgrades_and_purges_in_a_fresh_root() {
    let fresh = FreshRoot::new();
    let debs = TempDir::new();
    let deb = build_deb(debs.path(), None);
    let version = binary_version();

    // Install. --force-depends: the fresh root has no libc6 package.
    fresh.dpkg(&["--force-depends", "--install", deb.to_str().unwrap()]);
    let status = fresh.status().expect("ram in the root's dpkg status");
    assert_eq!(status["Status"], "install ok installed");
    assert_eq!(status["Version"], version);
    // postinst enabled the unit in the root, and did nothing else: no daemon-reload, no start.
    let calls = fresh.assert_calls_stay_in_root(&["enable"]);
    assert_eq!(calls.len(), 1, "{calls:?}");
    for link in ENABLE_LINKS {
        let target = fs::read_link(fresh.path(link))
            .unwrap_or_else(|err| panic!("{link}: {err} (postinst enables ram.service)"));
        assert_eq!(target, Path::new("/lib/systemd/system/ram.service"));
    }

    // The binary runs from where the package put it.
    let ram = fresh.path("usr/bin/ram");
    let out = sh(ram.to_str().unwrap(), &["--version"]).unwrap();
    assert_eq!(out.trim(), format!("ram {version}"));

    // The conffile: in place, root's, 0644 in a 0755 /etc/ram, recorded with its md5sum, and a
    // policy the daemon accepts where it is (no note about its protection).
    let policy = fresh.path("etc/ram/policy.toml");
    let meta = fs::metadata(&policy).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o644, 0, 0)
    );
    let etc_ram = fs::metadata(fresh.path("etc/ram")).unwrap();
    assert_eq!((etc_ram.mode() & 0o7777, etc_ram.uid()), (0o755, 0));
    assert_eq!(fresh.conffile_md5("/etc/ram/policy.toml"), md5(&policy));
    let check = Command::new(&ram)
        .args(["policy", "check"])
        .arg(&policy)
        .output()
        .unwrap();
    let check_text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{check_text}");
    assert!(check_text.contains(": ok: "), "{check_text}");
    assert!(!check_text.contains("note:"), "{check_text}");

    verify_unit(&fresh);

    // An edited conffile survives an upgrade. First to a version with the same default policy:
    // dpkg keeps the edit without asking (stdin is /dev/null: a question would fail the run).
    let edited = fs::read_to_string(&policy)
        .unwrap()
        .replace("allowed = \"first\"", "allowed = \"all\"");
    assert!(edited.contains("allowed = \"all\""));
    fs::write(&policy, &edited).unwrap();
    let upgrade = format!("{version}+test1");
    let deb2 = build_deb(debs.path(), Some(&upgrade));
    fresh.dpkg(&["--force-depends", "--install", deb2.to_str().unwrap()]);
    assert_eq!(fresh.status().unwrap()["Version"], upgrade);
    assert_eq!(fs::read_to_string(&policy).unwrap(), edited);
    // dpkg still records the package's md5sum, which is how it knows the file was edited.
    assert_ne!(fresh.conffile_md5("/etc/ram/policy.toml"), md5(&policy));
    // An upgrade keeps the unit enabled (is-enabled, then reenable for new [Install] links).
    let calls = fresh.assert_calls_stay_in_root(&["is-enabled", "reenable"]);
    assert_eq!(calls.len(), 2, "{calls:?}");
    for link in ENABLE_LINKS {
        assert!(fresh.path(link).is_symlink(), "{link} after the upgrade");
    }

    // Then to a version whose default policy changed: --force-confold keeps the edit, and the
    // new default lands next to it as policy.toml.dpkg-dist.
    let upgrade2 = format!("{version}+test2");
    let deb3 = repack(
        &deb2,
        &debs.path().join("repack"),
        &upgrade2,
        "# a later default policy\n",
    );
    let out = fresh.dpkg(&[
        "--force-depends",
        "--force-confold",
        "--install",
        deb3.to_str().unwrap(),
    ]);
    assert_eq!(fresh.status().unwrap()["Version"], upgrade2);
    assert_eq!(fs::read_to_string(&policy).unwrap(), edited, "{out}");
    let dist = fresh.path("etc/ram/policy.toml.dpkg-dist");
    assert!(
        fs::read_to_string(&dist)
            .unwrap()
            .starts_with("# a later default policy\n"),
        "{out}"
    );
    fresh.take_calls();

    // Remove: the program and the unit go, the conffile stays (dpkg's "config-files" state);
    // prerm leaves this machine's service and enforcement alone (DPKG_ROOT is set).
    fs::create_dir_all(fresh.path("var/log/ram")).unwrap();
    fs::write(fresh.path("var/log/ram/audit.log"), "{}\n").unwrap();
    fresh.dpkg(&["--remove", "ram"]);
    assert_eq!(
        fresh.status().unwrap()["Status"],
        "deinstall ok config-files"
    );
    assert!(!ram.exists());
    assert!(!fresh.path("lib/systemd/system/ram.service").exists());
    assert_eq!(fs::read_to_string(&policy).unwrap(), edited);
    assert!(fresh.path("var/log/ram/audit.log").exists());
    for link in ENABLE_LINKS {
        // As with dh_installsystemd: enablement is forgotten on purge, not on removal.
        assert!(fresh.path(link).is_symlink(), "{link} after the removal");
    }
    fresh.assert_calls_stay_in_root(&[]);

    // Purge: the conffile (and the .dpkg-dist beside it), /etc/ram, the enable links and the
    // audit log go too.
    fresh.dpkg(&["--purge", "ram"]);
    assert!(
        fresh
            .status()
            .is_none_or(|s| s["Status"] == "purge ok not-installed"),
        "{:?}",
        fresh.status()
    );
    for gone in [
        "etc/ram/policy.toml",
        "etc/ram/policy.toml.dpkg-dist",
        "etc/ram",
        "var/log/ram",
        "usr/share/doc/ram",
    ]
    .iter()
    .chain(ENABLE_LINKS.iter())
    {
        assert!(
            !fresh.path(gone).exists() && !fresh.path(gone).is_symlink(),
            "{gone} is left after the purge"
        );
    }
    fresh.assert_calls_stay_in_root(&[]);

    // docs/operations.md: a policy written before the first installation is kept with
    // --force-confold (without it, dpkg asks), and the package's default lands beside it.
    let seeded = FreshRoot::new();
    fs::create_dir_all(seeded.path("etc/ram")).unwrap();
    let mine = "[registry_access]\nallow = [\"ghcr.io\"]\n";
    fs::write(seeded.path("etc/ram/policy.toml"), mine).unwrap();
    seeded.dpkg(&[
        "--force-depends",
        "--force-confold",
        "--install",
        deb.to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read_to_string(seeded.path("etc/ram/policy.toml")).unwrap(),
        mine
    );
    assert!(seeded.path("etc/ram/policy.toml.dpkg-dist").is_file());
    seeded.assert_calls_stay_in_root(&["enable"]);
}

/// `deb` with its version set to `version` and `text` as the start of its default policy (a
/// later release whose default changed), built into `work`.
fn repack(deb: &Path, work: &Path, version: &str, text: &str) -> PathBuf {
    fs::create_dir_all(work).unwrap();
    let tree = work.join("tree");
    sh(
        "dpkg-deb",
        &[
            "--raw-extract",
            deb.to_str().unwrap(),
            tree.to_str().unwrap(),
        ],
    )
    .unwrap();
    let policy = tree.join("etc/ram/policy.toml");
    let old = fs::read_to_string(&policy).unwrap();
    fs::write(&policy, format!("{text}{old}")).unwrap();
    let control = tree.join("DEBIAN/control");
    let fields = fs::read_to_string(&control).unwrap();
    let fields: String = fields
        .lines()
        .map(|l| {
            if l.starts_with("Version: ") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&control, fields).unwrap();
    let out = work.join("ram.deb");
    sh(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "-Zgzip",
            "--build",
            tree.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    )
    .unwrap();
    out
}

/// `systemd-analyze verify` of the installed unit, in the root (`--root`: every path the unit
/// names is looked up there, ExecStart=/usr/bin/ram included).
///
/// A machine that runs the unit has systemd's own units (sysinit.target, ...) and /bin/kill
/// (procps, a dependency of the package, for ExecReload=); the fresh root has only ram, so it
/// gets stand-ins first: a copy of this machine's systemd units and an executable /bin/kill.
///
/// One complaint is expected and allowed: `sys-fs-bpf.mount` not found. The unit requires the
/// host's bpffs; on a booted system that mount unit comes from /proc/self/mountinfo (PID 1
/// mounts bpffs itself at boot; systemd refuses a unit file for it, "Cannot create mount unit
/// for API file system"), and `verify` loads units from files only.
fn verify_unit(fresh: &FreshRoot) {
    let units = fresh.path("usr/lib/systemd/system");
    fs::create_dir_all(units.parent().unwrap()).unwrap();
    sh(
        "cp",
        &["-a", "/lib/systemd/system/.", units.to_str().unwrap()],
    )
    .unwrap();
    fs::create_dir_all(fresh.path("bin")).unwrap();
    let kill = fresh.path("bin/kill");
    fs::write(&kill, "#!/bin/sh\n# a stand-in for procps's /bin/kill\n").unwrap();
    fs::set_permissions(&kill, fs::Permissions::from_mode(0o755)).unwrap();

    let verify = || {
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", fresh.root().display()))
            .arg("/lib/systemd/system/ram.service")
            .output()
            .expect("systemd-analyze (systemd) is installed by the test set-up");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let complaints = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.contains("Unit sys-fs-bpf.mount not found"))
            .map(str::to_owned)
            .collect()
    };
    let text = verify();
    assert_eq!(complaints(&text), Vec::<String>::new(), "{text}");

    // The check has teeth: without the binary in the root, verify says so.
    let ram = fresh.path("usr/bin/ram");
    let aside = fresh.path("usr/bin/ram.aside");
    fs::rename(&ram, &aside).unwrap();
    let text = verify();
    fs::rename(&aside, &ram).unwrap();
    assert!(
        complaints(&text)
            .iter()
            .any(|l| l.contains("/usr/bin/ram is not executable")),
        "{text}"
    );

    // The stand-ins go again: the purge at the end checks what dpkg leaves.
    fs::remove_dir_all(fresh.path("usr/lib/systemd")).unwrap();
    fs::remove_file(fresh.path("bin/kill")).unwrap();
}
