//! `ram image-access config ENGINE`: the engine configuration that sends its Docker Hub pulls
//! through ram's pull gate, for the policy given, in force, or embedded.

use std::path::Path;

use anyhow::{Context as _, Result};
use ram::{
    daemon::control,
    docker::engines::{self, Engine},
    policy::{Policy, PolicySource},
};

pub fn config(engine: Engine, policy_file: Option<&Path>, run_dir: &Path) -> Result<()> {
    let policy = match policy_file {
        Some(file) => Policy::from_file(file)?,
        None => {
            let copy = run_dir.join(control::POLICY_COPY_NAME);
            match std::fs::read_to_string(&copy) {
                Ok(text) => Policy::from_toml(&text, &PolicySource::File(copy.clone()))
                    .with_context(|| format!("the policy in force ({})", copy.display()))?,
                // No daemon has run: the embedded default (what `ram daemon` would enforce).
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    Policy::embedded_default()
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot read {}", copy.display()));
                }
            }
        }
    };
    if !policy.image_access.enabled {
        eprintln!(
            "note: image access is off in this policy (`[image_access] enabled = false`): the \
             gate does not run until it is on"
        );
    }
    print!("{}", engines::snippet(engine, &policy.image_access));
    Ok(())
}
