//! `ram check HOST|IMAGE`: whether the policy in force allows a host, and by which entry; or
//! what image access decides about an image reference. The daemon answers both, from the
//! policy it enforces.
//!
//! Which one an argument is (docs/operations.md): an image reference when it has a `/` or an
//! `@` (no host has either), or a `:` followed by something other than a port number
//! (`busybox:1.36`, `redis:alpine`) and is not an IP address; a host otherwise (`ghcr.io`,
//! `registry.corp.example:5000`, `localhost`, `192.0.2.7`, `2001:db8::1`, `[::1]`). A bare
//! name (`busybox`) is a host: `--image` makes it an image (Docker Hub's official one).

use std::{net::IpAddr, path::Path};

use anyhow::{Result, bail};
use ram::daemon::control::{self, Request, Response};

/// What `ram check ARG` asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Host,
    Image,
}

/// The rule of the module's doc.
fn classify(arg: &str) -> Target {
    if arg.contains(['/', '@']) {
        return Target::Image;
    }
    if arg
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        return Target::Host;
    }
    match arg.rsplit_once(':') {
        Some((_, after)) if after.is_empty() || !after.bytes().all(|b| b.is_ascii_digit()) => {
            Target::Image
        }
        _ => Target::Host,
    }
}

pub fn run(run_dir: &Path, target: String, image: bool, json: bool) -> Result<()> {
    if image || classify(&target) == Target::Image {
        return run_image(run_dir, target, json);
    }
    let Response::Check(answer) = control::ask(run_dir, &Request::Check { host: target })? else {
        bail!("the daemon answered something else than a check");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if answer.allowed {
        println!(
            "{}: allowed by {} entry `{}`{}: {}",
            answer.host,
            answer.kind.as_deref().unwrap_or("?"),
            answer.rule.as_deref().unwrap_or("?"),
            answer
                .rule_index
                .map(|i| format!(" (#{i})"))
                .unwrap_or_default(),
            answer.explanation
        );
    } else {
        println!("{}: denied: {}", answer.host, answer.explanation);
    }
    Ok(())
}

/// `ram check IMAGE`: asked of the daemon (not read from `<run dir>/policy.toml`), so that the
/// answer is what the authorization plugin and the pull gate apply now, as `ram check HOST`'s
/// is what the kernel applies.
fn run_image(run_dir: &Path, image: String, json: bool) -> Result<()> {
    let Response::CheckImage(answer) = control::ask(run_dir, &Request::CheckImage { image })?
    else {
        bail!("the daemon answered something else than an image check");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let name = answer.reference.as_deref().unwrap_or(&answer.image);
    let kind = match (&answer.category, &answer.registry) {
        (Some(category), _) => format!("Docker Hub, {} image", category.replace('_', " ")),
        (None, Some(registry)) => format!("registry {registry}, not Docker Hub"),
        (None, None) => "not an image reference".to_owned(),
    };
    let verdict = match (&answer.exception, &answer.message) {
        (Some(entry), _) => format!("allowed by exception `{entry}`"),
        (None, _) if answer.allowed => "allowed".to_owned(),
        (None, Some(message)) => format!("denied: {message}"),
        (None, None) => "denied".to_owned(),
    };
    println!("{name}: {kind}: {verdict} ({})", answer.explanation);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_image_references_are_told_apart() {
        for host in [
            "ghcr.io",
            "GHCR.IO.",
            "registry.corp.example:5000",
            "localhost",
            "localhost:5000",
            "busybox",
            "*.harbor.example",
            "192.0.2.7",
            "2001:db8::1",
            "fd00::abcd",
            "[::1]",
            "::ffff:10.1.2.3",
        ] {
            assert_eq!(classify(host), Target::Host, "{host}");
        }
        for image in [
            "someuser/tool",
            "somepublisher/tool:1.0",
            "docker.io/library/busybox",
            "busybox:1.36",
            "redis:alpine",
            "busybox@sha256:0123",
            "ghcr.io/org/x",
            "localhost:5000/x",
            "registry.corp.example:5000/team/app:v2",
            "x:",
        ] {
            assert_eq!(classify(image), Target::Image, "{image}");
        }
    }
}
