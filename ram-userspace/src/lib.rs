//! The `ram` daemon's library: policy, compilation into map entries, cgroups, loading and
//! attaching the eBPF programs, and audit records. `src/main.rs` is the CLI on top.

pub mod answers;
pub mod audit;
pub mod authz;
pub mod bpf;
pub mod cgroup;
pub mod compile;
pub mod image;
pub mod image_gate;
pub mod notify;
pub mod policy;
pub mod presets;
pub mod probe;
pub mod programs;
pub mod protect;
pub mod resolv;
pub mod scope;
pub mod watch;
