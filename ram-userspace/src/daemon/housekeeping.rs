//! Once a second: follow the scope (containers come and go), repair detached programs, report
//! lost events; every ten seconds, free the room of expired learned addresses.

use log::warn;
use ram_common::Counter;

use super::Daemon;
use crate::sys;

/// Expired learned addresses are removed every this many ticks: the gates check expiry
/// themselves, this only frees room.
const EXPIRE_EVERY_TICKS: u64 = 10;

impl Daemon {
    /// Returns whether a container needs another look soon (see `follow_scope`).
    pub(super) fn housekeeping(&mut self) -> bool {
        let retry = self.follow_scope();
        let enforcement = &mut self.enforcement;
        self.ticks += 1;
        for message in enforcement.enforcer.verify_attachments() {
            warn!("{message}");
        }
        self.report_dropped();
        self.auditor.flush_repeats();
        if !self.ticks.is_multiple_of(EXPIRE_EVERY_TICKS) {
            return retry;
        }
        match self.enforcement.enforcer.expire_learned(sys::boottime_ns()) {
            Ok((0, _)) => {}
            Ok((removed, left)) => {
                log::debug!("expired {removed} learned address(es); {left} left");
            }
            Err(err) => warn!("removing expired learned addresses failed: {err}"),
        }
        retry
    }

    /// Follows the scope (see `Enforcement::follow_scope`), and names the cgroups now enforced
    /// in audit records. Returns whether a container needs another look soon.
    pub(super) fn follow_scope(&mut self) -> bool {
        let retry = self.enforcement.follow_scope();
        self.auditor.enforced(&self.enforcement.in_scope);
        retry
    }

    /// Writes an audit line when the kernel counted events it could not hand over, or the
    /// Docker servers decisions the event loop had no room for.
    pub(super) fn report_dropped(&mut self) {
        if let Ok(counters) = self.enforcement.enforcer.counters() {
            self.auditor
                .report_dropped(counters[Counter::EventsDropped as usize]);
        }
        self.auditor
            .report_decisions_lost(self.docker.decisions_lost());
        if let Ok(mut metrics) = self.auditor.metrics().lock() {
            metrics.image_decisions_lost(self.docker.decisions_lost());
        }
    }
}
