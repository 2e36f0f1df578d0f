//! Unit tests of policy parsing and entry patterns.

use super::*;

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::from_toml(text, &PolicySource::File("policy.toml".into()))
}

fn error_of(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn image_gate_address_and_upstream_are_checked() {
    let access =
        parse("[image_access]\ngate = \"[::1]:700\"\nupstream = \"http://hub.test:5000/\"\n")
            .unwrap()
            .image_access;
    assert_eq!(access.gate, "[::1]:700".parse().unwrap());
    assert_eq!(access.upstream, "http://hub.test:5000");
    let defaults = parse("").unwrap().image_access;
    assert_eq!(defaults.gate.to_string(), ImageAccess::DEFAULT_GATE);
    assert_eq!(defaults.upstream, ImageAccess::DEFAULT_UPSTREAM);
    for (text, why) in [
        ("gate = \"0.0.0.0:5055\"", "not a loopback address"),
        ("gate = \"127.0.0.1\"", "not a loopback address"),
        ("gate = \"127.0.0.1:0\"", "not a loopback address"),
        ("gate = \"127.0.0.1:5055\"", "below 1024"),
        ("upstream = \"ftp://hub.test\"", "base URL"),
        ("upstream = \"https://hub.test/v2/\"", "base URL"),
        ("upstream = \"https://user:pw@hub.test\"", "base URL"),
        ("upstream = \"hub.test\"", "not a URL"),
    ] {
        let error = error_of(&format!("[image_access]\n{text}\n"));
        assert!(
            error.contains(why) && error.contains(":2:"),
            "{text}: {error}"
        );
    }
}

#[test]
fn image_access_reads_namespaces_and_registry_json() {
    let dir = std::env::temp_dir().join(format!("ram-registry-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let registry_json = dir.join("registry.json");
    std::fs::write(&registry_json, r#"{"allowedOrgs": ["OtherOrg"]}"#).unwrap();
    let policy = Policy::from_toml(
        &format!(
            "[image_access]\nenabled = true\nverified_publishers = false\n\
             organizations = [\"MyCompany\"]\nverified_publisher_namespaces = [\"somepublisher\"]\n\
             registry_json = \"{}\"\n",
            registry_json.display()
        ),
        &PolicySource::Embedded,
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let access = &policy.image_access;
    assert!(access.enabled);
    assert!(access.rules.official && !access.rules.verified_publishers && !access.rules.community);
    assert_eq!(access.rules.organizations, ["mycompany", "otherorg"]);
    assert!(
        access
            .rules
            .verified_publisher_namespaces
            .contains(&"somepublisher".to_string())
    );
    assert!(
        access
            .rules
            .verified_publisher_namespaces
            .contains(&"bitnami".to_string())
    );
    // Off unless enabled; bad namespaces are errors with their position.
    assert!(
        !Policy::from_toml("", &PolicySource::Embedded)
            .unwrap()
            .image_access
            .enabled
    );
    let error = Policy::from_toml(
        "[image_access]\norganizations = [\"my company\"]",
        &PolicySource::Embedded,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains(":2:18") && error.contains("not a Docker Hub namespace"),
        "{error}"
    );
}

#[test]
fn registries_may_carry_a_port_and_a_scope() {
    let policy = Policy::from_toml(
        "[scope]\ndocker = true\ncgroups = [\"/system.slice/buildkit.service\"]\n\
         [registry_access]\nallow = [\"Nexus.Corp:8443\", \"*.harbor.example:443\"]",
        &PolicySource::Embedded,
    )
    .unwrap();
    let allow = &policy.registry_access.allow;
    assert_eq!(allow[0].domain, "nexus.corp");
    assert_eq!(allow[0].port, Some(8443));
    assert_eq!(allow[0].to_string(), "nexus.corp:8443");
    assert!(allow[0].matches("NEXUS.corp."));
    assert!(allow[1].wildcard && allow[1].matches("a.harbor.example"));
    assert!(policy.scope.docker && !policy.scope.containers && !policy.scope.whole_host);
    assert_eq!(policy.scope.cgroups.len(), 1);
    for bad in [
        "nexus.corp:0",
        "nexus.corp:70000",
        "nexus.corp:",
        "[::1]:5000",
    ] {
        let text = format!("[registry_access]\nallow = [\"{bad}\"]");
        assert!(
            Policy::from_toml(&text, &PolicySource::Embedded).is_err(),
            "{bad} was accepted"
        );
    }
    // No [scope]: nothing beyond the command line's cgroups.
    let plain = Policy::from_toml("", &PolicySource::Embedded).unwrap();
    assert_eq!(plain.scope, Scope::default());
    // The embedded default follows Docker (its containers only when asked for).
    let default = Policy::embedded_default();
    assert!(default.scope.docker && !default.scope.containers);
}

#[test]
fn embedded_default_is_valid_and_allows_docker_hub() {
    let policy = Policy::embedded_default();
    assert!(policy.registry_access.allow_loopback);
    let hub = presets::expand(&policy.registry_access.allow[0]).unwrap();
    for needed in [
        "registry-1.docker.io",
        "auth.docker.io",
        "production.cloudflare.docker.com",
    ] {
        assert!(hub.hosts.iter().any(|h| h.matches(needed)), "{needed}");
    }
}

#[test]
fn full_example_parses() {
    let policy = parse(
        r#"
        [registry_access]
        allow = ["docker.io", "*.example.com", "Registry.Example.ORG."]
        allow_cidrs = ["10.1.2.0/24", "fd00::/8", "192.0.2.7"]
        allow_loopback = false
        [dns]
        resolvers = ["10.0.0.53", "2001:db8::53"]
        "#,
    )
    .unwrap();
    let access = &policy.registry_access;
    assert_eq!(access.allow[2].domain, "registry.example.org");
    assert!(!access.allow_loopback);
    assert_eq!(access.allow_cidrs[2].to_string(), "192.0.2.7/32");
    assert_eq!(policy.dns.resolvers.unwrap().len(), 2);
}

#[test]
fn empty_policy_denies_all_but_loopback() {
    let policy = parse("").unwrap();
    assert!(policy.registry_access.allow.is_empty());
    assert!(policy.registry_access.allow_loopback);
    assert_eq!(policy.dns.resolvers, None);
}

#[test]
fn tls_mode_defaults_to_enforce_and_names_a_bad_value() {
    assert_eq!(parse("").unwrap().registry_access.tls, TlsMode::Enforce);
    for (text, mode) in [
        ("enforce", TlsMode::Enforce),
        ("audit", TlsMode::Audit),
        ("off", TlsMode::Off),
    ] {
        let policy = parse(&format!("[registry_access]\ntls = \"{text}\"\n")).unwrap();
        assert_eq!(policy.registry_access.tls, mode);
    }
    let err = error_of("[registry_access]\nallow = []\ntls = \"strict\"\n");
    assert!(err.starts_with("policy.toml:3:"), "{err}");
    assert!(err.contains("registry_access.tls: `strict`"), "{err}");
}

#[test]
fn metrics_are_off_unless_listen_names_an_address_or_a_socket() {
    assert_eq!(parse("").unwrap().metrics.listen, None);
    let tcp = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
    assert_eq!(
        tcp.metrics.listen,
        Some(MetricsAddress::Tcp("127.0.0.1:9464".parse().unwrap()))
    );
    let unix = parse("[metrics]\nlisten = \"unix:/run/ram/metrics.sock\"\n").unwrap();
    assert_eq!(
        unix.metrics.listen,
        Some(MetricsAddress::Unix("/run/ram/metrics.sock".into()))
    );
    for bad in ["localhost:9464", "9464", "unix:metrics.sock"] {
        let err = error_of(&format!("[metrics]\nlisten = \"{bad}\"\n"));
        assert!(
            err.contains(":2:") && err.contains("metrics.listen"),
            "{bad}: {err}"
        );
    }
    assert!(error_of("[metrics]\nport = 9464\n").contains("port"));
}

#[test]
fn unknown_keys_are_errors_with_line() {
    let err = error_of("[registry_access]\nallow = []\nalow_cidrs = []\n");
    assert!(err.starts_with("policy.toml:3:1:"), "{err}");
    assert!(err.contains("unknown field `alow_cidrs`"), "{err}");
    let err = error_of("[registry]\n");
    assert!(err.contains("unknown field `registry`"), "{err}");
}

#[test]
fn bad_cidrs_name_line_key_and_value() {
    let err =
        error_of("[registry_access]\nallow_cidrs = [\n  \"10.0.0.0/8\",\n  \"10.1.2.0/33\",\n]\n");
    assert!(err.starts_with("policy.toml:4:3:"), "{err}");
    assert!(err.contains("allow_cidrs"), "{err}");
    assert!(err.contains("`10.1.2.0/33`"), "{err}");
    assert!(err.contains("prefix length 33"), "{err}");
    assert!(error_of("[registry_access]\nallow_cidrs = [\"10.1.2.3/24\"]").contains("10.1.2.0/24"));
    assert!(error_of("[registry_access]\nallow_cidrs = [\"nope/8\"]").contains("not an IPv4"));
    assert!(
        error_of("[registry_access]\nallow_cidrs = [\"10.0.0.0/+8\"]").contains("not a prefix")
    );
    assert!(error_of("[registry_access]\nallow_cidrs = [\"fd00::1/8\"]").contains("fd00::/8"));
}

#[test]
fn bad_hostnames_are_errors() {
    for (name, why) in [
        ("", "empty hostname"),
        ("10.0.0.1", "allow_cidrs"),
        ("a..b", "empty label"),
        ("reg_istry.io", "character `_`"),
        ("-bad.io", "starts or ends"),
        ("*.io", "top-level domain"),
        ("foo.*.io", "first label"),
        ("**.io", "first label"),
        ("example.123", "all digits"),
    ] {
        let err = error_of(&format!("[registry_access]\nallow = [\"{name}\"]"));
        assert!(err.contains(why), "{name}: {err}");
        assert!(err.starts_with("policy.toml:2:"), "{name}: {err}");
    }
    let long_label = "a".repeat(64);
    assert!(error_of(&format!("[registry_access]\nallow = [\"{long_label}.io\"]")).contains("63"));
}

#[test]
fn type_errors_name_the_line() {
    let err = error_of("[registry_access]\nallow_loopback = \"yes\"\n");
    assert!(err.starts_with("policy.toml:2:"), "{err}");
    let err = error_of("[dns]\nresolvers = [\"10.0.0.53:53\"]\n");
    assert!(err.contains("without a port"), "{err}");
}

#[test]
fn dns_settings_have_defaults_and_ranges() {
    let policy = parse("").unwrap();
    assert_eq!(policy.dns, Dns::default());
    let policy =
        parse("[dns]\nmin_ttl = 1\nmax_ttl = 10\ngrace_period = 0\nmax_learned = 100").unwrap();
    assert_eq!(
        (
            policy.dns.min_ttl,
            policy.dns.max_ttl,
            policy.dns.grace_period
        ),
        (1, 10, 0)
    );
    assert_eq!(policy.dns.max_learned, 100);
    let err = error_of("[dns]\nmax_learned = 1");
    assert!(
        err.starts_with("policy.toml:2:15:") && err.contains("out of range"),
        "{err}"
    );
    let err = error_of("[dns]\nmin_ttl = -5");
    assert!(err.contains("out of range"), "{err}");
    let err = error_of("[dns]\nmin_ttl = 100\nmax_ttl = 10");
    assert!(
        err.starts_with("policy.toml:2:11:") && err.contains("larger than dns.max_ttl"),
        "{err}"
    );
    let err = error_of("[dns]\nmin_ttl = \"60s\"");
    assert!(err.starts_with("policy.toml:2:"), "{err}");
    let policy =
        parse("[dns]\ncontainer_resolvers = [\"10.96.0.10\", \"10.96.0.10\", \"fd00::a\"]")
            .unwrap();
    let texts: Vec<String> = policy
        .dns
        .container_resolvers
        .iter()
        .map(|r| r.0.to_string())
        .collect();
    assert_eq!(texts, ["10.96.0.10", "fd00::a"]);
    let err = error_of("[dns]\ncontainer_resolvers = [\"cluster-dns\"]");
    assert!(
        err.starts_with("policy.toml:2:") && err.contains("dns.container_resolvers"),
        "{err}"
    );
}

#[test]
fn duplicates_are_dropped() {
    let policy = parse("[registry_access]\nallow = [\"a.io\", \"A.io.\"]\nallow_cidrs = [\"10.0.0.0/8\", \"10.0.0.0/8\"]").unwrap();
    assert_eq!(policy.registry_access.allow.len(), 1);
    assert_eq!(policy.registry_access.allow_cidrs.len(), 1);
}

#[test]
fn matching_rules() {
    let exact: HostPattern = "docker.io".parse().unwrap();
    assert!(exact.matches("docker.io"));
    assert!(exact.matches("DOCKER.IO."));
    assert!(!exact.matches("registry-1.docker.io"));
    assert!(!exact.matches("evildocker.io"));

    let wildcard: HostPattern = "*.dkr.ecr.us-east-1.amazonaws.com".parse().unwrap();
    assert!(wildcard.matches("123456789012.dkr.ecr.us-east-1.amazonaws.com"));
    assert!(wildcard.matches("a.b.dkr.ecr.us-east-1.amazonaws.com."));
    assert!(!wildcard.matches("dkr.ecr.us-east-1.amazonaws.com"));
    assert!(!wildcard.matches("xdkr.ecr.us-east-1.amazonaws.com"));
    assert!(!wildcard.matches(".dkr.ecr.us-east-1.amazonaws.com"));
}

#[test]
fn cidr_contains_handles_mapped_ipv4() {
    let cidr: Cidr = "10.1.2.0/24".parse().unwrap();
    assert!(cidr.contains("10.1.2.9".parse().unwrap()));
    assert!(cidr.contains("::ffff:10.1.2.9".parse().unwrap()));
    assert!(!cidr.contains("10.1.3.9".parse().unwrap()));
    assert_eq!(cidr.prefix_len_v6(), 120);
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("192.0.2.1".parse().unwrap()));
    assert!(!all.contains("2001:db8::1".parse().unwrap()));
}

#[test]
fn repository_exceptions_are_docker_hub_repositories() {
    let policy = parse(
        "[image_access]\nallow_repositories = [\n  \"someuser/tool\",\n  \"somepublisher/*\",\n  \
         \"busybox\",\n  \"docker.io/library/busybox\",\n  \"Docker.IO/someuser/tool\",\n  \
         \"index.docker.io/library/*\",\n  \"someuser/tool\",\n]\n",
    )
    .unwrap();
    let entries: Vec<String> = policy
        .image_access
        .rules
        .allow_repositories
        .iter()
        .map(ToString::to_string)
        .collect();
    // Normalized as Docker does, and each once.
    assert_eq!(
        entries,
        [
            "someuser/tool",
            "somepublisher/*",
            "library/busybox",
            "library/*"
        ]
    );
    assert!(
        parse("")
            .unwrap()
            .image_access
            .rules
            .allow_repositories
            .is_empty()
    );
    for (entry, why) in [
        ("someuser/tool:1.0", "without a tag"),
        ("someuser/tool@sha256:ab", "without a digest"),
        ("SomeUser/tool", "must be lowercase"),
        ("someuser/Tool", "must be lowercase"),
        ("*", "namespace/*"),
        ("*/tool", "namespace/*"),
        ("some*/tool", "namespace/*"),
        ("someuser/*/x", "namespace/*"),
        ("someuser/t*", "namespace/*"),
        ("docker.io/*", "namespace/*"),
        ("someuser//tool", "not a repository name component"),
        ("someuser/", "not a repository name component"),
        ("/tool", "not a repository name component"),
        ("", "empty image reference"),
        (" someuser/tool", "not a repository name component"),
        ("ghcr.io/someuser/tool", "another registry"),
        ("localhost:5000/x", "another registry"),
        ("registry.corp.example/team/*", "another registry"),
        ("someuser/team/tool", "`name` or `namespace/name`"),
        ("docker.io:5000/someuser/tool", "port 443 only"),
    ] {
        let error = error_of(&format!(
            "[image_access]\nenabled = true\nallow_repositories = [\"someuser/ok\",\n  \"{entry}\"]\n"
        ));
        assert!(
            error.starts_with("policy.toml:4:3: invalid Docker Hub repository")
                && error.contains("image_access.allow_repositories")
                && error.contains(why),
            "{entry}: {error}"
        );
    }
}

#[test]
fn push_rules_are_registries_repositories_and_subtrees() {
    // Absent: pushes unrestricted.
    let absent = parse("[registry_access]\nallow = [\"ghcr.io\"]\n").unwrap();
    assert_eq!(absent.registry_access.push, None);
    assert_eq!(absent.image_access.rules.push, None);
    // Empty: no push at all.
    let none = parse("[registry_access]\npush = []\n").unwrap();
    assert_eq!(none.registry_access.push, Some(Vec::new()));
    assert_eq!(none.image_access.rules.push, Some(Vec::new()));
    let policy = parse(
        "[registry_access]\npush = [\n  \"registry.corp.example\",\n  \
         \"registry.corp.example:5000\",\n  \"ghcr.io/mycompany/*\",\n  \"quay.io/team/app\",\n  \
         \"mycompany/*\",\n  \"index.docker.io/mycompany/*\",\n]\n",
    )
    .unwrap();
    let entries: Vec<String> = policy
        .registry_access
        .push
        .as_ref()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        entries,
        [
            "registry.corp.example",
            "registry.corp.example:5000",
            "ghcr.io/mycompany/*",
            "quay.io/team/app",
            "docker.io/mycompany/*",
        ]
    );
    assert_eq!(policy.image_access.rules.push, policy.registry_access.push);
    for (entry, why) in [
        ("ghcr.io/o/x:1.0", "without a tag"),
        ("ghcr.io/o/x@sha256:ab", "without a digest"),
        ("ghcr.io/Upper/x", "must be lowercase"),
        ("ghcr.io/*", "`*`"),
        ("ghcr.io/*/x", "`*`"),
        ("ghcr.io/o*/x", "`*`"),
        ("ghcr.io//x", "repository name component"),
        ("busybox", "names no registry"),
        ("", "empty"),
    ] {
        let error = error_of(&format!(
            "[registry_access]\npush = [\"ghcr.io\",\n  \"{entry}\"]\n"
        ));
        assert!(
            error.starts_with("policy.toml:3:3: invalid push destination")
                && error.contains("registry_access.push")
                && error.contains(why),
            "{entry}: {error}"
        );
    }
}
