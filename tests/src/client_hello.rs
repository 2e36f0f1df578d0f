//! A hand-made TLS ClientHello, standard library only: included by `ram_tests` and by the
//! kernel matrix's peer (`xtask/src/bin/ram-matrix-peer.rs`, through `#[path]`).

/// A TLS 1.3 ClientHello as a client with a post-quantum key share sends it (1,601 bytes for
/// `registry.test`: more than one segment), the server name last: what the kernel must judge,
/// without a TLS library (tests/clients/tls_hello.py builds the same in python).
pub fn client_hello(name: &str) -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    let mut body = vec![3, 3];
    body.extend(0..32u8);
    body.push(32);
    body.extend([0u8; 32]);
    body.extend([
        0, 10, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2b, 0xc0, 0x2f,
    ]);
    body.extend([1, 0]);
    let mut exts = Vec::new();
    extension(&mut exts, 0x0a0a, &[]);
    extension(&mut exts, 43, &[2, 3, 4]);
    extension(&mut exts, 10, &[0, 4, 0x11, 0xec, 0, 0x1d]);
    let mut share = vec![0u8; 4 + 1216 + 4 + 32];
    share[..4].copy_from_slice(&[0x11, 0xec, 0x04, 0xc0]);
    share[1220..1224].copy_from_slice(&[0, 0x1d, 0, 32]);
    let mut key_share = (share.len() as u16).to_be_bytes().to_vec();
    key_share.extend(share);
    extension(&mut exts, 51, &key_share);
    extension(&mut exts, 21, &[0u8; 200]);
    let host = name.as_bytes();
    let mut entry = vec![0u8];
    entry.extend((host.len() as u16).to_be_bytes());
    entry.extend(host);
    let mut sni = (entry.len() as u16).to_be_bytes().to_vec();
    sni.extend(entry);
    extension(&mut exts, 0, &sni);
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut handshake = vec![1];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![22, 3, 1];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}
