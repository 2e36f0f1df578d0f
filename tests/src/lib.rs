//! Test harness for ram's integration tests: real kernel, real clients, real servers.
//!
//! Every resource a test makes is an RAII guard that undoes it on drop, also when the test
//! panics: cgroups ([`TestCgroup`]), network namespaces with veth links ([`TestNet`]),
//! background processes ([`Background`], ended by their own PID), and the daemon ([`Daemon`]).
//! Tests run one at a time (`--test-threads=1`, set by `cargo xtask test`).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Name prefix of everything the tests create; followed by the test process's PID.
const PREFIX: &str = "ramt";

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process: `ramt<pid>x<n>`, at most 15 bytes for interface names.
fn unique(tag: char) -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}{tag}{n}", std::process::id() % 1_000_000)
}

/// The `ram` binary under test (`cargo xtask test` builds it and sets RAM_BIN).
pub fn ram_bin() -> PathBuf {
    match std::env::var_os("RAM_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let guess = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ram");
            assert!(
                guess.exists(),
                "RAM_BIN is not set and {} does not exist: run the tests with `cargo xtask test`",
                guess.display()
            );
            guess
        }
    }
}

/// Path of a file in tests/clients.
pub fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// The cgroup2 mount point, from /proc/mounts.
pub fn cgroup2_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("no cgroup2 filesystem mounted: ram's tests need cgroup v2")
}

/// Runs a command to completion; fails with its output if it does not succeed.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program} (is it installed? `cargo xtask setup`)"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The PID embedded in a name this harness made (`ramt<pid><tag><n>`), if any.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Removes namespaces, links and cgroups left by earlier test runs whose process is gone
/// (a test process killed by SIGKILL cannot clean up). Only names this harness makes.
pub fn remove_stale_leftovers() {
    let own = std::process::id() % 1_000_000;
    let stale = |name: &str| owner_pid(name).is_some_and(|pid| pid != own && !pid_alive(pid));
    if let Ok(list) = sh("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if stale(name) {
                let _ = sh("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = sh("ip", &["-o", "link", "show"]) {
        for line in list.lines() {
            let Some(name) = line
                .split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or(""))
            else {
                continue;
            };
            if stale(name) {
                let _ = sh("ip", &["link", "del", name]);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(cgroup2_mount()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                let _ = TestCgroup::remove_tree(&entry.path());
            }
        }
    }
    // Pinned state of killed test daemons (removing the pins detaches their links).
    for root in [Path::new(BPFFS), Path::new(TEMP_ROOT)] {
        if let Ok(entries) = fs::read_dir(root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if stale(&name) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

/// Where test daemons pin their state (each in its own directory).
const BPFFS: &str = "/sys/fs/bpf";
/// Parent of the tests' temporary directories: root-owned and not writable by others, because
/// the daemon refuses policy files reached through a directory others can write (such as /tmp).
const TEMP_ROOT: &str = "/run/ram-tests";

/// A cgroup v2 directory made for one test, under the cgroup2 mount. On drop, every process
/// still in it (or in a child) is killed by PID and the directories are removed.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Self {
        Self::new_in(&cgroup2_mount())
    }

    /// A child of `parent` (for tests of inheritance).
    pub fn new_in(parent: &Path) -> Self {
        let path = parent.join(unique('c'));
        fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("creating test cgroup {}: {err}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes charge of a cgroup directory the test made itself under another test cgroup
    /// (one with a name of its choosing); removed on drop like any other.
    pub fn adopt(path: PathBuf) -> Self {
        Self { path }
    }

    /// A command that starts inside this cgroup (it moves itself in before exec).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs = self.path.join("cgroup.procs");
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe work between fork and exec: one write(2).
        unsafe {
            cmd.pre_exec(move || fs::write(&procs, b"0"));
        }
        cmd
    }

    fn pids(path: &Path) -> Vec<u32> {
        fs::read_to_string(path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills the processes of `path` and its children (by PID), then removes the directories,
    /// deepest first. Bounded: 50 tries of 20 ms for processes to exit.
    fn remove_tree(path: &Path) -> std::io::Result<()> {
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = Self::remove_tree(&entry.path());
                }
            }
        }
        for _ in 0..50 {
            let pids = Self::pids(path);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: plain kill(2) of a PID read from this cgroup.
                unsafe { libc::kill(pid.cast_signed(), libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(20));
        }
        fs::remove_dir(path)
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(err) = Self::remove_tree(&self.path) {
            eprintln!(
                "warning: removing test cgroup {}: {err}",
                self.path.display()
            );
        }
    }
}

/// A network namespace with a veth link to the test's own namespace: a test host with its own
/// addresses. All addresses are from documentation ranges (RFC 5737 / RFC 3849) and exist only
/// on this veth pair.
///
/// ```text
///   test namespace  [veth ramt..h] 198.51.100.1/24, 2001:db8:100::1/64
///                         |
///   peer netns      [veth ramt..p] 198.51.100.2 .3 .4 /24, 2001:db8:100::2 ::3 ::4 /64
/// ```
pub struct TestNet {
    pub netns: String,
    host_link: String,
}

impl TestNet {
    pub const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    /// Peer addresses: tests call them A, B and C.
    pub const PEER_V4: [Ipv4Addr; 3] = [
        Ipv4Addr::new(198, 51, 100, 2),
        Ipv4Addr::new(198, 51, 100, 3),
        Ipv4Addr::new(198, 51, 100, 4),
    ];
    pub const PEER_V6: [Ipv6Addr; 3] = [
        Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2),
        Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 3),
        Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 4),
    ];

    pub fn new() -> Self {
        remove_stale_leftovers();
        let netns = unique('n');
        let host_link = format!("{netns}h");
        let peer_link = format!("{netns}p");
        // Built step by step; the guard exists from the first step so a failure cleans up.
        let net = Self {
            netns: netns.clone(),
            host_link: host_link.clone(),
        };
        let steps: Vec<Vec<String>> = vec![
            vec!["netns", "add", &netns],
            vec![
                "link", "add", &host_link, "type", "veth", "peer", "name", &peer_link,
            ],
            vec!["link", "set", &peer_link, "netns", &netns],
            vec!["addr", "add", "198.51.100.1/24", "dev", &host_link],
            vec![
                "-6",
                "addr",
                "add",
                "2001:db8:100::1/64",
                "dev",
                &host_link,
                "nodad",
            ],
            vec!["link", "set", &host_link, "up"],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(str::to_owned).collect())
        .collect();
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            sh("ip", &args).unwrap_or_else(|err| panic!("setting up test network: {err:#}"));
        }
        let mut inside: Vec<Vec<String>> =
            vec![vec!["link".into(), "set".into(), "lo".into(), "up".into()]];
        for v4 in Self::PEER_V4 {
            inside.push(vec![
                "addr".into(),
                "add".into(),
                format!("{v4}/24"),
                "dev".into(),
                peer_link.clone(),
            ]);
        }
        for v6 in Self::PEER_V6 {
            inside.push(vec![
                "-6".into(),
                "addr".into(),
                "add".into(),
                format!("{v6}/64"),
                "dev".into(),
                peer_link.clone(),
                "nodad".into(),
            ]);
        }
        inside.push(vec![
            "link".into(),
            "set".into(),
            peer_link.clone(),
            "up".into(),
        ]);
        for step in inside {
            let mut args = vec!["netns", "exec", &netns, "ip"];
            args.extend(step.iter().map(String::as_str));
            sh("ip", &args).unwrap_or_else(|err| panic!("setting up test host: {err:#}"));
        }
        net
    }

    /// A command that runs inside the peer namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// Starts `python3 -m http.server` on `port` in the peer namespace (all its addresses).
    pub fn http_server(&self, port: u16) -> Background {
        let mut cmd = self.command("python3");
        cmd.args(["-m", "http.server", "--bind", "::", &port.to_string()]);
        let server = Background::spawn("http server", cmd);
        wait_for_tcp(SocketAddr::new(IpAddr::V4(Self::PEER_V4[0]), port));
        server
    }

    /// Starts a UDP echo server on `port` in the peer namespace.
    pub fn udp_echo_server(&self, port: u16) -> Background {
        let mut cmd = self.command("python3");
        cmd.arg(client_script("udp_echo.py")).arg(port.to_string());
        let server = Background::spawn("udp echo server", cmd);
        wait_for_udp_echo(SocketAddr::new(IpAddr::V4(Self::PEER_V4[0]), port));
        server
    }

    /// Starts dnsmasq on port 53 of peer address A (IPv4 and IPv6), answering `records`
    /// (name, address) authoritatively and nothing else (no upstream, no /etc/hosts); `extra`
    /// adds dnsmasq options (`--cname=...`, `--synth-domain=...`, `--local-ttl=...`).
    pub fn dnsmasq(&self, records: &[(&str, IpAddr)], extra: &[&str]) -> Background {
        self.dnsmasq_logging(records, extra, "-")
    }

    /// [`Self::dnsmasq`], logging to `facility` (a file: with `--log-queries` in `extra`, the
    /// proof of which queries reached the resolver).
    pub fn dnsmasq_logging(
        &self,
        records: &[(&str, IpAddr)],
        extra: &[&str],
        facility: &str,
    ) -> Background {
        let mut cmd = self.command("dnsmasq");
        dnsmasq_args(
            &mut cmd,
            &[Self::PEER_V4[0].into(), Self::PEER_V6[0].into()],
            records,
        );
        cmd.arg(format!("--log-facility={facility}"));
        cmd.args(extra);
        let server = Background::spawn("dnsmasq", cmd);
        wait_for_tcp(SocketAddr::new(IpAddr::V4(Self::PEER_V4[0]), 53));
        server
    }

    /// Starts tests/clients/dns_responder.py on port 53 of peer address A (IPv4 and IPv6) with
    /// `names` (its JSON "names" object): a DNS server that answers as scripted.
    pub fn dns_responder(&self, dir: &TempDir, names: serde_json::Value) -> Background {
        let config = serde_json::json!({
            "listen": [Self::PEER_V4[0].to_string(), Self::PEER_V6[0].to_string()],
            "port": 53,
            "names": names,
        });
        let path = dir.write("responder.json", &config.to_string());
        let mut cmd = self.command("python3");
        cmd.arg(client_script("dns_responder.py")).arg(path);
        let server = Background::spawn("dns responder", cmd);
        wait_for_tcp(SocketAddr::new(IpAddr::V4(Self::PEER_V4[0]), 53));
        server
    }

    /// Makes the peer answer on every address of `prefix` (an "AnyIP" local route) and routes
    /// the prefix to it from the test namespace: thousands of test-host addresses at once.
    pub fn add_peer_prefix(&self, prefix: &str) {
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns,
                "ip",
                "route",
                "add",
                "local",
                prefix,
                "dev",
                "lo",
            ],
        )
        .expect("adding a local route in the peer");
        sh(
            "ip",
            &[
                "route",
                "add",
                prefix,
                "via",
                &Self::PEER_V4[0].to_string(),
                "dev",
                &self.host_link,
            ],
        )
        .expect("routing the prefix to the peer");
    }
}

/// dnsmasq in the foreground on port 53 of `listen`, answering `records` (name, address)
/// authoritatively and nothing else (no upstream, no /etc/hosts).
fn dnsmasq_args(cmd: &mut Command, listen: &[IpAddr], records: &[(&str, IpAddr)]) {
    cmd.args([
        "--keep-in-foreground",
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--port=53",
        "--user=root",
        "--pid-file=",
    ]);
    for addr in listen {
        cmd.arg(format!("--listen-address={addr}"));
    }
    for (name, addr) in records {
        cmd.arg(format!("--host-record={name},{addr}"));
    }
}

impl Default for TestNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting the namespace destroys the peer end, which destroys the pair.
        let _ = sh("ip", &["link", "del", &self.host_link]);
        if let Err(err) = sh("ip", &["netns", "del", &self.netns]) {
            eprintln!("warning: removing netns {}: {err:#}", self.netns);
        }
    }
}

/// Polls until a TCP connect to `addr` (from the test process, outside any enforced cgroup)
/// succeeds; at most 100 tries over ~10 s.
pub fn wait_for_tcp(addr: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {addr} after 10 s");
}

fn wait_for_udp_echo(addr: SocketAddr) {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("binding a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 16];
    for _ in 0..100 {
        let _ = socket.send_to(b"ping", addr);
        if socket.recv_from(&mut buf).is_ok() {
            return;
        }
    }
    panic!("no UDP echo from {addr} after 10 s");
}

/// A background process, killed (by its PID) and reaped on drop.
pub struct Background {
    name: &'static str,
    child: Child,
}

impl Background {
    pub fn spawn(name: &'static str, cmd: Command) -> Self {
        Self::spawn_logging(name, cmd, None)
    }

    /// As [`Self::spawn`], with stdout and stderr appended to `log` (for tests to show).
    pub fn spawn_logging(name: &'static str, mut cmd: Command, log: Option<&Path>) -> Self {
        let output = || match log {
            Some(path) => fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
            None => Stdio::null(),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        Self { name, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Err(err) = self.child.kill() {
            eprintln!(
                "warning: killing {} ({}): {err}",
                self.name,
                self.child.id()
            );
        }
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new directory under [`TEMP_ROOT`], both mode 0755.
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let path = Path::new(TEMP_ROOT).join(unique('t'));
        fs::create_dir_all(&path).expect("creating a temporary directory");
        for dir in [Path::new(TEMP_ROOT), path.as_path()] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .expect("setting a temporary directory's mode");
        }
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).expect("writing a temporary file");
        path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What a test daemon keeps across restarts: its directory (policy, audit log, run dir) and
/// its pinned state under bpffs. Dropping it removes both (removing the pins detaches the
/// links), so a test never leaves enforcement behind.
pub struct DaemonState {
    dir: TempDir,
    pin_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl DaemonState {
    /// `ram daemon ARGS --audit-log <dir>/audit.jsonl` with its own pin and run directories.
    pub fn new(dir: TempDir, args: Vec<String>) -> Self {
        Self {
            pin_dir: Path::new(BPFFS).join(unique('p')),
            dir,
            args,
            env: Vec::new(),
        }
    }

    /// Adds `ram daemon` arguments.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(ToString::to_string));
        self
    }

    /// Sets an environment variable for the daemon (e.g. NOTIFY_SOCKET).
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// The daemon's Docker authorization plugin socket: always the test's own, never Docker's
    /// `/run/docker/plugins/ram.sock` (a daemon left there would answer for later tests).
    pub fn authz_socket(&self) -> PathBuf {
        self.dir.path().join("authz.sock")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// Replaces the policy file the way config tools do: write a temporary file, then rename.
    pub fn write_policy(&self, text: &str) {
        let temp = self.dir.path().join(".policy.toml.new");
        fs::write(&temp, text).expect("writing the new policy");
        fs::rename(&temp, self.policy_path()).expect("renaming the new policy into place");
    }

    /// A `ram` command aimed at this daemon (its run and pin directories).
    pub fn ram(&self) -> Command {
        let mut cmd = Command::new(ram_bin());
        cmd.env("RAM_RUN_DIR", self.run_dir())
            .env("RAM_PIN_DIR", &self.pin_dir)
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Starts the daemon; returns once it logs that it is enforcing.
    pub fn start(self) -> Result<Daemon> {
        let mut child = self
            .ram()
            .arg("daemon")
            .args(&self.args)
            .arg("--audit-log")
            .arg(self.audit_log())
            .arg("--authz-socket")
            .arg(self.authz_socket())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ram daemon")?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  [ram daemon] {line}");
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Daemon {
            child: Some(child),
            log,
            lines: Vec::new(),
            audit_log: self.audit_log(),
            state: Some(self),
        };
        daemon
            .wait_for_line("enforcing on", Duration::from_secs(20))
            .map_err(|err| anyhow!("ram daemon did not start enforcing: {err:#}"))?;
        Ok(daemon)
    }
}

impl Drop for DaemonState {
    fn drop(&mut self) {
        if self.pin_dir.exists()
            && let Err(err) = fs::remove_dir_all(&self.pin_dir)
        {
            eprintln!(
                "warning: removing pinned state {}: {err}",
                self.pin_dir.display()
            );
        }
    }
}

/// A running `ram daemon`. Started with [`Daemon::start`], which returns once the daemon logs
/// that it is enforcing. Dropping it sends SIGTERM (then SIGKILL after 5 s) to its PID, then
/// removes its pinned state.
pub struct Daemon {
    child: Option<Child>,
    log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
    pub audit_log: PathBuf,
    state: Option<DaemonState>,
}

impl Daemon {
    /// `ram daemon --policy <policy_toml> --cgroup <each> --audit-log <tmp>`.
    pub fn start(policy_toml: &str, cgroups: &[&Path]) -> Result<Self> {
        Self::prepare(policy_toml, cgroups).start()
    }

    /// The state of a daemon for `policy_toml` and `cgroups`, not started yet.
    pub fn prepare(policy_toml: &str, cgroups: &[&Path]) -> DaemonState {
        let dir = TempDir::new();
        let policy = dir.write("policy.toml", policy_toml);
        let mut args: Vec<String> = vec!["--policy".into(), policy.display().to_string()];
        for cgroup in cgroups {
            args.push("--cgroup".into());
            args.push(cgroup.display().to_string());
        }
        DaemonState::new(dir, args)
    }

    /// `ram daemon ARGS --audit-log <tmp>`, any arguments.
    pub fn start_args(args: &[&str]) -> Result<Self> {
        let args: Vec<String> = args.iter().map(ToString::to_string).collect();
        DaemonState::new(TempDir::new(), args).start()
    }

    pub fn state(&self) -> &DaemonState {
        self.state.as_ref().expect("a daemon has its state")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until a log line contains `needle`; fails if the daemon exits or `timeout` passes.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_nth_line(needle, 1, timeout)
    }

    /// Waits until `n` log lines contain `needle`; returns the n-th.
    pub fn wait_for_nth_line(
        &mut self,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<String> {
        let nth = |lines: &[String]| {
            lines
                .iter()
                .filter(|l| l.contains(needle))
                .nth(n - 1)
                .cloned()
        };
        if let Some(line) = nth(&self.lines) {
            return Ok(line);
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line);
                    if let Some(line) = nth(&self.lines) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    bail!(
                        "ram daemon exited ({status:?}) before logging {needle:?}; its log:\n{}",
                        self.lines.join("\n")
                    );
                }
            }
        }
        bail!(
            "no log line with {needle:?} within {timeout:?}; log so far:\n{}",
            self.lines.join("\n")
        )
    }

    /// Sends SIGTERM and waits (≤ 10 s) for a clean exit; returns the exit status. The pinned
    /// state goes when the returned daemon state is dropped, so a caller can look at what the
    /// stopped daemon left, or start it again.
    pub fn stop_keeping_state(mut self) -> Result<(ExitStatus, DaemonState)> {
        let status = self.signal_and_wait(libc::SIGTERM)?;
        Ok((status, self.state.take().expect("a daemon has its state")))
    }

    /// Sends SIGTERM and waits; then removes the pinned state.
    pub fn stop(self) -> Result<ExitStatus> {
        Ok(self.stop_keeping_state()?.0)
    }

    /// SIGKILL: the daemon gets no chance to clean up, as in a crash or an OOM kill.
    pub fn kill9(mut self) -> Result<DaemonState> {
        self.signal_and_wait(libc::SIGKILL)?;
        Ok(self.state.take().expect("a daemon has its state"))
    }

    fn signal_and_wait(&mut self, signal: i32) -> Result<ExitStatus> {
        let mut child = self.child.take().expect("running daemon");
        // SAFETY: kill(2) of our own child's PID.
        unsafe { libc::kill(child.id().cast_signed(), signal) };
        let status = wait_bounded(&mut child, Duration::from_secs(10))?;
        // Drain the rest of the log for the caller.
        while let Ok(line) = self.log.recv_timeout(Duration::from_millis(200)) {
            self.lines.push(line);
        }
        Ok(status)
    }

    /// The JSON lines of the audit log so far.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        audit_records(&self.audit_log)
    }

    /// Runs `ram ARGS` against this daemon; fails unless it exits 0. Returns stdout.
    pub fn ram(&self, args: &[&str]) -> Result<String> {
        let output = self.state().ram().args(args).output()?;
        if !output.status.success() {
            bail!(
                "ram {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `ram status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let text = self.ram(&["status", "--json"]).expect("ram status");
        serde_json::from_str(&text).expect("ram status --json prints JSON")
    }

    /// A kernel counter from `ram status`.
    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"]
            .as_array()
            .expect("counters")
            .iter()
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair[1].as_u64())
            .unwrap_or_else(|| panic!("no counter {name}"))
    }
}

/// The complete JSON lines of an audit log file (a last line the daemon is still writing is
/// left for the next read).
pub fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "process {} did not exit within {timeout:?}; killed",
                child.id()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) of our own child's PID.
            unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
            if wait_bounded(&mut child, Duration::from_secs(5)).is_err() {
                eprintln!("warning: ram daemon {} needed SIGKILL", child.id());
            }
        }
        // Then the state drops: pins removed, links detached.
    }
}

/// What `probe.py` reported.
#[derive(Debug, Clone)]
pub struct Probe {
    pub result: String,
    pub ms: f64,
    pub detail: Option<String>,
}

impl Probe {
    pub fn ok(&self) -> bool {
        self.result == "ok"
    }
}

/// Runs `probe.py OP ADDR PORT` with `cmd` as the launcher (a cgroup's command, `ram exec`, or
/// a plain process) and parses its report.
pub fn probe_with(mut cmd: Command, op: &str, addr: &str, port: u16) -> Probe {
    let output = cmd
        .arg(client_script("probe.py"))
        .args([op, addr, &port.to_string()])
        .output()
        .expect("running probe.py");
    parse_probe(&output)
}

fn parse_probe(output: &Output) -> Probe {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "probe.py printed nothing ({}); stderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|err| panic!("probe.py printed {line:?}: {err}"));
    Probe {
        result: value["result"].as_str().unwrap_or_default().to_owned(),
        ms: value["ms"].as_f64().unwrap_or(f64::NAN),
        detail: value["detail"].as_str().map(str::to_owned),
    }
}

/// `dig @resolver name qtype +short` (a real resolver client, one try of `timeout` seconds)
/// inside `cgroup`, with `extra` options: its answer, one address per line.
pub fn dig_in(
    cgroup: &TestCgroup,
    resolver: &str,
    name: &str,
    qtype: &str,
    timeout: u32,
    extra: &[&str],
) -> String {
    let output = cgroup
        .command("dig")
        .args([
            &format!("@{resolver}"),
            name,
            qtype,
            "+short",
            "+tries=1",
            &format!("+time={timeout}"),
        ])
        .args(extra)
        .output()
        .expect("running dig");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs probe.py inside `cgroup`.
pub fn probe_in(cgroup: &TestCgroup, op: &str, addr: &str, port: u16) -> Probe {
    probe_with(cgroup.command("python3"), op, addr, port)
}

/// Runs probe.py outside any test cgroup.
pub fn probe_outside(op: &str, addr: &str, port: u16) -> Probe {
    probe_with(Command::new("python3"), op, addr, port)
}

/// Runs tests/clients/dns_query.py with `args` inside `cgroup`; returns its JSON report.
pub fn dns_query_in(cgroup: &TestCgroup, args: &[&str]) -> serde_json::Value {
    let output = cgroup
        .command("python3")
        .arg(client_script("dns_query.py"))
        .args(args)
        .output()
        .expect("running dns_query.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|err| {
        panic!(
            "dns_query.py {args:?} printed {stdout:?} ({err}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// How many programs ram attaches to each enforced cgroup: two DNS programs, four gates, the
/// socket gate, the socket-option gate and the TLS sock_ops program.
pub const PROGRAMS_PER_CGROUP: usize = 9;

/// Program names `bpftool cgroup show` lists for `cgroup` (attached directly to it).
pub fn attached_programs(cgroup: &Path) -> Vec<String> {
    let out = sh(
        "bpftool",
        &["-j", "cgroup", "show", &cgroup.display().to_string()],
    )
    .expect("bpftool cgroup show");
    let value: serde_json::Value = if out.trim().is_empty() {
        serde_json::Value::Array(vec![])
    } else {
        serde_json::from_str(&out).expect("bpftool prints JSON")
    };
    value
        .as_array()
        .map(|progs| {
            progs
                .iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The peer addresses of [`TestNet`] as text, by the names tests use for them.
pub mod peers {
    use super::TestNet;

    /// Port of the HTTP server tests start on the peer.
    pub const HTTP_PORT: u16 = 80;

    pub fn a() -> String {
        TestNet::PEER_V4[0].to_string()
    }
    pub fn b() -> String {
        TestNet::PEER_V4[1].to_string()
    }
    pub fn c() -> String {
        TestNet::PEER_V4[2].to_string()
    }
    pub fn a6() -> String {
        TestNet::PEER_V6[0].to_string()
    }
    pub fn b6() -> String {
        TestNet::PEER_V6[1].to_string()
    }
}

/// A network namespace for a Docker Engine with real container networking, linked to the
/// test's own namespace by a veth pair: the engine's side is 203.0.113.254/30 with its default
/// route through the test's side, [`EngineNet::HOST_SIDE`] (203.0.113.253/30; RFC 5737
/// documentation addresses, on this veth pair only: 192.0.2.0/24 may be the machine's own
/// network). dockerd's bridge, NAT and iptables rules stay inside it.
pub struct EngineNet {
    name: String,
    host_if: String,
}

impl EngineNet {
    pub const HOST_SIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 253);
    pub const ENGINE_SIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);

    pub fn new() -> Self {
        let id = std::process::id();
        let name = format!("ramengine{id}");
        let (host_if, engine_if) = (format!("ramh{id}"), format!("rame{id}"));
        let ip = |args: &[&str]| {
            let output = Command::new("ip").args(args).output().expect("running ip");
            assert!(
                output.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        // An address of the machine's own in the link's range would be cut off: refuse.
        let addresses = Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .expect("running ip");
        let addresses = String::from_utf8_lossy(&addresses.stdout);
        assert!(
            !addresses.contains(" 203.0.113."),
            "the machine has an address in 203.0.113.0/24; the engine link cannot use it:\n\
             {addresses}"
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let net = Self {
            name,
            host_if: host_if.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &engine_if, "netns", &net.name,
        ]);
        ip(&["addr", "add", "203.0.113.253/30", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        for args in [
            vec!["addr", "add", "203.0.113.254/30", "dev", &engine_if],
            vec!["link", "set", &engine_if, "up"],
            vec!["link", "set", "lo", "up"],
            vec!["route", "add", "default", "via", "203.0.113.253"],
        ] {
            let mut full = vec!["-n", net.name.as_str()];
            full.extend(args);
            ip(&full);
        }
        net
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Gives the test's side of the link one more address (a test host the engine's containers
    /// reach through its NAT), e.g. 203.0.113.9; it goes with the link.
    pub fn add_host_address(&self, addr: Ipv4Addr) {
        let output = Command::new("ip")
            .args(["addr", "add", &format!("{addr}/32"), "dev", &self.host_if])
            .output()
            .expect("running ip");
        assert!(
            output.status.success(),
            "ip addr add {addr}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A real dnsmasq on [`EngineNet::HOST_SIDE`] port 53, answering `records` only: the
    /// resolver the engine's resolv.conf names (see [`TestDocker::start_bridged`]).
    pub fn dnsmasq(&self, records: &[(&str, Ipv4Addr)]) -> Background {
        self.dnsmasq_on(Self::HOST_SIDE, records)
    }

    /// As [`Self::dnsmasq`], on `addr` (an address of the test's side, see
    /// [`Self::add_host_address`]).
    pub fn dnsmasq_on(&self, addr: Ipv4Addr, records: &[(&str, Ipv4Addr)]) -> Background {
        let mut cmd = Command::new("dnsmasq");
        let records: Vec<(&str, IpAddr)> = records.iter().map(|(n, a)| (*n, (*a).into())).collect();
        dnsmasq_args(&mut cmd, &[addr.into()], &records);
        cmd.arg("--log-facility=-");
        let server = Background::spawn("dnsmasq", cmd);
        wait_for_tcp(SocketAddr::new(IpAddr::V4(addr), 53));
        server
    }
}

impl Default for EngineNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for EngineNet {
    fn drop(&mut self) {
        // The veth pair would go with the namespace, but only once the last process in it has
        // exited (an engine may still be on its way out): deleting one end takes both now.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A Docker Engine for one test: `dockerd` (and the containerd it starts) in the test's cgroup
/// and in a mount namespace of its own, where `/etc/resolv.conf` names the test's resolver;
/// its own data-root, exec-root and socket; no iptables, no bridge, vfs storage. So it cannot
/// disturb the machine, and the machine's files cannot steer it.
pub struct TestDocker {
    dir: TempDir,
    daemon: Option<Background>,
    /// dockerd makes /run/docker/plugins whatever its exec-root; removed again if it made it.
    run_docker_existed: bool,
}

impl TestDocker {
    /// Starts dockerd in `cgroup`; `insecure_registries` are `host:port` registries reached
    /// over plain HTTP. Returns once `docker version` answers (at most 60 s).
    pub fn start(cgroup: &TestCgroup, resolver: IpAddr, insecure_registries: &[&str]) -> Self {
        Self::start_with(cgroup, resolver, insecure_registries, &[], None)
    }

    /// As [`Self::start`], with more dockerd arguments, and with `authz_socket` (if given)
    /// registered as the plugin `ram` by a spec file in dockerd's own /etc/docker/plugins (a
    /// directory of the test's, bind-mounted in dockerd's mount namespace only).
    pub fn start_with(
        cgroup: &TestCgroup,
        resolver: IpAddr,
        insecure_registries: &[&str],
        extra_args: &[&str],
        authz_socket: Option<&Path>,
    ) -> Self {
        Self::launch(
            cgroup,
            resolver,
            insecure_registries,
            extra_args,
            authz_socket,
            None,
            &[],
        )
    }

    /// As [`Self::start`], with `shared` (mount points, e.g. /sys/fs/bpf) made shared mounts in
    /// dockerd's mount namespace: containers may then bind-mount them with `rslave`
    /// propagation (what the kubelet's `HostToContainer` asks for), which dockerd refuses for a
    /// private mount. The host's own mounts are left as they are.
    pub fn start_sharing(cgroup: &TestCgroup, resolver: IpAddr, shared: &[&Path]) -> Self {
        Self::launch(cgroup, resolver, &[], &[], None, None, shared)
    }

    /// A Docker Engine with real container networking: dockerd in `net`'s namespace, with its
    /// bridge (10.88.0.1/24), NAT and iptables rules there, none in the test's namespace.
    /// Containers and build steps reach the test's namespace at [`EngineNet::HOST_SIDE`].
    pub fn start_bridged(cgroup: &TestCgroup, net: &EngineNet) -> Self {
        Self::launch(
            cgroup,
            IpAddr::V4(EngineNet::HOST_SIDE),
            &[],
            &[],
            None,
            Some(net),
            &[],
        )
    }

    fn launch(
        cgroup: &TestCgroup,
        resolver: IpAddr,
        insecure_registries: &[&str],
        extra_args: &[&str],
        authz_socket: Option<&Path>,
        net: Option<&EngineNet>,
        shared_mounts: &[&Path],
    ) -> Self {
        // An engine of the test before may still be on its way out (killed with its cgroup,
        // not yet reaped): give it a few seconds.
        let mut others = other_engines(cgroup.path());
        for _ in 0..50 {
            if others.is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(200));
            others = other_engines(cgroup.path());
        }
        assert!(
            others.is_empty(),
            "a Docker Engine or containerd already runs on this machine (pids {others:?}); this \
             test enforces ram's scope.docker, which would find it too: stop it first"
        );
        // dockerd looks in /run/docker/plugins before the spec files: a production ram's
        // socket there would answer for the test's.
        if authz_socket.is_some() {
            assert!(
                !Path::new("/run/docker/plugins/ram.sock").exists(),
                "/run/docker/plugins/ram.sock exists: a ram daemon serves Docker here; stop it \
                 before running this test"
            );
        }
        let dir = TempDir::new();
        let resolv = dir.write("resolv.conf", &format!("nameserver {resolver}\n"));
        let root = dir.path();
        let etc_docker = root.join("etc-docker");
        fs::create_dir_all(etc_docker.join("plugins")).expect("creating dockerd's /etc/docker");
        if let Some(socket) = authz_socket {
            fs::write(
                etc_docker.join("plugins/ram.spec"),
                format!("unix://{}\n", socket.display()),
            )
            .expect("writing the plugin spec");
        }
        let run_docker_existed = Path::new("/run/docker").exists();
        let mut cmd = match net {
            // nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts.
            Some(net) => {
                let mut cmd = cgroup.command("nsenter");
                cmd.arg(format!("--net={}", net.path().display()))
                    .arg("unshare");
                cmd
            }
            None => cgroup.command("unshare"),
        };
        let network_args: &[&str] = match net {
            Some(_) => &["--bip=10.88.0.1/24"],
            None => &[
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
            ],
        };
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "r=$1; e=$2; shift 2; mount --bind \"$r\" /etc/resolv.conf && \
                 mount --bind \"$e\" /etc/docker && for m in $RAMT_SHARED_MOUNTS; do \
                 mount --make-rshared \"$m\" || exit 1; done && exec dockerd \"$@\"",
            )
            .env(
                "RAMT_SHARED_MOUNTS",
                shared_mounts
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .arg("sh")
            .arg(&resolv)
            .arg(&etc_docker)
            .arg(format!("--data-root={}", root.join("data").display()))
            .arg(format!("--exec-root={}", root.join("exec").display()))
            .arg(format!("--pidfile={}", root.join("dockerd.pid").display()))
            .arg(format!(
                "--host=unix://{}",
                root.join("docker.sock").display()
            ))
            .args(network_args)
            .args(["--storage-driver=vfs", "--log-level=warn"])
            .args(
                insecure_registries
                    .iter()
                    .map(|r| format!("--insecure-registry={r}")),
            )
            .args(extra_args);
        let daemon = Background::spawn_logging("dockerd", cmd, Some(&root.join("dockerd.log")));
        let docker = Self {
            dir,
            daemon: Some(daemon),
            run_docker_existed,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = docker
                .docker()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s"
            );
            thread::sleep(Duration::from_millis(200));
        }
        docker
    }

    /// The engine's address, as DOCKER_HOST.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// `docker` aimed at this engine: Debian's client, of dockerd's own version, when present.
    pub fn docker(&self) -> Command {
        let client = if Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker"
        } else {
            "docker"
        };
        let mut cmd = Command::new(client);
        cmd.arg(format!(
            "--host=unix://{}",
            self.dir.path().join("docker.sock").display()
        ));
        cmd
    }

    /// Runs `docker ARGS`; returns (success, stdout, stderr, seconds taken).
    pub fn run(&self, args: &[&str]) -> (bool, String, String, f64) {
        let start = Instant::now();
        let output = self.docker().args(args).output().expect("running docker");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
            start.elapsed().as_secs_f64(),
        )
    }

    /// What dockerd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// A directory of this engine's (for build contexts and image files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Makes image `tag` from the directory `rootfs` (`docker import` of its tar): no base
    /// image and no registry needed.
    pub fn import_rootfs(&self, rootfs: &Path, tag: &str) {
        let tar = tar_of(rootfs);
        let (ok, _, err, _) = self.run(&["import", &tar.display().to_string(), tag]);
        assert!(ok, "docker import {tag}: {err}");
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Background::pid)
    }
}

impl Drop for TestDocker {
    fn drop(&mut self) {
        // dockerd stops its containerd; what is left dies with the test's cgroup.
        drop(self.daemon.take());
        if !self.run_docker_existed {
            let _ = fs::remove_dir("/run/docker/plugins");
            let _ = fs::remove_dir("/run/docker");
        }
    }
}

/// Cgroups anywhere under the mount whose names look like a container's (what
/// `scope.containers` would enforce), for tests that must not touch the machine's own.
pub fn container_like_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(cgroup2_mount(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".scope").unwrap_or(&name);
            let id = id.rsplit('-').next().unwrap_or(id);
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                found.push(entry.path());
            } else if depth < 6 {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

/// PIDs of dockerd/containerd processes outside `cgroup` (the machine's own engines).
pub fn other_engines(cgroup: &Path) -> Vec<u32> {
    let relative = cgroup
        .strip_prefix(cgroup2_mount())
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_default();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            if !matches!(comm.trim(), "dockerd" | "containerd") {
                return None;
            }
            // A zombie runs nothing: only its parent has yet to collect it.
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            if matches!(state, 'Z' | 'X') {
                return None;
            }
            let cgroups = fs::read_to_string(e.path().join("cgroup")).ok()?;
            let own = cgroups
                .lines()
                .filter_map(|l| l.strip_prefix("0::"))
                .any(|p| p == relative || p.starts_with(&format!("{relative}/")));
            (!own).then_some(pid)
        })
        .collect()
}

impl TestNet {
    /// Starts a docker-registry (distribution) on `addr:port` in the peer namespace, storing
    /// images under `dir`.
    pub fn registry(&self, dir: &TempDir, addr: IpAddr, port: u16) -> Background {
        let storage = dir.path().join(format!("registry-{addr}"));
        fs::create_dir_all(&storage).expect("creating registry storage");
        let config = dir.write(
            &format!("registry-{addr}.yml"),
            &format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {}\n",
                storage.display(),
                SocketAddr::new(addr, port)
            ),
        );
        let mut cmd = self.command("docker-registry");
        cmd.arg("serve").arg(config);
        let server = Background::spawn("docker-registry", cmd);
        wait_for_tcp(SocketAddr::new(addr, port));
        server
    }

    /// Starts docker-registry serving HTTPS on `addr:port` (with `ca`'s server certificate)
    /// from `storage`, a directory another registry of the test may share.
    pub fn registry_tls(
        &self,
        dir: &TempDir,
        storage: &Path,
        addr: IpAddr,
        port: u16,
        ca: &TestCa,
    ) -> Background {
        fs::create_dir_all(storage).expect("creating registry storage");
        let config = dir.write(
            &format!("registry-tls-{addr}-{port}.yml"),
            &format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {}\n  tls:\n    certificate: {}\n    key: {}\n",
                storage.display(),
                SocketAddr::new(addr, port),
                ca.cert.display(),
                ca.key.display(),
            ),
        );
        let mut cmd = self.command("docker-registry");
        cmd.arg("serve").arg(config);
        let server = Background::spawn("docker-registry (TLS)", cmd);
        wait_for_tcp(SocketAddr::new(addr, port));
        server
    }

    /// Starts `tls_server.py` on `addr:port` with `ca`'s server certificate (every name of
    /// the CA on one address), logging to the returned file what each connection sent.
    pub fn tls_server(
        &self,
        dir: &TempDir,
        addr: IpAddr,
        port: u16,
        ca: &TestCa,
    ) -> (Background, PathBuf) {
        let log = dir.path().join(format!("tls-server-{addr}-{port}.log"));
        fs::write(&log, "").expect("creating the TLS server's log");
        let mut cmd = self.command("python3");
        cmd.arg(client_script("tls_server.py"))
            .arg(addr.to_string())
            .arg(port.to_string())
            .arg(&ca.cert)
            .arg(&ca.key)
            .arg(&log);
        let server = Background::spawn("TLS server", cmd);
        wait_for_tcp(SocketAddr::new(addr, port));
        (server, log)
    }

    /// Starts `python3 -m http.server` serving `dir` on `port` in the peer namespace.
    pub fn file_server(&self, dir: &Path, port: u16) -> Background {
        let mut cmd = self.command("python3");
        cmd.args(["-m", "http.server", "--bind", "::", "--directory"])
            .arg(dir)
            .arg(port.to_string());
        let server = Background::spawn("file server", cmd);
        wait_for_tcp(SocketAddr::new(IpAddr::V4(Self::PEER_V4[0]), port));
        server
    }
}

/// containerd without dockerd, for one test: in `cgroup`, in `net`'s network namespace and a
/// mount namespace of its own, with its own root, state and socket; the CRI plugin off (no
/// CNI here). Containers are run with `ctr` against it.
pub struct TestContainerd {
    dir: TempDir,
    daemon: Option<Background>,
}

impl TestContainerd {
    /// Starts containerd; returns once `ctr version` answers (at most 30 s).
    pub fn start(cgroup: &TestCgroup, net: &EngineNet) -> Self {
        Self::start_with(cgroup, net, "")
    }

    /// [`Self::start`] with `extra` appended to its configuration (TOML tables).
    pub fn start_with(cgroup: &TestCgroup, net: &EngineNet, extra: &str) -> Self {
        let others = other_engines(cgroup.path());
        assert!(
            others.is_empty(),
            "a Docker Engine or containerd already runs on this machine (pids {others:?}); stop \
             it first"
        );
        let dir = TempDir::new();
        let root = dir.path();
        let config = dir.write(
            "config.toml",
            &format!(
                "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{root}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{root}/containerd.sock.ttrpc\"\n{extra}",
                root = root.display()
            ),
        );
        let mut cmd = cgroup.command("nsenter");
        cmd.arg(format!("--net={}", net.path().display()))
            .args(["unshare", "--mount", "--propagation", "private", "--"])
            .arg("containerd")
            .arg(format!("--config={}", config.display()))
            .arg("--log-level=warn");
        let daemon =
            Background::spawn_logging("containerd", cmd, Some(&root.join("containerd.log")));
        let containerd = Self {
            dir,
            daemon: Some(daemon),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd
            .ctr()
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30 s"
            );
            thread::sleep(Duration::from_millis(200));
        }
        containerd
    }

    /// `ctr` aimed at this containerd.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg(format!(
            "--address={}",
            self.dir.path().join("containerd.sock").display()
        ));
        cmd
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What containerd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        // containerd's shims and containers are in the test's cgroups, killed with them; the
        // daemon itself is stopped by its own PID.
        drop(self.daemon.take());
    }
}

/// Rootful Podman for one test: every command runs in `net`'s network namespace (where Podman's
/// CNI bridge and its iptables rules go) and in a private mount namespace where the test's
/// resolv.conf is /etc/resolv.conf and tmpfs hide the host's CNI state and netns directory;
/// its own storage (vfs), run directory and network configuration; the cgroupfs manager, so
/// containers land in `/libpod_parent/libpod-<id>`, started from the test's `cgroup`.
pub struct TestPodman {
    dir: TempDir,
    net: PathBuf,
    cgroup: PathBuf,
}

impl TestPodman {
    pub fn new(cgroup: &TestCgroup, net: &EngineNet, resolver: IpAddr) -> Self {
        let dir = TempDir::new();
        dir.write("resolv.conf", &format!("nameserver {resolver}\n"));
        fs::create_dir_all(dir.path().join("networks")).expect("creating the network dir");
        Self {
            dir,
            net: net.path(),
            cgroup: cgroup.path().to_owned(),
        }
    }

    /// `podman ARGS` as described above.
    pub fn podman(&self) -> Command {
        self.command(Some(&self.net))
    }

    /// `podman ARGS` as [`Self::podman`], but in the host's network namespace: for pulls from
    /// a registry (or ram's pull gate) on the host's loopback.
    pub fn podman_host_network(&self) -> Command {
        self.command(None)
    }

    fn command(&self, net: Option<&Path>) -> Command {
        let root = self.dir.path();
        let procs = self.cgroup.join("cgroup.procs");
        let mut cmd = Command::new("nsenter");
        // SAFETY: only async-signal-safe work between fork and exec: one write(2).
        unsafe {
            cmd.pre_exec(move || fs::write(&procs, b"0"));
        }
        match net {
            Some(net) => cmd.arg(format!("--net={}", net.display())),
            // nsenter with no namespace runs the command where it is.
            None => cmd.arg("--preserve-credentials"),
        };
        cmd.args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
        ])
        .arg(
            "r=$1; shift; mount --bind \"$r\" /etc/resolv.conf && \
                 mount -t tmpfs tmpfs /var/lib && mount -t tmpfs tmpfs /run/netns && \
                 exec podman \"$@\"",
        )
        .arg("sh")
        .arg(root.join("resolv.conf"))
        .arg(format!("--root={}", root.join("storage").display()))
        .arg(format!("--runroot={}", root.join("run").display()))
        .arg(format!("--tmpdir={}", root.join("tmp").display()))
        .arg(format!(
            "--network-config-dir={}",
            root.join("networks").display()
        ))
        .args([
            "--storage-driver=vfs",
            "--cgroup-manager=cgroupfs",
            "--events-backend=none",
            "--log-level=warn",
        ]);
        cmd
    }

    /// Imports `rootfs` (a directory) as image `tag`.
    pub fn import_rootfs(&self, rootfs: &Path, tag: &str) {
        let tar = tar_of(rootfs);
        let output = self
            .podman()
            .arg("import")
            .arg(&tar)
            .arg(tag)
            .output()
            .expect("running podman import");
        assert!(
            output.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `rootfs` (a directory) as a tar file beside it, for an engine's `import`.
fn tar_of(rootfs: &Path) -> PathBuf {
    let tar = rootfs.with_extension("tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("running tar");
    assert!(status.success(), "tar of {}", rootfs.display());
    tar
}

/// On a hybrid cgroup layout (cgroup2 beside v1 hierarchies, as here), engines also make their
/// cgroup parent (`docker`, `libpod_parent`, `default`) in each v1 hierarchy. Those made while
/// this guard lived are removed on drop (deepest first; only empty directories can go): declare
/// it before the engine's cgroup, so that it goes after the engine's processes.
pub struct V1Parents {
    made: Vec<PathBuf>,
}

impl V1Parents {
    /// Notes which v1 hierarchies have no `name` yet.
    pub fn new(name: &str) -> Self {
        let made = Self::hierarchies()
            .into_iter()
            .map(|h| h.join(name))
            .filter(|p| !p.exists())
            .collect();
        Self { made }
    }

    fn hierarchies() -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir("/sys/fs/cgroup") else {
            return Vec::new();
        };
        let mount = cgroup2_mount();
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && *p != mount && p.join("tasks").exists())
            .collect()
    }

    fn remove_empty_tree(path: &Path) {
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::remove_empty_tree(&entry.path());
                }
            }
        }
        let _ = fs::remove_dir(path);
    }
}

impl Drop for V1Parents {
    fn drop(&mut self) {
        for path in &self.made {
            Self::remove_empty_tree(path);
        }
    }
}

/// A test certificate authority and one server certificate (an EC key) for several names.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// Made with the `openssl` command under `dir`.
    pub fn new(dir: &TempDir, names: &[&str]) -> Self {
        let path = |name: &str| dir.path().join(name);
        let (ca, ca_key, cert, key, csr) = (
            path("ca.pem"),
            path("ca.key"),
            path("server.pem"),
            path("server.key"),
            path("server.csr"),
        );
        let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        let ext = dir.write(
            "server.ext",
            &format!("subjectAltName={}\n", sans.join(",")),
        );
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let run = |args: Vec<&str>| {
            sh("openssl", &args).unwrap_or_else(|err| panic!("openssl {args:?}: {err:#}"));
        };
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            s(&ca_key),
            "-out",
            s(&ca),
            "-days",
            "2",
            "-subj",
            "/CN=ram test CA",
        ]);
        run(args);
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
            "-subj",
            "/CN=ram test server",
        ]);
        run(args);
        run(vec![
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&ca),
            "-CAkey",
            s(&ca_key),
            "-CAcreateserial",
            "-out",
            s(&cert),
            "-days",
            "2",
            "-extfile",
            s(&ext),
        ]);
        Self { ca, cert, key }
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Pushes a one-file image (`hello.txt` holding `content`) as `reference` to the registry at
/// `registry_url` (`http://host:port`), over the distribution API (tests/clients/push_image.py).
pub fn push_image(registry_url: &str, reference: &str, content: &str) {
    let output = Command::new("python3")
        .arg(client_script("push_image.py"))
        .arg(registry_url)
        .arg(reference)
        .args(["--file", "hello.txt", content])
        .output()
        .expect("running push_image.py");
    assert!(
        output.status.success(),
        "pushing {reference}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// The hand-made ClientHello (shared with the kernel matrix's peer, which has no dependencies).
mod client_hello;
pub use client_hello::client_hello;

/// Polls `check` every 20 ms until it holds or `limit` passes; returns how long it took.
pub fn time_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A fake Docker Hub for one test: a docker-registry on test host B (port 5000) holding each of
/// `images` (`namespace/name:tag`), one small layer saying which image it is. Returns the
/// registry (stopped on drop), its storage, and its `address:port`.
pub fn fake_docker_hub(net: &TestNet, images: &[&str]) -> (Background, TempDir, String) {
    const HUB_PORT: u16 = 5000;
    let hub_ip = TestNet::PEER_V4[1];
    let hub = format!("{hub_ip}:{HUB_PORT}");
    let dir = TempDir::new();
    let registry = net.registry(&dir, hub_ip.into(), HUB_PORT);
    for image in images {
        push_image(
            &format!("http://{hub}"),
            image,
            &format!("this is {image}\n"),
        );
    }
    (registry, dir, hub)
}

/// Holds `count` idle TCP connections to `host:port` as user nobody (hold_connections.py);
/// returns the holder (it lets go when its stdin closes: drop it or take its stdin) and how
/// many connections the server kept open.
pub fn hold_connections_as_nobody(host: &str, port: &str, count: usize) -> (Child, usize) {
    let mut holder = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
        ])
        .arg(client_script("hold_connections.py"))
        .args([host, port, &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting hold_connections.py");
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().expect("piped stdout"))
        .read_line(&mut line)
        .expect("reading hold_connections.py");
    let open = line
        .trim()
        .trim_start_matches("open ")
        .parse()
        .unwrap_or_else(|_| panic!("hold_connections.py printed {line:?}"));
    (holder, open)
}

/// Ends a running connect_loop.py client (SIGTERM to its own PID) and returns the JSON report
/// it prints: rounds, `denied_ok`, `allowed_failed`.
pub fn stop_connect_loop(client: Child) -> serde_json::Value {
    // SAFETY: kill(2) of our own child's PID.
    unsafe { libc::kill(client.id().cast_signed(), libc::SIGTERM) };
    let output = client
        .wait_with_output()
        .expect("waiting for connect_loop.py");
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|err| panic!("connect_loop printed {text:?}: {err}"))
}
