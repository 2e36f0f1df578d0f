//! What a runtime says about a container, for audit lines: its name and image. Read from the
//! runtime's state on disk — dockerd's `<data-root>/containers/<id>/config.v2.json`, through the
//! dockerd process's own root, so an engine in a mount namespace of its own is read too — and
//! cached. A container no runtime describes (a BuildKit RUN step, a containerd or Podman
//! container for now) has neither.

use std::{
    collections::HashMap,
    io::Read as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::procs::root_processes_named;

/// dockerd's state directory unless `--data-root` says otherwise.
const DOCKER_DATA_ROOT: &str = "/var/lib/docker";
/// A container's config.v2.json is a few KiB; a larger one is not read.
const CONFIG_MAX: u64 = 4 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// As the runtime shows it (`docker ps`), without Docker's leading `/`.
    pub name: Option<String>,
    /// The image as the container was created from it (`bb:latest`, or an image id).
    pub image: Option<String>,
}

/// Container id → what its runtime says, looked up once per id (an id nothing describes, again
/// after [`ContainerInfos::RETRY_UNKNOWN`]: its engine may still have been creating it).
pub struct ContainerInfos {
    proc_root: PathBuf,
    known: HashMap<String, (ContainerInfo, Instant)>,
}

impl Default for ContainerInfos {
    fn default() -> Self {
        Self::new(Path::new("/proc"))
    }
}

impl ContainerInfos {
    /// Bounded cache: containers come and go; forget everything rather than grow forever.
    const MAX_KNOWN: usize = 4096;
    /// A flood of denials from an undescribed container reads /proc at most this often.
    const RETRY_UNKNOWN: Duration = Duration::from_secs(5);

    pub fn new(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            known: HashMap::new(),
        }
    }

    /// What the runtime says about container `id` (empty when nothing does).
    pub fn lookup(&mut self, id: &str) -> ContainerInfo {
        if let Some((info, when)) = self.known.get(id)
            && (*info != ContainerInfo::default() || when.elapsed() < Self::RETRY_UNKNOWN)
        {
            return info.clone();
        }
        let info = docker_container(&self.proc_root, id)
            .or_else(|| conmon_container(&self.proc_root, id))
            .unwrap_or_default();
        if self.known.len() >= Self::MAX_KNOWN {
            self.known.clear();
        }
        self.known
            .insert(id.to_owned(), (info.clone(), Instant::now()));
        info
    }
}

/// The container `id` as a running dockerd describes it.
fn docker_container(proc_root: &Path, id: &str) -> Option<ContainerInfo> {
    // Only ids dockerd makes: 64 hex digits, which also keeps the path below a plain name.
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    root_processes_named(proc_root, "dockerd")
        .into_iter()
        .find_map(|pid| {
            let process = proc_root.join(pid.to_string());
            let cmdline = std::fs::read(process.join("cmdline")).ok()?;
            let data_root = data_root(&cmdline);
            let config = process
                .join("root")
                .join(data_root.trim_start_matches('/'))
                .join("containers")
                .join(id)
                .join("config.v2.json");
            let mut text = String::new();
            std::fs::File::open(config)
                .ok()?
                .take(CONFIG_MAX)
                .read_to_string(&mut text)
                .ok()?;
            parse_docker_config(&text)
        })
}

/// The container `id` as Podman's (and CRI-O's) conmon was told: its name (`-n`); conmon is
/// not told the image.
fn conmon_container(proc_root: &Path, id: &str) -> Option<ContainerInfo> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    root_processes_named(proc_root, "conmon")
        .into_iter()
        .find_map(|pid| {
            let cmdline = std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            let value = |short: &str, long: &str| {
                args.iter()
                    .position(|a| a == short || a == long)
                    .and_then(|i| args.get(i + 1).cloned())
            };
            (value("-c", "--cid")? == id).then(|| ContainerInfo {
                name: value("-n", "--name"),
                image: None,
            })
        })
}

/// `--data-root` of a dockerd command line (NUL-separated), or the default.
fn data_root(cmdline: &[u8]) -> String {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    for (i, arg) in args.iter().enumerate() {
        if let Some(value) = arg.strip_prefix("--data-root=") {
            return value.to_owned();
        }
        if arg == "--data-root"
            && let Some(value) = args.get(i + 1)
        {
            return value.clone();
        }
    }
    DOCKER_DATA_ROOT.to_owned()
}

fn parse_docker_config(text: &str) -> Option<ContainerInfo> {
    let config: serde_json::Value = serde_json::from_str(text).ok()?;
    let name = config["Name"]
        .as_str()
        .map(|n| n.trim_start_matches('/').to_owned());
    let image = config["Config"]["Image"].as_str().map(str::to_owned);
    Some(ContainerInfo { name, image })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_root_from_the_command_line() {
        assert_eq!(data_root(b"dockerd\0-H\0fd://"), DOCKER_DATA_ROOT);
        assert_eq!(data_root(b"dockerd\0--data-root=/srv/d\0"), "/srv/d");
        assert_eq!(data_root(b"dockerd\0--data-root\0/srv/e"), "/srv/e");
    }

    #[test]
    fn docker_config_names_and_image() {
        let text = r#"{"ID":"x","Name":"/web","Config":{"Image":"bb:latest","Cmd":["sh"]}}"#;
        assert_eq!(
            parse_docker_config(text),
            Some(ContainerInfo {
                name: Some("web".into()),
                image: Some("bb:latest".into())
            })
        );
        assert_eq!(parse_docker_config("not json"), None);
    }

    #[test]
    fn only_docker_ids_are_looked_up() {
        let mut infos = ContainerInfos::new(Path::new("/nonexistent-proc"));
        assert_eq!(infos.lookup("../../etc"), ContainerInfo::default());
        assert_eq!(
            infos.lookup("vnzzykkws3m9pp48rularan15"),
            ContainerInfo::default()
        );
    }
}
