//! The `ram` daemon's library, laid out along the path of a decision:
//!
//! - [`policy`]: what the operator wrote (model, parsing, patterns, presets, image rules,
//!   protection of the file, the host's resolvers);
//! - [`compile`]: the policy turned into the entries of the kernel maps;
//! - [`sys`]: the raw system calls aya does not wrap (the only module with `libc` calls);
//! - [`cgroups`]: cgroup v2 directories and the policy's `[scope]` (which cgroups to enforce);
//! - [`kernel`]: the eBPF object, its pinned maps and links, attaching, the start-up probe;
//! - [`events`]: what the programs report, turned into audit records and log lines;
//! - [`docker`]: the Docker integration (image references, the authorization plugin, the
//!   pull gate);
//! - [`daemon`]: the process that wires them together (event loop, reload, housekeeping,
//!   control socket).
//!
//! `src/main.rs` and `src/cli/` are the command line on top. docs/architecture.md has the tree
//! with one line per module and where new features go.

pub mod cgroups;
pub mod compile;
pub mod daemon;
pub mod docker;
pub mod events;
pub mod kernel;
pub mod policy;
pub mod sys;

/// An error and its sources, `outer: inner: innermost`, as one line for logs and the control
/// socket (what anyhow's `{:#}` prints at the binary's edge).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
