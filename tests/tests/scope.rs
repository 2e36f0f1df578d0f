//! What ram enforces over time: containers found by `scope.containers` as they come and go, and
//! a command-line cgroup that is removed and made anew (a restarted service). Real cgroups
//! (made by the test), real daemon, real clients.

use std::{fs, path::Path, time::Duration};

use ram_tests::{Daemon, TestCgroup, TestNet, attached_programs, peers::*, probe_in};
use serde_json::Value;

fn policy(scope: &str) -> String {
    format!("{scope}\n[registry_access]\nallow_loopback = false\n[dns]\nresolvers = []\n")
}

/// Polls (every 100 ms, up to `limit`) until `check` holds.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn enforced_paths(daemon: &Daemon) -> Vec<(String, String)> {
    let status: Value = daemon.status();
    status["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_owned(),
                c["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn containers_are_followed_as_they_come_and_go() {
    let _net = TestNet::new();
    let engines = ram_tests::other_engines(Path::new("/nonexistent"));
    assert!(
        engines.is_empty(),
        "container engines run here: {engines:?}"
    );
    let parent = TestCgroup::new();
    let bystander = TestCgroup::new();
    let daemon = Daemon::start(&policy("[scope]\ncontainers = true"), &[bystander.path()]).unwrap();

    // A "container" appears: a cgroup named as Docker's systemd driver names them.
    let id = "5e".repeat(32);
    let container = parent.path().join(format!("docker-{id}.scope"));
    fs::create_dir(&container).unwrap();
    let path = container.display().to_string();
    assert!(
        eventually(Duration::from_secs(3), || enforced_paths(&daemon)
            .iter()
            .any(|(p, why)| *p == path
                && why
                    == &format!("scope.containers: container {}", &id[..12]))),
        "{:?}",
        enforced_paths(&daemon)
    );
    assert_eq!(
        attached_programs(&container).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );
    let in_container = TestCgroup::adopt(container.clone());
    assert_eq!(
        probe_in(&in_container, "tcp-connect", &c(), HTTP_PORT).result,
        "EPERM"
    );

    // It goes: released.
    drop(in_container);
    assert!(
        eventually(Duration::from_secs(3), || !enforced_paths(&daemon)
            .iter()
            .any(|(p, _)| *p == path)),
        "{:?}",
        enforced_paths(&daemon)
    );
}

#[test]
fn a_cgroup_made_anew_is_enforced_again() {
    let _net = TestNet::new();
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(&policy(""), &[cgroup.path()]).unwrap();
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );

    // As `systemctl restart` does to a service's cgroup.
    fs::remove_dir(cgroup.path()).unwrap();
    // (The daemon may notice at once: it watches the mount for new cgroups.)
    fs::create_dir(cgroup.path()).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || attached_programs(cgroup.path())
            .len()
            == ram_tests::PROGRAMS_PER_CGROUP),
        "not enforced again"
    );
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &c(), HTTP_PORT).result,
        "EPERM"
    );
}

/// dockerd's BuildKit (cgroupfs driver) makes a cgroup per RUN step below `docker/buildkit`.
/// ram enforces that parent: programs on a cgroup run for every cgroup made below it, so a RUN
/// step is denied from its first instruction, with no one-second scan in between.
#[test]
fn buildkit_run_steps_are_enforced_from_their_start() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let engines = ram_tests::other_engines(Path::new("/nonexistent"));
    assert!(
        engines.is_empty(),
        "container engines run here: {engines:?}"
    );
    let parent = TestCgroup::new();
    let bystander = TestCgroup::new();
    let buildkit = parent.path().join("docker/buildkit");
    fs::create_dir_all(&buildkit).unwrap();
    let daemon = Daemon::start(&policy("[scope]\ncontainers = true"), &[bystander.path()]).unwrap();
    let path = buildkit.display().to_string();
    assert!(
        eventually(Duration::from_secs(3), || enforced_paths(&daemon)
            .iter()
            .any(|(p, why)| *p == path && why.contains("BuildKit's RUN steps"))),
        "{:?}",
        enforced_paths(&daemon)
    );

    // A RUN step made now, and used at once: denied by its parent's programs.
    let step = TestCgroup::adopt(buildkit.join("vnzzykkws3m9pp48rularan15"));
    fs::create_dir(step.path()).unwrap();
    assert_eq!(
        probe_in(&step, "tcp-connect", &c(), HTTP_PORT).result,
        "EPERM"
    );
    // The same from a cgroup outside the scope reaches the test host: the denial is ram's.
    let outside = TestCgroup::new();
    assert!(probe_in(&outside, "tcp-http", &c(), HTTP_PORT).ok());
    let step_path = format!(
        "/{}",
        step.path()
            .strip_prefix(ram_tests::cgroup2_mount())
            .unwrap()
            .display()
    );
    assert!(
        eventually(Duration::from_secs(3), || daemon
            .audit_records()
            .iter()
            .any(|r| {
                r["verdict"] == "deny" && r["cgroup"].as_str() == Some(step_path.as_str())
            })),
        "no denial audited for {step_path}: {:?}",
        daemon.audit_records()
    );
}
