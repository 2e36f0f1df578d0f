//! What the programs report (denials, allowed connections, learned addresses, lost events) and
//! the image decisions of the Docker servers, turned into audit records and log lines.
//!
//! - `ring`: reading the programs' ring buffers;
//! - `records`: the audit log's JSON lines (the schema of docs/audit.md);
//! - `answers`: decoding the DNS answers the kernel learned from, to name addresses;
//! - `names`: hostnames per address and policy entries per rule id, for readers of logs;
//! - `repeats`: folding repeated image decisions into one line;
//! - `sink`: where records go (a file only root can redirect, or stdout);
//! - `auditor`: the one place that turns events into records;
//! - `metrics`: the Prometheus metrics the auditor and the daemon count into.

pub mod answers;
pub mod auditor;
pub mod metrics;
pub mod names;
pub mod records;
pub mod repeats;
pub mod ring;
pub mod sink;
