//! The gate's local clients: who owns a connection (the uid of the client socket, from the
//! kernel's socket tables) and how many connections each user holds, so that no local user
//! can take the connections dockerd's pulls need (or, for the metrics endpoint, a scraper's).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::net::TcpStream;

/// Connections one user other than root may hold at once.
const MAX_PER_USER: usize = 32;

/// Connections held per local user (root's are not limited beyond [`MAX_CONNECTIONS`]).
#[derive(Clone)]
pub(crate) struct UserShares {
    held: Arc<Mutex<HashMap<u32, usize>>>,
    /// Connections all users but root may hold together.
    others_max: usize,
}

/// One admitted connection of a user other than root; gives its place back when dropped.
pub(crate) struct Share {
    users: UserShares,
    uid: u32,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self
            .users
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

impl UserShares {
    pub(crate) fn new(others_max: usize) -> Self {
        Self {
            held: Arc::default(),
            others_max,
        }
    }

    /// Whether a new connection from `stream`'s owner fits its share: `Some` (holding the
    /// place, `None` inside for root) or `None` (refuse). An owner that cannot be found
    /// counts as one user, `u32::MAX`.
    pub(crate) fn admit(&self, stream: &TcpStream) -> Option<Option<Share>> {
        let uid = stream
            .peer_addr()
            .ok()
            .and_then(|peer| peer_uid(peer, stream.local_addr().ok()?))
            .unwrap_or(u32::MAX);
        if uid == 0 {
            return Some(None);
        }
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: usize = held.values().sum();
        let own = held.get(&uid).copied().unwrap_or(0);
        if own >= MAX_PER_USER || total >= self.others_max {
            log::debug!("image gate: uid {uid} holds {own} connection(s); one more refused");
            return None;
        }
        *held.entry(uid).or_insert(0) += 1;
        Some(Some(Share {
            users: self.clone(),
            uid,
        }))
    }
}

/// The uid owning the local client socket at `peer` connected to `local` (the server): a
/// loopback client is a process of this host. Asked of sock_diag (one exact lookup); where
/// that is missing (no `tcp_diag` module), read from the kernel's socket tables
/// (`/proc/net/tcp`, `/proc/net/tcp6`).
fn peer_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    if let Ok(uid) = crate::sys::tcp_socket_uid(peer, local) {
        return Some(uid);
    }
    let table = if peer.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    socket_table_uid(&text, peer, local)
}

/// The `uid` column of the row of a `/proc/net/tcp{,6}` text whose local end is `peer` and
/// remote end `local`.
fn socket_table_uid(text: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let wanted = (proc_net_addr(peer), proc_net_addr(local));
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ends = (
            fields.get(1)?.to_ascii_uppercase(),
            fields.get(2)?.to_ascii_uppercase(),
        );
        (ends == wanted).then(|| fields.get(7)?.parse().ok())?
    })
}

/// An address as `/proc/net/tcp{,6}` writes it: the address's 32-bit words in host byte
/// order, in hex, then `:` and the port in hex.
fn proc_net_addr(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        std::net::IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        std::net::IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|word| {
                format!(
                    "{:08X}",
                    u32::from_ne_bytes([word[0], word[1], word[2], word[3]])
                )
            })
            .collect(),
    };
    format!("{host}:{:04X}", addr.port())
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn the_owner_of_a_local_client_socket_is_read_from_the_kernels_table() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                    0: 0100007F:9C40 0100007F:01BA 01 00000000:00000000 00:00000000 00000000  1000        0 1234 1\n   \
                    1: 0100007F:01BA 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1235 1\n";
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let gate: SocketAddr = "127.0.0.1:442".parse().unwrap();
        assert_eq!(socket_table_uid(text, client, gate), Some(1000));
        assert_eq!(socket_table_uid(text, gate, client), Some(0));
        assert_eq!(
            proc_net_addr("[::1]:442".parse().unwrap()),
            "00000000000000000000000001000000:01BA"
        );
    }

    /// A real connection on loopback: this test's own uid is found.
    #[tokio::test]
    async fn a_real_loopback_clients_uid_is_found() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = listener.local_addr().unwrap();
        let client = TcpStream::connect(gate).await.unwrap();
        let (_server_side, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // SAFETY: getuid(2) has no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(peer_uid(peer, gate), Some(uid));
        assert_eq!(crate::sys::tcp_socket_uid(peer, gate).ok(), Some(uid));
        // The server's own socket, the other way round, is found too; a four-tuple nobody has
        // is not.
        assert_eq!(crate::sys::tcp_socket_uid(gate, peer).ok(), Some(uid));
        let nobody: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(crate::sys::tcp_socket_uid(nobody, gate).is_err());
    }
}
