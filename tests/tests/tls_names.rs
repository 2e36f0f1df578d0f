//! Issue 15: TLS names on learned addresses. A TLS server serving several names on one
//! address (a shared front end), a real dnsmasq answering an allowed name with that address,
//! and real clients in an enforced cgroup: curl (OpenSSL), `openssl s_client`, hand-made
//! hellos from python (larger than one segment, the name last, split over two writes; TCP Fast
//! Open), plain bytes, and dockerd pulling from a TLS registry. The server logs what reached
//! it: a refusal is proven on the far side.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ram_tests::{
    Daemon, TempDir, TestCa, TestCgroup, TestDocker, TestNet, client_script, dig_in,
    peers::{HTTP_PORT, a, b, b6},
    probe_in,
};
use serde_json::Value;

const HTTPS: u16 = 443;
const NAMES: [&str; 3] = ["registry.test", "other.test", "evil.test"];

fn policy(tls: &str) -> String {
    format!(
        "[registry_access]\nallow = [\"registry.test\", \"other.test\"]\nallow_loopback = false\n\
         tls = \"{tls}\"\n\n[dns]\nresolvers = [\"{}\"]\n",
        a()
    )
}

/// The test bed: every name of [`NAMES`] served by one TLS server on address B, dnsmasq
/// answering `registry.test` and `other.test` with B, an HTTP server on port 80 of B.
struct Bed {
    _net: TestNet,
    _dir: TempDir,
    ca: TestCa,
    server_log: PathBuf,
    _servers: Vec<ram_tests::Background>,
}

impl Bed {
    fn new() -> Self {
        let net = TestNet::new();
        let dir = TempDir::new();
        let ca = TestCa::new(&dir, &NAMES);
        let peer_b: IpAddr = TestNet::PEER_V4[1].into();
        let (tls, server_log) = net.tls_server(&dir, peer_b, HTTPS, &ca);
        let http = net.http_server(HTTP_PORT);
        let dns = net.dnsmasq(&[("registry.test", peer_b), ("other.test", peer_b)], &[]);
        Self {
            _net: net,
            _dir: dir,
            ca,
            server_log,
            _servers: vec![tls, http, dns],
        }
    }

    /// Lines the TLS server logged after the first `from`.
    fn server_lines(&self, from: usize) -> Vec<String> {
        std::fs::read_to_string(&self.server_log)
            .unwrap_or_default()
            .lines()
            .skip(from)
            .map(str::to_owned)
            .collect()
    }

    fn server_line_count(&self) -> usize {
        self.server_lines(0).len()
    }

    /// Waits up to 5 s for the server to log a `received` line after `from`; the lines.
    fn server_after(&self, from: usize) -> Vec<String> {
        for _ in 0..50 {
            let lines = self.server_lines(from);
            if lines.iter().any(|l| l.starts_with("received")) {
                // The rest of this connection's lines (name/failed) follow at once.
                std::thread::sleep(Duration::from_millis(300));
                return self.server_lines(from);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.server_lines(from)
    }

    /// curl in `cgroup` to `https://NAME/` at address B (no lookup of its own: the address
    /// comes from `--resolve`, as from /etc/hosts): (exit ok, output, seconds).
    fn curl(&self, cgroup: &TestCgroup, name: &str) -> (bool, String, f64) {
        let started = Instant::now();
        let output = cgroup
            .command("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.ca.ca)
            .args(["--resolve", &format!("{name}:{HTTPS}:{}", b())])
            .arg(format!("https://{name}/"))
            .output()
            .expect("running curl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (
            output.status.success(),
            text,
            started.elapsed().as_secs_f64(),
        )
    }
}

/// tls_hello.py in `cgroup`: (result, milliseconds from the first write to its outcome).
fn hello(cgroup: &TestCgroup, kind: &str, name: &str, port: u16) -> (String, f64) {
    let output = cgroup
        .command("python3")
        .arg(client_script("tls_hello.py"))
        .args([&b(), &port.to_string(), kind, name])
        .output()
        .expect("running tls_hello.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_else(|err| {
            panic!(
                "tls_hello.py printed {stdout:?} ({err}); stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    (
        value["result"].as_str().unwrap_or_default().to_owned(),
        value["ms"].as_f64().unwrap_or(f64::NAN),
    )
}

/// Whether the server's lines say the connection's bytes arrived (a `received N` with N > 0).
fn arrived(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        l.strip_prefix("received ")
            .is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n > 0))
    })
}

fn record_for<'a>(records: &'a [Value], reason: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["hook"] == "tls_hello" && r["reason"] == reason)
        .unwrap_or_else(|| panic!("no tls_hello record with reason {reason} in {records:#?}"))
}

fn wait_for_record(daemon: &Daemon, reason: &str) -> Value {
    for _ in 0..50 {
        let records = daemon.audit_records();
        if let Some(found) = records
            .iter()
            .find(|r| r["hook"] == "tls_hello" && r["reason"] == reason)
        {
            return found.clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let records = daemon.audit_records();
    record_for(&records, reason).clone()
}

#[test]
fn a_tls_connection_to_a_learned_address_must_name_the_host_that_taught_it() {
    let bed = Bed::new();
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy("enforce"), &[cgroup.path()]).unwrap();
    // The cgroup looks up registry.test only: address B is learned from its answer.
    assert_eq!(dig_in(&cgroup, &a(), "registry.test", "A", 3, &[]), b());

    // `ram learned` names, per address, the names that taught it to this cgroup.
    let learned: Value =
        serde_json::from_str(&daemon.ram(&["learned", "--json"]).unwrap()).unwrap();
    let entry = learned
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["addr"] == b())
        .unwrap_or_else(|| panic!("{learned:#}"));
    assert_eq!(
        entry["names"],
        serde_json::json!(["registry.test"]),
        "{entry}"
    );

    // (a) The name that taught the address: curl (OpenSSL) completes the handshake.
    let (ok, out, _) = bed.curl(&cgroup, "registry.test");
    assert!(ok && out.contains("hello registry.test"), "{out}");

    // (b) Another tenant of the same address: a name the policy allows but that did not
    // teach this address, and a name no rule allows. Refused at the first write, promptly;
    // nothing reaches the server.
    for (name, reason) in [
        ("other.test", "tls_name_not_taught"),
        ("evil.test", "tls_name_not_allowed"),
    ] {
        let before = bed.server_line_count();
        let (ok, out, seconds) = bed.curl(&cgroup, name);
        assert!(!ok, "curl to {name} succeeded: {out}");
        assert!(seconds < 2.0, "curl to {name} took {seconds:.2} s: {out}");
        let lines = bed.server_after(before);
        assert!(
            !arrived(&lines),
            "bytes to {name} reached the server: {lines:?}"
        );
        let record = wait_for_record(&daemon, reason);
        assert_eq!(record["verdict"], "deny", "{record}");
        assert_eq!(record["dst_addr"], b(), "{record}");
        assert_eq!(record["dst_port"], HTTPS, "{record}");
        assert_eq!(record["comm"], "curl", "{record}");
    }
    let records = daemon.audit_records();
    let other = record_for(&records, "tls_name_not_taught");
    assert_eq!(other["server_name"], "other.test", "{other}");
    assert_eq!(
        other["taught_by"],
        serde_json::json!(["registry.test"]),
        "{other}"
    );
    assert_eq!(
        record_for(&records, "tls_name_not_allowed")["server_name"],
        "evil.test"
    );

    // (c) No server name: openssl s_client -noservername.
    let before = bed.server_line_count();
    let started = Instant::now();
    let output = cgroup
        .command("openssl")
        .args([
            "s_client",
            "-noservername",
            "-connect",
            &format!("{}:{HTTPS}", b()),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running openssl s_client");
    let seconds = started.elapsed().as_secs_f64();
    assert!(seconds < 2.0, "openssl s_client took {seconds:.2} s");
    assert!(
        !arrived(&bed.server_after(before)),
        "a hello without a name reached the server"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("BEGIN CERTIFICATE"));
    wait_for_record(&daemon, "tls_no_name");

    // (d) A hello larger than one segment, the allowed name last after a post-quantum sized
    // key share and padding: in one write, and split over two writes.
    for kind in ["big", "split"] {
        let before = bed.server_line_count();
        let (result, _) = hello(&cgroup, kind, "registry.test", HTTPS);
        assert_eq!(result, "ok", "{kind}");
        let lines = bed.server_after(before);
        let received: Vec<&String> = lines.iter().filter(|l| l.starts_with("received")).collect();
        // The whole hello arrived at once: a split one was held back until it was whole.
        assert!(
            received.iter().any(|l| l.as_str() == "received 1601"),
            "{kind}: {lines:?}"
        );
    }
    // The same hello naming another host: refused at once, nothing arrives.
    let before = bed.server_line_count();
    let (result, ms) = hello(&cgroup, "big", "evil.test", HTTPS);
    assert_eq!(result, "EACCES");
    assert!(ms < 1000.0, "refused after {ms} ms");
    assert!(!arrived(&bed.server_after(before)));

    // (e) Bytes that are not TLS, on the port that carries TLS: refused, nothing arrives.
    let before = bed.server_line_count();
    let (result, _) = hello(&cgroup, "plain", "registry.test", HTTPS);
    assert_eq!(result, "EACCES");
    assert!(!arrived(&bed.server_after(before)));
    wait_for_record(&daemon, "tls_not_handshake");
    // An Encrypted ClientHello hides the name the front end serves: refused, whatever the
    // outer name. A handshake record with odd version bytes is judged as one (on any port).
    let (result, _) = hello(&cgroup, "ech", "registry.test", HTTPS);
    assert_eq!(result, "EACCES");
    wait_for_record(&daemon, "tls_encrypted_hello");
    let (result, _) = hello(&cgroup, "oddversion", "evil.test", HTTP_PORT);
    assert_eq!(
        result, "EACCES",
        "a hello with odd version bytes on port 80"
    );
    // Plain HTTP on port 80 is not judged.
    let http = probe_in(&cgroup, "tcp-http", &b(), HTTP_PORT);
    assert!(
        http.result == "ok" && http.detail.as_deref().unwrap_or("").contains("200"),
        "{http:?}"
    );

    // QUIC (UDP to a TLS port of a learned address) is refused, not judged.
    assert_eq!(probe_in(&cgroup, "udp-sendto", &b(), HTTPS).result, "EPERM");
    wait_for_record_any(&daemon, "quic_refused");

    // Unjudged data: TCP Fast Open queues the hello before the connection is established
    // (the hello check never sees it). It never arrives, and the connection stays refused.
    let before = bed.server_line_count();
    let (result, _) = hello(&cgroup, "fastopen", "evil.test", HTTPS);
    assert_eq!(result, "EACCES", "the send after the unjudged one");
    let lines = bed.server_after(before);
    assert!(
        !arrived(&lines),
        "Fast Open data reached the server: {lines:?}"
    );
    assert!(daemon.counter("tls_unjudged_dropped") > 0);

    // Unjudged data held back, then released by a hello the send check allows: what leaves
    // first is what the server reads, and it is judged as it leaves (the egress check).
    let before = bed.server_line_count();
    let refused_before = daemon.counter("tls_refused") + daemon.counter("tls_unjudged_dropped");
    let (result, _) = hello(&cgroup, "queued", "evil.test", HTTPS);
    // Whether the kernel held the queued bytes back until the second send (then both sends
    // succeed) or sent them at once (then the egress check refused the flow first, and the
    // second send fails), nothing may arrive.
    assert!(result == "ok" || result == "EACCES", "{result}");
    let lines = bed.server_after(before);
    assert!(
        !arrived(&lines),
        "the queued hello reached the server: {lines:?}"
    );
    // Refused as it left: judged (tls_refused), or dropped unjudged for having been queued
    // before the send check allowed anything (tls_unjudged_dropped).
    assert!(
        daemon.counter("tls_refused") + daemon.counter("tls_unjudged_dropped") > refused_before
    );
}

fn wait_for_record_any(daemon: &Daemon, reason: &str) {
    for _ in 0..50 {
        if daemon.audit_records().iter().any(|r| r["reason"] == reason) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no record with reason {reason}: {:#?}",
        daemon.audit_records()
    );
}

#[test]
fn audit_mode_lets_the_hello_through_and_writes_would_deny() {
    let bed = Bed::new();
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy("audit"), &[cgroup.path()]).unwrap();
    assert_eq!(dig_in(&cgroup, &a(), "registry.test", "A", 3, &[]), b());
    let (ok, out, _) = bed.curl(&cgroup, "other.test");
    assert!(ok && out.contains("hello other.test"), "{out}");
    let record = wait_for_record(&daemon, "tls_name_not_taught");
    assert_eq!(record["verdict"], "would_deny", "{record}");
    assert_eq!(record["server_name"], "other.test", "{record}");
}

#[test]
fn tls_off_judges_addresses_only() {
    let bed = Bed::new();
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy("off"), &[cgroup.path()]).unwrap();
    assert_eq!(dig_in(&cgroup, &a(), "registry.test", "A", 3, &[]), b());
    let (ok, out, _) = bed.curl(&cgroup, "other.test");
    assert!(ok && out.contains("hello other.test"), "{out}");
    assert!(
        !daemon
            .audit_records()
            .iter()
            .any(|r| r["hook"] == "tls_hello"),
        "{:#?}",
        daemon.audit_records()
    );
    let check = daemon.ram(&[
        "policy",
        "check",
        &daemon.state().policy_path().display().to_string(),
    ]);
    assert!(check.unwrap().contains("TLS names: off"));
}

#[test]
fn over_ipv6_the_name_is_judged_the_same() {
    let net = TestNet::new();
    let dir = TempDir::new();
    let ca = TestCa::new(&dir, &NAMES);
    let peer_b6: IpAddr = TestNet::PEER_V6[1].into();
    let (_tls, server_log) = net.tls_server(&dir, peer_b6, HTTPS, &ca);
    let _dns = net.dnsmasq(&[("registry.test", peer_b6)], &[]);
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy("enforce"), &[cgroup.path()]).unwrap();
    assert_eq!(dig_in(&cgroup, &a(), "registry.test", "AAAA", 3, &[]), b6());
    let curl = |name: &str| {
        let output = cgroup
            .command("curl")
            .args(["-sS", "-6", "--max-time", "10", "--cacert"])
            .arg(&ca.ca)
            .args(["--resolve", &format!("{name}:{HTTPS}:[{}]", b6())])
            .arg(format!("https://{name}/"))
            .output()
            .expect("running curl");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, out) = curl("registry.test");
    assert!(ok && out.contains("hello registry.test"), "{out}");
    let before = std::fs::read_to_string(&server_log)
        .unwrap_or_default()
        .lines()
        .count();
    let (ok, out) = curl("other.test");
    assert!(!ok, "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<String> = std::fs::read_to_string(&server_log)
        .unwrap_or_default()
        .lines()
        .skip(before)
        .map(str::to_owned)
        .collect();
    assert!(!arrived(&after), "{after:?}");
    let record = wait_for_record(&daemon, "tls_name_not_taught");
    assert_eq!(record["dst_addr"], b6(), "{record}");
    assert_eq!(record["server_name"], "other.test", "{record}");
}

#[test]
fn dockerd_pulls_by_the_name_that_taught_the_address_and_not_by_another_on_it() {
    let net = TestNet::new();
    let dir = TempDir::new();
    let ca = TestCa::new(&dir, &NAMES);
    let peer_b: IpAddr = TestNet::PEER_V4[1].into();
    let storage = dir.path().join("storage");
    // One registry store, served over TLS on B:443 for every name, and over plain HTTP on
    // B:5000 for the test's push.
    let _tls = net.registry_tls(&dir, &storage, peer_b, HTTPS, &ca);
    let _plain = plain_registry(&net, &dir, &storage, peer_b, 5000);
    ram_tests::push_image(
        &format!("http://{}:5000", b()),
        "tiny:1",
        "hello over TLS\n",
    );
    // other.test, on the same front end, is not allowed; DNS answers for it are let through
    // (`dns.queries = "any"`, as the side doors a policy cannot close would: /etc/hosts, a
    // resolver's cache) but teach nothing.
    let _dns = net.dnsmasq(&[("registry.test", peer_b), ("other.test", peer_b)], &[]);

    let _v1 = ram_tests::V1Parents::new("docker");
    let engine_cgroup = TestCgroup::new();
    let docker = TestDocker::start(&engine_cgroup, TestNet::PEER_V4[0].into(), &[]);
    // dockerd trusts the test CA for both names.
    for name in ["registry.test", "other.test"] {
        let certs = docker.dir().join("etc-docker/certs.d").join(name);
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(&ca.ca, certs.join("ca.crt")).unwrap();
    }
    let bystander = TestCgroup::new();
    let policy = format!(
        "[scope]\ndocker = true\n\n[registry_access]\nallow = [\"registry.test\"]\n\
         allow_loopback = true\n\n[dns]\nresolvers = [\"{}\"]\nqueries = \"any\"\n",
        a()
    );
    let daemon = Daemon::start(&policy, &[bystander.path()]).unwrap();

    let (ok, _, err, _) = docker.run(&["pull", "registry.test/tiny:1"]);
    assert!(ok, "pull by the allowed name: {err}\n{}", docker.log());
    let (ok, _, err, seconds) = docker.run(&["pull", "other.test/tiny:1"]);
    assert!(!ok, "pull by another name on the same address succeeded");
    assert!(seconds < 10.0, "took {seconds:.1} s: {err}");
    let record = wait_for_record(&daemon, "tls_name_not_allowed");
    assert_eq!(record["server_name"], "other.test", "{record}");
    assert_eq!(record["dst_addr"], b(), "{record}");
}

fn plain_registry(
    net: &TestNet,
    dir: &TempDir,
    storage: &Path,
    addr: IpAddr,
    port: u16,
) -> ram_tests::Background {
    std::fs::create_dir_all(storage).unwrap();
    let config = dir.write(
        "registry-plain.yml",
        &format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}:{port}\n",
            storage.display()
        ),
    );
    let mut cmd = net.command("docker-registry");
    cmd.arg("serve").arg(config);
    let server = ram_tests::Background::spawn("docker-registry", cmd);
    ram_tests::wait_for_tcp(std::net::SocketAddr::new(addr, port));
    server
}
