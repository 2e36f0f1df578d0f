//! The kernel side as user space sees it: ram's eBPF object, its maps (filled from a compiled
//! policy), the programs' links on enforced cgroups, all pinned under bpffs so enforcement
//! outlives the daemon; and the start-up probe that refuses a kernel lacking a feature.

mod enforcer;
pub mod probe;

pub use enforcer::*;
