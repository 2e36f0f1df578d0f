//! Noticing policy file changes with inotify, so a new policy is enforced within a fraction of a
//! second of being written (polling would either lag or burn CPU on every host).
//!
//! Longer than 650 lines: more than half of it is tests, one per way a policy file is replaced.
//!
//! The watch is on the file's directory, not the file: editors and configuration tools replace
//! a file by writing a temporary one and renaming it over the old one, and a watch on the old
//! inode would never see the new file. The file need not exist when watching starts.
//!
//! Symlinks on the way are followed: every symlink the path resolves through is watched in its
//! own directory, and so is the file it ends at, re-resolved after each change. A Kubernetes
//! ConfigMap volume is such a path: `policy.toml -> ..data/policy.toml`, `..data ->
//! ..2026_11_29_…`, and the kubelet updates it by renaming a new `..data` over the old one.
use std::{
    ffi::OsString,
    io::{self, Read as _},
    os::unix::ffi::OsStrExt as _,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

use crate::sys;

/// How long the file must stay untouched before a change is reported. Covers the gap between
/// the steps of one save (truncate, several writes, close; or write temp, fsync, rename) so that
/// a half-written file is not parsed, while keeping reloads far below a second.
const QUIET: Duration = Duration::from_millis(50);

/// The longest a change waits for quiet. A file rewritten in a tight loop (a misbehaving tool)
/// would otherwise never be re-read; with the cap it is re-read at most ~4 times a second.
const MAX_DELAY: Duration = Duration::from_millis(250);

/// Events on the directory's entries that can change what reading the policy path returns.
/// IN_MODIFY is left out on purpose: IN_CLOSE_WRITE follows every in-place write, and reacting
/// to IN_MODIFY would only wake us mid-write.
const FILE_EVENTS: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_ATTRIB;

/// Events meaning the watched directory itself went away; after these no further events for the
/// policy file can arrive (IN_IGNORED and IN_UNMOUNT are always reported, without asking).
const DIR_GONE_EVENTS: u32 =
    libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED | libc::IN_UNMOUNT;

/// IN_ONLYDIR: fail at once if the parent is not a directory instead of watching a file.
/// IN_EXCL_UNLINK: no events for entries already unlinked (a removed old policy file that some
/// process still has open), which could never be the current policy.
const WATCH_MASK: u32 = FILE_EVENTS
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;

const HEADER_LEN: usize = size_of::<libc::inotify_event>();

/// Read buffer: room for 64 events with the longest names. The kernel requires space for at
/// least one maximal event (else EINVAL); more just means fewer reads during bursts.
const BUF_LEN: usize = 64 * (HEADER_LEN + libc::NAME_MAX as usize + 1);

/// The most symlinks followed while resolving the path: the kernel's own limit before `ELOOP`.
const MAX_SYMLINKS: usize = 40;

/// Watches one policy file for changes; see [`PolicyWatcher::changed`].
#[derive(Debug)]
pub struct PolicyWatcher {
    fd: AsyncFd<std::fs::File>,
    /// The policy path, absolute.
    path: PathBuf,
    /// The watch on the path's own directory: the one whose loss ends the watcher.
    primary: libc::c_int,
    dir: PathBuf,
    /// Every directory the path resolves through, with the entries in it that decide what the
    /// path names; the first is the path's own directory and file name.
    watches: Vec<DirWatch>,
    buf: Box<[u8]>,
    /// The debounce window of a change seen but not yet reported. Kept here, not in the future,
    /// so that a `changed()` dropped by `select!` loses nothing: the next call resumes the same
    /// window.
    pending: Option<Window>,
    /// Set once the directory went away: the watch is dead, and every later call must fail
    /// rather than wait forever.
    gone: Option<&'static str>,
}

/// One inotify watch and the entry names in its directory that matter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirWatch {
    wd: libc::c_int,
    names: Vec<OsString>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    first: Instant,
    last: Instant,
}

impl Window {
    fn deadline(self) -> Instant {
        (self.last + QUIET).min(self.first + MAX_DELAY)
    }
}

impl PolicyWatcher {
    /// Watches the directory holding `path` (editors and config tools replace files by rename,
    /// which a watch on the file itself would miss), and the directory of each symlink on the
    /// way. The directory must exist; the file need not.
    ///
    /// Must be called within a tokio runtime with IO enabled (tokio panics otherwise).
    pub fn new(path: &Path) -> io::Result<Self> {
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("policy path {} names no file", path.display()),
            )
        })?;
        let path = std::path::absolute(path)?;
        let dir = path.parent().unwrap_or(Path::new("/")).to_owned();
        let context = |err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("watching {} for policy changes: {err}", dir.display()),
            )
        };
        let inotify = sys::inotify_init().map_err(context)?;
        let primary = sys::inotify_add_watch(&inotify, &dir, WATCH_MASK).map_err(context)?;
        // SAFETY: the File, moved into the AsyncFd, keeps the descriptor open and returns the
        // same number until the AsyncFd drops it; nothing here swaps it through `get_mut`.
        let fd = unsafe { AsyncFd::register_with_interest(inotify, Interest::READABLE) }
            .map_err(|err| context(err.into()))?;
        let mut watcher = Self {
            fd,
            primary,
            watches: vec![DirWatch {
                wd: primary,
                names: vec![name.to_owned()],
            }],
            path,
            dir,
            buf: vec![0; BUF_LEN].into_boxed_slice(),
            pending: None,
            gone: None,
        };
        watcher.follow_symlinks();
        Ok(watcher)
    }

    /// Resolves the path again and watches what it resolves through now: the directories of
    /// its symlinks and of the file it ends at. Watches no longer on the way are dropped (never
    /// the primary one). A directory that cannot be watched is skipped: the path's own
    /// directory is always watched, and a change there re-resolves.
    fn follow_symlinks(&mut self) {
        let name = self.path.file_name().unwrap_or_default().to_owned();
        let mut wanted = vec![DirWatch {
            wd: self.primary,
            names: vec![name],
        }];
        for (dir, name) in resolution(&self.path) {
            let Ok(wd) = sys::inotify_add_watch(self.fd.get_ref(), &dir, WATCH_MASK) else {
                continue;
            };
            match wanted.iter_mut().find(|watch| watch.wd == wd) {
                Some(watch) if watch.names.contains(&name) => {}
                Some(watch) => watch.names.push(name),
                None => wanted.push(DirWatch {
                    wd,
                    names: vec![name],
                }),
            }
        }
        for old in &self.watches {
            if !wanted.iter().any(|watch| watch.wd == old.wd) {
                // Already gone if its directory was removed; nothing to do then.
                let _ = sys::inotify_rm_watch(self.fd.get_ref(), old.wd);
            }
        }
        self.watches = wanted;
    }

    /// Waits until the file may have changed: resolves after an event naming the file or a
    /// symlink on its way (written and closed, created, deleted, renamed to or from, attributes
    /// changed), a directory on its way going, or a queue overflow, once no further such event
    /// came for [`QUIET`], and at most [`MAX_DELAY`] after the first, so that a burst of writes
    /// is read once.
    ///
    /// Wake-ups can be spurious (the file rewritten with the same bytes, or events that arrived
    /// just before the caller's previous read); re-reading must be harmless. A change made after
    /// this returns always produces a later wake-up.
    ///
    /// Cancel-safe: events are read and recorded without an await in between, and the pending
    /// debounce window lives in `self`, so if the future is dropped (another `select!` branch
    /// won) the next call picks up where it left off, returning at once if the window has
    /// already closed.
    ///
    /// Fails, now and on every later call, if the path's own directory is deleted, moved or
    /// unmounted; the caller can create a new watcher once the directory is back.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            if let Some(how) = self.gone {
                return Err(self.gone_error(how));
            }
            let ready = match self.pending.map(Window::deadline) {
                None => Some(self.fd.readable().await?),
                Some(deadline) if Instant::now() >= deadline => {
                    self.report();
                    return Ok(());
                }
                Some(deadline) => tokio::time::timeout_at(deadline, self.fd.readable())
                    .await
                    .ok()
                    .transpose()?,
            };
            let Some(mut ready) = ready else {
                // The window closed with no further event: report the change.
                self.report();
                return Ok(());
            };
            let buf = &mut self.buf;
            let read = ready.try_io(|inotify| inotify.get_ref().read(buf));
            let n = match read {
                Ok(Ok(n)) => n,
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(err)) => {
                    return Err(io::Error::new(
                        err.kind(),
                        format!("reading policy change events: {err}"),
                    ));
                }
                // Drained: readiness was cleared, wait again.
                Err(_would_block) => continue,
            };
            let scan = scan(&self.buf[..n], self.primary, &self.watches);
            if let Some(how) = scan.gone {
                self.gone = Some(how);
                continue;
            }
            if scan.touched {
                let now = Instant::now();
                let first = self.pending.map_or(now, |window| window.first);
                self.pending = Some(Window { first, last: now });
            }
        }
    }

    /// Ends the window of a change about to be reported, and watches what the path resolves
    /// through now (before the caller reads the file, so no later change goes unseen).
    fn report(&mut self) {
        self.pending = None;
        self.follow_symlinks();
    }

    fn gone_error(&self, how: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the policy's directory {} went away ({how}); policy changes are no longer \
                 noticed",
                self.dir.display()
            ),
        )
    }
}

/// The entries (directory, name) that `path` resolves through: each symlink, in the directory
/// holding it, and the last name, in the directory it ends in. Resolution stops at the first
/// step that cannot be taken (a missing entry: the watch on its directory sees it appear).
fn resolution(path: &Path) -> Vec<(PathBuf, OsString)> {
    // A stack of steps as names, "/" and ".." among them (neither is ever an entry's name):
    // the next step is at the end, so a symlink's target can be pushed in front of what
    // remains.
    let mut steps: Vec<OsString> = Vec::new();
    let mut entries = Vec::new();
    let mut resolved = PathBuf::from("/");
    let push_steps = |steps: &mut Vec<OsString>, path: &Path| {
        for component in path.components().rev() {
            match component {
                Component::RootDir | Component::Prefix(_) => steps.push("/".into()),
                Component::ParentDir => steps.push("..".into()),
                Component::CurDir => {}
                Component::Normal(name) => steps.push(name.to_owned()),
            }
        }
    };
    push_steps(&mut steps, path);
    let mut symlinks = 0;
    while let Some(step) = steps.pop() {
        if step == "/" {
            resolved = PathBuf::from("/");
            continue;
        }
        if step == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&step);
        let Ok(metadata) = std::fs::symlink_metadata(&candidate) else {
            entries.push((resolved, step));
            break;
        };
        if metadata.file_type().is_symlink() && symlinks < MAX_SYMLINKS {
            symlinks += 1;
            let Ok(target) = std::fs::read_link(&candidate) else {
                break;
            };
            entries.push((resolved.clone(), step));
            // A relative target goes on from `resolved`, the symlink's own directory.
            push_steps(&mut steps, &target);
        } else if steps.is_empty() {
            entries.push((resolved, step));
            break;
        } else {
            resolved = candidate;
        }
    }
    entries
}

/// What one buffer of inotify events means for the watched file.
#[derive(Debug, Default, PartialEq, Eq)]
struct Scan {
    /// The file may have changed.
    touched: bool,
    /// The path's own directory went away, and how.
    gone: Option<&'static str>,
}

/// Parses the variable-length `inotify_event` records in `buf` (a header, then `len` bytes of
/// NUL-padded name) and keeps what concerns the entries of `watches`; `primary` is the watch on
/// the path's own directory.
fn scan(buf: &[u8], primary: libc::c_int, watches: &[DirWatch]) -> Scan {
    let mut result = Scan::default();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < HEADER_LEN {
            // The kernel only returns whole records; if this ever breaks, assume a change: a
            // spurious reload costs little, a missed one leaves an old policy enforced.
            result.touched = true;
            break;
        }
        // SAFETY: `rest` holds at least HEADER_LEN readable bytes; `inotify_event` is plain
        // integers, valid for any bit pattern; the buffer has no alignment guarantee, hence
        // read_unaligned.
        let event = unsafe { rest.as_ptr().cast::<libc::inotify_event>().read_unaligned() };
        let Some(end) = HEADER_LEN
            .checked_add(event.len as usize)
            .filter(|&end| end <= rest.len())
        else {
            result.touched = true;
            break;
        };
        let padded = &rest[HEADER_LEN..end];
        let event_name = padded.split(|&b| b == 0).next().unwrap_or_default();
        rest = &rest[end..];

        if event.mask & libc::IN_Q_OVERFLOW != 0 {
            // Events were dropped (wd is -1): one of them may have named the file.
            result.touched = true;
            continue;
        }
        // Events of watches already dropped (IN_IGNORED after inotify_rm_watch) concern nothing.
        let Some(watch) = watches.iter().find(|watch| watch.wd == event.wd) else {
            continue;
        };
        if event.mask & DIR_GONE_EVENTS != 0 {
            if event.wd != primary {
                // A directory the path resolved through went (the kubelet removes the old
                // timestamped directory of a ConfigMap): resolve again.
                result.touched = true;
                continue;
            }
            result
                .gone
                .get_or_insert(if event.mask & libc::IN_MOVE_SELF != 0 {
                    "moved"
                } else if event.mask & libc::IN_UNMOUNT != 0 {
                    "unmounted"
                } else {
                    "deleted"
                });
        } else if event.mask & FILE_EVENTS != 0
            && watch.names.iter().any(|name| name.as_bytes() == event_name)
        {
            result.touched = true;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tokio::time::timeout;

    use super::*;

    /// Generous bound for a change to be reported: QUIET (50 ms) plus scheduling slack on a
    /// loaded test machine; a test failing here means no wake-up at all.
    const SHOULD_WAKE: Duration = Duration::from_secs(2);
    /// Longer than MAX_DELAY (250 ms), so a wake-up that was going to come has come.
    const SHOULD_NOT_WAKE: Duration = Duration::from_millis(300);

    /// A fresh directory per test, removed even when the test panics.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!("ram-watch-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir(&path).unwrap();
            Self(path)
        }

        fn policy(&self) -> PathBuf {
            self.0.join("policy.toml")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    async fn assert_wakes(watcher: &mut PolicyWatcher) {
        timeout(SHOULD_WAKE, watcher.changed())
            .await
            .expect("no wake-up for a change")
            .unwrap();
    }

    async fn assert_quiet(watcher: &mut PolicyWatcher) {
        if let Ok(result) = timeout(SHOULD_NOT_WAKE, watcher.changed()).await {
            panic!("unexpected wake-up: {result:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn write_in_place_wakes() {
        let dir = TempDir::new("in-place");
        fs::write(dir.policy(), "old").unwrap();
        let mut watcher = PolicyWatcher::new(&dir.policy()).unwrap();
        fs::write(dir.policy(), "new").unwrap();
        assert_wakes(&mut watcher).await;
        assert_quiet(&mut watcher).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn replace_by_rename_wakes() {
        let dir = TempDir::new("rename");
        fs::write(dir.policy(), "old").unwrap();
        let mut watcher = PolicyWatcher::new(&dir.policy()).unwrap();
        let temp = dir.0.join(".policy.toml.tmp");
        fs::write(&temp, "new").unwrap();
        fs::rename(&temp, dir.policy()).unwrap();
        assert_wakes(&mut watcher).await;
        assert_quiet(&mut watcher).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn creating_a_missing_file_wakes() {
        let dir = TempDir::new("create");
        let mut watcher = PolicyWatcher::new(&dir.policy()).unwrap();
        fs::write(dir.policy(), "new").unwrap();
        assert_wakes(&mut watcher).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn other_files_do_not_wake() {
        let dir = TempDir::new("other");
        fs::write(dir.policy(), "old").unwrap();
        let mut watcher = PolicyWatcher::new(&dir.policy()).unwrap();
        fs::write(dir.0.join("other.toml"), "x").unwrap();
        // A name the policy's name is a prefix of must not match either.
        fs::write(dir.0.join("policy.toml.bak"), "x").unwrap();
        assert_quiet(&mut watcher).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_wakes_once() {
        let dir = TempDir::new("burst");
        let mut watcher = PolicyWatcher::new(&dir.policy()).unwrap();
        for i in 0..5 {
            fs::write(dir.policy(), format!("version {i}")).unwrap();
        }
        assert_wakes(&mut watcher).await;
        assert_quiet(&mut watcher).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn continuous_writes_still_wake() {
        let dir = TempDir::new("continuous");
        let mut watcher = PolicyWatcher::new(&dir.policy()).unwrap();
        let path = dir.policy();
        // Writes every 10 ms, never quiet for QUIET (50 ms); bounded to 3 s and aborted below.
        let writer = tokio::spawn(async move {
            for i in 0..300 {
                fs::write(&path, format!("version {i}")).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        // MAX_DELAY (250 ms) must end the wait long before the writes stop.
        let woke = timeout(Duration::from_secs(1), watcher.changed()).await;
        writer.abort();
        woke.expect("MAX_DELAY did not end the wait").unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_wait_keeps_the_change() {
        let dir = TempDir::new("cancel");
        let mut watcher = PolicyWatcher::new(&dir.policy()).unwrap();
        fs::write(dir.policy(), "new").unwrap();
        // Cancelled after the event is read but inside the QUIET window.
        assert!(
            timeout(Duration::from_millis(10), watcher.changed())
                .await
                .is_err()
        );
        assert_wakes(&mut watcher).await;
        assert_quiet(&mut watcher).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn removing_the_directory_fails() {
        let dir = TempDir::new("gone");
        let mut watcher = PolicyWatcher::new(&dir.policy()).unwrap();
        fs::remove_dir(&dir.0).unwrap();
        let err = timeout(SHOULD_WAKE, watcher.changed())
            .await
            .expect("no error for a deleted directory")
            .unwrap_err();
        assert!(err.to_string().contains("went away"), "{err}");
        // And it stays failed instead of hanging.
        let again = timeout(SHOULD_WAKE, watcher.changed()).await.unwrap();
        assert!(again.is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_missing_directory_is_an_error() {
        let dir = TempDir::new("missing");
        let err = PolicyWatcher::new(&dir.0.join("nope/policy.toml")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    /// One raw record as the kernel lays it out, the name NUL-padded to `name_len` bytes.
    fn record(wd: i32, mask: u32, name: &[u8], name_len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&wd.to_ne_bytes());
        out.extend_from_slice(&mask.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes()); // cookie
        out.extend_from_slice(&name_len.to_ne_bytes());
        out.extend_from_slice(name);
        out.resize(HEADER_LEN + name_len as usize, 0);
        out
    }

    /// The watch table of a plain file `name` in the primary directory (wd 1).
    fn one(name: &[u8]) -> Vec<DirWatch> {
        vec![DirWatch {
            wd: 1,
            names: vec![OsString::from(std::str::from_utf8(name).unwrap())],
        }]
    }

    #[test]
    fn scan_reads_records() {
        let name = b"policy.toml";
        let mut buf = record(1, libc::IN_CLOSE_WRITE, b"other.toml", 16);
        buf.extend(record(1, libc::IN_MOVED_TO, b"policy.toml.bak", 16));
        assert_eq!(scan(&buf, 1, &one(name)), Scan::default());
        buf.extend(record(1, libc::IN_MOVED_TO, b"policy.toml", 16));
        assert!(scan(&buf, 1, &one(name)).touched);
        // Another watch's events do not count.
        assert!(!scan(&record(2, libc::IN_MOVED_TO, name, 16), 1, &one(name)).touched);
        // IN_MODIFY alone waits for the IN_CLOSE_WRITE.
        assert!(!scan(&record(1, libc::IN_MODIFY, name, 16), 1, &one(name)).touched);
        // Overflow reports wd -1 and no name.
        assert!(scan(&record(-1, libc::IN_Q_OVERFLOW, b"", 0), 1, &one(name)).touched);
    }

    #[test]
    fn scan_reports_the_directory_going_away() {
        let name = b"policy.toml";
        let mut buf = record(1, libc::IN_DELETE_SELF, b"", 0);
        buf.extend(record(1, libc::IN_IGNORED, b"", 0));
        assert_eq!(scan(&buf, 1, &one(name)).gone, Some("deleted"));
        let moved = record(1, libc::IN_MOVE_SELF | libc::IN_ISDIR, b"", 0);
        assert_eq!(scan(&moved, 1, &one(name)).gone, Some("moved"));
    }

    #[test]
    fn scan_re_resolves_when_a_directory_on_the_way_goes() {
        let watches = vec![
            DirWatch {
                wd: 1,
                names: vec!["policy.toml".into(), "..data".into()],
            },
            DirWatch {
                wd: 2,
                names: vec!["policy.toml".into()],
            },
        ];
        let gone = record(2, libc::IN_DELETE_SELF, b"", 0);
        assert_eq!(
            scan(&gone, 1, &watches),
            Scan {
                touched: true,
                gone: None
            }
        );
        assert!(scan(&record(1, libc::IN_MOVED_TO, b"..data", 8), 1, &watches).touched);
        // A watch dropped on purpose reports IN_IGNORED: nothing.
        assert_eq!(
            scan(&record(3, libc::IN_IGNORED, b"", 0), 1, &watches),
            Scan::default()
        );
    }

    /// A Kubernetes ConfigMap volume, updated the way the kubelet's atomic writer does it: a
    /// new timestamped directory, a `..data_tmp` symlink renamed over `..data`, the old
    /// directory removed.
    #[tokio::test(flavor = "current_thread")]
    async fn a_configmap_data_swap_wakes() {
        use std::os::unix::fs::symlink;
        let dir = TempDir::new("configmap");
        let first = dir.0.join("..2026_11_29_14_00_00.1");
        fs::create_dir(&first).unwrap();
        fs::write(first.join("policy.toml"), "old").unwrap();
        symlink("..2026_11_29_14_00_00.1", dir.0.join("..data")).unwrap();
        symlink("..data/policy.toml", dir.policy()).unwrap();
        let mut watcher = PolicyWatcher::new(&dir.policy()).unwrap();
        for (round, previous) in [
            (2, first.clone()),
            (3, dir.0.join("..2026_11_29_14_00_00.2")),
        ] {
            let name = format!("..2026_11_29_14_00_00.{round}");
            fs::create_dir(dir.0.join(&name)).unwrap();
            fs::write(dir.0.join(&name).join("policy.toml"), format!("v{round}")).unwrap();
            symlink(&name, dir.0.join("..data_tmp")).unwrap();
            fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
            fs::remove_dir_all(&previous).unwrap();
            assert_wakes(&mut watcher).await;
            assert_quiet(&mut watcher).await;
            assert_eq!(
                fs::read_to_string(dir.policy()).unwrap(),
                format!("v{round}")
            );
        }
        // An edit inside the directory now in use is seen too (the watch moved along).
        fs::write(dir.0.join("..2026_11_29_14_00_00.3/policy.toml"), "edited").unwrap();
        assert_wakes(&mut watcher).await;
    }

    /// The policy path a symlink to a file in another directory: edits there are seen, and so
    /// is the symlink repointed.
    #[tokio::test(flavor = "current_thread")]
    async fn a_symlink_to_another_directory_is_followed() {
        let dir = TempDir::new("link");
        let elsewhere = TempDir::new("link-target");
        fs::write(elsewhere.policy(), "old").unwrap();
        std::os::unix::fs::symlink(elsewhere.policy(), dir.policy()).unwrap();
        let mut watcher = PolicyWatcher::new(&dir.policy()).unwrap();
        fs::write(elsewhere.policy(), "new").unwrap();
        assert_wakes(&mut watcher).await;
        assert_quiet(&mut watcher).await;
        fs::write(elsewhere.0.join("other.toml"), "x").unwrap();
        assert_quiet(&mut watcher).await;
    }

    #[test]
    fn resolution_lists_each_symlink_and_the_file() {
        use std::os::unix::fs::symlink;
        let dir = TempDir::new("resolution");
        fs::create_dir(dir.0.join("..ts")).unwrap();
        fs::write(dir.0.join("..ts/policy.toml"), "x").unwrap();
        symlink("..ts", dir.0.join("..data")).unwrap();
        symlink("..data/policy.toml", dir.policy()).unwrap();
        let names: Vec<(PathBuf, String)> = resolution(&dir.policy())
            .into_iter()
            .map(|(d, n)| (d, n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            names,
            [
                (dir.0.clone(), "policy.toml".to_owned()),
                (dir.0.clone(), "..data".to_owned()),
                (dir.0.join("..ts"), "policy.toml".to_owned()),
            ]
        );
        // A missing file: its directory and name.
        let missing = dir.0.join("missing.toml");
        assert_eq!(
            resolution(&missing),
            [(dir.0.clone(), OsString::from("missing.toml"))]
        );
        // A symlink loop ends.
        symlink("loop", dir.0.join("loop")).unwrap();
        assert!(resolution(&dir.0.join("loop")).len() <= MAX_SYMLINKS + 1);
    }

    #[test]
    fn scan_is_bounds_checked() {
        let name = b"policy.toml";
        let whole = record(1, libc::IN_CLOSE_WRITE, b"other.toml", 16);
        // A cut header, a name longer than the buffer, and a huge `len`: no panic, and treated
        // as a possible change.
        for cut in [3, HEADER_LEN + 4] {
            assert!(scan(&whole[..cut], 1, &one(name)).touched, "cut at {cut}");
        }
        let huge = record(1, libc::IN_CLOSE_WRITE, b"", 0)
            .into_iter()
            .take(12)
            .chain(u32::MAX.to_ne_bytes())
            .collect::<Vec<_>>();
        assert!(scan(&huge, 1, &one(name)).touched);
        assert_eq!(scan(&[], 1, &one(name)), Scan::default());
    }
}
