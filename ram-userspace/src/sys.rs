//! The few bpf(2) commands aya 0.14 does not expose for what ram needs: creating, pinning,
//! opening and atomically updating cgroup links by file descriptor. Each is a thin, checked
//! wrapper over the raw system call.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

// Commands of `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// Calls bpf(2) with `attr` (a `union bpf_attr` member, zero-padded as the kernel wants).
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a properly sized, initialized bpf_attr member for `cmd`; pointers inside
    // it are set by the callers to live buffers.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned_fd(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `BPF_LINK_CREATE` for a cgroup hook: attaches `program` to `cgroup` (multi-attach; flags must
/// be 0 for cgroup links). The link lives as long as the descriptor or a pin.
pub fn link_create(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        // The rest of the link_create member (target-specific data), left zero.
        _rest: [u64; 4],
    }
    let mut attr = Attr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr).map(owned_fd)
}

/// `BPF_LINK_UPDATE`: swaps the program of `link` for `program` in one step, with no moment
/// where neither runs (Linux 5.7+ for cgroup links). Fails with ENOLINK if someone detached
/// the link.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `BPF_OBJ_PIN`: pins `object` at `path` on bpffs.
pub fn obj_pin(object: impl AsFd, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: object.as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `BPF_OBJ_GET`: opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_OBJ_GET, &mut attr).map(owned_fd)
}

/// `BPF_FS_MAGIC` (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(path) = c_path(path) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a properly sized out-parameter.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// The standard mount point of the bpf filesystem.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Mounts a bpf filesystem (mode 0700) at `path`.
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    let source = c"bpf";
    let options = c"mode=0700";
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process runs in the host's (the initial) mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountNamespace {
    Initial,
    /// A private one (a sandboxed service, a container).
    Private,
    /// Cannot tell, and why.
    Unknown(String),
}

/// The inode of the initial mount namespace on Linux 6.18+ (`MNT_NS_INIT_INO`,
/// include/uapi/linux/nsfs.h); older kernels number it like any other namespace.
const MNT_NS_INIT_INO: u64 = 0xEFFF_FFF8;

/// Whether this process is in the host's mount namespace: the same namespace as PID 1 when PID
/// 1's is readable (root in some sandboxes may not read it), otherwise by the initial
/// namespace's fixed inode (Linux 6.18+).
pub fn mount_namespace() -> MountNamespace {
    mount_namespace_of(
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    )
}

fn mount_namespace_of(
    own: io::Result<std::path::PathBuf>,
    init: io::Result<std::path::PathBuf>,
) -> MountNamespace {
    let own = match own {
        Ok(own) => own,
        Err(err) => return MountNamespace::Unknown(format!("/proc/self/ns/mnt: {err}")),
    };
    match init {
        Ok(init) if init == own => MountNamespace::Initial,
        Ok(_) => MountNamespace::Private,
        Err(init_err) => {
            let inode = own
                .to_str()
                .and_then(|link| link.strip_prefix("mnt:["))
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|number| number.parse::<u64>().ok());
            if inode == Some(MNT_NS_INIT_INO) {
                MountNamespace::Initial
            } else {
                MountNamespace::Unknown(format!(
                    "/proc/1/ns/mnt cannot be read ({init_err}) and this kernel does not number \
                     the initial mount namespace (Linux 6.18+ does)"
                ))
            }
        }
    }
}

/// Whether this kernel knows bpf(2) command `command` (`enum bpf_cmd`), asked with a
/// descriptor that cannot be valid: a kernel that knows the command looks the descriptor up and
/// answers EBADF; one that does not answers EINVAL. (Used for the link commands, whose
/// attributes start with descriptors.)
pub fn command_supported(command: u32) -> io::Result<bool> {
    #[repr(C)]
    struct Attr {
        fd: u32,
        second_fd: u32,
        _rest: [u64; 6],
    }
    let mut attr = Attr {
        fd: u32::MAX,
        second_fd: u32::MAX,
        _rest: [0; 6],
    };
    match bpf(command as libc::c_long, &mut attr) {
        Ok(fd) => {
            // Unreachable with these descriptors; close whatever came back.
            drop(owned_fd(fd));
            Ok(true)
        }
        Err(err) if err.raw_os_error() == Some(libc::EBADF) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(err) => Err(err),
    }
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+): the
/// namespace where the trusted resolvers are. `None` on older kernels, where the programs fall
/// back to the initial namespace.
pub fn own_netns_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-parameter of the advertised size.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of the programs' expiry times.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME − CLOCK_BOOTTIME, in nanoseconds.
pub fn realtime_minus_boottime_ns() -> i128 {
    fn now(clock: libc::clockid_t) -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid clock id and out-parameter.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    }
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_BOOTTIME)
}

/// Runs `create` with the process umask set to `mask`, then restores it: files and sockets
/// `create` makes never exist with looser modes, not even between creation and a chmod.
pub fn with_umask<T>(mask: libc::mode_t, create: impl FnOnce() -> T) -> T {
    // SAFETY: umask has no memory arguments; the daemon creates no files on other threads
    // while it binds its sockets.
    let previous = unsafe { libc::umask(mask) };
    let result = create();
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_mount_namespace_is_recognized_without_pid_1() {
        let link = |text: &str| Ok(std::path::PathBuf::from(text));
        let denied = || Err(io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(
            mount_namespace_of(link("mnt:[4026531832]"), link("mnt:[4026531832]")),
            MountNamespace::Initial
        );
        assert_eq!(
            mount_namespace_of(link("mnt:[4026532201]"), link("mnt:[4026531832]")),
            MountNamespace::Private
        );
        // Linux 6.18+: the initial namespace's fixed inode decides.
        assert_eq!(
            mount_namespace_of(link("mnt:[4026531832]"), denied()),
            MountNamespace::Initial
        );
        let MountNamespace::Unknown(why) = mount_namespace_of(link("mnt:[4026532201]"), denied())
        else {
            panic!("a numbered namespace without PID 1 is undecidable");
        };
        assert!(why.contains("/proc/1/ns/mnt cannot be read"), "{why}");
    }
}
