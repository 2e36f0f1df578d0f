//! `ram check HOST`: whether the policy in force allows a host, and by which entry.

use std::path::Path;

use anyhow::{Result, bail};
use ram::daemon::control::{self, Request, Response};

pub fn run(run_dir: &Path, host: String, json: bool) -> Result<()> {
    let Response::Check(answer) = control::ask(run_dir, &Request::Check { host })? else {
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
