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

use ram_tests::{Daemon, EngineNet, TestCgroup, TestDocker, cgroup2_mount};
use serde_json::Value;

/// Where the test's namespace listens for what build steps send.
const PORT: u16 = 18080;

/// `bb:latest`: busybox-static as a one-binary image (no registry needed).
fn import_busybox(docker: &TestDocker) {
    let rootfs = docker.dir().join("busybox-rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
    for applet in ["sh", "nc", "echo", "cat", "timeout", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    docker.import_rootfs(&rootfs, "bb:latest");
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
    let output = docker
        .docker()
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "--no-cache", "--progress=plain", "-t", "ram-step"])
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
    let docker_parent = cgroup2_mount().join("docker");
    assert!(
        !docker_parent.exists(),
        "{} exists: another Docker Engine's containers, or a test's left over; remove it first",
        docker_parent.display()
    );
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
