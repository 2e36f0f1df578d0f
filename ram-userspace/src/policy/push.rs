//! `registry_access.push`: where `docker push` may send images, judged by the authorization
//! plugin on the engine's `POST /images/{name}/push`. An entry is a registry
//! (`registry.corp.example`, `registry.corp.example:5000`: any repository there), one
//! repository (`ghcr.io/mycompany/app`), or everything below a path (`ghcr.io/mycompany/*`).
//! Docker Hub is `docker.io/…` (or another spelling of it, or a short form as in image
//! references: `mycompany/app`, `mycompany/*`); a bare one-component name (`busybox`) is refused
//! as ambiguous. Written with the reference grammar of [`super::reference`]: lowercase, no
//! tag, no digest, `*` only as the last whole part.

use std::{fmt, str::FromStr};

use super::{
    presets::DOCKER_HUB_NAMES,
    reference::{Reference, ReferenceError, parse_reference, split_registry},
};

/// How Docker Hub is named in push rules and push destinations.
pub const DOCKER_HUB: &str = "docker.io";

/// One `registry_access.push` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PushRule {
    /// `host[:port]`, lowercase; `docker.io` for Docker Hub.
    pub registry: String,
    /// The repository path (`mycompany/app`); `None`: any repository of the registry.
    pub path: Option<String>,
    /// `path/*`: every repository below `path`.
    pub below: bool,
}

impl PushRule {
    /// Whether a push to `registry`/`path` (as [`push_destination`] reads them) is allowed.
    pub fn matches(&self, registry: &str, path: &str) -> bool {
        if self.registry != registry {
            return false;
        }
        match (&self.path, self.below) {
            (None, _) => true,
            (Some(own), false) => own == path,
            (Some(own), true) => path
                .strip_prefix(own.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
        }
    }
}

impl fmt::Display for PushRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.registry)?;
        if let Some(path) = &self.path {
            write!(f, "/{path}")?;
            if self.below {
                f.write_str("/*")?;
            }
        }
        Ok(())
    }
}

/// Why a `registry_access.push` entry is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushRuleError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("a push destination is written without a tag (`:{tag}`); it allows every tag")]
    Tag { tag: String },
    #[error("a push destination is written without a digest (`@…`)")]
    Digest,
    #[error("`*` stands for every repository below a path, and only so, last: `host/path/*`")]
    Wildcard,
    #[error(
        "`{entry}` names no registry: write the registry (`registry.corp.example`), or \
         `docker.io/{entry}` for a Docker Hub repository"
    )]
    NoRegistry { entry: String },
}

/// A valid path component the wildcard stands in for while the rest is parsed.
const WILDCARD_STAND_IN: &str = "x";

impl FromStr for PushRule {
    type Err = PushRuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(ReferenceError::Empty.into());
        }
        if text.contains('@') {
            return Err(PushRuleError::Digest);
        }
        let last = text.rsplit('/').next().unwrap_or(text);
        if text.contains('/')
            && let Some((_, tag)) = last.split_once(':')
        {
            return Err(PushRuleError::Tag { tag: tag.into() });
        }
        let Some((first, _)) = text.split_once('/') else {
            // A registry alone.
            if text.contains('*') {
                return Err(PushRuleError::Wildcard);
            }
            let is_registry = text.contains('.') || text.contains(':') || text == "localhost";
            if !is_registry {
                return Err(PushRuleError::NoRegistry { entry: text.into() });
            }
            let (host, port) = split_registry(text)?;
            let host = host.to_ascii_lowercase();
            if DOCKER_HUB_NAMES.contains(&host.as_str()) {
                if port.is_some_and(|p| p != "443") {
                    return Err(ReferenceError::HubPort { host }.into());
                }
                return Ok(Self {
                    registry: DOCKER_HUB.into(),
                    path: None,
                    below: false,
                });
            }
            return Ok(Self {
                registry: text.to_ascii_lowercase(),
                path: None,
                below: false,
            });
        };
        let prefix = text.strip_suffix("/*");
        let probe = match prefix {
            Some(prefix) => format!("{prefix}/{WILDCARD_STAND_IN}"),
            None => text.to_owned(),
        };
        if probe.contains('*') {
            return Err(PushRuleError::Wildcard);
        }
        let has_registry = first.contains('.') || first.contains(':') || first == "localhost";
        if prefix.is_some_and(|p| !p.contains('/')) && has_registry {
            // `ghcr.io/*`: the registry alone says that.
            return Err(PushRuleError::Wildcard);
        }
        let (registry, path) = push_destination(&probe)?;
        let path = match prefix {
            Some(_) => path
                .strip_suffix(&format!("/{WILDCARD_STAND_IN}"))
                .map(str::to_owned),
            None => Some(path),
        };
        // A Docker Hub short form with `*` (`mycompany/*`) reads as `mycompany/x`; `docker.io/*`
        // would read as `library/x`: only a namespace as written may carry it.
        if let (Some(prefix), Some(path)) = (prefix, &path)
            && registry == DOCKER_HUB
            && !prefix.ends_with(path.as_str())
        {
            return Err(PushRuleError::Wildcard);
        }
        let Some(path) = path else {
            return Err(PushRuleError::Wildcard);
        };
        Ok(Self {
            registry,
            path: Some(path),
            below: prefix.is_some(),
        })
    }
}

/// Where a push of `name` (an image name as the engine's push route carries it, tag apart)
/// goes: (registry, repository path), normalized as Docker does (`mycompany/app` is
/// `docker.io`, `mycompany/app`; `busybox` is `docker.io`, `library/busybox`).
pub fn push_destination(name: &str) -> Result<(String, String), ReferenceError> {
    match parse_reference(name)? {
        Reference::Hub(repository) => Ok((
            DOCKER_HUB.into(),
            format!("{}/{}", repository.namespace, repository.name),
        )),
        Reference::Other(registry) => {
            let path = name.split_once('/').map_or("", |(_, path)| path);
            // The name as parse_reference read it, without a tag or digest.
            let path = path.split('@').next().unwrap_or(path);
            let path = match path.rsplit_once(':') {
                Some((path, tag)) if !tag.contains('/') => path,
                _ => path,
            };
            Ok((registry, path.to_owned()))
        }
    }
}

/// The judgement of a push to `name` under `rules`: `Ok` with the destination
/// (`registry/path`) when allowed, `Err` with Docker's message when refused.
pub fn judge_push(rules: &[PushRule], name: &str) -> Result<String, String> {
    let (registry, path) = push_destination(name)
        .map_err(|why| format!("registry access denied: cannot read push destination: {why}"))?;
    let destination = format!("{registry}/{path}");
    if rules.iter().any(|rule| rule.matches(&registry, &path)) {
        Ok(destination)
    } else {
        Err(format!(
            "registry access denied: pushes to {destination} not allowed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> PushRule {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn entries_parse_as_registries_repositories_and_subtrees() {
        assert_eq!(
            rule("registry.corp.example").to_string(),
            "registry.corp.example"
        );
        assert_eq!(
            rule("Registry.Corp.Example:5000").to_string(),
            "registry.corp.example:5000"
        );
        assert_eq!(rule("localhost").to_string(), "localhost");
        assert_eq!(
            rule("ghcr.io/mycompany/app").to_string(),
            "ghcr.io/mycompany/app"
        );
        assert_eq!(
            rule("ghcr.io/mycompany/*").to_string(),
            "ghcr.io/mycompany/*"
        );
        assert_eq!(rule("ghcr.io/a/b/*").to_string(), "ghcr.io/a/b/*");
        // Docker Hub, every spelling.
        for hub in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "docker.io:443",
        ] {
            assert_eq!(rule(hub).to_string(), "docker.io", "{hub}");
        }
        for spelled in [
            "docker.io/mycompany/*",
            "index.docker.io/mycompany/*",
            "registry-1.docker.io/mycompany/*",
            "mycompany/*",
        ] {
            assert_eq!(
                rule(spelled).to_string(),
                "docker.io/mycompany/*",
                "{spelled}"
            );
        }
        assert_eq!(rule("mycompany/app").to_string(), "docker.io/mycompany/app");
        assert_eq!(
            rule("docker.io/busybox").to_string(),
            "docker.io/library/busybox"
        );
    }

    #[test]
    fn invalid_entries_say_why() {
        for bad in [
            "",
            "ghcr.io/o/x:latest",
            "ghcr.io/o/x@sha256:abc",
            "ghcr.io/Upper/x",
            "ghcr.io/*",
            "ghcr.io/*/x",
            "ghcr.io/o*/x",
            "ghcr.io/o/x*",
            "ghcr.io//x",
            "ghcr.io/o/",
            "busybox",
            "*",
            "docker.io/*",
            "docker.io:5000",
            "my_host:5000",
            "docker.io/a/b/c",
        ] {
            assert!(bad.parse::<PushRule>().is_err(), "{bad} parsed");
        }
        assert_eq!(
            "busybox".parse::<PushRule>().unwrap_err(),
            PushRuleError::NoRegistry {
                entry: "busybox".into()
            }
        );
    }

    #[test]
    fn destinations_match_on_registry_and_path() {
        let rules = [
            rule("registry.corp.example"),
            rule("ghcr.io/mycompany/*"),
            rule("quay.io/team/app"),
            rule("docker.io/mycompany/*"),
        ];
        for allowed in [
            "registry.corp.example/anything/deep/x:1",
            "ghcr.io/mycompany/x",
            "ghcr.io/mycompany/a/b:tag",
            "quay.io/team/app:v2",
            "mycompany/tool",
            "docker.io/mycompany/tool",
            "index.docker.io/mycompany/tool",
        ] {
            assert!(judge_push(&rules, allowed).is_ok(), "{allowed}");
        }
        for denied in [
            "registry.corp.example:5000/x",
            "ghcr.io/mycompany",
            "ghcr.io/mycompanyx/y",
            "ghcr.io/other/x",
            "quay.io/team/app2",
            "quay.io/team/app/sub",
            "busybox",
            "someone/tool",
        ] {
            assert!(judge_push(&rules, denied).is_err(), "{denied}");
        }
        assert_eq!(
            judge_push(&rules, "ghcr.io/other/x:1").unwrap_err(),
            "registry access denied: pushes to ghcr.io/other/x not allowed"
        );
        assert_eq!(
            judge_push(&rules, "someone/tool").unwrap_err(),
            "registry access denied: pushes to docker.io/someone/tool not allowed"
        );
        // `push = []`: nothing.
        assert!(judge_push(&[], "registry.corp.example/x").is_err());
        assert!(judge_push(&rules, "Ghcr.io/mycompany/X").is_err());
    }
}
