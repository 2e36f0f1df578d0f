//! The daemon's life cycle: the audit log, policy changes while it runs, enforcement that
//! outlives it (kill -9, restart), and the operator commands. Real daemon, real kernel, real
//! clients (curl, dig, python sockets) and servers (dnsmasq, http.server) on a test host.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    process::{Command, Stdio},
    time::Duration,
};

use ram_tests::{
    Daemon, TestCgroup, TestNet, attached_programs, audit_records, client_script, peers::*,
    probe_in, time_until,
};
use serde_json::Value;

/// Allows `registry.test` by name and `cidrs` by address; the resolver is dnsmasq on peer A.
fn policy(names: &[&str], cidrs: &[String]) -> String {
    let quote = |items: Vec<String>| {
        items
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[registry_access]\nallow = [{}]\nallow_cidrs = [{}]\nallow_loopback = false\n[dns]\n\
         resolvers = [\"{}\"]\n",
        quote(names.iter().map(ToString::to_string).collect()),
        quote(cidrs.to_vec()),
        a()
    )
}

fn connect(cgroup: &TestCgroup, addr: &str) -> String {
    probe_in(cgroup, "tcp-connect", addr, HTTP_PORT).result
}

/// `dig` inside the cgroup, against dnsmasq on peer A.
fn dig(cgroup: &TestCgroup, name: &str) -> String {
    ram_tests::dig_in(cgroup, &a(), name, "A", 2, &[])
}

/// `curl` inside the cgroup; returns its exit code (7: could not connect).
fn curl(cgroup: &TestCgroup, url: &str) -> Option<i32> {
    cgroup
        .command("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "5", url])
        .stderr(Stdio::null())
        .status()
        .expect("running curl")
        .code()
}

fn find(records: &[Value], what: impl Fn(&Value) -> bool) -> Option<&Value> {
    records.iter().find(|r| what(r))
}

#[test]
fn audit_lines_name_process_destination_hostname_and_rule() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(&[("registry.test", TestNet::PEER_V4[1].into())], &[]);
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(&policy(&["registry.test"], &[]), &[cgroup.path()]).unwrap();

    assert_eq!(dig(&cgroup, "registry.test"), b());
    assert_eq!(
        curl(&cgroup, &format!("http://{}:{HTTP_PORT}/", b())),
        Some(0)
    );
    assert_eq!(
        curl(&cgroup, &format!("http://{}:{HTTP_PORT}/", b())),
        Some(0)
    );
    assert_eq!(
        curl(&cgroup, &format!("http://{}:{HTTP_PORT}/", c())),
        Some(7)
    );
    daemon
        .wait_for_line("deny connect4 tcp 198.51.100.4", Duration::from_secs(5))
        .unwrap();

    let records = daemon.audit_records();
    let deny = find(&records, |r| r["verdict"] == "deny" && r["comm"] == "curl")
        .unwrap_or_else(|| panic!("no denial by curl in {records:#?}"));
    let cgroup_name = format!("/{}", cgroup.path().file_name().unwrap().to_string_lossy());
    for (key, expected) in [
        ("reason", Value::from("not_learned")),
        ("dst_addr", Value::from(c())),
        ("dst_port", Value::from(HTTP_PORT)),
        ("protocol", Value::from("tcp")),
        ("hook", Value::from("connect4")),
        ("uid", Value::from(0)),
        ("cgroup", Value::from(cgroup_name.clone())),
        ("container_id", Value::Null),
        ("rule", Value::Null),
    ] {
        assert_eq!(deny[key], expected, "{key} in {deny}");
    }
    assert!(deny["pid"].as_u64().unwrap() > 0 && deny["pid"] == deny["tgid"]);
    let time = deny["time"].as_str().unwrap();
    assert!(
        time.len() == 30 && time.ends_with('Z') && &time[10..11] == "T",
        "{time}"
    );

    // The address was learned; each curl's connection to it is reported (the first of each
    // process per destination, audit.allowed = "first"), with the hostname and the rule.
    let learn = find(&records, |r| r["verdict"] == "learn").expect("a learn line");
    assert_eq!(learn["hostname"], "registry.test");
    assert_eq!(learn["rule"], "registry.test");
    let allows: Vec<&Value> = records
        .iter()
        .filter(|r| r["verdict"] == "allow" && r["comm"] == "curl")
        .collect();
    assert_eq!(allows.len(), 2, "one per curl process: {allows:#?}");
    assert_eq!(allows[0]["reason"], "learned");
    assert_eq!(allows[0]["hostname"], "registry.test");
    assert_eq!(allows[0]["rule"], "registry.test");
    assert_eq!(allows[0]["dst_addr"], b());
}

#[test]
fn one_process_is_reported_once_per_destination_and_window() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy(&[], &[format!("{}/32", a())]), &[cgroup.path()]).unwrap();
    // One python process, 20 connections to A: one allow line.
    let output = cgroup
        .command("python3")
        .arg(client_script("connect_loop.py"))
        .args([&a(), &c(), &HTTP_PORT.to_string(), "10", "20"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).expect("connect_loop report");
    assert_eq!(report["allowed_ok"], 20);
    let all_denials_logged = time_until(Duration::from_secs(5), || {
        daemon
            .audit_records()
            .iter()
            .filter(|r| r["verdict"] == "deny")
            .count()
            == 20
    });
    assert!(all_denials_logged.is_some());
    let records = daemon.audit_records();
    let allows = records
        .iter()
        .filter(|r| r["verdict"] == "allow" && r["dst_addr"] == a())
        .count();
    let denies = records
        .iter()
        .filter(|r| r["verdict"] == "deny" && r["dst_addr"] == c())
        .count();
    assert_eq!(allows, 1, "{records:#?}");
    assert_eq!(denies, 20, "every denial is reported");
    let allow = find(&records, |r| r["verdict"] == "allow").unwrap();
    assert_eq!(allow["reason"], "cidr");
    assert_eq!(allow["rule"], format!("{}/32", a()));
}

#[test]
fn kill_9_leaves_enforcement_and_learning_in_place_and_a_restart_adopts_it() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(&[("registry.test", TestNet::PEER_V4[1].into())], &[]);
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy(&["registry.test"], &[]), &[cgroup.path()]).unwrap();

    let state = daemon.kill9().unwrap();
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );
    assert_eq!(connect(&cgroup, &c()), "EPERM", "still denied, no daemon");
    assert_eq!(connect(&cgroup, &b()), "EPERM", "not learned yet");
    assert_eq!(dig(&cgroup, "registry.test"), b());
    assert_eq!(
        connect(&cgroup, &b()),
        "ok",
        "learned by the kernel with no daemon running"
    );

    let mut daemon = state.start().unwrap();
    daemon
        .wait_for_line("adopted the pinned state", Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP,
        "swapped, not added"
    );
    assert_eq!(
        connect(&cgroup, &b()),
        "ok",
        "learned addresses carried over"
    );
    assert_eq!(connect(&cgroup, &c()), "EPERM");
    // What happened while no daemon ran was kept in the ring buffers and is logged now.
    daemon
        .wait_for_line(
            "learned 198.51.100.3 for registry.test",
            Duration::from_secs(5),
        )
        .unwrap();
    let records = daemon.audit_records();
    assert!(
        find(&records, |r| r["verdict"] == "deny" && r["dst_addr"] == c()).is_some(),
        "the denial made while the daemon was dead is in the log: {records:#?}"
    );
}

#[test]
fn a_restart_leaves_no_window() {
    let _net = TestNet::new();
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy(&[], &[format!("{}/32", a())]), &[cgroup.path()]).unwrap();

    // A client connecting to A (allowed) and C (denied) in a loop while the daemon stops and
    // starts three times; SIGTERM ends the loop after the last restart (60 s is its safety
    // bound). Port 9: nothing listens, so a connection that gets through is refused by the
    // host at once.
    let client = cgroup
        .command("python3")
        .arg(client_script("connect_loop.py"))
        .args([&a(), &c(), "9", "60", "100000000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client = client;
    let mut daemon = daemon;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        let (status, state) = daemon.stop_keeping_state().unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(100));
        daemon = state.start().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        client.try_wait().unwrap().is_none(),
        "the client ended before the last restart: the loop did not cover it"
    );
    let report = ram_tests::stop_connect_loop(client);
    drop(daemon);
    assert!(report["rounds"].as_u64().unwrap() > 1000, "{report}");
    assert_eq!(
        report["denied_ok"], 0,
        "a denied address got through: {report}"
    );
    assert_eq!(
        report["allowed_failed"],
        serde_json::json!({}),
        "an allowed address was refused: {report}"
    );
}

#[test]
fn a_policy_edit_is_in_force_within_a_second_and_a_broken_one_changes_nothing() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(&[("registry.test", TestNet::PEER_V4[1].into())], &[]);
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(
        &policy(&["registry.test"], &[format!("{}/32", a())]),
        &[cgroup.path()],
    )
    .unwrap();
    assert_eq!(dig(&cgroup, "registry.test"), b());
    assert_eq!(connect(&cgroup, &b()), "ok");
    assert_eq!(connect(&cgroup, &c()), "EPERM");
    let first_hash = daemon.status()["policy"]["sha256"].clone();

    // Allow C, and drop registry.test: its learned address must go too.
    daemon.state().write_policy(&policy(
        &[],
        &[format!("{}/32", a()), format!("{}/32", c())],
    ));
    let took = time_until(Duration::from_secs(3), || connect(&cgroup, &c()) == "ok")
        .expect("the edit took effect");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        connect(&cgroup, &b()),
        "EPERM",
        "learned under a removed rule"
    );
    daemon
        .wait_for_line("forgot 1 learned address(es)", Duration::from_secs(2))
        .unwrap();
    let status = daemon.status();
    assert_eq!(status["policy"]["reloads"], 1);
    assert_ne!(status["policy"]["sha256"], first_hash);

    // A broken edit: logged with its line, and nothing changes.
    daemon
        .state()
        .write_policy("[registry_access]\nallow_cidrs = [\n  \"not-a-cidr\",\n]\n");
    let line = daemon
        .wait_for_line("REJECTED", Duration::from_secs(3))
        .unwrap();
    assert!(line.contains("policy.toml:3:3"), "{line}");
    assert_eq!(connect(&cgroup, &c()), "ok", "the previous policy stays");
    assert_eq!(connect(&cgroup, &a()), "ok");
    assert_eq!(connect(&cgroup, &b()), "EPERM");
    let status = daemon.status();
    assert!(
        status["policy"]["rejected"]
            .as_str()
            .is_some_and(|r| r.contains("not-a-cidr")),
        "{status}"
    );

    // So does a policy others can write (put in place whole, mode and all, by rename).
    let temp = daemon.state().dir().join("writable.toml");
    fs::write(&temp, policy(&[], &[format!("{}/32", b())])).unwrap();
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o666)).unwrap();
    fs::rename(&temp, daemon.state().policy_path()).unwrap();
    daemon
        .wait_for_line("has mode 0666", Duration::from_secs(3))
        .unwrap();
    assert_eq!(connect(&cgroup, &b()), "EPERM");
    assert_eq!(connect(&cgroup, &c()), "ok");
}

#[test]
fn a_group_writable_policy_is_refused_at_start() {
    let cgroup = TestCgroup::new();
    let state = Daemon::prepare(&policy(&[], &[]), &[cgroup.path()]);
    fs::set_permissions(state.policy_path(), fs::Permissions::from_mode(0o664)).unwrap();
    let output = state
        .ram()
        .args(["daemon", "--policy"])
        .arg(state.policy_path())
        .arg("--cgroup")
        .arg(cgroup.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("has mode 0664") && stderr.contains("chmod go-w"),
        "{stderr}"
    );
    assert!(attached_programs(cgroup.path()).is_empty());

    // Reached through a directory others may write: refused too.
    let in_tmp = std::env::temp_dir().join(format!("ram-test-{}.toml", std::process::id()));
    fs::write(&in_tmp, policy(&[], &[])).unwrap();
    let output = state
        .ram()
        .args(["daemon", "--policy"])
        .arg(&in_tmp)
        .arg("--cgroup")
        .arg(cgroup.path())
        .output()
        .unwrap();
    let _ = fs::remove_file(&in_tmp);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("directory /tmp has mode 1777"), "{stderr}");
    assert!(attached_programs(cgroup.path()).is_empty());
}

#[test]
fn ring_buffer_overflow_is_counted_and_logged() {
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy(&[], &[]), &[cgroup.path()]).unwrap();
    // With no daemon reading, 5,000 denials overflow the 256 KiB buffer (~2,700 events of 96
    // bytes with their headers).
    let state = daemon.kill9().unwrap();
    let output = cgroup
        .command("python3")
        .arg(client_script("flood.py"))
        .args([&c(), "9", "5000"])
        .output()
        .unwrap();
    let flood: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(flood["refused"], 5000, "{flood}");

    let mut daemon = state.start().unwrap();
    daemon
        .wait_for_line("audit event(s) were lost", Duration::from_secs(5))
        .unwrap();
    let dropped = daemon.counter("events_dropped");
    assert!(dropped > 1000, "dropped {dropped}");
    // Every denial is either in the log (the backlog, drained after the restart) or counted.
    let denials = || {
        audit_records(&daemon.audit_log)
            .iter()
            .filter(|r| r["verdict"] == "deny")
            .count() as u64
    };
    let complete = time_until(Duration::from_secs(5), || denials() + dropped == 5000);
    assert!(complete.is_some(), "{} logged + {dropped} lost", denials());
    let records = audit_records(&daemon.audit_log);
    let lost = find(&records, |r| r["verdict"] == "dropped").expect("a dropped line");
    assert_eq!(lost["count"], dropped);
}

#[test]
fn operators_see_status_learned_addresses_checks_and_the_policy() {
    let net = TestNet::new();
    let _dns = net.dnsmasq(&[("registry.test", TestNet::PEER_V4[1].into())], &[]);
    let cgroup = TestCgroup::new();
    let text = policy(&["registry.test", "*.mirror.test"], &[]);
    let daemon = Daemon::start(&text, &[cgroup.path()]).unwrap();
    assert_eq!(dig(&cgroup, "registry.test"), b());

    let status = daemon.status();
    assert_eq!(status["enforcing"], true);
    assert_eq!(status["cgroups"][0]["present"], true);
    assert_eq!(status["policy"]["hostnames"], 2);
    let learned_fill = status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["map"] == "learned")
        .unwrap()
        .clone();
    assert_eq!(learned_fill["used"], 1);
    let text_status = daemon.ram(&["status"]).unwrap();
    assert!(text_status.contains("ram: enforcing"), "{text_status}");

    let learned: Value =
        serde_json::from_str(&daemon.ram(&["learned", "--json"]).unwrap()).unwrap();
    assert_eq!(learned[0]["addr"], b());
    assert_eq!(learned[0]["hostname"], "registry.test");
    assert_eq!(learned[0]["rule"], "registry.test");
    assert!(learned[0]["expires_in_s"].as_u64().unwrap() > 0);

    let check = daemon.ram(&["check", "pull.mirror.test"]).unwrap();
    assert!(
        check.contains("allowed by allow entry `*.mirror.test` (#1)"),
        "{check}"
    );
    let check = daemon.ram(&["check", "mirror.test"]).unwrap();
    assert!(check.contains("denied"), "{check}");

    // Any user can read the policy in force; only root reaches the control socket.
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(ram_tests::ram_bin())
            .args(args)
            .env("RAM_RUN_DIR", daemon.state().run_dir())
            .output()
            .unwrap()
    };
    let shown = as_nobody(&["policy", "show"]);
    assert!(shown.status.success(), "{shown:?}");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("# The policy in force") && shown.ends_with(&text),
        "{shown}"
    );
    let refused = as_nobody(&["status"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("are you root"));
}

#[test]
fn a_detached_program_is_noticed_and_attached_again() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(&policy(&[], &[]), &[cgroup.path()]).unwrap();
    let id = fs::metadata(cgroup.path())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let link = daemon
        .state()
        .pin_dir()
        .join(format!("links/{id}/connect4_gate"));
    let output = Command::new("python3")
        .arg(client_script("link_detach.py"))
        .arg(&link)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    daemon
        .wait_for_line("connect4_gate detached from cgroup", Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );
    assert_eq!(connect(&cgroup, &c()), "EPERM");
}

#[test]
fn sighup_reopens_the_audit_log() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(&policy(&[], &[]), &[cgroup.path()]).unwrap();
    let rotated = daemon.audit_log.with_extension("jsonl.1");
    fs::rename(&daemon.audit_log, &rotated).unwrap();
    // SAFETY: kill(2) of the daemon's own PID.
    unsafe { libc::kill(daemon.pid().cast_signed(), libc::SIGHUP) };
    daemon
        .wait_for_line("SIGHUP: reopening the audit log", Duration::from_secs(5))
        .unwrap();
    assert_eq!(connect(&cgroup, &c()), "EPERM");
    let found = time_until(Duration::from_secs(3), || {
        audit_records(&daemon.audit_log)
            .iter()
            .any(|r| r["verdict"] == "deny")
    });
    assert!(found.is_some(), "the denial went to the new file");
    assert_eq!(
        fs::metadata(&daemon.audit_log)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

/// Under systemd (`$JOURNAL_STREAM` naming stderr), each log line carries its syslog priority
/// for the journal and no time stamp.
#[test]
fn log_lines_carry_journal_priorities_under_systemd() {
    use std::os::unix::fs::MetadataExt as _;
    let cgroup = TestCgroup::new();
    let state = Daemon::prepare(&policy(&[], &[]), &[cgroup.path()]);
    let log_path = state.dir().join("journal-stream.log");
    let log = fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut child = state
        .ram()
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("RUST_LOG", "info")
        .arg("daemon")
        .arg("--policy")
        .arg(state.policy_path())
        .arg("--cgroup")
        .arg(cgroup.path())
        .arg("--audit-log")
        .arg(state.audit_log())
        .arg("--authz-socket")
        .arg(state.authz_socket())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = time_until(Duration::from_secs(20), || {
        fs::read_to_string(&log_path).is_ok_and(|text| text.contains("enforcing on"))
    });
    // SAFETY: kill(2) of our own child's PID.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
    let _ = child.wait();
    let text = fs::read_to_string(&log_path).unwrap();
    assert!(started.is_some(), "{text}");
    for line in text.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "no priority: {line}"
        );
        assert!(!line.contains("Z INFO"), "a time stamp: {line}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("<6>enforcing on")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("<6>SIGTERM")), "{text}");
}

#[test]
fn systemd_hears_ready_once_enforcing() {
    let cgroup = TestCgroup::new();
    let state = Daemon::prepare(&policy(&[], &[]), &[cgroup.path()]);
    let socket_path = state.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let state = state.with_env("NOTIFY_SOCKET", &socket_path.display().to_string());
    let _daemon = state.start().unwrap();
    let mut buffer = [0u8; 512];
    let len = socket.recv(&mut buffer).expect("a notification");
    let message = String::from_utf8_lossy(&buffer[..len]);
    assert!(message.starts_with("READY=1"), "{message}");
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP,
        "ready means attached"
    );
}

#[test]
fn a_policy_that_drops_a_resolver_drops_what_it_taught_at_once() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(&[("registry.test", TestNet::PEER_V4[1].into())], &[]);
    let cgroup = TestCgroup::new();
    let with_resolver = policy(&["registry.test"], &[format!("{}/32", c())]);
    let mut daemon = Daemon::start(&with_resolver, &[cgroup.path()]).unwrap();
    assert_eq!(dig(&cgroup, "registry.test"), b());
    assert_eq!(connect(&cgroup, &b()), "ok");

    // The same names, another resolver: what A taught stops counting when the new policy does.
    daemon
        .state()
        .write_policy(&with_resolver.replace(&format!("[\"{}\"]", a()), "[\"192.0.2.53\"]"));
    daemon
        .wait_for_line("now in force", Duration::from_secs(3))
        .unwrap();
    assert_eq!(connect(&cgroup, &b()), "EPERM");
    assert_eq!(connect(&cgroup, &c()), "ok", "the new policy is in force");
}
