//! End to end with a real Docker Engine: ram's `scope.docker` finds dockerd's cgroup, and pulls
//! and builds reach only the registries and hosts the policy allows. Real dockerd (Debian's
//! docker.io, in its own mount namespace), real registries (Debian's docker-registry) on test
//! hosts, real DNS (dnsmasq).

use std::{fs, net::IpAddr, time::Duration};

use ram_tests::{Daemon, TempDir, TestCgroup, TestDocker, TestNet, peers::*};

use serde_json::Value;

const REGISTRY_PORT: u16 = 5000;
const FILE_PORT: u16 = 80;

/// Builds a one-file image from a tar (no base image needed) and pushes it to both
/// registries, before ram enforces anything.
fn push_tiny_image(docker: &TestDocker, registries: &[&str]) {
    let rootfs = docker.dir().join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    fs::write(rootfs.join("hello.txt"), "hello from a tiny image\n").unwrap();
    for registry in registries {
        let tag = format!("{registry}/tiny:1");
        docker.import_rootfs(&rootfs, &tag);
        let (ok, _, err, _) = docker.run(&["push", &tag]);
        assert!(ok, "docker push {tag}: {err}");
        let (ok, _, err, _) = docker.run(&["rmi", &tag]);
        assert!(ok, "docker rmi {tag}: {err}");
    }
}

fn policy(resolver: &str) -> String {
    format!(
        "[scope]\ndocker = true\n\n[registry_access]\nallow = [\"allowed.test:{REGISTRY_PORT}\"]\n\
         allow_loopback = true\n\n[dns]\nresolvers = [\"{resolver}\"]\n"
    )
}

#[test]
fn docker_pulls_and_builds_reach_only_allowed_registries() {
    let net = TestNet::new();
    let registry_dir = TempDir::new();
    let _allowed_registry = net.registry(&registry_dir, TestNet::PEER_V4[1].into(), REGISTRY_PORT);
    let _blocked_registry = net.registry(&registry_dir, TestNet::PEER_V4[2].into(), REGISTRY_PORT);
    let files = TempDir::new();
    files.write("payload.txt", "fetched by ADD\n");
    let _files = net.file_server(files.path(), FILE_PORT);
    let _dns = net.dnsmasq(
        &[
            ("allowed.test", TestNet::PEER_V4[1].into()),
            ("blocked.test", TestNet::PEER_V4[2].into()),
            ("files.test", TestNet::PEER_V4[0].into()),
        ],
        &[],
    );
    // Engines make their cgroup parent in the v1 hierarchies too: removed after the engine.
    let _v1 = ram_tests::V1Parents::new("docker");
    let engine_cgroup = TestCgroup::new();
    let resolver: IpAddr = TestNet::PEER_V4[0].into();
    let allowed = format!("allowed.test:{REGISTRY_PORT}");
    let blocked = format!("blocked.test:{REGISTRY_PORT}");
    let docker = TestDocker::start(&engine_cgroup, resolver, &[&allowed, &blocked]);
    push_tiny_image(&docker, &[&allowed, &blocked]);

    // The daemon is given only a cgroup of its own (so that it does not create ram.enforced);
    // the policy's scope finds dockerd's cgroup by its process.
    let bystander = TestCgroup::new();
    let mut daemon = Daemon::start(&policy(&a()), &[bystander.path()]).unwrap();
    let status = daemon.status();
    let engine = status["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == engine_cgroup.path().display().to_string())
        .unwrap_or_else(|| panic!("dockerd's cgroup is not enforced: {status:#}"));
    assert!(
        engine["reason"]
            .as_str()
            .unwrap()
            .starts_with("scope.docker: cgroup of dockerd"),
        "{engine}"
    );

    // The allowed registry: pulled, and the image is whole.
    let (ok, _, err, _) = docker.run(&["pull", &format!("{allowed}/tiny:1")]);
    assert!(ok, "pull from the allowed registry: {err}");
    let (ok, _, err, _) = docker.run(&[
        "create",
        "--name",
        "tiny",
        &format!("{allowed}/tiny:1"),
        "/none",
    ]);
    assert!(ok, "docker create: {err}");
    let (ok, out, err, _) = docker.run(&["cp", "tiny:/hello.txt", "-"]);
    assert!(
        ok && out.contains("hello from a tiny image"),
        "docker cp: {err}"
    );

    // The blocked one: refused at once, with an error that says so.
    let (ok, _, err, seconds) = docker.run(&["pull", &format!("{blocked}/tiny:1")]);
    assert!(!ok, "pull from the blocked registry succeeded");
    assert!(seconds < 10.0, "took {seconds:.1} s: {err}");
    assert!(
        err.contains("operation not permitted") && err.contains("blocked.test"),
        "{err}"
    );
    // dockerd cannot even look the name up: its query never leaves (dns.queries = "allowed").
    daemon
        .wait_for_line("deny DNS query for blocked.test", Duration::from_secs(5))
        .unwrap();
    let records = daemon.audit_records();
    let denial: &Value = records
        .iter()
        .find(|r| r["verdict"] == "deny" && r["hostname"] == "blocked.test")
        .unwrap_or_else(|| panic!("no denial in {records:#?}"));
    assert_eq!(denial["reason"], "query_not_allowed");
    assert_eq!(denial["hook"], "dns_query");
    assert!(
        !records.iter().any(|r| r["dst_addr"] == c()),
        "nothing reached the blocked registry's address: {records:#?}"
    );

    // A build (classic builder: dockerd itself fetches ADD URLs) from the pulled image.
    let build = |host: &str| {
        let context = TempDir::new();
        context.write(
            "Dockerfile",
            &format!(
                "FROM {allowed}/tiny:1\nADD http://{host}:{FILE_PORT}/payload.txt /payload.txt\n"
            ),
        );
        let output = docker
            .docker()
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-t", "built:1"])
            .arg(context.path())
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, log) = build("blocked.test");
    assert!(!ok, "ADD from a blocked host succeeded: {log}");
    assert!(log.contains("operation not permitted"), "{log}");
    // Allow the file host by name (a policy edit, in force within a second), then build again.
    daemon.state().write_policy(&policy(&a()).replace(
        &format!("allow = [\"{allowed}\"]"),
        &format!("allow = [\"{allowed}\", \"files.test\"]"),
    ));
    daemon
        .wait_for_line("now in force", Duration::from_secs(5))
        .unwrap();
    let (ok, log) = build("files.test");
    assert!(ok, "ADD from an allowed host: {log}");
}
