//! The Docker integration: image references and their categories (Image Access Management),
//! the engine's authorization plugin and the Docker Hub pull gate.
//!
//! - `policy::reference`: the one grammar of image references (the distribution spec's),
//!   Docker's normalization, shared with the policy's repository exceptions;
//! - [`image_access`]: categories and the judgement of the policy's `[image_access]`;
//! - [`authz`]: the authorization plugin (hyper over a Unix socket);
//! - [`gate`]: the pull gate (hyper over TCP);
//! - [`engines`]: the configuration that points each engine at the gate;
//! - [`engine_check`]: which enforced engines are not pointed at it (`ram status`).
//!
//! The plugin and the gate are served on one runtime of their own, on a thread of its own,
//! which `daemon/docker_servers.rs` starts and owns: never on the daemon's event loop.

use std::sync::Arc;

use crate::events::records::ImageDecision;

pub mod authz;
pub mod engine_check;
pub mod engines;
pub mod gate;
pub mod image_access;

/// Where the plugin and the gate send their decisions (to the daemon's event loop, for the audit
/// log). Called on the Docker servers' runtime: must not block.
pub type Decisions = Arc<dyn Fn(ImageDecision) + Send + Sync>;
