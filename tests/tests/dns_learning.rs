//! Learning addresses from DNS answers in the kernel: real DNS servers (dnsmasq, and a
//! scriptable server for hostile answers) on a test host, real DNS clients in the test cgroup.

use std::{net::IpAddr, process::Command, time::Duration};

use ram_tests::{Daemon, TempDir, TestCgroup, TestNet, dns_query_in, peers::*, probe_in, sh};
use serde_json::{Value, json};

/// A policy allowing `names`, trusting the resolver on peer address A, with extra `[dns]` lines.
fn policy(names: &[&str], dns_extra: &str) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[registry_access]\nallow = [{}]\nallow_loopback = false\n[dns]\nresolvers = [\"{}\", \"{}\"]\n{dns_extra}\n",
        list.join(", "),
        a(),
        TestNet::PEER_V6[0]
    )
}

fn connect(cgroup: &TestCgroup, addr: &str) -> String {
    probe_in(cgroup, "tcp-connect", addr, HTTP_PORT).result
}

fn resolve(cgroup: &TestCgroup, name: &str, extra: &[&str]) -> Value {
    let resolver = a();
    let mut args = vec![resolver.as_str(), name];
    args.extend_from_slice(extra);
    dns_query_in(cgroup, &args)
}

fn addrs(report: &Value) -> Vec<String> {
    report["addrs"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `dig` (a real resolver client) inside the cgroup: its answer, one address per line.
fn dig(cgroup: &TestCgroup, name: &str, qtype: &str, extra: &[&str]) -> String {
    ram_tests::dig_in(cgroup, &a(), name, qtype, 2, extra)
}

#[test]
fn an_allowed_name_is_learned_and_connects_at_once() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(&[("registry.test", TestNet::PEER_V4[1].into())], &[]);
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(&policy(&["registry.test"], ""), &[cgroup.path()]).unwrap();

    assert_eq!(connect(&cgroup, &b()), "EPERM", "not learned yet");
    assert_eq!(dig(&cgroup, "registry.test", "A", &[]), b());
    assert_eq!(connect(&cgroup, &b()), "ok", "learned from dig's answer");
    assert_eq!(
        connect(&cgroup, &c()),
        "EPERM",
        "other addresses stay denied"
    );

    // Learned for this cgroup only.
    let other = TestCgroup::new();
    let _other_daemon = Daemon::start(&policy(&["registry.test"], ""), &[other.path()]).unwrap();
    assert_eq!(connect(&other, &b()), "EPERM", "another cgroup did not ask");

    daemon
        .wait_for_line(
            "learned 198.51.100.3 for registry.test",
            Duration::from_secs(5),
        )
        .expect("the daemon names the learned address");
    let records = daemon.audit_records();
    let learn = records
        .iter()
        .find(|r| r["verdict"] == "learn")
        .unwrap_or_else(|| panic!("no learn record in {records:?}"));
    assert_eq!(learn["hostname"], "registry.test");
    assert_eq!(learn["dst_addr"], b());
    assert_eq!(learn["rule"], "registry.test");
    let deny = records.iter().find(|r| r["verdict"] == "deny").unwrap();
    assert_eq!(deny["reason"], "not_learned");
}

#[test]
fn wildcards_match_subdomains_at_any_depth_but_not_the_apex() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(
        &[
            ("wild.test", TestNet::PEER_V4[2].into()),
            ("a.wild.test", TestNet::PEER_V4[1].into()),
            ("x.y.wild.test", TestNet::PEER_V4[2].into()),
            ("notwild.test", TestNet::PEER_V4[2].into()),
        ],
        &[],
    );
    let cgroup = TestCgroup::new();
    // Queries for any name, so that the apex's answer reaches the kernel (and teaches nothing).
    let _daemon = Daemon::start(
        &policy(&["*.wild.test"], "queries = \"any\""),
        &[cgroup.path()],
    )
    .unwrap();

    assert_eq!(dig(&cgroup, "wild.test", "A", &[]), c());
    assert_eq!(dig(&cgroup, "notwild.test", "A", &[]), c());
    assert_eq!(
        connect(&cgroup, &c()),
        "EPERM",
        "the apex and look-alikes are not covered"
    );
    assert_eq!(dig(&cgroup, "a.wild.test", "A", &[]), b());
    assert_eq!(connect(&cgroup, &b()), "ok");
    assert_eq!(dig(&cgroup, "x.y.wild.test", "A", &[]), c());
    assert_eq!(
        connect(&cgroup, &c()),
        "ok",
        "two levels below the wildcard"
    );
}

#[test]
fn names_match_whatever_their_case_or_trailing_dot() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(
        &[
            ("registry.test", TestNet::PEER_V4[1].into()),
            ("mirror.test", TestNet::PEER_V4[2].into()),
        ],
        &[],
    );
    let cgroup = TestCgroup::new();
    // The policy's own spelling is normalized too.
    let _daemon = Daemon::start(
        &policy(&["Registry.TEST.", "mirror.test"], ""),
        &[cgroup.path()],
    )
    .unwrap();
    assert_eq!(dig(&cgroup, "rEgIsTrY.TeSt.", "A", &[]), b());
    assert_eq!(connect(&cgroup, &b()), "ok");
    let report = resolve(&cgroup, "MIRROR.test.", &["--connect", "80"]);
    assert_eq!(report["connect"], "ok", "{report}");
}

#[test]
fn the_cname_chain_is_followed_strictly() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let dir = TempDir::new();
    // alias.test → CNAME cdn.test → A B; the same answer also carries an A record for a name
    // off the chain (C), and an A record for the question after the chain moved on (C): a
    // resolver answering for one name must not open addresses of others.
    let _dns = net.dns_responder(
        &dir,
        json!({
            "alias.test": {"records": [
                ["@", "CNAME", 300, "cdn.test"],
                ["other.test", "A", 300, c()],
                ["cdn.test", "A", 300, b()],
                ["@", "A", 300, c()],
            ]},
        }),
    );
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(&policy(&["alias.test"], ""), &[cgroup.path()]).unwrap();
    let report = resolve(&cgroup, "alias.test", &[]);
    assert_eq!(addrs(&report), [c(), b(), c()], "{report}");
    assert_eq!(
        connect(&cgroup, &b()),
        "ok",
        "the end of the chain is learned"
    );
    assert_eq!(
        connect(&cgroup, &c()),
        "EPERM",
        "records off the chain are not"
    );
    daemon
        .wait_for_line(
            "learned 198.51.100.3 for alias.test via cdn.test",
            Duration::from_secs(5),
        )
        .unwrap();
}

#[test]
fn dnsmasq_cname_answers_are_learned() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(
        &[("blobs.cdn.test", TestNet::PEER_V4[1].into())],
        &[
            "--cname=registry.test,edge.cdn.test",
            "--cname=edge.cdn.test,blobs.cdn.test",
        ],
    );
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(&policy(&["registry.test"], ""), &[cgroup.path()]).unwrap();
    let answer = dig(&cgroup, "registry.test", "A", &[]);
    assert!(answer.ends_with(&b()), "{answer}");
    assert_eq!(connect(&cgroup, &b()), "ok");
}

#[test]
fn aaaa_answers_over_ipv6_are_learned() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let b6: IpAddr = TestNet::PEER_V6[1].into();
    let _dns = net.dnsmasq(&[("registry.test", b6)], &[]);
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(&policy(&["registry.test"], ""), &[cgroup.path()]).unwrap();
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &b6.to_string(), HTTP_PORT).result,
        "EPERM"
    );
    let output = cgroup
        .command("dig")
        .args([
            &format!("@{}", TestNet::PEER_V6[0]),
            "registry.test",
            "AAAA",
            "+short",
            "+tries=1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        b6.to_string()
    );
    assert!(probe_in(&cgroup, "tcp-http", &b6.to_string(), HTTP_PORT).ok());
}

#[test]
fn dns_over_tcp_is_learned() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(&[("registry.test", TestNet::PEER_V4[1].into())], &[]);
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(&policy(&["registry.test"], ""), &[cgroup.path()]).unwrap();
    assert_eq!(dig(&cgroup, "registry.test", "A", &["+tcp"]), b());
    assert_eq!(connect(&cgroup, &b()), "ok");
    // A client of its own over TCP, connecting at once.
    let report = resolve(&cgroup, "registry.test", &["--tcp", "--connect", "80"]);
    assert_eq!(report["connect"], "ok", "{report}");
}

#[test]
fn entries_expire_and_a_new_answer_renews_them() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let dir = TempDir::new();
    let _dns = net.dns_responder(
        &dir,
        json!({"short.test": {"records": [["@", "A", 1, b()]]}}),
    );
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(
        &policy(&["short.test"], "min_ttl = 1\ngrace_period = 0"),
        &[cgroup.path()],
    )
    .unwrap();
    assert_eq!(addrs(&resolve(&cgroup, "short.test", &[])), [b()]);
    // An established connection outlives the entry: enforcement is at connect time.
    let mut long_lived = cgroup.command("python3");
    long_lived.arg("-c").arg(format!(
        "import socket,time\ns=socket.create_connection(('{}',{HTTP_PORT}))\ntime.sleep(2.5)\n\
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nprint(s.recv(12).decode())",
        b()
    ));
    let long_lived = long_lived.output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&long_lived.stdout).trim(),
        "HTTP/1.0 200"
    );
    // By now (2.5 s > TTL 1 s + grace 0) the entry has expired.
    assert_eq!(connect(&cgroup, &b()), "EPERM", "expired");
    assert_eq!(addrs(&resolve(&cgroup, "short.test", &[])), [b()]);
    assert_eq!(connect(&cgroup, &b()), "ok", "re-resolved");
}

#[test]
fn answers_from_untrusted_sources_teach_nothing() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let dir = TempDir::new();
    let _dns = net.dns_responder(
        &dir,
        json!({
            "registry.test": {"records": [["@", "A", 300, b()]]},
            "slow.test": {"silent": true, "records": []},
            "badid.test": {"records": [["@", "A", 300, c()]], "txid_delta": 1},
        }),
    );
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(
        &policy(&["registry.test", "slow.test", "badid.test"], ""),
        &[cgroup.path()],
    )
    .unwrap();

    // A rogue resolver: DNS to any server but the trusted one is denied outright.
    let rogue = dns_query_in(&cgroup, &[&c(), "registry.test"]);
    assert_eq!(rogue["error"], "EPERM", "{rogue}");

    // A transaction-id mismatch (from the trusted resolver itself), taken by a careless client.
    let report = resolve(&cgroup, "badid.test", &["--accept-any-id"]);
    assert_eq!(addrs(&report), [c()], "{report}");
    assert_eq!(
        connect(&cgroup, &c()),
        "EPERM",
        "a mismatched answer is not learned"
    );

    // A spoofed answer from a local socket bound to port 53, to a client waiting for an
    // answer the real resolver never sends.
    let mut client = cgroup.command("python3");
    client.arg("-c").arg(format!(
        "import socket,struct,sys\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(5)\n\
         q=struct.pack('!HHHHHH',0x4242,0x0100,1,0,0,0)+b'\\x04slow\\x04test\\x00'+struct.pack('!HH',1,1)\n\
         s.sendto(q,('{resolver}',53))\nprint(s.getsockname()[1],flush=True)\n\
         r,_=s.recvfrom(512)\nprint('got',len(r),flush=True)",
        resolver = a()
    ));
    client.stdout(std::process::Stdio::piped());
    let mut client = client.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let spoof = {
        let mut m = vec![0x42, 0x42, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend(b"\x04slow\x04test\x00\x00\x01\x00\x01");
        m.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4]);
        m.extend(TestNet::PEER_V4[2].octets());
        m
    };
    let spoofer = std::net::UdpSocket::bind("127.0.0.1:53").expect("binding 127.0.0.1:53");
    spoofer.send_to(&spoof, ("127.0.0.1", port)).unwrap();
    let waited = client.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&waited.stdout).contains("got"),
        "the client took the spoof"
    );
    assert_eq!(
        connect(&cgroup, &c()),
        "EPERM",
        "a spoofed answer is not learned"
    );

    // The trusted path still works.
    assert_eq!(addrs(&resolve(&cgroup, "registry.test", &[])), [b()]);
    assert_eq!(connect(&cgroup, &b()), "ok");

    let status_line = {
        let pid = daemon.pid();
        // SAFETY: kill(2) of the daemon's own PID; it logs its counters on the way out.
        unsafe { libc::kill(pid.cast_signed(), libc::SIGTERM) };
        daemon
            .wait_for_line("counters:", Duration::from_secs(10))
            .unwrap()
    };
    assert!(status_line.contains("answer_untrusted=1"), "{status_line}");
    assert!(
        status_line.contains("answer_unsolicited=1"),
        "{status_line}"
    );
}

#[test]
fn metadata_loopback_and_other_special_addresses_are_never_learned() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    // Put the metadata address on the test host too, routed through the test link, so that a
    // wrong allow would reach the test host and nothing else.
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &net.netns,
            "ip",
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ],
    )
    .unwrap();
    let dir = TempDir::new();
    let _dns = net.dns_responder(
        &dir,
        json!({"evil.test": {"records": [
            ["@", "A", 300, "169.254.169.254"],
            ["@", "A", 300, "127.0.0.1"],
            ["@", "A", 300, "0.0.0.0"],
            ["@", "A", 300, "224.0.0.1"],
            ["@", "AAAA", 300, "::ffff:127.0.0.1"],
            ["@", "AAAA", 300, "fe80::1"],
            ["@", "AAAA", 300, "::1"],
            ["@", "A", 300, b()],
        ]}}),
    );
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(&policy(&["evil.test"], ""), &[cgroup.path()]).unwrap();
    let _route = RouteGuard::add("169.254.169.254/32", &net);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let local_port = listener.local_addr().unwrap().port();

    assert_eq!(addrs(&resolve(&cgroup, "evil.test", &[])).len(), 8);
    assert_eq!(
        connect(&cgroup, &b()),
        "ok",
        "the ordinary address is learned"
    );
    assert_eq!(connect(&cgroup, "169.254.169.254"), "EPERM");
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", "127.0.0.1", local_port).result,
        "EPERM"
    );
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", "::ffff:127.0.0.1", local_port).result,
        "EPERM"
    );
    daemon
        .wait_for_line("refused (loopback, link-local", Duration::from_secs(5))
        .unwrap();
}

/// A route in the test namespace, removed on drop.
struct RouteGuard(String);

impl RouteGuard {
    fn add(prefix: &str, net: &TestNet) -> Self {
        let link = format!("{}h", net.netns);
        sh("ip", &["route", "add", prefix, "dev", &link]).expect("adding a test route");
        Self(prefix.to_owned())
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["route", "del", &self.0]).status();
    }
}

#[test]
fn a_fresh_name_connects_at_once_10000_times() {
    let net = TestNet::new();
    net.add_peer_prefix("198.18.0.0/16");
    // dnsmasq answers NNN-NNN-NNN-NNN.race.test with the address in the name: every trial
    // resolves a name, and an address, never seen before.
    let _dns = net.dnsmasq(&[], &["--synth-domain=race.test,198.18.0.0/16"]);
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(
        // Port 9 named: learned addresses are allowed on their rule's ports only.
        &policy(&["*.race.test:9"], "max_learned = 20000"),
        &[cgroup.path()],
    )
    .unwrap();
    let report = dns_query_in(
        &cgroup,
        &[
            &a(),
            "198-18-{a}-{b}.race.test",
            "A",
            "--race",
            "10000",
            // Nothing listens on port 9: a connection the gate lets through is refused by the
            // host at once (ECONNREFUSED), one the gate denies fails with EPERM.
            "--connect",
            "9",
        ],
    );
    eprintln!("race: {report}");
    assert_eq!(report["trials"], 10000);
    assert_eq!(report["lookup_failures"], 0, "{report}");
    assert_eq!(report["denied_count"], 0, "false denials: {report}");
}

#[test]
fn a_private_network_namespace_cannot_impersonate_the_resolver() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(&[("registry.test", TestNet::PEER_V4[1].into())], &[]);
    let dir = TempDir::new();
    // The fake resolver's script: answers registry.test with C.
    let config = json!({
        "listen": [a()],
        "port": 53,
        "names": {"registry.test": {"records": [["@", "A", 300, c()]]}},
    });
    let config_path = dir.write("fake.json", &config.to_string());
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(&policy(&["registry.test"], ""), &[cgroup.path()]).unwrap();

    // Inside the enforced cgroup, a process makes its own network namespace, puts the trusted
    // resolver's address on it, runs a "resolver" there and asks it.
    let script = format!(
        "ip link set lo up && ip addr add {a}/32 dev lo && \
         (python3 {responder} {config} > /dev/null 2>&1 &) && sleep 1 && \
         python3 {query} {a} registry.test",
        a = a(),
        responder = ram_tests::client_script("dns_responder.py").display(),
        config = config_path.display(),
        query = ram_tests::client_script("dns_query.py").display(),
    );
    let output = cgroup
        .command("unshare")
        .args(["--net", "bash", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("\"error\": \"EPERM\""),
        "the query from the private namespace: {stdout}"
    );
    assert_eq!(
        connect(&cgroup, &c()),
        "EPERM",
        "nothing learned from the impersonator"
    );
    daemon
        .wait_for_line("(untrusted_netns)", Duration::from_secs(5))
        .expect("the denial names the reason");

    // The real resolver, from the real namespace, still works.
    assert_eq!(dig(&cgroup, "registry.test", "A", &[]), b());
    assert_eq!(connect(&cgroup, &b()), "ok");
}

#[test]
fn huge_ttls_are_capped_by_max_ttl() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let dir = TempDir::new();
    let _dns = net.dns_responder(
        &dir,
        json!({"long.test": {"records": [["@", "A", 2_000_000_000u32, b()]]}}),
    );
    let cgroup = TestCgroup::new();
    let _daemon = Daemon::start(
        &policy(&["long.test"], "min_ttl = 0\nmax_ttl = 1\ngrace_period = 0"),
        &[cgroup.path()],
    )
    .unwrap();
    assert_eq!(addrs(&resolve(&cgroup, "long.test", &[])), [b()]);
    assert_eq!(connect(&cgroup, &b()), "ok");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        connect(&cgroup, &b()),
        "EPERM",
        "a 63-year TTL lives max_ttl = 1 s"
    );
}

#[test]
fn a_full_learned_map_denies_new_addresses_and_says_so() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    net.add_peer_prefix("198.18.0.0/16");
    let _dns = net.dnsmasq(&[], &["--synth-domain=race.test,198.18.0.0/16"]);
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(
        &policy(&["*.race.test"], "max_learned = 64"),
        &[cgroup.path()],
    )
    .unwrap();
    // 64 addresses fit; the 65th and 66th do not.
    let report = dns_query_in(
        &cgroup,
        &[
            &a(),
            "198-18-9-{b}.race.test",
            "A",
            "--race",
            "66",
            "--connect",
            "80",
        ],
    );
    assert_eq!(report["denied_count"], 2, "{report}");
    assert_eq!(report["denied"][0][1], "EPERM", "{report}");
    daemon
        .wait_for_line("learned-address map is full", Duration::from_secs(5))
        .expect("the daemon reports the full map");
}

#[test]
fn bytes_inside_a_tcp_message_never_pass_for_a_message() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let dir = TempDir::new();
    let _dns = net.dns_responder(
        &dir,
        json!({"registry.test": {"records": [["@", "A", 300, b()]]}}),
    );
    let cgroup = TestCgroup::new();
    // Queries for any name: a split query is let out, and must teach nothing (under the default
    // `queries = "allowed"` it would not leave at all: dns_queries.rs).
    let mut daemon = Daemon::start(
        &policy(&["registry.test"], "queries = \"any\""),
        &[cgroup.path()],
    )
    .unwrap();
    // One TCP connection to the trusted resolver. Query 1 is sent in two writes (two segments,
    // TCP_NODELAY); the second segment starts inside a label whose bytes form a complete
    // "query" for registry.test with its own length prefix. Only whole messages at stream
    // boundaries may be tracked: query 1 (split) and the planted one are not; query 2, sent
    // whole after the answer to query 1, is tracked and learned.
    let script = format!(
        r#"
import socket, struct
def query(txid, name_bytes):
    return struct.pack('!HHHHHH', txid, 0x0100, 1, 0, 0, 0) + name_bytes + struct.pack('!HH', 1, 1)
def wire(name):
    return b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
planted = query(0x5151, wire('registry.test'))
label = struct.pack('!H', len(planted)) + planted
label += b'a' * (63 - len(label))
first = struct.pack('!HHHHHH', 0x1111, 0x0100, 1, 0, 0, 0) + bytes([63])
q1 = first + label + b'\0' + struct.pack('!HH', 1, 1)
s = socket.create_connection(('{resolver}', 53), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(struct.pack('!H', len(q1)) + first)
import time; time.sleep(0.2)
s.sendall(q1[len(first):])
def reply():
    head = s.recv(2, socket.MSG_WAITALL)
    return s.recv(struct.unpack('!H', head)[0], socket.MSG_WAITALL)
reply()
q2 = query(0x2222, wire('registry.test'))
s.sendall(struct.pack('!H', len(q2)) + q2)
r = reply()
print('answer', len(r))
"#,
        resolver = a()
    );
    let output = cgroup
        .command("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("answer"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        connect(&cgroup, &b()),
        "ok",
        "the aligned query 2 was learned"
    );
    // SAFETY: kill(2) of the daemon's own PID; it logs its counters on the way out.
    unsafe { libc::kill(daemon.pid().cast_signed(), libc::SIGTERM) };
    let counters = daemon
        .wait_for_line("counters:", Duration::from_secs(10))
        .unwrap();
    assert!(
        counters.contains(" queries_tracked=1 "),
        "only query 2 is tracked: {counters}"
    );
}

/// An enforced process cannot send from port 53 from a UDP socket bound there: such a packet
/// could only pose as a resolver's answer to its own query (a container's root can bind
/// `127.0.0.11:53`, where Docker's embedded DNS really listens elsewhere). The same send from
/// another port arrives, so the listener works. (A raw socket, which could write any source
/// port, cannot be made in an enforced cgroup at all: tests/tests/sockets.rs.)
#[test]
fn enforced_sockets_cannot_send_from_port_53() {
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(
        "[registry_access]\nallow_loopback = true\n[dns]\nresolvers = []\n",
        &[cgroup.path()],
    )
    .expect("daemon starts");
    let listener = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let send = |source_port: u16| {
        let script = format!(
            "import socket\n\
             try:\n\
             \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             \x20   s.bind(('127.0.0.77', {source_port}))\n\
             \x20   s.sendto(b'SPOF', ('127.0.0.1', {port}))\n\
             \x20   print('SENT')\n\
             except OSError as e:\n\
             \x20   print('ERRNO', e.errno)\n"
        );
        let output = cgroup
            .command("python3")
            .args(["-c", &script])
            .output()
            .expect("python3 runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let mut buf = [0u8; 64];
    assert_eq!(send(5353), "SENT");
    let (n, _) = listener
        .recv_from(&mut buf)
        .expect("the control send arrives");
    assert_eq!(&buf[..n], b"SPOF");
    let before = daemon.counter("spoofed_dns_dropped");
    assert_eq!(send(53), "ERRNO 1", "not refused with EPERM");
    assert!(
        listener.recv_from(&mut buf).is_err(),
        "a packet from port 53 arrived"
    );
    assert!(daemon.counter("spoofed_dns_dropped") > before);
}
