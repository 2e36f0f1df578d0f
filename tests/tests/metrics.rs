//! The Prometheus endpoint (`[metrics] listen`), scraped with curl while real traffic runs: a
//! real dnsmasq answering dig, connections allowed and denied by the kernel, policy edits.
//! Each family is present, its values move with the traffic, and no label carries an address,
//! a pid or a container id.

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use ram_tests::{Daemon, TestCgroup, TestNet, peers::*, probe_in, sh};

/// Not Prometheus' usual 9464, so that a ram on this machine is left be.
const LISTEN: &str = "127.0.0.1:9474";

const FAMILIES: [&str; 9] = [
    "ram_decisions_total",
    "ram_dns_answers_total",
    "ram_learned_addresses",
    "ram_map_entries",
    "ram_map_capacity",
    "ram_events_lost_total",
    "ram_policy_reloads_total",
    "ram_policy_info",
    "ram_image_decisions_total",
];

fn policy(names: &[&str], listen: &str) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[registry_access]\nallow = [{}]\nallow_loopback = false\n[dns]\nresolvers = [\"{}\"]\n\
         [metrics]\nlisten = \"{listen}\"\n",
        names.join(", "),
        a()
    )
}

fn scrape() -> String {
    sh(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            &format!("http://{LISTEN}/metrics"),
        ],
    )
    .expect("the metrics endpoint answers")
}

/// The sum of the samples of `family` whose labels contain every one of `labels`.
fn sum(text: &str, family: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split(['{', ' '])
                .next()
                .is_some_and(|name| name == family)
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes until `check` holds (the event loop counts audited decisions a moment after the
/// kernel made them), at most 5 s; returns the last scrape.
fn scrape_until(what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape();
        if check(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 5 s\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_move_with_dns_answers_and_denials_and_carry_no_addresses() {
    let net = TestNet::new();
    let _http = net.http_server(HTTP_PORT);
    let _dns = net.dnsmasq(
        &[
            ("registry.test", TestNet::PEER_V4[1].into()),
            ("other.test", TestNet::PEER_V4[2].into()),
        ],
        &[],
    );
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(&policy(&["registry.test"], LISTEN), &[cgroup.path()]).unwrap();
    daemon
        .wait_for_line("Prometheus endpoint on", Duration::from_secs(5))
        .unwrap();

    let first = scrape();
    for family in FAMILIES {
        assert!(
            first.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{first}"
        );
    }
    let sha = daemon.status()["policy"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        sum(&first, "ram_policy_info", &[&format!("sha256=\"{sha}\"")]),
        1.0,
        "{first}"
    );

    // A DNS answer for an allowed name: learned, and counted.
    assert_eq!(
        ram_tests::dig_in(&cgroup, &a(), "registry.test", "A", 2, &[]),
        b()
    );
    let learned = scrape_until("the answer counted", |text| {
        sum(text, "ram_dns_answers_total", &["result=\"learned\""])
            > sum(&first, "ram_dns_answers_total", &["result=\"learned\""])
    });
    assert!(
        sum(&learned, "ram_learned_addresses", &[]) >= 1.0,
        "{learned}"
    );
    assert!(
        sum(&learned, "ram_map_entries", &["map=\"learned\""]) >= 1.0,
        "{learned}"
    );
    assert!(
        sum(&learned, "ram_map_capacity", &["map=\"learned\""]) >= 1.0,
        "{learned}"
    );

    // An allowed connection to it, and denied ones to an address nobody taught.
    assert_eq!(
        probe_in(&cgroup, "tcp-connect", &b(), HTTP_PORT).result,
        "ok"
    );
    for _ in 0..3 {
        assert_eq!(
            probe_in(&cgroup, "tcp-connect", &c(), HTTP_PORT).result,
            "EPERM"
        );
    }
    let after = scrape_until("the denials counted", |text| {
        sum(text, "ram_decisions_total", &["verdict=\"deny\""])
            >= sum(&learned, "ram_decisions_total", &["verdict=\"deny\""]) + 3.0
    });
    assert!(
        sum(
            &after,
            "ram_decisions_total",
            &["verdict=\"allow\"", "reason=\"learned\""]
        ) > sum(
            &learned,
            "ram_decisions_total",
            &["verdict=\"allow\"", "reason=\"learned\""]
        ),
        "{after}"
    );
    assert!(
        sum(
            &after,
            "ram_decisions_total",
            &["verdict=\"deny\"", "reason=\"not_learned\""]
        ) >= 3.0,
        "{after}"
    );
    // Bounded labels: no address, pid or cgroup path.
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        for leak in ["198.51.100.", "2001:db8", "pid", "cgroup", "/"] {
            assert!(!line.contains(leak), "`{leak}` in a label: {line}");
        }
    }

    // A valid edit, then a broken one: counted by result; the hash follows the policy in force.
    daemon
        .state()
        .write_policy(&policy(&["registry.test", "other.test"], LISTEN));
    daemon
        .wait_for_line("now in force", Duration::from_secs(5))
        .unwrap();
    daemon.state().write_policy("[registry_access\n");
    daemon
        .wait_for_line("REJECTED", Duration::from_secs(5))
        .unwrap();
    let reloaded = scrape();
    assert_eq!(
        sum(&reloaded, "ram_policy_reloads_total", &["result=\"ok\""]),
        1.0,
        "{reloaded}"
    );
    assert_eq!(
        sum(
            &reloaded,
            "ram_policy_reloads_total",
            &["result=\"rejected\""]
        ),
        1.0,
        "{reloaded}"
    );
    let new_sha = daemon.status()["policy"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_sha, sha);
    assert_eq!(
        sum(
            &reloaded,
            "ram_policy_info",
            &[&format!("sha256=\"{new_sha}\"")]
        ),
        1.0,
        "{reloaded}"
    );

    // One local user holding idle connections: their share is bounded, and the scrape (root's)
    // is answered at once meanwhile.
    let (host, port) = LISTEN.rsplit_once(':').unwrap();
    let (mut holder, open) = ram_tests::hold_connections_as_nobody(host, port, 200);
    assert!(open <= 32, "one user kept {open} connections");
    let started = std::time::Instant::now();
    assert!(scrape().contains("# TYPE ram_decisions_total counter"));
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(holder.stdin.take());
    let _ = holder.wait();

    // Moved to a Unix socket (root only) by an edit: the port closes.
    let socket = daemon.state().run_dir().join("metrics.sock");
    daemon.state().write_policy(&policy(
        &["registry.test"],
        &format!("unix:{}", socket.display()),
    ));
    daemon
        .wait_for_line("Prometheus endpoint on unix:", Duration::from_secs(5))
        .unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let over_unix = sh(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--unix-socket",
            socket.to_str().unwrap(),
            "http://ram/metrics",
        ],
    )
    .unwrap();
    assert!(over_unix.contains("# TYPE ram_decisions_total counter"));
    assert!(
        sh(
            "curl",
            &[
                "-sS",
                "--max-time",
                "2",
                &format!("http://{LISTEN}/metrics")
            ]
        )
        .is_err(),
        "the TCP endpoint still answers"
    );
    drop(daemon);
    assert!(!socket.exists(), "the socket outlived the daemon");
}
