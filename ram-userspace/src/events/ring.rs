//! Reading the programs' ring buffers.

use aya::maps::{MapData, RingBuf};
use log::warn;

/// Events handled per wake-up: a process hammering denied addresses can produce events as
/// fast as the daemon writes them, and the daemon must still get to signals, reloads and the
/// control socket in between (the kernel counts what overflows meanwhile).
pub const EVENTS_PER_TURN: usize = 512;

/// Events handled when the daemon stops: what is in the ring buffers goes to the log before it
/// goes, bounded so that a flood cannot keep it from stopping (the rest waits, pinned, for the
/// next daemon).
pub const EVENTS_AT_STOP: usize = 8192;

/// Hands up to `max` events waiting in `ring` to `handle`, as a `T` (the `repr(C)` event type
/// the programs write into that ring buffer); short records are logged and skipped. Returns
/// whether the ring is empty.
pub fn drain<T>(ring: &mut RingBuf<MapData>, max: usize, mut handle: impl FnMut(T)) -> bool {
    for _ in 0..max {
        let Some(item) = ring.next() else {
            return true;
        };
        if item.len() < size_of::<T>() {
            warn!("ignoring a short event ({} bytes)", item.len());
            continue;
        }
        // SAFETY: the kernel wrote a whole T (every ring buffer carries one event type);
        // read_unaligned copes with any alignment of the ring buffer's data.
        handle(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    false
}
