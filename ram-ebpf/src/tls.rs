//! TLS names on learned addresses: a TCP connection to an address learned from the answer
//! for `registry.example` must say `registry.example` (or the name at the end of its CNAME
//! chain) in its ClientHello, not the name of another tenant of the same front end.
//!
//! - The connect gates note each TCP connection they allow to a learned address
//!   (`TLS_NOTES`, by socket cookie) and set [`TLS_MARK`] on the socket.
//! - `tls_sockops` (cgroup sock_ops), when the connection is established, makes its flow
//!   (`TLS_FLOWS`, pending) and puts the socket into `TLS_SOCKETS`, so that the kernel runs
//!   `tls_hello` on its sends.
//! - `tls_hello` (sk_msg) reads the first record the application sends, whole (corking the
//!   socket until it is), and judges its server name: allowed by the policy, and taught this
//!   address in this cgroup (`TAUGHT_NAMES`). A refused send fails at once with EACCES, as
//!   does every later one. The daemon takes allowed sockets out of `TLS_SOCKETS`.
//! - `dns_query_out` drops any packet with data of a marked socket whose flow is not allowed:
//!   data that left by a path `tls_hello` did not see (TCP Fast Open data queued before the
//!   connection was established, a send that began before it was) never gets out, and
//!   poisons the flow.

use aya_ebpf::{
    bindings::{BPF_ANY, bpf_sock_ops},
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        generated::{
            bpf_get_socket_cookie, bpf_msg_apply_bytes, bpf_msg_cork_bytes, bpf_msg_pull_data,
        },
    },
    macros::{sk_msg, sock_ops},
    programs::{SkBuffContext, SkMsgContext, SockOpsContext},
};
use ram_common::{
    Addr16, Counter, FLAG_TLS_AUDIT, FLAG_TLS_ENFORCE, FlowKey, Reason, TLS_ALLOWED, TLS_MARK,
    TLS_PENDING, TLS_REFUSED, TaughtKey, TlsEvent, TlsFlow, TlsScratch, VERDICT_WOULD_DENY,
    dns::{self, FNV_OFFSET, NAME_BUF, NAME_MAX},
    tls::{self, Bytes, Hello, OFFSET_LIMIT},
    v4_mapped,
};

use crate::{
    Policy, TAUGHT_NAMES, TLS_EVENTS, TLS_FLOWS, TLS_NOTES, TLS_SCRATCH, TLS_SOCKETS, count,
    gate::words_to_addr,
};

type NameLpmKey = aya_ebpf::maps::lpm_trie::Key<[u8; NAME_BUF]>;

const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;
const AF_INET: u32 = 2;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;

/// A port from a socket context field: "network byte order", which kernels place in the upper
/// 16 bits (and older ones in the lower).
#[inline(always)]
fn context_port(value: u32) -> u16 {
    if value > 0xffff {
        u32::from_be(value) as u16
    } else {
        u16::from_be(value as u16)
    }
}

/// A flow's key from a socket context's fields (IPv4 as mapped addresses).
#[inline(always)]
fn flow_key(
    family: u32,
    local4: u32,
    remote4: u32,
    local6: [u32; 4],
    remote6: [u32; 4],
    local_port: u32,
    remote_port: u32,
) -> FlowKey {
    let (local, remote) = if family == AF_INET {
        (
            v4_mapped(local4.to_ne_bytes()),
            v4_mapped(remote4.to_ne_bytes()),
        )
    } else {
        (words_to_addr(local6), words_to_addr(remote6))
    };
    FlowKey {
        local,
        remote,
        // `local_port` is in host byte order in every context.
        local_port: local_port as u16,
        remote_port: context_port(remote_port),
        _reserved: 0,
    }
}

#[sock_ops]
pub fn tls_sockops(ctx: SockOpsContext) -> u32 {
    // SAFETY: the program's bpf_sock_ops; one 4-byte load.
    let op = unsafe { core::ptr::read_volatile(&raw const (*ctx.ops).op) };
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        let _ = established(&ctx);
    }
    1
}

/// A connection the gates noted is established: its flow starts pending, and its sends go
/// through `tls_hello`.
#[inline(always)]
fn established(ctx: &SockOpsContext) -> Option<()> {
    // SAFETY: the program's context, the bpf_sock_ops the sock_ops form of the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast::<c_void>()) };
    // SAFETY: copied out at once; TlsNote is plain integers.
    let note = unsafe { *TLS_NOTES.get(cookie)? };
    let _ = TLS_NOTES.remove(cookie);
    let ops = ctx.ops;
    // SAFETY: the program's bpf_sock_ops, valid for the run; each field one 4-byte load at a
    // constant offset (the only kind the verifier rewrites), volatile so that it stays so.
    let (snd_nxt, snd_una, mut key) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ops).snd_nxt),
            core::ptr::read_volatile(&raw const (*ops).snd_una),
            flow_key(
                core::ptr::read_volatile(&raw const (*ops).family),
                core::ptr::read_volatile(&raw const (*ops).local_ip4),
                core::ptr::read_volatile(&raw const (*ops).remote_ip4),
                [
                    core::ptr::read_volatile(&raw const (*ops).local_ip6[0]),
                    core::ptr::read_volatile(&raw const (*ops).local_ip6[1]),
                    core::ptr::read_volatile(&raw const (*ops).local_ip6[2]),
                    core::ptr::read_volatile(&raw const (*ops).local_ip6[3]),
                ],
                [
                    core::ptr::read_volatile(&raw const (*ops).remote_ip6[0]),
                    core::ptr::read_volatile(&raw const (*ops).remote_ip6[1]),
                    core::ptr::read_volatile(&raw const (*ops).remote_ip6[2]),
                    core::ptr::read_volatile(&raw const (*ops).remote_ip6[3]),
                ],
                core::ptr::read_volatile(&raw const (*ops).local_port),
                core::ptr::read_volatile(&raw const (*ops).remote_port),
            ),
        )
    };
    // Data already sent and not acknowledged when the handshake completes left with the SYN
    // (TCP Fast Open), before any hello could be judged: refused.
    let state = if snd_nxt != snd_una {
        TLS_REFUSED
    } else {
        TLS_PENDING
    };
    let flow = TlsFlow {
        cgroup_id: note.cgroup_id,
        rule_id: note.rule_id,
        rule_index: note.rule_index,
        state,
        strict: note.strict,
        _reserved: 0,
    };
    let _ = TLS_FLOWS.insert(key, flow, 0);
    // SAFETY: `ops` is this program's context, the bpf_sock_ops the helper takes.
    let sock_ops = unsafe { &mut *ops.cast::<bpf_sock_ops>() };
    if TLS_SOCKETS
        .update(&mut key, sock_ops, BPF_ANY as u64)
        .is_err()
    {
        // Without the sk_msg hook, data of the pending flow is dropped at egress instead.
        count(Counter::TlsFlowLost);
    }
    Some(())
}

/// The sent bytes, read in place (after `bpf_msg_pull_data` made them one run of memory).
struct Sent {
    data: usize,
    data_end: usize,
    /// Bytes made linear (the whole message, or its first OFFSET_LIMIT - 1 bytes, more than
    /// any ClientHello record holds).
    size: usize,
}

impl Bytes for Sent {
    #[inline(always)]
    fn byte(&self, index: usize) -> Option<u8> {
        if index >= OFFSET_LIMIT {
            return None;
        }
        // Masked for the verifier, which must see the offset bounded (the check above already
        // made it so).
        let at = self.data + (index & (OFFSET_LIMIT - 1));
        if at + 1 > self.data_end {
            return None;
        }
        // SAFETY: `at` lies inside the message's linear data (checked against data_end above,
        // the check the verifier requires).
        Some(unsafe { *(at as *const u8) })
    }

    fn len(&self) -> usize {
        self.size
    }
}

#[sk_msg]
pub fn tls_hello(ctx: SkMsgContext) -> u32 {
    let msg = ctx.msg;
    // SAFETY: the program's sk_msg_md, valid for the run; each field one load at a constant
    // offset, rewritten by the verifier.
    let key = unsafe {
        flow_key(
            core::ptr::read_volatile(&raw const (*msg).family),
            core::ptr::read_volatile(&raw const (*msg).local_ip4),
            core::ptr::read_volatile(&raw const (*msg).remote_ip4),
            [
                core::ptr::read_volatile(&raw const (*msg).local_ip6[0]),
                core::ptr::read_volatile(&raw const (*msg).local_ip6[1]),
                core::ptr::read_volatile(&raw const (*msg).local_ip6[2]),
                core::ptr::read_volatile(&raw const (*msg).local_ip6[3]),
            ],
            [
                core::ptr::read_volatile(&raw const (*msg).remote_ip6[0]),
                core::ptr::read_volatile(&raw const (*msg).remote_ip6[1]),
                core::ptr::read_volatile(&raw const (*msg).remote_ip6[2]),
                core::ptr::read_volatile(&raw const (*msg).remote_ip6[3]),
            ],
            core::ptr::read_volatile(&raw const (*msg).local_port),
            core::ptr::read_volatile(&raw const (*msg).remote_port),
        )
    };
    let Some(flow) = TLS_FLOWS.get_ptr_mut(key) else {
        // A socket in TLS_SOCKETS whose flow the LRU forgot: fail closed.
        count(Counter::TlsFlowLost);
        return SK_DROP;
    };
    // SAFETY: the element stays mapped until the run ends; TlsFlow is plain integers, and only
    // this socket's programs write its flow.
    let state = unsafe { (*flow).state };
    if state == TLS_ALLOWED {
        pass_from_now_on(&ctx);
        return SK_PASS;
    }
    if state == TLS_REFUSED {
        return SK_DROP;
    }
    let judged = judge(&ctx, &key, flow);
    let Some(policy) = Policy::in_force() else {
        return SK_DROP;
    };
    let flags = policy.config.flags;
    match judged {
        Judged::Wait => SK_PASS,
        Judged::Allowed => {
            // SAFETY: as above.
            unsafe { (*flow).state = TLS_ALLOWED };
            count(Counter::TlsAllowed);
            pass_from_now_on(&ctx);
            SK_PASS
        }
        Judged::Refused(reason) => {
            let enforce = flags & FLAG_TLS_ENFORCE != 0;
            let audit = !enforce && flags & FLAG_TLS_AUDIT != 0;
            if !enforce && !audit {
                // `tls = "off"` since the connect: nothing to judge.
                // SAFETY: as above.
                unsafe { (*flow).state = TLS_ALLOWED };
                pass_from_now_on(&ctx);
                return SK_PASS;
            }
            // SAFETY: as above.
            let flow_copy = unsafe { *flow };
            report(
                &key,
                &flow_copy,
                reason,
                if audit { VERDICT_WOULD_DENY } else { 0 },
            );
            if audit {
                count(Counter::TlsWouldDeny);
                // SAFETY: as above.
                unsafe { (*flow).state = TLS_ALLOWED };
                pass_from_now_on(&ctx);
                return SK_PASS;
            }
            count(Counter::TlsRefused);
            // SAFETY: as above.
            unsafe { (*flow).state = TLS_REFUSED };
            SK_DROP
        }
    }
}

/// An allowed socket's later sends pass without running this program again (for the next
/// 4 GiB; the daemon takes allowed sockets out of `TLS_SOCKETS` at its next tick, which
/// returns their sends to the kernel's usual path: sk_msg programs may not do that themselves).
#[inline(always)]
fn pass_from_now_on(ctx: &SkMsgContext) {
    // SAFETY: the program's sk_msg_md.
    unsafe { bpf_msg_apply_bytes(ctx.msg, u32::MAX) };
}

enum Judged {
    /// The record is not whole yet: the socket is corked until it is.
    Wait,
    Allowed,
    Refused(Reason),
}

#[inline(always)]
fn judge(ctx: &SkMsgContext, key: &FlowKey, flow: *mut TlsFlow) -> Judged {
    let size = ctx.size() as usize;
    let pull = if size > OFFSET_LIMIT - 1 {
        OFFSET_LIMIT - 1
    } else {
        size
    };
    // SAFETY: the program's sk_msg_md; the range lies within the message.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, pull as u32, 0) } != 0 {
        return Judged::Refused(Reason::TlsUnreadable);
    }
    let sent = Sent {
        data: ctx.data(),
        data_end: ctx.data_end(),
        size: pull,
    };
    // SAFETY: as in tls_hello: the flow stays mapped for the run.
    let strict = unsafe { (*flow).strict } != 0;
    match tls::read_hello(&sent) {
        Hello::Incomplete { total } => {
            // SAFETY: the program's sk_msg_md. The kernel gathers `total` bytes, then runs
            // this program again on all of them.
            if unsafe { bpf_msg_cork_bytes(ctx.msg, total) } != 0 {
                return Judged::Refused(Reason::TlsUnreadable);
            }
            Judged::Wait
        }
        // Another protocol on a port that need not carry TLS (a written port: plain HTTP).
        Hello::NotTls if !strict => Judged::Allowed,
        Hello::NotTls => Judged::Refused(Reason::TlsNotHandshake),
        Hello::Unreadable => Judged::Refused(Reason::TlsUnreadable),
        Hello::NoName => Judged::Refused(Reason::TlsNoName),
        Hello::Named { offset, len } => judge_name(&sent, key, flow, offset as usize, len as usize),
    }
}

#[inline(always)]
fn judge_name(sent: &Sent, key: &FlowKey, flow: *mut TlsFlow, offset: usize, len: usize) -> Judged {
    if len == 0 || len > NAME_MAX + 1 {
        return Judged::Refused(Reason::TlsUnreadable);
    }
    let Some(scratch) = TLS_SCRATCH.get_ptr_mut(0) else {
        return Judged::Refused(Reason::TlsUnreadable);
    };
    // SAFETY: this CPU's entry of a per-CPU array, valid for the run. A program preempting
    // this one on the same CPU could overwrite it: then the name judged is garbage, which
    // matches nothing (refused), never another allowed name by design.
    let scratch: &mut TlsScratch = unsafe { &mut *scratch };
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    let mut name_len = len;
    // Bounded: a name's characters and one trailing dot (RFC 6066 sends none; one is ignored).
    while i <= NAME_MAX {
        if i >= len {
            break;
        }
        let Some(char) = sent.byte(offset + i).and_then(tls::name_char) else {
            return Judged::Refused(Reason::TlsUnreadable);
        };
        if char == b'.' && i + 1 == len {
            name_len = i;
            break;
        }
        scratch.name.bytes[i & (NAME_BUF - 1)] = char;
        hash = tls::name_hash_step(hash, char);
        i += 1;
    }
    if name_len == 0 || name_len > NAME_MAX {
        return Judged::Refused(Reason::TlsUnreadable);
    }
    let key_len = dns::reversed_key(&scratch.name, name_len, &mut scratch.key.data);
    scratch.key.prefix_len = (key_len * 8) as u32;
    scratch.name_len = name_len as u32;
    let Some(policy) = Policy::in_force() else {
        return Judged::Refused(Reason::TlsNameNotAllowed);
    };
    // SAFETY: NameKey has the layout of the trie's key (see dns.rs, check_answer).
    let trie_key = unsafe { &*core::ptr::from_ref(&scratch.key).cast::<NameLpmKey>() };
    if policy.name(trie_key).is_none() {
        return Judged::Refused(Reason::TlsNameNotAllowed);
    }
    // SAFETY: as in tls_hello.
    let cgroup_id = unsafe { (*flow).cgroup_id };
    let taught = TaughtKey {
        cgroup_id,
        addr: key.remote,
        name_hash: hash,
    };
    // SAFETY: no arguments; reads the boot clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: copied out at once; the value is a u64.
    match unsafe { TAUGHT_NAMES.get(taught) } {
        Some(expires) if *expires > now => Judged::Allowed,
        _ => Judged::Refused(Reason::TlsNameNotTaught),
    }
}

/// Sends a refused (or would-be refused) hello to the daemon, with the name it sent.
#[inline(always)]
fn report(key: &FlowKey, flow: &TlsFlow, reason: Reason, verdict: u8) {
    let Some(mut entry) = TLS_EVENTS.reserve::<TlsEvent>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    let event = entry.as_mut_ptr();
    let name_len = match reason {
        Reason::TlsNameNotAllowed | Reason::TlsNameNotTaught => {
            TLS_SCRATCH.get(0).map_or(0, |scratch| scratch.name_len)
        }
        _ => 0,
    };
    // SAFETY: the entry is a reserved, exclusively owned TlsEvent; the name is copied from
    // this CPU's scratch entry, NAME_BUF bytes into a NAME_BUF array.
    unsafe {
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).cgroup_id = flow.cgroup_id;
        (*event).pid_tgid = bpf_get_current_pid_tgid();
        (*event).uid_gid = bpf_get_current_uid_gid();
        (*event).rule_id = flow.rule_id;
        (*event).addr = key.remote;
        (*event).port = key.remote_port;
        (*event).reason = reason as u8;
        (*event).verdict = verdict;
        (*event).rule_index = flow.rule_index;
        (*event).name_len = name_len;
        (*event)._reserved = 0;
        if let Some(scratch) = TLS_SCRATCH.get_ptr(0) {
            (*event).name = (*scratch).name.bytes;
        }
    }
    entry.submit(0);
}

/// Whether a packet leaving must be dropped: data of a socket the connect gates marked whose
/// flow is not allowed. Only marked packets carrying data pay a lookup.
#[inline(always)]
pub(crate) fn unjudged_data(ctx: &SkBuffContext, transport_offset: usize) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: the program's __sk_buff; one load at a constant offset.
    let mark = unsafe { core::ptr::read_volatile(&raw const (*skb).mark) };
    if mark & TLS_MARK == 0 {
        return false;
    }
    let Ok(data_offset) = ctx.load::<u8>(transport_offset + 12) else {
        return false;
    };
    let headers = transport_offset + ((data_offset >> 4) as usize) * 4;
    if ctx.len() as usize <= headers {
        return false;
    }
    // SAFETY: the program's __sk_buff; each field one load at a constant offset, rewritten by
    // the verifier to the socket's.
    let key = unsafe {
        flow_key(
            core::ptr::read_volatile(&raw const (*skb).family),
            core::ptr::read_volatile(&raw const (*skb).local_ip4),
            core::ptr::read_volatile(&raw const (*skb).remote_ip4),
            [
                core::ptr::read_volatile(&raw const (*skb).local_ip6[0]),
                core::ptr::read_volatile(&raw const (*skb).local_ip6[1]),
                core::ptr::read_volatile(&raw const (*skb).local_ip6[2]),
                core::ptr::read_volatile(&raw const (*skb).local_ip6[3]),
            ],
            [
                core::ptr::read_volatile(&raw const (*skb).remote_ip6[0]),
                core::ptr::read_volatile(&raw const (*skb).remote_ip6[1]),
                core::ptr::read_volatile(&raw const (*skb).remote_ip6[2]),
                core::ptr::read_volatile(&raw const (*skb).remote_ip6[3]),
            ],
            core::ptr::read_volatile(&raw const (*skb).local_port),
            core::ptr::read_volatile(&raw const (*skb).remote_port),
        )
    };
    match TLS_FLOWS.get_ptr_mut(key) {
        // SAFETY: the element stays mapped until the run ends; TlsFlow is plain integers.
        Some(flow) if unsafe { (*flow).state } == TLS_ALLOWED => false,
        Some(flow) => {
            // Data that tls_hello never saw: the flow stays refused, so that an allowed hello
            // sent after it cannot carry it out.
            // SAFETY: as above.
            unsafe { (*flow).state = TLS_REFUSED };
            count(Counter::TlsUnjudgedDropped);
            true
        }
        None => {
            count(Counter::TlsUnjudgedDropped);
            true
        }
    }
}

/// What the connect gates record for a TCP connection they allow to a learned address.
#[inline(always)]
pub(crate) fn note_connection(
    sock_addr: *mut aya_ebpf::bindings::bpf_sock_addr,
    note: &ram_common::TlsNote,
) {
    // SAFETY: the gate's context, the argument the sock_addr form of the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(sock_addr.cast::<c_void>()) };
    let _ = TLS_NOTES.insert(cookie, *note, 0);
    // SAFETY: the gate's context; `sk` of a sock_addr context is the socket of the call.
    let current = unsafe { (*(*sock_addr).__bindgen_anon_1.sk).mark };
    let mark: u32 = current | TLS_MARK;
    // SAFETY: the gate's context and a 4-byte value, as SO_MARK takes; the socket is locked
    // by the connect path the hook runs in.
    let set = unsafe {
        aya_ebpf::helpers::generated::bpf_setsockopt(
            sock_addr.cast::<c_void>(),
            SOL_SOCKET,
            SO_MARK,
            (&raw const mark).cast_mut().cast::<c_void>(),
            4,
        )
    };
    if set != 0 {
        count(Counter::TlsFlowLost);
    }
}

const SOL_SOCKET: i32 = 1;
const SO_MARK: i32 = 36;

/// Records that the name hashing to `name_hash` taught `addr` to `cgroup_id` (written by
/// `dns_answer_rr`, read by `tls_hello` above).
#[inline(always)]
pub(crate) fn teach(cgroup_id: u64, addr: Addr16, name_hash: u64, expires_ns: u64) {
    let key = TaughtKey {
        cgroup_id,
        addr,
        name_hash,
    };
    let _ = TAUGHT_NAMES.insert(key, expires_ns, 0);
}
