//! Refusing a policy file that anyone but root could change.
//!
//! Longer than 600 lines: half of it is tests, one per way a user other than root could swap
//! a name on the path.
//!
//! The policy is what limits the processes ram watches, so whoever can rewrite it, or swap any
//! name on the way to it (a directory, a symlink), can lift those limits. Checking every step
//! from `/` also makes the answer stable: once each directory is root-only, only root can change
//! what the path names afterwards, so there is no window for a non-root user to race the check.

use std::{
    ffi::OsString,
    fs::{self, FileType, Metadata},
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Component, Path, PathBuf},
};

/// The kernel's own limit before `ELOOP`; a path that needs more is a loop or an attack.
const MAX_SYMLINKS: usize = 40;

/// Write permission for group or others. POSIX ACL entries are capped by the group bits (the
/// ACL mask), so this also catches write access granted through an ACL.
const GROUP_OR_OTHERS_WRITE: u32 = 0o022;

/// Where the policy belongs when its current place cannot be trusted.
const SAFE_HOME: &str = "/etc/ram";

/// What a checked path leads to, for messages: a user who can change a directory on the way can
/// replace or redirect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    Policy,
    AuditLog,
    /// The run directory: the control socket and the copy of the policy in force.
    RunDirectory,
    /// The Docker authorization plugin's socket, which dockerd trusts with its decisions.
    PluginSocket,
    /// The metrics endpoint's socket (`[metrics] listen = "unix:…"`).
    MetricsSocket,
}

impl std::fmt::Display for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Policy => "the policy",
            Self::AuditLog => "the audit log",
            Self::RunDirectory => "the daemon's control socket and policy copy",
            Self::PluginSocket => "the authorization plugin's socket",
            Self::MetricsSocket => "the metrics socket",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    #[error(
        "cannot make {path} absolute: the current directory is unreadable ({source}); give an \
         absolute path (the policy belongs in {SAFE_HOME})"
    )]
    CurrentDirectory { path: PathBuf, source: io::Error },
    #[error(
        "cannot look up {path}: {source}; the path must name an existing file or directory \
         (the policy belongs in {SAFE_HOME})"
    )]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "directory {path} is owned by uid {uid}, not root, so that user can replace {guarded}; \
         run `chown root:root {path} && chmod go-w {path}`, or move {guarded} to a root-owned \
         directory{}",
        example_home(*.guarded)
    )]
    DirectoryNotRootOwned {
        path: PathBuf,
        uid: u32,
        guarded: Guarded,
    },
    #[error(
        "directory {path} has mode {mode:04o}, so group or others can write to it and replace \
         {guarded}; {}",
        writable_directory_advice(.path, .mode, *.guarded)
    )]
    DirectoryWritable {
        path: PathBuf,
        /// Permission bits only (`mode & 0o7777`).
        mode: u32,
        guarded: Guarded,
    },
    #[error(
        "{path} is a symlink in {directory} owned by uid {uid}, not root, so that user can \
         repoint it at something else than {guarded}; run `chown -h root:root {path}`, or give \
         ram the real path"
    )]
    SymlinkNotRootOwned {
        path: PathBuf,
        directory: PathBuf,
        uid: u32,
        guarded: Guarded,
    },
    #[error(
        "following {path} took more than {limit} symlinks (the last was {last_symlink}), which \
         is probably a symlink loop; fix the links or give ram the policy file's own path"
    )]
    TooManySymlinks {
        path: PathBuf,
        last_symlink: PathBuf,
        limit: usize,
    },
    #[error(
        "{path} is not a directory, but the policy path continues below it; fix the policy path"
    )]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} is a {kind}, not a regular file; the policy must be a regular file such as \
         {SAFE_HOME}/policy.toml"
    )]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error(
        "policy file {path} is owned by uid {uid}, not root, so that user can rewrite it; run \
         `chown root:root {path}`"
    )]
    FileNotRootOwned { path: PathBuf, uid: u32 },
    #[error(
        "policy file {path} has mode {mode:04o}, so group or others can rewrite it; run \
         `chmod go-w {path}`"
    )]
    FileWritable {
        path: PathBuf,
        /// Permission bits only (`mode & 0o7777`).
        mode: u32,
    },
}

/// Where the policy belongs; the other paths have their own conventions (/var/log, /run).
fn example_home(guarded: Guarded) -> String {
    match guarded {
        Guarded::Policy => format!(" such as {SAFE_HOME}"),
        Guarded::AuditLog
        | Guarded::RunDirectory
        | Guarded::PluginSocket
        | Guarded::MetricsSocket => String::new(),
    }
}

/// A shared sticky directory such as /tmp must not be chmod-ed, and the sticky bit does not
/// save it: anyone can claim the name there whenever it is missing or renamed.
fn writable_directory_advice(path: &Path, mode: &u32, guarded: Guarded) -> String {
    if mode & 0o1000 != 0 {
        format!(
            "the sticky bit is not enough (anyone can take the name of {guarded} there while it \
             is missing); do not chmod a shared directory, move {guarded} to a root-owned \
             directory{}",
            example_home(guarded)
        )
    } else {
        format!(
            "run `chown root:root {dir} && chmod go-w {dir}`, or move {guarded} to a root-owned \
             directory{}",
            example_home(guarded),
            dir = path.display()
        )
    }
}

/// Checks that only root can change what `path` names: every directory from `/` down (symlink
/// targets included) and every symlink on the way must be root-owned, no directory may be
/// writable by group or others (sticky or not), and the file at the end must be a root-owned
/// regular file that group and others cannot write. A relative `path` is taken from the current
/// directory, whose ancestors are then checked too.
pub fn check_policy_path(path: &Path) -> Result<(), ProtectError> {
    if path.is_absolute() {
        return walk(path);
    }
    let current_directory =
        std::env::current_dir().map_err(|source| ProtectError::CurrentDirectory {
            path: path.to_path_buf(),
            source,
        })?;
    check_relative_to(&current_directory, path)
}

/// `path` taken from `directory` (the current directory, in use).
fn check_relative_to(directory: &Path, path: &Path) -> Result<(), ProtectError> {
    walk(&directory.join(path))
}

/// One step of a lookup still to be taken.
enum Step {
    Root,
    Parent,
    Name(OsString),
}

/// `path`'s steps in lookup order; `.` is dropped since it never moves the walk.
fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|component| match component {
        Component::Prefix(_) | Component::RootDir => Some(Step::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Step::Parent),
        Component::Normal(name) => Some(Step::Name(name.to_owned())),
    })
}

/// Resolves `absolute` as the kernel would, checking each object before relying on it.
/// `resolved` only ever holds directories that passed, with no symlinks in it, so `..` can be
/// taken lexically on it and lands where the kernel's `..` would.
fn walk(absolute: &Path) -> Result<(), ProtectError> {
    walk_to(absolute, Target::File, Guarded::Policy)
}

/// What the path must end in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    File,
    Directory,
}

/// Checks that only root can change what lies in directory `path` (the same rules as for a
/// policy file, the directory itself included): for the daemon's run directory and the audit
/// log's directory, where a path a user could redirect would let them steer root's writes.
pub fn check_directory_path(path: &Path, guarded: Guarded) -> Result<(), ProtectError> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| ProtectError::CurrentDirectory {
                path: path.to_path_buf(),
                source,
            })?
            .join(path)
    };
    walk_to(&absolute, Target::Directory, guarded)
}

fn walk_to(absolute: &Path, target: Target, guarded: Guarded) -> Result<(), ProtectError> {
    // A stack: the next step is at the end, so a symlink's target can be pushed in front of
    // what remains.
    let mut pending: Vec<Step> = steps(absolute).rev().collect();
    let mut resolved = PathBuf::from("/");
    check_directory(&resolved, &lstat(&resolved)?, guarded)?;
    let mut symlinks_followed = 0;

    while let Some(step) = pending.pop() {
        let name = match step {
            Step::Root => {
                resolved = PathBuf::from("/");
                continue;
            }
            Step::Parent => {
                resolved.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let candidate = resolved.join(name);
        let metadata = lstat(&candidate)?;
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            // Its directory (`resolved`) already passed, so only the link's owner is left.
            check_symlink_owner(&candidate, &resolved, &metadata, guarded)?;
            symlinks_followed += 1;
            if symlinks_followed > MAX_SYMLINKS {
                return Err(ProtectError::TooManySymlinks {
                    path: absolute.to_path_buf(),
                    last_symlink: candidate,
                    limit: MAX_SYMLINKS,
                });
            }
            let target = fs::read_link(&candidate).map_err(|source| ProtectError::Io {
                path: candidate.clone(),
                source,
            })?;
            // An absolute target starts with `Step::Root`; a relative one goes on from
            // `resolved`, the symlink's own directory.
            pending.extend(steps(&target).rev());
        } else if pending.is_empty() && target == Target::File {
            return check_policy_file(&candidate, &metadata);
        } else if file_type.is_dir() {
            check_directory(&candidate, &metadata, guarded)?;
            resolved = candidate;
        } else {
            return Err(ProtectError::NotADirectory { path: candidate });
        }
    }
    if target == Target::Directory {
        return Ok(());
    }
    // The last step was `/` or `..`, so the path names a directory.
    Err(ProtectError::NotRegularFile {
        path: resolved,
        kind: "directory",
    })
}

fn lstat(path: &Path) -> Result<Metadata, ProtectError> {
    fs::symlink_metadata(path).map_err(|source| ProtectError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn check_directory(path: &Path, metadata: &Metadata, guarded: Guarded) -> Result<(), ProtectError> {
    if metadata.uid() != 0 {
        return Err(ProtectError::DirectoryNotRootOwned {
            path: path.to_path_buf(),
            uid: metadata.uid(),
            guarded,
        });
    }
    // Nobody writes into a volume mounted read-only, whatever its root's mode says: Kubernetes
    // mounts a ConfigMap volume read-only, and its directory is 0777 (an emptyDir underneath).
    // Only the root of such a mount: under a file system read-only as a whole (systemd's
    // ProtectSystem=strict), a group-writable directory could have been renamed and replaced
    // outside it.
    if metadata.mode() & GROUP_OR_OTHERS_WRITE != 0
        && !crate::sys::is_read_only_mount_root(path).unwrap_or(false)
    {
        return Err(ProtectError::DirectoryWritable {
            path: path.to_path_buf(),
            mode: metadata.mode() & 0o7777,
            guarded,
        });
    }
    Ok(())
}

/// A symlink's own mode is meaningless on Linux, but its owner can replace it (even in a
/// sticky directory), so the owner must be root.
fn check_symlink_owner(
    path: &Path,
    directory: &Path,
    metadata: &Metadata,
    guarded: Guarded,
) -> Result<(), ProtectError> {
    if metadata.uid() != 0 {
        return Err(ProtectError::SymlinkNotRootOwned {
            path: path.to_path_buf(),
            directory: directory.to_path_buf(),
            uid: metadata.uid(),
            guarded,
        });
    }
    Ok(())
}

/// Reading by group or others is fine: the policy is not a secret, only its integrity matters.
fn check_policy_file(path: &Path, metadata: &Metadata) -> Result<(), ProtectError> {
    if !metadata.is_file() {
        return Err(ProtectError::NotRegularFile {
            path: path.to_path_buf(),
            kind: file_kind(&metadata.file_type()),
        });
    }
    if metadata.uid() != 0 {
        return Err(ProtectError::FileNotRootOwned {
            path: path.to_path_buf(),
            uid: metadata.uid(),
        });
    }
    if metadata.mode() & GROUP_OR_OTHERS_WRITE != 0 {
        return Err(ProtectError::FileWritable {
            path: path.to_path_buf(),
            mode: metadata.mode() & 0o7777,
        });
    }
    Ok(())
}

fn file_kind(file_type: &FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "named pipe"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs::Permissions,
        os::unix::fs::{DirBuilderExt as _, PermissionsExt as _, chown, lchown, symlink},
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    const NOBODY: u32 = 65534;

    static NEXT_TEST_DIRECTORY: AtomicUsize = AtomicUsize::new(0);

    /// A fresh root-owned 0755 directory, removed on drop. It lives under /run by default
    /// because its parents must pass the check, which /tmp (mode 1777) does not.
    struct TestDirectory {
        path: PathBuf,
    }

    impl TestDirectory {
        fn new() -> Self {
            Self::under("/run")
        }

        fn under(parent: &str) -> Self {
            let number = NEXT_TEST_DIRECTORY.fetch_add(1, Ordering::Relaxed);
            let path = Path::new(parent)
                .join(format!("ram-protect-tests-{}-{number}", std::process::id()));
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&path)
                .unwrap_or_else(|error| {
                    panic!(
                        "creating {}: {error} (these tests need root)",
                        path.display()
                    )
                });
            set_mode(&path, 0o755);
            Self { path }
        }

        /// A root-owned regular file at `relative` with exactly `mode`.
        fn file(&self, relative: &str, mode: u32) -> PathBuf {
            let path = self.path.join(relative);
            fs::write(&path, "{}").unwrap();
            set_mode(&path, mode);
            path
        }

        /// A root-owned directory at `relative` with exactly `mode`.
        fn directory(&self, relative: &str, mode: u32) -> PathBuf {
            let path = self.path.join(relative);
            fs::create_dir(&path).unwrap();
            set_mode(&path, mode);
            path
        }

        /// A root-owned symlink at `relative` pointing at `target` (taken as is).
        fn symlink(&self, relative: &str, target: impl AsRef<Path>) -> PathBuf {
            let path = self.path.join(relative);
            symlink(target, &path).unwrap();
            path
        }
    }

    impl Drop for TestDirectory {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.path);
        }
    }

    /// Set explicitly because the umask may have cleared bits at creation.
    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn good_file_passes() {
        let root = TestDirectory::new();
        let policy = root.file("policy.json", 0o644);
        check_policy_path(&policy).unwrap();
    }

    #[test]
    fn file_readable_only_by_root_passes() {
        let root = TestDirectory::new();
        let policy = root.file("policy.json", 0o600);
        check_policy_path(&policy).unwrap();
    }

    #[test]
    fn group_writable_file_is_refused() {
        let root = TestDirectory::new();
        let policy = root.file("policy.json", 0o664);
        let error = check_policy_path(&policy).unwrap_err();
        assert!(
            matches!(&error, ProtectError::FileWritable { path, mode: 0o664 } if *path == policy),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&*policy.to_string_lossy()), "{message}");
        assert!(message.contains("0664"), "{message}");
        assert!(message.contains("chmod go-w"), "{message}");
    }

    #[test]
    fn others_writable_file_is_refused() {
        let root = TestDirectory::new();
        let policy = root.file("policy.json", 0o646);
        let error = check_policy_path(&policy).unwrap_err();
        assert!(
            matches!(&error, ProtectError::FileWritable { path, mode: 0o646 } if *path == policy),
            "{error:?}"
        );
    }

    #[test]
    fn file_owned_by_nobody_is_refused() {
        let root = TestDirectory::new();
        let policy = root.file("policy.json", 0o644);
        chown(&policy, Some(NOBODY), None).unwrap();
        let error = check_policy_path(&policy).unwrap_err();
        assert!(
            matches!(&error, ProtectError::FileNotRootOwned { path, uid: NOBODY } if *path == policy),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("uid 65534"), "{message}");
        assert!(message.contains("chown root:root"), "{message}");
    }

    #[test]
    fn group_writable_parent_directory_is_refused() {
        let root = TestDirectory::new();
        let shared = root.directory("shared", 0o775);
        let policy = root.file("shared/policy.json", 0o644);
        let error = check_policy_path(&policy).unwrap_err();
        assert!(
            matches!(&error, ProtectError::DirectoryWritable { path, mode: 0o775, .. } if *path == shared),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("0775"), "{message}");
        assert!(message.contains("chmod go-w"), "{message}");
    }

    #[test]
    fn parent_directory_owned_by_nobody_is_refused() {
        let root = TestDirectory::new();
        let theirs = root.directory("theirs", 0o755);
        let policy = root.file("theirs/policy.json", 0o644);
        chown(&theirs, Some(NOBODY), None).unwrap();
        let error = check_policy_path(&policy).unwrap_err();
        assert!(
            matches!(&error, ProtectError::DirectoryNotRootOwned { path, uid: NOBODY, .. } if *path == theirs),
            "{error:?}"
        );
    }

    #[test]
    fn file_under_tmp_is_refused_despite_the_sticky_bit() {
        let root = TestDirectory::under("/tmp");
        let policy = root.file("policy.json", 0o644);
        let error = check_policy_path(&policy).unwrap_err();
        assert!(
            matches!(&error, ProtectError::DirectoryWritable { mode, .. } if mode & 0o1002 == 0o1002),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("sticky"), "{message}");
        assert!(message.contains(SAFE_HOME), "{message}");
    }

    #[test]
    fn root_symlink_in_safe_directory_to_safe_file_passes() {
        let root = TestDirectory::new();
        let policy = root.file("policy.json", 0o644);
        let absolute_link = root.symlink("absolute-link", &policy);
        let relative_link = root.symlink("relative-link", "policy.json");
        check_policy_path(&absolute_link).unwrap();
        check_policy_path(&relative_link).unwrap();
    }

    #[test]
    fn parent_after_symlink_is_taken_from_the_symlink_target() {
        let root = TestDirectory::new();
        root.directory("real", 0o755);
        root.directory("real/sub", 0o755);
        root.file("real/policy.json", 0o644);
        root.directory("links", 0o755);
        root.symlink("links/to-sub", root.path.join("real/sub"));
        // Lexically this would be links/policy.json, which does not exist; physically it is
        // real/policy.json.
        check_policy_path(&root.path.join("links/to-sub/../policy.json")).unwrap();
        // And a relative target with `..` continues from the symlink's directory.
        root.symlink("links/up", "../real/policy.json");
        check_policy_path(&root.path.join("links/up")).unwrap();
    }

    #[test]
    fn symlink_into_unsafe_directory_is_refused() {
        let root = TestDirectory::new();
        let open = root.directory("open", 0o777);
        let policy = root.file("open/policy.json", 0o644);
        let link = root.symlink("policy.json", &policy);
        let error = check_policy_path(&link).unwrap_err();
        assert!(
            matches!(&error, ProtectError::DirectoryWritable { path, mode: 0o777, .. } if *path == open),
            "{error:?}"
        );
    }

    #[test]
    fn symlink_owned_by_nobody_is_refused() {
        let root = TestDirectory::new();
        let policy = root.file("policy.json", 0o644);
        let link = root.symlink("link", &policy);
        lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
        let error = check_policy_path(&link).unwrap_err();
        assert!(
            matches!(
                &error,
                ProtectError::SymlinkNotRootOwned { path, directory, uid: NOBODY, .. }
                    if *path == link && *directory == root.path
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("is a symlink in"), "{message}");
        assert!(message.contains("chown -h root:root"), "{message}");
    }

    #[test]
    fn symlink_loop_is_refused() {
        let root = TestDirectory::new();
        let first = root.symlink("first", "second");
        root.symlink("second", "first");
        let error = check_policy_path(&first).unwrap_err();
        assert!(
            matches!(&error, ProtectError::TooManySymlinks { path, limit: MAX_SYMLINKS, .. } if *path == first),
            "{error:?}"
        );
        assert!(error.to_string().contains("symlink loop"), "{error}");
    }

    #[test]
    fn forty_symlinks_are_followed() {
        let root = TestDirectory::new();
        root.file("policy.json", 0o644);
        let mut previous = String::from("policy.json");
        for number in 0..MAX_SYMLINKS {
            let name = format!("link-{number}");
            root.symlink(&name, &previous);
            previous = name;
        }
        check_policy_path(&root.path.join(&previous)).unwrap();
        root.symlink("one-too-many", &previous);
        let error = check_policy_path(&root.path.join("one-too-many")).unwrap_err();
        assert!(
            matches!(error, ProtectError::TooManySymlinks { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn relative_path_works() {
        // From a directory of the test's own (the process's current directory is shared by
        // every test, and may lie below /tmp, which the check rightly refuses).
        let root = TestDirectory::new();
        root.file("policy.json", 0o644);
        let subdirectory = root.path.join("sub");
        fs::create_dir(&subdirectory).unwrap();
        check_relative_to(&root.path, Path::new("policy.json")).unwrap();
        check_relative_to(&subdirectory, Path::new("../policy.json")).unwrap();

        let unsafe_policy = root.file("unsafe.json", 0o666);
        let error = check_relative_to(&subdirectory, Path::new("../unsafe.json")).unwrap_err();
        assert!(
            matches!(&error, ProtectError::FileWritable { path, .. } if *path == unsafe_policy),
            "{error:?}"
        );
    }

    #[test]
    fn directories_are_checked_like_the_policy_path() {
        let root = TestDirectory::new();
        check_directory_path(&root.path, Guarded::AuditLog).unwrap();
        let error = check_directory_path(Path::new("/tmp"), Guarded::AuditLog).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("replace the audit log") && !message.contains("policy"),
            "{message}"
        );
        assert!(
            matches!(error, ProtectError::DirectoryWritable { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn directory_is_refused() {
        let root = TestDirectory::new();
        let error = check_policy_path(&root.path).unwrap_err();
        assert!(
            matches!(&error, ProtectError::NotRegularFile { path, kind: "directory" } if *path == root.path),
            "{error:?}"
        );
        let error = check_policy_path(Path::new("/")).unwrap_err();
        assert!(
            matches!(
                error,
                ProtectError::NotRegularFile {
                    kind: "directory",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn path_continuing_below_a_file_is_refused() {
        let root = TestDirectory::new();
        let policy = root.file("policy.json", 0o644);
        let error = check_policy_path(&policy.join("more")).unwrap_err();
        assert!(
            matches!(&error, ProtectError::NotADirectory { path } if *path == policy),
            "{error:?}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let root = TestDirectory::new();
        let missing = root.path.join("missing.json");
        let error = check_policy_path(&missing).unwrap_err();
        assert!(
            matches!(
                &error,
                ProtectError::Io { path, source }
                    if *path == missing && source.kind() == io::ErrorKind::NotFound
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&*missing.to_string_lossy()), "{message}");
    }
}
