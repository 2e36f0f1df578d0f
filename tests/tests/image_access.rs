//! Image Access Management end to end: a real Docker Engine asks ram's authorization plugin
//! about pulls and container creation, and Docker Hub images of a disallowed category are
//! refused with Docker's own message. Real dockerd (Debian's docker.io) in its own mount
//! namespace; "Docker Hub" itself is not reached here (allowed pulls pass the plugin and then
//! fail on the test's empty DNS, which tells them apart from refusals).

use std::time::Duration;

use ram_tests::{Daemon, TestCgroup, TestDocker, TestNet, audit_records};

fn policy(verified_publishers: bool) -> String {
    format!(
        "[registry_access]\nallow = [\"docker.io\"]\n\n[image_access]\nenabled = true\n\
         official = true\nverified_publishers = {verified_publishers}\ncommunity = false\n\
         organizations = [\"mycompany\"]\nverified_publisher_namespaces = [\"somepublisher\"]\n"
    )
}

const PLUGIN_DENIAL: &str = "Error response from daemon: authorization denied by plugin ram: ";

#[test]
fn docker_hub_images_are_judged_by_category_with_dockers_message() {
    let net = TestNet::new();
    let _dns = net.dnsmasq(&[], &[]);
    let bystander = TestCgroup::new();
    let state = Daemon::prepare(&policy(true), &[bystander.path()]);
    let socket = state.dir().join("authz.sock");
    let mut daemon = state
        .with_args(&["--authz-socket", socket.to_str().unwrap()])
        .start()
        .unwrap();
    daemon
        .wait_for_line("Docker authorization plugin `ram`", Duration::from_secs(5))
        .unwrap();

    let engine_cgroup = TestCgroup::new();
    let docker = TestDocker::start_with(
        &engine_cgroup,
        TestNet::PEER_V4[0].into(),
        &[],
        &["--authorization-plugin=ram"],
        Some(&socket),
    );

    // Community: refused by the plugin, with Docker's words.
    let (ok, _, err, _) = docker.run(&["pull", "someuser/custom-image"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!("{PLUGIN_DENIAL}image access denied: community images not allowed"),
        "dockerd's log:\n{}",
        docker.log()
    );
    let (ok, _, err, _) = docker.run(&["create", "someuser/custom-image:1.0"]);
    assert!(!ok);
    assert!(
        err.contains("image access denied: community images not allowed"),
        "{err}"
    );

    // Docker Compose pulls through the same API.
    let project = ram_tests::TempDir::new();
    project.write(
        "docker-compose.yml",
        "version: \"3\"\nservices:\n  app:\n    image: someuser/custom-image\n",
    );
    let output = std::process::Command::new("docker-compose")
        .current_dir(project.path())
        .env("DOCKER_HOST", docker.host())
        .arg("pull")
        .output()
        .expect("running docker-compose");
    let compose_err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{compose_err}");
    assert!(
        compose_err.contains("image access denied: community images not allowed"),
        "{compose_err}"
    );

    // Official, organization and verified-publisher images pass the plugin (and then fail to
    // reach Docker Hub, which does not exist here).
    for image in [
        "busybox",
        "docker.io/library/busybox:1.36",
        "mycompany/app",
        "somepublisher/tool",
    ] {
        let (ok, _, err, _) = docker.run(&["pull", image]);
        assert!(!ok, "{image} was pulled from nowhere?");
        assert!(!err.contains("authorization denied"), "{image}: {err}");
    }

    // Verified publishers switched off: a policy edit, in force within a second.
    daemon.state().write_policy(&policy(false));
    daemon
        .wait_for_line("now in force", Duration::from_secs(5))
        .unwrap();
    let (ok, _, err, _) = docker.run(&["pull", "somepublisher/tool"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!("{PLUGIN_DENIAL}image access denied: verified publisher images not allowed"),
    );
    let (_, _, err, _) = docker.run(&["pull", "mycompany/app"]);
    assert!(
        !err.contains("authorization denied"),
        "organizations stay allowed: {err}"
    );

    // The audit log has the decisions.
    let records = audit_records(&daemon.audit_log);
    let denial = records
        .iter()
        .find(|r| r["image"] == "someuser/custom-image:latest")
        .unwrap_or_else(|| panic!("no image decision in {records:#?}"));
    assert_eq!(denial["verdict"], "deny");
    assert_eq!(denial["action"], "image_pull");
    assert_eq!(denial["via"], "authorization_plugin");
}
