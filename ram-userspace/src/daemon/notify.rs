//! systemd's readiness protocol (`sd_notify(3)`), spoken directly so ram needs no libsystemd.
//!
//! With `Type=notify`, systemd holds back units ordered after ram (docker, containerd) until ram
//! says READY=1, that is until its programs are attached and the policy is enforced; without the
//! message those units would start as soon as the process exists, unprotected.
//!
//! The protocol: one datagram of newline-separated `KEY=value` assignments, sent to the
//! AF_UNIX socket named by `$NOTIFY_SOCKET`: a filesystem path, or an abstract socket when it
//! starts with `@`.

use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
};

/// Whether stderr is systemd's journal (`$JOURNAL_STREAM`, `DEV:INODE` of the stream systemd
/// connected, is stderr's): log lines then carry a `<N>` syslog priority prefix, which the
/// journal stores as the line's priority (`journalctl -p warning` shows ram's warnings), and no
/// time stamp, which the journal adds.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|stderr| {
        is_journal_stream(&stream.to_string_lossy(), stderr.dev(), stderr.ino())
    })
}

fn is_journal_stream(variable: &str, dev: u64, ino: u64) -> bool {
    variable
        .split_once(':')
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// The syslog priority of a log level, as `sd-daemon(3)` prefixes want it.
pub fn journal_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Sends `state` (e.g. "READY=1\nSTATUS=enforcing on 2 cgroups") to $NOTIFY_SOCKET when systemd
/// started us with Type=notify; a no-op (Ok(false)) without it, so the daemon runs the same by
/// hand, in containers and under other supervisors.
pub fn sd_notify(state: &str) -> io::Result<bool> {
    notify_from_env(std::env::var_os("NOTIFY_SOCKET").as_deref(), state)
}

fn notify_from_env(socket: Option<&OsStr>, state: &str) -> io::Result<bool> {
    match socket {
        // libsystemd treats an empty variable like an unset one.
        None => Ok(false),
        Some(addr) if addr.is_empty() => Ok(false),
        Some(addr) => notify_to(addr, state).map(|()| true),
    }
}

/// Sends `state` to the notification socket `addr` (the format of `$NOTIFY_SOCKET`).
pub fn notify_to(addr: &OsStr, state: &str) -> io::Result<()> {
    let context = |err: io::Error| {
        io::Error::new(
            err.kind(),
            format!("notifying systemd via {}: {err}", addr.display()),
        )
    };
    if state.is_empty() {
        return Err(context(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty notification",
        )));
    }
    let bytes = addr.as_bytes();
    let target = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(addr),
        // systemd ≥ 253 may pass `vsock:CID:PORT` (to VMs); ram runs on the host it protects.
        _ if bytes.starts_with(b"vsock:") => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "AF_VSOCK notification sockets are not supported",
        )),
        // sd_notify(3) also rejects relative paths: the manager's working directory is not ours.
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path or an abstract socket (@name)",
        )),
    }
    .map_err(context)?;
    // Unbound: systemd identifies the sender by the credentials the kernel attaches (it sets
    // SO_PASSCRED), so this must be sent by the main process (NotifyAccess=main).
    let socket = UnixDatagram::unbound().map_err(context)?;
    let sent = socket
        .send_to_addr(state.as_bytes(), &target)
        .map_err(context)?;
    if sent != state.len() {
        // Datagrams are sent whole or not at all; this would be a kernel surprise.
        return Err(context(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", state.len()),
        )));
    }
    Ok(())
}

/// Tells systemd the daemon is enforcing, which releases the units ordered after it.
pub fn ready(status: &str) -> io::Result<bool> {
    sd_notify(&ready_state(status))
}

/// Tells systemd the policy is being re-read. Must be followed by [`ready`] once the new policy
/// is enforced (or the old one kept), else systemd shows the unit as reloading forever.
pub fn reloading() -> io::Result<bool> {
    sd_notify(&reloading_state()?)
}

/// Tells systemd the daemon is shutting down on purpose, so the exit is not taken for a crash.
pub fn stopping() -> io::Result<bool> {
    sd_notify("STOPPING=1")
}

fn ready_state(status: &str) -> String {
    format!("READY=1\nSTATUS={}", one_line(status))
}

/// systemd's reload protocol (Type=notify-reload, and RELOADING=1 generally) wants the time the
/// reload started, so that it can tell this reload's READY=1 from an earlier one.
fn reloading_state() -> io::Result<String> {
    Ok(format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()?))
}

/// A newline would end the assignment and start a bogus one.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC against
/// (`std::time::Instant` uses it too but does not expose its value).
fn monotonic_usec() -> io::Result<u64> {
    Ok(crate::sys::monotonic_ns()? / 1_000)
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use super::*;

    #[test]
    fn the_journal_stream_is_recognized_by_device_and_inode() {
        assert!(is_journal_stream("8:12345", 8, 12345));
        assert!(!is_journal_stream("8:12345", 8, 1));
        assert!(!is_journal_stream("garbage", 8, 12345));
        assert_eq!(journal_priority(log::Level::Warn), 4);
    }

    /// Bounds each receive: the datagram is sent before `recv` is called, so it is already
    /// queued; the timeout only turns a bug into a failure instead of a hung test.
    const RECV_TIMEOUT: Duration = Duration::from_secs(2);

    fn receive(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        let mut buf = [0; 512];
        let n = socket.recv(&mut buf).expect("no notification arrived");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// A socket path unique to this process and test, removed on drop.
    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("ram-notify-{}-{tag}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            Self(path)
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn sends_to_a_path_socket() {
        let path = TempSocket::new("path");
        let receiver = UnixDatagram::bind(&path.0).unwrap();
        notify_to(path.0.as_os_str(), "READY=1\nSTATUS=enforcing on 2 cgroups").unwrap();
        assert_eq!(receive(&receiver), "READY=1\nSTATUS=enforcing on 2 cgroups");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("ram-notify-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let through_env = notify_from_env(Some(OsStr::new(&format!("@{name}"))), "STOPPING=1");
        assert!(through_env.unwrap());
        assert_eq!(receive(&receiver), "STOPPING=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        assert!(!notify_from_env(None, "READY=1").unwrap());
        assert!(!notify_from_env(Some(OsStr::new("")), "READY=1").unwrap());
    }

    #[test]
    fn bad_addresses_fail() {
        for addr in ["relative/notify", "vsock:2:1234"] {
            let err = notify_to(OsStr::new(addr), "READY=1").unwrap_err();
            assert!(err.to_string().contains(addr), "{err}");
        }
        // Nobody listening: systemd went away or the variable is stale.
        let path = TempSocket::new("absent");
        assert!(notify_to(path.0.as_os_str(), "READY=1").is_err());
    }

    #[test]
    fn messages_are_well_formed() {
        assert_eq!(
            ready_state("enforcing\non 2 cgroups"),
            "READY=1\nSTATUS=enforcing on 2 cgroups"
        );
        let before = monotonic_usec().unwrap();
        let state = reloading_state().unwrap();
        let after = monotonic_usec().unwrap();
        let usec: u64 = state
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .expect(&state)
            .parse()
            .unwrap();
        assert!((before..=after).contains(&usec), "{before} {usec} {after}");
    }
}
