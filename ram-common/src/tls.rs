//! Reading the server name out of a TLS ClientHello, shared by the kernel (`tls_hello`, on the
//! bytes an application sends) and user space (tests, fuzzing). Only what ram needs is read:
//! the record and handshake headers, the fixed fields skipped, every extension's header, and
//! the `server_name` extension (RFC 6066). Anything that does not fit that shape is not
//! guessed at: [`Hello::Unreadable`], which the kernel refuses.

use crate::{
    dns::{FNV_OFFSET, FNV_PRIME},
    volatile::{get, set},
};

/// TLS record header: type, version, length.
pub const RECORD_HEADER: usize = 5;
/// Largest plaintext record (RFC 8446 §5.1): a ClientHello in one record is at most this long.
pub const MAX_RECORD: usize = 16_384;
/// Every offset the parser reads is below this (header + largest record), a power of two so
/// that the kernel can bound offsets with a mask.
pub const OFFSET_LIMIT: usize = 32_768;
/// Bytes of a stream's start the egress check copies out of a packet (a per-CPU map value is
/// at most 32 KiB): a first record of 16 KiB or more is refused there. ClientHellos are a few
/// KiB at most (post-quantum key shares and padding included).
pub const COPIED_MAX: usize = 16_384;
/// Extensions read before giving up (Chrome sends about 18 with GREASE; OpenSSL, Go and rustls
/// fewer). A hello with more is unreadable, never partly read.
pub const MAX_EXTENSIONS: usize = 32;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
/// Encrypted ClientHello (RFC 9849), and the draft code point some clients still send.
const EXTENSION_ECH: u16 = 0xfe0d;
const EXTENSION_ECH_DRAFT: u16 = 0xffce;
const NAME_TYPE_HOST: u8 = 0;

/// Bytes the parser reads: a copied buffer in user space, packet memory in the kernel.
pub trait Bytes {
    /// The byte at `index`, `None` past the end.
    fn byte(&self, index: usize) -> Option<u8>;
    /// How many bytes there are.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Bytes for [u8] {
    fn byte(&self, index: usize) -> Option<u8> {
        self.get(index).copied()
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

/// What the first bytes an application sent are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not a TLS handshake record at all (plain HTTP, SSH, ...).
    NotTls,
    /// A TLS record, but not readable as one whole ClientHello: a hello split over records, a
    /// malformed length, too many extensions, two server names, a record over the limit.
    Unreadable,
    /// The record is `total` bytes long (header included) and fewer have been written: wait for
    /// the rest.
    Incomplete { total: u32 },
    /// A ClientHello without a `server_name` extension.
    NoName,
    /// A ClientHello with an Encrypted ClientHello extension: its `server_name` is only the
    /// outer one; the front end serves the encrypted inner name.
    Encrypted,
    /// A ClientHello naming a host: its text is `len` bytes at `offset`.
    Named { offset: u32, len: u32 },
}

impl Hello {
    /// `self` kept in `walk` (its `result`, `name_offset`, `name_len`, `end`).
    #[inline(always)]
    pub fn keep(self, walk: &mut HelloWalk) {
        let (code, a, b) = match self {
            Self::NotTls => (0, 0, 0),
            Self::Unreadable => (1, 0, 0),
            Self::Incomplete { total } => (2, total, 0),
            Self::NoName => (3, 0, 0),
            Self::Encrypted => (4, 0, 0),
            Self::Named { offset, len } => (5, offset, len),
        };
        set(&mut walk.result, code);
        set(&mut walk.name_offset, a);
        set(&mut walk.name_len, b);
    }

    /// The `Hello` [`Hello::keep`] kept in `walk`.
    #[inline(always)]
    pub fn kept(walk: &HelloWalk) -> Self {
        let (a, b) = (get(&walk.name_offset), get(&walk.name_len));
        match get(&walk.result) {
            0 => Self::NotTls,
            2 => Self::Incomplete { total: a },
            3 => Self::NoName,
            4 => Self::Encrypted,
            5 => Self::Named { offset: a, len: b },
            _ => Self::Unreadable,
        }
    }
}

#[inline(always)]
fn u16_at(bytes: &(impl Bytes + ?Sized), index: usize) -> Option<usize> {
    Some(((bytes.byte(index)? as usize) << 8) | bytes.byte(index + 1)? as usize)
}

/// State of the walk over a hello's extensions, kept in memory rather than in registers
/// (volatile accesses): the verifier can then see two iterations' states as equal and stop
/// re-walking, where registers holding positions differ on every path (see
/// `dns::NameWalk`, the same device). In the kernel it lives in a per-CPU map entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HelloWalk {
    pub pos: u32,
    pub end: u32,
    pub name_offset: u32,
    pub name_len: u32,
    /// [`WALK_RUNNING`], [`WALK_DONE`] or [`WALK_FAILED`].
    pub status: u32,
    /// [`SEEN_NAME`] | [`SEEN_ECH`].
    pub seen: u32,
    /// The [`Hello`] the walk ended with ([`Hello::code`]), for the program the kernel
    /// tail-calls to judge it (with `name_offset`, `name_len` for a name, `end` for a total).
    pub result: u32,
    pub _reserved: u32,
    /// The copy of the server name (the kernel's `judge_name`): characters done, its status
    /// ([`WALK_RUNNING`], ...), and the hash so far. In memory for the same reason.
    pub copied: u32,
    pub copy_status: u32,
    pub hash: u64,
}

pub const WALK_RUNNING: u32 = 0;
pub const WALK_DONE: u32 = 1;
pub const WALK_FAILED: u32 = 2;
pub const SEEN_NAME: u32 = 1;
pub const SEEN_ECH: u32 = 2;

/// Reads the ClientHello at the start of `bytes` far enough to find its server name.
pub fn read_hello_bytes(bytes: &[u8]) -> Hello {
    read_hello(bytes, &mut HelloWalk::default())
}

/// [`read_hello_bytes`], with the walk's state in `walk`.
#[inline(always)]
pub fn read_hello(bytes: &(impl Bytes + ?Sized), walk: &mut HelloWalk) -> Hello {
    let Some(content) = bytes.byte(0) else {
        return Hello::Incomplete {
            total: RECORD_HEADER as u32,
        };
    };
    // A handshake record, whatever its version bytes say: some servers (Go's) read any.
    if content != CONTENT_HANDSHAKE {
        return Hello::NotTls;
    }
    if bytes.len() < RECORD_HEADER {
        return Hello::Incomplete {
            total: RECORD_HEADER as u32,
        };
    }
    // Record version 3.x (SSL 3.0 to TLS 1.3 all say 3.1 or 3.3 here); anything else is
    // unreadable, not another protocol.
    if bytes.byte(1) != Some(3) {
        return Hello::Unreadable;
    }
    let Some(record_len) = u16_at(bytes, 3) else {
        return Hello::Unreadable;
    };
    if record_len == 0 || record_len > MAX_RECORD {
        return Hello::Unreadable;
    }
    let total = RECORD_HEADER + record_len;
    if bytes.len() < total {
        return Hello::Incomplete {
            total: total as u32,
        };
    }
    read_client_hello(bytes, total, walk).unwrap_or(Hello::Unreadable)
}

/// The handshake message inside one whole record ending at `record_end`.
#[inline(always)]
fn read_client_hello(
    bytes: &(impl Bytes + ?Sized),
    record_end: usize,
    walk: &mut HelloWalk,
) -> Option<Hello> {
    if bytes.byte(RECORD_HEADER)? != HANDSHAKE_CLIENT_HELLO {
        return None;
    }
    let hello_len = ((bytes.byte(6)? as usize) << 16) | u16_at(bytes, 7)?;
    let body = RECORD_HEADER + 4;
    let end = body + hello_len;
    // The whole hello in this record: one split over records is not read.
    if end > record_end {
        return None;
    }
    // client_version (2), random (32).
    let mut pos = body + 34;
    let session_id_len = bytes.byte(pos)? as usize;
    if session_id_len > 32 {
        return None;
    }
    pos += 1 + session_id_len;
    let suites_len = u16_at(bytes, pos)?;
    pos += 2 + suites_len;
    let compression_len = bytes.byte(pos)? as usize;
    pos += 1 + compression_len;
    if pos == end {
        return Some(Hello::NoName);
    }
    let extensions_len = u16_at(bytes, pos)?;
    pos += 2;
    if pos + extensions_len != end {
        return None;
    }
    set(&mut walk.pos, pos as u32);
    set(&mut walk.end, end as u32);
    set(&mut walk.status, WALK_RUNNING);
    set(&mut walk.seen, 0);
    set(&mut walk.name_offset, 0);
    set(&mut walk.name_len, 0);
    let mut i = 0;
    // Bounded: MAX_EXTENSIONS headers; a hello with more is unreadable (checked after).
    while i < MAX_EXTENSIONS {
        i += 1;
        if get(&walk.status) != WALK_RUNNING {
            break;
        }
        extension_step(bytes, walk);
    }
    if get(&walk.status) != WALK_DONE {
        return None;
    }
    let seen = get(&walk.seen);
    if seen & SEEN_ECH != 0 {
        return Some(Hello::Encrypted);
    }
    if seen & SEEN_NAME == 0 {
        return Some(Hello::NoName);
    }
    Some(Hello::Named {
        offset: get(&walk.name_offset),
        len: get(&walk.name_len),
    })
}

/// Reads the extension at `walk.pos` (or ends the walk at `walk.end`).
#[inline(always)]
fn extension_step(bytes: &(impl Bytes + ?Sized), walk: &mut HelloWalk) {
    let pos = get(&walk.pos) as usize;
    let end = get(&walk.end) as usize;
    if pos == end {
        set(&mut walk.status, WALK_DONE);
        return;
    }
    let (Some(kind), Some(len)) = (u16_at(bytes, pos), u16_at(bytes, pos + 2)) else {
        set(&mut walk.status, WALK_FAILED);
        return;
    };
    let data = pos + 4;
    if data + len > end {
        set(&mut walk.status, WALK_FAILED);
        return;
    }
    let kind = kind as u16;
    if kind == EXTENSION_ECH || kind == EXTENSION_ECH_DRAFT {
        let seen = get(&walk.seen);
        set(&mut walk.seen, seen | SEEN_ECH);
    }
    if kind == EXTENSION_SERVER_NAME {
        // One server_name extension, holding one host name (RFC 6066 §3): a second of either
        // could be read differently by the server.
        let (Some(list_len), Some(name_type), Some(name_len)) = (
            u16_at(bytes, data),
            bytes.byte(data + 2),
            u16_at(bytes, data + 3),
        ) else {
            set(&mut walk.status, WALK_FAILED);
            return;
        };
        if get(&walk.seen) & SEEN_NAME != 0
            || list_len + 2 != len
            || name_type != NAME_TYPE_HOST
            || name_len + 3 != list_len
        {
            set(&mut walk.status, WALK_FAILED);
            return;
        }
        let seen = get(&walk.seen);
        set(&mut walk.seen, seen | SEEN_NAME);
        set(&mut walk.name_offset, (data + 5) as u32);
        set(&mut walk.name_len, name_len as u32);
    }
    set(&mut walk.pos, (data + len) as u32);
}

/// A server name character as the DNS side stores names (lower case), `None` for characters
/// no host name has. The dot is kept (names are compared in text form).
#[inline(always)]
pub fn name_char(byte: u8) -> Option<u8> {
    match byte {
        b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => Some(byte),
        b'A'..=b'Z' => Some(byte | 0x20),
        _ => None,
    }
}

/// FNV-1a of a name's text form, as [`crate::dns::read_name`] hashes a DNS name: a server
/// name hashes like the question that taught the address.
pub fn name_hash(text: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    for &byte in text {
        hash = (hash ^ byte as u64).wrapping_mul(FNV_PRIME);
    }
    hash
}

/// One step of [`name_hash`].
#[inline(always)]
pub fn name_hash_step(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(FNV_PRIME)
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    //! The body of the `tls_hello` fuzz target: whatever the bytes, the parser returns, and
    //! a name it reports lies inside them.
    use super::*;

    pub fn read_like_the_kernel(bytes: &[u8]) {
        if let Hello::Named { offset, len } = read_hello_bytes(bytes) {
            assert!((offset + len) as usize <= bytes.len());
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{string::String, vec, vec::Vec};

    /// A ClientHello with the given extensions (type, body), as clients lay it out.
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(32);
        body.extend([1u8; 32]);
        body.extend([0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend([1, 0]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend(kind.to_be_bytes());
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
        }
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut handshake = vec![1];
        handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![22, 3, 1];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut data = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        data.push(0);
        data.extend((name.len() as u16).to_be_bytes());
        data.extend(name.as_bytes());
        (0, data)
    }

    fn named(bytes: &[u8]) -> Option<String> {
        match read_hello_bytes(bytes) {
            Hello::Named { offset, len } => Some(
                String::from_utf8(bytes[offset as usize..(offset + len) as usize].to_vec())
                    .unwrap(),
            ),
            _ => None,
        }
    }

    #[test]
    fn finds_the_name_wherever_it_is() {
        let first = hello(&[sni("registry.test"), (10, vec![0, 2, 0, 29])]);
        assert_eq!(named(&first).as_deref(), Some("registry.test"));
        // Late, after a post-quantum sized key share and padding: more than one segment.
        let late = hello(&[
            (0x0a0a, vec![]),
            (51, vec![9; 1250]),
            (21, vec![0; 300]),
            sni("registry.test"),
        ]);
        assert!(late.len() > 1500);
        assert_eq!(named(&late).as_deref(), Some("registry.test"));
    }

    #[test]
    fn refuses_what_it_cannot_read_whole() {
        assert_eq!(read_hello_bytes(&b"GET / HTTP/1.1\r\n"[..]), Hello::NotTls);
        assert_eq!(read_hello_bytes(&b"SSH-2.0-x"[..]), Hello::NotTls);
        assert_eq!(
            read_hello_bytes(&hello(&[(10, vec![0, 2, 0, 29])])[..]),
            Hello::NoName
        );
        let whole = hello(&[sni("a.test")]);
        assert_eq!(
            read_hello_bytes(&whole[..20]),
            Hello::Incomplete {
                total: whole.len() as u32
            }
        );
        assert_eq!(
            read_hello_bytes(&whole[..3]),
            Hello::Incomplete { total: 5 }
        );
        // Two server names, a name list with two entries, too many extensions.
        assert_eq!(
            read_hello_bytes(&hello(&[sni("a.test"), sni("b.test")])[..]),
            Hello::Unreadable
        );
        let mut two = sni("a.test");
        two.1.extend([0, 0, 6]);
        two.1.extend(b"b.test");
        let fixed = ((two.1.len() - 2) as u16).to_be_bytes();
        two.1[..2].copy_from_slice(&fixed);
        assert_eq!(read_hello_bytes(&hello(&[two])[..]), Hello::Unreadable);
        let many: Vec<_> = (0..MAX_EXTENSIONS as u16 + 1)
            .map(|i| (100 + i, vec![]))
            .chain([sni("a.test")])
            .collect();
        assert_eq!(read_hello_bytes(&hello(&many)[..]), Hello::Unreadable);
        // A handshake longer than its record (split over records).
        let mut split = whole.clone();
        split[8] = split[8].wrapping_add(1);
        assert_eq!(read_hello_bytes(&split[..]), Hello::Unreadable);
        // Not a ClientHello.
        let mut server = whole.clone();
        server[5] = 2;
        assert_eq!(read_hello_bytes(&server[..]), Hello::Unreadable);
        // A handshake record with odd version bytes is still a handshake record.
        let mut odd = whole.clone();
        odd[1] = 0;
        assert_eq!(read_hello_bytes(&odd[..]), Hello::Unreadable);
        // Encrypted ClientHello, whatever its outer name.
        assert_eq!(
            read_hello_bytes(&hello(&[sni("a.test"), (0xfe0d, vec![0; 40])])[..]),
            Hello::Encrypted
        );
    }

    #[test]
    fn names_compare_like_dns_names() {
        assert_eq!(name_char(b'R'), Some(b'r'));
        assert_eq!(name_char(b'/'), None);
        assert_eq!(name_char(0), None);
        // FNV-1a 64 of "a", as read_name computes it for a one-letter DNS name.
        assert_eq!(name_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_hello_is_kept_and_read_back() {
        let mut walk = HelloWalk::default();
        for hello in [
            Hello::NotTls,
            Hello::Unreadable,
            Hello::Incomplete { total: 517 },
            Hello::NoName,
            Hello::Encrypted,
            Hello::Named {
                offset: 300,
                len: 13,
            },
        ] {
            hello.keep(&mut walk);
            assert_eq!(Hello::kept(&walk), hello);
        }
    }

    #[test]
    fn never_panics_on_prefixes_and_flips() {
        let base = hello(&[(51, vec![9; 200]), sni("registry.test")]);
        for cut in 0..base.len() {
            fuzzing::read_like_the_kernel(&base[..cut]);
        }
        for i in 0..base.len() {
            let mut flipped = base.clone();
            flipped[i] ^= 0xff;
            fuzzing::read_like_the_kernel(&flipped);
        }
    }
}
