//! Enforcement of address rules by the real programs in the real kernel: real clients in a test
//! cgroup, real servers on a test host in its own network namespace.

use std::{net::TcpListener, process::Command, time::Duration};

use ram_tests::{
    Daemon, TestCgroup, TestNet, attached_programs, peers::*, probe_in, probe_outside, probe_with,
    ram_bin,
};

const ECHO_PORT: u16 = 9999;

/// A denial must come from the hook (EPERM at once), not from a timeout.
const FAST_DENIAL_MS: f64 = 200.0;

fn policy_allowing(cidrs: &[String]) -> String {
    let list: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[registry_access]\nallow = []\nallow_cidrs = [{}]\nallow_loopback = true\n[dns]\nresolvers = []\n",
        list.join(", ")
    )
}

fn assert_denied_fast(probe: &ram_tests::Probe, what: &str) {
    assert_eq!(
        probe.result, "EPERM",
        "{what}: expected EPERM, got {probe:?}"
    );
    assert!(
        probe.ms < FAST_DENIAL_MS,
        "{what}: denial took {:.1} ms (≥ {FAST_DENIAL_MS} ms)",
        probe.ms
    );
}

fn curl(cmd: &mut Command, url: &str) -> (bool, String, f64) {
    let output = cmd
        // --verbose: curl names the errno of a failed connect only there
        // ("Immediate connect fail for ...: Operation not permitted").
        .args(["--verbose", "--max-time", "5", "--output", "/dev/null"])
        .args(["--write-out", "%{http_code} %{time_total}", url])
        .output()
        .expect("running curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let seconds: f64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    (
        output.status.success() && stdout.starts_with("200"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        seconds * 1000.0,
    )
}

#[test]
fn curl_reaches_allowed_address_and_gets_eperm_elsewhere() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy_allowing(&[format!("{}/32", a())]), &[cgroup.path()])
        .expect("daemon starts");

    let (ok, stderr, _) = curl(
        &mut cgroup.command("curl"),
        &format!("http://{}:{HTTP_PORT}/", a()),
    );
    assert!(ok, "curl to the allowed address failed: {stderr}");

    let (ok, stderr, ms) = curl(
        &mut cgroup.command("curl"),
        &format!("http://{}:{HTTP_PORT}/", b()),
    );
    assert!(!ok, "curl to a denied address succeeded");
    assert!(
        stderr.contains("Operation not permitted"),
        "curl's error should be EPERM: {stderr}"
    );
    assert!(ms < FAST_DENIAL_MS, "curl's denial took {ms:.1} ms");
    eprintln!("curl denied in {ms:.1} ms: {}", stderr.trim());

    let probe = probe_in(&cgroup, "tcp-connect", &b(), HTTP_PORT);
    assert_denied_fast(&probe, "python connect() to B");
    eprintln!("python connect() denied in {:.3} ms", probe.ms);

    // The audit log names the process, cgroup, destination and reason.
    let mut daemon = daemon;
    daemon
        .wait_for_line("deny connect4 tcp", Duration::from_secs(5))
        .expect("the denial is logged");
    let records = daemon.audit_records();
    let record = records
        .iter()
        .find(|r| r["comm"] == "curl" && r["verdict"] == "deny")
        .unwrap_or_else(|| panic!("no denial of curl in {records:?}"));
    assert_eq!(record["reason"], "not_learned");
    assert_eq!(record["hook"], "connect4");
    assert_eq!(record["protocol"], "tcp");
    assert_eq!(record["dst_addr"], b());
    assert_eq!(record["dst_port"], HTTP_PORT);
    let cgroup_name = cgroup
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(record["cgroup"], format!("/{cgroup_name}"));
    assert!(record["pid"].as_u64().unwrap() > 0);
    assert!(record["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn processes_outside_the_cgroup_are_unaffected() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(&policy_allowing(&[]), &[cgroup.path()]).expect("daemon starts");

    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &b(), HTTP_PORT).result,
        "EPERM"
    );
    let outside = probe_outside("tcp-http", &b(), HTTP_PORT);
    assert!(outside.ok(), "outside the cgroup: {outside:?}");
    let (ok, stderr, _) = curl(
        &mut Command::new("curl"),
        &format!("http://{}:{HTTP_PORT}/", b()),
    );
    assert!(ok, "curl outside the cgroup: {stderr}");
}

#[test]
fn ipv6_is_enforced() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(
        &policy_allowing(&[format!("{}/128", a6())]),
        &[cgroup.path()],
    )
    .expect("daemon starts");

    let allowed = probe_in(&cgroup, "tcp-http", &a6(), HTTP_PORT);
    assert!(allowed.ok(), "IPv6 to the allowed address: {allowed:?}");
    assert_denied_fast(
        &probe_in(&cgroup, "tcp-connect", &b6(), HTTP_PORT),
        "IPv6 TCP to B",
    );
    assert_denied_fast(
        &probe_in(&cgroup, "udp-sendto", &b6(), ECHO_PORT),
        "IPv6 UDP to B",
    );
    let (ok, stderr, _) = curl(
        &mut cgroup.command("curl"),
        &format!("http://[{}]:{HTTP_PORT}/", b6()),
    );
    assert!(
        !ok && stderr.contains("Operation not permitted"),
        "{stderr}"
    );
}

#[test]
fn ipv4_mapped_ipv6_is_judged_as_ipv4() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _echo = net.udp_echo_server(ECHO_PORT);
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(&policy_allowing(&[format!("{}/32", a())]), &[cgroup.path()])
        .expect("daemon starts");

    let mapped_a = format!("::ffff:{}", a());
    let mapped_b = format!("::ffff:{}", b());
    let allowed = probe_in(&cgroup, "tcp-http", &mapped_a, HTTP_PORT);
    assert!(allowed.ok(), "TCP to ::ffff:A: {allowed:?}");
    let echoed = probe_in(&cgroup, "udp-echo", &mapped_a, ECHO_PORT);
    assert!(echoed.ok(), "UDP to ::ffff:A: {echoed:?}");
    assert_denied_fast(
        &probe_in(&cgroup, "tcp-connect", &mapped_b, HTTP_PORT),
        "TCP to ::ffff:B",
    );
    assert_denied_fast(
        &probe_in(&cgroup, "udp-sendto", &mapped_b, ECHO_PORT),
        "UDP sendto ::ffff:B",
    );
    assert_denied_fast(
        &probe_in(&cgroup, "udp-connect", &mapped_b, ECHO_PORT),
        "UDP connect ::ffff:B",
    );
}

#[test]
fn udp_connected_and_unconnected_are_enforced() {
    let net = TestNet::new();
    let _echo = net.udp_echo_server(ECHO_PORT);
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(&policy_allowing(&[format!("{}/32", a())]), &[cgroup.path()])
        .expect("daemon starts");

    let echoed = probe_in(&cgroup, "udp-echo", &a(), ECHO_PORT);
    assert!(echoed.ok(), "UDP echo from the allowed address: {echoed:?}");
    assert_denied_fast(
        &probe_in(&cgroup, "udp-sendto", &b(), ECHO_PORT),
        "UDP sendto B",
    );
    assert_denied_fast(
        &probe_in(&cgroup, "udp-connect", &b(), ECHO_PORT),
        "UDP connect B",
    );
    assert_denied_fast(
        &probe_in(&cgroup, "udp-echo", &b(), ECHO_PORT),
        "UDP echo B",
    );
}

#[test]
fn tcp_fast_open_is_enforced() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(&policy_allowing(&[format!("{}/32", a())]), &[cgroup.path()])
        .expect("daemon starts");

    let allowed = probe_in(&cgroup, "tcp-fastopen", &a(), HTTP_PORT);
    assert!(allowed.ok(), "TFO to the allowed address: {allowed:?}");
    assert_denied_fast(
        &probe_in(&cgroup, "tcp-fastopen", &b(), HTTP_PORT),
        "TFO to B",
    );
    assert_denied_fast(
        &probe_in(
            &cgroup,
            "tcp-fastopen",
            &format!("::ffff:{}", b()),
            HTTP_PORT,
        ),
        "TFO to ::ffff:B",
    );
}

#[test]
fn resolvers_are_reachable_on_port_53_only() {
    let net = TestNet::new();
    let _dns = net.dnsmasq(&[("registry.test", TestNet::PEER_V4[1].into())], &[]);
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    let policy = format!(
        "[registry_access]\nallow = [\"registry.test\"]\nallow_cidrs = []\n[dns]\nresolvers = [\"{}\"]\n",
        a()
    );
    let _daemon = Daemon::start(&policy, &[cgroup.path()]).expect("daemon starts");

    // A real DNS client gets an answer from the resolver over UDP and TCP.
    for transport in ["+notcp", "+tcp"] {
        let output = cgroup
            .command("dig")
            .args([
                &format!("@{}", a()),
                "registry.test",
                "A",
                "+short",
                "+tries=1",
                "+time=2",
                transport,
            ])
            .output()
            .expect("running dig");
        let answer = String::from_utf8_lossy(&output.stdout);
        assert_eq!(answer.trim(), b(), "dig {transport}: {output:?}");
    }
    // The resolver's other ports, and port 53 of other hosts, are denied.
    assert_denied_fast(
        &probe_in(&cgroup, "tcp-connect", &a(), HTTP_PORT),
        "resolver on 8080",
    );
    assert_denied_fast(
        &probe_in(&cgroup, "udp-sendto", &b(), 53),
        "non-resolver on 53",
    );
    assert_denied_fast(
        &probe_in(&cgroup, "tcp-connect", &b(), 53),
        "non-resolver TCP 53",
    );
}

#[test]
fn loopback_follows_the_policy_switch() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback listener");
    let port = listener.local_addr().unwrap().port();
    let cgroup = TestCgroup::new();

    let on = Daemon::start(&policy_allowing(&[]), &[cgroup.path()]).expect("daemon starts");
    assert!(probe_in(&cgroup, "tcp-connect", "127.0.0.1", port).ok());
    on.stop().unwrap();

    let off = Daemon::start(
        "[registry_access]\nallow_loopback = false\n[dns]\nresolvers = []\n",
        &[cgroup.path()],
    )
    .expect("daemon starts");
    assert_denied_fast(
        &probe_in(&cgroup, "tcp-connect", "127.0.0.1", port),
        "loopback when off",
    );
    assert_denied_fast(
        &probe_in(&cgroup, "tcp-connect", "::1", port),
        "::1 when off",
    );
    off.stop().unwrap();
}

#[test]
fn child_cgroups_are_enforced_too() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let parent = TestCgroup::new();
    let child = TestCgroup::new_in(parent.path());
    let _daemon = Daemon::start(&policy_allowing(&[format!("{}/32", a())]), &[parent.path()])
        .expect("daemon starts");
    assert!(probe_in(&child, "tcp-http", &a(), HTTP_PORT).ok());
    assert_denied_fast(
        &probe_in(&child, "tcp-connect", &b(), HTTP_PORT),
        "B from a child cgroup",
    );
}

#[test]
fn enforcement_outlives_the_daemon_until_uninstall() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy_allowing(&[]), &[cgroup.path()]).expect("daemon starts");
    let mut attached = attached_programs(cgroup.path());
    attached.sort();
    assert_eq!(
        attached,
        [
            "connect4_gate",
            "connect6_gate",
            "dns_query_out",
            "dns_snoop_in",
            "sendmsg4_gate",
            "sendmsg6_gate",
            "socket_gate",
            "sockopt_gate",
            "tls_sockops",
        ]
    );
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &b(), HTTP_PORT).result,
        "EPERM"
    );

    let (status, state) = daemon.stop_keeping_state().expect("daemon stops");
    assert!(status.success(), "daemon exit status: {status}");
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP,
        "fail-closed"
    );
    // The policy stays in force with no daemon, and `ram policy show` still says so.
    let shown = state.ram().args(["policy", "show"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("# The policy in force"),
        "{shown:?}"
    );
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &b(), HTTP_PORT).result,
        "EPERM",
        "still denied with no daemon"
    );

    let output = state.ram().arg("uninstall").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        attached_programs(cgroup.path()).is_empty(),
        "programs left attached after uninstall"
    );
    // Nothing is in force any more, and `ram policy show` must not say otherwise.
    let shown = state.ram().args(["policy", "show"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&shown.stderr);
    assert!(
        !shown.status.success() && shown.stdout.is_empty(),
        "policy show after uninstall: {shown:?}"
    );
    assert!(stderr.contains("no policy is in force"), "{stderr}");
    let after = probe_in(&cgroup, "tcp-http", &b(), HTTP_PORT);
    assert!(after.ok(), "after uninstall: {after:?}");
}

#[test]
fn programs_of_others_on_the_same_cgroup_keep_working() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    // Two independent sets of programs on one cgroup: a call must pass both.
    let wide = Daemon::start(&policy_allowing(&[a(), b()]), &[cgroup.path()]).expect("first");
    let narrow = Daemon::start(&policy_allowing(&[a()]), &[cgroup.path()]).expect("second");
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        2 * ram_tests::PROGRAMS_PER_CGROUP
    );
    assert!(probe_in(&cgroup, "tcp-http", &a(), HTTP_PORT).ok());
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &b(), HTTP_PORT).result,
        "EPERM"
    );

    narrow.stop().unwrap();
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );
    assert!(
        probe_in(&cgroup, "tcp-http", &b(), HTTP_PORT).ok(),
        "B after narrow stopped"
    );
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &c(), HTTP_PORT).result,
        "EPERM"
    );
    wide.stop().unwrap();
}

#[test]
fn ram_exec_runs_commands_in_the_enforced_cgroup() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let cgroup = TestCgroup::new();
    let ram_exec = || {
        let mut cmd = Command::new(ram_bin());
        cmd.args(["exec", "--cgroup"])
            .arg(cgroup.path())
            .args(["--", "python3"]);
        cmd
    };

    // Not enforced yet: refused, and the command does not run.
    let output = ram_exec().arg("-c").arg("print('ran')").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not enforced by ram"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("ran"));

    let _daemon = Daemon::start(&policy_allowing(&[a()]), &[cgroup.path()]).expect("daemon starts");
    assert!(probe_with(ram_exec(), "tcp-http", &a(), HTTP_PORT).ok());
    assert_denied_fast(
        &probe_with(ram_exec(), "tcp-connect", &b(), HTTP_PORT),
        "ram exec to B",
    );

    // The exit code of the command is ram exec's.
    let status = ram_exec()
        .args(["-c", "raise SystemExit(7)"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
}
