//! `ram exec`: runs a command inside a cgroup a running daemon enforces (and refuses one that no
//! daemon enforces: the command would run unrestricted).

use std::{collections::HashMap, os::unix::process::CommandExt as _};

use anyhow::{Context as _, Result, bail};
use ram::{
    cgroups::{self, CgroupDir},
    kernel::GATES,
    sys,
};

use super::ExecArgs;

pub fn run(args: ExecArgs) -> Result<()> {
    let mount = cgroups::cgroup2_mount()?;
    let dir = CgroupDir::resolve(&mount, &args.cgroup)?;
    ensure_enforced(&dir)?;
    dir.add_process(std::process::id())?;
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given; usage: ram exec -- CMD [ARGS]...")?;
    let err = std::process::Command::new(program).args(rest).exec();
    bail!("cannot run {}: {err}", program.to_string_lossy())
}

/// Refuses to run a command in a cgroup that no ram daemon enforces: it would run unrestricted.
fn ensure_enforced(dir: &CgroupDir) -> Result<()> {
    let file = dir.open()?;
    let loaded: HashMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .filter_map(|info| Some((info.id(), info.name_as_str()?.to_owned())))
        .collect();
    for gate in GATES {
        let ids = sys::attached_program_ids(&file, gate.attach_type)
            .with_context(|| format!("querying the programs attached to {}", dir.path.display()))?;
        if !ids
            .iter()
            .any(|id| loaded.get(id).is_some_and(|n| n == gate.name))
        {
            bail!(
                "cgroup {} is not enforced by ram (no {} program attached); start `ram daemon \
                 --cgroup {}` first",
                dir.path.display(),
                gate.name,
                dir.path.display()
            );
        }
    }
    Ok(())
}
