//! The daemon's and CLI's behaviour around enforcement: defaults, refusals, errors.

use std::{process::Command, time::Duration};

use ram_tests::{
    Daemon, TempDir, TestCgroup, TestNet, attached_programs, cgroup2_mount, probe_with, ram_bin,
};

#[test]
fn default_policy_on_the_dedicated_cgroup() {
    let net = TestNet::new();
    let _http = net.http_server(8080);
    let dedicated = cgroup2_mount().join("ram.enforced");
    assert!(
        !dedicated.exists(),
        "{} exists already: a ram daemon runs on this machine, or one ran and its enforcement \
         stays (`ram uninstall` removes it)",
        dedicated.display()
    );

    // The embedded default's scope enforces the machine's Docker Engine and containers: never
    // run it where one exists (tests enforce only what they made).
    let engines = ram_tests::other_engines(std::path::Path::new("/nonexistent"));
    assert!(
        engines.is_empty(),
        "dockerd/containerd run here (pids {engines:?}); the embedded default policy would \
         enforce them: stop them before running this test"
    );

    // The README's main command: no policy, no cgroup.
    let daemon = Daemon::start_args(&[]).expect("daemon starts on the embedded default");
    assert!(dedicated.is_dir(), "the daemon creates ram.enforced");
    assert_eq!(
        attached_programs(&dedicated).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );
    let in_dedicated = || {
        let mut cmd = Command::new(ram_bin());
        cmd.args(["exec", "--", "python3"]);
        cmd
    };
    // The default allows only Docker Hub names (learned from DNS) and loopback.
    let denied = probe_with(
        in_dedicated(),
        "tcp-connect",
        &TestNet::PEER_V4[0].to_string(),
        8080,
    );
    assert_eq!(denied.result, "EPERM", "{denied:?}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(probe_with(in_dedicated(), "tcp-connect", "127.0.0.1", port).ok());

    // What `ram exec` runs stays confined: as another user it cannot move itself out of the
    // cgroup; as root it cannot make a packet socket (no CAP_NET_RAW).
    let exec = |args: &[&str]| {
        let output = Command::new(ram_bin())
            .arg("exec")
            .args(args)
            .env_remove("SUDO_UID")
            .output()
            .expect("ram exec runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let escape = format!(
        "echo $$ > {}/cgroup.procs && echo MOVED || echo STAYED",
        cgroup2_mount().display()
    );
    assert_eq!(
        exec(&["--user", "nobody", "--", "sh", "-c", &escape]),
        "STAYED"
    );
    let out = exec(&[
        "--",
        "python3",
        "-c",
        "import socket\ntry:\n socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print('MADE')\n\
         except OSError as e: print('ERRNO', e.errno)",
    ]);
    assert_eq!(out, "ERRNO 1", "a packet socket from ram exec");
    assert_eq!(exec(&["--user", "nobody", "--", "id", "-u"]), "65534");

    // Stopping the daemon leaves enforcement in place; `ram uninstall` removes it, and the
    // cgroup the daemon created.
    let (status, state) = daemon.stop_keeping_state().expect("daemon stops");
    assert!(status.success());
    assert_eq!(
        attached_programs(&dedicated).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );
    let output = state.ram().arg("uninstall").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!(
            "removed {} link(s)",
            ram_tests::PROGRAMS_PER_CGROUP
        )),
        "{stdout}"
    );
    assert!(!dedicated.exists(), "uninstall removes ram's own cgroup");
    assert!(!state.pin_dir().exists());
}

#[test]
fn an_invalid_policy_attaches_nothing_and_names_the_line() {
    let cgroup = TestCgroup::new();
    let dir = TempDir::new();
    let policy = dir.write(
        "bad.toml",
        "[registry_access]\nallow = [\"docker.io\"]\nallow_cidrs = [\"10.1.2.0/24\", \"10.1.2.0/33\"]\n",
    );
    let output = Command::new(ram_bin())
        .arg("daemon")
        .arg("--policy")
        .arg(&policy)
        .arg("--cgroup")
        .arg(cgroup.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:3:31", policy.display())),
        "{stderr}"
    );
    assert!(stderr.contains("10.1.2.0/33"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert!(attached_programs(cgroup.path()).is_empty());
}

#[test]
fn policy_check_names_file_line_and_value() {
    let dir = TempDir::new();
    let run = |text: &str| {
        let path = dir.write("policy.toml", text);
        let output = Command::new(ram_bin())
            .args(["policy", "check"])
            .arg(&path)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
            path.display().to_string(),
        )
    };

    let (code, stdout, _, path) = run(
        "[registry_access]\nallow = [\"docker.io\", \"*.example.com\"]\nallow_cidrs = [\"fd00::/8\"]\n",
    );
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains(&format!("{path}: ok: 2 hostname(s), 1 CIDR(s)")),
        "{stdout}"
    );

    let (code, _, stderr, path) = run(
        "[registry_access]\nallow = [\"docker.io\"]\n\n[dns]\nresolvers = [\"10.0.0.53\"]\nupstream = true\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("{path}:6:1: unknown field `upstream`")),
        "{stderr}"
    );

    let (code, _, stderr, path) =
        run("[registry_access]\nallow = [\n  \"docker.io\",\n  \"bad_host.example\",\n]\n");
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!(
            "{path}:4:3: invalid hostname `bad_host.example` in registry_access.allow"
        )),
        "{stderr}"
    );

    let missing = dir.path().join("missing.toml");
    let output = Command::new(ram_bin())
        .args(["policy", "check"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read policy file"));
}

#[test]
fn missing_cgroup_is_refused_with_advice() {
    let output = Command::new(ram_bin())
        .args(["daemon", "--cgroup", "/ram-no-such-cgroup-for-tests"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not exist") && stderr.contains("mkdir"),
        "{stderr}"
    );
}

#[test]
fn sigint_stops_the_daemon_but_not_enforcement() {
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start("", &[cgroup.path()]).expect("daemon starts");
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );
    // SAFETY: kill(2) of the daemon's own PID.
    unsafe { libc::kill(daemon.pid().cast_signed(), libc::SIGINT) };
    daemon
        .wait_for_line(
            "SIGINT: the daemon stops; enforcement stays in the kernel",
            Duration::from_secs(10),
        )
        .expect("the daemon logs its stop");
    let (status, state) = daemon.stop_keeping_state().expect("exited");
    assert!(status.success());
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );
    drop(state);
    assert!(attached_programs(cgroup.path()).is_empty());
}

#[test]
fn image_access_config_points_each_engine_at_the_policys_gate() {
    let dir = TempDir::new();
    let policy = dir.write(
        "policy.toml",
        "[image_access]\nenabled = true\ngate = \"127.0.0.1:443\"\n",
    );
    let run = |engine: &str| {
        let output = Command::new(ram_bin())
            .args(["image-access", "config", engine, "--policy"])
            .arg(&policy)
            .output()
            .expect("running ram image-access config");
        assert!(
            output.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(run("docker").contains("\"registry-mirrors\": [\"http://127.0.0.1:443\"]"));
    let containerd = run("containerd");
    assert!(
        containerd.contains("[host.\"http://127.0.0.1:443\"]"),
        "{containerd}"
    );
    assert!(containerd.contains("/etc/containerd/certs.d/docker.io/hosts.toml"));
    let podman = run("podman");
    assert!(podman.contains("location = \"127.0.0.1:443\""), "{podman}");
    // An unknown engine is refused with the choices.
    let output = Command::new(ram_bin())
        .args(["image-access", "config", "cri-o"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("docker, containerd, podman"));
}
