//! The one raw-syscall module: an `unsafe` call into `libc` belongs here, behind a safe
//! function that checks the result; the rest of the crate calls these, aya, or std.
//!
//! Longer than 650 lines: being the one such module, it holds every wrapper with its safety
//! argument, whatever its domain.
//!
//! - bpf(2) commands aya 0.14 does not expose for what ram needs: creating, pinning, opening and
//!   atomically updating cgroup links by descriptor (aya has no public BPF_LINK_UPDATE, its
//!   pinned links hand out no descriptor, and it creates a cgroup link only when the kernel's
//!   version string says 5.7+, falling back to an unpinnable legacy attachment otherwise), asking
//!   which programs are attached to a cgroup, and whether the kernel knows a command. The
//!   attributes are aya-obj's `union bpf_attr`, the commands and attach types its enums.
//! - the filesystem type of a path (bpffs, cgroup2), mounting bpffs, the mount namespace,
//!   opening a file inside a container's root (openat2);
//! - clocks (CLOCK_BOOTTIME, the programs' clock; CLOCK_REALTIME; CLOCK_MONOTONIC);
//! - network namespace cookies (this process's, and a container's through a short-lived thread);
//! - RLIMIT_MEMLOCK and RLIMIT_NOFILE, the umask and the effective user id;
//! - confining a command: a cgroup namespace, capabilities, its user (`ram exec`).
//!
//! Kernel constants come from `aya_obj::generated` (bpf.h) and `libc` (magic.h, socket.h);
//! those neither has are defined here with the header they come from.

use std::{
    ffi::CString,
    io, mem,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd};

// --- bpf(2) ---------------------------------------------------------------------------------

/// An all-zero `union bpf_attr`: the kernel wants every byte a command does not use to be zero.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a C union of integers and arrays of integers, for which all-zero
    // bytes are a valid value.
    unsafe { mem::zeroed() }
}

/// Calls bpf(2) with command number `command`. The whole union is passed (as aya does): a
/// kernel older than aya-obj's headers accepts the larger size because the extra bytes are zero.
fn bpf_raw(command: u32, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, initialized bpf_attr of the size passed; the pointers the callers
    // put in it point to buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            libc::c_long::from(command),
            &raw mut *attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn bpf(command: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    bpf_raw(command as u32, attr)
}

/// The descriptor a bpf(2) command just returned, owned.
fn owned_fd(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other(format!("bpf(2) returned {fd}")))?;
    // SAFETY: the kernel just returned this new descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A descriptor as the `__u32` bpf_attr fields hold it (descriptors are never negative).
fn fd_field(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd().unsigned_abs()
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `BPF_LINK_CREATE` for a cgroup hook: attaches `program` to `cgroup` as a bpf_link (which runs
/// alongside other programs on the hook; flags must be 0 for cgroup links). The link lives as
/// long as the descriptor or a pin.
pub fn link_create(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: bpf_attach_type,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.link_create.__bindgen_anon_1.prog_fd = fd_field(program);
    attr.link_create.__bindgen_anon_2.target_fd = fd_field(cgroup);
    attr.link_create.attach_type = attach_type as u32;
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).and_then(owned_fd)
}

/// `BPF_LINK_UPDATE`: swaps the program of `link` for `program` in one step, with no moment
/// where neither runs (Linux 5.7+ for cgroup links). Fails with ENOLINK if someone detached
/// the link.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_update.link_fd = fd_field(link);
    attr.link_update.__bindgen_anon_1.new_prog_fd = fd_field(program);
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// `BPF_OBJ_PIN`: pins `object` at `path` on bpffs.
pub fn obj_pin(object: impl AsFd, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd_field(object.as_fd());
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `BPF_OBJ_GET`: opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    bpf(bpf_cmd::BPF_OBJ_GET, &mut attr).and_then(owned_fd)
}

/// `BPF_PROG_QUERY`: ids of the programs attached to `cgroup` directly (not inherited) for
/// `attach_type`.
pub fn attached_program_ids(
    cgroup: impl AsFd,
    attach_type: bpf_attach_type,
) -> io::Result<Vec<u32>> {
    // Plenty: a cgroup rarely has more than a handful of programs per hook (more: ENOSPC).
    const MAX_PROGS: u32 = 64;
    let mut ids = vec![0u32; MAX_PROGS as usize];
    let mut attr = zeroed_attr();
    attr.query.__bindgen_anon_1.target_fd = fd_field(cgroup.as_fd());
    attr.query.attach_type = attach_type as u32;
    attr.query.prog_ids = ids.as_mut_ptr() as u64;
    attr.query.__bindgen_anon_2.prog_cnt = MAX_PROGS;
    bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr)?;
    // SAFETY: reading a u32 the kernel wrote (prog_cnt and count share it); any bits are valid.
    let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt };
    ids.truncate(count.min(MAX_PROGS) as usize);
    Ok(ids)
}

/// Whether this kernel knows bpf(2) command `command`.
pub fn command_supported(command: bpf_cmd) -> io::Result<bool> {
    command_number_supported(command as u32)
}

/// Asks with descriptors that cannot be valid: a kernel that knows the command looks the first
/// one up and answers EBADF; one that does not answers EINVAL. (Meant for the link commands,
/// whose attributes start with two descriptors.)
fn command_number_supported(command: u32) -> io::Result<bool> {
    let mut attr = zeroed_attr();
    attr.link_create.__bindgen_anon_1.prog_fd = u32::MAX;
    attr.link_create.__bindgen_anon_2.target_fd = u32::MAX;
    match bpf_raw(command, &mut attr) {
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

// --- filesystems and mounts -----------------------------------------------------------------

/// The `f_type` of the filesystem `path` is on (statfs(2)), as the 32-bit `*_MAGIC` numbers of
/// include/uapi/linux/magic.h: `f_type`'s width and signedness differ between C libraries, the
/// magic numbers fit in 32 bits.
fn filesystem_magic(path: &Path) -> io::Result<u32> {
    let path = c_path(path)?;
    // SAFETY: statfs is plain old data, all-zero bytes are a valid value.
    let mut stat: libc::statfs = unsafe { mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a properly sized out-parameter.
    if unsafe { libc::statfs(path.as_ptr(), &raw mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as u32)
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    filesystem_magic(path).is_ok_and(|magic| magic == libc::BPF_FS_MAGIC as u32)
}

/// Whether `path` is on a cgroup v2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    filesystem_magic(path).is_ok_and(|magic| magic == libc::CGROUP2_SUPER_MAGIC as u32)
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
/// include/uapi/linux/nsfs.h; not in libc); older kernels number it like any other namespace.
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

fn mount_namespace_of(own: io::Result<PathBuf>, init: io::Result<PathBuf>) -> MountNamespace {
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

// --- network namespace ----------------------------------------------------------------------

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+): the
/// namespace where the trusted resolvers are. `None` on older kernels, where the programs fall
/// back to the initial namespace.
pub fn own_netns_cookie() -> Option<u64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    socket_netns_cookie(socket.as_fd()).ok()
}

/// The inode number and the cookie of the network namespace `ns_file` names
/// (`/proc/PID/ns/net`), the cookie as the programs' `bpf_get_netns_cookie` sees it. A short-lived thread enters the namespace (setns(2) moves
/// only the calling thread for network namespaces) and asks a socket made there; no other
/// thread of the daemon ever leaves its own namespace. Linux 5.14+ (`SO_NETNS_COOKIE`).
pub fn netns_cookie_of(ns_file: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let namespace = std::fs::File::open(ns_file)?;
    let inode = namespace.metadata()?.ino();
    let cookie = std::thread::Builder::new()
        .name("netns-cookie".into())
        .spawn(move || {
            // SAFETY: a valid descriptor of a namespace file; the thread ends right after.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: plain socket(2); the descriptor is owned at once.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a descriptor just returned by socket(2), owned by nothing else.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            socket_netns_cookie(socket.as_fd())
        })?
        .join()
        .map_err(|_| io::Error::other("the netns-cookie thread panicked"))??;
    Ok((inode, cookie))
}

fn socket_netns_cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid descriptor and an out-parameter of the advertised size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Opens `path` (relative) for reading inside the directory tree `root` as if `root` were `/`:
/// a symlink in it (absolute or `..`) cannot lead out, magic links (`/proc/self/...`) are
/// refused, and so is anything but a regular file — checked before it is opened for reading, as
/// opening a device can act on it. For files of a container's root (`/proc/PID/root`), which
/// its processes write. openat2(2), Linux 5.6+.
pub fn open_in_root(root: &Path, path: &Path) -> io::Result<std::fs::File> {
    let root = std::fs::File::open(root)?;
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is three integers; all zero is valid (and what its unset fields need).
    let mut how: libc::open_how = unsafe { mem::zeroed() };
    // O_PATH: a handle that reads nothing and opens no device.
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid directory descriptor, a NUL-terminated path and an open_how of the size
    // passed; the descriptor returned is owned at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &raw const how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by openat2(2), owned by nothing else.
    let handle = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !std::fs::File::from(handle.try_clone()?)
        .metadata()?
        .is_file()
    {
        return Err(io::Error::other("not a regular file"));
    }
    // Reopening the handle's own file (not a path a container could change meanwhile).
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
}

// --- confining a command (`ram exec`) ------------------------------------------------------

/// Capabilities with which a root process could leave its cgroup or get around the programs:
/// mount and namespaces (SYS_ADMIN), BPF objects and links (BPF, PERFMON), its network's
/// configuration (NET_ADMIN), packet sockets (NET_RAW), other processes (SYS_PTRACE), kernel
/// modules and raw memory (SYS_MODULE, SYS_RAWIO), file handles outside its mounts
/// (DAC_READ_SEARCH).
pub const ESCAPE_CAPABILITIES: [u32; 9] = [21, 39, 38, 12, 13, 19, 16, 17, 2];

/// Makes the calling process the root of a new cgroup namespace: it can then move no process
/// (itself included) out of its cgroup, whatever its user (the kernel refuses migrations
/// outside the namespace's root). unshare(2), Linux 4.6+.
pub fn unshare_cgroup_namespace() -> io::Result<()> {
    // SAFETY: unshare(2) takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Enters the cgroup namespace of PID 1 when this process is in another one: a daemon in a pod
/// (containerd's CRI gives each its own cgroup namespace on cgroup v2) with the host's PID
/// namespace reads every `/proc/PID/cgroup` relative to its own cgroup otherwise
/// (`0::/../../system.slice/…`), and finds no engine by its process. Returns whether it moved.
/// Must run before any thread starts: setns(2) moves the calling thread only, and threads
/// started later inherit it. Needs CAP_SYS_ADMIN.
pub fn enter_init_cgroup_namespace() -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let own = std::fs::metadata("/proc/self/ns/cgroup")?;
    let init = std::fs::metadata("/proc/1/ns/cgroup")?;
    if (own.dev(), own.ino()) == (init.dev(), init.ino()) {
        return Ok(false);
    }
    let namespace = std::fs::File::open("/proc/1/ns/cgroup")?;
    // SAFETY: setns(2) with a descriptor we own and a namespace type flag.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWCGROUP) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// Removes `capabilities` from the bounding set (so no exec, setuid binary or file capability
/// gives them back), clears the ambient set, and takes them out of the inheritable,
/// permitted and effective sets. prctl(2), capset(2).
pub fn drop_capabilities(capabilities: &[u32]) -> io::Result<()> {
    for &capability in capabilities {
        // SAFETY: prctl(2) with integer arguments. EINVAL: a capability this kernel does not
        // know (CAP_BPF before 5.8), which then nobody can have.
        let rc =
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability as libc::c_ulong, 0, 0, 0) };
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: prctl(2) with integer arguments.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget(2) with a version-3 header and room for its two data words.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for &capability in capabilities {
        let (word, bit) = ((capability / 32) as usize, 1u32 << (capability % 32));
        if let Some(d) = data.get_mut(word) {
            d.effective &= !bit;
            d.permitted &= !bit;
            d.inheritable &= !bit;
        }
    }
    // SAFETY: capset(2) with the header and data just read, only bits cleared.
    if unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Becomes user `uid` with group `gid` and no supplementary groups (root gives up every
/// capability with its uid). setgroups(2), setgid(2), setuid(2).
pub fn switch_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: setgroups(2) with an empty list, then setgid/setuid with plain integers.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// --- clocks ---------------------------------------------------------------------------------

/// `clock` now, in nanoseconds (clock_gettime(2)).
fn clock_ns(clock: libc::clockid_t) -> io::Result<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-parameter; the clock id is checked by the kernel.
    if unsafe { libc::clock_gettime(clock, &raw mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
}

/// `clock` now, for the clocks every Linux ram runs on has (CLOCK_BOOTTIME came in 2.6.39):
/// like `std::time::Instant::now`, this panics if the kernel refuses to tell the time rather
/// than hand out a wrong one.
fn clock_now_ns(clock: libc::clockid_t, name: &str) -> i128 {
    clock_ns(clock).unwrap_or_else(|err| panic!("clock_gettime({name}) failed: {err}"))
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of the programs' expiry times
/// (`bpf_ktime_get_boot_ns`).
pub fn boottime_ns() -> u64 {
    // Never negative: the time since boot.
    u64::try_from(clock_now_ns(libc::CLOCK_BOOTTIME, "CLOCK_BOOTTIME")).unwrap_or(0)
}

/// CLOCK_REALTIME − CLOCK_BOOTTIME, in nanoseconds: what turns the programs' times into
/// wall-clock times.
pub fn realtime_minus_boottime_ns() -> i128 {
    clock_now_ns(libc::CLOCK_REALTIME, "CLOCK_REALTIME")
        - clock_now_ns(libc::CLOCK_BOOTTIME, "CLOCK_BOOTTIME")
}

/// CLOCK_MONOTONIC in nanoseconds (the clock systemd's `MONOTONIC_USEC` is on;
/// `std::time::Instant` uses it too but does not expose its value).
pub fn monotonic_ns() -> io::Result<u64> {
    let ns = clock_ns(libc::CLOCK_MONOTONIC)?;
    u64::try_from(ns).map_err(|_| io::Error::other(format!("CLOCK_MONOTONIC is negative: {ns}")))
}

// --- sock_diag(7) ----------------------------------------------------------------------------

/// The uid owning the TCP socket whose local end is `local` and remote end `remote` (for a
/// loopback client of ram's servers: the client's socket is `local` = its address, `remote` =
/// the server's). One exact lookup by the four-tuple over NETLINK_SOCK_DIAG, where reading
/// `/proc/net/tcp` walks the kernel's whole connection table (milliseconds on an idle host).
pub fn tcp_socket_uid(
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
) -> io::Result<u32> {
    const NETLINK_SOCK_DIAG: libc::c_int = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const HEADER: usize = 16;
    /// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the socket id.
    const REQUEST: usize = 56;
    /// The uid's offset in `struct inet_diag_msg`: 4 bytes, the 48-byte socket id, expires,
    /// rqueue and wqueue.
    const UID_AT: usize = 4 + 48 + 12;

    // SAFETY: socket(2) with constant arguments; the result is checked and owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by socket(2), owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // The kernel answers at once; the bound only guards against a kernel that never does.
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a valid descriptor and option of the size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }

    let mut request = [0u8; HEADER + REQUEST];
    request[0..4].copy_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    let body = &mut request[HEADER..];
    body[0] = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    body[1] = libc::IPPROTO_TCP as u8;
    body[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    let id = &mut body[8..];
    id[0..2].copy_from_slice(&local.port().to_be_bytes());
    id[2..4].copy_from_slice(&remote.port().to_be_bytes());
    let octets = |addr: std::net::SocketAddr| match addr.ip() {
        std::net::IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    id[4..20].copy_from_slice(&octets(local));
    id[20..36].copy_from_slice(&octets(remote));
    // Interface 0 (any), and INET_DIAG_NOCOOKIE: look the socket up by its addresses.
    id[40..48].copy_from_slice(&[0xff; 8]);

    // SAFETY: sockaddr_nl is plain old data; all zero (then the family) addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: a valid descriptor, a buffer of the length passed and an address of its size.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = [0u8; 4096];
    // SAFETY: a valid descriptor and a writable buffer of the length passed.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            answer.as_mut_ptr().cast(),
            answer.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let answer = &answer[..received as usize];
    let field = |at: usize| -> io::Result<[u8; 4]> {
        answer
            .get(at..at + 4)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| io::Error::other("short sock_diag answer"))
    };
    let kind = u16::from_ne_bytes([
        answer.get(4).copied().unwrap_or(0),
        answer.get(5).copied().unwrap_or(0),
    ]);
    if kind == NLMSG_ERROR {
        let code = i32::from_ne_bytes(field(HEADER)?);
        return Err(io::Error::from_raw_os_error(-code));
    }
    Ok(u32::from_ne_bytes(field(HEADER + UID_AT)?))
}

// --- process limits and attributes ----------------------------------------------------------

/// Raises RLIMIT_MEMLOCK (which kernels before 5.11 charge BPF maps to): to unlimited where
/// allowed, otherwise the soft limit to the hard one (raising the hard limit needs
/// CAP_SYS_RESOURCE, which containers often lack).
pub fn raise_memlock_limit() -> io::Result<()> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if set_memlock_limit(&unlimited).is_ok() {
        return Ok(());
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid resource and out-parameter.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    set_memlock_limit(&limit)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (systemd's default soft limit is 1024): the
/// event loop, the Docker servers and the metrics endpoint share the daemon's descriptors, and
/// clients opening many connections must not leave none for attaching to a new cgroup.
/// Returns the new soft limit.
pub fn raise_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid resource and out-parameter.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: a valid resource and a pointer to an initialized rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

fn set_memlock_limit(limit: &libc::rlimit) -> io::Result<()> {
    // SAFETY: a valid resource and a pointer to an initialized rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `create` with the process umask set to `mask`, then restores it: files and sockets
/// `create` makes never exist with looser modes, not even between creation and a chmod.
pub fn with_umask<T>(mask: libc::mode_t, create: impl FnOnce() -> T) -> T {
    // SAFETY: umask has no memory arguments and cannot fail; the daemon creates no files on
    // other threads while it binds its sockets.
    let previous = unsafe { libc::umask(mask) };
    let result = create();
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    result
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// A new inotify instance, non-blocking and close-on-exec, as a `File` so that reading its
/// events needs no further unsafe code.
pub fn inotify_init() -> io::Result<std::fs::File> {
    // SAFETY: no pointers are passed; the result is checked.
    let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// Watches `path` for the events in `mask` on `inotify`; returns the watch descriptor.
pub fn inotify_add_watch(inotify: &std::fs::File, path: &Path, mask: u32) -> io::Result<i32> {
    let path = c_path(path)?;
    // SAFETY: `inotify` is open and `path` is a NUL-terminated string that outlives the call.
    let wd = unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), path.as_ptr(), mask) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(wd)
}

/// Ends the watch `wd` on `inotify` (the kernel then reports IN_IGNORED for it).
pub fn inotify_rm_watch(inotify: &std::fs::File, wd: i32) -> io::Result<()> {
    // SAFETY: plain integers; the result is checked.
    if unsafe { libc::inotify_rm_watch(inotify.as_raw_fd(), wd) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `path` is itself the root of a read-only mount (`STATX_ATTR_MOUNT_ROOT`, Linux 5.8+,
/// and `ST_RDONLY`): a volume mounted read-only there, so nobody writes into it through this
/// mount namespace. Only the mount's root counts: under a read-only file system as a whole (a
/// systemd unit's `ProtectSystem=strict`), ordinary directories are not mount roots.
pub fn is_read_only_mount_root(path: &Path) -> io::Result<bool> {
    let path = c_path(path)?;
    // SAFETY: statx is plain old data, all-zero bytes are a valid value.
    let mut attributes: libc::statx = unsafe { mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a properly sized out-parameter.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS,
            &raw mut attributes,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mount_root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if attributes.stx_attributes_mask & mount_root == 0
        || attributes.stx_attributes & mount_root == 0
    {
        return Ok(false);
    }
    // SAFETY: statvfs is plain old data, all-zero bytes are a valid value.
    let mut stat: libc::statvfs = unsafe { mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a properly sized out-parameter.
    if unsafe { libc::statvfs(path.as_ptr(), &raw mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_flag & libc::ST_RDONLY != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_mount_namespace_is_recognized_without_pid_1() {
        let link = |text: &str| Ok(PathBuf::from(text));
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

    #[test]
    fn clocks_tick() {
        let (boot, monotonic) = (boottime_ns(), monotonic_ns().unwrap());
        assert!(boot > 0 && monotonic > 0);
        // (No order between the two: a time namespace offsets each on its own.)
        assert!(boottime_ns() >= boot);
        assert!(monotonic_ns().unwrap() >= monotonic);
        // Wall-clock time minus the time since boot: after 2001.
        assert!(realtime_minus_boottime_ns() > 1_000_000_000 * 1_000_000_000);
    }

    #[test]
    fn filesystems_are_told_apart() {
        assert!(!is_bpffs(Path::new("/proc")));
        assert!(!is_cgroup2(Path::new("/proc")));
        assert!(!is_bpffs(Path::new("/no/such/path")));
        assert!(filesystem_magic(Path::new("/no/such/path")).is_err());
        assert!(!is_bpffs(Path::new("nul\0byte")));
    }

    /// The kernel running the tests (root only: bpf(2) needs privileges).
    #[test]
    fn this_kernel_knows_the_link_commands_and_not_command_200() {
        if effective_uid() != 0 {
            eprintln!("skipped: bpf(2) needs root");
            return;
        }
        assert!(command_supported(bpf_cmd::BPF_LINK_CREATE).unwrap());
        assert!(command_supported(bpf_cmd::BPF_LINK_UPDATE).unwrap());
        assert!(!command_number_supported(200).unwrap());
    }
}
