//! Folding repeated image decisions into one audit line. The pull gate answers a request per
//! manifest, blob and retry, and any local user can send it requests: the first decision of a
//! kind (verdict, action, image, reason, user, enforcement point) in a window is written at
//! once; its repeats within the window are only counted, and written as one line (`repeated`)
//! when the window ends — so nothing is lost and nobody can flood the log.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::records::{ImageRecord, now_rfc3339};

/// How long repeats of a decision are folded into one line.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Kinds remembered at most; past this, every window ends at once (its repeats written).
const KINDS_MAX: usize = 4096;

type Kind = (
    &'static str,
    &'static str,
    String,
    String,
    Option<String>,
    &'static str,
);

struct Window {
    since: Instant,
    repeated: u64,
    record: ImageRecord,
}

#[derive(Default)]
pub struct Repeats {
    windows: HashMap<Kind, Window>,
}

impl Repeats {
    /// The lines to write for `record`, decided at `now`: none (a repeat, counted), or the
    /// record itself, after the line that closes the previous window of its kind if that one
    /// had repeats.
    pub fn admit(&mut self, record: ImageRecord, now: Instant) -> Vec<ImageRecord> {
        let kind = kind(&record);
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
    pub fn flush(&mut self, now: Instant, all: bool) -> Vec<ImageRecord> {
        let ended: Vec<Kind> = self
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

fn kind(record: &ImageRecord) -> Kind {
    (
        record.verdict,
        record.action,
        record.image.clone(),
        record.reason.clone(),
        record.user.clone(),
        record.via,
    )
}

/// The line for a window's repeats, if it had any.
fn closing_line(window: Window) -> Option<ImageRecord> {
    (window.repeated > 0).then(|| ImageRecord {
        time: now_rfc3339(),
        repeated: Some(window.repeated),
        ..window.record
    })
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
            repeated: None,
        }
    }

    #[test]
    fn repeats_fold_into_one_line_and_none_is_lost() {
        let mut repeats = Repeats::default();
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
        let mut repeats = Repeats::default();
        let start = Instant::now();
        repeats.admit(record("a/x"), start);
        repeats.admit(record("a/x"), start);
        let lines = repeats.admit(record("a/x"), start + WINDOW);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].repeated, Some(1));
        assert_eq!(lines[1].repeated, None);
    }
}
