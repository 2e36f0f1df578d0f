//! Registry presets: an allow entry that names a known registry (`ghcr.io`) stands for every
//! host a pull from it needs. The table is data, in `registries.toml`, so that it is easy to
//! keep current; this module reads it and expands entries.

use std::{collections::HashMap, sync::OnceLock};

use serde::Deserialize;

use super::HostPattern;

/// The preset table, embedded from `ram-userspace/registries.toml`.
pub const REGISTRIES: &str = include_str!("../../registries.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    registry: Vec<Preset>,
}

/// One registry of the table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    #[serde(default)]
    entries: Vec<String>,
    #[serde(default)]
    pattern: Option<String>,
    hosts: Vec<String>,
    /// Ports the hosts' learned addresses are allowed on (at most four).
    pub ports: Vec<u16>,
    pub source: String,
}

/// What an allow entry expands to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    /// The preset's name.
    pub preset: String,
    /// Every host, the entry itself first.
    pub hosts: Vec<HostPattern>,
    /// The preset's ports: every host's, and the entry's unless it was written with its own.
    pub ports: ram_common::Ports,
}

/// The parsed table (parsed once; a unit test proves the embedded table valid).
pub fn presets() -> &'static [Preset] {
    static TABLE: OnceLock<Vec<Preset>> = OnceLock::new();
    TABLE.get_or_init(|| {
        toml::from_str::<Table>(REGISTRIES)
            .expect("registries.toml is valid (checked by a unit test)")
            .registry
    })
}

/// The expansion of `entry`, if it names a preset's registry.
pub fn expand(entry: &HostPattern) -> Option<Expansion> {
    let text = HostPattern {
        port: None,
        any_port: false,
        ..entry.clone()
    }
    .to_string();
    presets().iter().find_map(|preset| {
        let captures = if preset.entries.contains(&text) {
            HashMap::new()
        } else {
            match_pattern(preset.pattern.as_deref()?, &text)?
        };
        let mut ports = [0u16; 4];
        for (slot, port) in ports.iter_mut().zip(&preset.ports) {
            *slot = *port;
        }
        let mut hosts = vec![entry.clone()];
        for template in &preset.hosts {
            let mut host = template.replace("{entry}", &text);
            for (name, value) in &captures {
                host = host.replace(&format!("{{{name}}}"), value);
            }
            let host: HostPattern = host.parse().ok()?;
            if !hosts
                .iter()
                .any(|h| h.domain == host.domain && h.wildcard == host.wildcard)
            {
                hosts.push(host);
            }
        }
        Some(Expansion {
            preset: preset.name.clone(),
            hosts,
            ports,
        })
    })
}

/// Matches `text` (an allow entry, `*.` included) against `pattern`: `*` as the first label
/// stands for one or more labels; `{name}` inside a label stands for the rest of that label
/// (letters, digits, `-`) and is captured.
fn match_pattern(pattern: &str, text: &str) -> Option<HashMap<String, String>> {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let text: Vec<&str> = text.split('.').collect();
    let (pattern, text) = match pattern.first() {
        Some(&"*") => {
            // At least one label for the `*`.
            if text.len() < pattern.len() {
                return None;
            }
            (&pattern[1..], &text[text.len() - (pattern.len() - 1)..])
        }
        _ if pattern.len() == text.len() => (&pattern[..], &text[..]),
        _ => return None,
    };
    let mut captures = HashMap::new();
    for (p, t) in pattern.iter().zip(text) {
        match (p.find('{'), p.find('}')) {
            (Some(open), Some(close)) if open < close => {
                let (prefix, suffix) = (&p[..open], &p[close + 1..]);
                let value = t.strip_prefix(prefix)?.strip_suffix(suffix)?;
                if value.is_empty()
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return None;
                }
                captures.insert(p[open + 1..close].to_owned(), value.to_owned());
            }
            _ if p == t => {}
            _ => return None,
        }
    }
    Some(captures)
}

/// Docker Hub's registry names, as references may spell them.
pub const DOCKER_HUB_NAMES: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// Whether `pattern` lets a client reach Docker Hub: it covers one of Hub's registry names or
/// one of the hosts its pulls use (token service, layer CDNs; the `docker.io` preset's hosts).
pub fn reaches_docker_hub(pattern: &HostPattern) -> bool {
    static HOSTS: OnceLock<Vec<String>> = OnceLock::new();
    let hosts = HOSTS.get_or_init(|| {
        let mut hosts: Vec<String> = DOCKER_HUB_NAMES.iter().map(ToString::to_string).collect();
        let hub: HostPattern = "docker.io".parse().expect("docker.io is a valid name");
        let preset = expand(&hub).expect("registries.toml has the docker.io preset");
        hosts.extend(preset.hosts.into_iter().map(|h| h.domain));
        // Public mirrors of Docker Hub: a way around the gate if allowed.
        hosts.extend(DOCKER_HUB_MIRRORS.iter().map(ToString::to_string));
        hosts
    });
    hosts.iter().any(|host| pattern.matches(host))
}

/// Public pull-through mirrors of Docker Hub (Google's).
const DOCKER_HUB_MIRRORS: [&str; 1] = ["mirror.gcr.io"];

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> HostPattern {
        text.parse().unwrap()
    }

    fn expanded(entry: &str) -> Option<(String, Vec<String>)> {
        expand(&host(entry)).map(|e| (e.preset, e.hosts.iter().map(ToString::to_string).collect()))
    }

    /// An entry that selects `preset`: its first entry, or its pattern with `*` and every
    /// `{name}` filled in.
    fn sample_entry(preset: &Preset) -> String {
        if let Some(entry) = preset.entries.first() {
            return entry.clone();
        }
        let pattern = preset.pattern.as_deref().unwrap();
        let mut entry = String::new();
        let mut rest = pattern;
        while let Some(open) = rest.find('{') {
            let close = open + rest[open..].find('}').unwrap();
            entry.push_str(&rest[..open]);
            entry.push_str("x1");
            rest = &rest[close + 1..];
        }
        entry.push_str(rest);
        entry.replace('*', "a")
    }

    #[test]
    fn the_table_is_valid_and_every_host_parses() {
        assert!(presets().len() >= 13);
        for preset in presets() {
            let mut templates = preset.hosts.clone();
            templates.sort();
            templates.dedup();
            assert_eq!(
                templates.len(),
                preset.hosts.len(),
                "{} repeats a host",
                preset.name
            );
            // A host that does not parse would make the preset never match.
            let expansion = expand(&host(&sample_entry(preset))).unwrap();
            assert_eq!(expansion.preset, preset.name);
            assert!(!preset.source.is_empty(), "{} has no source", preset.name);
            assert!(
                (1..=4).contains(&preset.ports.len()) && !preset.ports.contains(&0),
                "{} names 1 to 4 ports",
                preset.name
            );
            assert!(
                !preset.entries.is_empty() || preset.pattern.is_some(),
                "{} selects nothing",
                preset.name
            );
            for entry in &preset.entries {
                let expansion = expand(&host(entry)).unwrap();
                assert_eq!(expansion.preset, preset.name);
            }
        }
    }

    #[test]
    fn docker_hub_and_ghcr_expand_to_their_blob_hosts() {
        let (name, hosts) = expanded("docker.io").unwrap();
        assert_eq!(name, "Docker Hub");
        assert_eq!(hosts[0], "docker.io");
        for needed in [
            "registry-1.docker.io",
            "auth.docker.io",
            "production.cloudflare.docker.com",
        ] {
            assert!(hosts.iter().any(|h| h == needed), "{needed} in {hosts:?}");
        }
        let (_, hosts) = expanded("ghcr.io").unwrap();
        assert_eq!(hosts, ["ghcr.io", "pkg-containers.githubusercontent.com"]);
        // Case and a trailing dot do not matter (entries are normalized when parsed).
        assert!(expanded("GHCR.IO.").is_some());
    }

    #[test]
    fn ecr_and_artifact_registry_patterns_capture_the_region() {
        let (name, hosts) = expanded("123456789012.dkr.ecr.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(name, "Amazon ECR");
        assert!(hosts.contains(
            &"prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com".to_string()
        ));
        let (_, hosts) = expanded("*.dkr.ecr.us-east-1.amazonaws.com").unwrap();
        assert_eq!(hosts[0], "*.dkr.ecr.us-east-1.amazonaws.com");
        assert!(
            hosts.contains(&"prod-us-east-1-starport-layer-bucket.s3.amazonaws.com".to_string())
        );
        assert!(
            expanded("dkr.ecr.us-east-1.amazonaws.com").is_none(),
            "no account label"
        );
        let (name, hosts) = expanded("europe-west1-docker.pkg.dev").unwrap();
        assert_eq!(name, "Google Artifact Registry");
        assert_eq!(hosts, ["europe-west1-docker.pkg.dev"]);
        // Never the whole of Cloud Storage, never mirror.gcr.io (a Docker Hub mirror).
        let (_, hosts) = expanded("gcr.io").unwrap();
        assert!(
            !hosts
                .iter()
                .any(|h| h.contains("storage.googleapis.com") || h.starts_with('*'))
        );
    }

    #[test]
    fn registry_k8s_io_expands_to_its_artifact_registries_buckets_and_cdn() {
        let (name, hosts) = expanded("registry.k8s.io").unwrap();
        assert_eq!(name, "Kubernetes registry (registry.k8s.io)");
        assert_eq!(hosts[0], "registry.k8s.io");
        // The hosts of the pull in kubernetes/registry.k8s.io's docs/debugging.md, a default
        // Artifact Registry region, and the CloudFront fallbacks.
        for needed in [
            "us-west1-docker.pkg.dev",
            "prod-registry-k8s-io-us-west-2.s3.dualstack.us-west-2.amazonaws.com",
            "us-central1-docker.pkg.dev",
            "europe-west4-docker.pkg.dev",
            "prod-registry-k8s-io-eu-central-1.s3.dualstack.eu-central-1.amazonaws.com",
            "d39mqg4b1dx9z1.cloudfront.net",
            "d1be1w964nk82h.cloudfront.net",
        ] {
            assert!(hosts.iter().any(|h| h == needed), "{needed} in {hosts:?}");
        }
        // Exact names only: the project's buckets and distributions, Artifact Registry's
        // regional hosts; never a wildcard over S3, CloudFront or pkg.dev.
        for h in &hosts[1..] {
            assert!(
                h.ends_with("-docker.pkg.dev")
                    || (h.starts_with("prod-registry-k8s-io-") && h.ends_with(".amazonaws.com"))
                    || h.ends_with("-eu-west-2.s3.dualstack.eu-west-2.amazonaws.com")
                    || h.ends_with(".cloudfront.net"),
                "{h}"
            );
            assert!(!h.starts_with('*'), "{h}");
        }
        // The registry only, not the rest of k8s.io.
        assert_eq!(expanded("k8s.io"), None);
        assert_eq!(expanded("*.k8s.io"), None);
    }

    #[test]
    fn azure_container_registry_pattern_captures_the_registry_name() {
        let (name, hosts) = expanded("contoso.azurecr.io").unwrap();
        assert_eq!(name, "Azure Container Registry");
        assert_eq!(hosts[0], "contoso.azurecr.io");
        // The docs' example endpoints, and the same registry's endpoint in every region.
        for needed in [
            "contoso.eastus.data.azurecr.io",
            "contoso.westus.data.azurecr.io",
            "contoso.westeurope.data.azurecr.io",
            "contoso.swedencentral.data.azurecr.io",
        ] {
            assert!(hosts.iter().any(|h| h == needed), "{needed} in {hosts:?}");
        }
        assert!(
            hosts.len() > 50,
            "every Azure public region: {}",
            hosts.len()
        );
        for h in &hosts[1..] {
            let region = h
                .strip_prefix("contoso.")
                .and_then(|h| h.strip_suffix(".data.azurecr.io"))
                .unwrap_or_else(|| panic!("{h} is contoso's data endpoint"));
            assert!(
                region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{h}"
            );
        }
        // Never another tenant's storage: no blob.core.windows.net, no wildcard.
        assert!(
            !hosts
                .iter()
                .any(|h| h.contains("blob.core.windows.net") || h.starts_with('*'))
        );
        // Names are normalized before matching; a port stays on the entry.
        let (_, hosts) = expanded("MyRegistry.AzureCR.io.").unwrap();
        assert!(
            hosts
                .iter()
                .any(|h| h == "myregistry.eastus.data.azurecr.io")
        );
        let expansion = expand(&host("contoso.azurecr.io:443")).unwrap();
        assert_eq!(expansion.hosts[0].to_string(), "contoso.azurecr.io:443");
        // One registry label: the wildcard (every registry), a regional or data endpoint
        // written by hand, and the apex stay as written.
        assert_eq!(expanded("*.azurecr.io"), None);
        assert_eq!(expanded("contoso.eastus.geo.azurecr.io"), None);
        assert_eq!(expanded("contoso.eastus.data.azurecr.io"), None);
        assert_eq!(expanded("azurecr.io"), None);
    }

    #[test]
    fn ngc_and_chainguard_expand_to_their_token_and_blob_hosts() {
        let (name, hosts) = expanded("nvcr.io").unwrap();
        assert_eq!(name, "NVIDIA NGC (nvcr.io)");
        assert_eq!(
            hosts,
            ["nvcr.io", "authn.nvidia.com", "ngc.download.nvidia.com"]
        );
        let (name, hosts) = expanded("cgr.dev").unwrap();
        assert_eq!(name, "Chainguard (cgr.dev)");
        assert_eq!(
            hosts,
            [
                "cgr.dev",
                "9236a389bd48b984df91adc1bc924620.r2.cloudflarestorage.com"
            ]
        );
        assert_eq!(expanded("evilcgr.dev"), None);
        assert_eq!(expanded("a.nvcr.io"), None);
    }

    #[test]
    fn no_preset_adds_shared_object_storage_or_docker_hub() {
        // Domains below which anyone can host content (a bucket, a storage account, a CDN
        // distribution, a registry): a preset names its registry's own hosts, never these
        // domains or a wildcard over them.
        const SHARED: [&str; 9] = [
            "storage.googleapis.com",
            "blob.core.windows.net",
            "r2.cloudflarestorage.com",
            "amazonaws.com",
            "cloudfront.net",
            "azurecr.io",
            "pkg.dev",
            "githubusercontent.com",
            "gcr.io",
        ];
        for preset in presets() {
            let expansion = expand(&host(&sample_entry(preset))).unwrap();
            for h in &expansion.hosts[1..] {
                for shared in SHARED {
                    let under = h.domain == shared || h.domain.ends_with(&format!(".{shared}"));
                    assert!(
                        h.domain != shared && !(h.wildcard && under),
                        "{}: {h}",
                        preset.name
                    );
                }
                if preset.name != "Docker Hub" {
                    assert!(!reaches_docker_hub(h), "{}: {h}", preset.name);
                }
            }
        }
    }

    #[test]
    fn other_registries_stay_as_written() {
        assert_eq!(expanded("nexus.corp.example:8443"), None);
        assert_eq!(expanded("harbor.example"), None);
        assert_eq!(expanded("evilghcr.io"), None);
        // A preset entry with a port keeps its port on the entry itself.
        let expansion = expand(&host("ghcr.io:443")).unwrap();
        assert_eq!(expansion.hosts[0].to_string(), "ghcr.io:443");
    }
}
