//! Image Access Management end to end: a real Docker Engine asks ram's authorization plugin
//! about pulls and container creation, and pulls itself through ram's Docker Hub pull gate (its
//! `registry-mirrors` entry); Docker Hub images of a disallowed category are refused, with
//! Docker's own message where the engine passes it on. Real dockerd (Debian's docker.io) in
//! its own mount namespace; "Docker Hub" is a real docker-registry on a test host, the gate's
//! upstream.

use std::{process::Command, time::Duration};

use ram_tests::{
    Daemon, TempDir, TestCgroup, TestDocker, TestNet, audit_records, client_script, sh,
};

fn policy(verified_publishers: bool) -> String {
    format!(
        "[registry_access]\nallow = [\"docker.io\"]\n\n[image_access]\nenabled = true\n\
         official = true\nverified_publishers = {verified_publishers}\ncommunity = false\n\
         organizations = [\"mycompany\"]\nverified_publisher_namespaces = [\"somepublisher\"]\n\
         gate = \"{GATE}\"\n"
    )
}

const PLUGIN_DENIAL: &str = "Error response from daemon: authorization denied by plugin ram: ";

#[test]
fn docker_hub_images_are_judged_by_category_with_dockers_message() {
    let net = TestNet::new();
    let _dns = net.dnsmasq(&[], &[]);
    let bystander = TestCgroup::new();
    let state = Daemon::prepare(&policy(true), &[bystander.path()]);
    let socket = state.authz_socket();
    let mut daemon = state.start().unwrap();
    daemon
        .wait_for_line("Docker authorization plugin `ram`", Duration::from_secs(5))
        .unwrap();

    // Engines make their cgroup parent in the v1 hierarchies too: removed after the engine.
    let _v1 = ram_tests::V1Parents::new("docker");
    let engine_cgroup = TestCgroup::new();
    let docker = TestDocker::start_with(
        &engine_cgroup,
        TestNet::PEER_V4[0].into(),
        &[],
        &["--authorization-plugin=ram"],
        Some(&socket),
    );

    // Community: refused by the plugin, with Docker's words.
    let (ok, _, err, _) = docker.run(&["pull", "someuser/custom-image"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!("{PLUGIN_DENIAL}image access denied: community images not allowed"),
        "dockerd's log:\n{}",
        docker.log()
    );
    let (ok, _, err, _) = docker.run(&["create", "someuser/custom-image:1.0"]);
    assert!(!ok);
    assert!(
        err.contains("image access denied: community images not allowed"),
        "{err}"
    );

    // Docker Compose pulls through the same API.
    assert_compose_pull_of_a_community_image_is_refused(&docker);

    // A key given twice: dockerd reads its first value, and so does the plugin. The
    // community image first is refused; the official one first passes the plugin (and is then
    // not found, Docker Hub not existing here).
    let api_pull = |query: &str| {
        let output = Command::new("curl")
            .args(["-s", "-X", "POST", "--unix-socket"])
            .arg(docker.dir().join("docker.sock"))
            .arg(format!("http://docker/v1.41/images/create?{query}"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let out = api_pull("fromImage=someuser%2Fcustom-image&fromImage=busybox&tag=latest");
    assert!(out.contains("community images not allowed"), "{out}");
    let out = api_pull("fromImage=busybox&fromImage=someuser%2Fcustom-image&tag=latest");
    assert!(!out.contains("authorization denied"), "{out}");

    // The image in a chunked form body, its media type in mixed case: dockerd reads the form
    // (Go parses media types case-insensitively, and hands the plugin no body for a chunked
    // request), so the plugin cannot see the image: refused as unreadable.
    let output = Command::new("curl")
        .args(["-s", "-X", "POST", "--unix-socket"])
        .arg(docker.dir().join("docker.sock"))
        .args([
            "-H",
            "Content-Type: Application/X-WWW-Form-URLencoded",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "fromImage=someuser%2Fcustom-image&tag=latest",
            "http://docker/v1.41/images/create",
        ])
        .output()
        .expect("curl runs");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains("authorization denied") && out.contains("could not read the image"),
        "{out}"
    );

    // An image-ID prefix names whatever local image has that ID, whatever its repository: a
    // community image already in the engine (imported, never pulled) is not run by a prefix
    // of its ID.
    let rootfs_dir = TempDir::new();
    let rootfs = rootfs_dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    docker.import_rootfs(&rootfs, "someuser/local-only:1");
    let (ok, id, err, _) = docker.run(&["images", "-q", "--no-trunc", "someuser/local-only:1"]);
    assert!(ok, "{err}");
    let hex = id.trim().trim_start_matches("sha256:").to_owned();
    for prefix in [&hex[..4], &hex[..12]] {
        let (ok, _, err, _) = docker.run(&["create", prefix, "/bin/busybox", "true"]);
        assert!(!ok, "docker create {prefix} passed the plugin");
        assert!(err.contains("authorization denied"), "{prefix}: {err}");
    }

    // Official, organization and verified-publisher images pass the plugin (and then fail to
    // reach Docker Hub, which does not exist here).
    for image in [
        "busybox",
        "docker.io/library/busybox:1.36",
        "mycompany/app",
        "somepublisher/tool",
    ] {
        let (ok, _, err, _) = docker.run(&["pull", image]);
        assert!(!ok, "{image} was pulled from nowhere?");
        assert!(!err.contains("authorization denied"), "{image}: {err}");
    }

    // Verified publishers switched off: a policy edit, in force within a second.
    daemon.state().write_policy(&policy(false));
    daemon
        .wait_for_line("now in force", Duration::from_secs(5))
        .unwrap();
    let (ok, _, err, _) = docker.run(&["pull", "somepublisher/tool"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!("{PLUGIN_DENIAL}image access denied: verified publisher images not allowed"),
    );
    let (_, _, err, _) = docker.run(&["pull", "mycompany/app"]);
    assert!(
        !err.contains("authorization denied"),
        "organizations stay allowed: {err}"
    );

    // The audit log has the decisions.
    let records = audit_records(&daemon.audit_log);
    let denial = records
        .iter()
        .find(|r| r["image"] == "someuser/custom-image:latest")
        .unwrap_or_else(|| panic!("no image decision in {records:#?}"));
    assert_eq!(denial["verdict"], "deny");
    assert_eq!(denial["action"], "image_pull");
    assert_eq!(denial["via"], "authorization_plugin");
}

/// Where the tests' pull gate listens (not ram's default, so a ram on this machine is left be).
const GATE: &str = "127.0.0.1:455";

fn gate_policy(hub: &str, resolver: &str, verified_publishers: bool) -> String {
    format!(
        "[registry_access]\nallow = [\"docker.io\"]\nallow_loopback = false\n\n\
         [dns]\nresolvers = [\"{resolver}\"]\n\n\
         [image_access]\nenabled = true\nofficial = true\n\
         verified_publishers = {verified_publishers}\ncommunity = false\n\
         organizations = [\"mycompany\"]\nverified_publisher_namespaces = [\"somepublisher\"]\n\
         gate = \"{GATE}\"\nupstream = \"http://{hub}\"\n"
    )
}

/// `docker build` of a context whose Dockerfile is `dockerfile`; (success, output).
fn build(docker: &TestDocker, dockerfile: &str, buildkit: bool) -> (bool, String) {
    let context = TempDir::new();
    context.write("Dockerfile", dockerfile);
    context.write("note.txt", "added by the build\n");
    let output = docker
        .docker()
        .env("DOCKER_BUILDKIT", if buildkit { "1" } else { "0" })
        .args(["build", "--quiet"])
        .arg(context.path())
        .output()
        .expect("running docker build");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn pull_gate_judges_pulls_and_builds_and_docker_hub_is_reached_only_through_it() {
    let net = TestNet::new();
    let (_hub, _hub_dir, hub) = ram_tests::fake_docker_hub(
        &net,
        &[
            "library/busybox:latest",
            "mycompany/app:latest",
            "somepublisher/tool:latest",
            "someuser/custom-image:latest",
        ],
    );
    // Docker Hub's real name answers with a test host: dockerd's fallback from the mirror
    // resolves it, and must still not connect.
    let _dns = net.dnsmasq(&[("registry-1.docker.io", TestNet::PEER_V4[2].into())], &[]);
    let resolver = TestNet::PEER_V4[0].to_string();

    // Engines make their cgroup parent in the v1 hierarchies too: removed after the engine.
    let _v1 = ram_tests::V1Parents::new("docker");
    let engine_cgroup = TestCgroup::new();
    let state = Daemon::prepare(&gate_policy(&hub, &resolver, true), &[engine_cgroup.path()]);
    let socket = state.authz_socket();
    let mut daemon = state.start().unwrap();
    daemon
        .wait_for_line("Docker Hub pull gate on", Duration::from_secs(5))
        .unwrap();
    let docker = TestDocker::start_with(
        &engine_cgroup,
        TestNet::PEER_V4[0].into(),
        &[],
        &[
            "--authorization-plugin=ram",
            &format!("--registry-mirror=http://{GATE}"),
        ],
        Some(&socket),
    );
    // Pointed at the gate and asking the plugin: `ram status` has nothing to say about it.
    let warnings = daemon.status()["warnings"].clone();
    assert_eq!(warnings, serde_json::json!([]), "{warnings}");

    // Official and organization images come through the gate from the upstream.
    for image in ["busybox", "mycompany/app", "somepublisher/tool"] {
        let (ok, _, err, _) = docker.run(&["pull", image]);
        assert!(ok, "{image}: {err}\ndockerd:\n{}", docker.log());
    }
    let (ok, _, err, _) = docker.run(&["create", "--name", "probe", "busybox", "none"]);
    assert!(ok, "{err}");
    let copied = docker.dir().join("copied.txt");
    let (ok, _, err, _) = docker.run(&["cp", "probe:/hello.txt", copied.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(&copied).unwrap(),
        "this is library/busybox:latest\n"
    );

    // A community pull: the plugin refuses it with Docker's words.
    let (ok, _, err, _) = docker.run(&["pull", "someuser/custom-image"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!("{PLUGIN_DENIAL}image access denied: community images not allowed")
    );

    // Builds pull FROM inside the engine, unseen by the plugin: the gate refuses the
    // manifest, and dockerd's fallback to Docker Hub itself is refused by the kernel.
    for buildkit in [false, true] {
        let (ok, output) = build(
            &docker,
            "FROM someuser/custom-image\nCOPY note.txt /\n",
            buildkit,
        );
        assert!(!ok, "buildkit={buildkit}: the build succeeded:\n{output}");
        let (ok, output) = build(&docker, "FROM busybox\nCOPY note.txt /\n", buildkit);
        assert!(
            ok,
            "buildkit={buildkit}: an official base failed:\n{output}"
        );
    }
    let records = audit_records(&daemon.audit_log);
    let gate_denial = records
        .iter()
        .find(|r| r["via"] == "pull_gate" && r["image"] == "someuser/custom-image:latest")
        .unwrap_or_else(|| panic!("no gate decision in {records:#?}"));
    assert_eq!(gate_denial["verdict"], "deny");
    assert_eq!(
        gate_denial["reason"],
        "image access denied: community images not allowed"
    );
    // Docker Hub is withheld from the engine: its lookup of the registry never leaves the
    // host (dns.queries = "allowed"), or, for an address it knew, its connect is refused.
    assert!(
        records.iter().any(|r| r["verdict"] == "deny"
            && r["hostname"] == "registry-1.docker.io"
            && (r["comm"] == "dockerd" || r["reason"] == "query_not_allowed")),
        "dockerd's fallback to Docker Hub was not refused by the kernel: {records:#?}"
    );

    // The gate answers a registry client with the registry error DENIED and Docker's message.
    let answer = sh(
        "curl",
        &[
            "-sS",
            "-w",
            "\n%{http_code}",
            &format!("http://{GATE}/v2/someuser/custom-image/manifests/latest"),
        ],
    )
    .unwrap();
    let (body, code) = answer.trim().rsplit_once('\n').unwrap();
    assert_eq!(code, "403");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(
        body["errors"][0]["message"],
        "image access denied: community images not allowed"
    );

    // The upstream is not reachable around the gate.
    let (ok, _, err, _) = docker.run(&["pull", &format!("{hub}/someuser/custom-image")]);
    assert!(!ok);
    assert!(err.contains("operation not permitted"), "{err}");

    // Verified publishers off, by a policy edit: refused by plugin and gate alike.
    daemon
        .state()
        .write_policy(&gate_policy(&hub, &resolver, false));
    daemon
        .wait_for_line("now in force", Duration::from_secs(5))
        .unwrap();
    let (ok, _, err, _) = docker.run(&["pull", "somepublisher/tool:latest"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!("{PLUGIN_DENIAL}image access denied: verified publisher images not allowed")
    );
    let (ok, _, _, _) = docker.run(&["rmi", "somepublisher/tool"]);
    assert!(ok);
    let (ok, output) = build(&docker, "FROM somepublisher/tool\nCOPY note.txt /\n", false);
    assert!(!ok, "{output}");
    let (ok, output) = build(&docker, "FROM mycompany/app\nCOPY note.txt /\n", false);
    assert!(ok, "organizations stay allowed: {output}");

    // Docker Compose pulls through the engine API: the plugin refuses the community service.
    assert_compose_pull_of_a_community_image_is_refused(&docker);
}

/// `docker-compose pull` (Debian's) of a project whose service uses a community image fails
/// with Docker's message.
fn assert_compose_pull_of_a_community_image_is_refused(docker: &TestDocker) {
    let project = TempDir::new();
    project.write(
        "docker-compose.yml",
        "version: \"3\"\nservices:\n  app:\n    image: someuser/custom-image\n",
    );
    let output = Command::new("docker-compose")
        .current_dir(project.path())
        .env("DOCKER_HOST", docker.host())
        .arg("pull")
        .output()
        .expect("running docker-compose");
    let compose_err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{compose_err}");
    assert!(
        compose_err.contains("image access denied: community images not allowed"),
        "{compose_err}"
    );
}

/// `curl ARGS` from the test (outside every enforced cgroup): (status code, headers, body).
fn curl(args: &[&str]) -> (String, String, String) {
    let headers = TempDir::new();
    let header_file = headers.path().join("headers");
    let out = sh(
        "curl",
        &[
            &["-sS", "--path-as-is", "-D", header_file.to_str().unwrap()],
            args,
            &["-w", "\n%{http_code}"],
        ]
        .concat(),
    )
    .unwrap();
    let (body, code) = out.rsplit_once('\n').unwrap();
    let headers = std::fs::read_to_string(&header_file).unwrap_or_default();
    (code.to_owned(), headers, body.to_owned())
}

#[test]
fn pull_gate_passes_token_authentication_and_cdn_redirects_on() {
    let net = TestNet::new();
    let [_, registry, cdn] = TestNet::PEER_V4;
    let mut cmd = net.command("python3");
    cmd.arg(client_script("token_registry.py")).args([
        format!("{registry}:5001"),
        format!("{registry}:5002"),
        format!("{cdn}:5003"),
    ]);
    let _upstream = ram_tests::Background::spawn("token registry", cmd);
    for port in [5001, 5002] {
        ram_tests::wait_for_tcp(std::net::SocketAddr::new(registry.into(), port));
    }
    ram_tests::wait_for_tcp(std::net::SocketAddr::new(cdn.into(), 5003));
    let bystander = TestCgroup::new();
    let state = Daemon::prepare(
        &format!(
            "[image_access]\nenabled = true\norganizations = [\"mycompany\"]\n\
             gate = \"{GATE}\"\nupstream = \"http://{registry}:5001\"\n"
        ),
        &[bystander.path()],
    );
    let mut daemon = state.start().unwrap();
    daemon
        .wait_for_line("Docker Hub pull gate on", Duration::from_secs(5))
        .unwrap();
    let gate = format!("http://{GATE}");

    // The challenge comes back with its realm at the gate.
    let (code, headers, _) = curl(&[&format!("{gate}/v2/")]);
    assert_eq!(code, "401");
    let realm = format!("realm=\"http://{GATE}/ram/token/0\",service=\"test-hub\"");
    assert!(headers.contains(&realm), "{headers}");
    // The token request goes, with the client's credentials, to the upstream's realm.
    let scope = "service=test-hub&scope=repository:library/busybox:pull";
    let (code, _, body) = curl(&["-u", "user:secret", &format!("{gate}/ram/token/0?{scope}")]);
    assert_eq!(code, "200", "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(token["token"], "good-token");
    assert_eq!(token["query"], format!("/token?{scope}"));
    let (code, _, _) = curl(&["-u", "user:wrong", &format!("{gate}/ram/token/0?{scope}")]);
    assert_eq!(code, "401");
    let (code, _, _) = curl(&[&format!("{gate}/ram/token/7")]);
    assert_eq!(code, "404", "only realms the upstream named are served");

    // With the token: manifests, and blobs fetched from the CDN without the credentials.
    let bearer = "Authorization: Bearer good-token";
    let (code, _, body) = curl(&[
        "-H",
        bearer,
        &format!("{gate}/v2/library/busybox/manifests/1"),
    ]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("/v2/library/busybox/manifests/1"), "{body}");
    let (code, _, body) = curl(&[
        "-H",
        bearer,
        &format!("{gate}/v2/mycompany/app/blobs/sha256:ab"),
    ]);
    assert_eq!(code, "200", "{body}");
    assert_eq!(body, "layer bytes from the CDN; authorization: no\n");

    // Judged before anything is fetched; pushes and odd paths are refused.
    let (code, _, body) = curl(&[
        "-H",
        bearer,
        &format!("{gate}/v2/someuser/x/blobs/sha256:ab"),
    ]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("\"DENIED\""), "{body}");
    for (method, path) in [
        ("POST", "/v2/library/busybox/blobs/uploads/"),
        ("PUT", "/v2/library/busybox/manifests/latest"),
        ("GET", "/v2/library/../someuser/x/manifests/latest"),
        ("GET", "/v2/_catalog"),
    ] {
        let (code, _, body) = curl(&["-X", method, "-H", bearer, &format!("{gate}{path}")]);
        assert!(
            code == "404" || code == "405",
            "{method} {path}: {code} {body}"
        );
        assert!(body.contains("UNSUPPORTED"), "{method} {path}: {body}");
    }

    // A flood of requests (any local user can send them): the daemon stays responsive, and
    // the audit log gets one line for the decision and one counting its repeats.
    let (host, port) = GATE.rsplit_once(':').unwrap();
    let flood = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('{host}', {port}, timeout=10)\n\
         for i in range(2000):\n\
         \x20   c.request('GET', '/v2/someuser/flood/manifests/latest')\n\
         \x20   c.getresponse().read()\n\
         print('DONE')\n"
    );
    let output = Command::new("python3")
        .args(["-c", &flood])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "DONE",
        "{output:?}"
    );
    let started = std::time::Instant::now();
    daemon
        .ram(&["status"])
        .expect("the daemon answers after the flood");
    assert!(started.elapsed() < Duration::from_secs(2));
    let flood_lines = |daemon: &Daemon| -> Vec<serde_json::Value> {
        daemon
            .audit_records()
            .into_iter()
            .filter(|r| {
                r["image"]
                    .as_str()
                    .is_some_and(|i| i.contains("someuser/flood"))
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while flood_lines(&daemon).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let lines = flood_lines(&daemon);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0]["repeated"].is_null(), "{lines:#?}");
    let repeated = lines[1]["repeated"].as_u64().unwrap_or(0);
    assert!(repeated >= 1999 - 10, "{lines:#?}");
}

/// One local user cannot take the gate's connections: another user's share is bounded, and
/// root (dockerd) is still answered at once while the flood holds its connections open.
#[test]
fn one_local_user_cannot_starve_the_pull_gate() {
    let bystander = TestCgroup::new();
    let state = Daemon::prepare(
        &format!(
            "[image_access]\nenabled = true\ngate = \"{GATE}\"\nupstream = \"http://127.0.0.1:9\"\n"
        ),
        &[bystander.path()],
    );
    let mut daemon = state.start().unwrap();
    daemon
        .wait_for_line("Docker Hub pull gate on", Duration::from_secs(5))
        .unwrap();
    let (host, port) = GATE.rsplit_once(':').unwrap();
    let (mut flood, open) = ram_tests::hold_connections_as_nobody(host, port, 200);
    assert!(open <= 32, "one user kept {open} connections");
    // Root, meanwhile: answered at once (the denial of a community image, judged locally).
    let started = std::time::Instant::now();
    let (code, _, body) = curl(&[&format!("http://{GATE}/v2/someuser/x/manifests/latest")]);
    assert_eq!(code, "403", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(flood.stdin.take());
    let _ = flood.wait();
}

/// containerd (with `ctr`, which pulls itself, as the CRI plugin does inside containerd) and
/// Podman, pointed at the pull gate with the files `ram image-access config` prints: official
/// and organization images pull from the upstream through the gate, a community image is
/// refused with Docker's message where the engine shows it, and the upstream is not reachable
/// around the gate. No dockerd anywhere.
#[test]
fn containerd_and_podman_pull_docker_hub_images_through_the_gate() {
    let net = TestNet::new();
    let hub_ip = TestNet::PEER_V4[1];
    let (_hub, _hub_dir, hub) = ram_tests::fake_docker_hub(
        &net,
        &[
            "library/busybox:latest",
            "mycompany/app:latest",
            "someuser/custom-image:latest",
        ],
    );
    let _dns = net.dnsmasq(&[("registry-1.docker.io", TestNet::PEER_V4[2].into())], &[]);
    let resolver = TestNet::PEER_V4[0].to_string();

    let engine_cgroup = TestCgroup::new();
    // With the metrics endpoint on: the gate's decisions are counted there too.
    let metrics_listen = "127.0.0.1:9476";
    let state = Daemon::prepare(
        &format!(
            "{}\n[metrics]\nlisten = \"{metrics_listen}\"\n",
            gate_policy(&hub, &resolver, true)
        ),
        &[engine_cgroup.path()],
    );
    let policy_file = state.policy_path();
    let mut daemon = state.start().unwrap();
    daemon
        .wait_for_line("Docker Hub pull gate on", Duration::from_secs(5))
        .unwrap();
    let config = |engine: &str| {
        daemon
            .ram(&[
                "image-access",
                "config",
                engine,
                "--policy",
                policy_file.to_str().unwrap(),
            ])
            .unwrap()
    };

    // containerd: hosts.toml in a hosts directory, which its CRI plugin is given too (so that
    // `ram status` finds the gate configured).
    let hosts = TempDir::new();
    std::fs::create_dir_all(hosts.path().join("docker.io")).unwrap();
    hosts.write("docker.io/hosts.toml", &config("containerd"));
    let engine_net = ram_tests::EngineNet::new();
    // First a containerd left as installed (no registry config_path): `ram status` names it.
    let unconfigured = ram_tests::TestContainerd::start(&engine_cgroup, &engine_net);
    let warnings = daemon.status()["warnings"].to_string();
    assert!(
        warnings.contains("containerd (pid")
            && warnings.contains("/etc/containerd/certs.d/docker.io/hosts.toml"),
        "{warnings}"
    );
    drop(unconfigured);
    let containerd = ram_tests::TestContainerd::start_with(
        &engine_cgroup,
        &engine_net,
        &format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{}\"\n",
            hosts.path().display()
        ),
    );
    let ctr_pull = |image: &str, extra: &[&str]| {
        let mut cmd = engine_cgroup.command("ctr");
        cmd.arg(format!(
            "--address={}",
            containerd.dir().join("containerd.sock").display()
        ))
        .args(["image", "pull", "--hosts-dir"])
        .arg(hosts.path())
        .args(extra)
        .arg(image);
        let output = cmd.output().expect("running ctr");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    for image in [
        "docker.io/library/busybox:latest",
        "docker.io/mycompany/app:latest",
    ] {
        let (ok, output) = ctr_pull(image, &[]);
        assert!(ok, "{image}: {output}\ncontainerd:\n{}", containerd.log());
    }
    let (ok, output) = ctr_pull("docker.io/someuser/custom-image:latest", &[]);
    assert!(!ok, "a community image was pulled: {output}");
    assert!(
        output.contains("403 image access denied: community images not allowed"),
        "{output}"
    );
    // The upstream by address, around the gate: refused by the kernel.
    let (ok, output) = ctr_pull(
        &format!("{hub}/someuser/custom-image:latest"),
        &["--plain-http"],
    );
    assert!(!ok, "{output}");
    assert!(output.contains("operation not permitted"), "{output}");

    // ram enforces this containerd and finds it pointed at the gate: no warning about it.
    let warnings = daemon.status()["warnings"].to_string();
    assert!(!warnings.contains("containerd"), "{warnings}");

    // Podman, with the registries.conf ram prints.
    let podman = ram_tests::TestPodman::new(&engine_cgroup, &engine_net, resolver.parse().unwrap());
    let registries = podman.dir().join("registries.conf");
    std::fs::write(&registries, config("podman")).unwrap();
    let podman_pull = |image: &str, extra: &[&str]| {
        let output = podman
            .podman_host_network()
            .env("CONTAINERS_REGISTRIES_CONF", &registries)
            .arg("pull")
            .args(extra)
            .arg(image)
            .output()
            .expect("running podman");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    for image in [
        "docker.io/library/busybox:latest",
        "docker.io/mycompany/app:latest",
    ] {
        let (ok, err) = podman_pull(image, &[]);
        assert!(ok, "{image}: {err}");
    }
    let (ok, err) = podman_pull("docker.io/someuser/custom-image:latest", &[]);
    assert!(!ok, "a community image was pulled: {err}");
    assert!(
        err.contains("image access denied: community images not allowed"),
        "{err}"
    );
    let (ok, err) = podman_pull(
        &format!("{hub}/someuser/custom-image:latest"),
        &["--tls-verify=false"],
    );
    assert!(!ok, "{err}");
    assert!(err.contains("operation not permitted"), "{err}");

    // The metrics count the gate's decisions by image kind.
    let scrape = sh(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            &format!("http://{metrics_listen}/metrics"),
        ],
    )
    .unwrap();
    for series in [
        "ram_image_decisions_total{kind=\"community\",verdict=\"deny\",via=\"pull_gate\"}",
        "ram_image_decisions_total{kind=\"official\",verdict=\"allow\",via=\"pull_gate\"}",
        "ram_image_decisions_total{kind=\"organization\",verdict=\"allow\",via=\"pull_gate\"}",
    ] {
        assert!(
            scrape.lines().any(|line| line
                .strip_prefix(series)
                .and_then(|count| count.trim().parse::<u64>().ok())
                .is_some_and(|count| count >= 1)),
            "{series} missing or 0:\n{scrape}"
        );
    }

    // Every decision is the gate's, audited; the upstream by address is the kernel's.
    let records = audit_records(&daemon.audit_log);
    let gate_denials: Vec<_> = records
        .iter()
        .filter(|r| {
            r["via"] == "pull_gate"
                && r["verdict"] == "deny"
                && r["image"] == "someuser/custom-image:latest"
        })
        .collect();
    assert!(!gate_denials.is_empty(), "{records:#?}");
    let upstream = hub_ip.to_string();
    for comm in ["ctr", "podman"] {
        assert!(
            records.iter().any(|r| r["verdict"] == "deny"
                && r["dst_addr"] == upstream.as_str()
                && r["comm"] == comm),
            "no kernel denial of {comm}'s connection to the upstream: {records:#?}"
        );
    }
}

/// Repository exceptions (`image_access.allow_repositories`): a listed community repository
/// comes through the gate from the upstream, while another repository of its namespace is
/// refused with Docker's message; the audit log names the exception that allowed the pull,
/// and `ram check IMAGE` (answered by the daemon) says so too.
#[test]
fn a_repository_exception_lets_its_repository_through_the_gate_and_no_other() {
    let net = TestNet::new();
    let (_hub, _hub_dir, hub) =
        ram_tests::fake_docker_hub(&net, &["someuser/tool:latest", "someuser/other:latest"]);
    let _dns = net.dnsmasq(&[], &[]);
    let resolver = TestNet::PEER_V4[0].to_string();
    let bystander = TestCgroup::new();
    // gate_policy ends inside [image_access]: the key belongs there.
    let state = Daemon::prepare(
        &format!(
            "{}allow_repositories = [\"someuser/tool\"]\n",
            gate_policy(&hub, &resolver, true)
        ),
        &[bystander.path()],
    );
    let mut daemon = state.start().unwrap();
    daemon
        .wait_for_line("Docker Hub pull gate on", Duration::from_secs(5))
        .unwrap();
    let gate = format!("http://{GATE}");
    let accept = "Accept: application/vnd.docker.distribution.manifest.v2+json";

    // The listed repository: its manifest and blobs come from the upstream.
    let (code, _, body) = curl(&[
        "-H",
        accept,
        &format!("{gate}/v2/someuser/tool/manifests/latest"),
    ]);
    assert_eq!(code, "200", "{body}");
    let manifest: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let config = manifest["config"]["digest"].as_str().unwrap();
    let (code, _, body) = curl(&[&format!("{gate}/v2/someuser/tool/blobs/{config}")]);
    assert_eq!(code, "200", "{body}");

    // Another repository of the same namespace, which the upstream has too: refused.
    for path in [
        "/v2/someuser/other/manifests/latest".to_owned(),
        format!("/v2/someuser/other/blobs/{config}"),
    ] {
        let (code, _, body) = curl(&["-H", accept, &format!("{gate}{path}")]);
        assert_eq!(code, "403", "{path}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        assert_eq!(
            body["errors"][0]["message"],
            "image access denied: community images not allowed"
        );
    }

    // The audit log: the allowed pull keeps its category and names the exception; the denial
    // names none.
    let find = |image: &str| -> Option<serde_json::Value> {
        daemon
            .audit_records()
            .into_iter()
            .find(|r| r["via"] == "pull_gate" && r["action"] == "manifests" && r["image"] == image)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (find("someuser/tool:latest").is_none() || find("someuser/other:latest").is_none())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let allowed = find("someuser/tool:latest").unwrap_or_else(|| {
        panic!(
            "no decision on someuser/tool: {:#?}",
            daemon.audit_records()
        )
    });
    assert_eq!(allowed["verdict"], "allow", "{allowed}");
    assert_eq!(allowed["reason"], "community", "{allowed}");
    assert_eq!(allowed["exception"], "someuser/tool", "{allowed}");
    let denied = find("someuser/other:latest").unwrap_or_else(|| {
        panic!(
            "no decision on someuser/other: {:#?}",
            daemon.audit_records()
        )
    });
    assert_eq!(denied["verdict"], "deny", "{denied}");
    assert_eq!(
        denied["reason"],
        "image access denied: community images not allowed"
    );
    assert!(denied.get("exception").is_none(), "{denied}");

    // `ram check IMAGE`, in text and JSON.
    let text = daemon.ram(&["check", "someuser/tool"]).unwrap();
    assert!(
        text.starts_with(
            "docker.io/someuser/tool:latest: Docker Hub, community image: allowed by exception \
             `someuser/tool`"
        ),
        "{text}"
    );
    let answer: serde_json::Value =
        serde_json::from_str(&daemon.ram(&["check", "--json", "someuser/tool"]).unwrap()).unwrap();
    assert_eq!(answer["reference"], "docker.io/someuser/tool:latest");
    assert_eq!(answer["docker_hub"], true);
    assert_eq!(answer["category"], "community");
    assert_eq!(answer["allowed"], true);
    assert_eq!(answer["exception"], "someuser/tool");
    let answer: serde_json::Value =
        serde_json::from_str(&daemon.ram(&["check", "--json", "someuser/other"]).unwrap()).unwrap();
    assert_eq!(answer["allowed"], false, "{answer}");
    assert_eq!(
        answer["message"],
        "image access denied: community images not allowed"
    );
    assert!(answer["exception"].is_null(), "{answer}");
    let text = daemon.ram(&["check", "--image", "busybox"]).unwrap();
    assert!(
        text.starts_with("docker.io/library/busybox:latest: Docker Hub, official image: allowed"),
        "{text}"
    );
    // A host is still a host.
    let answer: serde_json::Value =
        serde_json::from_str(&daemon.ram(&["check", "--json", "docker.io"]).unwrap()).unwrap();
    assert_eq!(answer["host"], "docker.io", "{answer}");
}

/// Image access with push control: pushes may go to the test registry's `mycompany/*` only.
fn push_policy(registry: &str, registry_ip: &str, resolver: &str) -> String {
    format!(
        "[registry_access]\nallow = [\"docker.io\"]\nallow_cidrs = [\"{registry_ip}/32\"]\n\
         push = [\"{registry}/mycompany/*\"]\n\n\
         [dns]\nresolvers = [\"{resolver}\"]\n\n\
         [image_access]\nenabled = true\ngate = \"{GATE}\"\nupstream = \"http://{registry}\"\n"
    )
}

#[test]
fn pushes_go_only_where_registry_access_push_allows() {
    let net = TestNet::new();
    // A real docker-registry on test host B, empty: the destination of the pushes.
    let (_registry, _registry_dir, registry) = ram_tests::fake_docker_hub(&net, &[]);
    let _dns = net.dnsmasq(&[], &[]);
    let resolver = TestNet::PEER_V4[0].to_string();
    let registry_ip = TestNet::PEER_V4[1].to_string();

    let _v1 = ram_tests::V1Parents::new("docker");
    let engine_cgroup = TestCgroup::new();
    let state = Daemon::prepare(
        &push_policy(&registry, &registry_ip, &resolver),
        &[engine_cgroup.path()],
    );
    let socket = state.authz_socket();
    let mut daemon = state.start().unwrap();
    daemon
        .wait_for_line("Docker authorization plugin `ram`", Duration::from_secs(5))
        .unwrap();
    let docker = TestDocker::start_with(
        &engine_cgroup,
        TestNet::PEER_V4[0].into(),
        &[&registry],
        &["--authorization-plugin=ram"],
        Some(&socket),
    );

    // A local image (imported, never pulled), tagged for both destinations.
    let rootfs_dir = TempDir::new();
    let rootfs = rootfs_dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    let allowed = format!("{registry}/mycompany/tool:1");
    let refused = format!("{registry}/other/x:1");
    docker.import_rootfs(&rootfs, &allowed);
    let (ok, _, err, _) = docker.run(&["tag", &allowed, &refused]);
    assert!(ok, "{err}");

    // Allowed: pushed, and the registry has it.
    let (ok, _, err, _) = docker.run(&["push", &allowed]);
    assert!(ok, "{err}\ndockerd:\n{}", docker.log());
    let (code, _, body) = curl(&[&format!("http://{registry}/v2/mycompany/tool/tags/list")]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"1\""), "{body}");

    // Not listed: refused by the plugin with Docker's words, and nothing arrives.
    let (ok, _, err, _) = docker.run(&["push", &refused]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!("{PLUGIN_DENIAL}registry access denied: pushes to {registry}/other/x not allowed"),
        "dockerd's log:\n{}",
        docker.log()
    );
    let (code, _, catalog) = curl(&[&format!("http://{registry}/v2/_catalog")]);
    assert_eq!(code, "200", "{catalog}");
    assert!(
        catalog.contains("mycompany/tool") && !catalog.contains("other/x"),
        "{catalog}"
    );
    let (code, _, body) = curl(&[&format!("http://{registry}/v2/other/x/tags/list")]);
    assert_eq!(code, "404", "{body}");

    // Both decisions are audited.
    let records = audit_records(&daemon.audit_log);
    let pushes: Vec<_> = records
        .iter()
        .filter(|r| r["action"] == "image_push")
        .collect();
    let allow = pushes
        .iter()
        .find(|r| r["image"] == allowed.as_str())
        .unwrap_or_else(|| panic!("no allowed push in {records:#?}"));
    assert_eq!(allow["verdict"], "allow");
    assert_eq!(allow["via"], "authorization_plugin");
    let deny = pushes
        .iter()
        .find(|r| r["image"] == refused.as_str())
        .unwrap_or_else(|| panic!("no refused push in {records:#?}"));
    assert_eq!(deny["verdict"], "deny");
    assert_eq!(deny["via"], "authorization_plugin");
    assert_eq!(
        deny["reason"],
        format!("registry access denied: pushes to {registry}/other/x not allowed")
    );
}
