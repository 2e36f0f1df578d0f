//! Folding repeated decisions into one audit line. The pull gate answers a request per
//! manifest, blob and retry, and any local user can send it requests; a resolver library
//! retries a refused DNS query on every server and search domain. The first decision of a kind
//! (for an image: verdict, action, image, reason, user, enforcement point, exception; for a DNS query:
//! cgroup, name, type) in a window is written at once; its repeats within the window are only
//! counted, and written as one line (`repeated`) when the window ends — so nothing is lost and
//! nobody can flood the log.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

use super::records::{ImageRecord, QueryRecord, now_rfc3339};

/// A record whose repeats fold: what makes two of them the same decision, and how the line
/// closing a window says how many more there were.
pub trait Foldable: Clone {
    type Kind: Clone + Eq + Hash;
    fn kind(&self) -> Self::Kind;
    fn with_repeats(self, repeated: u64, time: String) -> Self;
}

impl Foldable for ImageRecord {
    type Kind = (
        &'static str,
        &'static str,
        String,
        String,
        Option<String>,
        &'static str,
        Option<String>,
    );

    fn kind(&self) -> Self::Kind {
        (
            self.verdict,
            self.action,
            self.image.clone(),
            self.reason.clone(),
            self.user.clone(),
            self.via,
            self.exception.clone(),
        )
    }

    fn with_repeats(self, repeated: u64, time: String) -> Self {
        Self {
            time,
            repeated: Some(repeated),
            ..self
        }
    }
}

impl Foldable for QueryRecord {
    type Kind = (u64, String, String);

    fn kind(&self) -> Self::Kind {
        (self.cgroup_id, self.hostname.clone(), self.qtype.clone())
    }

    fn with_repeats(self, repeated: u64, time: String) -> Self {
        Self {
            time,
            repeated: Some(repeated),
            ..self
        }
    }
}

/// How long repeats of a decision are folded into one line.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Kinds remembered at most; past this, every window ends at once (its repeats written).
const KINDS_MAX: usize = 4096;

struct Window<R> {
    since: Instant,
    repeated: u64,
    record: R,
}

pub struct Repeats<R: Foldable> {
    windows: HashMap<R::Kind, Window<R>>,
}

impl<R: Foldable> Default for Repeats<R> {
    fn default() -> Self {
        Self {
            windows: HashMap::new(),
        }
    }
}

impl<R: Foldable> Repeats<R> {
    /// The lines to write for `record`, decided at `now`: none (a repeat, counted), or the
    /// record itself, after the line that closes the previous window of its kind if that one
    /// had repeats.
    pub fn admit(&mut self, record: R, now: Instant) -> Vec<R> {
        let kind = record.kind();
        if let Some(window) = self.windows.get_mut(&kind)
            && now.duration_since(window.since) < WINDOW
        {
            window.repeated += 1;
            return Vec::new();
        }
        let mut lines = Vec::new();
        if self.windows.len() >= KINDS_MAX {
            lines.extend(self.flush(now, true));
        }
        if let Some(ended) = self.windows.remove(&kind) {
            lines.extend(closing_line(ended));
        }
        self.windows.insert(
            kind,
            Window {
                since: now,
                repeated: 0,
                record: record.clone(),
            },
        );
        lines.push(record);
        lines
    }

    /// Ends the windows that are over at `now` (or all, with `all`); returns the lines for
    /// those that had repeats.
    pub fn flush(&mut self, now: Instant, all: bool) -> Vec<R> {
        let ended: Vec<R::Kind> = self
            .windows
            .iter()
            .filter(|(_, w)| all || now.duration_since(w.since) >= WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|k| self.windows.remove(&k))
            .filter_map(closing_line)
            .collect()
    }
}

/// The line for a window's repeats, if it had any.
fn closing_line<R: Foldable>(window: Window<R>) -> Option<R> {
    (window.repeated > 0).then(|| window.record.with_repeats(window.repeated, now_rfc3339()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(image: &str) -> ImageRecord {
        ImageRecord {
            time: "t".into(),
            verdict: "deny",
            reason: "community images not allowed".into(),
            action: "manifests",
            image: image.into(),
            user: None,
            via: "pull_gate",
            exception: None,
            repeated: None,
        }
    }

    #[test]
    fn repeats_fold_into_one_line_and_none_is_lost() {
        let mut repeats = Repeats::<ImageRecord>::default();
        let start = Instant::now();
        assert_eq!(repeats.admit(record("a/x"), start).len(), 1);
        for _ in 0..1000 {
            assert!(repeats.admit(record("a/x"), start).is_empty());
        }
        // Another image is its own kind.
        assert_eq!(repeats.admit(record("b/y"), start).len(), 1);
        // The window ends: one line with the count.
        let lines = repeats.flush(start + WINDOW, false);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].repeated, Some(1000));
        assert_eq!(lines[0].image, "a/x");
        // A kind seen again after its window is written again.
        assert_eq!(repeats.admit(record("a/x"), start + WINDOW * 2).len(), 1);
    }

    #[test]
    fn a_new_window_first_closes_the_old_one() {
        let mut repeats = Repeats::<ImageRecord>::default();
        let start = Instant::now();
        repeats.admit(record("a/x"), start);
        repeats.admit(record("a/x"), start);
        let lines = repeats.admit(record("a/x"), start + WINDOW);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].repeated, Some(1));
        assert_eq!(lines[1].repeated, None);
    }

    #[test]
    fn refused_queries_fold_per_cgroup_and_name() {
        let query = |cgroup_id: u64, name: &str| QueryRecord {
            time: "t".into(),
            verdict: "deny",
            reason: "query_not_allowed",
            hook: "dns_query",
            cgroup: None,
            cgroup_id,
            container_id: None,
            container_name: None,
            container_image: None,
            hostname: name.into(),
            qtype: "A".into(),
            resolver: "10.0.0.53".into(),
            protocol: "udp".into(),
            repeated: None,
        };
        let mut repeats = Repeats::<QueryRecord>::default();
        let start = Instant::now();
        assert_eq!(repeats.admit(query(1, "x.test"), start).len(), 1);
        assert!(repeats.admit(query(1, "x.test"), start).is_empty());
        assert_eq!(repeats.admit(query(2, "x.test"), start).len(), 1);
        assert_eq!(repeats.admit(query(1, "y.test"), start).len(), 1);
        let lines = repeats.flush(start, true);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].repeated, Some(1));
    }
}
