//! Containers and build steps as enforced subjects, with a real dockerd that has real container
//! networking (its bridge, NAT and iptables rules) in a network namespace of its own, linked to
//! the test's namespace by a veth pair.

use std::{
    fs,
    io::ErrorKind,
    net::TcpListener,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use std::net::Ipv4Addr;

use ram_tests::{
    Daemon, EngineNet, TestCgroup, TestContainerd, TestDocker, TestPodman, V1Parents, cgroup2_mount,
};
use serde_json::Value;

/// Where the test's namespace listens for what build steps send.
const PORT: u16 = 18080;

/// `bb:latest`: busybox-static as a one-binary image (no registry needed).
fn import_busybox(docker: &TestDocker) {
    docker.import_rootfs(&busybox_rootfs(docker.dir()), "bb:latest");
}

/// busybox-static, with the applets the tests' scripts use, as a root directory in `dir`.
fn busybox_rootfs(dir: &Path) -> std::path::PathBuf {
    let rootfs = dir.join("busybox-rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "nc", "echo", "cat", "timeout", "sleep", "nslookup", "awk", "ip", "unshare",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    rootfs
}

/// The cgroup parent `name` that an engine makes for its containers (`docker`, `default`,
/// `libpod_parent`), which must not exist yet (another engine's containers, or a test's left
/// over), with the guard that removes its v1 twins when the test ends.
fn fresh_parent(name: &str) -> (std::path::PathBuf, V1Parents) {
    let parent = cgroup2_mount().join(name);
    let v1 = V1Parents::new(name);
    assert!(
        !parent.exists(),
        "{} exists: another engine's containers, or a test's left over; remove it first",
        parent.display()
    );
    (parent, v1)
}

/// Accepts and closes connections on `listener` until dropped, counting them: a client that
/// got through sees its connection end at once (busybox `nc` would wait for the far side).
struct Acceptor {
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Acceptor {
    fn new(listener: TcpListener) -> Self {
        listener.set_nonblocking(true).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (count, stop) = (count.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok(_) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) if err.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(20));
                        }
                        Err(err) => panic!("accept: {err}"),
                    }
                }
            })
        };
        Self {
            count,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `docker build` with the engine's BuildKit; returns (success, everything it printed).
fn build(docker: &TestDocker, context: &Path) -> (bool, String) {
    build_with(docker, context, true)
}

/// `docker build` with BuildKit or the classic builder.
fn build_with(docker: &TestDocker, context: &Path, buildkit: bool) -> (bool, String) {
    let mut cmd = docker.docker();
    if buildkit {
        cmd.args(["build", "--progress=plain"]);
    } else {
        cmd.arg("build");
    }
    let output = cmd
        .env("DOCKER_BUILDKIT", if buildkit { "1" } else { "0" })
        .args(["--no-cache", "-t", "ram-step"])
        .arg(context)
        .output()
        .expect("running docker build");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

/// dockerd's BuildKit runs each RUN step in a cgroup of its own below `docker/buildkit`
/// (cgroupfs driver), outside dockerd's cgroup: unenforced, a step reaches anything. Under
/// `scope.containers`, ram enforces that parent, so the next build's step is refused with
/// EPERM from its first connection, nothing arrives, and the audit log names the step's cgroup.
#[test]
fn buildkit_run_steps_are_enforced() {
    // The cgroupfs driver makes `docker/` at the mount; the test removes it only if it made it.
    let (docker_parent, _v1) = fresh_parent("docker");
    let net = EngineNet::new();
    let far_side = Acceptor::new(TcpListener::bind((EngineNet::HOST_SIDE, PORT)).unwrap());
    let engine = TestCgroup::new();
    let bystander = TestCgroup::new();
    let docker = TestDocker::start_bridged(&engine, &net);
    let _docker_parent = TestCgroup::adopt(docker_parent.clone());
    import_busybox(&docker);
    let context = docker.dir().join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM bb:latest\nRUN (timeout 20 nc -w 5 {} {PORT} </dev/null && echo STEP-$((40+2)) || \
             echo STEP-$((40+3))); sleep 2\n",
            EngineNet::HOST_SIDE
        ),
    )
    .unwrap();

    // Unenforced, the step reaches the test's namespace through the engine's NAT.
    let (ok, out) = build(&docker, &context);
    assert!(ok && out.contains("STEP-42"), "{out}\n{}", docker.log());
    assert!(
        eventually(Duration::from_secs(5), || far_side.accepted() > 0),
        "the unenforced step's connection never arrived"
    );
    let buildkit = docker_parent.join("buildkit");
    assert!(buildkit.is_dir(), "BuildKit made no {}", buildkit.display());

    let policy = "[scope]\ncontainers = true\n\n[registry_access]\nallow_loopback = true\n\n\
                  [dns]\nresolvers = []\n";
    let daemon = Daemon::start(policy, &[bystander.path()]).expect("daemon starts");
    let wanted = buildkit.display().to_string();
    assert!(
        eventually(Duration::from_secs(5), || {
            let status: Value = daemon.status();
            status["cgroups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["path"] == wanted.as_str())
        }),
        "{wanted} not enforced: {:?}",
        daemon.status()
    );

    let before = far_side.accepted();
    let (ok, out) = build(&docker, &context);
    assert!(ok && out.contains("STEP-43"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        far_side.accepted(),
        before,
        "the enforced step's connection arrived"
    );
    let denial = daemon.audit_records().into_iter().find(|r| {
        r["verdict"] == "deny"
            && r["dst_port"] == PORT
            && r["cgroup"]
                .as_str()
                .is_some_and(|c| c.starts_with("/docker/buildkit/"))
    });
    let Some(denial) = denial else {
        panic!(
            "no denial audited for a RUN step: {:?}",
            daemon.audit_records()
        );
    };
    // The step's id, as BuildKit names its cgroup, stands in the container_id field. (The step
    // sleeps after its connection: a cgroup already gone when the daemon reads the event has
    // no path left to name; see docs/limits.md.)
    let step = denial["cgroup"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert_eq!(denial["container_id"], step, "{denial}");
    drop(daemon);
    drop(docker);
}

/// A test host allowed by name, and one that is not (addresses on the test's side of the
/// engine's link, reached through the engine's NAT).
const ALLOWED_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const BLOCKED_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// A resolver that only containers are given (`dns.container_resolvers`).
const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

/// What a container runs: looks both names up with busybox's own resolver (plain DNS to its
/// resolv.conf's nameserver), connects to the address each answer gave, then to the blocked
/// host's raw address; prints one word per step.
fn lookup_and_connect_script() -> String {
    let connect = |what: &str, target: &str| {
        format!(
            "if timeout 10 nc -w 5 {target} {PORT} </dev/null; then echo {what}-CONNECTED; \
             else echo {what}-REFUSED; fi; "
        )
    };
    let lookup = |what: &str, name: &str| {
        format!(
            "{what}=$(nslookup {name} 2>&1 | awk '/^Name:/ {{n=1}} n && /^Address/ {{print $2; exit}}'); \
             echo {what}-ANSWER=${what}; "
        )
    };
    format!(
        "{}{}{}{}{}",
        lookup("A", "allowed.test"),
        connect("A", "$A"),
        lookup("B", "blocked.test"),
        connect("B", "$B"),
        connect("RAW", &BLOCKED_HOST.to_string()),
    )
}

/// The engine's network with two test hosts on the test's side, the one allowed by name and the
/// blocked one, dnsmasq answering for both (the resolver engines' resolv.conf names), and a
/// listener on each that counts what arrives.
struct Hosts {
    net: EngineNet,
    _dns: ram_tests::Background,
    allowed: Acceptor,
    blocked: Acceptor,
}

impl Hosts {
    fn new() -> Self {
        let net = EngineNet::new();
        net.add_host_address(ALLOWED_HOST);
        net.add_host_address(BLOCKED_HOST);
        let dns = net.dnsmasq(&[
            ("allowed.test", ALLOWED_HOST),
            ("blocked.test", BLOCKED_HOST),
        ]);
        Self {
            allowed: Acceptor::new(TcpListener::bind((ALLOWED_HOST, PORT)).unwrap()),
            blocked: Acceptor::new(TcpListener::bind((BLOCKED_HOST, PORT)).unwrap()),
            _dns: dns,
            net,
        }
    }
}

/// A bridged dockerd on `hosts`' network with bb:latest imported, in a cgroup of the test's;
/// refused where another engine's `docker` parent cgroup exists. Fields go in this order:
/// the containers' parent (its processes killed), the engine, its cgroup, the v1 parents.
struct DockerBed {
    _parent: TestCgroup,
    docker: TestDocker,
    _engine: TestCgroup,
    _v1: V1Parents,
}

impl DockerBed {
    fn new(hosts: &Hosts) -> Self {
        let (parent, v1) = fresh_parent("docker");
        let engine = TestCgroup::new();
        let docker = TestDocker::start_bridged(&engine, &hosts.net);
        let parent = TestCgroup::adopt(parent);
        import_busybox(&docker);
        Self {
            _parent: parent,
            docker,
            _engine: engine,
            _v1: v1,
        }
    }
}

/// `scope.containers` with allowed.test allowed and the engines' resolver trusted; `dns_extra`
/// adds `[dns]` lines.
fn containers_policy(dns_extra: &str) -> String {
    format!(
        "[scope]\ncontainers = true\n\n[registry_access]\nallow = [\"allowed.test:{PORT}\"]\n\
         allow_loopback = true\n\n[dns]\nresolvers = [\"{}\"]\n{dns_extra}",
        EngineNet::HOST_SIDE
    )
}

/// Under `scope.containers`, a container on the default bridge and one on a user-defined
/// network (Docker's embedded DNS, 127.0.0.11) resolve and reach the host allowed by name, as
/// they would unenforced; the blocked name resolves but its address is refused at once with
/// EPERM, as is the blocked host's raw address; nothing reaches the blocked host; the audit
/// log names the container; `ram status` lists the trusted namespaces with their resolvers.
#[test]
fn container_networks_resolve_allowed_names_only() {
    let hosts = Hosts::new();
    let (net, allowed, blocked) = (&hosts.net, &hosts.allowed, &hosts.blocked);
    // A resolver the host does not use, which lies: allowed.test is the blocked host.
    let _rogue = net.dnsmasq_on(BLOCKED_HOST, &[("allowed.test", BLOCKED_HOST)]);
    // A resolver only containers use (a cluster's DNS, say), named in dns.container_resolvers.
    net.add_host_address(CLUSTER_DNS);
    let _cluster_dns = net.dnsmasq_on(CLUSTER_DNS, &[("allowed.test", ALLOWED_HOST)]);
    let bystander = TestCgroup::new();
    let bed = DockerBed::new(&hosts);
    let docker = &bed.docker;
    let (ok, _, err, _) = docker.run(&["network", "create", "--subnet=10.89.0.0/24", "ramnet"]);
    assert!(ok, "docker network create: {err}");

    let policy = containers_policy(&format!("container_resolvers = [\"{CLUSTER_DNS}\"]\n"));
    let mut daemon = Daemon::start(&policy, &[bystander.path()]).expect("daemon starts");
    let script = lookup_and_connect_script();
    for network in ["bridge", "ramnet"] {
        let name = format!("ram-{network}");
        let (ok, out, err, _) = docker.run(&[
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            network,
            "bb:latest",
            "sh",
            "-c",
            &script,
        ]);
        let all = format!("{out}{err}\n{}", docker.log());
        assert!(ok, "{network}: {all}");
        assert!(
            out.contains(&format!("A-ANSWER={ALLOWED_HOST}")),
            "{network}: {all}"
        );
        assert!(out.contains("A-CONNECTED"), "{network}: {all}");
        // The query for a name no rule allows never leaves (dns.queries = "allowed").
        assert!(out.contains("B-ANSWER=\n"), "{network}: {all}");
        assert!(out.contains("B-REFUSED"), "{network}: {all}");
        assert!(out.contains("RAW-REFUSED"), "{network}: {all}");
        assert!(
            err.matches("Operation not permitted").count() >= 2,
            "{network}: the blocked connects did not fail with EPERM: {all}"
        );
    }
    thread::sleep(Duration::from_millis(300));
    assert!(
        allowed.accepted() >= 2,
        "the allowed host saw {}",
        allowed.accepted()
    );
    assert_eq!(blocked.accepted(), 0, "a blocked connection arrived");

    // Docker's embedded DNS listens on 127.0.0.11 on ports of its own (port 53 reaches them
    // through a DNAT rule): reached there directly, it would forward any query unjudged. Its
    // TCP port, read from the container's socket table, is refused.
    let embedded = "P=$(awk 'NR>1 && $2 ~ /^0B00007F:/ && $4 == \"0A\" {split($2,a,\":\"); print a[2]; exit}' \
                    /proc/net/tcp); echo EMBED-PORT=$P; \
                    if timeout 10 nc -w 5 127.0.0.11 $((0x$P)) </dev/null; then echo EMBED-CONNECTED; \
                    else echo EMBED-REFUSED; fi";
    let (_, out, err, _) = docker.run(&[
        "run",
        "--rm",
        "--network",
        "ramnet",
        "bb:latest",
        "sh",
        "-c",
        embedded,
    ]);
    assert!(
        !out.contains("EMBED-PORT=\n"),
        "no embedded DNS port found: {out}{err}"
    );
    assert!(out.contains("EMBED-REFUSED"), "{out}{err}");
    assert!(err.contains("Operation not permitted"), "{out}{err}");

    // A container that names another resolver in its resolv.conf (its root may rewrite it
    // before the daemon reads it) does not get it trusted: the lie teaches nothing, and the
    // blocked host stays refused.
    let rogue = format!(
        "echo nameserver {BLOCKED_HOST} > /etc/resolv.conf; \
         nslookup allowed.test {BLOCKED_HOST}; \
         if timeout 10 nc -w 5 {BLOCKED_HOST} {PORT} </dev/null; then echo ROGUE-CONNECTED; \
         else echo ROGUE-REFUSED; fi"
    );
    let (_, out, err, _) = docker.run(&["run", "--rm", "bb:latest", "sh", "-c", &rogue]);
    assert!(out.contains("ROGUE-REFUSED"), "{out}{err}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        blocked.accepted(),
        0,
        "the rogue resolver's answer opened the way"
    );

    // A container whose nameserver is in dns.container_resolvers resolves through it.
    let cluster = format!(
        "A=$(nslookup allowed.test | awk '/^Name:/ {{n=1}} n && /^Address/ {{print $2; exit}}'); \
         if timeout 10 nc -w 5 $A {PORT} </dev/null; then echo CLUSTER-CONNECTED; fi"
    );
    let cluster_dns = CLUSTER_DNS.to_string();
    let (_, out, err, _) = docker.run(&[
        "run",
        "--rm",
        "--dns",
        &cluster_dns,
        "bb:latest",
        "sh",
        "-c",
        &cluster,
    ]);
    assert!(out.contains("CLUSTER-CONNECTED"), "{out}{err}");

    // A container whose only nameserver is not one of the host's is not trusted at all: its
    // lookups are refused, it is counted, and one log line names it.
    let (_, out, err, _) = docker.run(&[
        "run",
        "--rm",
        "--name",
        "ram-otherdns",
        "--dns",
        "198.51.100.99",
        "bb:latest",
        "sh",
        "-c",
        "sleep 1; nslookup allowed.test || echo LOOKUP-FAILED",
    ]);
    assert!(out.contains("LOOKUP-FAILED"), "{out}{err}");
    assert!(daemon.status()["container_networks_unreadable"].as_u64() >= Some(1));
    daemon
        .wait_for_line("ram-otherdns", Duration::from_secs(5))
        .expect("a log line names the container");

    // A container that may administer its network (CAP_NET_ADMIN) could send 127.0.0.11:53 to
    // a server of its own: its DNS is not trusted.
    let (_, out, err, _) = docker.run(&[
        "run",
        "--rm",
        "--name",
        "ram-netadmin",
        "--cap-add",
        "NET_ADMIN",
        "--network",
        "ramnet",
        "bb:latest",
        "sh",
        "-c",
        "sleep 1; nslookup allowed.test || echo LOOKUP-FAILED",
    ]);
    assert!(out.contains("LOOKUP-FAILED"), "{out}{err}");
    daemon
        .wait_for_line("ram-netadmin", Duration::from_secs(5))
        .expect("a log line names the container");

    // A running container is listed with its namespace's resolvers (Docker's embedded DNS and
    // the policy's resolver it forwards to), and no more once it is gone.
    let (ok, out, err, _) = docker.run(&[
        "run",
        "-d",
        "--name",
        "ram-listed",
        "--network",
        "ramnet",
        "bb:latest",
        "sleep",
        "60",
    ]);
    assert!(ok, "{err}");
    let id = out.trim().to_owned();
    let listed = |daemon: &Daemon| {
        daemon.status()["container_networks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["container"] == id.as_str())
            .cloned()
    };
    assert!(
        eventually(Duration::from_secs(5), || listed(&daemon).is_some()),
        "{:?}",
        daemon.status()
    );
    let network = listed(&daemon).unwrap();
    assert_eq!(network["name"], "ram-listed", "{network}");
    let resolvers = network["resolvers"].as_array().unwrap();
    assert!(resolvers.contains(&Value::from("127.0.0.11")), "{network}");
    assert!(
        resolvers.contains(&Value::from(EngineNet::HOST_SIDE.to_string())),
        "{network}"
    );
    let text = daemon.ram(&["status"]).unwrap();
    assert!(text.contains(&format!("container {}", &id[..12])), "{text}");
    let (ok, _, err, _) = docker.run(&["rm", "-f", "ram-listed"]);
    assert!(ok, "{err}");
    assert!(
        eventually(Duration::from_secs(5), || listed(&daemon).is_none()),
        "{:?}",
        daemon.status()
    );

    // A namespace a container's process makes for itself is not its runtime's: the policy's
    // resolver is refused there (untrusted_netns), and so nothing can be learned through it.
    let (ok, out, err, _) = docker.run(&[
        "run",
        "--rm",
        "--cap-add=SYS_ADMIN",
        "--name",
        "ram-unshare",
        "bb:latest",
        "unshare",
        "-n",
        "nslookup",
        "allowed.test",
        &EngineNet::HOST_SIDE.to_string(),
    ]);
    assert!(
        !ok || !out.contains(&ALLOWED_HOST.to_string()),
        "{out}{err}"
    );
    assert!(
        eventually(Duration::from_secs(5), || daemon
            .audit_records()
            .iter()
            .any(|r| {
                r["verdict"] == "deny"
                    && r["reason"] == "untrusted_netns"
                    && r["dst_port"] == 53
                    && r["container_id"].as_str().is_some_and(|c| c.len() == 64)
            })),
        "no untrusted_netns denial: {out}{err} {:?}",
        daemon.audit_records()
    );

    // Each denial names the container's cgroup and id.
    let records = daemon.audit_records();
    let denials: Vec<&Value> = records
        .iter()
        .filter(|r| r["verdict"] == "deny" && r["dst_addr"] == BLOCKED_HOST.to_string().as_str())
        .collect();
    assert!(denials.len() >= 4, "{records:?}");
    for denial in &denials {
        let id = denial["container_id"].as_str().unwrap_or_default();
        assert_eq!(id.len(), 64, "{denial}");
        assert!(
            denial["cgroup"].as_str().is_some_and(|c| c.ends_with(id)),
            "{denial}"
        );
        assert_eq!(denial["container_image"], "bb:latest", "{denial}");
    }
    // By name too, as dockerd knows them, and so are the addresses they learned.
    for network in ["bridge", "ramnet"] {
        let name = format!("ram-{network}");
        assert!(
            denials.iter().any(|d| d["container_name"] == name.as_str()),
            "{name}: {denials:?}"
        );
        assert!(
            records.iter().any(|r| r["verdict"] == "learn"
                && r["container_name"] == name.as_str()
                && r["container_image"] == "bb:latest"
                && r["container_id"].as_str().is_some_and(|c| c.len() == 64)
                && r["hostname"] == "allowed.test"),
            "{name}: {records:?}"
        );
    }
    drop(daemon);
    drop(bed);
}

/// RUN steps of both builders under `scope.containers`: the classic builder's steps are
/// containers, BuildKit's run below its enforced parent; each resolves and reaches the host
/// allowed by name through its own network's resolver, and is refused the blocked host (by the
/// name's address and by raw address) with EPERM, nothing arriving there.
#[test]
fn build_steps_resolve_allowed_names_only() {
    let hosts = Hosts::new();
    let (allowed, blocked) = (&hosts.allowed, &hosts.blocked);
    let bystander = TestCgroup::new();
    let bed = DockerBed::new(&hosts);
    let docker = &bed.docker;
    let context = docker.dir().join("context");
    fs::create_dir_all(&context).unwrap();
    // The step sleeps at the end: its cgroup outlives its connections, for the audit's names.
    fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM bb:latest\nRUN {} sleep 1\n",
            lookup_and_connect_script()
        ),
    )
    .unwrap();
    // A first BuildKit build makes BuildKit's parent cgroup, which the daemon then enforces.
    let (ok, out) = build_with(docker, &context, true);
    assert!(ok && out.contains("A-CONNECTED"), "{out}");

    let policy = containers_policy("");
    let daemon = Daemon::start(&policy, &[bystander.path()]).expect("daemon starts");
    let before = allowed.accepted();
    let blocked_before = blocked.accepted();
    for buildkit in [false, true] {
        let (ok, out) = build_with(docker, &context, buildkit);
        let what = if buildkit {
            "BuildKit"
        } else {
            "classic builder"
        };
        assert!(ok, "{what}: {out}");
        assert!(
            out.contains(&format!("A-ANSWER={ALLOWED_HOST}")),
            "{what}: {out}"
        );
        assert!(out.contains("A-CONNECTED"), "{what}: {out}");
        assert!(out.contains("B-REFUSED"), "{what}: {out}");
        assert!(out.contains("RAW-REFUSED"), "{what}: {out}");
        assert!(
            out.matches("Operation not permitted").count() >= 2,
            "{what}: the blocked connects did not fail with EPERM: {out}"
        );
    }
    thread::sleep(Duration::from_millis(300));
    assert!(allowed.accepted() >= before + 2, "{}", allowed.accepted());
    assert_eq!(
        blocked.accepted(),
        blocked_before,
        "a blocked connection arrived"
    );
    drop(daemon);
    drop(bed);
}

/// containerd without dockerd: `ctr run` makes `/default/<name>`, a cgroup no name pattern
/// recognises; `scope.containers` finds it by its shim (the container's first process is the
/// shim's child), from its start. Unenforced, the container reaches the test's listener; under
/// the daemon, it is refused with EPERM, nothing arrives, and the audit names the container.
#[test]
fn containerd_containers_are_enforced() {
    let (parent, _v1) = fresh_parent("default");
    let net = EngineNet::new();
    let far_side = Acceptor::new(TcpListener::bind((EngineNet::HOST_SIDE, PORT)).unwrap());
    let engine = TestCgroup::new();
    let bystander = TestCgroup::new();
    let containerd = TestContainerd::start(&engine, &net);
    let _parent = TestCgroup::adopt(parent.clone());
    let rootfs = busybox_rootfs(containerd.dir());
    let script = format!(
        "if timeout 10 nc -w 5 {} {PORT} </dev/null; then echo CTR-CONNECTED; \
         else echo CTR-REFUSED; fi",
        EngineNet::HOST_SIDE
    );
    // (No pause after the connection: the daemon names a container's cgroup even once it is
    // gone, having enforced it.)
    let run = |name: &str| {
        let output = containerd
            .ctr()
            .args([
                "run",
                "--rm",
                "--net-host",
                "--env",
                "PATH=/bin",
                "--rootfs",
            ])
            .arg(&rootfs)
            .args([name, "sh", "-c", &script])
            .output()
            .expect("running ctr");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };

    let out = run("ramctr-plain");
    assert!(out.contains("CTR-CONNECTED"), "{out}\n{}", containerd.log());
    assert!(
        eventually(Duration::from_secs(5), || far_side.accepted() == 1),
        "the unenforced container's connection never arrived"
    );

    let policy = "[scope]\ncontainers = true\n\n[registry_access]\nallow_loopback = true\n\n\
                  [dns]\nresolvers = []\n";
    let daemon = Daemon::start(policy, &[bystander.path()]).expect("daemon starts");
    let out = run("ramctr-held");
    assert!(out.contains("CTR-REFUSED"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        far_side.accepted(),
        1,
        "the enforced container's connection arrived"
    );
    let records = daemon.audit_records();
    assert!(
        records.iter().any(|r| r["verdict"] == "deny"
            && r["dst_port"] == PORT
            && r["cgroup"] == "/default/ramctr-held"
            && r["container_id"] == "ramctr-held"),
        "{records:?}"
    );
    drop(daemon);
    drop(containerd);
}

/// A buildx `docker-container` builder is a container running buildkitd, which runs each RUN
/// step in a cgroup below its own and, in BuildKit's default network mode, in the builder's
/// network namespace. BuildKit is not packaged in Debian (its image cannot be built here), so
/// a stand-in takes that shape: a cgroup made below an enforced container's, and a process in
/// it that joins the container's namespaces. Enforced from its first instruction (the
/// container's programs are inherited), its DNS trusted as the builder's; the blocked host is
/// refused with EPERM, nothing arrives, and the audit names the builder container.
#[test]
fn builder_container_steps_are_enforced() {
    let hosts = Hosts::new();
    let (allowed, blocked) = (&hosts.allowed, &hosts.blocked);
    let bystander = TestCgroup::new();
    let bed = DockerBed::new(&hosts);
    let docker = &bed.docker;
    let policy = containers_policy("");
    let daemon = Daemon::start(&policy, &[bystander.path()]).expect("daemon starts");
    let (ok, out, err, _) = docker.run(&[
        "run",
        "-d",
        "--name",
        "ram-builder",
        "bb:latest",
        "sleep",
        "60",
    ]);
    assert!(ok, "{err}");
    let id = out.trim().to_owned();
    let (ok, pid, err, _) = docker.run(&["inspect", "-f", "{{.State.Pid}}", &id]);
    assert!(ok, "{err}");
    let pid = pid.trim().to_owned();
    assert!(
        eventually(Duration::from_secs(5), || {
            daemon.status()["container_networks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["container"] == id.as_str())
        }),
        "the builder's network is not trusted: {:?}",
        daemon.status()
    );

    let step = TestCgroup::new_in(&cgroup2_mount().join("docker").join(&id));
    let output = step
        .command("nsenter")
        .args(["-t", &pid, "-n", "-m", "-r", "-w", "/bin/sh", "-c"])
        .arg(lookup_and_connect_script())
        .output()
        .expect("running nsenter");
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(out.contains("A-CONNECTED"), "{out}{err}");
    assert!(
        out.contains("B-REFUSED") && out.contains("RAW-REFUSED"),
        "{out}{err}"
    );
    assert!(
        err.matches("Operation not permitted").count() >= 2,
        "{out}{err}"
    );
    thread::sleep(Duration::from_millis(300));
    assert!(allowed.accepted() >= 1);
    assert_eq!(blocked.accepted(), 0, "a blocked connection arrived");
    let step_cgroup = format!(
        "/{}",
        step.path().strip_prefix(cgroup2_mount()).unwrap().display()
    );
    let records = daemon.audit_records();
    assert!(
        records.iter().any(|r| r["verdict"] == "deny"
            && r["cgroup"] == step_cgroup.as_str()
            && r["container_id"] == id.as_str()
            && r["container_name"] == "ram-builder"),
        "{step_cgroup}: {records:?}"
    );
    drop(step);
    drop(daemon);
    drop(bed);
}

/// Rootful Podman with its default network (a CNI bridge, in the engine's namespace): under
/// `scope.containers` its container (`/libpod_parent/libpod-<id>`) resolves and reaches the
/// host allowed by name through the nameserver Podman gave it, and is refused the blocked host
/// with EPERM; nothing arrives there, and the audit names the container.
#[test]
fn podman_containers_resolve_allowed_names_only() {
    let (parent, _v1) = fresh_parent("libpod_parent");
    let hosts = Hosts::new();
    let (net, allowed, blocked) = (&hosts.net, &hosts.allowed, &hosts.blocked);
    let engine = TestCgroup::new();
    let bystander = TestCgroup::new();
    let podman = TestPodman::new(&engine, net, EngineNet::HOST_SIDE.into());
    let rootfs = busybox_rootfs(podman.dir());
    podman.import_rootfs(&rootfs, "localhost/bb:latest");
    let policy = containers_policy("");
    let daemon = Daemon::start(&policy, &[bystander.path()]).expect("daemon starts");
    let output = podman
        .podman()
        .args([
            "run",
            "--rm",
            "--name",
            "ram-podman",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--env",
            "PATH=/bin",
            "localhost/bb:latest",
            "sh",
            "-c",
        ])
        .arg(lookup_and_connect_script())
        .output()
        .expect("running podman");
    let _parent = TestCgroup::adopt(parent.clone());
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{out}{err}");
    assert!(
        out.contains(&format!("A-ANSWER={ALLOWED_HOST}")),
        "{out}{err}"
    );
    assert!(out.contains("A-CONNECTED"), "{out}{err}");
    assert!(
        out.contains("B-REFUSED") && out.contains("RAW-REFUSED"),
        "{out}{err}"
    );
    assert!(
        err.matches("Operation not permitted").count() >= 2,
        "{out}{err}"
    );
    thread::sleep(Duration::from_millis(300));
    assert!(allowed.accepted() >= 1);
    assert_eq!(blocked.accepted(), 0, "a blocked connection arrived");
    let records = daemon.audit_records();
    assert!(
        records.iter().any(|r| r["verdict"] == "deny"
            && r["dst_addr"] == BLOCKED_HOST.to_string().as_str()
            && r["cgroup"]
                .as_str()
                .is_some_and(|c| c.starts_with("/libpod_parent/libpod-"))
            && r["container_id"].as_str().is_some_and(|c| c.len() == 64)
            && r["container_name"] == "ram-podman"),
        "{records:?}"
    );
    drop(daemon);
}
