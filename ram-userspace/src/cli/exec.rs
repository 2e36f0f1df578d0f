//! `ram exec`: runs a command inside a cgroup a running daemon enforces (and refuses one that no
//! daemon enforces: the command would run unrestricted), without the capabilities that would
//! get around the programs, as the user who ran `sudo` (or `--user`). A command left running
//! as root could still write itself into another cgroup's `cgroup.procs` (root owns them), so
//! that is said at once; the cgroup is also the root of the command's cgroup namespace, which
//! confines even root where the cgroup2 mount has `nsdelegate`.

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
    let user = match args.user.as_deref() {
        Some(user) => Some(lookup_user(user)?),
        None => sudo_user(),
    };
    if user.is_none_or(|(uid, _)| uid == 0) {
        eprintln!(
            "ram exec: the command runs as root: it can leave the enforced cgroup by writing \
             another cgroup's cgroup.procs; give --user to confine it"
        );
    }
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given; usage: ram exec -- CMD [ARGS]...")?;
    dir.add_process(std::process::id())?;
    sys::unshare_cgroup_namespace()
        .context("making the cgroup the root of the command's cgroup namespace")?;
    sys::drop_capabilities(&sys::ESCAPE_CAPABILITIES)
        .context("dropping the capabilities that would let the command leave its cgroup")?;
    if let Some((uid, gid)) = user {
        sys::switch_user(uid, gid).context("switching to the --user")?;
    }
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

/// `--user`: a name from /etc/passwd, or `UID[:GID]`.
fn lookup_user(user: &str) -> Result<(u32, u32)> {
    if let Some((uid, gid)) = user.split_once(':') {
        return Ok((
            uid.parse()
                .with_context(|| format!("--user {user}: bad uid"))?,
            gid.parse()
                .with_context(|| format!("--user {user}: bad gid"))?,
        ));
    }
    if let Ok(uid) = user.parse::<u32>() {
        return Ok((uid, uid));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&user))
                .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
                .flatten()
        })
        .with_context(|| format!("--user {user}: no such user in /etc/passwd"))
}

/// The user who ran `sudo ram exec`, from sudo's environment.
fn sudo_user() -> Option<(u32, u32)> {
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((uid, gid))
}
