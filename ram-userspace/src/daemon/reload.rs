//! Policy reloads: a valid new policy replaces the old one atomically, an invalid one is logged
//! and the old one stays in force.

use std::time::Instant;

use log::{error, info, warn};
use ram_common::maps::{ALLOWED_CIDRS_MAX, ALLOWED_NAMES_MAX, RESOLVERS_MAX};

use super::{Daemon, loaded::LoadedPolicy, notify};
use crate::error_chain;

impl Daemon {
    fn count_reload(&self, result: &'static str) {
        if let Ok(mut metrics) = self.auditor.metrics().lock() {
            metrics.reload(result);
        }
    }

    /// The metrics of the policy now in force (its hash, its maps' fill), and its endpoint.
    pub(super) fn policy_in_force_metrics(&mut self) {
        let policy = &self.enforcement.policy;
        if let Ok(mut metrics) = self.auditor.metrics().lock() {
            metrics.policy(&policy.sha256);
            let compiled = &policy.compiled;
            metrics.map(
                "allowed_names",
                compiled.names.len(),
                ALLOWED_NAMES_MAX as usize,
            );
            metrics.map(
                "allowed_cidrs",
                compiled.cidrs.len(),
                ALLOWED_CIDRS_MAX as usize,
            );
            metrics.map(
                "resolvers",
                compiled.resolvers.len(),
                RESOLVERS_MAX as usize,
            );
        }
        self.metrics.update(policy.policy.metrics.listen.as_ref());
    }

    /// Re-reads the policy file (it changed, or SIGHUP) and puts it in force.
    pub(super) fn reload(&mut self, why: &str) {
        let Some(path) = self.options.policy.clone() else {
            info!("{why}: no policy file (the embedded default is in force); nothing to re-read");
            return;
        };
        let started = Instant::now();
        let enforcement = &mut self.enforcement;
        let new = match LoadedPolicy::read(Some(&path)) {
            Ok(new) => new,
            Err(err) => {
                let message = error_chain(&err);
                error!(
                    "{why}: the new policy was REJECTED, the previous one (sha256 {}) stays in \
                     force: {message}",
                    &enforcement.policy.sha256[..12]
                );
                enforcement.rejected = Some(message);
                self.count_reload("rejected");
                return;
            }
        };
        // The same file can still mean a new policy: resolvers from /etc/resolv.conf.
        if new.sha256 == enforcement.policy.sha256 && new.compiled == enforcement.policy.compiled {
            enforcement.rejected = None;
            return;
        }
        let compiled_in = started.elapsed();
        let _ = notify::reloading();
        match enforcement.enforcer.apply(&new.compiled) {
            Ok(report) => {
                info!(
                    "{why}: now in force (read and compiled in {:.1} ms, swapped in {:.1} ms): \
                     {}{}",
                    compiled_in.as_secs_f64() * 1e3,
                    (started.elapsed() - compiled_in).as_secs_f64() * 1e3,
                    new.describe(),
                    match report.learned_dropped {
                        0 => String::new(),
                        n => format!("; forgot {n} learned address(es) of removed rules"),
                    }
                );
                new.warn_if_no_resolvers();
                if new.policy.dns.max_learned != enforcement.policy.policy.dns.max_learned {
                    warn!(
                        "dns.max_learned changed to {}; the learned-address map keeps {} \
                         entries until `ram uninstall` and a restart",
                        new.policy.dns.max_learned,
                        enforcement.enforcer.learned_capacity()
                    );
                }
                enforcement
                    .rules
                    .replace(&new.compiled.rules, &enforcement.policy.compiled.rules);
                new.write_copy(&self.options.run_dir);
                enforcement.policy = new;
                enforcement.reloads += 1;
                enforcement.rejected = None;
                enforcement.follow_scope();
                self.docker.update(&self.enforcement.policy);
                self.count_reload("ok");
                self.policy_in_force_metrics();
            }
            Err(err) => {
                // apply() fills the unused slot first: a failure leaves the old policy in force.
                error!(
                    "{why}: putting the new policy in force failed ({err}); the previous one \
                     stays"
                );
                enforcement.rejected = Some(err.to_string());
                self.count_reload("failed");
            }
        }
        let _ = notify::ready("policy re-read");
    }
}
