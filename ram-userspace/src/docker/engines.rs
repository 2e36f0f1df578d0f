//! The configuration each container engine needs for Image Access Management: the pull gate as
//! its Docker Hub mirror (and, for dockerd, the authorization plugin). `ram image-access config
//! ENGINE` prints these; docs/docker.md explains them.
//!
//! - dockerd: `/etc/docker/daemon.json` (`registry-mirrors`, `authorization-plugins`);
//! - containerd (and its CRI plugin, Kubernetes nodes): `hosts.toml` in
//!   `/etc/containerd/certs.d/docker.io/` (its `config_path`), the gate as the only host, for
//!   pull and resolve;
//! - Podman, CRI-O, Buildah, Skopeo: `registries.conf`, `docker.io` rewritten to the gate.
//!
//! In each, Docker Hub itself is never named as a place to fall back to: the gate is the way in
//! (and the kernel withholds Docker Hub's own hosts from enforced cgroups anyway).

use std::{fmt, net::SocketAddr, str::FromStr};

use crate::policy::ImageAccess;

/// An engine ram can print the configuration of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Containerd,
    Podman,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Self::Docker, Self::Containerd, Self::Podman];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::Podman => "podman",
        }
    }

    /// The file the snippet belongs in.
    pub fn config_path(self) -> &'static str {
        match self {
            Self::Docker => "/etc/docker/daemon.json",
            Self::Containerd => "/etc/containerd/certs.d/docker.io/hosts.toml",
            Self::Podman => "/etc/containers/registries.conf.d/ram.conf",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Engine {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|engine| engine.as_str() == text)
            .ok_or_else(|| format!("`{text}` is not one of docker, containerd, podman"))
    }
}

/// The snippet for `engine`, for the gate of `image_access`, with a comment saying where it
/// goes and what else it needs.
pub fn snippet(engine: Engine, image_access: &ImageAccess) -> String {
    let gate = image_access.gate;
    let upstream = &image_access.upstream;
    match engine {
        Engine::Docker => docker(gate),
        Engine::Containerd => containerd(gate, upstream),
        Engine::Podman => podman(gate, upstream),
    }
}

fn docker(gate: SocketAddr) -> String {
    format!(
        "// {path}: merge these two keys into the file, then restart dockerd.\n\
         // The plugin judges `docker pull/run/create`; the mirror is ram's pull gate, which judges\n\
         // every Docker Hub pull the engine makes (builds' FROM included).\n\
         {{\n  \"authorization-plugins\": [\"ram\"],\n  \"registry-mirrors\": [\"http://{gate}\"]\n}}\n",
        path = Engine::Docker.config_path(),
    )
}

fn containerd(gate: SocketAddr, upstream: &str) -> String {
    format!(
        "# {path}\n\
         # containerd reads it when its CRI plugin has `config_path = \"/etc/containerd/certs.d\"`\n\
         # (plugins.\"io.containerd.grpc.v1.cri\".registry), and `ctr` with\n\
         # `--hosts-dir /etc/containerd/certs.d`. docker.io pulls go to ram's pull gate only, which\n\
         # forwards allowed ones to {upstream}.\n\
         server = \"http://{gate}\"\n\n\
         [host.\"http://{gate}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        path = Engine::Containerd.config_path(),
    )
}

fn podman(gate: SocketAddr, upstream: &str) -> String {
    format!(
        "# {path} (or in /etc/containers/registries.conf)\n\
         # Podman, CRI-O, Buildah and Skopeo: every docker.io image is pulled from ram's pull gate,\n\
         # which forwards allowed ones to {upstream}. Short names resolved to docker.io go there\n\
         # too. The gate listens on loopback over plain HTTP.\n\
         [[registry]]\nprefix = \"docker.io\"\nlocation = \"{gate}\"\ninsecure = true\n",
        path = Engine::Podman.config_path(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> ImageAccess {
        ImageAccess {
            gate: "127.0.0.1:442".parse().unwrap(),
            ..ImageAccess::default()
        }
    }

    #[test]
    fn each_engine_is_pointed_at_the_gate_and_nowhere_else() {
        let docker = snippet(Engine::Docker, &access());
        assert!(
            docker.contains("\"registry-mirrors\": [\"http://127.0.0.1:442\"]"),
            "{docker}"
        );
        assert!(
            docker.contains("\"authorization-plugins\": [\"ram\"]"),
            "{docker}"
        );
        let containerd = snippet(Engine::Containerd, &access());
        assert!(
            containerd.contains("server = \"http://127.0.0.1:442\""),
            "{containerd}"
        );
        assert!(
            containerd.contains("[host.\"http://127.0.0.1:442\"]"),
            "{containerd}"
        );
        assert!(
            containerd.contains("capabilities = [\"pull\", \"resolve\"]"),
            "{containerd}"
        );
        let podman = snippet(Engine::Podman, &access());
        assert!(podman.contains("prefix = \"docker.io\""), "{podman}");
        assert!(podman.contains("location = \"127.0.0.1:442\""), "{podman}");
        assert!(podman.contains("insecure = true"), "{podman}");
        // Docker Hub is named only in comments, never as a host to use.
        for text in [&containerd, &podman] {
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                assert!(
                    !line.contains("docker.io\"") || line.starts_with("prefix"),
                    "{line}"
                );
                assert!(!line.contains("registry-1.docker.io"), "{line}");
            }
        }
    }

    #[test]
    fn the_snippets_parse_as_their_formats() {
        let json: String = snippet(Engine::Docker, &access())
            .lines()
            .filter(|l| !l.starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["registry-mirrors"][0], "http://127.0.0.1:442");
        let hosts: toml::Table = toml::from_str(&snippet(Engine::Containerd, &access())).unwrap();
        assert_eq!(hosts["server"].as_str(), Some("http://127.0.0.1:442"));
        let conf: toml::Table = toml::from_str(&snippet(Engine::Podman, &access())).unwrap();
        assert_eq!(
            conf["registry"][0]["location"].as_str(),
            Some("127.0.0.1:442")
        );
    }

    #[test]
    fn engines_are_named_as_on_the_command_line() {
        assert_eq!("podman".parse::<Engine>(), Ok(Engine::Podman));
        assert!(
            "cri-o"
                .parse::<Engine>()
                .unwrap_err()
                .contains("docker, containerd, podman")
        );
    }
}
