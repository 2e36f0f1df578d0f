//! The auditor: turns each event of the programs, and each image decision of the Docker
//! servers, into one audit record and one log line, with the names a reader needs (hostname,
//! cgroup path, policy entry).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use log::{info, warn};
use ram_common::{DnsEvent, GateEvent, Hook, LearnedKey, Reason, TlsEvent};

/// `IPPROTO_TCP`: every judged TLS hello is on a TCP connection.
const IPPROTO_TCP: u8 = 6;

use super::{
    answers::{named_addresses, query_question},
    metrics::{SharedMetrics, image_kind},
    names::{Hostnames, RuleNames, SeenAddress},
    records::{
        AuditRecord, DroppedRecord, ImageDecision, ImageRecord, LearnRecord, QueryRecord,
        container_id, display_addr, now_rfc3339, protocol_name, rfc3339_utc, text,
    },
    repeats::{Repeats, WINDOW},
    sink::{AuditLogError, AuditSink},
};
use crate::{
    cgroups::{containers::ContainerInfos, names::CgroupNames, scope::Scoped},
    policy::to_v6,
    sys,
};

/// Container ids of enforced cgroups remembered for naming events (containers come and go;
/// the map is emptied rather than grown past this).
const CONTAINERS_REMEMBERED: usize = 4096;

/// Where the count of lost events already written to the audit log is kept, in the run
/// directory, across restarts (the kernel's counter is pinned and counts from installation).
pub const DROPPED_REPORTED: &str = "events-dropped-reported";

pub struct Auditor {
    sink: AuditSink,
    cgroup_names: CgroupNames,
    containers: ContainerInfos,
    /// Container ids of enforced cgroups, as the scope found them (bounded).
    container_of: HashMap<u64, String>,
    repeats: Repeats<ImageRecord>,
    /// Refused DNS queries, folded the same way (a resolver library retries each one).
    query_repeats: Repeats<QueryRecord>,
    hostnames: Hostnames,
    /// CLOCK_REALTIME − CLOCK_BOOTTIME: the programs stamp events with the boot clock.
    clock_offset: i128,
    run_dir: PathBuf,
    dropped_reported: u64,
    /// Image decisions lost so far (the Docker servers count since the daemon started).
    decisions_lost_reported: u64,
    /// Every decision counted for the metrics endpoint, repeats included.
    metrics: SharedMetrics,
}

impl Auditor {
    pub fn new(sink: AuditSink, enforced: &[crate::cgroups::CgroupDir], run_dir: &Path) -> Self {
        Self {
            sink,
            cgroup_names: CgroupNames::new(enforced),
            containers: ContainerInfos::default(),
            container_of: HashMap::new(),
            repeats: Repeats::default(),
            query_repeats: Repeats::default(),
            hostnames: Hostnames::default(),
            clock_offset: sys::realtime_minus_boottime_ns(),
            dropped_reported: read_dropped_reported(run_dir),
            decisions_lost_reported: 0,
            run_dir: run_dir.to_owned(),
            metrics: SharedMetrics::default(),
        }
    }

    /// The metrics this auditor counts into.
    pub fn metrics(&self) -> SharedMetrics {
        self.metrics.clone()
    }

    fn count(&self, verdict: &'static str, reason: &'static str, hook: &'static str) {
        if let Ok(mut metrics) = self.metrics.lock() {
            metrics.decision(verdict, reason, hook);
        }
    }

    /// Reopens the audit log (SIGHUP, after logrotate moved it away).
    pub fn reopen(&mut self) -> Result<(), AuditLogError> {
        self.sink.reopen()
    }

    pub fn describe_sink(&self) -> Option<String> {
        self.sink.describe()
    }

    /// The cgroups enforced now (see [`CgroupNames::enforced`]), and the containers among them
    /// (a container named freely, `ctr run … web`, is known by its scope entry, not its path).
    pub fn enforced(&mut self, scoped: &[Scoped]) {
        let dirs: Vec<_> = scoped.iter().map(|s| s.dir.clone()).collect();
        self.cgroup_names.enforced(&dirs);
        if self.container_of.len() > CONTAINERS_REMEMBERED {
            self.container_of.clear();
        }
        for entry in scoped {
            if let Some(container) = &entry.container {
                self.container_of.insert(entry.dir.id, container.clone());
            }
        }
    }

    /// The container of cgroup `id` at `path`: by the path's name, or as the scope found it.
    /// A container id in a path is believed only if a root-owned directory carries it: a user
    /// with a delegated cgroup could name one `docker-<someone else's id>.scope`.
    fn container(&mut self, id: u64, path: Option<&str>) -> Option<String> {
        if let Some(container) = self.container_of.get(&id) {
            return Some(container.clone());
        }
        let path = path?;
        let container = container_id(path)?;
        let carrier = path
            .split('/')
            .position(|part| part.contains(container.as_str()))?;
        let prefix: Vec<&str> = path.split('/').take(carrier + 1).collect();
        self.cgroup_names
            .owned_by_root(&prefix.join("/"))
            .then_some(container)
    }

    pub fn cgroup_name(&mut self, id: u64) -> Option<String> {
        self.cgroup_names.lookup(id)
    }

    pub fn hostname(&self, addr: &std::net::IpAddr) -> Option<String> {
        self.hostnames.get(addr).map(|seen| seen.hostname.clone())
    }

    /// The allowed names whose answers gave `addr` (most recent last).
    pub fn taught_by(&self, addr: &std::net::IpAddr) -> Vec<String> {
        self.hostnames
            .get(addr)
            .map(|seen| seen.taught_by.clone())
            .unwrap_or_default()
    }

    /// Boot-clock nanoseconds as the wall-clock time audit records write.
    pub fn wall_time(&self, boot_ns: u64) -> String {
        rfc3339_utc(i128::from(boot_ns) + self.clock_offset)
    }

    /// A decision of the connect/sendmsg programs.
    pub fn gate_event(&mut self, event: &GateEvent, rules: &RuleNames) {
        self.write_gate_record(event, rules, |_, _| {});
    }

    /// A TLS hello `tls_hello` refused (or, under `tls = "audit"`, would have): audited like a
    /// gate's decision, with the name it sent and the names that taught the address.
    pub fn tls_event(&mut self, event: &TlsEvent, rules: &RuleNames) {
        let pid = (event.pid_tgid >> 32) as u32;
        // The connecting task's name (the kernel's note), else the sender's while it lives.
        let mut comm = event.comm;
        if comm[0] == 0
            && let Ok(name) = fs::read(format!("/proc/{pid}/comm"))
        {
            let name = name.strip_suffix(b"\n").unwrap_or(&name);
            let len = name.len().min(15);
            comm[..len].copy_from_slice(&name[..len]);
        }
        let gate = GateEvent {
            boot_ns: event.boot_ns,
            cgroup_id: event.cgroup_id,
            pid_tgid: event.pid_tgid,
            uid_gid: event.uid_gid,
            comm,
            addr: event.addr,
            port: event.port,
            hook: Hook::TlsHello as u8,
            reason: event.reason,
            verdict: event.verdict,
            protocol: IPPROTO_TCP,
            socket_protocol: 0,
            rule_index: event.rule_index,
            socket_family: 0,
            socket_type: 0,
            rule_id: event.rule_id,
        };
        let len = (event.name_len as usize).min(event.name.len());
        let name = (len > 0).then(|| String::from_utf8_lossy(&event.name[..len]).into_owned());
        self.write_gate_record(&gate, rules, |record, seen| {
            record.server_name = name;
            if let Some(seen) = seen {
                record.taught_by = seen.taught_by.clone();
            }
        });
    }

    fn write_gate_record(
        &mut self,
        event: &GateEvent,
        rules: &RuleNames,
        extra: impl FnOnce(&mut AuditRecord, Option<&SeenAddress>),
    ) {
        let cgroup = self.cgroup_names.lookup(event.cgroup_id);
        let mut record = AuditRecord::from_event(event, self.clock_offset, cgroup);
        record.rule = rules.text(event.rule_id);
        record.container_id = self.container(event.cgroup_id, record.cgroup.as_deref());
        if let Some(id) = &record.container_id {
            let info = self.containers.lookup(id);
            record.container_name = info.name;
            record.container_image = info.image;
        }
        if let Some(seen) = self.hostnames.get(&display_addr(event.addr)) {
            record.hostname = Some(seen.hostname.clone());
            if event.verdict == 0
                && event.reason == Reason::NotLearned as u8
                && seen.map_full_in == Some(event.cgroup_id)
            {
                record.reason = "map_full";
            }
        }
        extra(&mut record, self.hostnames.get(&display_addr(event.addr)));
        self.count(record.verdict, record.reason, record.hook);
        info!("{}", record.summary());
        self.sink.write(&record);
    }

    /// A DNS answer the kernel judged: learned addresses are audited; answers for names no
    /// rule allows are remembered for naming the denials that may follow. `is_learned` asks the
    /// kernel's map, the authority on what was learned.
    pub fn dns_event(
        &mut self,
        event: &DnsEvent,
        rules: &RuleNames,
        is_learned: impl Fn(&LearnedKey) -> bool,
    ) {
        let cgroup = self.cgroup_names.lookup(event.cgroup_id);
        let container_id = self.container(event.cgroup_id, cgroup.as_deref());
        let container = container_id
            .as_deref()
            .map(|id| self.containers.lookup(id))
            .unwrap_or_default();
        let time = self.wall_time(event.boot_ns);
        let rule = rules
            .text(event.rule_id)
            .unwrap_or_else(|| format!("#{}", event.rule_index));
        let resolver = display_addr(event.resolver).to_string();
        if event.map_full > 0 {
            warn!(
                "{} address(es) answered by {resolver} were NOT learned: the learned-address map \
                 is full (raise dns.max_learned); connections to them are denied",
                event.map_full
            );
        }
        if event.forbidden > 0 {
            warn!(
                "{} address(es) in an answer from {resolver} were refused (loopback, link-local, \
                 multicast or unspecified addresses are never learned from DNS)",
                event.forbidden
            );
        }
        let message = &event.msg[..(event.msg_len as usize).min(event.msg.len())];
        if event.query_refused != 0 {
            self.count("deny", Reason::QueryNotAllowed.as_str(), "dns_query");
            let (hostname, qtype) = query_question(message)
                .unwrap_or_else(|_| ("<unreadable query>".to_owned(), "?".to_owned()));
            let record = QueryRecord {
                time,
                verdict: "deny",
                reason: Reason::QueryNotAllowed.as_str(),
                hook: "dns_query",
                cgroup,
                cgroup_id: event.cgroup_id,
                container_id,
                container_name: container.name,
                container_image: container.image,
                hostname,
                qtype,
                resolver,
                protocol: protocol_name(event.protocol),
                repeated: None,
            };
            for line in self.query_repeats.admit(record, std::time::Instant::now()) {
                info!("{}", line.summary());
                self.sink.write(&line);
            }
            return;
        }
        if event.not_allowed != 0 {
            self.note_unallowed_answer(message);
            return;
        }
        let named = match named_addresses(message) {
            Ok(named) => named,
            Err(err) => {
                warn!(
                    "could not decode an answer the kernel learned from ({})",
                    crate::error_chain(&err)
                );
                return;
            }
        };
        for address in named {
            let key = LearnedKey {
                cgroup_id: event.cgroup_id,
                addr: to_v6(address.addr).octets(),
            };
            // The kernel's map decides what was learned (refused and map-full addresses are
            // not).
            let learned = is_learned(&key);
            let refused = ram_common::dns::never_learned(&key.addr);
            self.hostnames.note(
                address.addr,
                SeenAddress {
                    hostname: address.question.clone(),
                    map_full_in: (!learned && !refused && event.map_full > 0)
                        .then_some(event.cgroup_id),
                    from_allowed: true,
                    taught_by: Vec::new(),
                },
            );
            if !learned {
                continue;
            }
            let record = LearnRecord {
                time: time.clone(),
                verdict: "learn",
                reason: "learned",
                cgroup: cgroup.clone(),
                cgroup_id: event.cgroup_id,
                container_id: container_id.clone(),
                container_name: container.name.clone(),
                container_image: container.image.clone(),
                hostname: address.question,
                record_owner: address.owner,
                dst_addr: address.addr.to_string(),
                ttl: address.ttl,
                rule: rule.clone(),
                rule_index: event.rule_index,
                resolver: resolver.clone(),
                protocol: protocol_name(event.protocol),
            };
            info!("{}", record.summary());
            self.sink.write(&record);
        }
    }

    /// Nothing was learned from this answer: remember its names only, for the denials that may
    /// follow.
    fn note_unallowed_answer(&mut self, message: &[u8]) {
        let Ok(named) = named_addresses(message) else {
            return;
        };
        for address in named {
            log::debug!(
                "{} answered for {}, which no allow rule matches: not learned",
                address.addr,
                address.question
            );
            // Never over a name an allowed answer gave (a shared CDN address must keep the
            // registry's name, whatever else a process resolves to it).
            if self
                .hostnames
                .get(&address.addr)
                .is_some_and(|seen| seen.from_allowed)
            {
                continue;
            }
            self.hostnames.note(
                address.addr,
                SeenAddress {
                    hostname: address.question,
                    map_full_in: None,
                    from_allowed: false,
                    taught_by: Vec::new(),
                },
            );
        }
    }

    /// A decision of the authorization plugin or the pull gate (repeats folded: see
    /// `events::repeats`).
    pub fn image_decision(&mut self, decision: ImageDecision) {
        if let Ok(mut metrics) = self.metrics.lock() {
            metrics.image_decision(
                image_kind(&decision.reason),
                if decision.allowed { "allow" } else { "deny" },
                decision.via,
            );
        }
        let lines = self
            .repeats
            .admit(ImageRecord::new(decision), std::time::Instant::now());
        for record in lines {
            self.write_image_record(&record);
        }
    }

    /// Writes the lines of image-decision windows that ended (once a second).
    pub fn flush_repeats(&mut self) {
        for record in self.repeats.flush(std::time::Instant::now(), false) {
            self.write_image_record(&record);
        }
        for line in self.query_repeats.flush(std::time::Instant::now(), false) {
            info!("{}", line.summary());
            self.sink.write(&line);
        }
    }

    /// At stop: writes the lines of every window with repeats.
    pub fn flush_all_repeats(&mut self) {
        for record in self.repeats.flush(std::time::Instant::now(), true) {
            self.write_image_record(&record);
        }
        for line in self.query_repeats.flush(std::time::Instant::now(), true) {
            info!("{}", line.summary());
            self.sink.write(&line);
        }
    }

    fn write_image_record(&mut self, record: &ImageRecord) {
        let repeated = record
            .repeated
            .map(|n| format!(", {n} more time(s) within {} s", WINDOW.as_secs()))
            .unwrap_or_default();
        let exception = record
            .exception
            .as_ref()
            .map(|entry| format!(", by exception {}", text(entry)))
            .unwrap_or_default();
        info!(
            "image {} {} {} ({}{exception}){repeated}",
            record.verdict,
            record.action,
            text(&record.image),
            text(&record.reason)
        );
        self.sink.write(record);
    }

    /// Writes an audit line when the kernel's count of events it could not hand over
    /// (`total`, pinned, counted since installation) grew since the last line.
    pub fn report_dropped(&mut self, total: u64) {
        if total <= self.dropped_reported {
            self.dropped_reported = total;
            return;
        }
        let count = total - self.dropped_reported;
        self.dropped_reported = total;
        write_dropped_reported(&self.run_dir, total);
        warn!(
            "{count} audit event(s) were lost: the kernel's ring buffer was full ({total} in all; \
             see `ram status`)"
        );
        self.sink.write(&DroppedRecord {
            time: now_rfc3339(),
            verdict: "dropped",
            reason: "events_dropped",
            count,
            total,
        });
    }

    /// Writes an audit line when image decisions were lost since the last one (`total`: lost
    /// since the daemon started): a flood of requests to the Docker servers outran the log.
    pub fn report_decisions_lost(&mut self, total: u64) {
        if total <= self.decisions_lost_reported {
            return;
        }
        let count = total - self.decisions_lost_reported;
        self.decisions_lost_reported = total;
        warn!(
            "{count} image decision(s) were not audited: the Docker servers decided faster than \
             the audit log was written ({total} since start); their answers to the engine were \
             not affected"
        );
        self.sink.write(&DroppedRecord {
            time: now_rfc3339(),
            verdict: "dropped",
            reason: "image_decisions_dropped",
            count,
            total,
        });
    }
}

fn read_dropped_reported(run_dir: &Path) -> u64 {
    fs::read_to_string(run_dir.join(DROPPED_REPORTED))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn write_dropped_reported(run_dir: &Path, total: u64) {
    if let Err(err) = fs::write(run_dir.join(DROPPED_REPORTED), format!("{total}\n")) {
        warn!(
            "cannot record the lost-event count in {}: {err}",
            run_dir.display()
        );
    }
}
