//! DNS message parsing shared by the kernel programs and user space (tests, fuzzing).
//!
//! Written for the BPF verifier first: every loop has a constant bound (commented), every read
//! goes through [`Msg::byte`] which masks the index into a fixed-size buffer, and nothing can
//! panic. The same code runs in `dns_snoop_in`/`dns_query_out` and in the fuzz target.

use crate::{
    Addr16,
    volatile::{get, set},
};

/// Bytes of a DNS message that are parsed. One TCP segment at MTU 1500 (1448 bytes of payload)
/// and a classic 512-byte UDP answer fit; larger answers are parsed up to this many bytes and
/// the records beyond are not learned (fail closed, counted). A power of two, for masking.
pub const MSG_MAX: usize = 2048;
const MSG_MASK: usize = MSG_MAX - 1;

/// Buffer size for one name in text form: at most 253 characters (RFC 1035), plus a terminator.
pub const NAME_BUF: usize = 256;
const NAME_MASK: usize = NAME_BUF - 1;
/// Longest name in text form.
pub const NAME_MAX: usize = 253;

/// Loop bound of [`read_name`]: one iteration per wire byte of a name (≤ 255 on any path, as the
/// text form is ≤ 253 bytes) plus one per compression pointer followed ([`MAX_POINTERS`]).
const NAME_STEPS: usize = 256 + MAX_POINTERS;
/// Compression pointers followed per name. Real resolvers use one (rarely two); pointers must
/// also point strictly backwards, so no loop can form.
pub const MAX_POINTERS: usize = 8;

/// Answer records examined per message: a registry answer is a short CNAME chain and a few
/// addresses. Records past this are not learned (counted by the caller). The kernel examines
/// one record per tail call; kernels allow 33 tail calls in a row, so this stays well below.
pub const MAX_ANSWERS: usize = 16;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const CLASS_IN: u16 = 1;

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 12;

/// A DNS message in a fixed buffer.
#[repr(C)]
pub struct Msg {
    pub bytes: [u8; MSG_MAX],
    /// How many bytes of `bytes` hold the message. Read from memory at every use, like the
    /// [`NameWalk`] fields and for the same reason: a length kept in a register would be refined
    /// differently by every bounds check and multiply the verifier's paths.
    len: u32,
}

impl Msg {
    /// Sets the message length (at most [`MSG_MAX`]).
    #[inline(always)]
    pub fn set_len(&mut self, len: usize) {
        set(&mut self.len, len.min(MSG_MAX) as u32);
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        get(&self.len) as usize
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte at `index`, or `None` past the message's end.
    #[inline(always)]
    pub fn byte(&self, index: usize) -> Option<u8> {
        if index >= self.len() {
            return None;
        }
        Some(self.bytes[index & MSG_MASK])
    }

    #[inline(always)]
    pub fn u16_at(&self, index: usize) -> Option<u16> {
        let high = self.byte(index)?;
        let low = self.byte(index + 1)?;
        Some(u16::from_be_bytes([high, low]))
    }

    #[inline(always)]
    pub fn u32_at(&self, index: usize) -> Option<u32> {
        let high = self.u16_at(index)?;
        let low = self.u16_at(index + 2)?;
        Some(((high as u32) << 16) | low as u32)
    }
}

/// A name in text form: lower-case, labels joined by `.`, no trailing dot.
#[repr(C)]
pub struct Name {
    pub bytes: [u8; NAME_BUF],
}

/// The fixed header fields ram needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
}

impl Header {
    pub const FLAG_RESPONSE: u16 = 0x8000;
    const OPCODE_MASK: u16 = 0x7800;
    const RCODE_MASK: u16 = 0x000f;

    pub fn parse(msg: &Msg) -> Option<Self> {
        Some(Self {
            id: msg.u16_at(0)?,
            flags: msg.u16_at(2)?,
            qdcount: msg.u16_at(4)?,
            ancount: msg.u16_at(6)?,
        })
    }

    pub fn is_response(&self) -> bool {
        self.flags & Self::FLAG_RESPONSE != 0
    }

    /// A standard query (opcode 0) that ram tracks: exactly one question.
    pub fn is_standard_single_question(&self) -> bool {
        self.flags & Self::OPCODE_MASK == 0 && self.qdcount == 1
    }

    pub fn rcode(&self) -> u16 {
        self.flags & Self::RCODE_MASK
    }
}

/// Characters allowed in names ram matches (after lower-casing): LDH and `_`. Any other byte
/// makes the name unmatchable, so no byte can imitate a separator or terminator.
#[inline(always)]
fn normalize(byte: u8) -> Option<u8> {
    match byte {
        b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => Some(byte),
        b'A'..=b'Z' => Some(byte | 0x20),
        _ => None,
    }
}

/// State of [`read_name`], kept in memory rather than in registers.
///
/// Why: the verifier walks every iteration of a bounded loop, and it can stop re-walking a path
/// only when the path's state equals one it has seen. Registers holding loop variables (a
/// position, a length) differ on every path, so the paths multiply until the 1,000,000
/// instruction limit. Values that go through map memory come back as unknown scalars, which are
/// all alike: the paths through one iteration converge and the walk stays linear. Hence every
/// access here is volatile, so the compiler keeps them in memory too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameWalk {
    /// Where the next byte is read.
    pub pos: u32,
    /// Text bytes produced so far.
    pub written: u32,
    /// Bytes left in the current label; 0 at a label boundary.
    pub label_left: u32,
    /// Offset just past the name where it started; 0 until known.
    pub next: u32,
    pub pointers: u32,
    /// [`WALK_RUNNING`], [`WALK_DONE`] or [`WALK_FAILED`].
    pub status: u32,
    /// FNV-1a of the text form, dots included.
    pub hash: u64,
}

pub const WALK_RUNNING: u32 = 0;
pub const WALK_DONE: u32 = 1;
pub const WALK_FAILED: u32 = 2;

/// A name read by [`read_name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameRead {
    /// Offset just past the name where it starts (past its first pointer, if any).
    pub next: usize,
    /// Length of the text form.
    pub len: usize,
    /// FNV-1a of the text form: two names are taken as equal when length and hash are.
    pub hash: u64,
}

/// Reads the (possibly compressed) name at `offset`: its text form (lower-case, dotted, no
/// trailing dot) goes to `out` when `TEXT` is true; its length and hash are returned either way.
/// `None` for malformed names, forward or looping pointers, names longer than [`NAME_MAX`], and
/// names with characters outside LDH and `_`.
#[inline(always)]
pub fn read_name<const TEXT: bool>(
    msg: &Msg,
    offset: usize,
    walk: &mut NameWalk,
    out: &mut Name,
) -> Option<NameRead> {
    set(&mut walk.pos, offset as u32);
    set(&mut walk.written, 0);
    set(&mut walk.label_left, 0);
    set(&mut walk.next, 0);
    set(&mut walk.pointers, 0);
    set(&mut walk.status, WALK_RUNNING);
    set(&mut walk.hash, FNV_OFFSET);
    let mut step = 0;
    while step < NAME_STEPS {
        step += 1;
        if get(&walk.status) != WALK_RUNNING {
            break;
        }
        // Not masked here: `Msg::byte` checks the position against the length first (a masked
        // position past the end would wrap to the start of the message).
        let pos = get(&walk.pos) as usize;
        let Some(byte) = msg.byte(pos) else {
            set(&mut walk.status, WALK_FAILED);
            continue;
        };
        let label_left = get(&walk.label_left) & 0x3f;
        if label_left > 0 {
            let written = get(&walk.written) as usize & NAME_MASK;
            let Some(char) = normalize(byte) else {
                set(&mut walk.status, WALK_FAILED);
                continue;
            };
            if written >= NAME_MAX {
                set(&mut walk.status, WALK_FAILED);
                continue;
            }
            if TEXT {
                out.bytes[written] = char;
            }
            let hash = (get(&walk.hash) ^ char as u64).wrapping_mul(FNV_PRIME);
            set(&mut walk.hash, hash);
            set(&mut walk.written, written as u32 + 1);
            set(&mut walk.label_left, label_left - 1);
            set(&mut walk.pos, pos as u32 + 1);
            continue;
        }
        if byte == 0 {
            if get(&walk.next) == 0 {
                set(&mut walk.next, pos as u32 + 1);
            }
            set(&mut walk.status, WALK_DONE);
            continue;
        }
        match byte & 0xc0 {
            0xc0 => {
                let Some(low) = msg.byte(pos + 1) else {
                    set(&mut walk.status, WALK_FAILED);
                    continue;
                };
                let target = (((byte & 0x3f) as u32) << 8) | low as u32;
                let pointers = get(&walk.pointers) + 1;
                set(&mut walk.pointers, pointers);
                if target as usize >= pos || pointers > MAX_POINTERS as u32 {
                    set(&mut walk.status, WALK_FAILED);
                    continue;
                }
                if get(&walk.next) == 0 {
                    set(&mut walk.next, pos as u32 + 2);
                }
                set(&mut walk.pos, target);
            }
            0x00 => {
                let written = get(&walk.written) as usize & NAME_MASK;
                if written > 0 {
                    if written >= NAME_MAX {
                        set(&mut walk.status, WALK_FAILED);
                        continue;
                    }
                    if TEXT {
                        out.bytes[written] = b'.';
                    }
                    let hash = (get(&walk.hash) ^ b'.' as u64).wrapping_mul(FNV_PRIME);
                    set(&mut walk.hash, hash);
                    set(&mut walk.written, written as u32 + 1);
                }
                set(&mut walk.label_left, byte as u32);
                set(&mut walk.pos, pos as u32 + 1);
            }
            // 0x40 and 0x80: extended and reserved label types.
            _ => set(&mut walk.status, WALK_FAILED),
        }
    }
    if get(&walk.status) != WALK_DONE {
        return None;
    }
    Some(NameRead {
        next: get(&walk.next) as usize,
        len: get(&walk.written) as usize & NAME_MASK,
        hash: get(&walk.hash),
    })
}

/// Copies `name` (text, `len` bytes) into `key` character-reversed and followed by a 0
/// terminator: `registry.example.com` → `moc.elpmaxe.yrtsiger\0`. Returns the key length in
/// bytes, terminator included. Reversed, a suffix match (`*.example.com`) becomes a prefix
/// match that an LPM trie can do; see `ram_common::maps::ALLOWED_NAMES`.
#[inline(always)]
pub fn reversed_key(name: &Name, len: usize, key: &mut [u8; NAME_BUF]) -> usize {
    let len = len & NAME_MASK;
    let mut i = 0;
    // Bounded: one iteration per key byte.
    while i < NAME_BUF {
        if i >= len {
            break;
        }
        key[i] = name.bytes[(len - 1 - i) & NAME_MASK];
        i += 1;
    }
    key[len] = 0;
    len + 1
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, keyed by `seed` (`PolicyConfig::search_seed`, mixed into the offset basis), of a
/// search domain's text (lower case, no trailing dot) read from its last character to its
/// first: the order in which `dns_query_name` meets it, scanning a question from its end (see
/// `ram_common::maps::SEARCH_DOMAINS`). Never 0 for a non-empty suffix in practice; 0 is the
/// count's key in `SEARCH_SUFFIXES`.
pub fn suffix_hash(seed: u64, suffix: &[u8]) -> u64 {
    let mut hash = suffix_hash_start(seed);
    let mut i = suffix.len();
    while i > 0 {
        i -= 1;
        hash = suffix_hash_step(hash, suffix[i]);
    }
    hash
}

/// Where [`suffix_hash`] starts for `seed`.
#[inline(always)]
pub fn suffix_hash_start(seed: u64) -> u64 {
    FNV_OFFSET ^ seed
}

/// One character of [`suffix_hash`].
#[inline(always)]
pub fn suffix_hash_step(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(FNV_PRIME)
}

/// The question of a message (the first and only one ram tracks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    pub name_len: usize,
    pub name_hash: u64,
    pub qtype: u16,
    pub qclass: u16,
    /// Offset of the first byte after the question.
    pub end: usize,
}

/// Reads the question; its text form goes to `name`.
#[inline(always)]
pub fn read_question(msg: &Msg, walk: &mut NameWalk, name: &mut Name) -> Option<Question> {
    let read = read_name::<true>(msg, HEADER_LEN, walk, name)?;
    Some(Question {
        name_len: read.len,
        name_hash: read.hash,
        qtype: msg.u16_at(read.next)?,
        qclass: msg.u16_at(read.next + 2)?,
        end: read.next + 4,
    })
}

/// One address found on the CNAME chain of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub addr: Addr16,
    pub ttl: u32,
    /// Hash of the record's owner: the name at the end of the CNAME chain.
    pub owner_hash: u64,
}

/// How a walk over the answer section ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WalkSummary {
    /// Addresses passed to the callback.
    pub addresses: u32,
    /// Records skipped because their owner was not the current name of the chain.
    pub off_chain: u32,
    /// Answer records not examined ([`MAX_ANSWERS`] reached or a malformed record).
    pub unexamined: u32,
}

/// The chain being followed: length and hash of its current name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    pub len: usize,
    pub hash: u64,
}

/// Progress through the answer section, one record per [`answer_step`]. Kept in map memory
/// between the kernel's tail calls (one record per program run keeps each run small enough
/// for the verifier).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnswerWalk {
    /// Offset of the next record.
    pub pos: u32,
    /// Records examined so far.
    pub index: u32,
    /// Records in the answer section (ANCOUNT).
    pub count: u32,
    /// Length of the chain's current name.
    pub chain_len: u32,
    /// Hash of the chain's current name.
    pub chain_hash: u64,
    /// Where the chain's current name is written in the message (the question's name, then
    /// each CNAME's target): an owner that is a compression pointer to exactly this offset is
    /// that name, without reading it again. Resolvers compress owners this way almost always.
    pub chain_offset: u32,
    pub _reserved: u32,
    pub summary: WalkSummary,
}

impl AnswerWalk {
    /// A walk over the `count` records at `offset`, following the chain from the question.
    pub fn new(offset: usize, count: u16, question: &Question) -> Self {
        Self {
            pos: offset as u32,
            index: 0,
            count: count as u32,
            chain_len: question.name_len as u32,
            chain_hash: question.name_hash,
            chain_offset: HEADER_LEN as u32,
            _reserved: 0,
            summary: WalkSummary::default(),
        }
    }

    /// Whether another [`answer_step`] is due.
    pub fn has_next(&self) -> bool {
        self.index < self.count && (self.index as usize) < MAX_ANSWERS
    }

    /// Ends the walk: records never examined are counted as such.
    pub fn finish(&mut self) {
        self.summary.unexamined += self.count.saturating_sub(self.index);
        self.index = self.count;
    }
}

/// Examines the next answer record of `state`, following the CNAME chain that starts at the
/// question: a record counts only if its owner is the chain's current name (same length and
/// hash); a CNAME moves the chain to its target; an A or AAAA record (class IN) on the chain is
/// passed to `found` (IPv4 in IPv4-mapped form). A malformed record ends the walk.
#[inline(always)]
pub fn answer_step(
    msg: &Msg,
    state: &mut AnswerWalk,
    walk: &mut NameWalk,
    scratch: &mut Name,
    found: impl FnOnce(Found),
) {
    if !state.has_next() {
        return;
    }
    let chain = Chain {
        len: state.chain_len as usize,
        hash: state.chain_hash,
    };
    let Some(record) = read_record_header(
        msg,
        state.pos as usize,
        state.chain_offset as usize,
        chain,
        walk,
        scratch,
    ) else {
        state.finish();
        return;
    };
    state.index += 1;
    state.pos = (record.rdata + record.rdlength) as u32;
    if record.class != CLASS_IN || record.owner != chain {
        state.summary.off_chain += 1;
        return;
    }
    match (record.rtype, record.rdlength) {
        (TYPE_A, 4) => {
            let mut addr = crate::v4_mapped([0; 4]);
            let mut i = 0;
            // Bounded: 4 bytes.
            while i < 4 {
                addr[12 + i] = msg.byte(record.rdata + i).unwrap_or(0);
                i += 1;
            }
            state.summary.addresses += 1;
            found(Found {
                addr,
                ttl: record.ttl,
                owner_hash: chain.hash,
            });
        }
        (TYPE_AAAA, 16) => {
            let mut addr = [0u8; 16];
            let mut i = 0;
            // Bounded: 16 bytes.
            while i < 16 {
                addr[i] = msg.byte(record.rdata + i).unwrap_or(0);
                i += 1;
            }
            state.summary.addresses += 1;
            found(Found {
                addr,
                ttl: record.ttl,
                owner_hash: chain.hash,
            });
        }
        (TYPE_CNAME, _) => match read_name::<false>(msg, record.rdata, walk, scratch) {
            Some(target) => {
                state.chain_len = target.len as u32;
                state.chain_hash = target.hash;
                state.chain_offset = record.rdata as u32;
            }
            // The chain cannot be followed further.
            None => state.finish(),
        },
        _ => {}
    }
}

/// The whole walk in one loop, for user space (the kernel runs one [`answer_step`] per tail
/// call instead). Same results.
pub fn walk_answers(
    msg: &Msg,
    offset: usize,
    count: u16,
    question: &Question,
    walk: &mut NameWalk,
    scratch: &mut Name,
    mut found: impl FnMut(Found),
) -> WalkSummary {
    let mut state = AnswerWalk::new(offset, count, question);
    // Bounded: each step examines a record or finishes; at most MAX_ANSWERS steps.
    while state.has_next() {
        answer_step(msg, &mut state, walk, scratch, &mut found);
    }
    state.finish();
    state.summary
}

struct RecordHeader {
    owner: Chain,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: usize,
    rdlength: usize,
}

/// Reads a record's owner and fixed fields. An owner that is a pointer to `chain_offset` is
/// `chain` itself (same bytes); any other owner is read and hashed.
#[inline(always)]
fn read_record_header(
    msg: &Msg,
    pos: usize,
    chain_offset: usize,
    chain: Chain,
    walk: &mut NameWalk,
    scratch: &mut Name,
) -> Option<RecordHeader> {
    let first = msg.byte(pos)?;
    let second = msg.byte(pos + 1)?;
    let pointer = (((first & 0x3f) as usize) << 8) | second as usize;
    let owner = if first & 0xc0 == 0xc0 && pointer == chain_offset && pointer < pos {
        NameRead {
            next: pos + 2,
            len: chain.len,
            hash: chain.hash,
        }
    } else {
        read_name::<false>(msg, pos, walk, scratch)?
    };
    let after = owner.next;
    let rdlength = msg.u16_at(after + 8)? as usize;
    let rdata = after + 10;
    if rdata + rdlength > msg.len() {
        return None;
    }
    Some(RecordHeader {
        owner: Chain {
            len: owner.len,
            hash: owner.hash,
        },
        rtype: msg.u16_at(after)?,
        class: msg.u16_at(after + 2)?,
        ttl: msg.u32_at(after + 4)?,
        rdata,
        rdlength,
    })
}

/// Whether `addr` (16-byte form) may never be learned from DNS: unspecified, loopback,
/// link-local, multicast, "this network" and broadcast addresses, IPv4 and IPv6; the cloud
/// metadata addresses (169.254.169.254 is link-local; AWS's IPv6 one is fd00:ec2::254); and any
/// IPv6 form that wraps an IPv4 address refused here (IPv4-mapped `::ffff:0:0/96`, NAT64
/// `64:ff9b::/96`), plus the deprecated IPv4-compatible `::/96` as a whole. A hostile answer
/// must not open these; `allow_cidrs` can still allow such addresses explicitly.
#[inline(always)]
pub fn never_learned(addr: &Addr16) -> bool {
    const AWS_METADATA_V6: Addr16 = [
        0xfd, 0, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54,
    ];
    const NAT64_PREFIX: [u8; 12] = [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];
    let prefix = &addr[..12];
    if prefix == crate::V4_MAPPED_PREFIX || prefix == NAT64_PREFIX {
        let (a, b) = (addr[12], addr[13]);
        return a == 0                       // 0.0.0.0/8 "this network"
            || a == 127                     // loopback
            || (a == 169 && b == 254)       // link-local (cloud metadata)
            || (224..=239).contains(&a)     // multicast
            || addr[12..] == [100, 100, 100, 200] // Alibaba Cloud's metadata service
            || addr[12..] == [255, 255, 255, 255]; // broadcast
    }
    prefix.iter().all(|&byte| byte == 0)                 // ::/96: ::, ::1, IPv4-compatible
        || (addr[0] == 0xfe && addr[1] & 0xc0 == 0x80) // fe80::/10 link-local
        || addr[0] == 0xff                              // ff00::/8 multicast
        || *addr == AWS_METADATA_V6
}

/// The fuzz target's body, shared by `fuzz/fuzz_targets/dns_answer.rs` (libFuzzer) and a unit
/// test: the kernel's parsing code run on arbitrary bytes.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    extern crate std;
    use std::boxed::Box;

    use super::*;

    /// Parses `bytes` as `dns_snoop_in` and `dns_answer_rr` do. Nothing may panic (debug builds
    /// check arithmetic overflow too), names stay within bounds, and every address reported
    /// comes from the message.
    pub fn parse_like_the_kernel(bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(MSG_MAX)];
        let mut msg = Box::new(Msg {
            bytes: [0; MSG_MAX],
            len: 0,
        });
        msg.bytes[..bytes.len()].copy_from_slice(bytes);
        msg.set_len(bytes.len());
        let Some(header) = Header::parse(&msg) else {
            return;
        };
        let mut name = Box::new(Name {
            bytes: [0; NAME_BUF],
        });
        let mut walk = NameWalk::default();
        let Some(question) = read_question(&msg, &mut walk, &mut name) else {
            return;
        };
        assert!(question.name_len <= NAME_MAX);
        let mut key = [0u8; NAME_BUF];
        assert_eq!(
            reversed_key(&name, question.name_len, &mut key),
            question.name_len + 1
        );
        let mut scratch = Box::new(Name {
            bytes: [0; NAME_BUF],
        });
        let summary = walk_answers(
            &msg,
            question.end,
            header.ancount,
            &question,
            &mut walk,
            &mut scratch,
            |found| {
                let in_message = bytes.windows(4).any(|w| w == &found.addr[12..])
                    || bytes.windows(16).any(|w| w == &found.addr[..]);
                assert!(in_message, "an address that is not in the message");
            },
        );
        assert!(summary.addresses as usize <= MAX_ANSWERS);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{boxed::Box, vec::Vec};

    use super::*;

    fn msg_from(bytes: &[u8]) -> Box<Msg> {
        let mut msg = Box::new(Msg {
            bytes: [0; MSG_MAX],
            len: 0,
        });
        msg.bytes[..bytes.len()].copy_from_slice(bytes);
        msg.set_len(bytes.len());
        msg
    }

    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn text(name: &Name, len: usize) -> &str {
        core::str::from_utf8(&name.bytes[..len]).unwrap()
    }

    fn empty_name() -> Box<Name> {
        Box::new(Name {
            bytes: [0; NAME_BUF],
        })
    }

    /// A response: header, question, then `answers` of (owner offset or name, type, rdata).
    struct Builder {
        bytes: Vec<u8>,
        answers: u16,
    }

    impl Builder {
        fn response(id: u16, qname: &str, qtype: u16) -> Self {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&id.to_be_bytes());
            bytes.extend_from_slice(&0x8180u16.to_be_bytes());
            bytes.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
            bytes.extend_from_slice(&wire(qname));
            bytes.extend_from_slice(&qtype.to_be_bytes());
            bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
            Self { bytes, answers: 0 }
        }

        fn record(mut self, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Self {
            self.bytes.extend_from_slice(owner);
            self.bytes.extend_from_slice(&rtype.to_be_bytes());
            self.bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
            self.bytes.extend_from_slice(&ttl.to_be_bytes());
            self.bytes
                .extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            self.bytes.extend_from_slice(rdata);
            self.answers += 1;
            self
        }

        fn build(mut self) -> Vec<u8> {
            self.bytes[6..8].copy_from_slice(&self.answers.to_be_bytes());
            self.bytes
        }
    }

    fn walk(bytes: &[u8]) -> (Vec<Found>, WalkSummary) {
        let msg = msg_from(bytes);
        let header = Header::parse(&msg).unwrap();
        let mut name = empty_name();
        let mut state = NameWalk::default();
        let question = read_question(&msg, &mut state, &mut name).unwrap();
        let mut found = Vec::new();
        let summary = walk_answers(
            &msg,
            question.end,
            header.ancount,
            &question,
            &mut state,
            &mut name,
            |f| found.push(f),
        );
        (found, summary)
    }

    fn read(msg: &Msg, offset: usize, name: &mut Name) -> Option<(usize, usize)> {
        read_name::<true>(msg, offset, &mut NameWalk::default(), name).map(|r| (r.next, r.len))
    }

    const QNAME_PTR: [u8; 2] = [0xc0, 12];

    #[test]
    fn reads_plain_and_compressed_names() {
        let bytes = Builder::response(7, "Registry.Example.COM", TYPE_A)
            .record(&QNAME_PTR, TYPE_A, 60, &[198, 51, 100, 2])
            .build();
        let msg = msg_from(&bytes);
        let mut name = empty_name();
        let question = read_question(&msg, &mut NameWalk::default(), &mut name).unwrap();
        assert_eq!(text(&name, question.name_len), "registry.example.com");
        assert_eq!(question.qtype, TYPE_A);
        let (next, len) = read(&msg, question.end, &mut name).unwrap();
        assert_eq!(text(&name, len), "registry.example.com");
        assert_eq!(next, question.end + 2);
    }

    #[test]
    fn rejects_bad_names() {
        let mut name = empty_name();
        // Forward pointer, self pointer, reserved label type, odd character, truncated.
        for bytes in [
            &[0xc0, 14, 0, 0][..],
            &[0xc0, 0][..],
            &[0x40, 1, 0][..],
            &[3, b'a', b'!', b'c', 0][..],
            &[5, b'a', b'b'][..],
        ] {
            let mut padded = std::vec![0u8; HEADER_LEN];
            padded.extend_from_slice(bytes);
            if bytes[0] == 0xc0 {
                // Make the pointer relative to where the name sits.
                padded[HEADER_LEN + 1] = bytes[1] + HEADER_LEN as u8;
            }
            let msg = msg_from(&padded);
            assert_eq!(read(&msg, HEADER_LEN, &mut name), None, "{bytes:?}");
        }
        // 253 characters of text are the most a name can have.
        for (tail, accepted) in [(61, true), (62, false)] {
            let long = std::vec!["a".repeat(63); 3].join(".") + "." + &"b".repeat(tail);
            let mut padded = std::vec![0u8; HEADER_LEN];
            padded.extend_from_slice(&wire(&long));
            let msg = msg_from(&padded);
            let result = read(&msg, HEADER_LEN, &mut name);
            assert_eq!(result.is_some(), accepted, "{} characters", long.len());
        }
    }

    #[test]
    fn names_hash_alike_whatever_their_case_or_compression() {
        let bytes = Builder::response(7, "Reg.TEST", TYPE_A)
            .record(&QNAME_PTR, TYPE_A, 60, &[198, 51, 100, 2])
            .record(&wire("reg.test"), TYPE_A, 60, &[198, 51, 100, 3])
            .record(&wire("reg.tesu"), TYPE_A, 60, &[198, 51, 100, 4])
            .build();
        let (found, summary) = walk(&bytes);
        assert_eq!(found.len(), 2);
        assert_eq!(summary.off_chain, 1);
    }

    #[test]
    fn a_name_running_off_a_full_buffer_fails() {
        // A label that ends exactly at MSG_MAX, with no terminator after it.
        let mut bytes = std::vec![0u8; MSG_MAX];
        let mut pos = HEADER_LEN;
        while pos + 64 <= MSG_MAX {
            bytes[pos] = 63;
            bytes[pos + 1..pos + 64].fill(b'a');
            pos += 64;
        }
        let tail = MSG_MAX - pos - 1;
        bytes[pos] = tail as u8;
        bytes[pos + 1..].fill(b'b');
        let msg = msg_from(&bytes);
        let mut name = empty_name();
        assert_eq!(read(&msg, MSG_MAX - 1 - tail, &mut name), None);
    }

    #[test]
    fn follows_the_cname_chain_strictly() {
        // q: reg.test → CNAME cdn.test → A 198.51.100.2; an A for other.test is ignored, and so
        // is an A for reg.test after the chain moved on.
        let mut cdn_rdata = wire("cdn.test");
        let bytes_prefix = Builder::response(1, "reg.test", TYPE_A);
        let cdn_offset = bytes_prefix.bytes.len() + 2 + 10; // owner ptr + fixed fields
        let bytes = bytes_prefix
            .record(&QNAME_PTR, TYPE_CNAME, 300, &cdn_rdata)
            .record(&wire("other.test"), TYPE_A, 60, &[203, 0, 113, 9])
            .record(&[0xc0, cdn_offset as u8], TYPE_A, 60, &[198, 51, 100, 2])
            .record(&QNAME_PTR, TYPE_A, 60, &[203, 0, 113, 10])
            .build();
        cdn_rdata.clear();
        let (found, summary) = walk(&bytes);
        assert_eq!(found.len(), 1);
        assert_eq!(&found[0].addr[12..], &[198, 51, 100, 2]);
        assert_eq!(found[0].ttl, 60);
        assert_eq!(summary.off_chain, 2);
        assert_eq!(summary.unexamined, 0);
    }

    #[test]
    fn reads_aaaa_records() {
        let v6: [u8; 16] = [
            0x20,
            0x01,
            0x0d,
            0xb8,
            0,
            0x100u16 as u8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            2,
        ];
        let bytes = Builder::response(1, "reg.test", TYPE_AAAA)
            .record(&QNAME_PTR, TYPE_AAAA, 30, &v6)
            .build();
        let (found, _) = walk(&bytes);
        assert_eq!(
            found,
            [Found {
                addr: v6,
                ttl: 30,
                owner_hash: crate::tls::name_hash(b"reg.test"),
            }]
        );
    }

    #[test]
    fn counts_records_past_the_limit() {
        let mut builder = Builder::response(1, "reg.test", TYPE_A);
        for i in 0..20u8 {
            builder = builder.record(&QNAME_PTR, TYPE_A, 60, &[198, 51, 100, i]);
        }
        let (found, summary) = walk(&builder.build());
        assert_eq!(found.len(), MAX_ANSWERS);
        assert_eq!(summary.unexamined, 20 - MAX_ANSWERS as u32);
    }

    #[test]
    fn reversed_keys_turn_suffixes_into_prefixes() {
        let mut name = empty_name();
        name.bytes[..8].copy_from_slice(b"a.b.test");
        let mut key = [0xaa; NAME_BUF];
        let len = reversed_key(&name, 8, &mut key);
        assert_eq!(&key[..len], b"tset.b.a\0");
    }

    /// A deterministic stand-in for the fuzzer that runs with the unit tests: mutations of valid
    /// answers and random bytes (xorshift, fixed seed).
    #[test]
    fn random_and_mutated_messages_never_panic() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = Builder::response(1, "reg.test", TYPE_A)
            .record(&QNAME_PTR, TYPE_CNAME, 300, &wire("cdn.test"))
            .record(&wire("cdn.test"), TYPE_A, 60, &[198, 51, 100, 2])
            .record(
                &[0xc0, 12],
                TYPE_AAAA,
                60,
                &[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            )
            .build();
        for round in 0..20_000 {
            let mut bytes = valid.clone();
            let flips = 1 + (next() % 8) as usize;
            for _ in 0..flips {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            if round % 3 == 0 {
                bytes.truncate((next() as usize) % (bytes.len() + 1));
            }
            fuzzing::parse_like_the_kernel(&bytes);
            let random: Vec<u8> = (0..(next() % 300) as usize).map(|_| next() as u8).collect();
            fuzzing::parse_like_the_kernel(&random);
        }
    }

    #[test]
    fn never_learned_addresses() {
        let v4 = |o: [u8; 4]| crate::v4_mapped(o);
        for addr in [
            v4([169, 254, 169, 254]),
            v4([127, 0, 0, 1]),
            v4([0, 0, 0, 0]),
            v4([224, 0, 0, 1]),
            v4([255, 255, 255, 255]),
            [0; 16],
            {
                let mut a = [0; 16];
                a[15] = 1;
                a
            },
            {
                let mut a = [0; 16];
                a[0] = 0xfe;
                a[1] = 0x80;
                a
            },
            {
                let mut a = [0; 16];
                a[0] = 0xff;
                a[1] = 0x02;
                a
            },
        ] {
            assert!(never_learned(&addr), "{addr:?}");
        }
        let v6 = |text: &str| text.parse::<std::net::Ipv6Addr>().unwrap().octets();
        for text in [
            "fd00:ec2::254",
            "::198.51.100.2",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
        ] {
            assert!(never_learned(&v6(text)), "{text}");
        }
        assert!(
            !never_learned(&v6("64:ff9b::c633:6402")),
            "NAT64 of 198.51.100.2"
        );
        assert!(!never_learned(&v6("fd00:ec2::253")));
        assert!(
            never_learned(&v4([100, 100, 100, 200])),
            "Alibaba Cloud metadata"
        );
        assert!(!never_learned(&v4([198, 51, 100, 2])));
        assert!(!never_learned(&v4([10, 0, 0, 1])));
        let mut global = [0; 16];
        global[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        global[15] = 2;
        assert!(!never_learned(&global));
    }

    #[test]
    fn suffix_hashes_are_keyed() {
        assert_ne!(suffix_hash(1, b"corp.test"), suffix_hash(2, b"corp.test"));
        assert_eq!(suffix_hash(7, b"corp.test"), suffix_hash(7, b"corp.test"));
        // Read from the end, as the kernel meets the characters.
        let mut hash = suffix_hash_start(7);
        for &byte in b"corp.test".iter().rev() {
            hash = suffix_hash_step(hash, byte);
        }
        assert_eq!(hash, suffix_hash(7, b"corp.test"));
    }
}
