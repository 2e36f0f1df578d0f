//! Which enforced engines do not send Docker Hub pulls through the pull gate: for `ram status`,
//! when image access is on. The kernel withholds Docker Hub from enforced engines either way, so
//! an engine not pointed at the gate fails its Docker Hub pulls instead of being judged by
//! category; the warning says which file to fix.
//!
//! Each engine's configuration is read where the engine sees it: inside `/proc/PID/root` (its
//! mount namespace), relative paths from its working directory. A process that merely looks
//! like an engine (a root build step can name itself `crio`) chooses those paths: they are
//! opened confined to its root, regular files only, never a device or a terminal
//! ([`sys::open_in_root`]), and every read is bounded, since `ram status` runs on the event
//! loop.
//!
//! - dockerd: `--registry-mirror` flags or `registry-mirrors` in its `--config-file`
//!   (`/etc/docker/daemon.json`), and the authorization plugin `ram`;
//! - containerd (not the one dockerd runs for itself): `docker.io/hosts.toml` under the CRI
//!   plugin's registry `config_path` (`/etc/containerd/certs.d` when unset);
//! - `podman system service` and CRI-O: a `[[registry]]` for `docker.io` in their
//!   registries.conf (`CONTAINERS_REGISTRIES_CONF`, or `/etc/containers/registries.conf` and
//!   `.conf.d/`).

use std::{
    fs,
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::{
    cgroups::{procs, scope},
    docker::engines::Engine,
    events::records::text,
    sys,
};

/// The warnings for the engines among `engines` (pid, comm, as `scope::engine_processes`
/// lists them) whose cgroup is one of `enforced` or below it.
pub fn gate_warnings(
    proc_root: &Path,
    mount: &Path,
    enforced: &[PathBuf],
    gate: SocketAddr,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for (pid, comm) in scope::engine_processes(proc_root)
        .into_iter()
        .take(MAX_ENGINES)
    {
        let Some(cgroup) = procs::cgroup_of(proc_root, pid) else {
            continue;
        };
        let cgroup = mount.join(cgroup.trim_start_matches('/'));
        if !enforced.iter().any(|e| cgroup.starts_with(e)) {
            continue;
        }
        let engine = Process { proc_root, pid };
        match comm.as_str() {
            "dockerd" => warnings.extend(engine.docker_warnings(gate)),
            "containerd" if !engine.started_by("dockerd") => {
                warnings.extend(engine.containerd_warning(gate));
            }
            // CRI-O reads the same registries.conf as Podman.
            "podman" | "crio" => warnings.extend(engine.registries_conf_warning(&comm, gate)),
            _ => {}
        }
    }
    warnings
}

/// One engine process, read through /proc.
struct Process<'a> {
    proc_root: &'a Path,
    pid: u32,
}

impl Process<'_> {
    fn dir(&self) -> PathBuf {
        self.proc_root.join(self.pid.to_string())
    }

    fn args(&self) -> Vec<String> {
        read_bounded(&self.dir().join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    }

    fn env(&self, key: &str) -> Option<String> {
        let environ = read_bounded(&self.dir().join("environ"))?;
        environ.split(|b| *b == 0).find_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            entry
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
    }

    /// `path` as the engine sees it, relative to its root.
    fn path(&self, path: &str) -> PathBuf {
        match path.strip_prefix('/') {
            Some(absolute) => PathBuf::from(absolute),
            None => {
                let cwd = fs::read_link(self.dir().join("cwd")).unwrap_or_default();
                cwd.strip_prefix("/").unwrap_or(&cwd).join(path)
            }
        }
    }

    /// A configuration file of the engine's, confined to its root.
    fn read(&self, path: &str) -> Option<String> {
        self.read_relative(&self.path(path))
    }

    fn read_relative(&self, relative: &Path) -> Option<String> {
        let file = sys::open_in_root(&self.dir().join("root"), relative).ok()?;
        let mut text = String::new();
        file.take(MAX_CONFIG).read_to_string(&mut text).ok()?;
        Some(text)
    }

    fn started_by(&self, comm: &str) -> bool {
        procs::parent_and_start(self.proc_root, self.pid).is_some_and(|(parent, _)| {
            fs::read_to_string(self.proc_root.join(parent.to_string()).join("comm"))
                .is_ok_and(|name| name.trim_end() == comm)
        })
    }

    fn docker_warnings(&self, gate: SocketAddr) -> Vec<String> {
        let args = self.args();
        let config_file = flag_values(&args, "--config-file")
            .pop()
            .unwrap_or_else(|| "/etc/docker/daemon.json".into());
        let config: serde_json::Value = self
            .read(&config_file)
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let listed = |key: &str| -> Vec<String> {
            config[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let mut mirrors = flag_values(&args, "--registry-mirror");
        mirrors.extend(listed("registry-mirrors"));
        let mut plugins = flag_values(&args, "--authorization-plugin");
        plugins.extend(listed("authorization-plugins"));
        let mut warnings = Vec::new();
        if !mirrors.iter().any(|mirror| names_gate(mirror, gate)) {
            warnings.push(format!(
                "dockerd (pid {pid}) does not pull from Docker Hub through the pull gate: no \
                 registry mirror http://{gate} in its flags or {config}, so its Docker Hub \
                 pulls fail (`ram image-access config docker` prints the setting)",
                config = text(&config_file),
                pid = self.pid
            ));
        }
        if !plugins.iter().any(|plugin| plugin == "ram") {
            warnings.push(format!(
                "dockerd (pid {pid}) does not ask the authorization plugin `ram`: `docker \
                 pull/run/create` are judged only at the gate, without Docker's message \
                 (`ram image-access config docker` prints the setting)",
                pid = self.pid
            ));
        }
        warnings
    }

    fn containerd_warning(&self, gate: SocketAddr) -> Option<String> {
        let args = self.args();
        let mut config_file = flag_values(&args, "--config");
        config_file.extend(flag_values(&args, "-c"));
        let config_file = config_file
            .pop()
            .unwrap_or_else(|| "/etc/containerd/config.toml".into());
        let config_path = self
            .read(&config_file)
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
            .and_then(|table| registry_config_path(&table))
            .unwrap_or_else(|| "/etc/containerd/certs.d".into());
        let hosts = format!("{}/docker.io/hosts.toml", config_path.trim_end_matches('/'));
        let configured = self
            .read(&hosts)
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
            .is_some_and(|table| {
                table
                    .get("server")
                    .and_then(toml::Value::as_str)
                    .is_some_and(|server| names_gate(server, gate))
                    || table
                        .get("host")
                        .and_then(toml::Value::as_table)
                        .is_some_and(|hosts| hosts.keys().any(|host| names_gate(host, gate)))
            });
        (!configured).then(|| {
            format!(
                "containerd (pid {pid}) does not pull from Docker Hub through the pull gate: \
                 {hosts} does not name http://{gate}, so its Docker Hub pulls fail (`ram \
                 image-access config {engine}` prints the file)",
                hosts = text(&hosts),
                pid = self.pid,
                engine = Engine::Containerd,
            )
        })
    }

    fn registries_conf_warning(&self, comm: &str, gate: SocketAddr) -> Option<String> {
        let files: Vec<PathBuf> = match self.env("CONTAINERS_REGISTRIES_CONF") {
            Some(file) => vec![self.path(&file)],
            None => {
                let mut files = vec![PathBuf::from("etc/containers/registries.conf")];
                // Only names are listed here (files are opened confined, below).
                let dropins = self.dir().join("root/etc/containers/registries.conf.d");
                let mut extra: Vec<PathBuf> = fs::read_dir(dropins)
                    .into_iter()
                    .flatten()
                    .take(MAX_DROPINS_LISTED)
                    .flatten()
                    .map(|entry| {
                        Path::new("etc/containers/registries.conf.d").join(entry.file_name())
                    })
                    .filter(|path| path.extension().is_some_and(|e| e == "conf"))
                    .collect();
                extra.sort();
                extra.truncate(MAX_DROPINS);
                files.extend(extra);
                files
            }
        };
        let configured = files.iter().any(|file| {
            self.read_relative(file)
                .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
                .is_some_and(|table| registries_conf_sends_docker_io_to(&table, gate))
        });
        (!configured).then(|| {
            format!(
                "{name} (pid {pid}) does not pull from Docker Hub through the pull gate: no \
                 [[registry]] for docker.io in its registries.conf names {gate}, so its Docker \
                 Hub pulls fail (`ram image-access config {engine}` prints the entry)",
                name = if comm == "podman" {
                    "podman system service"
                } else {
                    comm
                },
                pid = self.pid,
                engine = Engine::Podman,
            )
        })
    }
}

/// Engine configuration files are a few KiB.
const MAX_CONFIG: u64 = 1024 * 1024;

/// Engines looked at per status: a host runs a handful.
const MAX_ENGINES: usize = 16;

/// registries.conf drop-ins read per engine, and directory entries looked at to find them.
const MAX_DROPINS: usize = 32;
const MAX_DROPINS_LISTED: usize = 1024;

/// `/proc/PID/cmdline` and `environ` are read up to this much (an engine's are short).
const MAX_PROC_TEXT: u64 = 64 * 1024;

/// A /proc file, bounded.
fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_PROC_TEXT)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// The values of `flag` in `args`: `--flag=VALUE` and `--flag VALUE`.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == flag {
            values.extend(args.next().cloned());
        } else if let Some(value) = arg.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
            values.push(value.to_owned());
        }
    }
    values
}

/// Whether `location` (`http://127.0.0.1:442/`, `127.0.0.1:442`, `localhost:442`) is the gate.
fn names_gate(location: &str, gate: SocketAddr) -> bool {
    let without_scheme = location
        .strip_prefix("http://")
        .or_else(|| location.strip_prefix("https://"))
        .unwrap_or(location);
    let authority = without_scheme.split('/').next().unwrap_or_default();
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return addr == gate;
    }
    authority
        .strip_prefix("localhost:")
        .and_then(|port| port.parse::<u16>().ok())
        .is_some_and(|port| port == gate.port() && gate.ip().is_loopback())
}

/// The CRI plugin's `registry.config_path`, wherever the config version puts it (v2:
/// `plugins."io.containerd.grpc.v1.cri".registry`, v3: `plugins."io.containerd.cri.v1.images"
/// .registry`): the first `registry` table with a `config_path`, depth-first.
fn registry_config_path(table: &toml::Table) -> Option<String> {
    // containerd's configuration nests three tables deep; the bound keeps a crafted file cheap.
    fn walk(table: &toml::Table, depth: usize) -> Option<String> {
        if depth > 4 {
            return None;
        }
        if let Some(path) = table
            .get("registry")
            .and_then(toml::Value::as_table)
            .and_then(|registry| registry.get("config_path"))
            .and_then(toml::Value::as_str)
        {
            return Some(path.to_owned());
        }
        table
            .values()
            .filter_map(toml::Value::as_table)
            .find_map(|inner| walk(inner, depth + 1))
    }
    walk(table, 0)
}

/// Whether a registries.conf sends `docker.io` images to the gate: a `[[registry]]` whose
/// prefix (or, without one, location) is `docker.io`, with the gate as its location or one of
/// its mirrors.
fn registries_conf_sends_docker_io_to(table: &toml::Table, gate: SocketAddr) -> bool {
    let Some(registries) = table.get("registry").and_then(toml::Value::as_array) else {
        return false;
    };
    registries
        .iter()
        .filter_map(toml::Value::as_table)
        .any(|registry| {
            let text = |key: &str| registry.get(key).and_then(toml::Value::as_str);
            let prefix = text("prefix").or(text("location"));
            let mirrors = registry
                .get("mirror")
                .and_then(toml::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|mirror| mirror.get("location").and_then(toml::Value::as_str));
            prefix == Some("docker.io")
                && (text("location").is_some_and(|l| names_gate(l, gate))
                    || mirrors.into_iter().any(|l| names_gate(l, gate)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cgroups::procs::fake::Tree, docker::engines::snippet, policy::ImageAccess};

    const GATE: &str = "127.0.0.1:442";

    fn gate() -> SocketAddr {
        GATE.parse().unwrap()
    }

    #[test]
    fn gate_locations_are_recognized_in_each_spelling() {
        for yes in [
            "http://127.0.0.1:442",
            "http://127.0.0.1:442/",
            "127.0.0.1:442",
            "localhost:442",
        ] {
            assert!(names_gate(yes, gate()), "{yes}");
        }
        for no in [
            "https://registry-1.docker.io",
            "127.0.0.1:443",
            "10.0.0.1:442",
            "",
        ] {
            assert!(!names_gate(no, gate()), "{no}");
        }
    }

    /// What a process chooses as its configuration is read inside its root, and only if it is
    /// a regular file: no FIFO waited on, no device or terminal opened, no way out by symlink.
    #[test]
    fn only_regular_files_inside_the_engines_root_are_read() {
        let proc = Tree::new("engine-check-files");
        proc.file("10/root/etc/ok.json", "{}");
        let engine = Process {
            proc_root: &proc.0,
            pid: 10,
        };
        assert_eq!(engine.read("/etc/ok.json").as_deref(), Some("{}"));
        let fifo = proc.0.join("10/root/etc/fifo.json");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        assert_eq!(engine.read("/etc/fifo.json"), None, "a FIFO");
        std::os::unix::fs::symlink("/dev/zero", proc.0.join("10/root/etc/dev.json")).unwrap();
        assert_eq!(engine.read("/etc/dev.json"), None, "a device, by symlink");
        // An absolute symlink resolves inside the engine's root, not the daemon's.
        proc.file("outside.json", "{\"outside\": true}");
        std::os::unix::fs::symlink(
            proc.0.join("outside.json"),
            proc.0.join("10/root/etc/out.json"),
        )
        .unwrap();
        assert_eq!(engine.read("/etc/out.json"), None, "out of the root");
        std::os::unix::fs::symlink("../../../outside.json", proc.0.join("10/root/etc/up.json"))
            .unwrap();
        assert_eq!(engine.read("/etc/up.json"), None, "up out of the root");
        assert_eq!(engine.read("/etc"), None, "a directory");
    }

    #[test]
    fn flags_are_read_in_both_forms() {
        let args: Vec<String> = [
            "dockerd",
            "--registry-mirror=http://a",
            "--registry-mirror",
            "b",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(flag_values(&args, "--registry-mirror"), ["http://a", "b"]);
        assert!(flag_values(&args, "--config-file").is_empty());
    }

    /// What `ram image-access config` prints is what this check accepts.
    #[test]
    fn the_printed_snippets_satisfy_the_check() {
        let access = ImageAccess {
            gate: gate(),
            ..ImageAccess::default()
        };
        let hosts: toml::Table = toml::from_str(&snippet(Engine::Containerd, &access)).unwrap();
        assert!(names_gate(hosts["server"].as_str().unwrap(), gate()));
        let conf: toml::Table = toml::from_str(&snippet(Engine::Podman, &access)).unwrap();
        assert!(registries_conf_sends_docker_io_to(&conf, gate()));
        let other: toml::Table =
            toml::from_str("[[registry]]\nprefix = \"quay.io\"\nlocation = \"127.0.0.1:442\"\n")
                .unwrap();
        assert!(!registries_conf_sends_docker_io_to(&other, gate()));
        let mirror: toml::Table = toml::from_str(
            "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"127.0.0.1:442\"\n",
        )
        .unwrap();
        assert!(registries_conf_sends_docker_io_to(&mirror, gate()));
    }

    #[test]
    fn the_cri_config_path_is_found_in_v2_and_v3_configs() {
        let v2: toml::Table = toml::from_str(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d\"\n",
        )
        .unwrap();
        assert_eq!(
            registry_config_path(&v2).as_deref(),
            Some("/etc/containerd/certs.d")
        );
        let v3: toml::Table = toml::from_str(
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/x\"\n",
        )
        .unwrap();
        assert_eq!(registry_config_path(&v3).as_deref(), Some("/x"));
        assert_eq!(registry_config_path(&toml::Table::new()), None);
    }

    /// A fake /proc with a root dockerd (pid 10) configured by `args` and `daemon_json`, in
    /// cgroup `/enforced`.
    fn fake_dockerd(tag: &str, args: &[&str], daemon_json: Option<&str>) -> Tree {
        let proc = Tree::new(&format!("engine-check-{tag}"));
        let mut cmdline = args.join("\0");
        cmdline.push('\0');
        proc.file("10/comm", "dockerd\n");
        proc.exe("10", "/usr/sbin/dockerd");
        proc.file("10/cmdline", &cmdline);
        proc.file("10/cgroup", "0::/enforced\n");
        proc.file(
            "10/stat",
            "10 (dockerd) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0",
        );
        if let Some(json) = daemon_json {
            proc.file("10/root/etc/docker/daemon.json", json);
        }
        proc
    }

    #[test]
    fn a_dockerd_without_mirror_or_plugin_is_named() {
        let mount = Path::new("/sys/fs/cgroup");
        let enforced = [mount.join("enforced")];
        let proc = fake_dockerd("bare", &["/usr/sbin/dockerd"], None);
        let warnings = gate_warnings(&proc.0, mount, &enforced, gate());
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(warnings[0].contains("dockerd (pid 10)"), "{warnings:#?}");
        assert!(
            warnings[0].contains("/etc/docker/daemon.json"),
            "{warnings:#?}"
        );
        assert!(
            warnings[1].contains("authorization plugin"),
            "{warnings:#?}"
        );

        let by_file = fake_dockerd(
            "file",
            &["/usr/sbin/dockerd"],
            Some(
                r#"{"registry-mirrors": ["http://127.0.0.1:442"], "authorization-plugins": ["ram"]}"#,
            ),
        );
        assert!(gate_warnings(&by_file.0, mount, &enforced, gate()).is_empty());
        let by_flags = fake_dockerd(
            "flags",
            &[
                "/usr/sbin/dockerd",
                "--registry-mirror=http://127.0.0.1:442",
                "--authorization-plugin",
                "ram",
            ],
            None,
        );
        assert!(gate_warnings(&by_flags.0, mount, &enforced, gate()).is_empty());
        // An engine ram does not enforce is not its business.
        let elsewhere = [mount.join("other")];
        assert!(gate_warnings(&proc.0, mount, &elsewhere, gate()).is_empty());
    }
}
