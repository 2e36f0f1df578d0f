//! A policy as the daemon holds it: its text (for `ram policy show` and the hash), the parsed
//! form and the compiled map entries.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use log::warn;
use sha2::{Digest as _, Sha256};

use super::control::POLICY_COPY_NAME;
use crate::{
    compile::{CompiledPolicy, ResolverOrigin},
    events::records::now_rfc3339,
    policy::{
        DEFAULT_POLICY, Policy, PolicyError, PolicySource,
        protect::{self, ProtectError},
        resolv,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Unprotected(#[from] ProtectError),
    #[error("cannot read policy file {path}; check the path")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] PolicyError),
}

pub struct LoadedPolicy {
    pub source: PolicySource,
    pub text: String,
    pub sha256: String,
    /// When it was read (RFC 3339).
    pub loaded: String,
    pub policy: Policy,
    pub compiled: CompiledPolicy,
}

impl LoadedPolicy {
    /// Reads, checks and compiles the policy at `path` (the embedded default without one).
    pub fn read(path: Option<&Path>) -> Result<Self, LoadError> {
        let (source, text) = match path {
            Some(path) => {
                protect::check_policy_path(path)?;
                let text = fs::read_to_string(path).map_err(|source| LoadError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                (PolicySource::File(path.to_owned()), text)
            }
            None => (PolicySource::Embedded, DEFAULT_POLICY.to_owned()),
        };
        let policy = Policy::from_toml(&text, &source)?;
        let mut compiled = CompiledPolicy::new(&policy, || {
            resolv::nameservers_from(Path::new(resolv::RESOLV_CONF)).unwrap_or_else(|err| {
                warn!("cannot read {}: {err}", resolv::RESOLV_CONF);
                Vec::new()
            })
        });
        // The host's search domains: a query for an allowed name followed by one is the
        // resolver library's own doing (`ndots`), and stays allowed.
        if let Ok(text) = fs::read_to_string(resolv::RESOLV_CONF) {
            for domain in resolv::search_domains(&text) {
                if !compiled.search_domains.contains(&domain) {
                    compiled.search_domains.push(domain);
                }
            }
        }
        Ok(Self {
            sha256: sha256_hex(text.as_bytes()),
            loaded: now_rfc3339(),
            source,
            text,
            policy,
            compiled,
        })
    }

    /// One line for the log: source, hash, rule counts, resolvers.
    pub fn describe(&self) -> String {
        let compiled = &self.compiled;
        format!(
            "policy {} (sha256 {}): {} hostname rule(s), {} address rule(s), resolvers {} from \
             {}, allowed connections audited: {}, TLS names: {}",
            self.source,
            &self.sha256[..12],
            compiled.names.len(),
            compiled.cidrs.len(),
            if compiled.resolvers.is_empty() {
                "none".to_string()
            } else {
                join(&compiled.resolvers)
            },
            match compiled.resolver_origin {
                ResolverOrigin::Policy => "the policy",
                ResolverOrigin::ResolvConf => resolv::RESOLV_CONF,
            },
            self.policy.audit.allowed.as_str(),
            self.policy.registry_access.tls.as_str(),
        )
    }

    pub fn warn_if_no_resolvers(&self) {
        if !self.compiled.resolvers.is_empty() {
            return;
        }
        match self.compiled.resolver_origin {
            ResolverOrigin::Policy => {
                warn!("dns.resolvers is empty: DNS from enforced cgroups is denied");
            }
            ResolverOrigin::ResolvConf => warn!(
                "dns.resolvers is unset and {} names no nameserver: DNS from enforced cgroups is \
                 denied",
                resolv::RESOLV_CONF
            ),
        }
    }

    /// Writes the policy in force to `<run dir>/policy.toml` (0644) for `ram policy show`, by
    /// rename so a reader never sees half a file.
    pub fn write_copy(&self, run_dir: &Path) {
        let path = run_dir.join(POLICY_COPY_NAME);
        let temp = run_dir.join(format!(".{POLICY_COPY_NAME}.tmp"));
        let text = format!(
            "# The policy in force, as read from {} at {} (sha256 {}).\n# Written by the ram \
             daemon; edit the source, not this copy.\n{}",
            self.source, self.loaded, self.sha256, self.text
        );
        let result = fs::write(&temp, text)
            .and_then(|()| fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)))
            .and_then(|()| fs::rename(&temp, &path));
        if let Err(err) = result {
            warn!(
                "cannot write {} for `ram policy show`: {err}",
                path.display()
            );
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn join(items: &[impl ToString]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_hash_is_sha256_of_the_file() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
