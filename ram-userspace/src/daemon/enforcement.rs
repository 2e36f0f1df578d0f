//! What the daemon keeps in force in the kernel: the loaded programs and pinned state, the
//! policy in force, and the cgroups enforced (with why each is).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use log::{error, info, warn};

use super::{Options, container_dns::ContainerDns, loaded::LoadedPolicy};
use crate::{
    cgroups::{
        CgroupDir,
        scope::{Scoped, in_scope},
    },
    events::names::RuleNames,
    kernel::{EnforceError, Enforcer, OpenReport, PinDir},
};

pub struct Enforcement {
    pub enforcer: Enforcer,
    pub policy: LoadedPolicy,
    pub rules: RuleNames,
    /// Why each enforced cgroup (by id) is enforced: `--cgroup`, or the scope rule that found it.
    reasons: HashMap<u64, String>,
    pub reloads: u64,
    /// The last rejected change, while the file differs from the policy in force.
    pub rejected: Option<String>,
    mount: PathBuf,
    /// The command line's cgroups (or ram's own), re-resolved on every scope pass.
    given: Vec<(CgroupDir, String)>,
    /// Which containers' networks are trusted for DNS, with which resolvers.
    pub container_dns: ContainerDns,
    /// The cgroups the last pass found in scope (with why).
    pub in_scope: Vec<Scoped>,
}

impl Enforcement {
    /// Loads the programs (adopting the pinned state a previous daemon left), puts `policy` in
    /// force and attaches to the cgroups in scope. Returns the cgroups enforced.
    pub fn start(
        options: &Options,
        policy: LoadedPolicy,
    ) -> Result<(Self, Vec<CgroupDir>), EnforceError> {
        let (scoped, complete) = in_scope(&options.mount, &options.cgroups, &policy.policy.scope);
        let dirs: Vec<CgroupDir> = scoped.iter().map(|s| s.dir.clone()).collect();
        let (enforcer, report) = Enforcer::open(
            PinDir::new(options.pin_dir.clone()),
            &policy.compiled,
            &dirs,
            complete,
        )?;
        log_open_report(&report, &options.pin_dir, policy.policy.dns.max_learned);
        for (program, count) in enforcer.verified_instructions() {
            log::debug!(
                "{program}: {} instructions verified",
                count.map_or("?".to_string(), |c| c.to_string())
            );
        }
        let mut enforcement = Self {
            reasons: scoped
                .iter()
                .map(|s| (s.dir.id, s.reason.clone()))
                .collect(),
            rules: RuleNames::new(&policy.compiled.rules),
            enforcer,
            policy,
            reloads: 0,
            rejected: None,
            mount: options.mount.clone(),
            given: options.cgroups.clone(),
            container_dns: ContainerDns::default(),
            in_scope: Vec::new(),
        };
        enforcement.follow_container_dns(&scoped, complete);
        enforcement.in_scope = scoped;
        Ok((enforcement, dirs))
    }

    /// Why cgroup `id` is enforced.
    pub fn reason(&self, id: u64) -> String {
        self.reasons.get(&id).cloned().unwrap_or_default()
    }

    /// Brings the enforced cgroups in line with the command line and the policy's scope:
    /// containers that started are enforced, cgroups that left the scope (or vanished) are
    /// released, and a command-line cgroup made anew (e.g. a restarted service's) is enforced
    /// again; enforced containers' networks are trusted for DNS, and no longer once they go.
    /// Returns whether a container's network could not be read yet (worth a try again soon).
    pub fn follow_scope(&mut self) -> bool {
        let (wanted, complete) = in_scope(&self.mount, &self.given, &self.policy.policy.scope);
        for Scoped {
            dir, reason: why, ..
        } in &wanted
        {
            match self.enforcer.enforce(dir) {
                Ok(true) => {
                    info!("enforcing on {} ({why})", dir.path.display());
                    self.reasons.insert(dir.id, why.clone());
                }
                Ok(false) => {}
                Err(err) => error!("cannot enforce on {} ({why}): {err}", dir.path.display()),
            }
        }
        let retry = self.follow_container_dns(&wanted, complete);
        if !complete {
            log::debug!("scope: the cgroup walk was partial; releasing nothing this time");
            self.in_scope = wanted;
            return retry;
        }
        let given: Vec<&PathBuf> = self.given.iter().map(|(d, _)| &d.path).collect();
        for (path, id, present) in self.enforcer.cgroups() {
            if wanted.iter().any(|w| w.dir.id == id) {
                continue;
            }
            // A command-line cgroup that is gone stays listed (as removed) until it returns.
            if given.contains(&&path) && !present {
                continue;
            }
            match self.enforcer.release(id) {
                Ok(()) => info!(
                    "no longer enforcing on {} ({})",
                    path.display(),
                    if present { "left the scope" } else { "removed" }
                ),
                Err(err) => warn!("releasing {}: {err}", path.display()),
            }
            self.reasons.remove(&id);
        }
        self.in_scope = wanted;
        retry
    }

    fn follow_container_dns(&mut self, enforced: &[Scoped], complete: bool) -> bool {
        self.container_dns.follow(
            &mut self.enforcer,
            &self.mount,
            enforced,
            complete,
            &self.policy.compiled,
        )
    }
}

fn log_open_report(report: &OpenReport, pin_dir: &Path, max_learned: u64) {
    if report.adopted_maps {
        info!(
            "adopted the pinned state under {} ({} link(s) swapped to this daemon's programs \
             without a gap, {} new)",
            pin_dir.display(),
            report.links_updated,
            report.links_created
        );
    } else {
        info!(
            "pinned programs, maps and {} link(s) under {}",
            report.links_created,
            pin_dir.display()
        );
    }
    for id in &report.stale_cgroups {
        warn!(
            "cgroup id {id} was enforced by an earlier daemon but is not in this one's list: \
             detached from it"
        );
    }
    for dir in &report.foreign_layouts {
        info!(
            "removed {} (maps of another ram version; its learned addresses are learned again)",
            dir.display()
        );
    }
    if let Some(kept) = report.learned_capacity_kept {
        warn!(
            "dns.max_learned is {max_learned} but the pinned learned-address map holds {kept}; \
             the new size takes effect after `ram uninstall` and a restart"
        );
    }
}
