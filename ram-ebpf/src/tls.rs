//! TLS names on learned addresses: a TCP connection to an address learned from the answer
//! for `registry.example` must say `registry.example` (or the name at the end of its CNAME
//! chain) in its ClientHello, not the name of another tenant of the same front end.
//!
//! - The connect gates note each TCP connection they allow to a learned address
//!   (`TLS_NOTES`, by socket cookie); `tls_sockops` sets [`TLS_MARK`] on the socket before its
//!   SYN leaves (`TCP_CONNECT_CB`).
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
            bpf_get_socket_cookie, bpf_map_delete_elem, bpf_msg_apply_bytes, bpf_msg_cork_bytes,
            bpf_msg_pull_data, bpf_skb_load_bytes,
        },
    },
    macros::{cgroup_skb, sk_msg, sock_ops},
    programs::{SkBuffContext, SkMsgContext, SockOpsContext},
};
use ram_common::{
    Addr16, Counter, FLAG_TLS_AUDIT, FLAG_TLS_ENFORCE, FlowKey, Reason, SCRATCH_TLS_EGRESS,
    SCRATCH_TLS_SEND, TLS_ALLOWED, TLS_MARK, TLS_PENDING, TLS_REFUSED, TaughtKey, TlsEvent,
    TlsFlow, TlsScratch, VERDICT_WOULD_DENY,
    dns::{FNV_OFFSET, NAME_BUF, NAME_MAX},
    maps::{TLS_NAME_OUT_SLOT, TLS_NAME_SLOT},
    tls::{self, Bytes, COPIED_MAX, Hello, OFFSET_LIMIT, WALK_DONE, WALK_FAILED, WALK_RUNNING},
    v4_mapped,
    volatile::{get, set},
};

use crate::{
    DNS_TAIL_CALLS, Policy, TAUGHT_NAMES, TLS_EVENTS, TLS_FLOWS, TLS_NOTES, TLS_SCRATCH,
    TLS_SOCKETS, TLS_TAIL_CALLS, count, gate::words_to_addr,
};

type NameLpmKey = aya_ebpf::maps::lpm_trie::Key<[u8; NAME_BUF]>;

const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;
const AF_INET: u32 = 2;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_RTT_CB: u32 = 12;
const BPF_SOCK_OPS_RTT_CB_FLAG: i32 = 1 << 3;

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

/// The flow key from a socket context — `bpf_sock_ops`, `sk_msg_md` or `__sk_buff`, which
/// name the socket's addresses and ports with the same fields.
macro_rules! context_flow_key {
    ($ctx:expr) => {{
        let ctx = $ctx;
        // SAFETY: the program's context, valid for the run; each field one 4-byte load at a
        // constant offset (the only kind the verifier rewrites to the socket's fields),
        // volatile so that it stays so.
        unsafe {
            flow_key(
                core::ptr::read_volatile(&raw const (*ctx).family),
                core::ptr::read_volatile(&raw const (*ctx).local_ip4),
                core::ptr::read_volatile(&raw const (*ctx).remote_ip4),
                [
                    core::ptr::read_volatile(&raw const (*ctx).local_ip6[0]),
                    core::ptr::read_volatile(&raw const (*ctx).local_ip6[1]),
                    core::ptr::read_volatile(&raw const (*ctx).local_ip6[2]),
                    core::ptr::read_volatile(&raw const (*ctx).local_ip6[3]),
                ],
                [
                    core::ptr::read_volatile(&raw const (*ctx).remote_ip6[0]),
                    core::ptr::read_volatile(&raw const (*ctx).remote_ip6[1]),
                    core::ptr::read_volatile(&raw const (*ctx).remote_ip6[2]),
                    core::ptr::read_volatile(&raw const (*ctx).remote_ip6[3]),
                ],
                core::ptr::read_volatile(&raw const (*ctx).local_port),
                core::ptr::read_volatile(&raw const (*ctx).remote_port),
            )
        }
    }};
}

#[sock_ops]
pub fn tls_sockops(ctx: SockOpsContext) -> u32 {
    // SAFETY: the program's bpf_sock_ops; one 4-byte load.
    let op = unsafe { core::ptr::read_volatile(&raw const (*ctx.ops).op) };
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        mark_noted(&ctx);
    } else if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        let _ = established(&ctx);
    } else if op == BPF_SOCK_OPS_RTT_CB {
        release_judged(&ctx);
    }
    1
}

/// A sock_ops context's flow key (its socket's addresses and ports).
#[inline(always)]
fn ops_flow_key(ctx: &SockOpsContext) -> FlowKey {
    context_flow_key!(ctx.ops)
}

/// `RTT_CB` (each acknowledgement with a round-trip sample, enabled per judged socket): once
/// the flow is allowed and verified, the socket leaves `TLS_SOCKETS` (sk_msg programs may not
/// remove their own socket; sock_ops programs may), so that its sends take the kernel's usual
/// path again, and the callback is switched off.
#[inline(always)]
fn release_judged(ctx: &SockOpsContext) {
    let mut key = ops_flow_key(ctx);
    // SAFETY: copied out at once; TlsFlow is plain integers.
    let Some(flow) = (unsafe { TLS_FLOWS.get(key) }).copied() else {
        return;
    };
    if flow.state != TLS_ALLOWED || flow.verified == 0 {
        return;
    }
    // SAFETY: TLS_SOCKETS is a map definition (SockHash wraps one transparently) and `key` a
    // FlowKey, its key type; sock_ops programs may delete from a sock hash.
    unsafe {
        bpf_map_delete_elem(
            (&raw const TLS_SOCKETS).cast_mut().cast::<c_void>(),
            (&raw mut key).cast::<c_void>(),
        );
    }
    let _ = ctx.set_cb_flags(0);
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
    // SAFETY: the program's bpf_sock_ops, valid for the run; 4-byte loads at constant offsets.
    let (snd_nxt, snd_una) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ops).snd_nxt),
            core::ptr::read_volatile(&raw const (*ops).snd_una),
        )
    };
    let mut key = ops_flow_key(ctx);
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
        verified: 0,
        _reserved: 0,
        first_seq: snd_nxt,
        _reserved2: 0,
        comm: note.comm,
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
    } else {
        // Told of each acknowledgement from now on, to take the socket out once allowed.
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_RTT_CB_FLAG);
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
        // Read through memory, as in `Copied::byte`: the mask must stay.
        // SAFETY: a read of a live field.
        let size = unsafe { core::ptr::read_volatile(&raw const self.size) };
        if index >= size {
            return None;
        }
        // Masked for the verifier, which must see the offset bounded (`size` is below
        // OFFSET_LIMIT, so the mask changes nothing).
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

/// A message's flow key (its socket's addresses and ports).
#[inline(always)]
fn msg_flow_key(ctx: &SkMsgContext) -> FlowKey {
    context_flow_key!(ctx.msg)
}

#[sk_msg]
pub fn tls_hello(ctx: SkMsgContext) -> u32 {
    let key = msg_flow_key(&ctx);
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
    // A run that finds the scratch entry taken (it preempted another on this CPU) cannot
    // judge: the send fails (the egress check lets nothing out unjudged anyway).
    let Some(scratch) = take_scratch(SCRATCH_TLS_SEND) else {
        return SK_DROP;
    };
    scratch.owner = key;
    let judged = judge(&ctx, scratch);
    if let Judged::Name = judged {
        // The name is judged by a program of its own (the verifier walks each alone); it
        // releases the scratch entry. Returns only if the call fails: the egress check,
        // which reads what leaves, then judges.
        // SAFETY: `ctx` is this sk_msg program's context, the type tls_hello_name takes.
        unsafe { TLS_TAIL_CALLS.tail_call(&ctx, TLS_NAME_SLOT) };
        scratch.busy_since_ns = 0;
        return SK_PASS;
    }
    finish_send(&ctx, judged, &key, flow, scratch)
}

/// Tail call target of `tls_hello`: judges the server name `tls_hello` found (its place is
/// in the scratch entry `tls_hello` holds).
#[sk_msg]
pub fn tls_hello_name(ctx: SkMsgContext) -> u32 {
    let key = msg_flow_key(&ctx);
    let Some(scratch) = TLS_SCRATCH.get_ptr_mut(SCRATCH_TLS_SEND) else {
        return SK_PASS;
    };
    // SAFETY: this CPU's entry, held by the tls_hello run that tail-called this one (a tail
    // call stays on the CPU).
    let scratch: &'static mut TlsScratch = unsafe { &mut *scratch };
    if scratch.owner != key {
        return SK_DROP;
    }
    let Some(flow) = TLS_FLOWS.get_ptr_mut(key) else {
        scratch.busy_since_ns = 0;
        return SK_DROP;
    };
    let sent = Sent {
        data: ctx.data(),
        data_end: ctx.data_end(),
        size: scratch.walk.end as usize,
    };
    // SAFETY: as in tls_hello.
    let flow_copy = unsafe { *flow };
    let judged = judge_kept(&sent, &key, &flow_copy, scratch, SCRATCH_TLS_SEND);
    finish_send(&ctx, judged, &key, flow, scratch)
}

/// A send's verdict applied, the scratch entry released.
#[inline(always)]
fn finish_send(
    ctx: &SkMsgContext,
    judged: Judged,
    key: &FlowKey,
    flow: *mut TlsFlow,
    scratch: &mut TlsScratch,
) -> u32 {
    let verdict = settle(judged, key, flow, SCRATCH_TLS_SEND, true);
    scratch.busy_since_ns = 0;
    match verdict {
        Settled::Pass => SK_PASS,
        Settled::PassFromNowOn => {
            pass_from_now_on(ctx);
            SK_PASS
        }
        Settled::Drop => SK_DROP,
    }
}

enum Settled {
    Pass,
    PassFromNowOn,
    Drop,
}

/// Applies a verdict to the flow under the policy's `tls` mode: counted, reported, and the
/// flow's state set (refused for good, or allowed).
#[inline(always)]
fn settle(judged: Judged, key: &FlowKey, flow: *mut TlsFlow, slot: u32, task: bool) -> Settled {
    let flags = Policy::in_force().map_or(FLAG_TLS_ENFORCE, |policy| policy.config.flags);
    // SAFETY: the element stays mapped until the run ends; TlsFlow is plain integers.
    // (The egress check judges again what `tls_hello` judged: counted and reported once.)
    let judged_before = unsafe { (*flow).state } == TLS_ALLOWED;
    match judged {
        // `Name` goes to the name's own program before any verdict.
        Judged::Wait | Judged::Name => Settled::Pass,
        Judged::Allowed => {
            // SAFETY: as above.
            unsafe { (*flow).state = TLS_ALLOWED };
            if !judged_before {
                count(Counter::TlsAllowed);
            }
            Settled::PassFromNowOn
        }
        Judged::Refused(reason) => {
            let enforce = flags & FLAG_TLS_ENFORCE != 0;
            let audit = !enforce && flags & FLAG_TLS_AUDIT != 0;
            if enforce || (audit && !judged_before) {
                // SAFETY: as above.
                let flow_copy = unsafe { *flow };
                let verdict = if audit { VERDICT_WOULD_DENY } else { 0 };
                report(key, &flow_copy, reason, verdict, slot, task);
            }
            if enforce {
                count(Counter::TlsRefused);
                // SAFETY: as above.
                unsafe { (*flow).state = TLS_REFUSED };
                return Settled::Drop;
            }
            // `"audit"`, or `"off"` since the connect: let it through from now on.
            if audit && !judged_before {
                count(Counter::TlsWouldDeny);
            }
            // SAFETY: as above.
            unsafe { (*flow).state = TLS_ALLOWED };
            Settled::PassFromNowOn
        }
    }
}

/// An allowed socket's later sends pass without running this program again (for the next
/// 4 GiB; `tls_sockops` takes the socket out of `TLS_SOCKETS` at its first acknowledgement
/// once verified, which returns its sends to the kernel's usual path: sk_msg programs may not
/// do that themselves).
#[inline(always)]
fn pass_from_now_on(ctx: &SkMsgContext) {
    // SAFETY: the program's sk_msg_md.
    unsafe { bpf_msg_apply_bytes(ctx.msg, u32::MAX) };
}

enum Judged {
    /// The record is not whole yet: the socket is corked until it is.
    Wait,
    /// A ClientHello naming a host: its place is in the scratch entry's walk, for the
    /// program that judges names (a tail call).
    Name,
    Allowed,
    Refused(Reason),
}

#[inline(always)]
fn judge(ctx: &SkMsgContext, scratch: &mut TlsScratch) -> Judged {
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
    let hello = tls::read_hello(&sent, &mut scratch.walk);
    if let Hello::Incomplete { total } = hello {
        // SAFETY: the program's sk_msg_md. The kernel gathers `total` bytes, then runs this
        // program again on all of them. (Where it cannot, it sends what it has: the egress
        // check, which reads what leaves, refuses a partial hello.)
        if unsafe { bpf_msg_cork_bytes(ctx.msg, total) } != 0 {
            return Judged::Refused(Reason::TlsUnreadable);
        }
        return Judged::Wait;
    }
    // The verdict is the next program's (tls_hello_name): what was found, and how many
    // bytes were made linear, go to it in the scratch entry.
    hello.keep(&mut scratch.walk);
    set(&mut scratch.walk.end, pull as u32);
    Judged::Name
}

/// The verdict on the hello a first program found (kept in `scratch.walk`).
#[inline(always)]
fn judge_kept(
    bytes: &impl Bytes,
    key: &FlowKey,
    flow: &TlsFlow,
    scratch: &TlsScratch,
    slot: u32,
) -> Judged {
    match Hello::kept(&scratch.walk) {
        Hello::Named { offset, len } => {
            judge_name(bytes, key, flow, offset as usize, len as usize, slot)
        }
        other => judge_hello(other, flow),
    }
}

/// The verdict on a whole first record (read from a send or from a packet).
#[inline(always)]
fn judge_hello(hello: Hello, flow: &TlsFlow) -> Judged {
    match hello {
        // Another protocol on a port that need not carry TLS (a written port: plain HTTP).
        Hello::NotTls if flow.strict == 0 => Judged::Allowed,
        Hello::NotTls => Judged::Refused(Reason::TlsNotHandshake),
        Hello::Unreadable | Hello::Incomplete { .. } => Judged::Refused(Reason::TlsUnreadable),
        Hello::NoName => Judged::Refused(Reason::TlsNoName),
        Hello::Encrypted => Judged::Refused(Reason::TlsEncryptedHello),
        // The walk in the scratch entry holds the name's place.
        Hello::Named { .. } => Judged::Name,
    }
}

/// The server name at `offset` (`len` bytes): allowed by the policy, and taught this address
/// in the flow's cgroup.
#[inline(always)]
fn judge_name(
    bytes: &impl Bytes,
    key: &FlowKey,
    flow: &TlsFlow,
    offset: usize,
    len: usize,
    slot: u32,
) -> Judged {
    if len == 0 || len > NAME_MAX + 1 {
        return Judged::Refused(Reason::TlsUnreadable);
    }
    let Some(scratch) = TLS_SCRATCH.get_ptr_mut(slot) else {
        return Judged::Refused(Reason::TlsUnreadable);
    };
    // SAFETY: this CPU's entry `slot` of a per-CPU array, valid for the run, held by this
    // program (see take_scratch for the send side; egress holds its entry the same way).
    let scratch: &mut TlsScratch = unsafe { &mut *scratch };
    // One trailing dot is ignored (RFC 6066 sends none).
    let mut len = len;
    if let Some(last) = bytes.byte(offset + len - 1)
        && last == b'.'
    {
        len -= 1;
    }
    if len == 0 || len > NAME_MAX {
        return Judged::Refused(Reason::TlsUnreadable);
    }
    // The copy's state lives in map memory (see tls::HelloWalk): the verifier then sees each
    // iteration's state as one, where registers would make it walk every path of every one.
    // The trie key is written reversed as the name is read, so that nothing after the loop
    // (which the verifier walks once per way out of it) loops again.
    let walk = &mut scratch.walk;
    set(&mut walk.copied, 0);
    set(&mut walk.name_len, len as u32);
    set(&mut walk.copy_status, WALK_RUNNING);
    set(&mut walk.hash, FNV_OFFSET);
    let mut step = 0;
    // Bounded: a name's characters.
    while step < NAME_MAX {
        step += 1;
        if get(&walk.copy_status) != WALK_RUNNING {
            break;
        }
        let i = get(&walk.copied) as usize;
        let len = get(&walk.name_len) as usize;
        if i >= len {
            set(&mut walk.copy_status, WALK_DONE);
            continue;
        }
        let Some(char) = bytes.byte(offset + i).and_then(tls::name_char) else {
            set(&mut walk.copy_status, WALK_FAILED);
            continue;
        };
        scratch.name.bytes[i & (NAME_BUF - 1)] = char;
        scratch.key.data[(len - 1 - i) & (NAME_BUF - 1)] = char;
        let hash = tls::name_hash_step(get(&walk.hash), char);
        set(&mut walk.hash, hash);
        set(&mut walk.copied, i as u32 + 1);
    }
    if get(&walk.copied) as usize != len {
        return Judged::Refused(Reason::TlsUnreadable);
    }
    let hash = get(&walk.hash);
    scratch.key.data[len & (NAME_BUF - 1)] = 0;
    scratch.key.prefix_len = ((len + 1) * 8) as u32;
    let Some(policy) = Policy::in_force() else {
        return Judged::Refused(Reason::TlsNameNotAllowed);
    };
    // SAFETY: NameKey has the layout of the trie's key (see dns.rs, check_answer).
    let trie_key = unsafe { &*core::ptr::from_ref(&scratch.key).cast::<NameLpmKey>() };
    if policy.name(trie_key).is_none() {
        return Judged::Refused(Reason::TlsNameNotAllowed);
    }
    let taught = TaughtKey {
        cgroup_id: flow.cgroup_id,
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

/// Takes this CPU's scratch entry `slot` of `TLS_SCRATCH` (see [`crate::take_scratch`]).
#[inline(always)]
fn take_scratch(slot: u32) -> Option<&'static mut TlsScratch> {
    crate::take_scratch(TLS_SCRATCH.get_ptr_mut(slot)?)
}

/// Sends a refused (or would-be refused) hello to the daemon, with the name it sent.
#[inline(always)]
fn report(key: &FlowKey, flow: &TlsFlow, reason: Reason, verdict: u8, slot: u32, task: bool) {
    let Some(mut entry) = TLS_EVENTS.reserve::<TlsEvent>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    let event = entry.as_mut_ptr();
    let name_len = match reason {
        Reason::TlsNameNotAllowed | Reason::TlsNameNotTaught => {
            // judge_name left the name's length in the walk.
            TLS_SCRATCH
                .get(slot)
                .map_or(0, |scratch| get(&scratch.walk.name_len))
        }
        _ => 0,
    };
    // SAFETY: the entry is a reserved, exclusively owned TlsEvent; the name is copied from
    // this CPU's scratch entry, NAME_BUF bytes into a NAME_BUF array.
    unsafe {
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).cgroup_id = flow.cgroup_id;
        // Egress may run in softirq context, for any task: no task there.
        (*event).pid_tgid = if task { bpf_get_current_pid_tgid() } else { 0 };
        (*event).uid_gid = if task { bpf_get_current_uid_gid() } else { 0 };
        (*event).rule_id = flow.rule_id;
        (*event).addr = key.remote;
        (*event).port = key.remote_port;
        (*event).reason = reason as u8;
        (*event).verdict = verdict;
        (*event).rule_index = flow.rule_index;
        (*event).comm = flow.comm;
        (*event).name_len = name_len;
        (*event)._reserved = 0;
        if let Some(scratch) = TLS_SCRATCH.get_ptr(slot) {
            (*event).name = (*scratch).name.bytes;
        }
    }
    entry.submit(0);
}

/// What the egress check says of a packet.
pub(crate) enum Egress {
    Pass,
    Drop,
    /// The packet carries the stream's first byte of a flow not yet verified: `tls_first_out`
    /// (a tail call) reads it.
    ReadFirst,
}

/// The egress check of a TCP packet: only packets with data of sockets the connect gates
/// marked pay a lookup. Their flow must be verified (its first bytes allowed as they left),
/// or this packet must be the one carrying the stream's first byte.
#[inline(always)]
pub(crate) fn egress_check(ctx: &SkBuffContext, transport_offset: usize) -> Egress {
    let Some(segment) = segment(ctx, transport_offset) else {
        return Egress::Pass;
    };
    let skb = ctx.skb.skb;
    // SAFETY: the program's __sk_buff; one load at a constant offset.
    let marked = unsafe { core::ptr::read_volatile(&raw const (*skb).mark) } & TLS_MARK != 0;
    let key = packet_flow_key(ctx);
    // Every packet with data is looked up, marked or not: a mark can be changed by a path
    // sockopt_gate does not see (32-bit setsockopt calls), a judged flow cannot.
    let Some(flow) = TLS_FLOWS.get_ptr_mut(key) else {
        if !marked {
            return Egress::Pass;
        }
        // Marked, no flow: data before the connection was established (TCP Fast Open), or
        // a flow the LRU forgot. Fail closed.
        count(Counter::TlsUnjudgedDropped);
        return Egress::Drop;
    };
    // SAFETY: the element stays mapped until the run ends; TlsFlow is plain integers.
    let (state, verified, first_seq) =
        unsafe { ((*flow).state, (*flow).verified, (*flow).first_seq) };
    // Urgent data: a receiver takes the urgent byte out of the stream, so that the server
    // would read other bytes than those judged. Nothing a registry client sends.
    if state == TLS_REFUSED || segment.urgent {
        refuse_flow(flow);
        return Egress::Drop;
    }
    if verified != 0 {
        return Egress::Pass;
    }
    // The first bytes leave only after the send check (which copies them into the kernel's
    // own pages) allowed a send: bytes queued by another path (sendfile, splice or zero-copy
    // pages the sender can still write, a send made while connecting) never go first.
    if segment.seq == first_seq && state == TLS_ALLOWED {
        return Egress::ReadFirst;
    }
    // Data before the send check allowed, or past the first byte before the first bytes were
    // read: it left by another path. Refused for good.
    refuse_flow(flow);
    Egress::Drop
}

#[inline(always)]
fn refuse_flow(flow: *mut TlsFlow) {
    // SAFETY: the element stays mapped until the run ends; TlsFlow is plain integers.
    unsafe { (*flow).state = TLS_REFUSED };
    count(Counter::TlsUnjudgedDropped);
}

/// A TCP segment's sequence number and where its data starts; `None` without data.
struct Segment {
    seq: u32,
    /// The URG flag.
    urgent: bool,
    data_offset: usize,
    data_len: usize,
}

#[inline(always)]
fn segment(ctx: &SkBuffContext, transport_offset: usize) -> Option<Segment> {
    let header: [u8; 14] = ctx.load(transport_offset).ok()?;
    let data_offset = transport_offset + ((header[12] >> 4) as usize) * 4;
    let len = ctx.len() as usize;
    if len <= data_offset {
        return None;
    }
    Some(Segment {
        seq: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        urgent: header[13] & TCP_URG != 0,
        data_offset,
        data_len: len - data_offset,
    })
}

/// The flow key of a packet's socket (its own addresses and ports, before any NAT).
#[inline(always)]
fn packet_flow_key(ctx: &SkBuffContext) -> FlowKey {
    context_flow_key!(ctx.skb.skb)
}

/// A record copied out of a packet.
struct Copied<'a> {
    record: &'a [u8; COPIED_MAX],
    len: usize,
}

impl Bytes for Copied<'_> {
    #[inline(always)]
    fn byte(&self, index: usize) -> Option<u8> {
        // Read through memory: a length the compiler knows is at most COPIED_MAX would let it
        // drop the mask below, which is what bounds the access for the verifier.
        // SAFETY: a read of a live field.
        let len = unsafe { core::ptr::read_volatile(&raw const self.len) };
        if index >= len {
            return None;
        }
        Some(self.record[index & (COPIED_MAX - 1)])
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// Tail call target of `dns_query_out`: reads the first bytes of a judged stream as they
/// leave — what the server will read, whatever path they took — and judges them as
/// `tls_hello` judges a send. The whole first record must be in this packet (a send is
/// corked until its record is whole, and leaves as one packet before segmentation).
#[cgroup_skb]
pub fn tls_first_out(ctx: SkBuffContext) -> i32 {
    // Dropped when anything is off: TCP sends the packet again, and it is read again.
    let Some(verdict) = first_out(&ctx) else {
        return 0;
    };
    verdict
}

#[inline(always)]
fn first_out(ctx: &SkBuffContext) -> Option<i32> {
    let packet = crate::egress::outgoing(ctx)?;
    let segment = segment(ctx, packet.transport_offset)?;
    let key = packet_flow_key(ctx);
    // The flow is the name judge's to look up (tls_name_out): a packet whose flow went is
    // dropped there.
    let scratch = take_scratch(SCRATCH_TLS_EGRESS)?;
    scratch.owner = key;
    let mut len = segment.data_len;
    if len > COPIED_MAX {
        len = COPIED_MAX;
    }
    // 1..=COPIED_MAX, by arithmetic the verifier follows (older ones forget comparisons across
    // a spill, as in dns.rs); `segment` has at least one byte of data.
    let bounded = (((len - 1) & (COPIED_MAX - 1)) + 1) as u32;
    // SAFETY: the program's __sk_buff; `bounded` bytes (at most COPIED_MAX, the buffer's
    // size) into this CPU's scratch record.
    let copied = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            segment.data_offset as u32,
            scratch.record.as_mut_ptr().cast::<c_void>(),
            bounded,
        )
    };
    if copied != 0 {
        scratch.busy_since_ns = 0;
        return None;
    }
    let bytes = Copied {
        record: &scratch.record,
        len: bounded as usize,
    };
    let hello = tls::read_hello(&bytes, &mut scratch.walk);
    // The verdict is the next program's (tls_name_out), which the verifier walks apart.
    hello.keep(&mut scratch.walk);
    set(&mut scratch.walk.end, bounded);
    // SAFETY: `ctx` is this cgroup_skb program's context, the type tls_name_out takes; it
    // releases the scratch entry. Returns only if the call fails: dropped (sent again).
    unsafe { DNS_TAIL_CALLS.tail_call(ctx, TLS_NAME_OUT_SLOT) };
    scratch.busy_since_ns = 0;
    None
}

/// Tail call target of `tls_first_out`: judges the server name it found in the copied record.
#[cgroup_skb]
pub fn tls_name_out(ctx: SkBuffContext) -> i32 {
    let key = packet_flow_key(&ctx);
    let Some(scratch) = TLS_SCRATCH.get_ptr_mut(SCRATCH_TLS_EGRESS) else {
        return 0;
    };
    // SAFETY: this CPU's entry, held by the tls_first_out run that tail-called this one.
    let scratch: &'static mut TlsScratch = unsafe { &mut *scratch };
    if scratch.owner != key {
        return 0;
    }
    let Some(flow) = TLS_FLOWS.get_ptr_mut(key) else {
        scratch.busy_since_ns = 0;
        return 0;
    };
    let bytes = Copied {
        record: &scratch.record,
        len: get(&scratch.walk.end) as usize,
    };
    // SAFETY: as in egress_check.
    let flow_copy = unsafe { *flow };
    let judged = judge_kept(&bytes, &key, &flow_copy, scratch, SCRATCH_TLS_EGRESS);
    finish_out(judged, &key, flow, scratch)
}

/// The first bytes' verdict applied (a flow they pass is verified), the scratch entry
/// released.
#[inline(always)]
fn finish_out(judged: Judged, key: &FlowKey, flow: *mut TlsFlow, scratch: &mut TlsScratch) -> i32 {
    let verdict = settle(judged, key, flow, SCRATCH_TLS_EGRESS, false);
    scratch.busy_since_ns = 0;
    match verdict {
        Settled::Drop => 0,
        Settled::Pass | Settled::PassFromNowOn => {
            // SAFETY: as in egress_check.
            unsafe { (*flow).verified = 1 };
            1
        }
    }
}

const TCP_URG: u8 = 0x20;

/// What the connect gates record for a TCP connection they allow to a learned address.
#[inline(always)]
pub(crate) fn note_connection(
    sock_addr: *mut aya_ebpf::bindings::bpf_sock_addr,
    note: &ram_common::TlsNote,
) {
    // SAFETY: the gate's context, the argument the sock_addr form of the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(sock_addr.cast::<c_void>()) };
    let mut note = *note;
    // The socket's own mark, kept when `tls_sockops` adds TLS_MARK (sock_addr programs may
    // not call bpf_setsockopt before Linux 5.x, sock_ops programs always could).
    // SAFETY: the gate's context; `sk` of a sock_addr context is the socket of the call.
    note.mark = unsafe { (*(*sock_addr).__bindgen_anon_1.sk).mark };
    let _ = TLS_NOTES.insert(cookie, note, 0);
}

/// `TCP_CONNECT_CB`, just before the SYN leaves: a connection the gates noted gets
/// [`TLS_MARK`] (its own mark kept), so that every packet it sends carries it.
#[inline(always)]
fn mark_noted(ctx: &SockOpsContext) {
    // SAFETY: the program's context, the bpf_sock_ops the sock_ops form of the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast::<c_void>()) };
    // SAFETY: copied out at once; TlsNote is plain integers.
    let Some(note) = (unsafe { TLS_NOTES.get(cookie) }).copied() else {
        return;
    };
    let mark: u32 = note.mark | TLS_MARK;
    // SAFETY: the program's context and a 4-byte value, as SO_MARK takes; the connect path
    // that runs this callback holds the socket's lock.
    let set = unsafe {
        aya_ebpf::helpers::generated::bpf_setsockopt(
            ctx.ops.cast::<c_void>(),
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
