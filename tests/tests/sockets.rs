//! Sockets that never pass the connect/sendmsg gates: an enforced cgroup may make TCP and UDP
//! sockets only. Real sockets from python in a test cgroup; a listener outside proves that a
//! raw packet the test sends from outside arrives, and that nothing arrives from inside.

use std::{net::UdpSocket, time::Duration};

use ram_tests::{Daemon, TestCgroup};
use serde_json::Value;

/// Tries to make each kind of socket (and, for raw UDP, to send a datagram to `port` on
/// loopback with it); prints `name result` lines: `ok`, or the errno's name.
const SCRIPT: &str = r#"
import errno, socket, struct, sys
port = int(sys.argv[1])
kinds = [
    ("tcp", socket.AF_INET, socket.SOCK_STREAM, 0),
    ("udp", socket.AF_INET6, socket.SOCK_DGRAM, 0),
    ("raw4", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP),
    ("raw6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    ("ping", socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
    ("udplite", socket.AF_INET, socket.SOCK_DGRAM, 136),
    ("mptcp", socket.AF_INET, socket.SOCK_STREAM, 262),
    ("sctp", socket.AF_INET, socket.SOCK_SEQPACKET, 132),
    ("dccp", socket.AF_INET, 6, 33),
    ("l2tp", socket.AF_INET, socket.SOCK_DGRAM, 115),
    ("packet", socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
    ("packet_dgram", socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300),
]
for name, family, kind, proto in kinds:
    try:
        s = socket.socket(family, kind, proto)
        if name == "raw4":
            s.sendto(struct.pack("!HHHH", 40000, port, 12, 0) + b"RAW!", ("127.0.0.1", 0))
        s.close()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, str(e.errno)))
"#;

/// Runs python `script` with `port` through `cmd`; its `name result` lines.
fn run_script(cmd: &mut std::process::Command, script: &str, port: u16) -> Vec<(String, String)> {
    let output = cmd
        .args(["-c", script, &port.to_string()])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, result) = line.split_once(' ')?;
            Some((name.to_owned(), result.to_owned()))
        })
        .collect()
}

fn try_sockets(cmd: &mut std::process::Command, port: u16) -> Vec<(String, String)> {
    run_script(cmd, SCRIPT, port)
}

/// A listener on loopback that waits half a second for each datagram.
fn udp_listener() -> (UdpSocket, u16) {
    let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// A daemon enforcing `cgroup` with loopback allowed and no resolver.
fn daemon_on(cgroup: &TestCgroup) -> Daemon {
    Daemon::start(
        "[registry_access]\nallow_loopback = true\n[dns]\nresolvers = []\n",
        &[cgroup.path()],
    )
    .expect("daemon starts")
}

/// In an enforced cgroup only TCP and UDP sockets can be made: raw IPv4 and IPv6, ICMP ping,
/// UDP-Lite, MPTCP, SCTP, DCCP and L2TP/IP fail with EPERM (or, where this kernel has no such
/// protocol, EPROTONOSUPPORT/ESOCKTNOSUPPORT before ram is asked: then there is nothing to
/// refuse), each refusal is audited with `reason: socket_type`, and the raw datagram that
/// arrives when sent from outside never arrives from inside.
#[test]
fn only_tcp_and_udp_sockets_can_be_made() {
    let (listener, port) = udp_listener();
    let mut buf = [0u8; 64];

    // Outside any enforced cgroup: every kind the kernel has can be made, and the raw
    // datagram arrives.
    let outside = try_sockets(&mut std::process::Command::new("python3"), port);
    assert!(
        outside.contains(&("raw4".into(), "ok".into())),
        "{outside:?}"
    );
    let (n, _) = listener
        .recv_from(&mut buf)
        .expect("the raw datagram from outside arrives");
    assert_eq!(&buf[..n], b"RAW!");

    let cgroup = TestCgroup::new();
    let daemon = daemon_on(&cgroup);
    let inside = try_sockets(&mut cgroup.command("python3"), port);
    assert!(
        listener.recv_from(&mut buf).is_err(),
        "a raw datagram arrived from inside"
    );
    let mut refused = Vec::new();
    // Packet sockets are refused by a BPF LSM program, where the kernel runs them; the daemon
    // says which (Linux 5.10 cannot).
    let families_refused = daemon
        .lines
        .iter()
        .any(|line| line.contains("socket families: packet sockets and other families"));
    assert_eq!(
        daemon.status()["socket_families_refused"],
        families_refused,
        "ram status says the same"
    );
    for ((name, out), (_, within)) in outside.iter().zip(&inside) {
        match (name.as_str(), out.as_str()) {
            ("tcp" | "udp", _) => assert_eq!(within, "ok", "{name}: {inside:?}"),
            ("packet" | "packet_dgram", "ok") if !families_refused => {
                eprintln!("{name}: this kernel runs no BPF LSM programs; not refused");
            }
            // The kernel has it: ram must refuse it.
            (_, "ok") => {
                assert_eq!(within, "EPERM", "{name}: {inside:?}");
                refused.push(name.clone());
            }
            // The kernel lacks it (no module here): the same error inside.
            (_, missing) => {
                eprintln!("{name}: not in this kernel ({missing}); nothing to refuse");
                assert_eq!(within, missing, "{name}: {inside:?}");
            }
        }
    }
    for must in ["raw4", "raw6"] {
        assert!(refused.iter().any(|r| r == must), "{must}: {inside:?}");
    }
    if families_refused {
        assert!(refused.iter().any(|r| r == "packet"), "packet: {inside:?}");
        let records = daemon.audit_records();
        assert!(
            records.iter().any(|r| r["reason"] == "socket_type"
                && r["socket"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("packet raw"))),
            "{records:?}"
        );
    }
    assert!(daemon.counter("denied_socket") >= refused.len() as u64);
    let records = daemon.audit_records();
    let socket_denials: Vec<&Value> = records
        .iter()
        .filter(|r| r["reason"] == "socket_type" && r["hook"] == "socket_create")
        .collect();
    assert!(
        socket_denials.len() >= refused.len(),
        "{refused:?}: {records:?}"
    );
    assert!(
        socket_denials
            .iter()
            .any(|r| r["socket"] == "inet raw udp" && r["comm"] == "python3"),
        "{socket_denials:?}"
    );

    // ICMP ping sockets, where the group may make them (`ping_group_range`, a setting of each
    // network namespace: here one of the test's own).
    let ping = |cmd: &mut std::process::Command| {
        let output = cmd
            .args(["-n", "sh", "-c"])
            .arg(
                "sysctl -qw net.ipv4.ping_group_range='0 2147483647' && python3 -c '\
import socket\n\
try:\n socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); print(\"ok\")\n\
except OSError as e: print(e.errno)'",
            )
            .output()
            .expect("unshare runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(ping(&mut std::process::Command::new("unshare")), "ok");
    assert_eq!(
        ping(&mut cgroup.command("unshare")),
        "1",
        "ping socket not refused"
    );
}

/// What a process sends with a route: `setsockopt` of an IPv4 source route (loose, through
/// 127.0.0.2) and of an IPv6 routing header, and a datagram that carries IPv4 options as a
/// control message. Prints one `name result` line each: `ok`/`sent`, or the errno's name.
const ROUTES: &str = r#"
import errno, socket, sys
port = int(sys.argv[1])
def attempt(name, action):
    try:
        action()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, str(e.errno)))
def lsrr():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([0x83, 7, 4, 127, 0, 0, 2, 0]))
def rthdr():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, bytes([17, 2, 0, 1, 0, 0, 0, 0]) + bytes(16))
def cmsg_options():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # IP_RETOPTS (7): no-operation options, padded: the header grows to 24 bytes.
    s.sendmsg([b"OPTS"], [(socket.IPPROTO_IP, 7, bytes([1, 1, 1, 0]))], 0, ("127.0.0.1", port))
attempt("lsrr", lsrr)
attempt("rthdr", rthdr)
attempt("cmsg", cmsg_options)
"#;

/// Enforced sockets cannot be sent elsewhere than the address the gates judged: setting an
/// IPv4 source route or an IPv6 routing header fails with EPERM, and a datagram carrying IPv4
/// options as a control message is dropped (EPERM) — the listener, which gets the same
/// datagram from outside, gets nothing from inside.
#[test]
fn source_routes_and_routing_headers_are_refused() {
    let (listener, port) = udp_listener();
    let run = |cmd: &mut std::process::Command| run_script(cmd, ROUTES, port);
    let mut buf = [0u8; 64];
    let outside = run(&mut std::process::Command::new("python3"));
    assert!(
        outside.contains(&("lsrr".into(), "ok".into())),
        "{outside:?}"
    );
    assert!(
        outside.contains(&("cmsg".into(), "ok".into())),
        "{outside:?}"
    );
    let (n, _) = listener
        .recv_from(&mut buf)
        .expect("the datagram from outside arrives");
    assert_eq!(&buf[..n], b"OPTS");

    let cgroup = TestCgroup::new();
    let daemon = daemon_on(&cgroup);
    let inside = run(&mut cgroup.command("python3"));
    for name in ["lsrr", "rthdr", "cmsg"] {
        assert!(
            inside.contains(&(name.into(), "EPERM".into())),
            "{name}: {inside:?}"
        );
    }
    assert!(
        listener.recv_from(&mut buf).is_err(),
        "a datagram with options arrived"
    );
    assert!(daemon.counter("redirect_refused") >= 3);
}

/// Sends an ICMP echo request from a ping socket to each address given; prints
/// `ADDR result`: `reply`, `timeout`, or the errno's name.
const PING: &str = r#"
import errno, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
s.settimeout(1)
for addr in sys.argv[1:]:
    try:
        s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"ram", (addr, 0))
        s.recvfrom(64)
        print(addr, "reply")
    except socket.timeout:
        print(addr, "timeout")
    except OSError as e:
        print(addr, errno.errorcode.get(e.errno, str(e.errno)))
"#;

/// With `allow_ping`, ping sockets can be made, and reach only what the policy allows: the
/// echo to an address no rule allows never leaves (no reply comes back, the send fails).
#[test]
fn ping_when_the_policy_allows_it_reaches_allowed_destinations_only() {
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(
        "[registry_access]\nallow_loopback = false\nallow_cidrs = [\"127.0.0.1\"]\n\
         allow_ping = true\n[dns]\nresolvers = []\n",
        &[cgroup.path()],
    )
    .expect("daemon starts");
    // In a network namespace of its own, where its group may make ping sockets.
    let output = cgroup
        .command("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && sysctl -qw net.ipv4.ping_group_range='0 2147483647' && \
             exec python3 -c \"$0\" 127.0.0.1 127.0.0.2",
            PING,
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("127.0.0.1 reply"), "{out} {output:?}");
    assert!(
        out.contains("127.0.0.2 EPERM") || out.contains("127.0.0.2 timeout"),
        "{out}"
    );
    assert!(!out.contains("127.0.0.2 reply"), "{out}");
    assert!(daemon.counter("backstop_dropped") >= 1);
    let records = daemon.audit_records();
    assert!(
        records.iter().any(|r| r["hook"] == "egress"
            && r["dst_addr"] == "127.0.0.2"
            && r["verdict"] == "deny"),
        "{records:?}"
    );
}

/// IPv6 extension headers a routing header could hide behind: `setsockopt` of destination
/// options, and a datagram to `::1` carrying destination options (then a routing header) as
/// control messages. Prints `name result` lines.
const IPV6_OPTIONS: &str = r#"
import errno, socket, struct, sys
port = int(sys.argv[1])
padn = bytes([0, 0, 1, 4, 0, 0, 0, 0])
def attempt(name, action):
    try:
        action()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, str(e.errno)))
def dstopts():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, 59, padn)
def pktoptions():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    # RFC 2292's sticky options: one control message holding destination options.
    s.setsockopt(socket.IPPROTO_IPV6, 6, struct.pack("=Qii", 24, 41, 59) + padn)
def cmsg_dstopts():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.sendmsg([b"DOPT"], [(socket.IPPROTO_IPV6, 59, padn)], 0, ("::1", port))
def cmsg_dstopts_rthdr():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rthdr = bytes([0, 2, 0, 1, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, "::1")
    s.sendmsg([b"DORH"], [(socket.IPPROTO_IPV6, 55, padn), (socket.IPPROTO_IPV6, 57, rthdr)], 0, ("::1", port))
attempt("dstopts", dstopts)
attempt("pktoptions", pktoptions)
attempt("cmsg_dstopts", cmsg_dstopts)
attempt("cmsg_dstopts_rthdr", cmsg_dstopts_rthdr)
"#;

/// A routing header hidden behind destination options, or the options themselves: refused
/// as options (EPERM) and dropped as control messages; the IPv6 listener that gets the
/// datagram from outside gets nothing from inside.
#[test]
fn ipv6_extension_headers_are_refused() {
    let listener = UdpSocket::bind("[::1]:0").unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut buf = [0u8; 64];
    let outside = run_script(
        &mut std::process::Command::new("python3"),
        IPV6_OPTIONS,
        port,
    );
    assert!(
        outside.contains(&("cmsg_dstopts".into(), "ok".into())),
        "{outside:?}"
    );
    let (n, _) = listener
        .recv_from(&mut buf)
        .expect("the datagram from outside arrives");
    assert_eq!(&buf[..n], b"DOPT");
    while listener.recv_from(&mut buf).is_ok() {}

    let cgroup = TestCgroup::new();
    let _daemon = daemon_on(&cgroup);
    let inside = run_script(&mut cgroup.command("python3"), IPV6_OPTIONS, port);
    for name in [
        "dstopts",
        "pktoptions",
        "cmsg_dstopts",
        "cmsg_dstopts_rthdr",
    ] {
        let result = inside
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.as_str());
        let out = outside
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.as_str());
        // Where the kernel refuses it outside too (a routing header type it lacks), there is
        // nothing to refuse.
        if out == Some("ok") {
            assert_eq!(result, Some("EPERM"), "{name}: {inside:?}");
        }
    }
    assert!(
        listener.recv_from(&mut buf).is_err(),
        "a datagram with extension headers arrived"
    );
}
