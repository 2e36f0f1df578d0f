//! The kernel side as user space sees it: ram's eBPF object, its maps (filled from a compiled
//! policy), the programs' links on enforced cgroups, all pinned under bpffs so enforcement
//! outlives the daemon; and the start-up probe that refuses a kernel lacking a feature.
//!
//! - `object.rs`: the embedded object, the program tables ([`GATES`], [`SNOOPERS`],
//!   [`ANSWER_RR`]), loading (a verifier refusal names the program);
//! - `pins.rs`: the pinned state's layout ([`PinDir`]), the one-daemon lock, [`uninstall`];
//! - `maps.rs`: typed map access, sizes, the one refill helper;
//! - `attach.rs`: links on cgroups: attach, update, release, repair;
//! - `enforcer.rs`: [`Enforcer`]: open (adopting pinned state), apply a policy, read the maps;
//! - `error.rs`: [`EnforceError`];
//! - [`probe`]: the start-up probe, every kernel feature ram needs by name.
//!
//! Dependencies point one way: `probe` uses only [`crate::sys`]; `object` uses `probe` (the
//! kernel's release, for verifier errors); `enforcer` and `attach` use the rest.

mod attach;
mod enforcer;
mod error;
mod maps;
mod object;
mod pins;
pub mod probe;

pub use enforcer::{ApplyReport, Enforcer, OpenReport};
pub use error::{EnforceError, RefillStep};
pub use maps::KernelReader;
pub use object::{
    ANSWER_RR, GATES, Gate, SNOOPERS, SOCKET_GATE, SOCKOPT_GATE, Snooper, attached_programs,
    family_gate_loaded, program_names,
};
pub use pins::{DEFAULT_PIN_DIR, PinDir, Removed, uninstall};
