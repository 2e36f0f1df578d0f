//! The Kubernetes deployment: the Helm chart (deploy/helm/ram) renders the committed plain
//! manifests (deploy/kubernetes/) and says what the DaemonSet needs; ram's container image
//! (deploy/Dockerfile), built by the test with the real dockerd from the ram binary under test,
//! runs the way the rendered DaemonSet says — its namespaces, capabilities, security settings,
//! volumes with their propagation and arguments, all read from the manifest — enforcing a test
//! cgroup on the host; a second container replacing the first (a rollout) leaves no window; a
//! ConfigMap update (the kubelet's `..data` swap) is in force within a second; the uninstall
//! hook's container removes the enforcement once the daemon is gone.
//!
//! No cluster: Debian has no kubelet. What the kubelet would do is done the way it does it, and
//! said where: the ConfigMap volume's layout and update steps, `HostToContainer` as `rslave`,
//! a private cgroup namespace (containerd's CRI gives one to every unprivileged container on a
//! cgroup v2 host). A few settings are the machine's or the runtime's, not the test's to
//! change; each is printed: capabilities this sandbox's bounding set lacks, and the pin and
//! run directories and the policy volume, which are the test's own so that the machine's real
//! ram is never touched.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ram_tests::{
    Background, DaemonState, TempDir, TestCgroup, TestDocker, TestNet, V1Parents,
    attached_programs, client_script, peers::*, probe_in, time_until, wait_for_tcp,
};
use serde_json::Value;

/// `ram policy check FILE` accepts `file` (`what` names it in the failure).
fn assert_policy_checks(file: &Path, what: &str) {
    let check = Command::new(ram_tests::ram_bin())
        .args(["policy", "check"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "ram policy check of {what}: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// The helm `cargo xtask setup` installs (a venv under target/tools/helm).
fn helm() -> Command {
    let helm = workspace().join("target/tools/helm/bin/helm");
    assert!(
        helm.exists(),
        "{} is missing: `cargo xtask test` (or `cargo xtask setup`) installs helm there",
        helm.display()
    );
    let mut cmd = Command::new(helm);
    cmd.current_dir(workspace());
    cmd
}

fn run_helm(args: &[&str]) -> String {
    let output = helm().args(args).output().expect("running helm");
    assert!(
        output.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("helm prints UTF-8")
}

/// `helm template ram deploy/helm/ram --namespace kube-system ARGS`.
fn render(args: &[&str]) -> String {
    let mut all = vec![
        "template",
        "ram",
        "deploy/helm/ram",
        "--namespace",
        "kube-system",
    ];
    all.extend(args);
    run_helm(&all)
}

/// The YAML documents of `text` as JSON values (python3-yaml reads them).
fn documents(text: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; \
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "reading YAML (python3-yaml): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    match serde_json::from_slice(&output.stdout).expect("python printed JSON") {
        Value::Array(docs) => docs,
        other => panic!("not a list of documents: {other}"),
    }
}

/// The committed manifest `name` (deploy/kubernetes/), without its header comment.
fn committed(name: &str) -> String {
    let path = workspace().join("deploy/kubernetes").join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let body = text.find("\n---\n").map_or(0, |i| i + 1);
    assert!(
        text[..body].lines().all(|l| l.starts_with('#')),
        "{} must start with its header comment, then helm's output",
        path.display()
    );
    text[body..].to_owned()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn the_container(daemonset: &Value) -> &Value {
    let containers = daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container: {containers:?}");
    &containers[0]
}

/// The capabilities the rendered daemon asks for, and why each (docs/kubernetes.md).
const DAEMON_CAPABILITIES: &[&str] = &["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"];

#[test]
fn the_chart_renders_the_committed_manifests_with_what_the_daemonset_needs() {
    run_helm(&["lint", "--strict", "deploy/helm/ram"]);

    // The plain manifests are the chart's output, byte for byte (`cargo xtask chart`).
    assert_eq!(
        render(&["--no-hooks"]),
        committed("ram.yaml"),
        "deploy/kubernetes/ram.yaml is stale: run `cargo xtask chart`"
    );
    assert_eq!(
        render(&["--show-only", "templates/uninstall.yaml"]),
        committed("ram-uninstall.yaml"),
        "deploy/kubernetes/ram-uninstall.yaml is stale: run `cargo xtask chart`"
    );

    let docs = documents(&render(&[]));
    let daemonset = find(&docs, "DaemonSet", "ram");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["dnsPolicy"], "Default");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() <= 30);
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let strategy = &daemonset["spec"]["updateStrategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(strategy["rollingUpdate"]["maxSurge"], 0);
    // A policy change must not restart the pods: no checksum of the ConfigMap on them.
    let annotations = daemonset["spec"]["template"]["metadata"]["annotations"].to_string();
    assert!(!annotations.contains("checksum"), "{annotations}");

    let container = the_container(daemonset);
    assert!(
        container.get("command").is_none(),
        "the image's entrypoint runs"
    );
    assert_eq!(
        strings(&container["args"]),
        [
            "daemon",
            "--policy",
            "/etc/ram/policy/policy.toml",
            "--audit-log",
            "-"
        ]
    );
    assert_eq!(
        strings(&container["readinessProbe"]["exec"]["command"]),
        ["/usr/bin/ram", "status", "--ready"]
    );
    assert!(
        container.get("lifecycle").is_none(),
        "no preStop hook: {}",
        container["lifecycle"]
    );
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsUser"], 0);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        strings(&security["capabilities"]["add"]),
        DAEMON_CAPABILITIES
    );
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(security["appArmorProfile"]["type"], "Unconfined");

    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    let volume = |name: &Value| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == *name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    for path in ["/sys/fs/bpf", "/sys/fs/cgroup"] {
        let m = mount(path);
        assert_eq!(m["mountPropagation"], "HostToContainer", "{m}");
        let v = volume(&m["name"]);
        assert_eq!(v["hostPath"]["path"], path);
        assert_eq!(v["hostPath"]["type"], "Directory");
    }
    let run = volume(&mount("/run/ram")["name"]);
    assert_eq!(run["hostPath"]["path"], "/run/ram");
    assert_eq!(run["hostPath"]["type"], "DirectoryOrCreate");
    // The policy: the ConfigMap as a directory (a subPath mount never sees an update).
    let policy_mount = mount("/etc/ram/policy");
    assert!(policy_mount.get("subPath").is_none(), "{policy_mount}");
    assert_eq!(
        volume(&policy_mount["name"])["configMap"]["name"],
        "ram-policy"
    );
    for m in mounts {
        assert!(
            m.get("subPath").is_none(),
            "no subPath mounts (never updated): {m}"
        );
    }

    // ram never talks to the API server: a service account without a token, and no role.
    let account = find(&docs, "ServiceAccount", "ram");
    assert_eq!(account["automountServiceAccountToken"], false);
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap();
        assert!(!kind.contains("Role"), "no RBAC objects: {kind}");
    }

    // The policy of the ConfigMap is values.yaml's, and one ram accepts.
    let policy = find(&docs, "ConfigMap", "ram-policy")["data"]["policy.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let values = fs::read_to_string(workspace().join("deploy/helm/ram/values.yaml")).unwrap();
    assert_eq!(policy, documents(&values)[0]["policy"]);
    assert!(policy.contains("\ndocker = true\n"), "{policy}");
    let dir = TempDir::new();
    let file = dir.write("policy.toml", &policy);
    assert_policy_checks(&file, "the chart's policy");

    // `ram uninstall` runs in the pre-delete hook, and nowhere else.
    let uninstallers: Vec<&Value> = docs
        .iter()
        .filter(|d| d.to_string().contains("\"uninstall\""))
        .collect();
    assert_eq!(uninstallers.len(), 1, "one object runs `ram uninstall`");
    let hook = uninstallers[0];
    assert_eq!(hook["kind"], "DaemonSet");
    assert_eq!(
        hook["metadata"]["annotations"]["helm.sh/hook"],
        "pre-delete"
    );
    assert!(
        !documents(&render(&["--no-hooks"]))
            .iter()
            .any(|d| d.to_string().contains("\"uninstall\"")),
        "ram.yaml (applied with kubectl) must not uninstall"
    );
    // Its pods are not the daemon's: the daemon's selector does not match them.
    let selector = daemonset["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let hook_labels = &hook["spec"]["template"]["metadata"]["labels"];
    assert!(
        selector.iter().any(|(k, v)| hook_labels[k] != *v),
        "the daemon's selector {selector:?} matches the hook's pods {hook_labels}"
    );
    let hook_security = &the_container(hook)["securityContext"];
    assert_eq!(strings(&hook_security["capabilities"]["drop"]), ["ALL"]);
    assert!(hook_security["capabilities"].get("add").is_none());

    // Values: metrics (a [metrics] section, a port, Prometheus' annotations), the pull gate's
    // capability, Docker's plugin directory, and the AppArmor annotation of older clusters.
    let docs = documents(&render(&[
        "--set",
        "metrics.enabled=true",
        "--set",
        "metrics.listen=0.0.0.0:9464",
        "--set",
        "imageAccess.pullGate=true",
        "--set",
        "imageAccess.dockerPlugin=true",
        "--set",
        "extraArgs={--cgroup,/system.slice/extra.service}",
    ]));
    let policy = find(&docs, "ConfigMap", "ram-policy")["data"]["policy.toml"]
        .as_str()
        .unwrap();
    assert!(
        policy.ends_with("[metrics]\nlisten = \"0.0.0.0:9464\"\n"),
        "{policy}"
    );
    let daemonset = find(&docs, "DaemonSet", "ram");
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9464");
    let container = the_container(daemonset);
    assert_eq!(container["ports"][0]["containerPort"], 9464);
    assert!(
        strings(&container["securityContext"]["capabilities"]["add"])
            .contains(&"NET_BIND_SERVICE".to_owned())
    );
    assert!(
        container["volumeMounts"]
            .to_string()
            .contains("/run/docker/plugins")
    );
    assert_eq!(
        strings(&container["args"])[5..],
        ["--cgroup", "/system.slice/extra.service"]
    );
    let file = dir.write("policy-metrics.toml", policy);
    assert_policy_checks(&file, "the policy with [metrics]");
    let docs = documents(&render(&["--kube-version", "1.29.0"]));
    let daemonset = find(&docs, "DaemonSet", "ram");
    assert_eq!(
        daemonset["spec"]["template"]["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/ram"],
        "unconfined"
    );
    assert!(
        the_container(daemonset)["securityContext"]
            .get("appArmorProfile")
            .is_none()
    );
}

// --- The image, run as the DaemonSet runs it --------------------------------------------------

/// A container of the test's engine; removed (with `docker rm -f`) on drop.
struct Container<'a> {
    docker: &'a TestDocker,
    name: String,
}

impl Container<'_> {
    fn logs(&self) -> String {
        let (_, out, err, _) = self.docker.run(&["logs", &self.name]);
        format!("{out}{err}")
    }

    /// `docker stop -t GRACE`: SIGTERM, then SIGKILL after the grace period, as the kubelet.
    fn stop(&self, grace: u64) {
        let (ok, _, err, _) = self
            .docker
            .run(&["stop", "-t", &grace.to_string(), &self.name]);
        assert!(ok, "docker stop {}: {err}", self.name);
    }

    fn exec(&self, command: &[String]) -> (bool, String) {
        let mut args = vec!["exec".to_owned(), self.name.clone()];
        args.extend(command.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err, _) = self.docker.run(&args);
        (ok, format!("{out}{err}"))
    }

    fn exit_code(&self) -> Option<i64> {
        let (_, out, _, _) = self.docker.run(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.ExitCode}}",
            &self.name,
        ]);
        let mut words = out.split_whitespace();
        match (words.next(), words.next()) {
            (Some("false"), Some(code)) => code.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.docker.docker().args(["rm", "-f", &self.name]).output();
    }
}

/// An image of the test's engine, removed by its ID on drop.
struct Image<'a> {
    docker: &'a TestDocker,
    id: String,
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        let _ = self.docker.docker().args(["rmi", "-f", &self.id]).output();
    }
}

/// Builds ram's image from the binary under test the way `cargo xtask image` does (it is what
/// runs: `cargo xtask image --ram RAM_BIN`), against the test's engine.
fn build_image(docker: &TestDocker) -> Image<'_> {
    let context = TempDir::new();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let tag = format!("ramt-k8s:{}", std::process::id());
    let output = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "image",
            "--ram",
        ])
        .arg(ram_tests::ram_bin())
        .arg("--context")
        .arg(context.path().join("image"))
        .args(["--tag", &tag])
        .env("DOCKER_HOST", docker.host())
        .output()
        .expect("running cargo xtask image");
    assert!(
        output.status.success(),
        "cargo xtask image: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let id = fs::read_to_string(context.path().join("image/image-id"))
        .expect("docker build wrote the image's ID")
        .trim()
        .to_owned();
    assert!(id.starts_with("sha256:"), "{id}");
    Image { docker, id }
}

/// Where the test's daemon keeps what the DaemonSet keeps on the node: its pin directory under
/// the host's bpffs (removed on drop), the run directory that stands for the node's /run/ram,
/// and the ConfigMap volume.
struct Node {
    state: DaemonState,
    policy: PolicyVolume,
}

impl Node {
    fn new(policy: &str) -> Self {
        let state = DaemonState::new(TempDir::new(), Vec::new());
        fs::create_dir_all(state.run_dir()).unwrap();
        fs::set_permissions(state.run_dir(), fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            policy: PolicyVolume::new(policy),
            state,
        }
    }
}

/// A ConfigMap volume laid out exactly as the kubelet lays it out (its atomic writer): the
/// volume directory (0777, root's, mounted read-only), a timestamped directory with the files
/// (0755, files 0644), the `..data` symlink to it, and `policy.toml -> ..data/policy.toml`.
struct PolicyVolume {
    _dir: TempDir,
    path: PathBuf,
    current: String,
}

impl PolicyVolume {
    fn new(policy: &str) -> Self {
        let dir = TempDir::new();
        let path = dir.path().join("policy-volume");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        let current = "..2026_11_29_14_00_00.123456789".to_owned();
        Self::write_version(&path, &current, policy);
        std::os::unix::fs::symlink(&current, path.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/policy.toml", path.join("policy.toml")).unwrap();
        Self {
            _dir: dir,
            path,
            current,
        }
    }

    fn write_version(volume: &Path, name: &str, policy: &str) {
        let version = volume.join(name);
        fs::create_dir(&version).unwrap();
        fs::set_permissions(&version, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(version.join("policy.toml"), policy).unwrap();
        fs::set_permissions(
            version.join("policy.toml"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }

    /// The kubelet's update, step by step: the new timestamped directory, a `..data_tmp`
    /// symlink to it, renamed over `..data` (the atomic step), then the old directory removed.
    fn update(&mut self, policy: &str) {
        let next = "..2026_11_29_14_05_00.987654321".to_owned();
        Self::write_version(&self.path, &next, policy);
        std::os::unix::fs::symlink(&next, self.path.join("..data_tmp")).unwrap();
        fs::rename(self.path.join("..data_tmp"), self.path.join("..data")).unwrap();
        fs::remove_dir_all(self.path.join(&self.current)).unwrap();
        self.current = next;
    }
}

/// dockerd's cgroupfs parent in the cgroup2 tree (`<mount>/docker`), removed on drop if it was
/// made while this guard lived (the v1 ones are [`V1Parents`]'). Declare it before the
/// engine's cgroup, so that it goes after the engine's processes.
struct EngineParent(Option<PathBuf>);

impl EngineParent {
    fn new() -> Self {
        let path = ram_tests::cgroup2_mount().join("docker");
        Self((!path.exists()).then_some(path))
    }
}

impl Drop for EngineParent {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = fs::remove_dir(path);
        }
    }
}

/// The rendered workload `name` (a DaemonSet) of the committed manifest `file`.
fn workload(file: &str, name: &str) -> Value {
    let docs = documents(&committed(file));
    find(&docs, "DaemonSet", name).clone()
}

/// Whether this process may hand `cap` to a container: a runtime can only grant capabilities
/// of its own bounding set (this sandbox has no CAP_SYS_RESOURCE, for one).
fn grantable(cap: &str) -> bool {
    let number = match cap {
        "SYS_ADMIN" => 21,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_RESOURCE" => 24,
        "NET_BIND_SERVICE" => 10,
        other => panic!("the test does not know capability {other}"),
    };
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    bounding & (1 << number) != 0
}

/// `docker run -d` arguments for the pod `workload` describes, with the test's substitutions:
/// the node's /run/ram is `node`'s run directory, the ConfigMap volume is `node`'s policy
/// volume, and RAM_PIN_DIR is `node`'s pin directory (under the host's bpffs, which is
/// mounted as the manifest says). `extra_args` follow the manifest's arguments.
fn docker_run_args(
    workload: &Value,
    node: &Node,
    name: &str,
    image: &str,
    extra_args: &[String],
) -> Vec<String> {
    let pod = &workload["spec"]["template"]["spec"];
    let container = the_container(workload);
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.into()];
    if pod["hostNetwork"] == true {
        args.extend(["--network".into(), "host".into()]);
    }
    if pod["hostPID"] == true {
        args.extend(["--pid".into(), "host".into()]);
    }
    // containerd's CRI gives every unprivileged container a cgroup namespace of its own on a
    // cgroup v2 host (Docker does so only on pure v2 hosts; this one is hybrid).
    args.extend(["--cgroupns".into(), "private".into()]);
    let security = &container["securityContext"];
    assert_ne!(security["privileged"], true, "the pod is not privileged");
    if let (Some(user), Some(group)) = (
        security["runAsUser"].as_u64(),
        security["runAsGroup"].as_u64(),
    ) {
        args.extend(["--user".into(), format!("{user}:{group}")]);
    }
    if security["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    if security["allowPrivilegeEscalation"] == false {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    // RuntimeDefault: the engine's default seccomp profile, what docker applies anyway.
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    if security["appArmorProfile"]["type"] == "Unconfined" {
        args.extend(["--security-opt".into(), "apparmor=unconfined".into()]);
    }
    for cap in strings(&security["capabilities"]["drop"]) {
        args.extend(["--cap-drop".into(), cap]);
    }
    for cap in strings(&security["capabilities"]["add"]) {
        if grantable(&cap) {
            args.extend(["--cap-add".into(), cap]);
        } else {
            eprintln!(
                "note: CAP_{cap} is not in this sandbox's bounding set: no runtime here can \
                 grant it, so the container runs without it"
            );
        }
    }
    for env in container["env"].as_array().into_iter().flatten() {
        args.extend([
            "--env".into(),
            format!(
                "{}={}",
                env["name"].as_str().unwrap(),
                env["value"].as_str().unwrap()
            ),
        ]);
    }
    args.extend([
        "--env".into(),
        format!("RAM_PIN_DIR={}", node.state.pin_dir().display()),
    ]);
    let volumes = pod["volumes"].as_array().unwrap();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let target = mount["mountPath"].as_str().unwrap();
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {mount}"));
        let source = if volume.get("configMap").is_some() {
            node.policy.path.clone()
        } else if let Some(path) = volume["hostPath"]["path"].as_str() {
            if path == "/run/ram" {
                node.state.run_dir()
            } else {
                PathBuf::from(path)
            }
        } else {
            panic!("a volume the test cannot stand in for: {volume}")
        };
        let mut options = Vec::new();
        // The kubelet mounts ConfigMap volumes read-only whatever the mount says.
        if mount["readOnly"] == true || volume.get("configMap").is_some() {
            options.push("ro");
        }
        match mount["mountPropagation"].as_str() {
            None | Some("None") => {}
            Some("HostToContainer") => options.push("rslave"),
            Some(other) => panic!("propagation {other} needs a privileged pod"),
        }
        let mut spec = format!("{}:{target}", source.display());
        if !options.is_empty() {
            spec = format!("{spec}:{}", options.join(","));
        }
        args.extend(["--volume".into(), spec]);
    }
    args.push(image.into());
    args.extend(strings(&container["args"]));
    args.extend(extra_args.iter().cloned());
    args
}

fn start_container<'a>(
    docker: &'a TestDocker,
    workload: &Value,
    node: &Node,
    image: &str,
    extra_args: &[String],
) -> Container<'a> {
    let name = format!("ramt-k8s-{}-{}", std::process::id(), next_number());
    let args = docker_run_args(workload, node, &name, image, extra_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err, _) = docker.run(&args);
    let container = Container {
        docker,
        name: name.clone(),
    };
    assert!(ok, "docker {args:?}: {err}");
    container
}

/// A number that differs between calls of this process (container names must).
fn next_number() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs the readiness probe's command in `container` until it succeeds (≤ 30 s).
fn wait_ready(container: &Container<'_>, probe: &[String]) -> Duration {
    let start = Instant::now();
    loop {
        let (ok, out) = container.exec(probe);
        if ok {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not ready within 30 s ({out}); the container's log:\n{}",
            container.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A policy that allows `cidrs` only (resolver: peer A; no loopback).
fn policy(cidrs: &[String]) -> String {
    let cidrs: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[registry_access]\nallow = []\nallow_cidrs = [{}]\nallow_loopback = false\n[dns]\n\
         resolvers = [\"{}\"]\n",
        cidrs.join(", "),
        a()
    )
}

/// An HTTP server on one peer address only, logging each request to a file.
fn listener(net: &TestNet, addr: &str, port: u16, log: &Path) -> Background {
    let mut cmd = net.command("python3");
    cmd.args(["-m", "http.server", "--bind", addr, &port.to_string()]);
    let server = Background::spawn_logging("http server", cmd, Some(log));
    wait_for_tcp(SocketAddr::new(addr.parse::<IpAddr>().unwrap(), port));
    server
}

const PORT: u16 = 8080;

#[test]
fn the_image_runs_as_the_daemonset_says_across_a_rollout_and_a_configmap_update() {
    let daemonset = workload("ram.yaml", "ram");
    let container_spec = the_container(&daemonset);
    let probe = strings(&container_spec["readinessProbe"]["exec"]["command"]);
    let grace = daemonset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let shared: Vec<PathBuf> = container_spec["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["mountPropagation"] == "HostToContainer")
        .map(|m| PathBuf::from(m["mountPath"].as_str().unwrap()))
        .collect();

    let net = TestNet::new();
    let logs = TempDir::new();
    let allowed_log = logs.path().join("allowed.log");
    let denied_log = logs.path().join("denied.log");
    let _allowed = listener(&net, &a(), PORT, &allowed_log);
    let _denied = listener(&net, &c(), PORT, &denied_log);
    let cgroup = TestCgroup::new();
    let mut node = Node::new(&policy(&[format!("{}/32", a())]));

    let _v1 = V1Parents::new("docker");
    let _parent = EngineParent::new();
    let engine_cgroup = TestCgroup::new();
    let shared: Vec<&Path> = shared.iter().map(PathBuf::as_path).collect();
    let docker = TestDocker::start_sharing(&engine_cgroup, TestNet::PEER_V4[0].into(), &shared);
    let image = build_image(&docker);
    let enforce = vec!["--cgroup".to_owned(), cgroup.path().display().to_string()];

    let first = start_container(&docker, &daemonset, &node, &image.id, &enforce);
    let took = wait_ready(&first, &probe);
    eprintln!("ready after {took:?}");

    // Enforcement on the host's cgroup: the allowed address answers; the denied one is refused
    // at once and nothing reaches it.
    let allowed = probe_in(&cgroup, "tcp-http", &a(), PORT);
    assert!(
        allowed.ok(),
        "{allowed:?}; the daemon's log:\n{}",
        first.logs()
    );
    let denied = probe_in(&cgroup, "tcp-http", &c(), PORT);
    assert_eq!(denied.result, "EPERM", "{denied:?}");
    let denied_seen = fs::read_to_string(&denied_log).unwrap();
    assert!(
        !denied_seen.contains("GET "),
        "the denied listener got a request: {denied_seen}"
    );
    assert!(
        fs::read_to_string(&allowed_log)
            .unwrap()
            .contains("GET / HTTP/1.0")
    );
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );
    // `ram status` works on the node (the run directory is the node's), and the audit lines
    // are the container's stdout (`kubectl logs`).
    let status = node
        .state
        .ram()
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "ram status on the node: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (_, stdout, _, _) = docker.run(&["logs", &first.name]);
    let audit_line = format!("\"dst_addr\":\"{}\"", c());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stdout = stdout;
    while !stdout.contains(&audit_line) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        stdout = docker.run(&["logs", &first.name]).1;
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&audit_line) && l.contains("\"verdict\":\"deny\"")),
        "no audit line for the denial on the container's stdout:\n{stdout}"
    );

    // A rollout (maxSurge 0): the old pod stops, then the new one starts, while a client in the
    // enforced cgroup connects to the allowed and the denied address in a loop. Port 9: nothing
    // listens, so a connection that gets through is refused by the host at once.
    let mut client = cgroup
        .command("python3")
        .arg(client_script("connect_loop.py"))
        .args([&a(), &c(), "9", "120", "100000000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    first.stop(grace);
    assert_eq!(
        first.exit_code(),
        Some(0),
        "the old daemon stops cleanly on SIGTERM:\n{}",
        first.logs()
    );
    std::thread::sleep(Duration::from_millis(300));
    let second = start_container(&docker, &daemonset, &node, &image.id, &enforce);
    wait_ready(&second, &probe);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        client.try_wait().unwrap().is_none(),
        "the client ended before the rollout did: the loop did not cover it"
    );
    let report = ram_tests::stop_connect_loop(client);
    eprintln!("during the rollout: {report}");
    assert!(report["rounds"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(
        report["denied_ok"], 0,
        "a denied address got through: {report}"
    );
    assert_eq!(
        report["allowed_failed"],
        serde_json::json!({}),
        "an allowed address was refused: {report}"
    );
    let logs_second = second.logs();
    drop(first);

    // A ConfigMap update: the kubelet's `..data` swap puts a policy that also allows C in
    // force within a second, without a restart.
    assert_eq!(probe_in(&cgroup, "tcp-connect", &c(), PORT).result, "EPERM");
    node.policy
        .update(&policy(&[format!("{}/32", a()), format!("{}/32", c())]));
    let took = time_until(Duration::from_secs(3), || {
        probe_in(&cgroup, "tcp-connect", &c(), PORT).ok()
    });
    let took = took.unwrap_or_else(|| {
        panic!(
            "the updated ConfigMap was not in force within 3 s; the daemon's log:\n{}",
            second.logs()
        )
    });
    eprintln!("the ConfigMap update was in force after {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(probe_in(&cgroup, "tcp-connect", &a(), PORT).ok());
    let status = node
        .state
        .ram()
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["policy"]["reloads"], 1,
        "{}\n{logs_second}",
        status["policy"]
    );
    second.stop(grace);
}

#[test]
fn the_uninstall_hook_removes_enforcement_once_the_daemon_is_gone() {
    let daemonset = workload("ram.yaml", "ram");
    let hook = workload("ram-uninstall.yaml", "ram-uninstall");
    let container_spec = the_container(&daemonset);
    let probe = strings(&container_spec["readinessProbe"]["exec"]["command"]);
    let grace = daemonset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let shared: Vec<PathBuf> = [&daemonset, &hook]
        .iter()
        .flat_map(|w| the_container(w)["volumeMounts"].as_array().unwrap().clone())
        .filter(|m| m["mountPropagation"] == "HostToContainer")
        .map(|m| PathBuf::from(m["mountPath"].as_str().unwrap()))
        .collect();

    let cgroup = TestCgroup::new();
    let node = Node::new(&policy(&[format!("{}/32", a())]));
    let _v1 = V1Parents::new("docker");
    let _parent = EngineParent::new();
    let engine_cgroup = TestCgroup::new();
    let shared: Vec<&Path> = shared.iter().map(PathBuf::as_path).collect();
    let docker = TestDocker::start_sharing(&engine_cgroup, TestNet::PEER_V4[0].into(), &shared);
    let image = build_image(&docker);
    let enforce = vec!["--cgroup".to_owned(), cgroup.path().display().to_string()];

    let daemon = start_container(&docker, &daemonset, &node, &image.id, &enforce);
    wait_ready(&daemon, &probe);
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );

    // Helm's pre-delete hook starts while the daemon runs (Helm does not wait for a DaemonSet
    // hook, and goes on to delete the daemon's DaemonSet): its container waits while the
    // daemon holds the pin directory, leaving enforcement in place.
    let hook_container = start_container(&docker, &hook, &node, &image.id, &[]);
    let waiting = time_until(Duration::from_secs(10), || {
        hook_container
            .logs()
            .contains("uninstalling once it has stopped")
    });
    assert!(
        waiting.is_some() && hook_container.exit_code().is_none(),
        "the uninstall did not wait beside a running daemon ({:?}):\n{}",
        hook_container.exit_code(),
        hook_container.logs()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        attached_programs(cgroup.path()).len(),
        ram_tests::PROGRAMS_PER_CGROUP
    );

    // The DaemonSet deleted, the daemon stops: the hook's container removes the pins (and with
    // them every link), then stays up.
    daemon.stop(grace);
    let gone = time_until(Duration::from_secs(10), || {
        !node.state.pin_dir().exists() && attached_programs(cgroup.path()).is_empty()
    });
    assert!(
        gone.is_some(),
        "the pins are still there; the hook's log:\n{}",
        hook_container.logs()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        hook_container.exit_code(),
        None,
        "the hook's container stays up once done (a DaemonSet's pod must): {}",
        hook_container.logs()
    );
}
