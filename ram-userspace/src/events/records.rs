//! Audit records: what the daemon writes for every kernel decision it hears about.

use std::net::{IpAddr, Ipv6Addr};

use ram_common::{BUILTIN_RULE, GateEvent, Hook, Reason, VERDICT_WOULD_DENY};
use serde::Serialize;

use crate::sys;

/// One JSON line of the audit log. The schema is documented in docs/audit.md.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    /// "allow", "deny", or "would_deny" (`registry_access.tls = "audit"`).
    pub verdict: &'static str,
    pub reason: &'static str,
    /// The kernel hook: connect4, connect6, sendmsg4, sendmsg6.
    pub hook: &'static str,
    pub protocol: String,
    /// Process id (the kernel's tgid; both names are written) and thread id.
    pub pid: u32,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    /// The cgroup v2 path of the process, when it could be found.
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    /// The container's id, when the cgroup is a container's (Docker, containerd, CRI-O, Podman).
    pub container_id: Option<String>,
    /// The container's name and image, where its runtime says (dockerd).
    pub container_name: Option<String>,
    pub container_image: Option<String>,
    /// Destination address (IPv4-mapped IPv6 shown as IPv4) and port.
    pub dst_addr: String,
    pub dst_port: u16,
    /// The hostname the address was learned from, or last seen for in a DNS answer.
    pub hostname: Option<String>,
    /// The policy entry that matched (none for denials), and its index in its list.
    pub rule: Option<String>,
    pub rule_index: Option<u32>,
    /// For a socket refused at creation (`hook: socket_create`, `reason: socket_type`): what was
    /// asked for (`inet raw udp`, `inet6 seqpacket sctp`); the destination is then unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// For a judged TLS hello (`hook: tls_hello`): the server name it sent (absent when it sent
    /// none or it could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// For a judged TLS hello: the allowed names whose answers gave this address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub taught_by: Vec<String>,
}

impl AuditRecord {
    /// `realtime_minus_boottime_ns` converts the event's boot-clock time to wall-clock time.
    pub fn from_event(
        event: &GateEvent,
        realtime_minus_boottime_ns: i128,
        cgroup: Option<String>,
    ) -> Self {
        let wall_ns = i128::from(event.boot_ns) + realtime_minus_boottime_ns;
        let pid = (event.pid_tgid >> 32) as u32;
        Self {
            time: rfc3339_utc(wall_ns),
            verdict: match event.verdict {
                0 => "deny",
                VERDICT_WOULD_DENY => "would_deny",
                _ => "allow",
            },
            reason: Reason::from_u8(event.reason).map_or("unknown", Reason::as_str),
            hook: Hook::from_u8(event.hook).map_or("unknown", Hook::as_str),
            protocol: if event.hook == Hook::SocketCreate as u8 {
                protocol_name_full(event.socket_protocol)
            } else {
                protocol_name(event.protocol)
            },
            pid,
            tgid: pid,
            tid: event.pid_tgid as u32,
            uid: event.uid_gid as u32,
            gid: (event.uid_gid >> 32) as u32,
            comm: comm_string(&event.comm),
            container_id: cgroup.as_deref().and_then(container_id),
            container_name: None,
            container_image: None,
            cgroup,
            cgroup_id: event.cgroup_id,
            dst_addr: display_addr(event.addr).to_string(),
            dst_port: event.port,
            hostname: None,
            rule: None,
            rule_index: (event.rule_index != BUILTIN_RULE).then_some(event.rule_index),
            socket: (event.hook == Hook::SocketCreate as u8).then(|| {
                format!(
                    "{} {} {}",
                    family_name(event.socket_family),
                    socket_type_name(event.socket_type),
                    protocol_name_full(event.socket_protocol)
                )
            }),
            server_name: None,
            taught_by: Vec::new(),
        }
    }

    /// A short human-readable line for the daemon's own log.
    pub fn summary(&self) -> String {
        if let Some(socket) = &self.socket {
            return format!(
                "{} socket {socket} by pid {} ({}) in {} ({})",
                self.verdict,
                self.pid,
                text(&self.comm),
                text(self.cgroup.as_deref().unwrap_or("unknown cgroup")),
                self.reason
            );
        }
        let host = self
            .hostname
            .as_deref()
            .map(|h| format!(" ({})", text(h)))
            .unwrap_or_default();
        let rule = self
            .rule
            .as_deref()
            .map(|r| format!(", rule `{}`", text(r)))
            .unwrap_or_default();
        let host = match (&self.server_name, self.hook == Hook::TlsHello.as_str()) {
            (Some(name), _) => format!("{host} with TLS name `{}`", text(name)),
            (None, true) => format!("{host} with no TLS name"),
            (None, false) => host,
        };
        format!(
            "{} {} {} {}:{}{host} by pid {} ({}) in {} ({}{rule})",
            self.verdict,
            self.hook,
            self.protocol,
            bracket_v6(&self.dst_addr),
            self.dst_port,
            self.pid,
            text(&self.comm),
            text(self.cgroup.as_deref().unwrap_or("unknown cgroup")),
            self.reason
        )
    }
}

/// The audit line for events the kernel could not hand over (its ring buffers were full):
/// lost detail is never silent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DroppedRecord {
    pub time: String,
    /// Always "dropped".
    pub verdict: &'static str,
    /// "events_dropped" (the kernel's ring buffers were full) or "image_decisions_dropped" (the
    /// Docker servers outran the audit log).
    pub reason: &'static str,
    /// Events lost since the previous such line (the kernel's counter is in `ram status`).
    pub count: u64,
    pub total: u64,
}

/// What the authorization plugin or the pull gate decided about an image, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDecision {
    pub allowed: bool,
    /// `image_pull`, `container_create` or `image_push` (the plugin); `manifests`, `blobs`,
    /// `tags` or `referrers` (the pull gate).
    pub action: &'static str,
    pub image: String,
    /// The category (for a push: the `registry_access.push` judgement), or why it could not
    /// be judged.
    pub reason: String,
    /// The `image_access.allow_repositories` entry that allowed the image, where its category
    /// would not have.
    pub exception: Option<String>,
    pub user: Option<String>,
    /// Which enforcement point decided (`authorization_plugin`, `pull_gate`).
    pub via: &'static str,
}

/// One Image Access Management decision in the audit log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub time: String,
    pub verdict: &'static str,
    /// The image's category (`official`, `organization`, `verified_publisher`, `community`,
    /// `other_registry`) or, for a denial, the message the user saw.
    pub reason: String,
    /// `image_pull`, `container_create` or `image_push` (plugin); `manifests`, `blobs`,
    /// `tags`, `referrers` (pull gate).
    pub action: &'static str,
    pub image: String,
    pub user: Option<String>,
    pub via: &'static str,
    /// Allowed by a repository exception (its category is not): the
    /// `image_access.allow_repositories` entry (`someuser/tool`, `somepublisher/*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
    /// On a line that ends a window of repeats: how many more identical decisions there were
    /// since the line this one repeats (see `events::repeats`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeated: Option<u64>,
}

impl ImageRecord {
    pub fn new(decision: ImageDecision) -> Self {
        Self {
            time: now_rfc3339(),
            verdict: if decision.allowed { "allow" } else { "deny" },
            reason: decision.reason,
            action: decision.action,
            image: decision.image,
            user: decision.user,
            via: decision.via,
            exception: decision.exception,
            repeated: None,
        }
    }
}

/// The container id in a cgroup path, for the layouts of Docker (`/docker/<id>`,
/// `docker-<id>.scope`), containerd/CRI, CRI-O and Podman (see
/// [`crate::cgroups::scope::container_id`]); for a RUN step of dockerd's BuildKit (a container
/// of BuildKit's own), its 25-character id.
pub fn container_id(cgroup_path: &str) -> Option<String> {
    if let Some(id) = cgroup_path
        .rsplit('/')
        .find_map(crate::cgroups::scope::container_id)
    {
        return Some(id);
    }
    let mut components = cgroup_path.rsplit('/');
    let name = components.next()?;
    let parent = components.next().unwrap_or("");
    crate::cgroups::scope::run_step_id(parent, name).map(str::to_owned)
}

/// One JSON line of the audit log for a DNS query refused in the kernel (`dns.queries =
/// "allowed"`): it never left the host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueryRecord {
    pub time: String,
    /// Always "deny".
    pub verdict: &'static str,
    /// Always "query_not_allowed".
    pub reason: &'static str,
    /// Always "dns_query".
    pub hook: &'static str,
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub container_image: Option<String>,
    /// The name asked for, and the record type.
    pub hostname: String,
    pub qtype: String,
    /// The resolver it was sent to, and over which protocol.
    pub resolver: String,
    pub protocol: String,
    /// On the line closing a window: how many more times the same query was refused in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeated: Option<u64>,
}

impl QueryRecord {
    pub fn summary(&self) -> String {
        let repeated = self
            .repeated
            .map(|n| format!(", {n} more time(s) within the last seconds"))
            .unwrap_or_default();
        format!(
            "deny DNS query for {} ({}) in {} to {} over {}: no rule allows the name{repeated}",
            text(&self.hostname),
            self.qtype,
            text(self.cgroup.as_deref().unwrap_or("unknown cgroup")),
            self.resolver,
            self.protocol
        )
    }
}

/// One JSON line of the audit log for an address learned from a DNS answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LearnRecord {
    pub time: String,
    /// Always "learn".
    pub verdict: &'static str,
    /// Always "learned".
    pub reason: &'static str,
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    /// As in [`AuditRecord`]: the container, when the cgroup is one's.
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub container_image: Option<String>,
    /// The question the address answers, and the name owning its record (end of the CNAME
    /// chain).
    pub hostname: String,
    pub record_owner: String,
    pub dst_addr: String,
    pub ttl: u32,
    /// The `registry_access.allow` entry the question matched, and its index.
    pub rule: String,
    pub rule_index: u32,
    /// The resolver that answered, and over which protocol.
    pub resolver: String,
    pub protocol: String,
}

impl LearnRecord {
    pub fn summary(&self) -> String {
        let via = if self.record_owner == self.hostname {
            String::new()
        } else {
            format!(" via {}", text(&self.record_owner))
        };
        format!(
            "learned {} for {}{via} (ttl {} s, rule `{}`) in {} from {} over {}",
            self.dst_addr,
            text(&self.hostname),
            self.ttl,
            text(&self.rule),
            text(self.cgroup.as_deref().unwrap_or("unknown cgroup")),
            self.resolver,
            self.protocol
        )
    }
}

/// A value others choose (a process name, a hostname from an answer, a container's or image's
/// name, a cgroup path) as it goes into a text log line: control characters, quotes and
/// backslashes escaped, so that no value can end the line or fake another one.
pub fn text(value: &str) -> String {
    value.escape_debug().to_string()
}

fn bracket_v6(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

/// IPv4-mapped addresses are shown in their IPv4 form.
pub fn display_addr(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn protocol_name(protocol: u8) -> String {
    match i32::from(protocol) {
        libc::IPPROTO_TCP => "tcp".into(),
        libc::IPPROTO_UDP => "udp".into(),
        libc::IPPROTO_ICMP => "icmp".into(),
        libc::IPPROTO_ICMPV6 => "icmpv6".into(),
        libc::IPPROTO_SCTP => "sctp".into(),
        other => other.to_string(),
    }
}

/// As [`protocol_name`], for protocol numbers past 255 too (MPTCP is 262).
pub fn protocol_name_full(protocol: u16) -> String {
    match i32::from(protocol) {
        libc::IPPROTO_MPTCP => "mptcp".into(),
        libc::IPPROTO_UDPLITE => "udplite".into(),
        libc::IPPROTO_DCCP => "dccp".into(),
        115 => "l2tp".into(),
        libc::IPPROTO_RAW => "raw".into(),
        0 => "ip".into(),
        _ if protocol <= 255 => protocol_name(protocol as u8),
        other => other.to_string(),
    }
}

fn family_name(family: u16) -> String {
    match i32::from(family) {
        libc::AF_INET => "inet".into(),
        libc::AF_INET6 => "inet6".into(),
        libc::AF_PACKET => "packet".into(),
        libc::AF_XDP => "xdp".into(),
        libc::AF_TIPC => "tipc".into(),
        libc::AF_RDS => "rds".into(),
        libc::AF_CAN => "can".into(),
        libc::AF_BLUETOOTH => "bluetooth".into(),
        43 => "smc".into(),
        libc::AF_RXRPC => "rxrpc".into(),
        41 => "kcm".into(),
        other => format!("family {other}"),
    }
}

fn socket_type_name(kind: u16) -> String {
    match i32::from(kind) {
        libc::SOCK_STREAM => "stream".into(),
        libc::SOCK_DGRAM => "dgram".into(),
        libc::SOCK_RAW => "raw".into(),
        libc::SOCK_SEQPACKET => "seqpacket".into(),
        libc::SOCK_DCCP => "dccp".into(),
        other => format!("type {other}"),
    }
}

fn comm_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// The wall-clock time now, as audit records write it.
pub fn now_rfc3339() -> String {
    rfc3339_utc(i128::from(sys::boottime_ns()) + sys::realtime_minus_boottime_ns())
}

/// Formats nanoseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339_utc(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let day_secs = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_cgroup_layouts() {
        let id = "4f2a".repeat(16);
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/crio-{id}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id.as_str()), "{path}");
        }
        assert_eq!(
            container_id("/docker/buildkit/vnzzykkws3m9pp48rularan15").as_deref(),
            Some("vnzzykkws3m9pp48rularan15")
        );
        assert_eq!(
            container_id("/system.slice/docker-vnzzykkws3m9pp48rularan15.scope").as_deref(),
            Some("vnzzykkws3m9pp48rularan15")
        );
        assert_eq!(container_id("/docker/buildkit"), None);
        assert_eq!(container_id("/system.slice/docker.service"), None);
        assert_eq!(container_id("/ram.enforced"), None);
        assert_eq!(container_id(&format!("/docker/{}", &id[1..])), None);
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_utc(1_795_426_215_123_456_789),
            "2026-11-23T09:30:15.123456789Z"
        );
        assert_eq!(
            rfc3339_utc(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn event_becomes_record() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let event = GateEvent {
            boot_ns: 5_000_000_000,
            cgroup_id: 42,
            pid_tgid: (1234 << 32) | 1235,
            uid_gid: (100 << 32) | 1000,
            comm,
            addr: ram_common::v4_mapped([203, 0, 113, 3]),
            port: 8080,
            hook: Hook::Connect4 as u8,
            reason: Reason::NotLearned as u8,
            verdict: 0,
            protocol: libc::IPPROTO_TCP as u8,
            socket_protocol: 0,
            rule_index: BUILTIN_RULE,
            socket_family: 0,
            socket_type: 0,
            rule_id: 0,
        };
        let record = AuditRecord::from_event(&event, 0, Some("/ram.enforced".into()));
        assert_eq!(record.time, "1970-01-01T00:00:05.000000000Z");
        assert_eq!(record.verdict, "deny");
        assert_eq!(record.reason, "not_learned");
        assert_eq!(
            (record.pid, record.tid, record.uid, record.gid),
            (1234, 1235, 1000, 100)
        );
        assert_eq!(record.comm, "curl");
        assert_eq!(record.dst_addr, "203.0.113.3");
        assert_eq!(record.protocol, "tcp");
        assert_eq!(record.rule_index, None);
        assert_eq!(record.tgid, 1234);
        assert_eq!(record.container_id, None);
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""dst_addr":"203.0.113.3""#), "{json}");
        assert!(
            record
                .summary()
                .contains("deny connect4 tcp 203.0.113.3:8080")
        );
        assert!(!json.contains("socket"), "{json}");

        // A process name cannot end the log line or fake another one.
        let mut forged = event;
        forged.comm = *b"x\n[INFO] allow\0\0";
        let line = AuditRecord::from_event(&forged, 0, None).summary();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(r"(x\n[INFO] allow)"), "{line}");

        // A socket refused at creation names what was asked for.
        let event = GateEvent {
            hook: Hook::SocketCreate as u8,
            reason: Reason::SocketType as u8,
            addr: [0; 16],
            port: 0,
            protocol: 255,
            socket_protocol: libc::IPPROTO_MPTCP as u16,
            socket_family: libc::AF_INET6 as u16,
            socket_type: libc::SOCK_STREAM as u16,
            ..event
        };
        let record = AuditRecord::from_event(&event, 0, None);
        assert_eq!(record.socket.as_deref(), Some("inet6 stream mptcp"));
        assert_eq!(record.reason, "socket_type");
        assert_eq!(record.hook, "socket_create");
        assert!(
            record
                .summary()
                .starts_with("deny socket inet6 stream mptcp by pid 1234"),
            "{}",
            record.summary()
        );
    }
}
