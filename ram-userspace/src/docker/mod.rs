//! The Docker integration: image references and their categories (Image Access Management),
//! the engine's authorization plugin and the Docker Hub pull gate.

pub mod authz;
pub mod gate;
pub mod image_access;
pub mod reference;
