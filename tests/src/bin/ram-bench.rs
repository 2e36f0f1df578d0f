//! ram's benchmarks: each measures the same work in an enforced and in an unenforced cgroup,
//! side by side in one run (rounds interleaved, alternating which side goes first, so drift
//! hits both alike), and prints the median of the per-round ratios. Run with
//! `cargo xtask bench` (root; builds ram in release mode). Results: BENCHMARKS.md.
//!
//! - connect-loopback: TCP connect + close to 127.0.0.1 (the gates' LPM lookup on every call).
//! - dns-lookup: a DNS query to dnsmasq on a test host and its answer, for an allowed name
//!   (the enforced side tracks the query and learns from every answer in the kernel).
//! - connect-learned: TCP connect + close to a test-host address learned from DNS.
//! - bulk-tcp: 256 MiB written over one TCP connection to a learned test-host address (every
//!   segment passes the egress programs); reported as time and as a throughput ratio.
//! - tls-request: connect + TLS handshake (OpenSSL, through python's ssl) + one HTTP request
//!   to a learned address on 443, by the name that taught it: the hello is judged as it is
//!   sent and as it leaves (`registry_access.tls = "enforce"`).
//! - bulk-tls: a ClientHello naming the learned name, then 256 MiB on the same connection to
//!   port 443: the cost of a judged connection once its hello was allowed.
//! - container-dns-lookup, container-connect-learned: the same two from inside a container on
//!   dockerd's default bridge (a real dockerd with its NAT, in a namespace of its own), the
//!   container enforced under `scope.containers`, its DNS trusted in its namespace; the
//!   unenforced side is the same container's network namespace from an unenforced cgroup.
//! - policy-reload: a 10,000-hostname policy file replaced by rename while the daemon runs;
//!   time until a connection the new policy allows goes through (and, the other way, is
//!   refused again), with the daemon's own read+compile and swap times. Absolute times: there
//!   is no unenforced side to a reload.
//! - daemon-rss: the daemon's resident memory with a 10-hostname and a 10,000-hostname policy.
//! - gate-throughput: a 256 MiB layer downloaded (curl) from a docker-registry on a test host,
//!   directly and through ram's Docker Hub pull gate, rounds interleaved; the ratio of
//!   throughputs, and the daemon's resident memory before and at its peak (VmHWM).
//! - metrics-scrape: `GET /metrics` timed while the daemon is idle and during a flood of denied
//!   connections from an enforced cgroup (every one an event the daemon audits); the median and
//!   the 95th percentile of each, and their ratio. Goal: under 10 ms during the flood.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use ram_tests::{
    Background, Daemon, EngineNet, TestCgroup, TestDocker, TestNet, cgroup2_mount, dns_query_in,
};

/// Rounds per side; the median of the per-round ratios is reported.
const ROUNDS: usize = 41;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("worker-connect") => worker_connect(args[2].parse()?, args[3].parse()?),
        Some("worker-dns") => worker_dns(args[2].parse()?, &args[3], args[4].parse()?),
        Some("worker-bulk") => worker_bulk(args[2].parse()?, args[3].parse()?, None),
        Some("worker-bulk-tls") => {
            worker_bulk(args[2].parse()?, args[3].parse()?, Some(args[4].as_str()))
        }
        Some("worker-tls") => worker_tls(&args[2..]),
        Some("listen") => listen(args[2].parse()?),
        Some("sink") => sink(&args[2]),
        Some("worker-deny") => worker_deny(args[2].parse()?, args[3].parse()?),
        // Optional first argument: run only benchmarks whose name contains it.
        filter => {
            let wanted = |name: &str| filter.is_none_or(|f| name.contains(f));
            // Before pinning: registry, gate and curl each need a CPU of their own.
            if wanted("gate-throughput") {
                gate_throughput()?;
            }
            // Before pinning too: the flood, the daemon and the scrapes each on a CPU.
            if wanted("metrics-scrape") {
                metrics_scrape()?;
            }
            pin_to_last_cpu();
            if wanted("connect-loopback") {
                connect_loopback()?;
            }
            if wanted("dns-lookup") || wanted("connect-learned") || wanted("bulk-tcp") {
                dns_benchmarks()?;
            }
            if wanted("tls-request") || wanted("bulk-tls") {
                tls_benchmarks()?;
            }
            if wanted("container-dns-lookup") || wanted("container-connect-learned") {
                container_dns_benchmarks()?;
            }
            if wanted("policy-reload") || wanted("daemon-rss") {
                policy_benchmarks()?;
            }
            Ok(())
        }
    }
}

/// `worker-connect ADDR N`: N connect+close to ADDR; prints nanoseconds per connect.
fn worker_connect(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    for _ in 0..count {
        let stream = TcpStream::connect(addr)?;
        reset_on_close(&stream);
    }
    report(start, count)
}

/// `worker-deny ADDR SECONDS`: connects to ADDR (denied) as fast as it can for SECONDS;
/// prints how many attempts it made.
fn worker_deny(addr: SocketAddr, seconds: u64) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut attempts = 0u64;
    while Instant::now() < until {
        let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
        attempts += 1;
    }
    println!("{attempts}");
    Ok(())
}

/// `worker-dns RESOLVER NAME N`: N queries for NAME (A), each waiting for its answer; prints
/// nanoseconds per lookup.
fn worker_dns(resolver: IpAddr, name: &str, count: usize) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut query = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut reply = [0u8; 512];
    let start = Instant::now();
    for id in 0..count {
        query[..2].copy_from_slice(&(id as u16).to_be_bytes());
        socket.send_to(&query, (resolver, 53))?;
        loop {
            let (n, _) = socket.recv_from(&mut reply).context("no answer")?;
            if n >= 2 && reply[..2] == query[..2] {
                break;
            }
        }
    }
    report(start, count)
}

/// `worker-bulk ADDR MIB`: one TCP connection to ADDR (a sink), MIB MiB written in 64 KiB
/// writes, then a shutdown and the sink's close awaited (every byte delivered); prints
/// nanoseconds per MiB. `worker-bulk-tls ADDR MIB NAME` first sends a ClientHello naming NAME.
fn worker_bulk(addr: SocketAddr, mib: usize, hello: Option<&str>) -> anyhow::Result<()> {
    let chunk = vec![0x5a_u8; 64 * 1024];
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    if let Some(name) = hello {
        stream.write_all(&ram_tests::client_hello(name))?;
    }
    for _ in 0..mib * 16 {
        stream.write_all(&chunk)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut rest = [0u8; 16];
    while stream.read(&mut rest)? > 0 {}
    report(start, mib)
}

/// `worker-tls ADDR PORT NAME CA N`: tls_requests.py (N requests, each a new TLS connection);
/// prints its nanoseconds per request.
fn worker_tls(args: &[String]) -> anyhow::Result<()> {
    let output = std::process::Command::new("python3")
        .arg(ram_tests::client_script("tls_requests.py"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(output.status.success(), "tls_requests.py failed");
    print!("{}", String::from_utf8(output.stdout)?);
    Ok(())
}

/// `sink PORT` or `sink ADDR:PORT`: reads each connection to its end, then closes it (run in
/// the test host).
fn sink(at: &str) -> anyhow::Result<()> {
    let addr = match at.parse::<u16>() {
        Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        Err(_) => at.parse()?,
    };
    let listener = deep_listener(addr)?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
    Ok(())
}

fn report(start: Instant, count: usize) -> anyhow::Result<()> {
    println!("{}", start.elapsed().as_nanos() as f64 / count as f64);
    std::io::stdout().flush()?;
    Ok(())
}

/// `listen PORT`: accepts and drops connections on all addresses (run in the test host).
fn listen(port: u16) -> anyhow::Result<()> {
    let listener = deep_listener(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?;
    for stream in listener.incoming() {
        drop(stream.map(|mut s| s.read(&mut [0u8; 0])));
    }
    Ok(())
}

/// std listens with a backlog of 128; an accept loop that falls behind by that much makes the
/// kernel drop SYNs, and each drop costs a client a 1 s retransmission. Re-listen deeper.
fn deep_listener(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // SAFETY: listen(2) on a socket we own.
    let listening = unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    ensure!(listening == 0, "listen");
    Ok(listener)
}

/// SO_LINGER 0: close sends RST instead of leaving TIME_WAIT, so 80,000 connects do not run out
/// of ephemeral ports.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Pins this process (and everything it starts, which inherits it) to one CPU: client, server
/// and kernel work then share a core the same way on both sides, which removes most of the
/// scheduling noise of a small machine.
fn pin_to_last_cpu() {
    // SAFETY: plain sched_setaffinity(2) on ourselves with an initialized set.
    unsafe {
        let cpus = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus - 1, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs `worker ARGS` in `cgroup` (and in network namespace `netns`, if given); returns the
/// nanoseconds it printed.
fn run_worker(cgroup: &TestCgroup, args: &[String], netns: Option<&str>) -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?;
    let mut cmd = match netns {
        Some(netns) => {
            let mut cmd = cgroup.command("nsenter");
            cmd.arg(format!("--net={netns}")).arg(exe);
            cmd
        }
        None => cgroup.command(exe),
    };
    let output = cmd.args(args).stderr(Stdio::inherit()).output()?;
    ensure!(
        output.status.success(),
        "worker {args:?} failed: {}",
        output.status
    );
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs `args` in both cgroups, ROUNDS times each, interleaved; prints the comparison.
fn side_by_side(
    title: &str,
    unit: &str,
    goal: f64,
    plain: &TestCgroup,
    enforced: &TestCgroup,
    args: &[String],
) -> anyhow::Result<f64> {
    side_by_side_in(title, unit, goal, plain, enforced, args, None)
}

/// As [`side_by_side`], both sides in network namespace `netns` (a `/proc/PID/ns/net` path).
fn side_by_side_in(
    title: &str,
    unit: &str,
    goal: f64,
    plain: &TestCgroup,
    enforced: &TestCgroup,
    args: &[String],
    netns: Option<&str>,
) -> anyhow::Result<f64> {
    // Warm-up: caches, socket slabs, branch predictors.
    run_worker(plain, args, netns)?;
    run_worker(enforced, args, netns)?;
    let (mut plain_ns, mut enforced_ns) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            plain_ns.push(run_worker(plain, args, netns)?);
            enforced_ns.push(run_worker(enforced, args, netns)?);
        } else {
            enforced_ns.push(run_worker(enforced, args, netns)?);
            plain_ns.push(run_worker(plain, args, netns)?);
        }
    }
    // Each round's two runs are adjacent in time: their ratio cancels slow drift.
    let mut paired: Vec<f64> = enforced_ns
        .iter()
        .zip(&plain_ns)
        .map(|(e, p)| e / p)
        .collect();
    let paired_median = median(&mut paired);
    println!("{title}");
    println!(
        "  unenforced cgroup: {:.0} ns per {unit} (median round)",
        median(&mut plain_ns)
    );
    println!(
        "  enforced cgroup:   {:.0} ns per {unit} (median round)",
        median(&mut enforced_ns)
    );
    println!(
        "  ratio enforced/unenforced: {paired_median:.3} (median of per-round ratios; goal <= {goal})"
    );
    let totals = enforced_ns.iter().sum::<f64>() / plain_ns.iter().sum::<f64>();
    println!("  ratio of the sides' total times: {totals:.3}");
    Ok(paired_median)
}

fn connect_loopback() -> anyhow::Result<()> {
    let listener = deep_listener("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream.map(|mut s| s.read(&mut [0u8; 0])));
        }
    });
    let plain = TestCgroup::new();
    let enforced = TestCgroup::new();
    let _daemon = Daemon::start(
        "[registry_access]\nallow_loopback = true\n[dns]\nresolvers = []\n",
        &[enforced.path()],
    )?;
    let args = [
        "worker-connect".to_string(),
        addr.to_string(),
        "2000".into(),
    ];
    side_by_side(
        "connect-loopback: TCP connect+close to 127.0.0.1, 2,000 per round",
        "connect",
        1.03,
        &plain,
        &enforced,
        &args,
    )
    .map(drop)
}

fn dns_benchmarks() -> anyhow::Result<()> {
    const PORT: u16 = 9090;
    const SINK_PORT: u16 = 9091;
    let net = TestNet::new();
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("exe path")?;
    let mut listen_cmd = net.command(exe);
    listen_cmd.args(["listen", &PORT.to_string()]);
    let _listener = Background::spawn("bench listener", listen_cmd);
    let mut sink_cmd = net.command(exe);
    sink_cmd.args(["sink", &SINK_PORT.to_string()]);
    let _sink = Background::spawn("bench sink", sink_cmd);
    ram_tests::wait_for_tcp(SocketAddr::new(IpAddr::V4(TestNet::PEER_V4[1]), PORT));
    ram_tests::wait_for_tcp(SocketAddr::new(IpAddr::V4(TestNet::PEER_V4[1]), SINK_PORT));
    let _dns = net.dnsmasq(&[("bench.test", TestNet::PEER_V4[1].into())], &[]);
    let resolver = TestNet::PEER_V4[0].to_string();

    let plain = TestCgroup::new();
    let enforced = TestCgroup::new();
    let _daemon = Daemon::start(
        &format!(
            "[registry_access]\nallow = [\"bench.test:{PORT}\", \"bench.test:{SINK_PORT}\"]\n[dns]\nresolvers = [\"{resolver}\"]\nmin_ttl = 3600\n"
        ),
        &[enforced.path()],
    )?;
    let lookup = [
        "worker-dns".to_string(),
        resolver.clone(),
        "bench.test".into(),
        "500".into(),
    ];
    side_by_side(
        "dns-lookup: UDP query + answer for an allowed name from dnsmasq on a test host, 500 per round",
        "lookup",
        1.05,
        &plain,
        &enforced,
        &lookup,
    )?;

    // The enforced side learned bench.test's address during the lookups; make sure of it.
    let report = dns_query_in(
        &enforced,
        &[&resolver, "bench.test", "A", "--connect", &PORT.to_string()],
    );
    ensure!(
        report["connect"] == "ok",
        "bench.test is not learned: {report}"
    );
    let connect = [
        "worker-connect".to_string(),
        SocketAddr::new(IpAddr::V4(TestNet::PEER_V4[1]), PORT).to_string(),
        "1000".into(),
    ];
    side_by_side(
        "connect-learned: TCP connect+close to a learned test-host address, 1,000 per round",
        "connect",
        1.03,
        &plain,
        &enforced,
        &connect,
    )?;
    let bulk = [
        "worker-bulk".to_string(),
        SocketAddr::new(IpAddr::V4(TestNet::PEER_V4[1]), SINK_PORT).to_string(),
        "256".into(),
    ];
    let time_ratio = side_by_side(
        "bulk-tcp: 256 MiB over one TCP connection to a learned test-host address (veth), per round \
         (each round's time varies by ~10 % on a 2-vCPU VM: read the total-time ratio too)",
        "MiB",
        1.02,
        &plain,
        &enforced,
        &bulk,
    )?;
    println!(
        "  throughput ratio enforced/unenforced: {:.3} (goal >= 0.98)",
        1.0 / time_ratio
    );
    Ok(())
}

fn tls_benchmarks() -> anyhow::Result<()> {
    const SINK_PORT: u16 = 443;
    let net = TestNet::new();
    let dir = ram_tests::TempDir::new();
    let ca = ram_tests::TestCa::new(&dir, &["tls.test"]);
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("exe path")?;
    let peer_b: IpAddr = TestNet::PEER_V4[1].into();
    let peer_c: IpAddr = TestNet::PEER_V4[2].into();
    // The sink on B:443 (bulk after a hello), the TLS server on C:443 (requests).
    // Each on its own address (a wildcard listener on 443 would answer for both).
    let mut sink_cmd = net.command(exe);
    sink_cmd.args(["sink", &SocketAddr::new(peer_b, SINK_PORT).to_string()]);
    let _sink = Background::spawn("bench sink", sink_cmd);
    ram_tests::wait_for_tcp(SocketAddr::new(peer_b, SINK_PORT));
    let (_tls, _log) = net.tls_server(&dir, peer_c, 443, &ca);
    let _dns = net.dnsmasq(&[("bench.test", peer_b), ("tls.test", peer_c)], &[]);
    let resolver = TestNet::PEER_V4[0].to_string();

    let plain = TestCgroup::new();
    let enforced = TestCgroup::new();
    let _daemon = Daemon::start(
        &format!(
            "[registry_access]\nallow = [\"bench.test\", \"tls.test\"]\ntls = \"enforce\"\n\
             [dns]\nresolvers = [\"{resolver}\"]\nmin_ttl = 3600\n"
        ),
        &[enforced.path()],
    )?;
    for (name, port) in [("bench.test", SINK_PORT), ("tls.test", 443)] {
        let report = dns_query_in(
            &enforced,
            &[&resolver, name, "A", "--connect", &port.to_string()],
        );
        ensure!(report["connect"] == "ok", "{name} is not learned: {report}");
    }
    let requests = [
        "worker-tls".to_string(),
        peer_c.to_string(),
        "443".into(),
        "tls.test".into(),
        ca.ca.display().to_string(),
        "100".into(),
    ];
    side_by_side(
        "tls-request: connect + TLS handshake + one HTTP request to a learned address, by the \
         name that taught it (tls = \"enforce\"), 100 per round",
        "request",
        1.03,
        &plain,
        &enforced,
        &requests,
    )?;
    let bulk = [
        "worker-bulk-tls".to_string(),
        SocketAddr::new(peer_b, SINK_PORT).to_string(),
        "256".into(),
        "bench.test".into(),
    ];
    let time_ratio = side_by_side(
        "bulk-tls: a ClientHello naming the learned name, then 256 MiB on the same connection to \
         port 443, per round",
        "MiB",
        1.02,
        &plain,
        &enforced,
        &bulk,
    )?;
    println!(
        "  throughput ratio enforced/unenforced: {:.3} (goal >= 0.98)",
        1.0 / time_ratio
    );
    Ok(())
}

fn container_dns_benchmarks() -> anyhow::Result<()> {
    const PORT: u16 = 9091;
    let host = Ipv4Addr::new(203, 0, 113, 9);
    let docker_parent = cgroup2_mount().join("docker");
    let _v1 = ram_tests::V1Parents::new("docker");
    ensure!(
        !docker_parent.exists(),
        "{} exists: another Docker Engine's containers; stop it first",
        docker_parent.display()
    );
    let net = EngineNet::new();
    net.add_host_address(host);
    let _dns = net.dnsmasq(&[("bench.test", host)]);
    let listener = deep_listener(SocketAddr::new(IpAddr::V4(host), PORT))?;
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream.map(|mut s| s.read(&mut [0u8; 0])));
        }
    });
    let engine = TestCgroup::new();
    let docker = TestDocker::start_bridged(&engine, &net);
    let _docker_parent = TestCgroup::adopt(docker_parent);
    let rootfs = docker.dir().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep"))?;
    docker.import_rootfs(&rootfs, "bb:latest");
    let (ok, out, err, _) = docker.run(&["run", "-d", "bb:latest", "sleep", "3600"]);
    ensure!(ok, "docker run: {err}");
    let id = out.trim().to_owned();
    let (ok, pid, err, _) = docker.run(&["inspect", "-f", "{{.State.Pid}}", &id]);
    ensure!(ok, "docker inspect: {err}");
    let netns = format!("/proc/{}/ns/net", pid.trim());
    let container_cgroup = cgroup2_mount().join("docker").join(&id);

    let resolver = EngineNet::HOST_SIDE.to_string();
    let bystander = TestCgroup::new();
    let daemon = Daemon::start(
        &format!(
            "[scope]\ncontainers = true\n[registry_access]\nallow = [\"bench.test:*\"]\n\
             [dns]\nresolvers = [\"{resolver}\"]\nmin_ttl = 3600\n"
        ),
        &[bystander.path()],
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.status()["container_networks"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| n["container"] == id.as_str()))
    {
        ensure!(
            Instant::now() < deadline,
            "the container's network is not trusted"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // The enforced side: a cgroup below the container's, which inherits its programs.
    let enforced = TestCgroup::new_in(&container_cgroup);
    let plain = TestCgroup::new();
    let lookup = [
        "worker-dns".to_string(),
        resolver.clone(),
        "bench.test".into(),
        "500".into(),
    ];
    side_by_side_in(
        "container-dns-lookup: the same from inside a bridge-network container, 500 per round",
        "lookup",
        1.05,
        &plain,
        &enforced,
        &lookup,
        Some(&netns),
    )?;
    let connect = [
        "worker-connect".to_string(),
        SocketAddr::new(IpAddr::V4(host), PORT).to_string(),
        "1000".into(),
    ];
    side_by_side_in(
        "container-connect-learned: TCP connect+close through the bridge's NAT to a learned \
         address, 1,000 per round",
        "connect",
        1.03,
        &plain,
        &enforced,
        &connect,
        Some(&netns),
    )?;
    drop(enforced);
    drop(daemon);
    drop(docker);
    Ok(())
}

/// A policy with `names` hostnames (`host<i>.registry<j>.test`) and `cidrs`; loopback denied.
fn big_policy(names: usize, cidrs: &[&str]) -> String {
    let mut text = String::from("[registry_access]\nallow_loopback = false\nallow = [\n");
    for i in 0..names {
        text.push_str(&format!("  \"host{i}.registry{}.test\",\n", i % 97));
    }
    text.push_str("]\nallow_cidrs = [");
    text.push_str(
        &cidrs
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
    );
    text.push_str("]\n[dns]\nresolvers = []\n");
    text
}

/// Resident memory of `pid` in KiB (VmRSS).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// Milliseconds in a daemon log line's `... in X ms` after `label`.
fn logged_ms(line: &str, label: &str) -> Option<f64> {
    let rest = &line[line.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn policy_benchmarks() -> anyhow::Result<()> {
    const NAMES: usize = 10_000;
    const REPEATS: usize = 10;
    let target = "127.0.0.2:9191";
    let listener = deep_listener(target.parse()?)?;
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let cgroup = TestCgroup::new();

    let small = Daemon::start(&big_policy(10, &[]), &[cgroup.path()])?;
    thread::sleep(Duration::from_millis(500));
    let small_rss = rss_kib(small.pid())?;
    drop(small);

    let closed = big_policy(NAMES, &[]);
    let open = big_policy(NAMES, &["127.0.0.2/32"]);
    let mut daemon = Daemon::start(&closed, &[cgroup.path()])?;
    thread::sleep(Duration::from_millis(500));
    let big_rss = rss_kib(daemon.pid())?;
    let connects = || {
        let output = cgroup
            .command(std::env::current_exe().expect("own path"))
            .args(["worker-connect", target, "1"])
            .stderr(Stdio::null())
            .output()
            .expect("running a connect worker");
        output.status.success()
    };
    ensure!(!connects(), "the closed policy must deny {target}");

    let mut took = Vec::new();
    let (mut compile, mut swap) = (Vec::new(), Vec::new());
    for round in 0..REPEATS * 2 {
        let opening = round % 2 == 0;
        let start = Instant::now();
        daemon
            .state()
            .write_policy(if opening { &open } else { &closed });
        let deadline = start + Duration::from_secs(5);
        while connects() != opening {
            ensure!(
                Instant::now() < deadline,
                "the reload did not take effect in 5 s"
            );
        }
        took.push(start.elapsed().as_secs_f64() * 1e3);
        // The daemon's own timings, from its log line for this reload.
        let line = daemon.wait_for_nth_line("now in force", round + 1, Duration::from_secs(5))?;
        compile.extend(logged_ms(&line, "compiled in"));
        swap.extend(logged_ms(&line, "swapped in"));
    }
    let after_rss = rss_kib(daemon.pid())?;
    let max = took.iter().cloned().fold(0.0, f64::max);
    println!(
        "policy-reload: {NAMES}-hostname policy replaced by rename, {} times; file write to \
         enforced (a connection allowed or refused accordingly)",
        took.len()
    );
    println!(
        "  write -> enforced: median {:.0} ms, max {max:.0} ms (goal < 1000 ms)",
        median(&mut took)
    );
    if !compile.is_empty() {
        println!(
            "  daemon: read+compile median {:.1} ms (goal < 100 ms), swap into the kernel median {:.1} ms",
            median(&mut compile),
            median(&mut swap)
        );
    }
    println!(
        "daemon-rss: {small_rss} KiB with 10 hostnames, {big_rss} KiB with {NAMES}, {after_rss} KiB after {} reloads",
        took.len()
    );
    Ok(())
}

/// Rounds of the gate benchmark (each downloads the layer twice).
const GATE_ROUNDS: usize = 7;
const GATE_LAYER_MIB: usize = 256;

/// VmHWM (peak resident memory) of `pid` in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM")
}

/// Downloads `url` with curl; returns bytes per second.
fn download(url: &str, expected: u64) -> anyhow::Result<f64> {
    let output = std::process::Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{speed_download}",
        ])
        .arg(url)
        .output()?;
    ensure!(
        output.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    let mut fields = text.split_whitespace();
    let size: u64 = fields.next().context("curl printed no size")?.parse()?;
    ensure!(size == expected, "{url}: {size} bytes, not {expected}");
    Ok(fields.next().context("curl printed no speed")?.parse()?)
}

fn gate_throughput() -> anyhow::Result<()> {
    const GATE: &str = "127.0.0.1:456";
    let net = TestNet::new();
    let registry_ip = TestNet::PEER_V4[1];
    let storage = ram_tests::TempDir::new();
    let _registry = net.registry(&storage, registry_ip.into(), 5000);
    let pushed = std::process::Command::new("python3")
        .arg(ram_tests::client_script("push_image.py"))
        .arg(format!("http://{registry_ip}:5000"))
        .arg("library/big:1")
        .args(["--random-bytes", &(GATE_LAYER_MIB << 20).to_string()])
        .output()?;
    ensure!(
        pushed.status.success(),
        "push_image.py: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let pushed: serde_json::Value = serde_json::from_slice(&pushed.stdout)?;
    let layer = pushed["layer"].as_str().context("no layer digest")?;
    let size = pushed["layer_size"].as_u64().context("no layer size")?;

    let bystander = TestCgroup::new();
    let state = Daemon::prepare(
        &format!(
            "[image_access]\nenabled = true\ngate = \"{GATE}\"\n\
             upstream = \"http://{registry_ip}:5000\"\n"
        ),
        &[bystander.path()],
    );
    let mut daemon = state.start()?;
    daemon.wait_for_line("Docker Hub pull gate on", Duration::from_secs(5))?;
    let rss_before = rss_kib(daemon.pid())?;
    let path = format!("/v2/library/big/blobs/{layer}");
    let direct_url = format!("http://{registry_ip}:5000{path}");
    let gate_url = format!("http://{GATE}{path}");
    // Warm-up: the registry's file in the page cache, connections set up once.
    download(&direct_url, size)?;
    download(&gate_url, size)?;
    let (mut direct, mut gated, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..GATE_ROUNDS {
        let (d, g) = if round % 2 == 0 {
            let d = download(&direct_url, size)?;
            (d, download(&gate_url, size)?)
        } else {
            let g = download(&gate_url, size)?;
            (download(&direct_url, size)?, g)
        };
        direct.push(d);
        gated.push(g);
        ratios.push(g / d);
    }
    let peak = peak_rss_kib(daemon.pid())?;
    let mib = |bytes_per_s: f64| bytes_per_s / f64::from(1 << 20);
    println!("gate-throughput: a {GATE_LAYER_MIB} MiB layer, {GATE_ROUNDS} rounds");
    println!(
        "  direct from the registry: {:.0} MiB/s (median round)",
        mib(median(&mut direct))
    );
    println!(
        "  through the pull gate:    {:.0} MiB/s (median round)",
        mib(median(&mut gated))
    );
    println!(
        "  ratio gate/direct: {:.3} (median of per-round ratios; goal >= 0.9)",
        median(&mut ratios)
    );
    println!(
        "  daemon resident memory: {} KiB before, peak {} KiB after {} layer downloads",
        rss_before,
        peak,
        GATE_ROUNDS + 1
    );
    Ok(())
}

/// One `GET /metrics` on `addr`; milliseconds until the whole answer arrived.
fn scrape_ms(addr: SocketAddr) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    ensure!(answer.starts_with(b"HTTP/1.1 200"), "the scrape failed");
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn metrics_scrape() -> anyhow::Result<()> {
    const LISTEN: &str = "127.0.0.1:9475";
    const FLOOD_SECONDS: u64 = 6;
    let _net = TestNet::new();
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(
        &format!("[registry_access]\nallow_loopback = false\n[metrics]\nlisten = \"{LISTEN}\"\n"),
        &[cgroup.path()],
    )?;
    daemon.wait_for_line("Prometheus endpoint on", Duration::from_secs(5))?;
    let addr: SocketAddr = LISTEN.parse()?;
    let percentile = |values: &mut Vec<f64>, p: f64| {
        values.sort_by(f64::total_cmp);
        values[((values.len() - 1) as f64 * p).round() as usize]
    };
    let mut quiet = Vec::new();
    for _ in 0..ROUNDS {
        quiet.push(scrape_ms(addr)?);
        thread::sleep(Duration::from_millis(20));
    }
    // A denied destination: a test host no rule allows (port 9; nothing is sent).
    let denied = format!("{}:9", TestNet::PEER_V4[2]);
    let flood = cgroup
        .command(std::env::current_exe()?)
        .args(["worker-deny", &denied, &FLOOD_SECONDS.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    thread::sleep(Duration::from_millis(500));
    let mut flooded = Vec::new();
    for _ in 0..ROUNDS {
        flooded.push(scrape_ms(addr)?);
        thread::sleep(Duration::from_millis(50));
    }
    let output = flood.wait_with_output()?;
    let attempts: f64 = String::from_utf8(output.stdout)?.trim().parse()?;
    let (quiet_median, quiet_p95) = (percentile(&mut quiet, 0.5), percentile(&mut quiet, 0.95));
    let (flood_median, flood_p95) = (
        percentile(&mut flooded, 0.5),
        percentile(&mut flooded, 0.95),
    );
    println!(
        "metrics-scrape: idle median {quiet_median:.2} ms (p95 {quiet_p95:.2}); during a flood of \
         {:.0} denials/s: median {flood_median:.2} ms (p95 {flood_p95:.2}), ratio {:.2}; goal < 10 \
         ms: {}",
        attempts / FLOOD_SECONDS as f64,
        flood_median / quiet_median,
        if flood_p95 < 10.0 { "met" } else { "NOT met" }
    );
    Ok(())
}
