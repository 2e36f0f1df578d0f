//! The Docker integration: image references and their categories (Image Access Management),
//! the engine's authorization plugin and the Docker Hub pull gate.
//!
//! - [`reference`]: the one grammar of image references (the distribution spec's), Docker's
//!   normalization;
//! - [`image_access`]: categories and the judgement of the policy's `[image_access]`;
//! - [`authz`]: the authorization plugin;
//! - [`gate`]: the pull gate (hyper over TCP).

pub mod authz;
pub mod gate;
pub mod image_access;
pub mod reference;
