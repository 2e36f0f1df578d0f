//! The daemon's Prometheus metrics: what is counted where, and the text exposition format.
//!
//! Labels are bounded on purpose: verdicts, reasons, hooks, map names, categories. Pids,
//! addresses and container ids belong to the audit log; as labels they would grow the series
//! without end.
//!
//! Written by the event loop (the auditor's decisions, reloads, map fill levels) and read by the
//! metrics server's thread, which adds what it reads from the kernel at each scrape (counters,
//! the learned map's size), so a scrape never waits on the event loop.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
};

/// What the event loop records; shared with the metrics server.
pub type SharedMetrics = Arc<Mutex<Metrics>>;

/// Allowed connections come from the kernel's counters (every one, audited or not); the
/// auditor counts what it writes, so only its other verdicts are counted there.
pub const ALLOW: &str = "allow";

#[derive(Debug, Default)]
pub struct Metrics {
    /// (verdict, reason, hook) → count, of the decisions the auditor wrote (not allows).
    decisions: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// (kind, verdict, via) → count.
    image_decisions: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// result (`ok`, `rejected`, `failed`) → count.
    reloads: BTreeMap<&'static str, u64>,
    policy_sha256: String,
    /// map → (entries, capacity), as of the last tick or reload.
    maps: BTreeMap<&'static str, (usize, usize)>,
    /// Image decisions the event loop had no room for.
    image_decisions_lost: u64,
}

/// What the kernel says at the moment of a scrape.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelReading {
    /// (counter name, total) of every kernel counter.
    pub counters: Vec<(&'static str, u64)>,
    /// Live entries of the learned-address map, and its capacity.
    pub learned: Option<(usize, usize)>,
}

impl Metrics {
    pub fn decision(&mut self, verdict: &'static str, reason: &'static str, hook: &'static str) {
        if verdict != ALLOW {
            *self.decisions.entry((verdict, reason, hook)).or_default() += 1;
        }
    }

    pub fn image_decision(&mut self, kind: &'static str, verdict: &'static str, via: &'static str) {
        *self
            .image_decisions
            .entry((kind, verdict, via))
            .or_default() += 1;
    }

    pub fn reload(&mut self, result: &'static str) {
        *self.reloads.entry(result).or_default() += 1;
    }

    pub fn policy(&mut self, sha256: &str) {
        sha256.clone_into(&mut self.policy_sha256);
    }

    pub fn map(&mut self, map: &'static str, entries: usize, capacity: usize) {
        self.maps.insert(map, (entries, capacity));
    }

    pub fn image_decisions_lost(&mut self, total: u64) {
        self.image_decisions_lost = total;
    }

    /// The exposition text: these metrics with the kernel's reading.
    pub fn render(&self, kernel: &KernelReading) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |name: &str| {
            kernel
                .counters
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, v)| *v)
        };

        family(
            &mut out,
            "ram_decisions_total",
            "counter",
            "Connection and DNS decisions of the kernel programs: allows from the kernel's \
             counters, every other verdict as audited.",
        );
        for (name, reason) in [
            ("allowed_learned", "learned"),
            ("allowed_cidr", "cidr"),
            ("allowed_loopback", "loopback"),
            ("allowed_resolver", "resolver"),
            ("tls_allowed", "tls_name"),
        ] {
            let hook = if name == "tls_allowed" {
                "tls_hello"
            } else {
                "connect"
            };
            sample(
                &mut out,
                "ram_decisions_total",
                &[("verdict", ALLOW), ("reason", reason), ("hook", hook)],
                counter(name),
            );
        }
        for ((verdict, reason, hook), count) in &self.decisions {
            sample(
                &mut out,
                "ram_decisions_total",
                &[("verdict", verdict), ("reason", reason), ("hook", hook)],
                *count,
            );
        }

        family(
            &mut out,
            "ram_dns_answers_total",
            "counter",
            "DNS answer records judged by the kernel, by what became of them.",
        );
        for (name, result) in [
            ("learned", "learned"),
            ("refreshed", "refreshed"),
            ("answer_not_allowed", "name_not_allowed"),
            ("answer_untrusted", "untrusted_resolver"),
            ("answer_unsolicited", "unsolicited"),
            ("answer_forbidden_addr", "forbidden_address"),
            ("answer_unexamined", "unexamined"),
            ("learn_map_full", "map_full"),
            ("spoofed_dns_dropped", "spoofed_dropped"),
        ] {
            sample(
                &mut out,
                "ram_dns_answers_total",
                &[("result", result)],
                counter(name),
            );
        }

        family(
            &mut out,
            "ram_learned_addresses",
            "gauge",
            "Addresses learned from DNS answers, now in the kernel's map.",
        );
        let (learned, learned_capacity) = kernel.learned.unwrap_or_default();
        sample(&mut out, "ram_learned_addresses", &[], learned as u64);

        family(
            &mut out,
            "ram_map_entries",
            "gauge",
            "Entries in each of ram's kernel maps.",
        );
        let mut maps = self.maps.clone();
        if kernel.learned.is_some() {
            maps.insert("learned", (learned, learned_capacity));
        }
        for (map, (entries, _)) in &maps {
            sample(
                &mut out,
                "ram_map_entries",
                &[("map", map)],
                *entries as u64,
            );
        }
        family(
            &mut out,
            "ram_map_capacity",
            "gauge",
            "The most entries each of ram's kernel maps holds.",
        );
        for (map, (_, capacity)) in &maps {
            sample(
                &mut out,
                "ram_map_capacity",
                &[("map", map)],
                *capacity as u64,
            );
        }

        family(
            &mut out,
            "ram_events_lost_total",
            "counter",
            "Events that did not reach the audit log: the kernel's rings were full, or the \
             event loop had no room for an image decision.",
        );
        sample(
            &mut out,
            "ram_events_lost_total",
            &[("ring", "kernel")],
            counter("events_dropped"),
        );
        sample(
            &mut out,
            "ram_events_lost_total",
            &[("ring", "image_decisions")],
            self.image_decisions_lost,
        );

        family(
            &mut out,
            "ram_policy_reloads_total",
            "counter",
            "Policy reloads since the daemon started: ok, rejected (the file is invalid or \
             unprotected), failed (the kernel refused the update).",
        );
        for result in ["ok", "rejected", "failed"] {
            sample(
                &mut out,
                "ram_policy_reloads_total",
                &[("result", result)],
                self.reloads.get(result).copied().unwrap_or(0),
            );
        }

        family(
            &mut out,
            "ram_policy_info",
            "gauge",
            "The policy in force, by the SHA-256 of its file.",
        );
        sample(
            &mut out,
            "ram_policy_info",
            &[("sha256", &self.policy_sha256)],
            1,
        );

        family(
            &mut out,
            "ram_image_decisions_total",
            "counter",
            "Image Access Management decisions, by image kind, verdict and enforcement point.",
        );
        for ((kind, verdict, via), count) in &self.image_decisions {
            sample(
                &mut out,
                "ram_image_decisions_total",
                &[("kind", kind), ("verdict", verdict), ("via", via)],
                *count,
            );
        }
        out
    }
}

/// The kind of image a decision was about, from its audit reason: the category when allowed,
/// Docker's message (`image access denied: community images not allowed`) when denied.
/// Anything else (a reference that could not be read, whose text a client chose) is
/// `unjudged`: labels take only these fixed values.
pub fn image_kind(reason: &str) -> &'static str {
    const KINDS: [(&str, &str); 5] = [
        ("official", "official"),
        ("organization", "organization"),
        ("verified_publisher", "verified_publisher"),
        ("community", "community"),
        ("other_registry", "other_registry"),
    ];
    let denied = reason
        .strip_prefix("image access denied: ")
        .and_then(|rest| rest.strip_suffix(" images not allowed"))
        .map(|kind| kind.replace(' ', "_"));
    let kind = denied.as_deref().unwrap_or(reason);
    KINDS
        .iter()
        .find(|(name, _)| *name == kind)
        .map_or("unjudged", |(_, label)| label)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the exposition format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_rendered_with_help_and_type() {
        let mut metrics = Metrics::default();
        metrics.decision("deny", "not_learned", "connect4");
        metrics.decision("deny", "not_learned", "connect4");
        metrics.decision(ALLOW, "learned", "connect4");
        metrics.image_decision("community", "deny", "pull_gate");
        metrics.reload("ok");
        metrics.policy("ab12");
        metrics.map("allowed_names", 3, 65536);
        let kernel = KernelReading {
            counters: vec![
                ("allowed_learned", 7),
                ("learned", 2),
                ("events_dropped", 1),
            ],
            learned: Some((2, 65536)),
        };
        let text = metrics.render(&kernel);
        for family in [
            "ram_decisions_total",
            "ram_dns_answers_total",
            "ram_learned_addresses",
            "ram_map_entries",
            "ram_map_capacity",
            "ram_events_lost_total",
            "ram_policy_reloads_total",
            "ram_policy_info",
            "ram_image_decisions_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}\n{text}"
            );
        }
        for line in [
            "ram_decisions_total{verdict=\"deny\",reason=\"not_learned\",hook=\"connect4\"} 2",
            "ram_decisions_total{verdict=\"allow\",reason=\"learned\",hook=\"connect\"} 7",
            "ram_dns_answers_total{result=\"learned\"} 2",
            "ram_learned_addresses 2",
            "ram_map_entries{map=\"learned\"} 2",
            "ram_map_capacity{map=\"allowed_names\"} 65536",
            "ram_events_lost_total{ring=\"kernel\"} 1",
            "ram_policy_reloads_total{result=\"ok\"} 1",
            "ram_policy_info{sha256=\"ab12\"} 1",
            "ram_image_decisions_total{kind=\"community\",verdict=\"deny\",via=\"pull_gate\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        // Allows the auditor wrote are not counted twice.
        assert!(!text.contains("hook=\"connect4\"} 1"), "{text}");
    }

    #[test]
    fn image_kinds_come_from_categories_and_messages() {
        assert_eq!(image_kind("official"), "official");
        assert_eq!(
            image_kind("image access denied: community images not allowed"),
            "community"
        );
        assert_eq!(
            image_kind("image access denied: verified publisher images not allowed"),
            "verified_publisher"
        );
        assert_eq!(image_kind("other_registry"), "other_registry");
        assert_eq!(image_kind("could not read the image"), "unjudged");
        assert_eq!(
            image_kind("invalid reference `official/../x`"),
            "unjudged",
            "a client's text never picks the label"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
