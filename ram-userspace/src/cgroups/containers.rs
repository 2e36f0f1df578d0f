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

use super::{
    procs::{in_container, root_processes_named},
    scope::container_id,
};
use crate::sys;

/// dockerd's state directory unless `--data-root` says otherwise.
const DOCKER_DATA_ROOT: &str = "/var/lib/docker";
/// A container's config.v2.json is a few KiB; a larger one is not read.
const CONFIG_MAX: u64 = 4 << 20;
/// An engine's command line is short; a longer one is read this far.
const CMDLINE_MAX: u64 = 64 * 1024;

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

/// Root processes named `name` that are not inside a container (a container's root can name a
/// process `dockerd`), with their command lines.
fn engines_named(proc_root: &Path, name: &str) -> Vec<(u32, Vec<String>)> {
    root_processes_named(proc_root, name)
        .into_iter()
        .filter(|pid| !in_container(proc_root, *pid, |part| container_id(part).is_some()))
        .filter_map(|pid| {
            let mut cmdline = Vec::new();
            std::fs::File::open(proc_root.join(pid.to_string()).join("cmdline"))
                .ok()?
                .take(CMDLINE_MAX)
                .read_to_end(&mut cmdline)
                .ok()?;
            let args = cmdline
                .split(|b| *b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            Some((pid, args))
        })
        .collect()
}

/// The container `id` as a running dockerd describes it.
fn docker_container(proc_root: &Path, id: &str) -> Option<ContainerInfo> {
    // Only ids dockerd makes: 64 hex digits, which also keeps the path below a plain name.
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    engines_named(proc_root, "dockerd")
        .into_iter()
        .find_map(|(pid, args)| {
            let data_root = data_root(&args);
            // Relative to dockerd's own root, and never above it.
            let data_root = data_root.trim_start_matches('/');
            if Path::new(data_root)
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return None;
            }
            let config = Path::new(data_root)
                .join("containers")
                .join(id)
                .join("config.v2.json");
            let root = proc_root.join(pid.to_string()).join("root");
            let mut text = String::new();
            sys::open_in_root(&root, &config)
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
    engines_named(proc_root, "conmon")
        .into_iter()
        .find_map(|(_, args)| {
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

/// `--data-root` of a dockerd command line, or the default.
fn data_root(args: &[String]) -> String {
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
        let args = |line: &str| -> Vec<String> { line.split(' ').map(str::to_owned).collect() };
        assert_eq!(data_root(&args("dockerd -H fd://")), DOCKER_DATA_ROOT);
        assert_eq!(data_root(&args("dockerd --data-root=/srv/d")), "/srv/d");
        assert_eq!(data_root(&args("dockerd --data-root /srv/e")), "/srv/e");
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
